import Foundation
import XCTest
import DataPipeline

/// TensorFlow's adjust_saturation kernel (rgb_to_hsv, scale S, clip S, hsv_to_rgb) written
/// out independently, as the reference for the closed form the pipeline uses.
func tfAdjustSaturation(_ p: (Float, Float, Float), _ scale: Float) -> (Float, Float, Float) {
  let (r, g, b) = p
  let v = max(r, max(g, b)), range = v - min(r, min(g, b))
  let s: Float = v > 0 ? range / v : 0
  let norm = 1 / (6 * range)
  var h: Float = r == v ? norm * (g - b) : g == v ? 2.0 / 6 + norm * (b - r) : 4.0 / 6 + norm * (r - g)
  if range <= 0 { h = 0 }
  if h < 0 { h += 1 }
  let s2 = min(max(s * scale, 0), 1)
  let c = s2 * v, m = v - c, dh = h * 6
  var fmodu = dh
  while fmodu <= 0 { fmodu += 2 }
  while fmodu >= 2 { fmodu -= 2 }
  let x = c * (1 - abs(fmodu - 1))
  let (rr, gg, bb): (Float, Float, Float)
  switch Int(dh) {
  case 0: (rr, gg, bb) = (c, x, 0)
  case 1: (rr, gg, bb) = (x, c, 0)
  case 2: (rr, gg, bb) = (0, c, x)
  case 3: (rr, gg, bb) = (0, x, c)
  case 4: (rr, gg, bb) = (x, 0, c)
  case 5: (rr, gg, bb) = (c, 0, x)
  default: (rr, gg, bb) = (0, 0, 0)
  }
  return (rr + m, gg + m, bb + m)
}

final class PreprocessTests: XCTestCase {
  /// 4×2 image, R = 40·x, G = 100·y: resized to 2×1 with half-pixel centers every output
  /// samples halfway between two columns and halfway between the two rows.
  func testBilinearHalfPixelByHand() {
    let src = pixels(width: 4, height: 2) { x, y in (UInt8(40 * x), UInt8(100 * y), 0) }
    var out = [Float](repeating: 9, count: 6)
    func n(_ v: Float) -> Float { v / 127.5 - 1 }
    src.withUnsafeBufferPointer {
      resampleNormalize(src: $0.baseAddress!, srcWidth: 4, srcHeight: 2, region: Region(x: 0, y: 0, width: 4, height: 2),
                        dst: &out, outWidth: 2, outHeight: 1, flip: false, color: nil)
    }
    assertClose(out, [n(20), n(50), -1, n(100), n(50), -1], tolerance: 1e-6)
    src.withUnsafeBufferPointer {
      resampleNormalize(src: $0.baseAddress!, srcWidth: 4, srcHeight: 2, region: Region(x: 0, y: 0, width: 4, height: 2),
                        dst: &out, outWidth: 2, outHeight: 1, flip: true, color: nil)
    }
    assertClose(out, [n(100), n(50), -1, n(20), n(50), -1], tolerance: 1e-6)
    // Upscaling 4 → 8 columns: edge outputs clamp to the edge pixel, inner ones interpolate
    // at (o + 0.5)/2 − 0.5 = −0.25, 0.25, 0.75, ...
    var up = [Float](repeating: 9, count: 8 * 2 * 3)
    src.withUnsafeBufferPointer {
      resampleNormalize(src: $0.baseAddress!, srcWidth: 4, srcHeight: 2, region: Region(x: 0, y: 0, width: 4, height: 2),
                        dst: &up, outWidth: 8, outHeight: 2, flip: false, color: nil)
    }
    let reds = (0..<8).map { up[$0 * 3] }
    assertClose(reds, [0, 10, 30, 50, 70, 90, 110, 120].map(n), tolerance: 1e-5)
    // A crop region: columns 1...2 only, never reading outside it.
    src.withUnsafeBufferPointer {
      resampleNormalize(src: $0.baseAddress!, srcWidth: 4, srcHeight: 2, region: Region(x: 1, y: 0, width: 2, height: 1),
                        dst: &out, outWidth: 2, outHeight: 1, flip: false, color: nil)
    }
    assertClose(out, [n(40), -1, -1, n(80), -1, -1], tolerance: 1e-6)
  }

