// Scoring a checkpoint: top-1 / top-5 over every example of a split, in inference mode (moving BN
// statistics, no dropout), optionally with the weights' exponential moving averages.
import Checkpoint
import Foundation
import Kernels
import MobileNet

public struct EvalResult: Sendable, Equatable {
  public var examples = 0
  public var top1 = 0
  public var top5 = 0
  public var lossSum = 0.0
  public var top1Accuracy: Double { examples > 0 ? Double(top1) / Double(examples) : 0 }
  public var top5Accuracy: Double { examples > 0 ? Double(top5) / Double(examples) : 0 }
  public var meanLoss: Double { examples > 0 ? lossSum / Double(examples) : 0 }
}

public enum Evaluator {
  /// Loads `file` into `model`: the `ExponentialMovingAverage` shadows when `useMovingAverage` is
  /// true (an error if the checkpoint has none), the raw weights otherwise. Shadows of the BN moving
  /// statistics are used when present; TF-slim averages only the trainable variables unless told
  /// otherwise, so their absence falls back to the raw statistics.
  public static func load(_ file: TensorFile, into model: MobileNetV2, useMovingAverage: Bool,
                          exclude: [String] = []) throws {
    try ModelCheckpoint.load(slabs(for: model, file: file, movingAverage: useMovingAverage), from: file, exclude: exclude)
  }

  /// The model's slabs under the names to read them from: `<name>/ExponentialMovingAverage` for the
  /// averaged ones when `movingAverage`.
  public static func slabs(for model: MobileNetV2, file: TensorFile, movingAverage: Bool) throws -> [NamedSlab] {
    guard movingAverage else { return model.checkpointSlabs }
    guard hasMovingAverage(file) else {
      throw TrainingError("\(file.path) has no \(ModelCheckpoint.movingAverageSuffix) tensors (train with --moving-average-decay, or pass --no-use-moving-average)")
    }
    let ema = ModelCheckpoint.movingAverageSuffix
    let stateAveraged = model.state.specs.first.map { file.entry("\($0.name)/\(ema)") != nil } ?? false
    return [NamedSlab(layout: model.trainable, buffer: model.parameters, suffix: ema),
            NamedSlab(layout: model.state, buffer: model.stateValues, suffix: stateAveraged ? ema : nil)]
  }

  public static func hasMovingAverage(_ file: TensorFile) -> Bool {
    file.entry("\(ConfigInference.stemWeights)/\(ModelCheckpoint.movingAverageSuffix)") != nil
  }

  /// Runs every batch of `data` (epoch 0). The last batch may be short: it is padded and only its
  /// real examples count (inference treats examples independently).
  public static func evaluate(model: MobileNetV2, data: BatchSource, batchSize: Int,
                              progress: ((EvalResult) -> Void)? = nil) throws -> EvalResult {
    let k = model.config.numClasses
    let images = model.inputBuffer(batch: batchSize), labels = model.labelBuffer(batch: batchSize)
    let px = model.config.imageSize * model.config.imageSize * 3
    var result = EvalResult()
    var rng = RandomState(seed: 0)
    try data.start(epoch: 0, skipBatches: 0)
    while true {
      let n = try data.next(images: images, labels: labels)
      if n == 0 { break }
      if n < batchSize {
        (images + n * px).update(repeating: 0, count: (batchSize - n) * px)
        for i in n..<batchSize { labels[i] = 0 }
      }
      let logits = model.forward(batch: batchSize, mode: .inference, rng: &rng)
      for i in 0..<n {
        let row = logits + i * k
        let label = Int(labels[i])
        guard label >= 0 && label < k else {
          throw TrainingError("label \(label) outside [0, \(k)) in the evaluation data; check --num-classes/--labels-offset")
        }
        let target = row[label]
        // Rank of the true class: how many logits beat it (ties counted against, as in_top_k).
        var better = 0
        for j in 0..<k where row[j] > target { better += 1 }
        if better == 0 { result.top1 += 1 }
        if better < 5 { result.top5 += 1 }
        result.lossSum += logSumExp(row, count: k).value - Double(target)
      }
      result.examples += n
      progress?(result)
    }
    return result
  }
}
