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
    let w = model.parameters.base + spec.offset, g = model.gradients.base + spec.offset
    var sq = 0.0
    for i in 0..<spec.count {
      sq += Double(w[i]) * Double(w[i])
      if wd != 0 { g[i] += wd * w[i] }
    }
    loss += Double(wd) * sq / 2
  }
  return Float(loss)
}
