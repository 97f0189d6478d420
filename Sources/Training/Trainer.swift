// The training loop: the seed's recipe (steps per epoch from the data, LR schedule with warm-up,
// momentum on the averaged gradient, weight decay, optional weight averaging), rank-0 checkpoints
// with exact resume, fine-tuning restores, and the seed's log line.
//
// Exact resume needs only the global step: the data order depends on (seed, epoch), augmentation
// on (seed, epoch, example), dropout on (seed, rank, step). Checkpoints also record the epoch and
// the batch within it for people reading them.
import Checkpoint
import Common
import Foundation
import Kernels
import MobileNet
import Telemetry

/// The seed's defaults for a training run, defined once: `TrainerOptions` and the `worker train`
/// flags both take them from here (step hyperparameters: `StepHyperparameters`; BN: `BatchNormDefaults`).
public enum TrainerDefaults {
  public static let batchSize = 256
  public static let learningRate = 0.1
  public static let decay = DecayType.cosineAnnealing
  public static let warmupEpochs = 5.0
  public static let optimizer = OptimizerKind.momentum
  public static let keepCheckpointMax = 5
  public static let logEveryNSteps = 10
  /// Fine-tuning replaces the classifier: TF-slim's usual exclusion.
  public static let restoreExclude = ["MobilenetV2/Logits/"]
  /// Both formats: TensorFlow's tools and ours read the train dir unchanged.
  public static let checkpointFormat = CheckpointFormat.both
}

public struct TrainerOptions: Sendable {
  public var model: ModelConfig
  public var batchSize = TrainerDefaults.batchSize
  public var maxEpochs: Double? = nil
  public var maxTrainSteps: Int? = nil
  public var learningRate = TrainerDefaults.learningRate
  public var decay = TrainerDefaults.decay
  public var warmupEpochs = TrainerDefaults.warmupEpochs
  public var optimizer = TrainerDefaults.optimizer
  public var momentum = Optimizer.defaultMomentum
  public var weightDecay = StepHyperparameters.defaultWeightDecay
  public var labelSmoothing = StepHyperparameters.defaultLabelSmoothing
  /// BN moving-statistics decay (slim's bn_decay).
  public var batchNormDecay = BatchNormDefaults.decay
  public var movingAverageDecay: Double? = nil
  public var trainDir = "result"
  /// nil: one epoch.
  public var saveCheckpointsSteps: Int? = nil
  public var keepCheckpointMax = TrainerDefaults.keepCheckpointMax
  public var logEveryNSteps = TrainerDefaults.logEveryNSteps
  public var seed: UInt64 = 0
  public var restorePath: String? = nil
  public var restoreExclude = TrainerDefaults.restoreExclude
  // Interop (issue 10)
  /// Which files every checkpoint is written as (safetensors, a TensorFlow V2 checkpoint, or both).
  public var checkpointFormat = TrainerDefaults.checkpointFormat
  /// Fine-tuning restores the weights from the `/ExponentialMovingAverage` shadows.
  public var restoreMovingAverage = false
  // Issue 11: micro-batches per optimizer step (nil: 1, or whatever keeps a resumed checkpoint's
  // global batch on this world size; see `Trainer.accumulationSteps`).
  public var gradientAccumulationSteps: Int? = nil
  /// Arithmetic of the convolutions and GEMMs (already resolved by PrecisionPolicy).
  public var precision = Precision.fp32

  public init(model: ModelConfig) { self.model = model }
}

public struct TrainSummary: Sendable {
  public var firstStep: Int
  public var globalStep: Int
  public var stepsPerEpoch: Int
  public var lastLoss: Float
  public var resumedFrom: String?
  public var checksum: UInt64
  /// Micro-batches per step this run used (gradient accumulation).
  public var accumulationSteps: Int = 1
}

public struct TrainingError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}

public final class Trainer {
  public let options: TrainerOptions
  public let model: MobileNetV2
  /// The step every iteration runs; owns the optimizer and the weight averages.
  let step: TrainStep
  var optimizer: Optimizer { step.optimizer }
  var average: WeightAverage? { step.average }
  let data: BatchSource
  let comm: Communicator
  let log: TrainLog
  let dir: CheckpointDirectory

  public static let metricsFile = "metrics.jsonl"
  /// Micro-batches per optimizer step of the current run (set by `run`, recorded in checkpoints).
  private var accumulation = 1

