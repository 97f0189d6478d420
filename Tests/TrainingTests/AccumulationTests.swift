// Gradient accumulation (issue 11): K micro-batches per step on W ranks is the step of W × K ranks,
// and a checkpoint resumes on another world size with the same global batch.
//
// Each micro-batch here holds exactly the examples one rank of the wider run holds (RegroupedDataset)
// and dropout is off, so BN, which normalises each micro-batch over itself, sees the same batches on
// both sides; what differs is only the order of the float sums (a ring of 4 vs a local pair + a ring
// of 2). Over one step that is ~1e-7 relative. Over several steps with BN in training mode on these
// tiny shapes (4 examples, 1×1 maps in the head) the network amplifies such differences ~10^4× per
// step (measured: 1.5e-8 after one step, 5e-4 after two), so the several-step comparison runs the
// production TrainStep with BN in inference mode, where it is exact to 1e-9, and the Trainer-level
// comparisons (BN in training mode, the real loop, checkpoints) compare one step from identical weights.
import Checkpoint
import Foundation
import Kernels
import MobileNet
import Training
import XCTest

/// Rank r of W with K micro-batches reads what ranks r·K … r·K+K−1 of a W·K-rank run read, one
/// micro-batch each in turn: the data of the wider run, regrouped.
final class RegroupedDataset: BatchSource {
  let parts: [MemoryDataset]
  var turn = 0
  var skippedCorrupt: Int { 0 }
  var examplesInSplit: Int { parts[0].examplesInSplit }

  init(count: Int, size: Int = 32, batch: Int, rank: Int, ranks: Int, microBatches k: Int) {
    parts = (0..<k).map { MemoryDataset(count: count, size: size, classes: 3, batch: batch, rank: rank * k + $0, ranks: ranks * k) }
  }

  func start(epoch: Int, skipBatches: Int) throws {
    // The trainer skips micro-batches: each part has served skipBatches / K of them.
    XCTAssertEqual(skipBatches % parts.count, 0, "resume in the middle of a step")
    for p in parts { try p.start(epoch: epoch, skipBatches: skipBatches / parts.count) }
    turn = 0
  }

  func next(images: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>) throws -> Int {
    defer { turn = (turn + 1) % parts.count }
    return try parts[turn].next(images: images, labels: labels)
  }
}

final class AccumulationTests: XCTestCase {
  var dir: String!
  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "accumulation-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

  /// Largest |a − b| allowed between the weights of two runs after one step from identical weights:
  /// the step moves weights by ~1 here (lr 0.001, the head's gradients are large at 4 examples),
  /// reordered sums differ by ~1e-7 relative (measured 2.4e-7); 1e-5 is 40× that and 10^5× below the movement.
  static let tolerance: Float = 1e-5

