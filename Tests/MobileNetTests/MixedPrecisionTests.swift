// The bf16 step against the fp32 step on the same weights and batch (issue 12: "a test bounds the
// bf16 step's gradients against the fp32 ones").
//
// The bounds, and why. bf16 keeps 8 significant bits: every operand of every convolution and of the
// logits GEMM moves by up to 2^-9 of itself. How far that moves the gradients is a property of the
// network, so each test also runs a probe: the fp32 step with only its weights and its input rounded
// to bf16 once. Measured (mobilenet_v2_035, 64², batch 16, slim's init, 2 threads):
//   moving-statistics batch norm: bf16 vs fp32 gradient cosine 0.991, ‖Δg‖/‖g‖ 0.131, norm ratio
//     1.003, logits 0.015 of their max; the probe: 0.994, 0.106.
//   batch-statistics batch norm (the training step): ‖Δg‖/‖g‖ 0.99, the probe 0.92. At random init
//     with small batches, a training-mode step's gradient is dominated by the cancellation inside
//     the batch-norm backward (g − mean g − x̂·mean(g·x̂)), so ANY 2^-9 perturbation of the inputs
//     changes it by O(1) (fp32 vs float64 shows the same amplification, ~1000×, in ReferenceTests).
// So: with moving statistics the gradients are bounded absolutely (cosine ≥ 0.98, ‖Δg‖/‖g‖ ≤ 0.2,
// norm within 2%, logits within 0.03); in training mode bf16 must not be worse than 1.5× the probe
// (1.08× measured) and the loss stays within 3% (1.1% measured). A rounding bug (an operand not
// rounded, a stale weight copy, a wrong pointer) breaks these by far; the end-to-end check that
// bf16 trains as fp32 does is the demo (docs/training.md).
import Common
import Foundation
import Kernels
import MobileNet
import XCTest

final class MixedPrecisionTests: XCTestCase {
  struct Step {
    var logits: [Float]
    var loss: Float
    var gradients: [Float]
    var parametersAfter: [Float]
  }

  let config = try! ModelConfig(modelName: "mobilenet_v2_035", numClasses: 10, imageSize: 64)
  let batch = 16

  /// One forward (no dropout), loss and backward on a fixed random batch.
  func step(_ precision: Precision, model m: MobileNetV2, batchNormTraining: Bool, roundInput: Bool = false) -> Step {
    m.precision = precision
    var rng = RandomState(seed: 11)
    let input = m.inputBuffer(batch: batch)
    let count = batch * m.config.imageSize * m.config.imageSize * 3
    for i in 0..<count { input[i] = rng.uniform() * 2 - 1 }
    if roundInput { for i in 0..<count { input[i] = roundedToBF16(input[i]) } }
    let labels = m.labelBuffer(batch: batch)
    for i in 0..<batch { labels[i] = Int32(i % m.config.numClasses) }
    m.zeroGradients()
    let logits = m.forward(batch: batch, mode: ForwardMode(batchNormTraining: batchNormTraining, dropout: false), rng: &rng)
    let l = m.loss(batch: batch, labelSmoothing: 0.1)
    m.backward(batch: batch)
    return Step(logits: Array(UnsafeBufferPointer(start: logits, count: batch * m.config.numClasses)), loss: l.loss,
                gradients: m.gradients.array, parametersAfter: m.parameters.array)
  }

  /// The fp32 step, the bf16 step and the probe (fp32 with weights and input rounded once), all from
  /// the same weights and moving statistics.
  func threeSteps(batchNormTraining: Bool) -> (fp32: Step, bf16: Step, probe: Step, before: [Float]) {
    let m = MobileNetV2(config: config, seed: 3)
    let before = m.parameters.array, moving = m.stateValues.array
    let fp32 = step(.fp32, model: m, batchNormTraining: batchNormTraining)
    m.stateValues.copy(from: moving)
    let bf16 = step(.bf16, model: m, batchNormTraining: batchNormTraining)
    XCTAssertEqual(bf16.parametersAfter, before, "the bf16 pass changed the fp32 master weights")
    m.stateValues.copy(from: moving)
    for i in 0..<m.parameterCount { m.parameters[i] = roundedToBF16(m.parameters[i]) }
    let probe = step(.fp32, model: m, batchNormTraining: batchNormTraining, roundInput: true)
    return (fp32, bf16, probe, before)
  }

  /// (cosine, ‖a‖/‖b‖, ‖a − b‖/‖b‖) of two gradient vectors, in double.
  func compare(_ a: [Float], _ b: [Float]) -> (cos: Double, normRatio: Double, rel: Double) {
    var ab = 0.0, aa = 0.0, bb = 0.0, dd = 0.0
    for i in a.indices {
      let x = Double(a[i]), y = Double(b[i])
      ab += x * y; aa += x * x; bb += y * y; dd += (x - y) * (x - y)
    }
    return (ab / (aa * bb).squareRoot(), (aa / bb).squareRoot(), (dd / bb).squareRoot())
  }

