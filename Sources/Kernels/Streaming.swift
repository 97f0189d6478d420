// Which kernel outputs are written with streaming (non-temporal) stores.
//
// An ordinary store first reads the line it overwrites into the cache (a read for ownership), so a
// kernel writing a large tensor moves its bytes twice, and the tensor pushes out of L2/L3 what the
// kernel reads. The largest activations of a step (the 112² and 56² expand and depthwise outputs,
// 38–154 MB at batch 32) are larger than the 32 MiB L3: by the time their consumer (the next layer,
// then backward) reads their first rows, those have long been evicted, so for them streaming is pure
// gain. On Zen 5 (2 threads: copy 46–50 GB/s with ordinary stores, 63–64 GB/s with streaming ones)
// the depthwise forwards of 1.0/224 b32 went from 26.5 to 20 ms per step with every output streamed.
// Below the L3 size it is measured, not obvious: the 14² and 7² layers' 5–15 MB outputs lost 1.5–3
// ms per step streamed (their consumer finds them in L3), the 28² layers' 19 MB gained ~2 ms, and the
// 25.7 MB output of the first project layer, read at once by its BN apply, came out faster streamed
// too (the L3 is shared with the other core's working set); hence `minimumBytes`, first 16 MiB. Since
// the large buffers sit on 2 MiB pages (`HugePages`) it is 8 MiB: the 14² depthwise forwards' 9.6 and
// 14.4 MB outputs came out 0.13–0.21 ms faster each streamed (six layers, five alternating profiles;
// per-layer sums 256.0 → 254.8 ms), 4 MiB was no better and 32 MiB slower. The 7² layers' 6 MB
// outputs stay ordinary stores.
// A kernel that reads its output back while it is still in L1/L2 (the 1×1 input gradient's BN
// reductions and residual add, block by block; col2im after the patch gradient) does not stream, nor
// does the stem's training forward (measured slower streamed, although its statistics come from
// registers). Neither do the OpenBLAS and bf16 JIT paths (not our stores).
// Streaming stores are weakly ordered: each kernel that streams ends with `streamingFence()` (sfence)
// before its thread reaches the join that publishes the output.
import Foundation
import KernelRows

public enum StreamingStores {
  public static let environmentVariable = "MNV2_STREAM"
  /// On unless MNV2_STREAM=0 (tests switch it and lower the threshold to compare both on small shapes).
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  /// Outputs of at least this many bytes stream: a quarter of the 32 MiB L3 of the machines measured
  /// (the measurements behind it are in the comment at the top of this file).
  public static var minimumBytes = 8 << 20
  /// Whether a kernel writing `count` floats of `channels`-wide rows at `base` streams them: large
  /// enough, every 16-float vector of a row aligned (64-byte base, channels a multiple of 16; the
  /// streaming store of a misaligned vector faults).
  public static func use(_ base: UnsafeMutablePointer<Float>, count: Int, channels: Int) -> Bool {
    enabled && count * MemoryLayout<Float>.stride >= minimumBytes && channels % 16 == 0
      && Int(bitPattern: base) % 64 == 0
  }
}