  // Observability (issue 13): the timeline (every rank) and observers of logged steps (rank 0).
  public var timeline: Timeline?
  public var observers: [TrainObserver] = []

  /// `model` is the one `makeModel(options)` builds; pass it when the caller needed it before the
  /// group existed (its signature goes into the handshake), so the weights are allocated once.
  public init(options: TrainerOptions, data: BatchSource, comm: Communicator, log: TrainLog,
              model prebuilt: MobileNetV2? = nil) {
    self.options = options
    self.data = data
    self.comm = comm
    self.log = log
    let net = prebuilt ?? Self.makeModel(options)
    precondition(net.config == options.model && net.batchNormDecay == options.batchNormDecay,
                 "the model passed to Trainer is not the one its options describe (use Trainer.makeModel)")
    model = net
    step = TrainStep(model: net,
                     optimizer: Optimizer(kind: options.optimizer, parameterCount: net.parameterCount, momentum: options.momentum),
                     average: options.movingAverageDecay.map { WeightAverage(model: net, decay: $0) },
                     hyper: StepHyperparameters(labelSmoothing: options.labelSmoothing, weightDecay: options.weightDecay))
    dir = CheckpointDirectory(options.trainDir)
  }

  /// The model a run of `options` trains, freshly initialised from `options.seed`.
  public static func makeModel(_ options: TrainerOptions) -> MobileNetV2 {
    let net = MobileNetV2(config: options.model, seed: options.seed)
    net.batchNormDecay = options.batchNormDecay
    net.precision = options.precision
    return net
  }

  /// Slabs saved with every checkpoint beyond the model's own: momentum and the weight averages.
  var slotSlabs: [NamedSlab] {
    var s: [NamedSlab] = []
    if optimizer.kind == .momentum {
      s.append(NamedSlab(layout: model.trainable, buffer: optimizer.accumulators, suffix: ModelCheckpoint.momentumSuffix))
    }
    if let a = average {
      s.append(NamedSlab(layout: model.trainable, buffer: a.trainable, suffix: ModelCheckpoint.movingAverageSuffix))
      s.append(NamedSlab(layout: model.state, buffer: a.state, suffix: ModelCheckpoint.movingAverageSuffix))
    }
    return s
  }

