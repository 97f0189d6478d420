// Evaluation: counts every example once (short last batch), top-k arithmetic, moving-average loading.
import Checkpoint
import Foundation
import Kernels
import MobileNet
import Training
import XCTest

/// A source whose "images" make the logits predictable is hard to build; instead check the counts
/// against an independent forward of the same model one example at a time.
final class EvaluatorTests: XCTestCase {
  func testShortLastBatchAndTopKMatchPerExampleForward() throws {
    let config = try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 7, imageSize: 32)
    let model = MobileNetV2(config: config, seed: 4)
    let data = MemoryDataset(count: 11, size: 32, classes: 7, batch: 4)  // 4 + 4 + 3
    final class EvalSource: BatchSource {
      let inner: MemoryDataset
      var examplesInSplit: Int { inner.count }
      var skippedCorrupt: Int { 0 }
      var pos = 0
      init(_ d: MemoryDataset) { inner = d }
      func start(epoch: Int, skipBatches: Int) throws { pos = 0 }
      func next(images: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>) throws -> Int {
        let n = min(inner.batch, inner.count - pos)
        let px = inner.size * inner.size * 3
        for j in 0..<n {
          inner.images.withUnsafeBufferPointer { (images + j * px).update(from: $0.baseAddress! + (pos + j) * px, count: px) }
          labels[j] = inner.labels[pos + j]
        }
        pos += n
        return n
      }
    }
    let r = try Evaluator.evaluate(model: model, data: EvalSource(data), batchSize: 4)
    XCTAssertEqual(r.examples, 11)
    // Reference: one example at a time.
    let ref = MobileNetV2(config: config, seed: 4)
    var top1 = 0, top5 = 0
    var rng = RandomState(seed: 0)
    let px = 32 * 32 * 3
    for i in 0..<11 {
      data.images.withUnsafeBufferPointer { ref.inputBuffer(batch: 1).update(from: $0.baseAddress! + i * px, count: px) }
      let z = ref.forward(batch: 1, mode: .inference, rng: &rng)
      let scores = (0..<7).map { z[$0] }
      let label = Int(data.labels[i])
      let rank = scores.filter { $0 > scores[label] }.count
      if rank == 0 { top1 += 1 }
      if rank < 5 { top5 += 1 }
    }
    XCTAssertEqual(r.top1, top1)
    XCTAssertEqual(r.top5, top5)
    XCTAssertGreaterThanOrEqual(r.top5, r.top1)
  }

  func testMovingAverageWeightsAreLoadedWhenAsked() throws {
    let dir = NSTemporaryDirectory() + "eval-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 3, imageSize: 32)
    let m = MobileNetV2(config: config, seed: 1)
    let shadow = MobileNetV2(config: config, seed: 2)
    let path = "\(dir)/m.safetensors"
    try ModelCheckpoint.save(model: m, slots: [
      NamedSlab(layout: m.trainable, buffer: shadow.parameters, suffix: "ExponentialMovingAverage"),
      NamedSlab(layout: m.state, buffer: shadow.stateValues, suffix: "ExponentialMovingAverage"),
    ], globalStep: 1, to: path)
    let file = try SafeTensorsFile(path: path)
    XCTAssertTrue(Evaluator.hasMovingAverage(file))
    let target = MobileNetV2(config: config, seed: 3)
    try Evaluator.load(file, into: target, useMovingAverage: true)
    XCTAssertEqual(target.parameters.array, shadow.parameters.array)
    try Evaluator.load(file, into: target, useMovingAverage: false)
    XCTAssertEqual(target.parameters.array, m.parameters.array)
  }
}
