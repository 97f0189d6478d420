// bf16 mode of the network (`MobileNetV2.precision = .bf16`): every convolution and the logits GEMM
// read bf16-rounded copies of their operands (input activations, weights and, in backward, the
// output gradient), accumulate in float32 and write float32. Batch norm (statistics, moving
// averages), ReLU6, residual sums, the loss, the gradients and the master weights stay float32.
// See Kernels/BF16.swift for why rounded float32 operands are exactly bf16 arithmetic.
// With BF16Arithmetic.jit (a CPU with AVX512-BF16) the 1×1 convolutions and the logits instead run
// on generated vdpbf16ps GEMMs (Kernels/PointwiseBF16.swift): their weights are packed here once per
// step and their activations converted block by block inside the kernels; the stem and the depthwise
// convolutions keep the rounded copies.
import Foundation
import Kernels

/// The rounded operands bf16 mode hands to the kernels.
final class BF16Operands {
  /// The trainable slab rounded to bf16, refreshed at the start of every forward. Only the conv and
  /// logits weights are read from it; batch norm reads gamma and beta from the float32 slab.
  let weights: FloatBuffer
  /// Rounded input activations (forward and backward) and rounded output gradients (backward).
  let activation = Scratch(), gradient = Scratch()

  /// JIT arithmetic (BF16Arithmetic.jit): the 1×1 and logits weights packed for the generated GEMM,
  /// as w [Ci, Co] (forward) and wᵀ (input gradient), by weight offset in the slab.
  private(set) var packed: [Int: (forward: BF16PackedMatrix, transposed: BF16PackedMatrix)] = [:]
  /// Per-thread bf16 rows of the JIT GEMMs.
  let workspace = BF16Workspace()

  init(parameterCount: Int) { weights = FloatBuffer(count: parameterCount) }

  /// Rounds the slab; with `pack` (weight offset, Ci, Co per GEMM weight) also packs those for the JIT.
  func refreshWeights(from parameters: FloatBuffer, pack: [(offset: Int, k: Int, n: Int)]) {
    roundToBF16(weights.base, parameters.base, count: parameters.count)
    for p in pack where packed[p.offset] == nil {
      packed[p.offset] = (BF16PackedMatrix(k: p.k, n: p.n), BF16PackedMatrix(k: p.n, n: p.k))
    }
    let matrices = pack.map { (packed[$0.offset]!, parameters.base + $0.offset) }
    // One weight (both layouts) per task, spread over the compute threads.
    parallelChunks(matrices.count) { _, r in
      for i in r {
        packBF16B(matrices[i].0.forward, matrices[i].1, transposed: false)
        packBF16B(matrices[i].0.transposed, matrices[i].1, transposed: true)
      }
    }
  }

  func forward(_ offset: Int) -> BF16PackedMatrix { packed[offset]!.forward }
  func transposed(_ offset: Int) -> BF16PackedMatrix { packed[offset]!.transposed }

  /// A bf16-rounded copy of x[0..<count] in `scratch`, valid until that scratch's next use.
  func rounded(_ x: UnsafePointer<Float>, count: Int, in scratch: Scratch) -> UnsafePointer<Float> {
    let out = scratch.uninitialized(count)
    roundToBF16(out, x, count: count)
    return UnsafePointer(out)
  }
}

/// The layers bf16 mode leaves in float32: each expand 1×1 with at most `maximumInputChannels` input
/// channels and at least `minimumBytesPerImage` of output per image, and the depthwise after it. Such a
/// product is memory-bound (each output float written costs at most 32 multiply-adds), so bf16
/// operands save it nothing, while in float32 the pair takes the fused expand forward and the scaled
/// expand backward, which write and read the network's largest tensors fewer times (at 1.0/224 these
/// are blocks 1–3, 112²×96 and 56²×144 outputs: 4.8 and 1.8 MB per image; docs/performance.md round
/// 20 has the times). Decided by the layer's shape alone, so a configuration's bf16 arithmetic is the
/// same at every batch size and rank layout.
public enum BF16Float32Expands {
  public static let environmentVariable = "MNV2_BF16_FP32_EXPAND"
  /// On unless MNV2_BF16_FP32_EXPAND=0 (then every convolution reads bf16 operands).
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  public static var maximumInputChannels = 32
  /// 1 MiB: 0.35/96's expands (at most 442 KB per image) keep bf16.
  public static var minimumBytesPerImage = 1 << 20

  /// Whether an expand of k → n channels on size² pixels stays float32 in bf16 mode (when `enabled`).
  public static func keeps(inChannels k: Int, outChannels n: Int, size: Int) -> Bool {
    k <= maximumInputChannels && size * size * n * MemoryLayout<Float>.stride >= minimumBytesPerImage
  }
}
