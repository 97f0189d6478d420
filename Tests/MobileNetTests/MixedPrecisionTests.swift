// The bf16 step against the fp32 step on the same weights and batch (issue 12: "a test bounds the
// bf16 step's gradients against the fp32 ones").
//
// BOUND_PLACEHOLDER
import Common
import Foundation
import Kernels
import MobileNet
import XCTest

final class MixedPrecisionTests: XCTestCase {
  static let gradientBound: Float = 5e-2
  static let logitsBound: Float = 2e-2

  struct Step {
    var logits: [Float]
    var loss: Float
    var gradients: [Float]
    var parametersAfter: [Float]
  }

  /// One training-mode forward (batch statistics, no dropout), loss and backward.
  func step(_ precision: Precision, model m: MobileNetV2, batch: Int, roundInput: Bool = false) -> Step {
    m.precision = precision
    var rng = RandomState(seed: 11)
    let input = m.inputBuffer(batch: batch)
    let size = m.config.imageSize
    for i in 0..<(batch * size * size * 3) { input[i] = rng.uniform() * 2 - 1 }
    if roundInput { for i in 0..<(batch * size * size * 3) { input[i] = roundedToBF16(input[i]) } }
    let labels = m.labelBuffer(batch: batch)
    for i in 0..<batch { labels[i] = Int32(i % m.config.numClasses) }
    m.zeroGradients()
    let logits = m.forward(batch: batch, mode: ForwardMode(batchNormTraining: true, dropout: false), rng: &rng)
    let l = m.loss(batch: batch, labelSmoothing: 0.1)
    m.backward(batch: batch)
    return Step(logits: Array(UnsafeBufferPointer(start: logits, count: batch * m.config.numClasses)), loss: l.loss,
                gradients: m.gradients.array, parametersAfter: m.parameters.array)
  }

  func testBF16GradientsWithinBoundOfFP32() throws {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    let batch = 16
    let config = try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 10, imageSize: 64)
    let m = MobileNetV2(config: config, seed: 3)
    let before = m.parameters.array
    let moving = m.stateValues.array
    let fp32 = step(.fp32, model: m, batch: batch)
    m.stateValues.copy(from: moving)  // the forward updated the moving statistics; start bf16 from the same
    let bf16 = step(.bf16, model: m, batch: batch)
    // Conditioning probe: fp32 step with only the weights and the input rounded to bf16 once.
    m.stateValues.copy(from: moving)
    let saved = m.parameters.array
    for i in 0..<m.parameterCount { m.parameters[i] = roundedToBF16(m.parameters[i]) }
    let probe = step(.fp32, model: m, batch: batch, roundInput: true)
    m.parameters.copy(from: saved)

    // fp32 master weights: neither pass touched the parameters, and they are not bf16 values.
    XCTAssertEqual(bf16.parametersAfter, before)
    XCTAssertTrue(before.contains { $0.bitPattern & 0xFFFF != 0 }, "initial weights are bf16 values already")

    func rel(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
      var d: Float = 0, s: Float = 0
      for (x, y) in zip(a, b) { d = max(d, abs(x - y)); s = max(s, abs(y)) }
      return d / max(s, .leastNormalMagnitude)
    }
    let logitsRel = rel(bf16.logits[...], fp32.logits[...])
    print("probe: logits rel \(rel(probe.logits[...], fp32.logits[...])), grads:", m.trainable.specs.prefix(12).map { spec in
      String(format: "%@ %.3g/%.3g", (spec.name.split(separator: "/").dropFirst().joined(separator: "/")) as NSString,
             rel(probe.gradients[spec.offset..<(spec.offset + spec.count)], fp32.gradients[spec.offset..<(spec.offset + spec.count)]),
             rel(bf16.gradients[spec.offset..<(spec.offset + spec.count)], fp32.gradients[spec.offset..<(spec.offset + spec.count)])) })
    XCTAssertLessThan(logitsRel, Self.logitsBound)
    XCTAssertEqual(bf16.loss, fp32.loss, accuracy: fp32.loss * Self.logitsBound)
    var worst: (Float, String) = (0, ""), sum: Float = 0, n = 0
    for spec in m.trainable.specs where !spec.name.hasSuffix("/project/BatchNorm/beta") {
      // (project betas are zero in exact arithmetic, see ReferenceTests; both runs hold float noise)
      let r = rel(bf16.gradients[spec.offset..<(spec.offset + spec.count)],
                  fp32.gradients[spec.offset..<(spec.offset + spec.count)])
      XCTAssertLessThan(r, Self.gradientBound, "gradient of \(spec.name)")
      if r > worst.0 { worst = (r, spec.name) }
      sum += r; n += 1
    }
    // The bf16 arithmetic must be visible: far above float32 noise (~1e-6 here).
    XCTAssertGreaterThan(worst.0, 1e-3, "bf16 gradients equal the fp32 ones: operands not rounded?")
    print("bf16 vs fp32: logits rel \(logitsRel), loss \(bf16.loss) vs \(fp32.loss), gradients worst rel \(worst.0) (\(worst.1)), mean \(sum / Float(n)) over \(n) tensors")
  }
}
