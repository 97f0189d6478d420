// A small learnable dataset for smoke tests: each class has its own shape and colour, placed
// and sized at random on a noisy background, so a small network separates classes in minutes.
import Foundation

public struct SyntheticOptions: Sendable {
  public var classes = 10
  public var examples = 1000
  public var width = 64
  public var height = 64
  public var seed: UInt64 = 0
  public var quality = 90
  /// Label of class 0 (1 reproduces slim's ImageNet convention with a background class).
  public var firstLabel = 0
  public init() {}
}

public enum Synthetic {
  /// RGB pixels of example `index` and its class: a shape (disc, square, horizontal bar,
  /// vertical bar, ring, cross; cycling with the class) in a class hue over a darker noisy
  /// background of a random hue.
  public static func image(index: Int, options o: SyntheticOptions) -> (pixels: [UInt8], label: Int) {
    let cls = index % o.classes
    var rng = ExampleRandom(seed: o.seed, epoch: 0, stream: .augment, index: index)
    let (w, h) = (o.width, o.height)
    func hueColor(_ hue: Float, _ value: Float) -> (Float, Float, Float) {
      let k = { (n: Float) -> Float in
        let t = (n + hue * 6).truncatingRemainder(dividingBy: 6)
        return value * (1 - max(0, min(1, min(t, 4 - t))))
      }
      return (k(5), k(3), k(1))
    }
    let fg = hueColor(Float(cls) / Float(o.classes), 0.9 + 0.1 * rng.float())
    let bg = hueColor(rng.float(), 0.35)
    let size = Float(min(w, h)) * (0.25 + 0.2 * rng.float())
    let cx = Float(w) * (0.3 + 0.4 * rng.float()), cy = Float(h) * (0.3 + 0.4 * rng.float())
    let shape = cls % 6
    var pixels = [UInt8](repeating: 0, count: w * h * 3)
    for y in 0..<h {
      for x in 0..<w {
        let dx = Float(x) - cx, dy = Float(y) - cy
        let r = (dx * dx + dy * dy).squareRoot()
        let inside: Bool
        switch shape {
        case 0: inside = r < size
        case 1: inside = abs(dx) < size && abs(dy) < size
        case 2: inside = abs(dx) < size * 1.5 && abs(dy) < size * 0.4
        case 3: inside = abs(dx) < size * 0.4 && abs(dy) < size * 1.5
        case 4: inside = r < size && r > size * 0.55
        default: inside = (abs(dx) < size * 0.3 && abs(dy) < size) || (abs(dy) < size * 0.3 && abs(dx) < size)
        }
        let c = inside ? fg : bg
        let noise = (rng.float() - 0.5) * 0.15
        let i = (y * w + x) * 3
        pixels[i] = UInt8(max(0, min(255, (c.0 + noise) * 255)))
        pixels[i + 1] = UInt8(max(0, min(255, (c.1 + noise) * 255)))
        pixels[i + 2] = UInt8(max(0, min(255, (c.2 + noise) * 255)))
      }
    }
    return (pixels, cls + o.firstLabel)
  }

  /// Writes `options.examples` JPEG examples as TFRecord shards of `split`.
  public static func write(to directory: String, split: String, shards: Int, options o: SyntheticOptions) throws {
    let writer = try ShardWriter(directory: directory, split: split, shards: shards)
    let codec = JPEGCodec()
    for i in 0..<o.examples {
      let (pixels, label) = image(index: i, options: o)
      let jpeg = try pixels.withUnsafeBytes {
        try codec.compress($0, width: o.width, height: o.height, input: .rgb, quality: o.quality)
      }
      try writer.write(ImageExample(encoded: jpeg, label: Int64(label), height: o.height, width: o.width,
                                    text: "class\(label)", filename: "synthetic-\(split)-\(i).jpg"))
    }
    try writer.close()
  }
}
