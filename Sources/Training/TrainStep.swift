// The training step, the one place it is written: zero the gradients, forward, loss, backward
// (handing each finished gradient range to a reducer so the allreduce overlaps backward), wait for
// the reduction, weight decay on the averaged gradient, optimizer update, weight averaging.
// `Trainer` runs it every step, `bench train` times it and the tests check it.
import Kernels
import MobileNet
import Telemetry

public struct StepResult: Equatable, Sendable {
  /// Label-smoothed cross-entropy, mean over the batch (the seed's `loss`).
  public var loss: Float
  /// loss + weight-decay term (the seed's `total_loss`).
  public var totalLoss: Float
  /// Top-1 correct predictions in the batch (training mode, i.e. with dropout).
  public var correct: Int
}

public struct StepHyperparameters: Sendable {
  /// The seed's --label_smoothing default.
  public static let defaultLabelSmoothing: Float = 0.1
  /// slim mobilenet training_scope(weight_decay=0.00004).
  public static let defaultWeightDecay: Float = 0.00004

  public var labelSmoothing: Float
  public var weightDecay: Float
  public init(labelSmoothing: Float = defaultLabelSmoothing, weightDecay: Float = defaultWeightDecay) {
    self.labelSmoothing = labelSmoothing
    self.weightDecay = weightDecay
  }
}

public final class TrainStep {
  public let model: MobileNetV2
  public let optimizer: Optimizer
  /// Weight averaging (the EMA shadows), updated after every optimizer step when present.
  public let average: WeightAverage?
  public let hyper: StepHyperparameters
  /// Training mode by default; tests turn batch statistics or dropout off to compare exactly.
  public var mode = ForwardMode.training
  /// When set, each phase of the step is a span (forward, backward, allreduce wait, optimizer).
  public var timeline: Timeline?
  /// Arithmetic of the convolutions and GEMMs (the model's; bf16: bf16 operands, fp32 accumulation,
  /// fp32 master weights, batch norm, loss and optimizer). Resolve a user's request with PrecisionPolicy.
  public var precision: Precision {
    get { model.precision }
    set { model.precision = newValue }
  }

  public init(model: MobileNetV2, optimizer: Optimizer, average: WeightAverage? = nil, hyper: StepHyperparameters,
              precision: Precision? = nil) {
    precondition(optimizer.kind == .sgd || optimizer.accumulators.count == model.parameterCount,
                 "optimizer built for \(optimizer.accumulators.count) parameters, the model has \(model.parameterCount)")
    self.model = model
    self.optimizer = optimizer
    self.average = average
    self.hyper = hyper
    if let precision { model.precision = precision }
  }

  /// One step on the batch already in `model.inputBuffer`/`labelBuffer`. `reducer` (nil: a single
  /// process) receives each gradient range as backward finishes it and must hold the average over
  /// all ranks when its `finish()` returns; only then are the gradients read again. `step` is the
  /// global step the update belongs to (for the averaging's decay).
  ///
  /// Gradient accumulation: with `microBatches` K > 1, `loadMicroBatch(m)` writes micro-batch m
  /// (1..<K) into the input before its forward; backward sums each micro-batch's gradient into the
  /// slab, only the last backward feeds the reducer (so the one allreduce overlaps it), and the
  /// reduced sum is divided by K: the mean over K × ranks micro-batches, as K times more ranks would
  /// average. BN normalises each micro-batch over itself. The result's loss is the micro-batches' mean.
  @discardableResult
  public func run(batch: Int, lr: Float, step: Int, rng: inout RandomState,
                  reducer: GradientReducing? = nil, microBatches: Int = 1,
                  loadMicroBatch: ((Int) throws -> Void)? = nil) throws -> StepResult {
    precondition(microBatches >= 1 && (microBatches == 1 || loadMicroBatch != nil), "micro-batches need a loader")
    var loss: Float = 0, correct = 0
    model.zeroGradients()
    for m in 0..<microBatches {
      if m > 0 { try span(Timeline.Name.dataWait) { try loadMicroBatch!(m) } }
      let l = span(Timeline.Name.forward) { () -> LossResult in
        model.forward(batch: batch, mode: mode, rng: &rng)
        return model.loss(batch: batch, labelSmoothing: hyper.labelSmoothing)
      }
      loss += l.loss
      correct += l.correct
      let last = m == microBatches - 1
      span(Timeline.Name.backward) {
        model.backward(batch: batch, onGradientsReady: last ? reducer.map { r in { r.ready($0) } } : nil)
      }
    }
    try span(Timeline.Name.allreduceWait) { try reducer?.finish() }
    if microBatches > 1 { scale(model.gradients.base, count: model.parameterCount, by: 1 / Float(microBatches)) }
    let reg = span(Timeline.Name.optimizer) { () -> Float in
      // Weight decay after averaging: the weights are identical on all ranks, so is its gradient.
      let reg = Profile.time(.optimizer) { applyWeightDecay(model: model, weightDecay: hyper.weightDecay) }
      Profile.time(.optimizer) {
        optimizer.apply(params: model.parameters.base, grads: model.gradients.base, count: model.parameterCount, lr: lr)
      }
      average?.update(from: model, step: step)
      return reg
    }
    let meanLoss = loss / Float(microBatches)
    return StepResult(loss: meanLoss, totalLoss: meanLoss + reg, correct: correct)
  }

  /// The accumulated gradient's 1/K (a flat loop the compiler vectorises).
  private func scale(_ p: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
    for i in 0..<count { p[i] *= factor }
  }

  private func span<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
    guard let t = timeline else { return try body() }
    return try t.measure(name, body)
  }
}
