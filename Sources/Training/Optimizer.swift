// Optimizers over the flat parameter slab (one loop each), as TF 1.x defines them:
//   momentum (tf.train.MomentumOptimizer, not Nesterov): accum = m·accum + g;  w −= lr·accum
//   sgd      (tf.train.GradientDescentOptimizer):                             w −= lr·g
import Kernels
import MobileNet

public enum OptimizerKind: String, CaseIterable, Sendable {
  case momentum, sgd
}

public final class Optimizer {
  public let kind: OptimizerKind
  public let momentum: Float
  /// The `Momentum` slot of every trainable tensor, in the parameter slab's layout.
  public let accumulators: FloatBuffer

  public static let defaultMomentum: Float = 0.9

  public init(kind: OptimizerKind, parameterCount: Int, momentum: Float = defaultMomentum) {
    self.kind = kind
    self.momentum = momentum
    accumulators = FloatBuffer(count: kind == .momentum ? parameterCount : 0)
  }

  /// One update of `params` from `grads` (both `count` long) with learning rate `lr`.
  public func apply(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, count: Int, lr: Float) {
    switch kind {
    case .sgd:
      parallelChunks(count, minPerChunk: 1 << 16) { _, r in
        for i in r { params[i] -= lr * grads[i] }
      }
    case .momentum:
      precondition(accumulators.count == count, "optimizer built for \(accumulators.count) parameters, got \(count)")
      let acc = accumulators.base, m = momentum
      parallelChunks(count, minPerChunk: 1 << 16) { _, r in
        for i in r {
          acc[i] = acc[i] * m + grads[i]
          params[i] -= lr * acc[i]
        }
      }
    }
  }
}

/// slim.l2_regularizer(wd) on the decayed tensors: adds wd·w to their gradients and returns the
/// regularisation loss wd·Σw²/2 (tf.nn.l2_loss), which the seed logs as part of total_loss.
@discardableResult
public func applyWeightDecay(model: MobileNetV2, weightDecay wd: Float) -> Float {
  var loss = 0.0
  for spec in model.trainable.specs where spec.role.hasWeightDecay {
    let sq = addingDecay(weights: model.parameters.base + spec.offset, gradients: model.gradients.base + spec.offset,
                         count: spec.count, decay: wd)
    loss += Double(wd) * sq / 2
  }
  return Float(loss)
}

/// Elements per partial sum of `addingDecay`: a float sum over 32 lanes of at most 128 squares each,
/// then into a double, in block order.
private let decayBlock = 4096

/// g += wd·w (when wd ≠ 0) and Σw² in one vectorised pass over blocks split across the compute threads.
/// The sum is the same for any thread count (fixed blocks, added in order). A serial Double sum was a
/// 4-cycle dependency per element: 1.8 ms of the 0.35/96 model's 48 ms step with the optimizer.
func addingDecay(weights w: UnsafePointer<Float>, gradients g: UnsafeMutablePointer<Float>, count: Int, decay wd: Float) -> Double {
  let blocks = (count + decayBlock - 1) / decayBlock
  var partial = [Double](repeating: 0, count: max(1, blocks))
  return partial.withUnsafeMutableBufferPointer { buffer in
    let out = buffer.baseAddress!
    parallelChunks(blocks, minPerChunk: 16) { _, range in
      for b in range {
        let lo = b * decayBlock, hi = min(count, lo + decayBlock)
        var a0 = SIMD16<Float>(), a1 = a0
        var i = lo
        while i + 32 <= hi {
          let v0 = UnsafeRawPointer(w + i).loadUnaligned(as: SIMD16<Float>.self)
          let v1 = UnsafeRawPointer(w + i + 16).loadUnaligned(as: SIMD16<Float>.self)
          a0 = a0.addingProduct(v0, v0)
          a1 = a1.addingProduct(v1, v1)
          if wd != 0 {
            let p0 = UnsafeMutableRawPointer(g + i), p1 = UnsafeMutableRawPointer(g + i + 16)
            p0.storeBytes(of: p0.loadUnaligned(as: SIMD16<Float>.self).addingProduct(wd, v0), as: SIMD16<Float>.self)
            p1.storeBytes(of: p1.loadUnaligned(as: SIMD16<Float>.self).addingProduct(wd, v1), as: SIMD16<Float>.self)
          }
          i += 32
        }
        var sum = Double((a0 + a1).sum())
        while i < hi {
          sum += Double(w[i] * w[i])
          if wd != 0 { g[i] += wd * w[i] }
          i += 1
        }
        out[b] = sum
      }
    }
    var total = 0.0
    for b in 0..<blocks { total += out[b] }
    return total
  }
}
