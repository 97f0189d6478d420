// The FLOP count behind the benchmark's GFLOP/s and roofline: checked against the MAC counts
// published for TF-slim's MobileNetV2 checkpoints, and exactly against a hand count.
import MobileNet
import XCTest

final class FLOPCountTests: XCTestCase {
  func macs(_ model: String, _ size: Int, classes: Int = 1000) throws -> Int {
    MobileNetV2(config: try ModelConfig(modelName: model, numClasses: classes, imageSize: size)).forwardMACsPerImage
  }

  /// slim's mobilenet README: 1.0/224 300 M, 0.35/224 59 M, 1.4/224 582 M, 0.5/160 50 M MACs.
  func testForwardMACsMatchPublishedCounts() throws {
    for (model, size, published) in [("mobilenet_v2", 224, 300e6), ("mobilenet_v2_035", 224, 59e6),
                                     ("mobilenet_v2_140", 224, 582e6), ("mobilenet_v2_050", 160, 50e6)] {
      let counted = Double(try macs(model, size))
      XCTAssertEqual(counted / published, 1, accuracy: 0.01, "\(model)/\(size): \(counted) MACs, published \(published)")
    }
  }

  /// Exact figures from walking V2_DEF by hand (stem 112²·32·27, then per block expand, depthwise,
  /// project at TF SAME sizes, Conv_1 7²·1280·320, logits 1280·classes).
  func testForwardMACsExact() throws {
    XCTAssertEqual(try macs("mobilenet_v2", 224, classes: 1001), 300_775_552)
    XCTAssertEqual(try macs("mobilenet_v2_035", 96, classes: 10), 10_666_928)
    // The logits are the only term that depends on the class count.
    XCTAssertEqual(try macs("mobilenet_v2", 224, classes: 1001) - macs("mobilenet_v2", 224, classes: 1000), 1280)
  }

  func testTrainStepIsSixFLOPsPerMAC() throws {
    let net = MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2", numClasses: 1001, imageSize: 224))
    XCTAssertEqual(net.trainStepFLOPsPerImage, 6 * 300_775_552)
  }
}
