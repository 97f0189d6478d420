// Learning-rate schedules and the weight moving average, against the seed's formulas.
import Foundation
import Kernels
import MobileNet
import Training
import XCTest

final class ScheduleTests: XCTestCase {
  func testCosineWithWarmupIsTheMinimumOfBoth() {
    let s = LearningRateSchedule(base: 0.4, decay: .cosineAnnealing, stepsPerEpoch: 100, totalSteps: 1000, warmupEpochs: 5)
    XCTAssertEqual(s.rate(at: 0), 0)                       // warm-up starts at 0
    XCTAssertEqual(s.rate(at: 50), 0.4 * 50 / 500, accuracy: 1e-12)
    // Step 650: warm-up is over (0.52 > base); cosine of the epoch boundary 600.
    XCTAssertEqual(s.rate(at: 650), 0.4 * 0.5 * (1 + cos(Double.pi * 600 / 1000)), accuracy: 1e-12)
    // Constant within an epoch after warm-up.
    XCTAssertEqual(s.rate(at: 601), s.rate(at: 699))
    XCTAssertEqual(s.rate(at: 1000), 0, accuracy: 1e-12)
    let noWarmup = LearningRateSchedule(base: 0.4, decay: .cosineAnnealing, stepsPerEpoch: 100, totalSteps: 1000, warmupEpochs: 0)
    XCTAssertEqual(noWarmup.rate(at: 0), 0.4)
  }

  func testExponentialStaircaseEveryTwoEpochs() {
    let s = LearningRateSchedule(base: 0.1, decay: .exponential, stepsPerEpoch: 10, totalSteps: 100, warmupEpochs: 5)
    XCTAssertEqual(s.rate(at: 19), 0.1)
    XCTAssertEqual(s.rate(at: 20), 0.1 * 0.94, accuracy: 1e-12)
    XCTAssertEqual(s.rate(at: 45), 0.1 * 0.94 * 0.94, accuracy: 1e-12)
  }

  func testPolynomialToFloorAndFixed() {
    let s = LearningRateSchedule(base: 0.1, decay: .polynomial, stepsPerEpoch: 10, totalSteps: 100, warmupEpochs: 0)
    XCTAssertEqual(s.rate(at: 0), 0.1, accuracy: 1e-12)
    XCTAssertEqual(s.rate(at: 50), (0.1 - 0.0001) * 0.5 + 0.0001, accuracy: 1e-12)
    XCTAssertEqual(s.rate(at: 500), 0.0001, accuracy: 1e-12)
    XCTAssertEqual(LearningRateSchedule(base: 0.3, decay: .fixed, stepsPerEpoch: 1, totalSteps: 1, warmupEpochs: 5).rate(at: 77), 0.3)
  }

  /// The start-up log names the warm-up only where it applies (cosine_annealing), and says so when
  /// --warmup-epochs comes with another decay (the fixed schedule above ignores it).
  func testSummaryNamesTheWarmupOnlyWhereItApplies() {
    func summary(_ d: DecayType, _ w: Double) -> String {
      LearningRateSchedule(base: 0.01, decay: d, stepsPerEpoch: 10, totalSteps: 100, warmupEpochs: w).summary
    }
    XCTAssertEqual(summary(.cosineAnnealing, 5), "lr 0.01 cosine_annealing warm-up 5.0 epochs")
    XCTAssertEqual(summary(.cosineAnnealing, 0), "lr 0.01 cosine_annealing")
    XCTAssertEqual(summary(.fixed, 0), "lr 0.01 fixed")
    XCTAssertEqual(summary(.fixed, 5), "lr 0.01 fixed (no warm-up: --warmup-epochs 5.0 applies to cosine_annealing only)")
  }

  func testMovingAverageDecayAndUpdate() throws {
    let m = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: 3, imageSize: 32), seed: 1)
    let ema = WeightAverage(model: m, decay: 0.9999)
    XCTAssertEqual(ema.effectiveDecay(step: 0), 0.1, accuracy: 1e-7)          // (1+0)/(10+0)
    XCTAssertEqual(ema.effectiveDecay(step: 1_000_000), 0.9999, accuracy: 1e-7)
    let before = ema.trainable[5]
    m.parameters[5] = before + 1
    m.stateValues[2] = 7
    let s0 = ema.state[2]
    ema.update(from: m, step: 0)   // decay 0.1: shadow moves 90% of the way
    XCTAssertEqual(ema.trainable[5], before + 0.9, accuracy: 1e-5)
    XCTAssertEqual(ema.state[2], s0 + 0.9 * (7 - s0), accuracy: 1e-5)
  }
}
