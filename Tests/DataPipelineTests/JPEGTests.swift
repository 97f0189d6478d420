import CTurboJPEG
import Foundation
import XCTest
import DataPipeline

final class JPEGTests: XCTestCase {
  let gradient = pixels(width: 32, height: 24) { x, y in (UInt8(x * 8), UInt8(y * 10), UInt8(100)) }

  func testRGBDecodeIsCloseToSource() throws {
    let data = try jpeg(gradient, width: 32, height: 24, quality: 100)
    let codec = JPEGCodec()
    let header = try data.withUnsafeBytes { try codec.header($0) }
    XCTAssertEqual(header.width, 32); XCTAssertEqual(header.height, 24)
    let size = try data.withUnsafeBytes { try codec.decode($0, header: header) }
    XCTAssertEqual(size.width, 32); XCTAssertEqual(size.height, 24)
    let worst = zip(codec.pixels.prefix(32 * 24 * 3), gradient).map { abs(Int($0) - Int($1)) }.max()!
    XCTAssertLessThanOrEqual(worst, 6)
  }

  func testGrayscaleDecodesToEqualRGBChannels() throws {
    // A smooth ramp: JPEG error stays small without sharp edges.
    let gray: [UInt8] = (0..<(16 * 16)).map { (i: Int) -> UInt8 in UInt8(8 * (i % 16) + 4 * (i / 16)) }
    let data = try jpeg(gray, width: 16, height: 16, input: .gray, quality: 100)
    let codec = JPEGCodec()
    let header = try data.withUnsafeBytes { try codec.header($0) }
    XCTAssertEqual(header.colorspace, Int32(TJCS_GRAY.rawValue))
    try data.withUnsafeBytes { _ = try codec.decode($0, header: header) }
    for i in 0..<(16 * 16) {
      XCTAssertEqual(codec.pixels[3 * i], codec.pixels[3 * i + 1])
      XCTAssertEqual(codec.pixels[3 * i], codec.pixels[3 * i + 2])
      XCTAssertLessThanOrEqual(abs(Int(codec.pixels[3 * i]) - Int(gray[i])), 4)
    }
  }

  func testCMYKDecodesToRGB() throws {
    // Inverted (Adobe) CMYK as TurboJPEG stores it: K = max channel, C·K/255 = R, ...
    let rgb: [(UInt8, UInt8, UInt8)] = [(200, 40, 40), (30, 180, 90), (250, 250, 250), (10, 10, 120)]
    var cmyk = [UInt8]()
    for y in 0..<16 {
      for x in 0..<16 {
        let (r, g, b) = rgb[(y / 8) * 2 + x / 8]
        let k = max(r, max(g, b))
        for c in [r, g, b] { cmyk.append(UInt8((Int(c) * 255 + Int(k) / 2) / Int(k))) }
        cmyk.append(k)
      }
    }
    let data = try jpeg(cmyk, width: 16, height: 16, input: .cmyk, quality: 100)
    let codec = JPEGCodec()
    let header = try data.withUnsafeBytes { try codec.header($0) }
    XCTAssertEqual(header.colorspace, Int32(TJCS_YCCK.rawValue))
    try data.withUnsafeBytes { _ = try codec.decode($0, header: header) }
    for (q, (r, g, b)) in rgb.enumerated() {
      let (px, py) = ((q % 2) * 8 + 4, (q / 2) * 8 + 4)  // block centres, away from edges
      let i = (py * 16 + px) * 3
      XCTAssertLessThanOrEqual(abs(Int(codec.pixels[i]) - Int(r)), 8, "block \(q)")
      XCTAssertLessThanOrEqual(abs(Int(codec.pixels[i + 1]) - Int(g)), 8, "block \(q)")
      XCTAssertLessThanOrEqual(abs(Int(codec.pixels[i + 2]) - Int(b)), 8, "block \(q)")
    }
  }

