// Which region of the image becomes the network input: TF-slim's training crop
// (tf.image.sample_distorted_bounding_box semantics) and the evaluation central crop.
import Foundation

public struct CropRect: Equatable, Sendable {
  public var x: Int, y: Int, width: Int, height: Int
  public init(x: Int, y: Int, width: Int, height: Int) {
    self.x = x; self.y = y; self.width = width; self.height = height
  }
}

/// Parameters of inception_preprocessing.distorted_bounding_box_crop with the whole image as
/// the object box.
public struct DistortedCropOptions: Sendable {
  public var minObjectCovered: Float = 0.1
  public var aspectRatioRange: ClosedRange<Float> = 0.75...1.33
  public var areaRange: ClosedRange<Float> = 0.05...1.0
  public var maxAttempts = 100
  public init() {}
}

public enum Crops {
  /// sample_distorted_bounding_box: up to `maxAttempts` draws of an aspect ratio, then a height
  /// between the smallest and largest allowed by the area range (width = round(height·ratio)),
  /// then an offset; accepted when it covers ≥ minObjectCovered of the image. Falls back to the
  /// whole image. Integer rounding follows TensorFlow's GenerateRandomCrop.
  public static func distortedBoundingBox(width: Int, height: Int, options o: DistortedCropOptions = .init(),
                                          rng: inout ExampleRandom) -> CropRect {
    let whole = CropRect(x: 0, y: 0, width: width, height: height)
    let imageArea = Float(width * height)
    for _ in 0..<o.maxAttempts {
      let ratio = rng.float() * (o.aspectRatioRange.upperBound - o.aspectRatioRange.lowerBound)
        + o.aspectRatioRange.lowerBound
      guard let crop = randomCrop(width: width, height: height, minArea: o.areaRange.lowerBound * imageArea,
                                  maxArea: o.areaRange.upperBound * imageArea, ratio: ratio, rng: &rng)
      else { continue }
      // The object is the whole image, so coverage = crop area / image area.
      if Float(crop.width * crop.height) / imageArea >= o.minObjectCovered { return crop }
    }
    return whole
  }

  static func randomCrop(width W: Int, height H: Int, minArea: Float, maxArea: Float, ratio: Float,
                         rng: inout ExampleRandom) -> CropRect? {
    if maxArea <= 0 || ratio <= 0 || W <= 0 || H <= 0 || minArea > maxArea { return nil }
    var h = Int(lrintf((minArea / ratio).squareRoot()))
    var maxH = Int(lrintf((maxArea / ratio).squareRoot()))
    if Int(lrintf(Float(maxH) * ratio)) > W {
      // Largest height whose rounded width still fits.
      maxH = Int((Float(W) + 0.5 - 1e-7) / ratio)
      if Int(lrintf(Float(maxH) * ratio)) > W { maxH -= 1 }
    }
    maxH = min(maxH, H)
    h = min(h, maxH)
    if h < maxH { h += rng.below(maxH - h + 1) }
    var w = Int(lrintf(Float(h) * ratio))
    var area = Float(w * h)
    if area < minArea { h += 1; w = Int(lrintf(Float(h) * ratio)); area = Float(w * h) }
    if area > maxArea { h -= 1; w = Int(lrintf(Float(h) * ratio)); area = Float(w * h) }
    if area < minArea || area > maxArea || w > W || h > H || w <= 0 || h <= 0 { return nil }
    let y = h < H ? rng.below(H - h) : 0
    let x = w < W ? rng.below(W - w) : 0
    return CropRect(x: x, y: y, width: w, height: h)
  }

  /// tf.image.central_crop: offsets truncated toward zero, size = dimension − 2·offset.
  public static func central(width: Int, height: Int, fraction: Double) -> CropRect {
    if fraction >= 1 { return CropRect(x: 0, y: 0, width: width, height: height) }
    let y = Int((Double(height) - Double(height) * fraction) / 2)
    let x = Int((Double(width) - Double(width) * fraction) / 2)
    return CropRect(x: x, y: y, width: width - 2 * x, height: height - 2 * y)
  }
}