  public func run() throws -> TrainSummary {
    let o = options
    let ranks = comm.size
    let examples = data.examplesInSplit
    // Start: resume (rank 0 reads, everyone receives), else fine-tune restore, else fresh weights.
    var startStep = 0
    var savedGlobalBatch = 0  // 0: none recorded (fresh run, or a checkpoint without our metadata)
    var resumedFrom: String? = nil
    if comm.rank == 0 {
      try FileManager.default.createDirectory(atPath: o.trainDir, withIntermediateDirectories: true)
      if let latest = dir.latest() {
        // Either format; a TensorFlow checkpoint has no metadata, so its tensor shapes are checked.
        let file = try CheckpointDirectory.open(latest)
        if ModelCheckpoint.hasMetadata(file) {
          var saved = try ModelCheckpoint.config(of: file)
          saved.dropoutKeepProb = o.model.dropoutKeepProb  // a training setting, not recorded
          guard saved == o.model else {
            throw TrainingError("\(latest) was written for \(saved.modelName)/\(saved.numClasses) classes/\(saved.imageSize)px but this run trains \(o.model.modelName)/\(o.model.numClasses)/\(o.model.imageSize); use another --train-dir")
          }
        }
        do { try ModelCheckpoint.load(model.checkpointSlabs + slotSlabs, from: file) } catch {
          throw TrainingError("cannot resume from \(latest) (use another --train-dir for another model or optimizer): \(error)")
        }
        startStep = Int(try ModelCheckpoint.globalStep(of: file))
        savedGlobalBatch = Self.globalBatch(recordedIn: file.metadata) ?? 0
        resumedFrom = latest
      } else if let restore = o.restorePath {
        let path = try CheckpointDirectory.resolve(restore)[0]
        let file = try CheckpointDirectory.open(path)
        let slabs = try Evaluator.slabs(for: model, file: file, movingAverage: o.restoreMovingAverage)
        let report = try ModelCheckpoint.load(slabs, from: file, exclude: o.restoreExclude)
        log.info("restored \(report.restored.count) tensors from \(path)\(o.restoreMovingAverage ? " (moving-average shadows)" : "")")
        if !report.notRestored.isEmpty {
          log.info("not restored (excluded, freshly initialised): \(report.notRestored.joined(separator: ", "))")
        }
        average?.reset(to: model)
      }
    }
    // Every rank starts from rank 0's weights, statistics and slots, whatever its seed.
    for slab in model.checkpointSlabs + slotSlabs {
      try comm.broadcast(slab.buffer.base, count: slab.buffer.count, root: 0)
    }
    var startWords = [Double(startStep), Double(savedGlobalBatch)]
    if comm.rank != 0 { startWords = [0, 0] }
    try startWords.withUnsafeMutableBufferPointer { try comm.allreduceSum($0.baseAddress!, count: 2) }
    startStep = Int(startWords[0])
    savedGlobalBatch = Int(startWords[1])
    if let r = resumedFrom { log.info("resumed from \(r) at global step \(startStep)") }

    // Every rank has the same inputs here, so a refusal is the same one line on every rank.
    let (accumulation, note) = try Self.accumulationSteps(explicit: o.gradientAccumulationSteps,
                                                          savedGlobalBatch: savedGlobalBatch == 0 ? nil : savedGlobalBatch,
                                                          ranks: ranks, batch: o.batchSize)
    if let n = note { log.info(n) }
    self.accumulation = accumulation
    let globalBatch = o.batchSize * ranks * accumulation
    let stepsPerEpoch = examples / globalBatch
    guard stepsPerEpoch > 0 else {
      throw TrainingError("the split has \(examples) examples, fewer than one global batch of \(o.batchSize) × \(ranks) ranks"
                          + (accumulation > 1 ? " × \(accumulation) micro-batches" : "") + "; lower --batch-size")
    }
    let totalSteps: Int
    switch (o.maxEpochs, o.maxTrainSteps) {
    case (let e?, nil): totalSteps = Int((e * Double(stepsPerEpoch)).rounded())
    case (nil, let s?): totalSteps = s
    default: throw TrainingError("give exactly one of --max-epoch and --max-train-steps")
    }
    let schedule = LearningRateSchedule(base: o.learningRate, decay: o.decay, stepsPerEpoch: stepsPerEpoch,
                                        totalSteps: totalSteps, warmupEpochs: o.warmupEpochs)
    let saveEvery = max(1, o.saveCheckpointsSteps ?? stepsPerEpoch)

    log.info("model \(o.model.modelName) (depth multiplier \(o.model.depthMultiplier)), \(model.parameterCount) parameters, \(o.model.numClasses) classes, \(o.model.imageSize)x\(o.model.imageSize) input")
    log.info("ranks \(ranks), batch \(o.batchSize) per rank\(accumulation > 1 ? " × \(accumulation) accumulated micro-batches" : "") (global \(globalBatch)), \(examples) training examples, steps_per_epoch \(stepsPerEpoch), total steps \(totalSteps), compute threads \(Compute.threads)")
    log.info("optimizer \(o.optimizer.rawValue) (momentum \(o.momentum)), \(schedule.summary), weight decay \(o.weightDecay), label smoothing \(o.labelSmoothing), BN decay \(o.batchNormDecay), precision \(o.precision.rawValue)\(o.movingAverageDecay.map { ", moving average \($0)" } ?? "")")
    if o.precision == .bf16, !model.float32LayersInBF16.isEmpty {
      log.info("bf16: float32 kept for \(model.float32LayersInBF16.count) memory-bound layers (\(BF16Float32Expands.environmentVariable)=0 rounds them too): \(model.float32LayersInBF16.joined(separator: ", "))")
    }

    let batch = o.batchSize
    let images = model.inputBuffer(batch: batch)
    let labels = model.labelBuffer(batch: batch)
    let reducer = comm.gradientReducer(buffer: model.gradients.base, count: model.parameterCount)
    var metrics: MetricsWriter? = nil
    if comm.rank == 0 {
      let path = "\(o.trainDir)/\(Self.metricsFile)"
      let dropped = try MetricsWriter.resume(path: path, atStep: startStep)
      if dropped > 0 { log.info("\(path): dropped \(dropped) rows after step \(startStep) (they are logged again)") }
      metrics = try MetricsWriter(path: path)
      for ob in observers { try ob.started(atStep: startStep, resumed: startStep > 0) }
    }
    timeline?.start(atStep: startStep)
    self.step.timeline = timeline
    // Timeline spans of the loop (one nil check when off); TrainStep records its own phases.
    func span<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
      guard let t = timeline else { return try body() }
      return try t.measure(name, body)
    }