  func maxRel(_ a: [Float], _ b: [Float]) -> Float {
    var d: Float = 0, s: Float = 0
    for (x, y) in zip(a, b) { d = max(d, abs(x - y)); s = max(s, abs(y)) }
    return d / s
  }

  func testBF16GradientsWithinBoundOfFP32() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    let (fp32, bf16, probe, before) = threeSteps(batchNormTraining: false)
    XCTAssertTrue(before.contains { $0.bitPattern & 0xFFFF != 0 }, "initial weights are bf16 values already")
    let g = compare(bf16.gradients, fp32.gradients), p = compare(probe.gradients, fp32.gradients)
    let logits = maxRel(bf16.logits, fp32.logits)
    XCTAssertGreaterThan(g.cos, 0.98)
    XCTAssertLessThan(g.rel, 0.2)
    XCTAssertEqual(g.normRatio, 1, accuracy: 0.02)
    XCTAssertLessThan(logits, 0.03)
    XCTAssertLessThan(g.rel, 1.5 * p.rel, "bf16 much worse than rounding the weights and input once")
    // The bf16 arithmetic must be visible: far above float32 noise (~1e-6 here).
    XCTAssertGreaterThan(g.rel, 1e-3, "bf16 gradients equal the fp32 ones: operands not rounded?")
    print("bf16 vs fp32 (moving statistics): gradient cosine \(g.cos), norm ratio \(g.normRatio), rel \(g.rel) (probe \(p.rel)); logits \(logits)")
  }

  func testBF16TrainingModeStepNoWorseThanRoundingItsInputs() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    let (fp32, bf16, probe, _) = threeSteps(batchNormTraining: true)
    let g = compare(bf16.gradients, fp32.gradients), p = compare(probe.gradients, fp32.gradients)
    XCTAssertLessThan(g.rel, 1.5 * p.rel, "bf16 much worse than rounding the weights and input once")
    XCTAssertEqual(bf16.loss, fp32.loss, accuracy: 0.03 * fp32.loss)
    XCTAssertTrue(bf16.gradients.allSatisfy(\.isFinite))
    XCTAssertGreaterThan(g.rel, 1e-3, "bf16 gradients equal the fp32 ones: operands not rounded?")
    print("bf16 vs fp32 (batch statistics): gradient rel \(g.rel) (probe \(p.rel)), loss \(bf16.loss) vs \(fp32.loss)")
  }

  /// bf16 mode on the generated vdpbf16ps GEMM against the emulation (float32 kernels on rounded
  /// operands): the same bf16 products, only the fp32 sum order differs. With moving statistics the
  /// two agree to float32 noise (measured: gradients 2e-7 to 5e-5, logits 3e-7 to 6e-7). In training mode the step is
  /// chaotic (see the top of this file): a different sum order flips the bf16 rounding of some
  /// activations and the batch-norm backward amplifies that to O(1) (JIT vs emulation 0.56–0.62,
  /// measured; the emulation's own 1- vs 2-thread difference went from 0.44 to 0.004 when the skinny
  /// GEMMs moved to our row kernels, so it is no yardstick). So there both are measured against the
  /// fp32 step of the same model: the JIT must be no worse than 1.5× the emulation, and the loss
  /// within 1.5 % of the emulation's.
  func testJITStepMatchesEmulatedStep() {
    guard BF16JIT.isAvailable else {
      XCTAssertEqual(BF16Arithmetic.host, .emulated)
      XCTAssertEqual(MobileNetV2(config: config).bf16Arithmetic, .emulated, "no AVX512-BF16: the model must emulate")
      print("MixedPrecisionTests: CPU lacks \(BF16JIT.requiredFlags): the bf16 step runs the emulation path")
      return
    }
    // 13 classes: logits shapes no other test generated, so the JIT must emit kernels for this step.
    let config = try! ModelConfig(modelName: "mobilenet_v2_035", numClasses: 13, imageSize: 64)
    defer { Compute.setThreads(1) }
    for training in [false, true] {
      func run(_ arithmetic: BF16Arithmetic, threads: Int) -> Step {
        Compute.setThreads(threads)
        let m = MobileNetV2(config: config, seed: 3)
        XCTAssertEqual(m.bf16Arithmetic, .jit, "AVX512-BF16 CPU: the JIT is the default")
        m.bf16Arithmetic = arithmetic
        return step(.bf16, model: m, batchNormTraining: training)
      }
      let generated = BF16Microkernel.cachedCount
      let jit = run(.jit, threads: 2)
      if !training { XCTAssertGreaterThan(BF16Microkernel.cachedCount, generated, "the JIT step generated no kernel") }
      let emulated = run(.emulated, threads: 2)
      let g = compare(jit.gradients, emulated.gradients)
      let logits = maxRel(jit.logits, emulated.logits)
      print("bf16 JIT vs emulated (\(training ? "batch" : "moving") statistics): gradient rel \(g.rel), logits \(logits), loss \(jit.loss) vs \(emulated.loss)")
      XCTAssertTrue(jit.gradients.allSatisfy(\.isFinite))
      if training {
        Compute.setThreads(2)
        let fp32 = step(.fp32, model: MobileNetV2(config: config, seed: 3), batchNormTraining: true)
        let jitError = compare(jit.gradients, fp32.gradients).rel, emulatedError = compare(emulated.gradients, fp32.gradients).rel
        print("  against fp32: JIT rel \(jitError), emulation rel \(emulatedError)")
        XCTAssertLessThan(jitError, 1.5 * emulatedError, "the JIT bf16 step is further from fp32 than the emulation")
        XCTAssertGreaterThan(jitError, 1e-3, "JIT bf16 gradients equal the fp32 ones: operands not rounded?")
        XCTAssertEqual(jit.loss, emulated.loss, accuracy: 0.015 * emulated.loss)
      } else {
        XCTAssertLessThan(g.rel, 5e-4)
        XCTAssertLessThan(logits, 1e-4)
      }
    }
  }

  /// bf16 mode keeps the memory-bound expand → depthwise pairs in float32 (`BF16Float32Expands`):
  /// which pairs, by shape alone; that those layers really skip the rounding (the step changes, and
  /// moves towards the fp32 step); and that the JIT and the emulation agree on it.
  func testBF16KeepsTheMemoryBoundExpandPairsInFloat32() throws {
    let big = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2", numClasses: 1001, imageSize: 224))
    XCTAssertEqual(big.float32LayersInBF16, (1...3).flatMap { b in
      ["expand", "depthwise"].map { "MobilenetV2/expanded_conv_\(b)/\($0)" }
    }, "1.0/224: the expands of blocks 1–3 (16 and 24 input channels, ≥ 1.8 MB per image) and their depthwise layers")
    let small = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 10, imageSize: 96))
    XCTAssertEqual(small.float32LayersInBF16, [], "0.35/96: every expand output is below 1 MiB per image")

    let saved = (BF16Float32Expands.enabled, BF16Float32Expands.minimumBytesPerImage)
    defer {
      BF16Float32Expands.enabled = saved.0; BF16Float32Expands.minimumBytesPerImage = saved.1
      Compute.setThreads(1)
    }
    Compute.setThreads(2)
    // 64²: no pair is large enough by default; with the size bound lifted, the 13 expands of at most
    // 32 input channels (and their depthwise layers) stay float32.
    BF16Float32Expands.minimumBytesPerImage = 0
    func bf16Step(kept: Bool, arithmetic: BF16Arithmetic = .host) -> (Step, [String]) {
      BF16Float32Expands.enabled = kept
      let m = MobileNetV2(config: config, seed: 3)
      m.bf16Arithmetic = arithmetic
      return (step(.bf16, model: m, batchNormTraining: false), m.float32LayersInBF16)
    }
    let fp32 = step(.fp32, model: MobileNetV2(config: config, seed: 3), batchNormTraining: false)
    let (rounded, none) = bf16Step(kept: false)
    let (kept, scopes) = bf16Step(kept: true)
    XCTAssertEqual(none, [])
    XCTAssertEqual(scopes.count, 26, "\(scopes)")
    XCTAssertTrue(scopes.allSatisfy { $0.hasSuffix("/expand") || $0.hasSuffix("/depthwise") })
    let change = compare(kept.gradients, rounded.gradients), r = compare(rounded.gradients, fp32.gradients)
    let k = compare(kept.gradients, fp32.gradients)
    print("bf16 with 26 layers float32: gradient rel to fp32 \(k.rel) (all rounded: \(r.rel)); change \(change.rel)")
    XCTAssertGreaterThan(change.rel, 1e-3, "keeping the pairs float32 changed nothing: are they still rounded?")
    XCTAssertLessThan(k.rel, r.rel, "fewer rounded operands, but further from fp32")  // 0.111 vs 0.131 measured
    XCTAssertGreaterThan(k.cos, 0.98)
    XCTAssertGreaterThan(k.rel, 1e-3, "bf16 gradients equal the fp32 ones: are the other layers rounded?")
    if BF16JIT.isAvailable {
      let (emulated, _) = bf16Step(kept: true, arithmetic: .emulated)
      let g = compare(kept.gradients, emulated.gradients)
      XCTAssertLessThan(g.rel, 5e-4, "the JIT and the emulation treat the float32 pairs differently")
      XCTAssertLessThan(maxRel(kept.logits, emulated.logits), 1e-4)
    }
  }
}
