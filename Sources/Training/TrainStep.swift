// One synchronous training step on one process: forward, loss, backward, weight decay, update.
// The distributed trainer inserts the gradient allreduce between backward and the update.
import Kernels
import MobileNet

public struct StepResult: Equatable, Sendable {
  /// Label-smoothed cross-entropy, mean over the batch (the seed's `loss`).
  public var loss: Float
  /// loss + weight-decay term (the seed's `total_loss`).
  public var totalLoss: Float
  /// Top-1 correct predictions in the batch (training mode, i.e. with dropout).
  public var correct: Int
}

public struct StepHyperparameters: Sendable {
  public var labelSmoothing: Float = 0.1
  public var weightDecay: Float = 0.00004
  public init(labelSmoothing: Float = 0.1, weightDecay: Float = 0.00004) {
    self.labelSmoothing = labelSmoothing
    self.weightDecay = weightDecay
  }
}

/// Forward + backward on the batch already in `model.inputBuffer`/`labelBuffer`, gradients in
/// `model.gradients` (zeroed first), weight decay included. Does not update the weights.
public func computeGradients(model: MobileNetV2, batch: Int, mode: ForwardMode = .training,
                             hyper: StepHyperparameters, rng: inout RandomState,
                             onGradientsReady: ((Range<Int>) -> Void)? = nil) -> StepResult {
  model.zeroGradients()
  model.forward(batch: batch, mode: mode, rng: &rng)
  let l = model.loss(batch: batch, labelSmoothing: hyper.labelSmoothing)
  model.backward(batch: batch, onGradientsReady: onGradientsReady)
  let reg = applyWeightDecay(model: model, weightDecay: hyper.weightDecay)
  return StepResult(loss: l.loss, totalLoss: l.loss + reg, correct: l.correct)
}

/// A complete single-process step: gradients, then the optimizer update with learning rate `lr`.
public func trainStep(model: MobileNetV2, optimizer: Optimizer, batch: Int, lr: Float,
                      hyper: StepHyperparameters, rng: inout RandomState) -> StepResult {
  let r = computeGradients(model: model, batch: batch, hyper: hyper, rng: &rng)
  optimizer.apply(params: model.parameters.base, grads: model.gradients.base, count: model.parameterCount, lr: lr)
  return r
}
