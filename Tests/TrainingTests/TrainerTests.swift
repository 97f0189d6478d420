// The training loop: exact resume, rank-0-only checkpoints, identical weights across ranks,
// data-parallel equivalence, fine-tuning restores, log line and metrics.
import Checkpoint
import Foundation
import Kernels
import MobileNet
import Training
import XCTest

final class TrainerTests: XCTestCase {
  var dir: String!
  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "trainer-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

  func options(_ sub: String, steps: Int, classes: Int = 3) throws -> TrainerOptions {
    var o = TrainerOptions(model: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: classes, imageSize: 32))
    o.batchSize = 4
    o.maxTrainSteps = steps
    o.learningRate = 0.05
    o.decay = .exponential
    o.trainDir = "\(dir!)/\(sub)"
    o.saveCheckpointsSteps = 2
    o.keepCheckpointMax = 2
    o.logEveryNSteps = 1
    o.seed = 11
    o.movingAverageDecay = 0.99
    return o
  }

  func metrics(_ o: TrainerOptions) throws -> [[String: Any]] {
    let text = try String(contentsOfFile: "\(o.trainDir)/\(Trainer.metricsFile)", encoding: .utf8)
    return try text.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
  }

  /// Interrupted at step 4 (the last checkpoint) and resumed: the same losses after 4 and the same
  /// final weights as the uninterrupted run.
  func testResumeReproducesTheUninterruptedRun() throws {
    let data = { MemoryDataset(count: 24, size: 32, classes: 3, batch: 4) }  // 6 steps per epoch
    let full = try options("full", steps: 9)
    let a = try Trainer(options: full, data: data(), comm: SingleProcess(), log: MemoryLog()).run()

    var partial = try options("resumed", steps: 9)
    partial.maxTrainSteps = 9
    // Run to step 4, as if killed right after its checkpoint: train 4 steps in a run whose schedule
    // is the same (exponential depends only on steps per epoch), then resume with 9.
    partial.maxTrainSteps = 4
    _ = try Trainer(options: partial, data: data(), comm: SingleProcess(), log: MemoryLog()).run()
    partial.maxTrainSteps = 9
    let log = MemoryLog()
    let b = try Trainer(options: partial, data: data(), comm: SingleProcess(), log: log).run()
    XCTAssertEqual(b.firstStep, 4)
    XCTAssertTrue(log.lines.contains { $0.contains("resumed from") }, log.lines.joined(separator: "\n"))
    XCTAssertEqual(a.checksum, b.checksum, "final weights differ after resume")
    let ma = try metrics(full), mb = try metrics(partial)
    let lossesA = ma.filter { ($0["step"] as! Int) > 4 }.map { $0["loss"] as! Double }
    let lossesB = mb.filter { ($0["step"] as! Int) > 4 }.map { $0["loss"] as! Double }
    XCTAssertEqual(lossesA.count, 5)
    XCTAssertEqual(lossesA, lossesB)
    // Checkpoints pruned to the newest 2, no temporary files.
    let names = try FileManager.default.contentsOfDirectory(atPath: partial.trainDir).sorted()
    // Both formats by default: every file of a pruned step is gone, the state file names the newest.
    XCTAssertEqual(names, ["checkpoint", "metrics.jsonl",
                           "model.ckpt-8.data-00000-of-00001", "model.ckpt-8.index", "model.ckpt-8.safetensors",
                           "model.ckpt-9.data-00000-of-00001", "model.ckpt-9.index", "model.ckpt-9.safetensors"])
    XCTAssertEqual(try CheckpointDirectory.stateFileCheckpoint(inDirectory: partial.trainDir), "model.ckpt-9")
    let file = try SafeTensorsFile(path: "\(partial.trainDir)/model.ckpt-9.safetensors")
    XCTAssertNotNil(file.tensors["MobilenetV2/Conv/weights/Momentum"])
    XCTAssertNotNil(file.tensors["MobilenetV2/Conv/BatchNorm/moving_mean/ExponentialMovingAverage"])
    XCTAssertEqual(file.metadata["epoch"], "1")
  }

  /// A run that crashed after logging steps it never checkpointed (and left a torn line): the
  /// resumed run logs those steps again, and metrics.jsonl holds every step once.
  func testMetricsHoldEachStepOnceAfterARestart() throws {
    let data = { MemoryDataset(count: 24, size: 32, classes: 3, batch: 4) }
    var o = try options("restart", steps: 5)
    o.keepCheckpointMax = 5
    o.checkpointFormat = .safetensors  // the "crash" below removes the one file of step 5
    _ = try Trainer(options: o, data: data(), comm: SingleProcess(), log: MemoryLog()).run()
    // "Crash" after step 5 was logged but before its checkpoint was written, mid-way through a line.
    try FileManager.default.removeItem(atPath: "\(o.trainDir)/model.ckpt-5.safetensors")
    let h = try XCTUnwrap(FileHandle(forWritingAtPath: "\(o.trainDir)/\(Trainer.metricsFile)"))
    h.seekToEndOfFile(); h.write(Data("{\"epoch\":1.0,\"ip".utf8)); try h.close()
    o.maxTrainSteps = 7
    let log = MemoryLog()
    _ = try Trainer(options: o, data: data(), comm: SingleProcess(), log: log).run()
    XCTAssertTrue(log.lines.contains { $0.contains("dropped 2 rows after step 4") }, log.lines.joined(separator: "\n"))
    let steps = try metrics(o).map { $0["step"] as! Int }
    XCTAssertEqual(steps, [1, 2, 3, 4, 5, 6, 7])
  }

  /// `--checkpoint-format tf` alone: a run resumed from TensorFlow checkpoints (no metadata, shapes
  /// checked) ends with the uninterrupted run's weights, and fine-tuning restores from the TF
  /// checkpoint's moving averages when asked.
  func testResumeAndRestoreFromTensorFlowCheckpoints() throws {
    let data = { MemoryDataset(count: 24, size: 32, classes: 3, batch: 4) }
    let full = try options("full", steps: 6)
    let a = try Trainer(options: full, data: data(), comm: SingleProcess(), log: MemoryLog()).run()
    var tf = try options("tf", steps: 4)
    tf.checkpointFormat = .tf
    _ = try Trainer(options: tf, data: data(), comm: SingleProcess(), log: MemoryLog()).run()
    tf.maxTrainSteps = 6
    let b = try Trainer(options: tf, data: data(), comm: SingleProcess(), log: MemoryLog()).run()
    XCTAssertEqual(b.firstStep, 4)
    XCTAssertEqual(b.resumedFrom, "\(tf.trainDir)/model.ckpt-4")
    XCTAssertEqual(a.checksum, b.checksum, "final weights differ after resuming from a TF checkpoint")
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tf.trainDir).sorted(),
                   ["checkpoint", "metrics.jsonl", "model.ckpt-4.data-00000-of-00001", "model.ckpt-4.index",
                    "model.ckpt-6.data-00000-of-00001", "model.ckpt-6.index"])

    // Fine-tune from the TF directory's moving averages, logits excluded.
    var ft = try options("ft", steps: 1, classes: 5)
    ft.restorePath = tf.trainDir
    ft.restoreMovingAverage = true
    ft.learningRate = 0
    ft.movingAverageDecay = nil
    let log = MemoryLog()
    let t = Trainer(options: ft, data: MemoryDataset(count: 8, size: 32, classes: 5, batch: 4), comm: SingleProcess(), log: log)
    _ = try t.run()
    XCTAssertTrue(log.lines.contains { $0.contains("model.ckpt-6 (moving-average shadows)") }, log.lines.joined(separator: "\n"))
    let src = try TFCheckpointFile(prefix: "\(tf.trainDir)/model.ckpt-6")
    let shadow = try src.readFloats("MobilenetV2/expanded_conv_3/depthwise/depthwise_weights/ExponentialMovingAverage")!
    let raw = try src.readFloats("MobilenetV2/expanded_conv_3/depthwise/depthwise_weights")!
    let spec = t.model.trainable.spec(named: "MobilenetV2/expanded_conv_3/depthwise/depthwise_weights")!
    let got = Array(UnsafeBufferPointer(start: t.model.parameters.base + spec.offset, count: spec.count))
    XCTAssertNotEqual(shadow, raw)
    XCTAssertEqual(got, shadow, "lr 0: the restored shadow is unchanged after one step")
  }

  func testTwoRanksKeepIdenticalWeightsAndOnlyRankZeroWrites() throws {
    let lock = NSLock()
    var summaries = [TrainSummary?](repeating: nil, count: 2)
    var o = try options("two", steps: 4)
    o.seed = 3
    let opts = o
    let errors = runInProcessRanks(2) { r, comm in
      var mine = opts
      mine.seed = opts.seed + UInt64(r) * 1000  // different seeds: rank 0's broadcast must win
      let t = Trainer(options: mine, data: MemoryDataset(count: 32, size: 32, classes: 3, batch: 4, rank: r, ranks: 2),
                      comm: comm, log: MemoryLog())
      let s = try t.run()
      lock.lock(); summaries[r] = s; lock.unlock()
    }
    XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
    XCTAssertNotNil(summaries[0])
    XCTAssertEqual(summaries[0]?.checksum, summaries[1]?.checksum)
    XCTAssertEqual(summaries[0]?.stepsPerEpoch, 32 / (4 * 2))
    XCTAssertEqual(CheckpointDirectory(o.trainDir).checkpoints().map(\.step), [2, 4])
  }

  /// Gradient averaging: with BN in inference mode and no dropout, one step on 2 ranks × B equals one
  /// step on 1 rank × 2B. Both sides run the production TrainStep; the 2 ranks reduce through the
  /// real gradient reducer (small buckets, so several are in flight while backward runs).
  func testTwoRanksTimesBEqualsOneRankTimesTwoB() throws {
    let config = try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 3, imageSize: 32)
    let data = MemoryDataset(count: 8, size: 32, classes: 3, batch: 8)
    try data.start(epoch: 0, skipBatches: 0)
    let mode = ForwardMode(batchNormTraining: false, dropout: false)
    let hyper = StepHyperparameters(labelSmoothing: 0.1, weightDecay: 0.00004)
    func makeStep(_ m: MobileNetV2) -> TrainStep {
      let s = TrainStep(model: m, optimizer: Optimizer(kind: .momentum, parameterCount: m.parameterCount), hyper: hyper)
      s.mode = mode
      return s
    }

    let single = MobileNetV2(config: config, seed: 1)
    _ = try data.next(images: single.inputBuffer(batch: 8), labels: single.labelBuffer(batch: 8))
    var rng = RandomState(seed: 0)
    try makeStep(single).run(batch: 8, lr: 0.1, step: 0, rng: &rng)

    let halves = (0..<2).map { _ in MobileNetV2(config: config, seed: 1) }
    let px = 32 * 32 * 3
    for (r, m) in halves.enumerated() {
      m.inputBuffer(batch: 4).update(from: single.inputBuffer(batch: 8) + r * 4 * px, count: 4 * px)
      m.labelBuffer(batch: 4).update(from: single.labelBuffer(batch: 8) + r * 4, count: 4)
    }
    let errors = runInProcessRanks(2, bucketBytes: 16 << 10) { r, comm in
      let m = halves[r]
      var rng = RandomState(seed: 0)
      try makeStep(m).run(batch: 4, lr: 0.1, step: 0, rng: &rng,
                          reducer: comm.gradientReducer(buffer: m.gradients.base, count: m.parameterCount))
    }
    XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
    XCTAssertEqual(halves[0].parameters.array, halves[1].parameters.array)
    var worst: Float = 0
    for i in 0..<single.parameterCount { worst = max(worst, abs(single.parameters[i] - halves[0].parameters[i])) }
    XCTAssertLessThan(worst, 1e-5, "largest weight difference after one step: \(worst)")
    XCTAssertNotEqual(single.parameters.array, MobileNetV2(config: config, seed: 1).parameters.array)
  }

  func testFineTuneRestoresAllButExcludedAndLogsTheLineFormat() throws {
    // A 5-class "pretrained" checkpoint, fine-tuned to 3 classes.
    var pre = try options("pre", steps: 2, classes: 5)
    pre.movingAverageDecay = nil
    _ = try Trainer(options: pre, data: MemoryDataset(count: 8, size: 32, classes: 5, batch: 4), comm: SingleProcess(), log: MemoryLog()).run()
    var ft = try options("ft", steps: 1, classes: 3)
    ft.restorePath = pre.trainDir
    let log = MemoryLog()
    let t = Trainer(options: ft, data: MemoryDataset(count: 8, size: 32, classes: 3, batch: 4), comm: SingleProcess(), log: log)
    _ = try t.run()
    XCTAssertTrue(log.lines.contains { $0.hasPrefix("restored ") && $0.contains("model.ckpt-2.safetensors") }, log.lines.joined(separator: "\n"))
    XCTAssertTrue(log.lines.contains { $0.contains("not restored") && $0.contains("MobilenetV2/Logits/Conv2d_1c_1x1/weights") })
    let stepLine = try XCTUnwrap(log.lines.first { $0.hasPrefix("step:") })
    for key in ["epoch:", "ips:", "loss:", "total_loss:", "lr:", "train_accuracy:"] { XCTAssertTrue(stepLine.contains(key), stepLine) }
    // Without the exclusion the 5-class logits cannot load into 3 classes: an error naming the tensor.
    var strict = try options("strict", steps: 1, classes: 3)
    strict.restorePath = pre.trainDir
    strict.restoreExclude = []
    XCTAssertThrowsError(try Trainer(options: strict, data: MemoryDataset(count: 8, size: 32, classes: 3, batch: 4),
                                     comm: SingleProcess(), log: MemoryLog()).run()) { e in
      XCTAssertTrue("\(e)".contains("MobilenetV2/Logits/Conv2d_1c_1x1/"), "\(e)")
    }
  }

  func testNeitherOrBothStopConditionsIsAnError() throws {
    var o = try options("x", steps: 1)
    o.maxTrainSteps = nil
    XCTAssertThrowsError(try Trainer(options: o, data: MemoryDataset(count: 8, size: 32, classes: 3, batch: 4), comm: SingleProcess(), log: MemoryLog()).run())
    o.maxTrainSteps = 2; o.maxEpochs = 1
    XCTAssertThrowsError(try Trainer(options: o, data: MemoryDataset(count: 8, size: 32, classes: 3, batch: 4), comm: SingleProcess(), log: MemoryLog()).run())
  }
}
