// Forward/backward of the whole network: shapes, modes, gradient ranges, finite differences.
import Kernels
import MobileNet
import XCTest

final class ModelTests: XCTestCase {
  func tiny(size: Int = 64, classes: Int = 5, keep: Float = 0.8) throws -> MobileNetV2 {
    MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: classes, imageSize: size,
                                        dropoutKeepProb: keep), seed: 3)
  }

  func fillInput(_ m: MobileNetV2, batch: Int, seed: UInt64) {
    var rng = RandomState(seed: seed)
    let s = m.config.imageSize
    let x = m.inputBuffer(batch: batch)
    for i in 0..<(batch * s * s * 3) { x[i] = rng.uniform() * 2 - 1 }
    let l = m.labelBuffer(batch: batch)
    for i in 0..<batch { l[i] = Int32(i % m.config.numClasses) }
  }

  func testInferenceIsPerExampleAndDeterministic() throws {
    let m = try tiny()
    var rng = RandomState(seed: 1)
    fillInput(m, batch: 3, seed: 10)
    let first = Array(UnsafeBufferPointer(start: m.inputBuffer(batch: 3), count: 64 * 64 * 3))
    let logits3 = Array(UnsafeBufferPointer(start: m.forward(batch: 3, mode: .inference, rng: &rng), count: 15))
    XCTAssertTrue(logits3.allSatisfy(\.isFinite))
    // The same first image alone gives the same logits: inference mode has no batch coupling.
    let x1 = m.inputBuffer(batch: 1)
    first.withUnsafeBufferPointer { x1.update(from: $0.baseAddress!, count: first.count) }
    let logits1 = Array(UnsafeBufferPointer(start: m.forward(batch: 1, mode: .inference, rng: &rng), count: 5))
    for k in 0..<5 { XCTAssertEqual(logits1[k], logits3[k], accuracy: 1e-4) }
  }

  func testTrainingForwardUpdatesMovingStatisticsInferenceDoesNot() throws {
    let m = try tiny()
    var rng = RandomState(seed: 1)
    fillInput(m, batch: 2, seed: 11)
    let before = m.stateValues.array
    m.forward(batch: 2, mode: .inference, rng: &rng)
    XCTAssertEqual(m.stateValues.array, before)
    m.forward(batch: 2, mode: .training, rng: &rng)
    XCTAssertNotEqual(m.stateValues.array, before)
  }

  /// With the profile on, one training step times every conv + BN layer forward and backward, by the
  /// indices `layerSummaries` describes (stem first, Conv_1 last); with it off, nothing is recorded.
  func testProfileTimesEveryLayerForwardAndBackward() throws {
    let m = try tiny()
    var rng = RandomState(seed: 1)
    fillInput(m, batch: 2, seed: 13)
    defer { Profile.enabled = false; Profile.reset() }
    func step() {
      m.zeroGradients()
      m.forward(batch: 2, mode: .training, rng: &rng)
      m.loss(batch: 2, labelSmoothing: 0.1)
      m.backward(batch: 2)
    }
    Profile.reset()
    Profile.enabled = false
    step()
    XCTAssertTrue(Profile.layerForward.isEmpty && Profile.layerBackward.isEmpty)
    Profile.enabled = true
    step()
    let layers = m.layerSummaries
    XCTAssertEqual(layers.count, 52)
    XCTAssertEqual(layers.first?.scope, "MobilenetV2/Conv")
    XCTAssertEqual(layers.first?.kind, "conv")
    XCTAssertEqual(layers.last?.scope, "MobilenetV2/Conv_1")
    XCTAssertEqual(layers.filter { $0.kind == "depthwise" }.count, 17)
    XCTAssertEqual(Set(Profile.layerForward.keys), Set(layers.indices))
    XCTAssertEqual(Set(Profile.layerBackward.keys), Set(layers.indices))
    XCTAssertTrue(Profile.layerForward.values.allSatisfy { $0 > 0 } && Profile.layerBackward.values.allSatisfy { $0 > 0 })
  }

  func testGradientRangesArriveInOrderAndCoverTheSlab() throws {
    let m = try tiny()
    var rng = RandomState(seed: 1)
    fillInput(m, batch: 2, seed: 12)
    m.zeroGradients()
    m.forward(batch: 2, mode: .training, rng: &rng)
    m.loss(batch: 2, labelSmoothing: 0.1)
    var ranges: [Range<Int>] = []
    m.backward(batch: 2) { ranges.append($0) }
    XCTAssertEqual(ranges.first?.lowerBound, 0)
    XCTAssertEqual(ranges.last?.upperBound, m.parameterCount)
    for (a, b) in zip(ranges, ranges.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound) }
    XCTAssertEqual(ranges.count, 52)
    // Every trainable tensor receives some gradient.
    for s in m.trainable.specs {
      let g = UnsafeBufferPointer(start: m.gradients.base + s.offset, count: s.count)
      XCTAssertTrue(g.contains { $0 != 0 }, "no gradient reached \(s.name)")
    }
  }

  /// Finite differences through the whole network for a few scalars of tensors at every depth:
  /// the largest-gradient entries of each tensor (a clean signal) plus random ones.
  /// Dropout is off (a fresh mask per evaluation would not be a function of the weights).
  func finiteDifferenceMismatches(mode: ForwardMode, names: [String], h: Float, atol: Double, rtol: Double) throws -> (bad: Int, checked: Int) {
    let m = try tiny(size: 64, classes: 5, keep: 1)
    fillInput(m, batch: 4, seed: 13)
    var rng = RandomState(seed: 1)
    let savedState = m.stateValues.array
    func lossValue() -> Double {
      m.stateValues.copy(from: savedState)  // training-mode forwards move the averages: keep them fixed
      m.forward(batch: 4, mode: mode, rng: &rng)
      return Double(m.loss(batch: 4, labelSmoothing: 0.1).loss)
    }
    m.zeroGradients()
    _ = lossValue()
    m.backward(batch: 4)
    var pick = RandomState(seed: 77)
    var checked = 0, bad = 0
    for name in names {
      let s = try XCTUnwrap(m.trainable.spec(named: name))
      var idx = (0..<s.count).sorted { abs(m.gradients[s.offset + $0]) > abs(m.gradients[s.offset + $1]) }.prefix(3).map { $0 }
      idx += (0..<2).map { _ in Int(pick.next() % UInt64(s.count)) }
      for i in idx {
        let p = s.offset + i
        let saved = m.parameters[p]
        m.parameters[p] = saved + h
        let up = lossValue()
        m.parameters[p] = saved - h
        let down = lossValue()
        m.parameters[p] = saved
        let numeric = (up - down) / (2 * Double(h))
        let analytic = Double(m.gradients[p])
        checked += 1
        if abs(numeric - analytic) > atol + rtol * max(abs(numeric), abs(analytic)) {
          bad += 1
          print("FD mismatch (\(mode)) \(name)[\(i)]: analytic \(analytic) numeric \(numeric)")
        }
      }
    }
    return (bad, checked)
  }

  static let everyDepth = [
    "MobilenetV2/Conv/weights", "MobilenetV2/Conv/BatchNorm/gamma", "MobilenetV2/Conv/BatchNorm/beta",
    "MobilenetV2/expanded_conv/depthwise/depthwise_weights", "MobilenetV2/expanded_conv/project/weights",
    "MobilenetV2/expanded_conv_3/expand/weights", "MobilenetV2/expanded_conv_3/depthwise/BatchNorm/gamma",
    "MobilenetV2/expanded_conv_8/project/BatchNorm/beta", "MobilenetV2/expanded_conv_13/depthwise/depthwise_weights",
    "MobilenetV2/expanded_conv_16/project/weights", "MobilenetV2/Conv_1/weights", "MobilenetV2/Conv_1/BatchNorm/gamma",
    "MobilenetV2/Logits/Conv2d_1c_1x1/weights", "MobilenetV2/Logits/Conv2d_1c_1x1/biases",
  ]

  /// BN in inference mode makes the network piecewise linear, so differences are exact up to float
  /// rounding and the occasional ReLU6 kink: every layer is checked tightly.
  func testWholeModelGradientsInferenceBatchNorm() throws {
    let r = try finiteDifferenceMismatches(mode: .inference, names: Self.everyDepth, h: 1e-3, atol: 1e-3, rtol: 0.02)
    XCTAssertLessThanOrEqual(r.bad, 1, "\(r.bad) of \(r.checked) finite-difference checks failed")
  }

  /// Training-mode BN couples the batch; at initialisation the early layers of a 52-BN-layer network
  /// are chaotic (gradients ~100, many ReLU6 kinks within any h), so finite differences are only
  /// meaningful for the later layers and the head. The early layers' training-mode backward is covered
  /// by the kernel tests and the inference-mode check above. Tolerances are wider for the same reason
  /// (e.g. a beta whose true gradient is 0 because a training-mode BN downstream removes any shift
  /// reads as ~1e-3 through float noise).
  func testWholeModelGradientsTrainingBatchNorm() throws {
    let late = Array(Self.everyDepth.dropFirst(7))
    let r = try finiteDifferenceMismatches(mode: ForwardMode(batchNormTraining: true, dropout: false),
                                           names: late, h: 1e-3, atol: 3e-3, rtol: 0.1)
    XCTAssertLessThanOrEqual(r.bad, 1, "\(r.bad) of \(r.checked) finite-difference checks failed")
  }

  /// The expand layers' backward from P = k·mask(dA) and x (`pointwiseBackwardScaled`, which the step
  /// takes for expanded tensors ≥ 64 MiB) against the direct one, on every expand layer of the tiny
  /// model, in both BN modes.
  func testScaledExpandBackwardMatchesTheDirectOne() throws {
    let saved = (ScaledExpandBackward.enabled, ScaledExpandBackward.minimumBytes)
    defer { ScaledExpandBackward.enabled = saved.0; ScaledExpandBackward.minimumBytes = saved.1; GemmChoice.forced = nil }
    ScaledExpandBackward.minimumBytes = 0
    GemmChoice.forced = .own  // the scaled path runs on our GEMMs only (MNV2_GEMM=blas would skip it)
    for mode in [ForwardMode(batchNormTraining: true, dropout: false), .inference] {
      func gradients(scaled: Bool) throws -> (MobileNetV2, [Float]) {
        ScaledExpandBackward.enabled = scaled
        let m = try tiny(size: 64, classes: 5, keep: 1)
        fillInput(m, batch: 4, seed: 13)
        var rng = RandomState(seed: 1)
        // Moving statistics of this batch (decay 0), so that inference-mode activations are in range
        // and its gradients are not ~0 (at the initial mean 0, variance 1 they are ~1e-12 here).
        m.batchNormDecay = 0
        m.forward(batch: 4, mode: ForwardMode(batchNormTraining: true, dropout: false), rng: &rng)
        m.zeroGradients()
        m.forward(batch: 4, mode: mode, rng: &rng)
        _ = m.loss(batch: 4, labelSmoothing: 0.1)
        m.backward(batch: 4)
        return (m, Array(UnsafeBufferPointer(start: m.gradients.base, count: m.trainable.count)))
      }
      let (m, scaled) = try gradients(scaled: true)
      let (_, direct) = try gradients(scaled: false)
      var differing = 0
      for s in m.trainable.specs {
        let a = scaled[s.offset..<(s.offset + s.count)], b = direct[s.offset..<(s.offset + s.count)]
        let scale = b.map { abs(Double($0)) }.max() ?? 0
        let worst = zip(a, b).map { abs(Double($0) - Double($1)) }.max() ?? 0
        // (The project layers' betas, whose true gradient is 0 under a training-mode BN downstream,
        // are float noise ~1e-5 in both paths: hence the absolute term.)
        XCTAssertLessThanOrEqual(worst, 1e-4 * scale + 3e-5, "\(mode) \(s.name): max |scaled − direct| \(worst), max |g| \(scale)")
        if s.name.contains("expand") && worst > 0 { differing += 1 }
      }
      // The expand layers' gradients really came from the other path (not bit-identical).
      XCTAssertGreaterThan(differing, 0, "\(mode): every expand gradient identical: was the scaled path taken?")
    }
  }

  /// The fused training forward of each expand → depthwise pair (`expandDepthwiseForward`, forced on
  /// every pair) against the two passes. The expand's batch-norm statistics come from its input's
  /// covariance instead of from z, equal to rounding: logits, loss and moving statistics agree to
  /// ~1e-5 (with decay 0 the moving statistics are the batch's own, so that checks every layer's
  /// statistics directly: a variance 1e-4 off fails there). The gradients differ more where a ReLU6
  /// input that rounding moves across 0 or 6 flips its mask: one flipped pixel moves a weight gradient
  /// by its row's share (up to ~4 % of the largest element at 16² × 4 pixels, measured), and which pixels
  /// flip changes with any rounding. They are held to 4× what the same two passes give for an input
  /// perturbed by ±1e-6 of itself plus 5 % of the largest element: a check for gross errors only; the
  /// kernel tests (ExpandDepthwiseForwardTests) check the arithmetic bit for bit and to 1e-6.
  /// With the scaled expand backward on every expand layer as well (`ScaledExpandBackward`), as the two
  /// run together at 1.0/224 b32 layer 3, and without; and in bf16 mode with every expand pair kept
  /// float32 (`BF16Float32Expands`, lifted to every pair), as bf16 runs the pairs of 1.0/224's blocks 1–3.
  /// In bf16 mode a training step is chaotic (MixedPrecisionTests: the ~1e-6 differences flip the
  /// bf16 rounding of the first rounded layer's operands, and batch norm amplifies that), so there the
  /// check is the first fused pair: its statistics (everything before it is the same computation)
  /// agree to 1e-5, as in fp32, and the rest must stay finite.
  func testFusedExpandForwardMatchesTheTwoPasses() throws {
    let saved = (FusedExpandForward.enabled, FusedExpandForward.minimumBytes, ScaledExpandBackward.minimumBytes)
    let savedBF16 = (BF16Float32Expands.maximumInputChannels, BF16Float32Expands.minimumBytesPerImage)
    defer {
      FusedExpandForward.enabled = saved.0; FusedExpandForward.minimumBytes = saved.1
      ScaledExpandBackward.minimumBytes = saved.2; GemmChoice.forced = nil
      BF16Float32Expands.maximumInputChannels = savedBF16.0; BF16Float32Expands.minimumBytesPerImage = savedBF16.1
    }
    FusedExpandForward.minimumBytes = 0
    BF16Float32Expands.maximumInputChannels = .max
    BF16Float32Expands.minimumBytesPerImage = 0
    GemmChoice.forced = .own  // the fused path runs on our GEMM only
    for (precision, scaledBackward) in [(Precision.fp32, false), (.fp32, true), (.bf16, true)] {
    ScaledExpandBackward.minimumBytes = scaledBackward ? 0 : saved.2
    struct Run { let logits: [Float], loss: Float, state: [Float], gradients: [Float] }
    var specs: [(name: String, offset: Int, count: Int)] = [], stateSpecs = specs
    func run(fused: Bool, perturbation: Float = 0) throws -> Run {
      FusedExpandForward.enabled = fused
      let m = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2", numClasses: 5, imageSize: 128, dropoutKeepProb: 1),
                          seed: 3)
      m.precision = precision
      if precision == .bf16 { XCTAssertEqual(m.float32LayersInBF16.count, 32, "every expand pair float32") }
      specs = m.trainable.specs.map { ($0.name, $0.offset, $0.count) }
      stateSpecs = m.state.specs.map { ($0.name, $0.offset, $0.count) }
      m.batchNormDecay = 0  // the moving statistics are this batch's: compared below, they check the statistics themselves
      fillInput(m, batch: 4, seed: 21)
      let x = m.inputBuffer(batch: 4)
      for i in 0..<(4 * 128 * 128 * 3) { x[i] *= 1 + perturbation }
      var rng = RandomState(seed: 1)
      m.zeroGradients()
      let logits = Array(UnsafeBufferPointer(start: m.forward(batch: 4, mode: ForwardMode(batchNormTraining: true, dropout: false),
                                                              rng: &rng), count: 20))
      let loss = m.loss(batch: 4, labelSmoothing: 0.1).loss
      m.backward(batch: 4)
      return Run(logits: logits, loss: loss, state: m.stateValues.array,
                 gradients: Array(UnsafeBufferPointer(start: m.gradients.base, count: m.trainable.count)))
    }
    let fused = try run(fused: true), twoPass = try run(fused: false)
    if precision == .bf16 {
      // The statistics up to and including block 1's pair (the first fused one).
      let firstPair = stateSpecs.prefix { !$0.name.contains("expanded_conv_1/project") }
      XCTAssertTrue(firstPair.last?.name.contains("expanded_conv_1/depthwise") ?? false, "\(firstPair.map(\.name))")
      for s in firstPair {
        for i in s.offset..<(s.offset + s.count) {
          XCTAssertEqual(fused.state[i], twoPass.state[i], accuracy: 1e-5 * (1 + abs(twoPass.state[i])), "bf16 \(s.name) [\(i - s.offset)]")
        }
      }
      let pair = firstPair.suffix(4).map { $0.offset..<($0.offset + $0.count) }
      XCTAssertTrue(pair.contains { fused.state[$0] != twoPass.state[$0] }, "bf16: identical statistics: was the fused path taken?")
      XCTAssertTrue(fused.gradients.allSatisfy(\.isFinite) && fused.logits.allSatisfy(\.isFinite))
      XCTAssertEqual(fused.loss, twoPass.loss, accuracy: 0.05 * abs(twoPass.loss))
      continue
    }
    let perturbed = [try run(fused: false, perturbation: 1e-6), try run(fused: false, perturbation: -1e-6)]
    for i in 0..<20 { XCTAssertEqual(fused.logits[i], twoPass.logits[i], accuracy: 1e-4 * (1 + abs(twoPass.logits[i])), "logit \(i)") }
    XCTAssertEqual(fused.loss, twoPass.loss, accuracy: 1e-5 * abs(twoPass.loss))
    for i in fused.state.indices {
      XCTAssertEqual(fused.state[i], twoPass.state[i], accuracy: 1e-5 * (1 + abs(twoPass.state[i])), "moving statistic \(i)")
    }
    var differing = 0
    for s in specs {
      let range = s.offset..<(s.offset + s.count)
      func worst(_ a: Run) -> Double { zip(a.gradients[range], twoPass.gradients[range]).map { abs(Double($0) - Double($1)) }.max() ?? 0 }
      let scale = twoPass.gradients[range].map { abs(Double($0)) }.max() ?? 0
      let (got, yardstick) = (worst(fused), perturbed.map(worst).max()!)
      XCTAssertLessThanOrEqual(got, 4 * yardstick + 0.05 * scale + 1e-7,
                               "\(s.name): max |fused − two passes| \(got), perturbed input \(yardstick), max |g| \(scale)")
      if got > 0 { differing += 1 }
    }
    XCTAssertGreaterThan(differing, 0, "every gradient identical: was the fused path taken?")
    XCTAssertNotEqual(fused.state, twoPass.state, "identical moving statistics: was the fused path taken?")
    }
  }

  /// One step (forward, loss, backward) of a fresh 64² 5-class model on two fixed images: its logits,
  /// moving statistics and gradients, for the tests that compare two settings bit for bit.
  func oneStepOfSmallModel(seed: UInt64, inputSeed: UInt64, mode: ForwardMode, precision: Precision = .fp32) throws -> [[Float]] {
    let m = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2", numClasses: 5, imageSize: 64, dropoutKeepProb: 1),
                        seed: seed)
    m.precision = precision
    fillInput(m, batch: 2, seed: inputSeed)
    var rng = RandomState(seed: 1)
    m.zeroGradients()
    let logits = Array(UnsafeBufferPointer(start: m.forward(batch: 2, mode: mode, rng: &rng), count: 10))
    _ = m.loss(batch: 2, labelSmoothing: 0.1)
    m.backward(batch: 2)
    return [logits, m.stateValues.array, Array(UnsafeBufferPointer(start: m.gradients.base, count: m.trainable.count))]
  }

  /// The fused forward stays off where it does not apply, with its size threshold at 0: inference
  /// (BN from the moving statistics), bf16, and OpenBLAS running the GEMMs. Logits, moving statistics
  /// and gradients are bit-identical with it enabled and disabled.
  func testFusedExpandForwardIsNotTakenWhereItDoesNotApply() throws {
    let saved = (FusedExpandForward.enabled, FusedExpandForward.minimumBytes)
    defer { FusedExpandForward.enabled = saved.0; FusedExpandForward.minimumBytes = saved.1; GemmChoice.forced = nil }
    FusedExpandForward.minimumBytes = 0
    let training = ForwardMode(batchNormTraining: true, dropout: false)
    for (name, mode, precision, gemm) in [("inference", ForwardMode.inference, Precision.fp32, GemmImplementation.own),
                                          ("bf16", training, .bf16, .own), ("OpenBLAS", training, .fp32, .blas)] {
      GemmChoice.forced = gemm
      func run(enabled: Bool) throws -> [[Float]] {
        FusedExpandForward.enabled = enabled
        return try oneStepOfSmallModel(seed: 3, inputSeed: 22, mode: mode, precision: precision)
      }
      let on = try run(enabled: true), off = try run(enabled: false)
      for (i, what) in ["logits", "moving statistics", "gradients"].enumerated() {
        XCTAssertEqual(on[i].map(\.bitPattern), off[i].map(\.bitPattern), "\(name): \(what)")
      }
    }
  }

  /// The stream-ahead prefetches (`StreamAhead`: BN backward apply, BN reductions, depthwise input
  /// transform) change when lines arrive, never what is computed: a fp32 training step's logits, moving
  /// statistics and gradients are bit-identical with them on and off, on every instruction set here.
  func testTrainingStepIsBitIdenticalWithAndWithoutStreamAheadPrefetch() throws {
    let saved = StreamAhead.enabled
    defer { StreamAhead.enabled = saved; KernelISA.use(KernelISA.available[0]) }
    for isa in KernelISA.available {
      KernelISA.use(isa)
      func run(enabled: Bool) throws -> [[Float]] {
        StreamAhead.enabled = enabled
        return try oneStepOfSmallModel(seed: 4, inputSeed: 23, mode: ForwardMode(batchNormTraining: true, dropout: false))
      }
      let on = try run(enabled: true), off = try run(enabled: false)
      for (i, what) in ["logits", "moving statistics", "gradients"].enumerated() {
        XCTAssertEqual(on[i].map(\.bitPattern), off[i].map(\.bitPattern), "\(isa): \(what)")
      }
      XCTAssertFalse(on[2].allSatisfy { $0 == 0 }, "\(isa): the gradients were computed")
    }
  }
}
