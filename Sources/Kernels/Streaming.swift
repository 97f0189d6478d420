// Which kernel outputs are written with streaming (non-temporal) stores.
//
// An ordinary store first reads the line it overwrites into the cache (a read for ownership), so a
// kernel writing a large tensor moves its bytes twice, and the tensor then pushes out of L2/L3 what
// the kernel reads. The largest activations of a step (the 112² and 56² expand and depthwise outputs,
// 38–154 MB at batch 32) are written once and read back only by the next layer or by backward, long
// after they have left any cache, so for them streaming stores are pure gain: on Zen 5 (2 threads,
// copy 46–50 GB/s with ordinary stores, 63–64 GB/s with streaming ones) the depthwise forwards of
// 1.0/224 b32 went from 26.5 to 20 ms per step with every output streamed. A tensor that fits the
// last-level cache is left to ordinary stores: its consumer, next in line, still finds it there.
// A kernel that reads its output back while it is still in cache (the stem's statistics, row by row;
// the 1×1 input gradient's BN reductions and residual add, block by block) does not stream it.
// Streaming stores are weakly ordered: each kernel that streams ends with `streamingFence()` (sfence)
// before its thread reaches the join that publishes the output.
import Foundation
import KernelRows

public enum StreamingStores {
  public static let environmentVariable = "MNV2_STREAM"
  /// On unless MNV2_STREAM=0 (tests switch it and lower the threshold to compare both on small shapes).
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  /// Outputs of at least this many bytes stream: half the 32 MiB L3 of the machines measured. On Zen 5
  /// at 1.0/224 b32 (three alternating runs of per-layer profiles), streaming every output cost the
  /// 14² and 7² layers 1.5–3 ms per step (their 5–15 MB outputs are read back from L3), while the
  /// 28² layers (19 MB outputs) gained ~2 ms.
  public static var minimumBytes = 16 << 20
  /// Whether a kernel writing `count` floats of `channels`-wide rows at `base` streams them: large
  /// enough, every 16-float vector of a row aligned (64-byte base, channels a multiple of 16; the
  /// streaming store of a misaligned vector faults).
  public static func use(_ base: UnsafeMutablePointer<Float>, count: Int, channels: Int) -> Bool {
    enabled && count * MemoryLayout<Float>.stride >= minimumBytes && channels % 16 == 0
      && Int(bitPattern: base) % 64 == 0
  }
}