  func options(_ sub: String, steps: Int, batch: Int) throws -> TrainerOptions {
    var o = TrainerOptions(model: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 3, imageSize: 32, dropoutKeepProb: 1))
    o.batchSize = batch
    o.maxTrainSteps = steps
    o.learningRate = 0.001
    o.decay = .exponential
    o.trainDir = "\(dir!)/\(sub)"
    o.saveCheckpointsSteps = 2
    o.logEveryNSteps = 1
    o.seed = 7
    o.movingAverageDecay = 0.9
    o.checkpointFormat = .safetensors
    return o
  }

  /// Runs `ranks` in-process ranks of `o` with `--gradient-accumulation-steps k` (nil: automatic),
  /// each reading its `regroup` micro-batches per step as ranks of a `ranks × regroup` run would;
  /// returns rank 0's summary, final weights and log.
  func train(_ o: TrainerOptions, ranks: Int, k: Int?, regroup: Int, count: Int, size: Int = 32) throws -> (TrainSummary, [Float], MemoryLog) {
    var mine = o
    mine.gradientAccumulationSteps = k
    let opts = mine
    let lock = NSLock()
    var result: (TrainSummary, [Float])? = nil
    let log = MemoryLog()
    let errors = runInProcessRanks(ranks, bucketBytes: 32 << 10) { r, comm in
      let data = RegroupedDataset(count: count, size: size, batch: o.batchSize, rank: r, ranks: ranks, microBatches: regroup)
      let t = Trainer(options: opts, data: data, comm: comm, log: r == 0 ? log : MemoryLog())
      let s = try t.run()
      if r == 0 { lock.lock(); result = (s, t.model.parameters.array); lock.unlock() }
    }
    XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
    let r = try XCTUnwrap(result)
    return (r.0, r.1, log)
  }

  func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
    XCTAssertEqual(a.count, b.count)
    return zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
  }

  func losses(_ o: TrainerOptions) throws -> [Double] {
    let text = try String(contentsOfFile: "\(o.trainDir)/\(Trainer.metricsFile)", encoding: .utf8)
    return try text.split(separator: "\n").map {
      try XCTUnwrap((try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double)
    }
  }

  /// The real loop, BN in training mode: 4 ranks × B vs 2 ranks × B × 2 micro-batches, one step
  /// from the same start: the same weights and the same logged loss.
  func testFourRanksEqualTwoRanksAccumulatingTwoMicroBatches() throws {
    let count = 32, batch = 4  // global batch 16: 2 steps per epoch
    let wide = try options("wide", steps: 1, batch: batch)
    let (ws, wWeights, _) = try train(wide, ranks: 4, k: 1, regroup: 1, count: count)
    let narrow = try options("narrow", steps: 1, batch: batch)
    let (ns, nWeights, nLog) = try train(narrow, ranks: 2, k: 2, regroup: 2, count: count)

    XCTAssertEqual(ws.stepsPerEpoch, 2)
    XCTAssertEqual(ns.stepsPerEpoch, 2, "steps per epoch count optimizer steps of the global batch")
    XCTAssertEqual(ns.accumulationSteps, 2)
    XCTAssertTrue(nLog.lines.contains { $0.contains("batch 4 per rank × 2 accumulated micro-batches (global 16)") }, "\(nLog.lines)")
    XCTAssertLessThan(maxDifference(wWeights, nWeights), Self.tolerance, "largest weight difference between 4 × B and 2 × B × 2")
    let moved = maxDifference(wWeights, Trainer.makeModel(wide).parameters.array)
    XCTAssertGreaterThan(moved, 1000 * Self.tolerance, "the weights barely moved: the comparison would prove nothing")
    let (wl, nl) = (try losses(wide), try losses(narrow))
    XCTAssertEqual(wl.count, 1)
    XCTAssertEqual(nl.count, 1)
    XCTAssertEqual(wl[0], nl[0], accuracy: 1e-6, "logged loss: the mean over the same 16 examples")
  }

  /// Several steps (momentum, an epoch boundary) through the production TrainStep and gradient
  /// reducer, BN in inference mode so that nothing amplifies rounding: 4 ranks × B vs 2 × B × 2
  /// agree to 1e-6 (measured 3.5e-10) after 3 steps, and both moved.
  func testAccumulatedStepsMatchTheWiderRunOverSeveralSteps() throws {
    let config = try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 3, imageSize: 32, dropoutKeepProb: 1)
    let mode = ForwardMode(batchNormTraining: false, dropout: false)
    let (steps, batch, count, stepsPerEpoch) = (3, 4, 32, 2)
    func run(ranks: Int, k: Int) throws -> [Float] {
      let models = (0..<ranks).map { _ in MobileNetV2(config: config, seed: 1) }
      let errors = runInProcessRanks(ranks, bucketBytes: 16 << 10) { r, comm in
        let m = models[r]
        let step = TrainStep(model: m, optimizer: Optimizer(kind: .momentum, parameterCount: m.parameterCount),
                             hyper: StepHyperparameters())
        step.mode = mode
        let data = RegroupedDataset(count: count, batch: batch, rank: r, ranks: ranks, microBatches: k)
        let reducer = comm.gradientReducer(buffer: m.gradients.base, count: m.parameterCount)
        func load() throws { XCTAssertEqual(try data.next(images: m.inputBuffer(batch: batch), labels: m.labelBuffer(batch: batch)), batch) }
        for s in 0..<steps {
          if s % stepsPerEpoch == 0 { try data.start(epoch: s / stepsPerEpoch, skipBatches: 0) }
          try load()
          var rng = RandomState(seed: 0)
          try step.run(batch: batch, lr: 0.01, step: s, rng: &rng, reducer: reducer, microBatches: k) { _ in try load() }
        }
      }
      XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
      for other in models.dropFirst() { XCTAssertEqual(other.parameters.array, models[0].parameters.array) }
      return models[0].parameters.array
    }
    let wide = try run(ranks: 4, k: 1), narrow = try run(ranks: 2, k: 2), alone = try run(ranks: 1, k: 4)
    XCTAssertLessThan(maxDifference(wide, narrow), 1e-6)
    XCTAssertLessThan(maxDifference(wide, alone), 1e-6, "one rank × 4 micro-batches is the 4-rank step too")
    XCTAssertGreaterThan(maxDifference(wide, MobileNetV2(config: config, seed: 1).parameters.array), 1e-3)
  }

  /// Accumulation is not a no-op: the same 2 ranks without it (half the global batch) end elsewhere.
  func testAccumulationChangesTheStep() throws {
    let o = try options("k1", steps: 1, batch: 4)
    let (_, k1, _) = try train(o, ranks: 2, k: 1, regroup: 1, count: 32)
    let o2 = try options("k2", steps: 1, batch: 4)
    let (_, k2, _) = try train(o2, ranks: 2, k: 2, regroup: 2, count: 32)
    XCTAssertGreaterThan(maxDifference(k1, k2), 1000 * Self.tolerance)
  }

  /// An 8-rank checkpoint resumes on 2 ranks: the trainer picks K = 4 to keep the global batch 32,
  /// says so once, carries the step, the momentum and the data position over, and its next step ends
  /// where the uninterrupted 8-rank run's does.
  func testEightRankCheckpointResumesOnTwoRanksWithTheSameGlobalBatch() throws {
    let count = 64, batch = 4  // global batch 32: 2 steps per epoch
    let reference = try options("reference", steps: 2, batch: batch)
    let (_, refWeights, _) = try train(reference, ranks: 8, k: nil, regroup: 1, count: count)

    var first = try options("resume", steps: 1, batch: batch)
    first.saveCheckpointsSteps = 1
    let (fs, _, _) = try train(first, ranks: 8, k: nil, regroup: 1, count: count)
    XCTAssertEqual(fs.globalStep, 1)
    let saved = try CheckpointDirectory.open(try XCTUnwrap(CheckpointDirectory(first.trainDir).latest())).metadata
    XCTAssertEqual(saved["global_batch"], "32")
    XCTAssertEqual(saved["world_size"], "8")
    XCTAssertEqual(saved["gradient_accumulation_steps"], "1")

    var second = first
    second.maxTrainSteps = 2
    let (s, weights, log) = try train(second, ranks: 2, k: nil, regroup: 4, count: count)
    XCTAssertEqual(s.firstStep, 1)
    XCTAssertEqual(s.globalStep, 2)
    XCTAssertEqual(s.accumulationSteps, 4)
    XCTAssertEqual(s.stepsPerEpoch, 2)
    XCTAssertEqual(log.lines.filter { $0.contains("keeping the checkpoint's global batch 32 on 2 ranks × batch 4: gradient accumulation over 4 micro-batches per step") }.count, 1, "\(log.lines)")
    let meta = try CheckpointDirectory.open(try XCTUnwrap(CheckpointDirectory(second.trainDir).latest())).metadata
    XCTAssertEqual(meta["global_batch"], "32")
    XCTAssertEqual(meta["world_size"], "2")
    XCTAssertEqual(meta["gradient_accumulation_steps"], "4")
    XCTAssertEqual(meta["examples_consumed"], "64")
    XCTAssertEqual(meta["epoch"], "1")
    XCTAssertEqual(meta["batch_in_epoch"], "0")
    XCTAssertLessThan(maxDifference(refWeights, weights), Self.tolerance, "resumed on 2 ranks vs uninterrupted on 8")

    // On 3 ranks, 32 cannot be kept: one line naming the flag, before any step.
    var third = second
    third.maxTrainSteps = 3
    let lock = NSLock()
    var messages: [String] = []
    let errors = runInProcessRanks(3) { r, comm in
      do {
        _ = try Trainer(options: third, data: MemoryDataset(count: count, size: 32, classes: 3, batch: batch, rank: r, ranks: 3),
                        comm: comm, log: MemoryLog()).run()
      } catch { lock.lock(); messages.append("\(error)"); lock.unlock() }
    }
    XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
    XCTAssertEqual(messages.count, 3, "every rank refuses, none hangs")
    XCTAssertTrue(messages.allSatisfy { $0.contains("global batch 32") && $0.contains("--gradient-accumulation-steps") && !$0.contains("\n") }, "\(messages)")
  }

  func testAccumulationChoiceAndItsErrors() throws {
    // Fresh run: 1 unless asked.
    XCTAssertEqual(try Trainer.accumulationSteps(explicit: nil, savedGlobalBatch: nil, ranks: 2, batch: 4).steps, 1)
    XCTAssertEqual(try Trainer.accumulationSteps(explicit: 3, savedGlobalBatch: nil, ranks: 2, batch: 4).steps, 3)
    // Same world: nothing to say.
    let same = try Trainer.accumulationSteps(explicit: nil, savedGlobalBatch: 8, ranks: 2, batch: 4)
    XCTAssertEqual(same.steps, 1)
    XCTAssertNil(same.note)
    // 8 → 1 rank keeps 8 × 4 with K = 8.
    XCTAssertEqual(try Trainer.accumulationSteps(explicit: nil, savedGlobalBatch: 32, ranks: 1, batch: 4).steps, 8)
    // Not a multiple: one line naming the flag; an explicit K is obeyed and noted.
    XCTAssertThrowsError(try Trainer.accumulationSteps(explicit: nil, savedGlobalBatch: 32, ranks: 3, batch: 4)) { e in
      let text = "\(e)"
      XCTAssertFalse(text.contains("\n"))
      XCTAssertTrue(text.contains("global batch 32") && text.contains("--gradient-accumulation-steps"), text)
    }
    let asked = try Trainer.accumulationSteps(explicit: 3, savedGlobalBatch: 32, ranks: 3, batch: 4)
    XCTAssertEqual(asked.steps, 3)
    XCTAssertEqual(asked.note, "the checkpoint's global batch was 32; --gradient-accumulation-steps 3 on 3 ranks × batch 4 makes it 36 from here on")
    // Checkpoints from before accumulation record world size and batch only.
    XCTAssertEqual(Trainer.globalBatch(recordedIn: ["world_size": "8", "batch_size": "4"]), 32)
    XCTAssertEqual(Trainer.globalBatch(recordedIn: ["world_size": "2", "batch_size": "4", "gradient_accumulation_steps": "4", "global_batch": "32"]), 32)
    XCTAssertNil(Trainer.globalBatch(recordedIn: [:]))
  }
}
