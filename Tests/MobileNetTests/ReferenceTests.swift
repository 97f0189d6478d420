// The whole network against an independent implementation: Reference/make_reference.py builds
// MobileNetV2 0.35 in PyTorch (float64, written from TF-slim's mobilenet_v2.py, TF SAME padding
// emulated, BN eps 1e-3) and stores its weights in slim names and layouts, one input batch, and the
// logits, loss, every parameter's gradient and the updated moving statistics. We load the same
// weights, run one training-mode forward/loss/backward in float32 and compare every tensor.
//
// Tolerance: each tensor's max |ours − ref| over its max |ref| must stay below 1e-4. That is the
// float32 floor of this network, not slack: PyTorch's own float32 run of the same fixture is off its
// float64 answer by 1.9e-5 (logits) and 8.1e-5 (worst gradient, an early BN gamma), figures the script
// stores in the fixture's metadata; ours measure 1.5e-5 and 6.8e-5. A wrong padding, layout, epsilon
// or gradient term is off by 1e-2 or more.
import Checkpoint
import Common
import Kernels
import MobileNet
import XCTest

final class ReferenceTests: XCTestCase {
  static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Reference/mobilenet_v2_035_r64.safetensors").path
  static let tolerance = 1e-4
  /// bf16 step bounds (testBF16StepWithinStatedBound says why these quantities and values).
  static let bf16LossBound = 1e-2
  static let bf16LossOverProbe = 1.5
  static let bf16InferenceLogitsBound = 0.3

  struct Fixture {
    let file: SafeTensorsFile
    let model: MobileNetV2
    let batch: Int
    let labelSmoothing: Float
  }

