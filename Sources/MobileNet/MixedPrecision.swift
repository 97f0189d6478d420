// bf16 mode of the network (`MobileNetV2.precision = .bf16`): every convolution and the logits GEMM
// read bf16-rounded copies of their operands (input activations, weights and, in backward, the
// output gradient), accumulate in float32 and write float32. Batch norm (statistics, moving
// averages), ReLU6, residual sums, the loss, the gradients and the master weights stay float32.
// See Kernels/BF16.swift for why rounded float32 operands are exactly bf16 arithmetic.
import Kernels

/// The rounded operands bf16 mode hands to the kernels.
final class BF16Operands {
  /// The trainable slab rounded to bf16, refreshed at the start of every forward. Only the conv and
  /// logits weights are read from it; batch norm reads gamma and beta from the float32 slab.
  let weights: FloatBuffer
  /// Rounded input activations (forward and backward) and rounded output gradients (backward).
  let activation = Scratch(), gradient = Scratch()

  init(parameterCount: Int) { weights = FloatBuffer(count: parameterCount) }

  func refreshWeights(from parameters: FloatBuffer) {
    roundToBF16(weights.base, parameters.base, count: parameters.count)
  }

  /// A bf16-rounded copy of x[0..<count] in `scratch`, valid until that scratch's next use.
  func rounded(_ x: UnsafePointer<Float>, count: Int, in scratch: Scratch) -> UnsafePointer<Float> {
    let out = scratch.uninitialized(count)
    roundToBF16(out, x, count: count)
    return UnsafePointer(out)
  }
}
