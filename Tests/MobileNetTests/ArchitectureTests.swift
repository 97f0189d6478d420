// The network matches TF-slim's mobilenet_v2: names, shapes, depth rounding, parameter counts.
import MobileNet
import XCTest

final class ArchitectureTests: XCTestCase {
  func model(_ name: String, classes: Int = 1001, size: Int = 224) throws -> MobileNetV2 {
    MobileNetV2(config: try ModelConfig(modelName: name, numClasses: classes, imageSize: size))
  }

  func shape(_ m: MobileNetV2, _ name: String, file: StaticString = #filePath, line: UInt = #line) -> [Int]? {
    (m.trainable.spec(named: name) ?? m.state.spec(named: name))?.shape
  }

  func testParameterCountsMatchSlim() throws {
    XCTAssertEqual(try model("mobilenet_v2").parameterCount, 3_506_153)
    XCTAssertEqual(try model("mobilenet_v2_140").parameterCount, 6_110_569)
    XCTAssertEqual(try model("mobilenet_v2_035").parameterCount, 1_678_409)
  }

  func testMakeDivisible() {
    XCTAssertEqual(MobileNetV2Def.makeDivisible(32 * 0.35), 16)   // 11.2 → 8 loses >10% → 16
    XCTAssertEqual(MobileNetV2Def.makeDivisible(16 * 0.35), 8)
    XCTAssertEqual(MobileNetV2Def.makeDivisible(24 * 1.4), 32)    // 33.6 → 32
    XCTAssertEqual(MobileNetV2Def.makeDivisible(1280 * 1.4), 1792)
    XCTAssertEqual(MobileNetV2Def.makeDivisible(96 * 0.75), 72)
    XCTAssertEqual(MobileNetV2Def.makeDivisible(3.0), 8)           // min value
  }

  func testTensorNamesAndTFLayouts() throws {
    let m = try model("mobilenet_v2")
    XCTAssertEqual(shape(m, "MobilenetV2/Conv/weights"), [3, 3, 3, 32])
    XCTAssertEqual(shape(m, "MobilenetV2/Conv/BatchNorm/gamma"), [32])
    XCTAssertEqual(shape(m, "MobilenetV2/Conv/BatchNorm/moving_variance"), [32])
    // The first block has expansion 1: no expand layer.
    XCTAssertNil(shape(m, "MobilenetV2/expanded_conv/expand/weights"))
    XCTAssertEqual(shape(m, "MobilenetV2/expanded_conv/depthwise/depthwise_weights"), [3, 3, 32, 1])
    XCTAssertEqual(shape(m, "MobilenetV2/expanded_conv/project/weights"), [1, 1, 32, 16])
    XCTAssertEqual(shape(m, "MobilenetV2/expanded_conv_1/expand/weights"), [1, 1, 16, 96])
    XCTAssertEqual(shape(m, "MobilenetV2/expanded_conv_1/depthwise/depthwise_weights"), [3, 3, 96, 1])
    XCTAssertEqual(shape(m, "MobilenetV2/expanded_conv_16/project/weights"), [1, 1, 960, 320])
    XCTAssertNil(shape(m, "MobilenetV2/expanded_conv_17/project/weights"))
    XCTAssertEqual(shape(m, "MobilenetV2/Conv_1/weights"), [1, 1, 320, 1280])
    XCTAssertEqual(shape(m, "MobilenetV2/Logits/Conv2d_1c_1x1/weights"), [1, 1, 1280, 1001])
    XCTAssertEqual(shape(m, "MobilenetV2/Logits/Conv2d_1c_1x1/biases"), [1001])
    // 52 conv layers (stem, 16 expands, 17 depthwise, 17 projects, Conv_1), each with a BN.
    XCTAssertEqual(m.state.specs.count, 52 * 2)
    XCTAssertEqual(m.trainable.specs.count, 52 * 3 + 2)
  }

  func testFinegrainKeeps1280BelowOneAndScalesAbove() throws {
    XCTAssertEqual(shape(try model("mobilenet_v2_035"), "MobilenetV2/Conv_1/weights"), [1, 1, 112, 1280])
    XCTAssertEqual(shape(try model("mobilenet_v2_035"), "MobilenetV2/Conv/weights"), [3, 3, 3, 16])
    XCTAssertEqual(shape(try model("mobilenet_v2_050"), "MobilenetV2/Conv_1/weights"), [1, 1, 160, 1280])
    XCTAssertEqual(shape(try model("mobilenet_v2_140"), "MobilenetV2/Conv_1/weights"), [1, 1, 448, 1792])
    XCTAssertEqual(shape(try model("mobilenet_v2_130"), "MobilenetV2/Conv_1/weights")?.last, 1664)
    XCTAssertEqual(shape(try model("mobilenet_v2_075"), "MobilenetV2/expanded_conv_1/expand/weights"), [1, 1, 16, 96])
  }

  func testWeightDecayOnlyOnRegularConvAndLogitsWeights() throws {
    let m = try model("mobilenet_v2_035", classes: 10, size: 32)
    for s in m.trainable.specs {
      let decayed = s.role.hasWeightDecay
      let expected = s.name.hasSuffix("/weights")  // not depthwise_weights, biases, gamma, beta
      XCTAssertEqual(decayed, expected, s.name)
    }
  }

  func testConfigValidation() {
    XCTAssertThrowsError(try ModelConfig(modelName: "mobilenet_v3"))
    XCTAssertThrowsError(try ModelConfig(imageSize: 100))
    XCTAssertThrowsError(try ModelConfig(imageSize: 0))
    XCTAssertThrowsError(try ModelConfig(numClasses: 1))
    XCTAssertNoThrow(try ModelConfig(imageSize: 32))
    XCTAssertNoThrow(try ModelConfig(imageSize: 480))
  }

  func testInitialisationFollowsTrainingScope() throws {
    let m = try model("mobilenet_v2_035", classes: 10, size: 32)
    for s in m.trainable.specs {
      let v = Array(UnsafeBufferPointer(start: m.parameters.base + s.offset, count: s.count))
      switch s.role {
      case .gamma: XCTAssertTrue(v.allSatisfy { $0 == 1 }, s.name)
      case .beta, .biases: XCTAssertTrue(v.allSatisfy { $0 == 0 }, s.name)
      default:
        // Truncated normal, stddev 0.09: nothing beyond 2σ.
        XCTAssertTrue(v.allSatisfy { abs($0) <= 0.18 }, s.name)
        if s.count > 1000 {
          let mean = v.reduce(0, +) / Float(v.count)
          let sd = (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(v.count)).squareRoot()
          // A normal truncated at 2σ has stddev 0.88σ.
          XCTAssertEqual(sd, 0.09 * 0.88, accuracy: 0.005, s.name)
        }
      }
    }
    // Same seed, same weights; another seed, other weights.
    let a = MobileNetV2(config: m.config, seed: 5), b = MobileNetV2(config: m.config, seed: 5), c = MobileNetV2(config: m.config, seed: 6)
    XCTAssertEqual(a.parameters.array, b.parameters.array)
    XCTAssertNotEqual(a.parameters.array, c.parameters.array)
  }
}
