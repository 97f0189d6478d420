// One rank's training job: threads, data shard, process group, training loop.
import Checkpoint
import Cluster
import Collective
import DataPipeline
import Foundation
import Kernels
import MobileNet
import Training

public enum TrainJob {
  /// Runs the training described by `flags` as the rank described by `ctx`.
  public static func run(flags: TrainFlags, context ctx: WorkerContext, groupOptions: GroupOptions,
                         log: TrainLog = PrintLog()) throws {
    try flags.checkForTraining()
    for note in flags.ignoredNotes { log.info(note) }
    Compute.setThreads(flags.threads ?? ctx.threads)
    var options = try flags.trainerOptions(worldSize: ctx.worldSize)
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
    let comm = GroupCommunicator(group, overlap: !flags.noOverlap, fp16: flags.fp16Allreduce,
                                 bucketBytes: Int(flags.fusionMiB * 1024 * 1024))
    let trainer = Trainer(options: options, data: LoaderSource(loader), comm: comm, log: log, model: model)
    let s = try trainer.run()
    log.info("done: global step \(s.globalStep), last loss \(String(format: "%.4f", s.lastLoss)), weights identical on all \(ctx.worldSize) ranks (checksum \(String(s.checksum, radix: 16)))")
  }
}
