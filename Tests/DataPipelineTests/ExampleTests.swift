import Foundation
import XCTest
import DataPipeline

final class ExampleTests: XCTestCase {
  /// Field numbers and wire types are TensorFlow's: checked against bytes encoded by hand.
  func testFeatureWireFormat() throws {
    var f = Tensorflow_Feature()
    f.int64List.value = [5]
    // Feature.int64_list = field 3 (tag 0x1A), Int64List.value = field 1 packed (tag 0x0A).
    XCTAssertEqual([UInt8](try f.serializedData()), [0x1A, 0x03, 0x0A, 0x01, 0x05])
    f = Tensorflow_Feature()
    f.bytesList.value = [Data([0xAB])]
    XCTAssertEqual([UInt8](try f.serializedData()), [0x0A, 0x03, 0x0A, 0x01, 0xAB])
    f = Tensorflow_Feature()
    f.floatList.value = [1.0]
    XCTAssertEqual([UInt8](try f.serializedData()), [0x12, 0x06, 0x0A, 0x04, 0x00, 0x00, 0x80, 0x3F])
    var e = Tensorflow_Example()
    e.features.feature["a"] = f
    // Example.features = 1, Features.feature = map field 1 (entry: key 1, value 2).
    XCTAssertEqual([UInt8](try e.serializedData()),
                   [0x0A, 0x0F, 0x0A, 0x0D, 0x0A, 0x01, 0x61, 0x12, 0x08, 0x12, 0x06, 0x0A, 0x04, 0x00, 0x00, 0x80, 0x3F])
  }

  func testSlimSchemaRoundTrip() throws {
    let original = ImageExample(encoded: Data([0xFF, 0xD8, 1, 2, 3]), label: 417, height: 375, width: 500,
                                text: "balloon", filename: "n02782093_1.JPEG")
    let parsed = try ImageExample(serialized: try original.serialized())
    XCTAssertEqual(parsed, original)
    let keys = Set(original.example.features.feature.keys)
    XCTAssertEqual(keys, ["image/encoded", "image/format", "image/class/label", "image/class/text",
                          "image/height", "image/width", "image/filename"])
  }

  func testMissingFieldsAreErrors() throws {
    var e = ImageExample(encoded: Data([1]), label: 3).example
    e.features.feature["image/class/label"] = nil
    XCTAssertThrowsError(try ImageExample(serialized: try e.serializedData()))
    e = ImageExample(encoded: Data([1]), label: 3).example
    var wrongType = Tensorflow_Feature()
    wrongType.floatList.value = [1]
    e.features.feature["image/encoded"] = wrongType
    XCTAssertThrowsError(try ImageExample(serialized: try e.serializedData()))
    // Garbage is a parse error, not a crash.
    XCTAssertThrowsError(try ImageExample(serialized: [UInt8](repeating: 0xFF, count: 12)))
  }

  func testTruncatedAndFlippedExamplesNeverCrash() throws {
    let bytes = [UInt8](try ImageExample(encoded: Data(repeating: 3, count: 50), label: 1, text: "x").serialized())
    var failures = 0
    for n in 0..<bytes.count {
      if (try? ImageExample(serialized: Array(bytes.prefix(n)))) == nil { failures += 1 }
    }
    XCTAssertGreaterThan(failures, bytes.count / 2)
    var rng = ExampleRandom(seed: 1, epoch: 0, stream: .augment)
    for _ in 0..<300 {
      var b = bytes
      b[rng.below(b.count)] ^= UInt8(1 + rng.below(255))
      _ = try? ImageExample(serialized: b)  // must return or throw, never trap
    }
  }
}