  func testScaleChoiceCoversTheCrop() {
    XCTAssertTrue(ScalingFactor.available.contains(ScalingFactor(num: 1, denom: 8)))
    XCTAssertEqual(ScalingFactor.smallest(covering: 500, 375, output: 224, 224), ScalingFactor(num: 5, denom: 8))
    XCTAssertEqual(ScalingFactor.smallest(covering: 1792, 1792, output: 224, 224), ScalingFactor(num: 1, denom: 8))
    XCTAssertEqual(ScalingFactor.smallest(covering: 100, 100, output: 224, 224), .one)
    for cw in stride(from: 50, through: 2000, by: 37) {
      let f = ScalingFactor.smallest(covering: cw, cw * 3 / 4, output: 224, 224)
      if f != .one {
        XCTAssertGreaterThanOrEqual(Double(cw * 3 / 4) * f.value, 224)
        // No smaller factor would do.
        if let smaller = ScalingFactor.available.last(where: { $0.value < f.value }) {
          XCTAssertLessThan(Double(cw * 3 / 4) * smaller.value, 224)
        }
      }
    }
  }

  func testScaledDecodeMatchesFullDecodeClosely() throws {
    let big = pixels(width: 128, height: 96) { x, y in (UInt8(x * 2), UInt8(y * 2), UInt8((x + y) % 256)) }
    let data = try jpeg(big, width: 128, height: 96, quality: 95)
    var full = PreprocessOptions(width: 16, height: 16, training: false)
    full.centralFraction = 1
    full.dctScaling = false
    var scaled = full
    scaled.dctScaling = true
    var a = [Float](repeating: 0, count: 16 * 16 * 3), b = a
    var rng = ExampleRandom(seed: 0, epoch: 0, stream: .augment)
    let p1 = Preprocessor(options: full), p2 = Preprocessor(options: scaled)
    try data.withUnsafeBytes { _ = try p1.process(jpeg: $0, rng: &rng, into: &a) }
    try data.withUnsafeBytes { _ = try p2.process(jpeg: $0, rng: &rng, into: &b) }
    XCTAssertEqual(p2.scaleCounts, ["1/4": 1])  // 96·1/4 = 24 ≥ 16 but 96·1/8 = 12 < 16
    // Same picture: the gradient's values agree to within a few levels of 255.
    assertClose(a, b, tolerance: 0.08)
  }

  func testCorruptJPEGsThrowAndNeverCrash() throws {
    let data = [UInt8](try jpeg(gradient, width: 32, height: 24))
    let codec = JPEGCodec()
    var out = [Float](repeating: 0, count: 8 * 8 * 3)
    let pre = Preprocessor(options: PreprocessOptions(width: 8, height: 8, training: true))
    var rng = ExampleRandom(seed: 0, epoch: 0, stream: .augment)
    // Every truncation that drops the end of the entropy data is an error (not gray pixels).
    for n in stride(from: 0, to: data.count - 2, by: 7) {
      XCTAssertThrowsError(try Array(data.prefix(n)).withUnsafeBytes { b -> Void in
        let h = try codec.header(b)
        try codec.decode(b, header: h)
      }, "truncated to \(n) bytes")
    }
    XCTAssertThrowsError(try [UInt8]().withUnsafeBytes { _ = try pre.process(jpeg: $0, rng: &rng, into: &out) })
    XCTAssertThrowsError(try [UInt8](repeating: 0xFF, count: 64).withUnsafeBytes { _ = try pre.process(jpeg: $0, rng: &rng, into: &out) })
    // Random byte flips: decoding returns or throws, never traps.
    var flips = ExampleRandom(seed: 7, epoch: 0, stream: .augment)
    var threw = 0
    for _ in 0..<200 {
      var bad = data
      bad[flips.below(bad.count)] ^= UInt8(1 + flips.below(255))
      do { try bad.withUnsafeBytes { _ = try pre.process(jpeg: $0, rng: &rng, into: &out) } } catch { threw += 1 }
    }
    XCTAssertGreaterThan(threw, 0)
  }
}