    var window = (loss: 0.0, total: 0.0, correct: 0.0, examples: 0.0, steps: 0)
    var windowStart = DispatchTime.now().uptimeNanoseconds
    var lastLoss: Float = .nan
    var currentEpoch = -1
    var step = startStep
    while step < totalSteps {
      try timeline?.beginStep(step)
      let stepStart = timeline?.begin()
      let epoch = step / stepsPerEpoch
      let n = try span(Timeline.Name.dataWait) { () throws -> Int in
        if epoch != currentEpoch {
          try data.start(epoch: epoch, skipBatches: (step % stepsPerEpoch) * accumulation)
          currentEpoch = epoch
        }
        return try data.next(images: images, labels: labels)
      }
      func checkFull(_ n: Int) throws {
        guard n == batch else {
          throw TrainingError("rank \(comm.rank): data ended after \(n) examples in epoch \(epoch) at step \(step) (expected \(stepsPerEpoch * accumulation) full batches)")
        }
      }
      try checkFull(n)
      let lr = Float(schedule.rate(at: step))
      var rng = RandomState(seed: o.seed &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(comm.rank) << 48 ^ UInt64(step))
      let l = try self.step.run(batch: batch, lr: lr, step: step, rng: &rng, reducer: reducer, microBatches: accumulation) { _ in
        try checkFull(try self.data.next(images: images, labels: labels))
      }
      guard l.loss.isFinite else { throw TrainingError("rank \(comm.rank): loss is \(l.loss) at step \(step); lower --learning-rate") }
      lastLoss = l.loss
      step += 1

      window.loss += Double(l.loss); window.total += Double(l.totalLoss)
      window.correct += Double(l.correct); window.examples += Double(batch * accumulation); window.steps += 1
      if step % max(1, o.logEveryNSteps) == 0 || step == totalSteps {
        let metricsStart = timeline?.begin()
        var sums = [window.loss, window.total, window.correct, window.examples]
        try sums.withUnsafeMutableBufferPointer { try comm.allreduceSum($0.baseAddress!, count: 4) }
        let now = DispatchTime.now().uptimeNanoseconds
        let seconds = Double(now - windowStart) / 1e9
        let denom = Double(window.steps * ranks)
        let rec = StepRecord.seedRounded(step: step, epoch: Double(step) / Double(stepsPerEpoch), ips: sums[3] / seconds,
                                         loss: sums[0] / denom, totalLoss: sums[1] / denom, lr: Double(lr),
                                         trainAccuracy: sums[2] / sums[3])
        log.info(rec.logLine)
        try metrics?.append(rec)
        if comm.rank == 0 { for ob in observers { try ob.logged(rec) } }
        // Data parallelism must keep the weights bit-identical: check at every logged step.
        try verifyIdenticalWeights()
        window = (0, 0, 0, 0, 0)
        windowStart = DispatchTime.now().uptimeNanoseconds
        timeline?.end(Timeline.Name.metrics, since: metricsStart)
      }
      if step % saveEvery == 0 || step == totalSteps {
        try span(Timeline.Name.checkpoint) { try save(step: step, stepsPerEpoch: stepsPerEpoch) }
      }
      timeline?.end(Timeline.Name.step, since: stepStart)
    }
    try timeline?.close()
    if data.skippedCorrupt > 0 { log.warning("skipped \(data.skippedCorrupt) corrupt examples on rank \(comm.rank)") }
    let sum = try verifyIdenticalWeights()
    return TrainSummary(firstStep: startStep, globalStep: step, stepsPerEpoch: stepsPerEpoch, lastLoss: lastLoss,
                        resumedFrom: resumedFrom, checksum: sum, accumulationSteps: accumulation)
  }

  /// Rank 0 writes the checkpoint; everyone checks the weights are still identical first.
  func save(step: Int, stepsPerEpoch: Int) throws {
    let sum = try verifyIdenticalWeights()
    guard comm.rank == 0 else { return }
    var written: [String] = []
    // The TensorFlow checkpoint first: a safetensors file of the same step is what resume prefers.
    if options.checkpointFormat.writesTF {
      let prefix = dir.prefix(forStep: Int64(step))
      try ModelCheckpoint.saveTF(model: model, slots: slotSlabs, globalStep: Int64(step), prefix: prefix)
      written.append(prefix)
    }
    if options.checkpointFormat.writesSafetensors {
      let path = dir.file(forStep: Int64(step))
      try ModelCheckpoint.save(model: model, slots: slotSlabs, globalStep: Int64(step), extraMetadata: [
        "epoch": String(step / stepsPerEpoch), "batch_in_epoch": String(step % stepsPerEpoch),
        "steps_per_epoch": String(stepsPerEpoch), "world_size": String(comm.size),
        "batch_size": String(options.batchSize), "seed": String(options.seed),
        "gradient_accumulation_steps": String(accumulation),
        "global_batch": String(options.batchSize * comm.size * accumulation),
        "examples_consumed": String(step * options.batchSize * comm.size * accumulation),
        "rng": "derived from (seed, epoch, example) for data and (seed, rank, step) for dropout",
        "weights_checksum": String(sum, radix: 16),
      ], to: path)
      written.append(path)
    }
    try dir.prune(keep: options.keepCheckpointMax)
    log.info("saved checkpoint \(written.joined(separator: " and "))")
  }

  /// The global batch (world × batch × micro-batches) a checkpoint's metadata records; checkpoints
  /// from before gradient accumulation record world_size and batch_size only (K = 1).
  public static func globalBatch(recordedIn m: [String: String]) -> Int? {
    if let g = m["global_batch"].flatMap({ Int($0) }), g > 0 { return g }
    guard let w = m["world_size"].flatMap({ Int($0) }), let b = m["batch_size"].flatMap({ Int($0) }), w > 0, b > 0 else { return nil }
    return w * b * (m["gradient_accumulation_steps"].flatMap { Int($0) } ?? 1)
  }

  /// Micro-batches per step: `explicit` (--gradient-accumulation-steps) when given, else the K that
  /// keeps the resumed checkpoint's global batch on `ranks` × `batch` (1 without a checkpoint), with
  /// the one line to log when the world size changed. A global batch that cannot be kept exactly is
  /// an error unless K was given.
  public static func accumulationSteps(explicit: Int?, savedGlobalBatch saved: Int?, ranks: Int,
                                       batch: Int) throws -> (steps: Int, note: String?) {
    let perStep = ranks * batch
    if let k = explicit {
      guard let g = saved, g != perStep * k else { return (k, nil) }
      return (k, "the checkpoint's global batch was \(g); --gradient-accumulation-steps \(k) on \(ranks) rank\(ranks == 1 ? "" : "s") × batch \(batch) makes it \(perStep * k) from here on")
    }
    guard let g = saved, g != perStep else { return (1, nil) }
    guard g % perStep == 0 else {
      throw TrainingError("the checkpoint's global batch \(g) is not a multiple of \(ranks) ranks × --batch-size \(batch); "
                          + "pass --gradient-accumulation-steps to choose a new global batch, or a --batch-size that divides \(g / max(1, ranks)) exactly")
    }
    let k = g / perStep
    return (k, "keeping the checkpoint's global batch \(g) on \(ranks) rank\(ranks == 1 ? "" : "s") × batch \(batch): gradient accumulation over \(k) micro-batches per step")
  }

  /// FNV-1a of the weight bytes, allgathered: a mismatch means the ranks diverged.
  @discardableResult
  func verifyIdenticalWeights() throws -> UInt64 {
    let sum = checksum(model.parameters)
    let all = try comm.allgather(withUnsafeBytes(of: sum.littleEndian) { Array($0) })
    let sums = all.map { $0.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) } }
    if Set(sums).count != 1 {
      throw TrainingError("weights differ between ranks (checksums \(sums.map { String($0, radix: 16) }))")
    }
    return sum
  }
}

/// FNV-1a of a slab's bytes (the cross-rank identity check).
public func checksum(_ b: FloatBuffer) -> UInt64 {
  fnv1a(UnsafeRawBufferPointer(start: b.base, count: b.count * MemoryLayout<Float>.stride))
}