  func testCentralCropByHand() {
    XCTAssertEqual(Crops.central(width: 16, height: 16, fraction: 0.875), CropRect(x: 1, y: 1, width: 14, height: 14))
    // 500×375: offsets trunc(62.5/2) = 31 and trunc(46.875/2) = 23.
    XCTAssertEqual(Crops.central(width: 500, height: 375, fraction: 0.875), CropRect(x: 31, y: 23, width: 438, height: 329))
    XCTAssertEqual(Crops.central(width: 7, height: 5, fraction: 1), CropRect(x: 0, y: 0, width: 7, height: 5))
  }

  /// Eval pipeline end to end on a tiny JPEG: left 8 columns black, right 8 white. Crop 0.875
  /// keeps columns 1...14; 14 → 7 samples columns 1.5, 3.5, 5.5, 7.5, ...: the middle output
  /// straddles the edge (gray, 0) and the others are −1 or +1.
  func testEvalPipelineByHand() throws {
    let img = pixels(width: 16, height: 16) { x, _ in x < 8 ? (0, 0, 0) : (255, 255, 255) }
    let data = try jpeg(img, width: 16, height: 16, quality: 100)
    var out = [Float](repeating: 9, count: 7 * 7 * 3)
    let pre = Preprocessor(options: PreprocessOptions(width: 7, height: 7, training: false))
    var rng = ExampleRandom(seed: 0, epoch: 0, stream: .augment)
    let aug = try data.withUnsafeBytes { try pre.process(jpeg: $0, rng: &rng, into: &out) }
    XCTAssertEqual(aug, Augmentation(crop: CropRect(x: 1, y: 1, width: 14, height: 14)))
    let expectedRow: [Float] = [-1, -1, -1, 0, 1, 1, 1]
    for y in 0..<7 {
      for x in 0..<7 {
        for c in 0..<3 {
          XCTAssertEqual(out[(y * 7 + x) * 3 + c], expectedRow[x], accuracy: 0.12, "(\(x), \(y))")
        }
      }
    }
  }

  func testColorDistortionByHand() {
    // (0.5, 0.25, 0.25): S = 0.5; ×2 → S = 1: the min channels go to 0.
    var (r, g, b): (Float, Float, Float) = (0.5, 0.25, 0.25)
    ColorDistortion(brightnessDelta: 0, saturation: 2).apply(&r, &g, &b)
    XCTAssertEqual(r, 0.5); XCTAssertEqual(g, 0, accuracy: 1e-7); XCTAssertEqual(b, 0, accuracy: 1e-7)
    // Brightness first: (0.2, 0.4, 0.6) + 0.1 = (0.3, 0.5, 0.7); S×0.5 halves distances to max.
    (r, g, b) = (0.2, 0.4, 0.6)
    ColorDistortion(brightnessDelta: 0.1, saturation: 0.5).apply(&r, &g, &b)
    XCTAssertEqual(r, 0.5, accuracy: 1e-6); XCTAssertEqual(g, 0.6, accuracy: 1e-6); XCTAssertEqual(b, 0.7, accuracy: 1e-6)
    // Gray stays gray; all-negative pixels collapse to their max (TF sets S = 0 when V ≤ 0).
    (r, g, b) = (0.3, 0.3, 0.3)
    ColorDistortion(brightnessDelta: 0, saturation: 1.5).apply(&r, &g, &b)
    XCTAssertEqual([r, g, b], [0.3, 0.3, 0.3])
    (r, g, b) = (0.0, 0.05, 0.1)
    ColorDistortion(brightnessDelta: -0.12, saturation: 1.5).apply(&r, &g, &b)
    XCTAssertEqual(r, -0.02, accuracy: 1e-6); XCTAssertEqual(g, -0.02, accuracy: 1e-6); XCTAssertEqual(b, -0.02, accuracy: 1e-6)
  }

  func testColorDistortionMatchesTFHSVKernel() {
    var rng = ExampleRandom(seed: 3, epoch: 0, stream: .augment)
    for _ in 0..<20_000 {
      let p = (rng.float(), rng.float(), rng.float())
      let delta = (rng.float() * 2 - 1) * 32 / 255, scale = 0.5 + rng.float()
      var (r, g, b) = p
      ColorDistortion(brightnessDelta: delta, saturation: scale).apply(&r, &g, &b)
      let ref = tfAdjustSaturation((p.0 + delta, p.1 + delta, p.2 + delta), scale)
      func clip(_ v: Float) -> Float { min(max(v, 0), 1) }
      XCTAssertEqual(clip(r), clip(ref.0), accuracy: 2e-5, "\(p) \(delta) \(scale)")
      XCTAssertEqual(clip(g), clip(ref.1), accuracy: 2e-5, "\(p) \(delta) \(scale)")
      XCTAssertEqual(clip(b), clip(ref.2), accuracy: 2e-5, "\(p) \(delta) \(scale)")
    }
  }

