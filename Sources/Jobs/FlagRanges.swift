// The valid range of every numeric training (and evaluate / predict) flag, checked before anything is loaded or bound:
// one line naming the flag and the value (`--learning-rate -0.1 is out of range: must be > 0`).
// NaN fails every check (each is written so that a comparison with NaN is false).
import ArgumentParser

/// "--flag value is out of range: must be …" when `ok` is false.
func checkRange(_ ok: Bool, _ flag: String, _ value: Any, _ range: String) throws {
  if !ok { throw ValidationError("--\(flag) \(value) is out of range: must be \(range)") }
}

extension TrainFlags {
  /// Throws a one-line ValidationError for the first numeric flag outside its range.
  public func checkRanges() throws {
    try checkRange(numClasses >= 2, "num-classes", numClasses, "≥ 2")
    try checkRange(imageSize >= 32 && imageSize % 32 == 0, "image-size", imageSize, "a multiple of 32, ≥ 32")
    try checkRange(batchSize >= 1, "batch-size", batchSize, "≥ 1")
    if let e = maxEpoch { try checkRange(e > 0 && e.isFinite, "max-epoch", e, "> 0") }
    if let s = maxTrainSteps { try checkRange(s >= 1, "max-train-steps", s, "≥ 1") }
    try checkRange(learningRate > 0 && learningRate.isFinite, "learning-rate", learningRate, "> 0")
    try checkRange(warmupEpochs >= 0 && warmupEpochs.isFinite, "warmup-epochs", warmupEpochs, "≥ 0")
    try checkRange(momentum >= 0 && momentum < 1, "momentum", momentum, "in [0, 1)")
    try checkRange(weightDecay >= 0 && weightDecay.isFinite, "weight-decay", weightDecay, "≥ 0")
    try checkRange(labelSmoothing >= 0 && labelSmoothing < 1, "label-smoothing", labelSmoothing, "in [0, 1)")
    if let d = movingAverageDecay { try checkRange(d > 0 && d < 1, "moving-average-decay", d, "in (0, 1)") }
    if let s = saveCheckpointsSteps { try checkRange(s >= 1, "save-checkpoints-steps", s, "≥ 1") }
    try checkRange(keepCheckpointMax >= 1, "keep-checkpoint-max", keepCheckpointMax, "≥ 1")
    try checkRange(logEveryNSteps >= 1, "log-every-n-steps", logEveryNSteps, "≥ 1")
    try checkRange(labelsOffset >= 0, "labels-offset", labelsOffset, "≥ 0")
    try checkRange(batchNormDecay > 0 && batchNormDecay < 1, "batch-norm-decay", batchNormDecay, "in (0, 1)")
    if let t = decodeThreads { try checkRange(t >= 1, "decode-threads", t, "≥ 1") }
    if let t = threads { try checkRange(t >= 1, "threads", t, "≥ 1") }
    try checkRange(minObjectCovered >= 0 && minObjectCovered <= 1, "min-object-covered", minObjectCovered, "in [0, 1]")
    try checkRange(minCropArea > 0 && minCropArea <= 1, "min-crop-area", minCropArea, "in (0, 1]")
    try checkRange(fusionMiB > 0 && fusionMiB <= 1024, "fusion-mib", fusionMiB, "in (0, 1024]")
    try checkRange(timelineSteps >= 1, "timeline-steps", timelineSteps, "≥ 1")
    if let k = gradientAccumulationSteps {
      try checkRange((1...TrainFlags.maxGradientAccumulationSteps).contains(k), "gradient-accumulation-steps", k,
                     "in 1...\(TrainFlags.maxGradientAccumulationSteps)")
    }
  }
}

extension EvalFlags {
  public func checkRanges() throws {
    if let n = numClasses { try checkRange(n >= 2, "num-classes", n, "≥ 2") }
    if let s = imageSize { try checkRange(s >= 32 && s % 32 == 0, "image-size", s, "a multiple of 32, ≥ 32") }
    try checkRange(centralFraction > 0 && centralFraction <= 1, "central-fraction", centralFraction, "in (0, 1]")
    try checkRange(batchSize >= 1, "batch-size", batchSize, "≥ 1")
    try checkRange(labelsOffset >= 0, "labels-offset", labelsOffset, "≥ 0")
    if let t = threads { try checkRange(t >= 1, "threads", t, "≥ 1") }
    if let t = decodeThreads { try checkRange(t >= 1, "decode-threads", t, "≥ 1") }
  }
}

extension PredictFlags {
  public func checkRanges() throws {
    try checkRange(centralFraction > 0 && centralFraction <= 1, "central-fraction", centralFraction, "in (0, 1]")
    try checkRange(topK >= 1, "top-k", topK, "≥ 1")
  }
}
