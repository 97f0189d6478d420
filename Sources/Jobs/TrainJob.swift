// One rank's training job: threads, data shard, process group, training loop.
import Checkpoint
import Cluster
import Collective
import DataPipeline
import Foundation
import Kernels
import MobileNet
import Observability
import Telemetry
import Training

public enum TrainJob {
  /// Runs the training described by `flags` as the rank described by `ctx`.
  public static func run(flags: TrainFlags, context ctx: WorkerContext, groupOptions: GroupOptions,
                         log: TrainLog = PrintLog()) throws {
    try flags.checkForTraining()
    for note in flags.ignoredNotes { log.info(note) }
    Compute.setThreads(flags.threads ?? ctx.threads)
    log.info("rank \(ctx.rank): \(Compute.threads) compute threads, \(KernelISA.summary); \(GemmChoice.summary)")
    var options = try flags.trainerOptions(worldSize: ctx.worldSize)
    let precision = try PrecisionPolicy.resolve(flags.precision)
    options.precision = precision.precision
    if let note = precision.note, ctx.rank == 0 { log.info(note) }
    // One job per train dir: rank 0 alone writes it (and holds its lock); other ranks never touch it.
    let trainDirLock = ctx.rank == 0 ? try TrainDirLock.acquire(dir: (options.trainDir as NSString).standardizingPath) : nil
    defer { trainDirLock?.release() }
    if let note = trainDirLock?.note { log.info(note) }

    var lc = LoaderConfig(datasetDir: flags.datasetDir!, split: flags.split, batchSize: flags.batchSize,
                          imageSize: flags.imageSize, training: true)
    lc.rank = ctx.rank
    lc.worldSize = ctx.worldSize
    lc.ranksPerHost = ctx.localWorldSize
    lc.decodeThreads = flags.decodeThreads
    lc.seed = flags.seed
    lc.labelsOffset = flags.labelsOffset
    lc.numClasses = flags.numClasses
    lc.colorDistortion = !flags.noColorDistortion
    lc.skipCorruptRecords = flags.skipCorruptRecords
    lc.crop.minObjectCovered = flags.minObjectCovered
    lc.crop.areaRange = flags.minCropArea...1.0
    // Data errors (missing directory, empty split, labels out of range) stop here, before any socket.
    let loader = try DataLoader(lc)

    // The model signature every rank must agree on: tensor names and sizes.
    let model = Trainer.makeModel(options)
    let signature: ModelSignature = model.trainable.specs.map { ($0.name, $0.count) }
    let group = try ProcessGroup.join(ctx, modelSignature: signature, options: groupOptions)
    defer { group.close() }
    if ctx.restartCount > 0 { log.info("restart \(ctx.restartCount): resuming from the newest checkpoint in \(options.trainDir)") }
    log.info("rank \(ctx.rank)/\(ctx.worldSize): \(loader.examplesForRank) examples in this rank's shard (\(loader.shardingMode)), \(loader.decodeThreads) decode threads")
    options.trainDir = (options.trainDir as NSString).standardizingPath
    let comm = GroupCommunicator(group, overlap: !flags.noOverlap, wire: flags.gradientWire,
                                 bucketBytes: Int(flags.fusionMiB * 1024 * 1024))
    let trainer = Trainer(options: options, data: LoaderSource(loader), comm: comm, log: log, model: model)
    try observe(trainer, comm: comm, flags: flags, context: ctx, trainDir: options.trainDir, log: log)
    let s = try trainer.run()
    log.info("done: global step \(s.globalStep), last loss \(String(format: "%.4f", s.lastLoss)), weights identical on all \(ctx.worldSize) ranks (checksum \(String(s.checksum, radix: 16)))")
  }

  /// Observability (issue 13): the timeline (`--timeline`, or launch's) and TensorBoard event files.
  static func observe(_ trainer: Trainer, comm: GroupCommunicator, flags: TrainFlags, context ctx: WorkerContext,
                      trainDir: String, log: TrainLog) throws {
    if let path = ctx.timelineFile ?? flags.timeline.map({ timelinePath($0, rank: ctx.rank, worldSize: ctx.worldSize) }) {
      let t = Timeline(rank: ctx.rank, path: path, steps: ctx.timelineSteps ?? flags.timelineSteps)
      trainer.timeline = t
      comm.timeline = t
      log.info("timeline: \(t.steps) steps after \(t.warmupSteps) warm-up steps to \(path)")
    }
    if ctx.rank == 0 && !flags.noSummaries { trainer.observers.append(SummaryObserver(directory: trainDir)) }
  }

  /// `worker --timeline FILE` in a group started by hand: rank r writes FILE with `.rank<r>` before
  /// its extension, so the ranks do not overwrite each other.
  static func timelinePath(_ path: String, rank: Int, worldSize: Int) -> String {
    guard worldSize > 1 else { return path }
    let ext = (path as NSString).pathExtension
    let base = ext.isEmpty ? path : (path as NSString).deletingPathExtension
    return ext.isEmpty ? "\(base).rank\(rank)" : "\(base).rank\(rank).\(ext)"
  }
}

/// TensorBoard scalars of every logged step, in an event file of the train dir (rank 0).
final class SummaryObserver: TrainObserver {
  static let tags = (loss: "loss", totalLoss: "total_loss", learningRate: "learning_rate",
                     trainAccuracy: "train_accuracy", imagesPerSec: "images_per_sec")
  let directory: String
  var writer: EventFileWriter?
  init(directory: String) { self.directory = directory }

  func started(atStep step: Int, resumed: Bool) throws {
    let w = try EventFileWriter(directory: directory)
    // TensorBoard drops the steps ≥ the START's step: those after the checkpoint, which replay.
    if resumed { try w.addSessionStart(step: step + 1) }
    writer = w
  }

  func logged(_ r: StepRecord) throws {
    let t = Self.tags
    try writer?.addScalars([(t.loss, r.loss), (t.totalLoss, r.totalLoss), (t.learningRate, r.lr),
                            (t.trainAccuracy, r.trainAccuracy), (t.imagesPerSec, r.ips)], step: r.step)
  }
}