  /// Training pipeline on a uniform JPEG: whatever the crop and flip, every output pixel is
  /// the colour-distorted, clipped, (x − 0.5)·2 value of the input colour.
  func testTrainPipelineOnUniformImage() throws {
    let img = pixels(width: 40, height: 30) { _, _ in (200, 100, 50) }
    let data = try jpeg(img, width: 40, height: 30, quality: 100)
    let pre = Preprocessor(options: PreprocessOptions(width: 5, height: 5, training: true))
    var out = [Float](repeating: 9, count: 5 * 5 * 3)
    for i in 0..<20 {
      var rng = ExampleRandom(seed: 9, epoch: 0, stream: .augment, index: i)
      let aug = try data.withUnsafeBytes { try pre.process(jpeg: $0, rng: &rng, into: &out) }
      let color = try XCTUnwrap(aug.color)
      let ref = tfAdjustSaturation((200 / 255 + color.brightnessDelta, 100 / 255 + color.brightnessDelta,
                                    50 / 255 + color.brightnessDelta), color.saturation)
      let expected = [ref.0, ref.1, ref.2].map { min(max($0, 0), 1) * 2 - 1 }
      for p in 0..<25 {
        for c in 0..<3 { XCTAssertEqual(out[p * 3 + c], expected[c], accuracy: 0.04, "example \(i)") }
      }
    }
  }

  func testDistortedCropSemantics() {
    var rng = ExampleRandom(seed: 5, epoch: 0, stream: .augment)
    var flips = 0, wholeImage = 0, smallest: Float = 1
    let trials = 3000
    for t in 0..<trials {
      let (w, h) = (50 + t % 450, 40 + (t * 7) % 400)
      let opts = PreprocessOptions(width: 224, height: 224, training: true)
      let aug = Augmentation.sample(width: w, height: h, options: opts, rng: &rng)
      let c = aug.crop
      XCTAssertTrue(c.x >= 0 && c.y >= 0 && c.x + c.width <= w && c.y + c.height <= h, "\(c) in \(w)×\(h)")
      let area = Float(c.width * c.height) / Float(w * h)
      XCTAssertGreaterThanOrEqual(area, 0.1, "min_object_covered")
      smallest = min(smallest, area)
      if c == CropRect(x: 0, y: 0, width: w, height: h) { wholeImage += 1 } else {
        let ratio = Float(c.width) / Float(c.height)
        XCTAssertTrue(ratio >= 0.75 - 0.5 / Float(c.height) && ratio <= 1.33 + 0.5 / Float(c.height), "ratio \(ratio)")
      }
      if aug.flip { flips += 1 }
      let color = aug.color!
      XCTAssertLessThanOrEqual(abs(color.brightnessDelta), 32 / 255)
      XCTAssertTrue((0.5...1.5).contains(color.saturation))
    }
    XCTAssertLessThan(smallest, 0.15, "small crops do occur")
    XCTAssertGreaterThan(flips, trials * 4 / 10); XCTAssertLessThan(flips, trials * 6 / 10)
    XCTAssertLessThan(wholeImage, trials / 10)
    // Impossible constraints fall back to the whole image.
    var o = DistortedCropOptions()
    o.areaRange = 0.05...0.06
    o.minObjectCovered = 0.5
    XCTAssertEqual(Crops.distortedBoundingBox(width: 30, height: 20, options: o, rng: &rng),
                   CropRect(x: 0, y: 0, width: 30, height: 20))
    XCTAssertEqual(Crops.distortedBoundingBox(width: 1, height: 1, rng: &rng), CropRect(x: 0, y: 0, width: 1, height: 1))
  }

  func testColorDistortionCanBeSwitchedOff() {
    var o = PreprocessOptions(width: 8, height: 8, training: true)
    o.colorDistortion = false
    var rng = ExampleRandom(seed: 0, epoch: 0, stream: .augment)
    XCTAssertNil(Augmentation.sample(width: 20, height: 20, options: o, rng: &rng).color)
  }
}