  func loadFixture() throws -> Fixture {
    let file = try SafeTensorsFile(path: Self.fixture)
    let meta = file.metadata
    let classes = try XCTUnwrap(meta["classes"].flatMap(Int.init))
    let size = try XCTUnwrap(meta["size"].flatMap(Int.init))
    let batch = try XCTUnwrap(meta["batch"].flatMap(Int.init))
    let smoothing = try XCTUnwrap(meta["label_smoothing"].flatMap(Float.init))
    XCTAssertEqual(meta["multiplier"], "0.35")
    let model = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: classes,
                                                    imageSize: size), seed: 1)
    // Every model tensor comes from the file (a missing one is an error), nothing else is needed.
    let report = try ModelCheckpoint.load(model.checkpointSlabs, from: file)
    XCTAssertEqual(report.restored.count, model.trainable.specs.count + model.state.specs.count)
    XCTAssertTrue(report.unused.allSatisfy { $0 == "input" || $0 == "labels" || $0.hasPrefix("ref/") },
                  "fixture tensors the model does not have: \(report.unused.filter { !$0.hasPrefix("ref/") })")
    let input = try XCTUnwrap(file.floats("input"))
    XCTAssertEqual(input.count, batch * size * size * 3)
    input.withUnsafeBufferPointer { model.inputBuffer(batch: batch).update(from: $0.baseAddress!, count: input.count) }
    let labels = model.labelBuffer(batch: batch)
    for i in 0..<batch { labels[i] = Int32(try XCTUnwrap(int64(file, "labels", i))) }
    return Fixture(file: file, model: model, batch: batch, labelSmoothing: smoothing)
  }

  func int64(_ file: SafeTensorsFile, _ name: String, _ i: Int) -> Int64? {
    guard let info = file.tensors[name], info.dtype == .i64 else { return nil }
    var all = [Int64](repeating: 0, count: info.byteRange.count / 8)
    all.withUnsafeMutableBytes { file.copyBytes(of: name, to: $0.baseAddress!) }
    return i < all.count ? all[i] : nil
  }

  func doubles(_ file: SafeTensorsFile, _ name: String) throws -> [Double] {
    let info = try XCTUnwrap(file.tensors[name], "fixture lacks \(name)")
    switch info.dtype {
    case .f64:
      var out = [Double](repeating: 0, count: info.byteRange.count / 8)
      out.withUnsafeMutableBytes { file.copyBytes(of: name, to: $0.baseAddress!) }
      return out
    case .f32: return try XCTUnwrap(file.floats(name)).map(Double.init)
    default: XCTFail("\(name): unexpected dtype \(info.dtype)"); return []
    }
  }

  /// max |ours − ref| / max |ref|, asserted below the tolerance; returns it.
  @discardableResult
  func compare(_ ours: UnsafePointer<Float>, _ ref: [Double], _ what: String, tolerance: Double = tolerance,
               file: StaticString = #filePath, line: UInt = #line) -> Double {
    var maxDiff = 0.0, maxRef = 0.0
    for i in ref.indices {
      maxDiff = max(maxDiff, abs(Double(ours[i]) - ref[i]))
      maxRef = max(maxRef, abs(ref[i]))
    }
    let rel = maxDiff / max(maxRef, 1e-30)
    XCTAssertGreaterThan(maxRef, 0, "\(what): the reference is all zero", file: file, line: line)
    XCTAssertLessThan(rel, tolerance, "\(what): max |diff| \(maxDiff) over max |ref| \(maxRef)", file: file, line: line)
    return rel
  }

  func testInferenceLogitsMatchPyTorch() throws {
    let f = try loadFixture()
    var rng = RandomState(seed: 0)
    let logits = f.model.forward(batch: f.batch, mode: .inference, rng: &rng)
    let rel = compare(logits, try doubles(f.file, "ref/inference_logits"), "inference logits")
    print("reference: inference logits rel diff \(rel)")
  }

  /// One bf16 step (bf16 operands for every convolution and the logits GEMM; float32 accumulation,
  /// batch norm, loss) against the same float64 reference. The bound is looser and on different
  /// quantities than the fp32 test, for a stated reason: this fixture (slim's random init, batch 4,
  /// training-mode batch norm) amplifies a relative perturbation of its inputs about a thousandfold
  /// in the gradients (PyTorch's own float32 run, unit roundoff 6e-8, is off by 8e-5), so at bf16's
  /// 2^-9 per-tensor gradients are O(1) apart, as they are for the fp32 step with only its weights
  /// and input rounded to bf16 (MixedPrecisionTests). The training-mode loss is just as sensitive:
  /// the probe (the fp32 step with only its weights and input rounded to bf16 once) is 4.8% off, and
  /// a different but equally valid summation order moved the bf16 loss from 0.46% to 3.7% off. What
  /// bf16 must keep here: the training loss no further off than 1.5 × the probe + 1% (measured 3.7%
  /// against 4.8% for the probe) and the inference logits within 0.3 of their max (measured 0.15);
  /// a wrong layout or a missed rounding of a float32 operand read as bf16 bits is off by orders more.
  func testBF16StepWithinStatedBound() throws {
    let f = try loadFixture()
    let m = f.model
    m.precision = .bf16
    var rng = RandomState(seed: 0)
    let inference = m.forward(batch: f.batch, mode: .inference, rng: &rng)
    let infRel = compare(inference, try doubles(f.file, "ref/inference_logits"), "bf16 inference logits",
                         tolerance: Self.bf16InferenceLogitsBound)
    m.zeroGradients()
    _ = m.forward(batch: f.batch, mode: ForwardMode(batchNormTraining: true, dropout: false), rng: &rng)
    let loss = Double(m.loss(batch: f.batch, labelSmoothing: f.labelSmoothing).loss)
    let refLoss = try doubles(f.file, "ref/loss")[0]
    // The bf16 arithmetic must show: far from float32's 1e-5 on the logits.
    XCTAssertGreaterThan(infRel, 100 * Self.tolerance, "bf16 inference as exact as float32: operands not rounded?")
    m.backward(batch: f.batch)
    for spec in m.trainable.specs {
      XCTAssertTrue((0..<spec.count).allSatisfy { m.gradients[spec.offset + $0].isFinite }, "\(spec.name): non-finite bf16 gradient")
    }
    // The probe: the fp32 step with only its weights and input rounded to bf16 once.
    let p = try loadFixture()
    for i in 0..<p.model.parameterCount { p.model.parameters[i] = roundedToBF16(p.model.parameters[i]) }
    let input = p.model.inputBuffer(batch: p.batch)
    for i in 0..<(p.batch * p.model.config.imageSize * p.model.config.imageSize * 3) { input[i] = roundedToBF16(input[i]) }
    var rng2 = RandomState(seed: 0)
    _ = p.model.forward(batch: p.batch, mode: ForwardMode(batchNormTraining: true, dropout: false), rng: &rng2)
    let probeLoss = Double(p.model.loss(batch: p.batch, labelSmoothing: p.labelSmoothing).loss)
    let (lossRel, probeRel) = (abs(loss - refLoss) / refLoss, abs(probeLoss - refLoss) / refLoss)
    XCTAssertLessThanOrEqual(lossRel, Self.bf16LossOverProbe * probeRel + Self.bf16LossBound,
                             "bf16 training loss \(loss) vs \(refLoss): worse than rounding only the weights and input (\(probeLoss))")
    print("reference (bf16): inference logits rel diff \(infRel), training loss \(loss) vs \(refLoss) (rel \(abs(loss - refLoss) / refLoss)); probe \(probeLoss) (rel \(abs(probeLoss - refLoss) / refLoss))")
  }

  func testTrainingStepMatchesPyTorch() throws {
    try checkTrainingStep()
  }

  func checkTrainingStep() throws {
    let f = try loadFixture()
    let m = f.model
    var rng = RandomState(seed: 0)
    m.zeroGradients()
    let logits = m.forward(batch: f.batch, mode: ForwardMode(batchNormTraining: true, dropout: false), rng: &rng)
    var worst = (rel: 0.0, name: "")
    let logitsRel = compare(logits, try doubles(f.file, "ref/logits"), "training logits")
    let result = m.loss(batch: f.batch, labelSmoothing: f.labelSmoothing)
    let refLoss = try doubles(f.file, "ref/loss")[0]
    XCTAssertEqual(Double(result.loss), refLoss, accuracy: refLoss * Self.tolerance)
    m.backward(batch: f.batch)

    var structurallyZero = 0
    for spec in m.trainable.specs {
      let ref = try doubles(f.file, "ref/grad/\(spec.name)")
      let ours = m.gradients.base + spec.offset
      if spec.name.hasSuffix("/project/BatchNorm/beta") {
        // Exactly zero in exact arithmetic: every path from a project layer (and its residual sum)
        // reaches a conv whose training-mode batch norm subtracts the batch mean, which removes any
        // per-channel constant. The reference shows ~1e-16; ours must be float32 noise, i.e. tiny
        // next to the same layer's gamma gradient.
        let gammaName = spec.name.replacingOccurrences(of: "/beta", with: "/gamma")
        let gammaScale = try doubles(f.file, "ref/grad/\(gammaName)").map(abs).max() ?? 0
        XCTAssertLessThan(ref.map(abs).max() ?? 1, 1e-12, "\(spec.name): reference gradient is not zero")
        let oursMax = (0..<spec.count).map { abs(Double(ours[$0])) }.max() ?? 0
        XCTAssertLessThan(oursMax, Self.tolerance * gammaScale, "\(spec.name): gradient \(oursMax) should be ~0 (gamma's is \(gammaScale))")
        structurallyZero += 1
        continue
      }
      let rel = compare(ours, ref, "gradient of \(spec.name)")
      if rel > worst.rel { worst = (rel, spec.name) }
    }
    XCTAssertEqual(structurallyZero, 17)
    for spec in m.state.specs {
      compare(m.stateValues.base + spec.offset, try doubles(f.file, "ref/moving/\(spec.name)"), "updated \(spec.name)")
    }
    print("reference: torch float32 vs float64 on the same fixture: logits \(f.file.metadata["torch_f32_logits_rel"] ?? "?"), worst gradient \(f.file.metadata["torch_f32_worst_grad_rel"] ?? "?")")
    print("reference: logits rel diff \(logitsRel), loss \(result.loss) vs \(refLoss), worst gradient rel diff \(worst.rel) (\(worst.name)) over \(m.trainable.specs.count - structurallyZero) tensors, \(structurallyZero) project betas ~0 as they must be")
  }
}
