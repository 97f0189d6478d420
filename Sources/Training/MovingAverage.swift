// tf.train.ExponentialMovingAverage(decay, num_updates=global_step) over the trainable weights and
// the BN moving statistics: decay_t = min(d, (1 + step) / (10 + step)),
// shadow −= (1 − decay_t)·(shadow − value). Shadows start at the variables' values.
import Kernels
import MobileNet

public final class WeightAverage {
  public let decay: Double
  /// Shadows of the trainable slab and of the state slab (same layouts).
  public let trainable: FloatBuffer
  public let state: FloatBuffer

  public init(model: MobileNetV2, decay: Double) {
    self.decay = decay
    trainable = FloatBuffer(count: model.parameterCount)
    state = FloatBuffer(count: model.stateValues.count)
    reset(to: model)
  }

  public func reset(to model: MobileNetV2) {
    trainable.base.update(from: model.parameters.base, count: trainable.count)
    state.base.update(from: model.stateValues.base, count: state.count)
  }

  public func effectiveDecay(step: Int) -> Float {
    Float(min(decay, (1 + Double(step)) / (10 + Double(step))))
  }

  /// Call after the optimizer update of global step `step`.
  public func update(from model: MobileNetV2, step: Int) {
    let k = 1 - effectiveDecay(step: step)
    for (shadow, value, n) in [(trainable.base, model.parameters.base, trainable.count),
                               (state.base, model.stateValues.base, state.count)] {
      parallelChunks(n, minPerChunk: 1 << 16) { _, r in
        for i in r { shadow[i] -= k * (shadow[i] - value[i]) }
      }
    }
  }
}
