// The fused per-image pass: crop → bilinear resize (half-pixel centers) → optional flip →
// optional brightness/saturation → clip → (x − 0.5)·2, reading 8-bit RGB once and writing
// float32 HWC straight into the batch buffer.

/// inception_preprocessing.distort_color in fast mode, colour ordering 0.
public struct ColorDistortion: Equatable, Sendable {
  /// Added to every channel in [0, 1] units (slim: uniform in ±32/255).
  public var brightnessDelta: Float
  /// HSV saturation multiplier (slim: uniform in 0.5...1.5), saturation clipped to [0, 1].
  public var saturation: Float
  public init(brightnessDelta: Float, saturation: Float) {
    self.brightnessDelta = brightnessDelta; self.saturation = saturation
  }

  /// One pixel in [0, 1] units, before the final clip. adjust_saturation works in HSV; with the
  /// hue fixed, scaling S (then clipping it to [0, 1]) moves each channel toward the max
  /// channel: c' = max − (max − c)·f with f = min(s, max/(max − min)), f = 0 when max ≤ 0
  /// (TF's rgb_to_hsv sets S = 0 there) and no change for gray pixels.
  @inline(__always)
  public func apply(_ r: inout Float, _ g: inout Float, _ b: inout Float) {
    r += brightnessDelta; g += brightnessDelta; b += brightnessDelta
    let mx = max(r, max(g, b)), mn = min(r, min(g, b))
    guard mx > mn else { return }
    // f = min(s, mx / (mx − mn)) without a division in the common unclipped case.
    let f = mx <= 0 ? 0 : saturation * (mx - mn) <= mx ? saturation : mx / (mx - mn)
    r = mx - (mx - r) * f
    g = mx - (mx - g) * f
    b = mx - (mx - b) * f
  }
}

/// A region of the decoded image, in its pixel units (fractional after DCT scaling).
public struct Region: Equatable, Sendable {
  public var x: Double, y: Double, width: Double, height: Double
  public init(x: Double, y: Double, width: Double, height: Double) {
    self.x = x; self.y = y; self.width = width; self.height = height
  }
}

/// Source taps of one output coordinate along one axis.
struct Taps {
  var lo: [Int]
  var hi: [Int]
  var frac: [Float]

  /// TF's half-pixel bilinear: in = (out + 0.5)·scale − 0.5 relative to the region, sampled
  /// between floor and floor+1, clamped to the region (TF crops before it resizes) and image.
  init(start: Double, length: Double, output: Int, limit: Int, flip: Bool = false) {
    lo = [Int](repeating: 0, count: output)
    hi = lo
    frac = [Float](repeating: 0, count: output)
    let scale = length / Double(output)
    let first = max(0, start), last = min(Double(limit - 1), start + length - 1)
    for o in 0..<output {
      var s = start + (Double(o) + 0.5) * scale - 0.5
      s = min(max(s, first), max(first, last))
      let f = s.rounded(.down)
      let i0 = Int(f)
      let slot = flip ? output - 1 - o : o
      lo[slot] = i0
      hi[slot] = min(i0 + 1, limit - 1)
      frac[slot] = Float(s - f)
    }
  }
}

/// Writes `outHeight × outWidth × 3` floats in [−1, 1] to `dst`. Separable: each output row
/// first blends its two source rows over the columns the row's taps touch (a contiguous,
/// vectorizable u8 → f32 loop), then blends two columns per output pixel and applies colour
/// and normalization. Same result as TF's horizontal-then-vertical order up to float rounding.
public func resampleNormalize(src: UnsafePointer<UInt8>, srcWidth: Int, srcHeight: Int, region: Region,
                              dst: UnsafeMutablePointer<Float>, outWidth: Int, outHeight: Int,
                              flip: Bool, color: ColorDistortion?) {
  let cols = Taps(start: region.x, length: region.width, output: outWidth, limit: srcWidth, flip: flip)
  let rows = Taps(start: region.y, length: region.height, output: outHeight, limit: srcHeight)
  let stride = srcWidth * 3
  let c0 = min(cols.lo.min() ?? 0, cols.hi.min() ?? 0), c1 = max(cols.lo.max() ?? 0, cols.hi.max() ?? 0)
  let span = (c1 - c0 + 1) * 3
  let row = UnsafeMutablePointer<Float>.allocate(capacity: span)
  defer { row.deallocate() }
  // Tap offsets into `row`, in floats.
  let a = cols.lo.map { ($0 - c0) * 3 }, b = cols.hi.map { ($0 - c0) * 3 }
  a.withUnsafeBufferPointer { a in
  b.withUnsafeBufferPointer { b in
  cols.frac.withUnsafeBufferPointer { fxs in
    for oy in 0..<outHeight {
      let top = src + rows.lo[oy] * stride + c0 * 3
      let bottom = src + rows.hi[oy] * stride + c0 * 3
      let fy = rows.frac[oy]
      for i in 0..<span {
        let t = Float(top[i])
        row[i] = t + (Float(bottom[i]) - t) * fy
      }
      var out = dst + oy * outWidth * 3
      if let color = color {
        for ox in 0..<outWidth {
          let p = row + a[ox], q = row + b[ox], fx = fxs[ox]
          var r = (p[0] + (q[0] - p[0]) * fx) * (1 / 255)
          var g = (p[1] + (q[1] - p[1]) * fx) * (1 / 255)
          var bl = (p[2] + (q[2] - p[2]) * fx) * (1 / 255)
          color.apply(&r, &g, &bl)
          out[0] = min(max(r, 0), 1) * 2 - 1
          out[1] = min(max(g, 0), 1) * 2 - 1
          out[2] = min(max(bl, 0), 1) * 2 - 1
          out += 3
        }
      } else {
        // Bilinear values stay in [0, 255]: no clip needed.
        for ox in 0..<outWidth {
          let p = row + a[ox], q = row + b[ox], fx = fxs[ox]
          out[0] = (p[0] + (q[0] - p[0]) * fx) * (2 / 255) - 1
          out[1] = (p[1] + (q[1] - p[1]) * fx) * (2 / 255) - 1
          out[2] = (p[2] + (q[2] - p[2]) * fx) * (2 / 255) - 1
          out += 3
        }
      }
    }
  }
  }
  }
}
