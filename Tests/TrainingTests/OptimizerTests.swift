// Momentum/SGD updates and weight decay, against hand computation; a tiny model learns.
import Kernels
import MobileNet
import Training
import XCTest

final class OptimizerTests: XCTestCase {
  func testMomentumMatchesTensorFlowFormula() {
    let opt = Optimizer(kind: .momentum, parameterCount: 2, momentum: 0.9)
    var w: [Float] = [1, -2]
    let g: [Float] = [0.5, 1]
    w.withUnsafeMutableBufferPointer { opt.apply(params: $0.baseAddress!, grads: g, count: 2, lr: 0.1) }
    // accum = g; w -= lr·accum
    XCTAssertEqual(w[0], 1 - 0.05, accuracy: 1e-7)
    w.withUnsafeMutableBufferPointer { opt.apply(params: $0.baseAddress!, grads: g, count: 2, lr: 0.1) }
    // accum = 0.9·0.5 + 0.5 = 0.95
    XCTAssertEqual(w[0], 1 - 0.05 - 0.095, accuracy: 1e-6)
    XCTAssertEqual(opt.accumulators[1], 1.9, accuracy: 1e-6)
  }

  func testPlainSGD() {
    let opt = Optimizer(kind: .sgd, parameterCount: 1)
    var w: [Float] = [1]
    w.withUnsafeMutableBufferPointer { opt.apply(params: $0.baseAddress!, grads: [2], count: 1, lr: 0.25) }
    XCTAssertEqual(w[0], 0.5)
  }

  func testWeightDecayLossAndGradient() throws {
    let m = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 10, imageSize: 32), seed: 1)
    m.zeroGradients()
    let wd: Float = 0.01
    let loss = applyWeightDecay(model: m, weightDecay: wd)
    var expected = 0.0
    for s in m.trainable.specs where s.role.hasWeightDecay {
      for i in 0..<s.count { expected += Double(m.parameters[s.offset + i] * m.parameters[s.offset + i]) }
    }
    XCTAssertEqual(Double(loss), Double(wd) * expected / 2, accuracy: 1e-4 * Double(loss))
    let logits = m.trainable.spec(named: "MobilenetV2/Logits/Conv2d_1c_1x1/weights")!
    XCTAssertEqual(m.gradients[logits.offset + 3], wd * m.parameters[logits.offset + 3], accuracy: 1e-9)
    let dw = m.trainable.spec(named: "MobilenetV2/expanded_conv/depthwise/depthwise_weights")!
    XCTAssertEqual(m.gradients[dw.offset], 0)
    let gamma = m.trainable.spec(named: "MobilenetV2/Conv/BatchNorm/gamma")!
    XCTAssertEqual(m.gradients[gamma.offset], 0)
  }

  /// The vectorised weight-decay pass: the same loss and gradients, bit for bit, on 1 and 2 compute
  /// threads (fixed blocks, added in order), and the elements past the last 32-wide vector (the stem's
  /// 432 weights end in a 16-element tail) get g = wd·w like the rest.
  func testWeightDecayIsTheSameOnAnyThreadCountAndCoversTheTail() throws {
    defer { Compute.setThreads(1) }
    let m = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 10, imageSize: 32), seed: 3)
    let wd: Float = 0.01
    var runs: [(Float, [Float])] = []
    for threads in [1, 2] {
      Compute.setThreads(threads)
      m.zeroGradients()
      let loss = applyWeightDecay(model: m, weightDecay: wd)
      runs.append((loss, Array(UnsafeBufferPointer(start: m.gradients.base, count: m.parameterCount))))
    }
    XCTAssertEqual(runs[0].0.bitPattern, runs[1].0.bitPattern, "loss on 1 vs 2 threads: \(runs[0].0) vs \(runs[1].0)")
    XCTAssertTrue(runs[0].1 == runs[1].1, "gradients differ between 1 and 2 threads")
    let stem = try XCTUnwrap(m.trainable.spec(named: "MobilenetV2/Conv/weights"))
    XCTAssertNotEqual(stem.count % 32, 0, "the stem no longer has a tail: pick another tensor")
    for i in [0, stem.count - 17, stem.count - 1] {
      XCTAssertEqual(runs[0].1[stem.offset + i], wd * m.parameters[stem.offset + i], accuracy: 1e-9, "stem weight \(i)")
    }
  }

  /// The whole step trains: a tiny model memorises 8 random images. Progress is measured without
  /// dropout (its noise dominates a batch of 8) but with batch statistics, before and after.
  func testTinyModelOverfitsASmallBatch() throws {
    let m = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 4, imageSize: 32), seed: 2)
    var rng = RandomState(seed: 3)
    let batch = 8
    let x = m.inputBuffer(batch: batch)
    for i in 0..<(batch * 32 * 32 * 3) { x[i] = rng.uniform() * 2 - 1 }
    let labels = m.labelBuffer(batch: batch)
    for i in 0..<batch { labels[i] = Int32(i % 4) }
    let step = TrainStep(model: m, optimizer: Optimizer(kind: .momentum, parameterCount: m.parameterCount),
                         hyper: StepHyperparameters(labelSmoothing: 0.1, weightDecay: 0.00004))
    func cleanLoss() -> Float {
      m.forward(batch: batch, mode: ForwardMode(batchNormTraining: true, dropout: false), rng: &rng)
      return m.loss(batch: batch, labelSmoothing: 0.1).loss
    }
    let before = cleanLoss()
    for i in 0..<40 {
      let r = try step.run(batch: batch, lr: 0.01, step: i, rng: &rng)
      XCTAssertTrue(r.loss.isFinite)
      XCTAssertGreaterThan(r.totalLoss, r.loss)
    }
    let after = cleanLoss()
    XCTAssertLessThan(after, before * 0.4, "loss \(before) → \(after)")
    // Label smoothing 0.1 over 4 classes bounds the loss below by the targets' entropy (≈ 0.39).
    XCTAssertGreaterThan(after, 0.35)
  }
}
