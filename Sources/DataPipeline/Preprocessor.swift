// One example from JPEG bytes to the network's input: header → crop choice → DCT scale choice →
// decode → fused resample. One `Preprocessor` per decode thread (it owns a TurboJPEG handle
// and the decode buffer).

public struct PreprocessOptions: Sendable {
  public var width = 224
  public var height = 224
  /// Training: random crop, flip and colour distortion. Evaluation: central crop.
  public var training = true
  /// Evaluation central crop (1.0 disables it).
  public var centralFraction = 0.875
  /// Brightness ±32/255 then saturation 0.5...1.5 (training only).
  public var colorDistortion = true
  public var crop = DistortedCropOptions()
  /// Decode at the smallest DCT scale that still covers the crop at the output size.
  public var dctScaling = true
  public static let maxBrightnessDelta: Float = 32.0 / 255.0
  public static let saturationRange: ClosedRange<Float> = 0.5...1.5

  public init(width: Int = 224, height: Int = 224, training: Bool = true) {
    self.width = width; self.height = height; self.training = training
  }
}

/// The random choices for one training example (or the fixed ones for evaluation).
public struct Augmentation: Equatable, Sendable {
  public var crop: CropRect
  public var flip: Bool
  public var color: ColorDistortion?

  public init(crop: CropRect, flip: Bool = false, color: ColorDistortion? = nil) {
    self.crop = crop; self.flip = flip; self.color = color
  }

  /// Draw order is fixed (crop, flip, brightness, saturation) so a seed means the same thing
  /// in every version.
  public static func sample(width: Int, height: Int, options: PreprocessOptions,
                            rng: inout ExampleRandom) -> Augmentation {
    guard options.training else {
      return Augmentation(crop: Crops.central(width: width, height: height, fraction: options.centralFraction))
    }
    let crop = Crops.distortedBoundingBox(width: width, height: height, options: options.crop, rng: &rng)
    let flip = rng.float() < 0.5
    let delta = (rng.float() * 2 - 1) * PreprocessOptions.maxBrightnessDelta
    let r = PreprocessOptions.saturationRange
    let saturation = r.lowerBound + rng.float() * (r.upperBound - r.lowerBound)
    return Augmentation(crop: crop, flip: flip,
                        color: options.colorDistortion ? ColorDistortion(brightnessDelta: delta, saturation: saturation) : nil)
  }
}

public final class Preprocessor {
  public let options: PreprocessOptions
  public let codec = JPEGCodec()
  /// How many images were decoded at each DCT scale (for benchmarks and tests).
  public private(set) var scaleCounts: [String: Int] = [:]

  public init(options: PreprocessOptions) { self.options = options }

  /// Decodes `jpeg` and writes `height × width × 3` floats to `dst`. `rng` supplies the
  /// training randomness (ignored for evaluation). Throws on a corrupt JPEG.
  @discardableResult
  public func process(jpeg: UnsafeRawBufferPointer, rng: inout ExampleRandom,
                      into dst: UnsafeMutablePointer<Float>) throws -> Augmentation {
    let header = try codec.header(jpeg)
    let aug = Augmentation.sample(width: header.width, height: header.height, options: options, rng: &rng)
    try process(jpeg: jpeg, header: header, augmentation: aug, into: dst)
    return aug
  }

  public func process(jpeg: UnsafeRawBufferPointer, header: JPEGHeader, augmentation aug: Augmentation,
                      into dst: UnsafeMutablePointer<Float>) throws {
    let scale = options.dctScaling
      ? ScalingFactor.smallest(covering: aug.crop.width, aug.crop.height, output: options.width, options.height)
      : .one
    scaleCounts[scale.description, default: 0] += 1
    let (w, h) = try codec.decode(jpeg, header: header, scale: scale)
    // The crop in decoded pixels: TJSCALED rounds sizes up, so use the actual ratio per axis.
    let sx = Double(w) / Double(header.width), sy = Double(h) / Double(header.height)
    let region = Region(x: Double(aug.crop.x) * sx, y: Double(aug.crop.y) * sy,
                        width: Double(aug.crop.width) * sx, height: Double(aug.crop.height) * sy)
    codec.pixels.withUnsafeBufferPointer { p in
      resampleNormalize(src: p.baseAddress!, srcWidth: w, srcHeight: h, region: region, dst: dst,
                        outWidth: options.width, outHeight: options.height, flip: aug.flip, color: aug.color)
    }
  }
}
