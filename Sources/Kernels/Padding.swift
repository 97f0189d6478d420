// TensorFlow `SAME` padding: output = ceil(input / stride), the padding total split with the
// extra pixel after (so a stride-2 3×3 on an even input pads 0 before and 1 after).

public enum SamePadding {
  public static func outputSize(_ input: Int, stride: Int) -> Int { (input + stride - 1) / stride }

  /// Padding before the first input pixel.
  public static func before(_ input: Int, kernel: Int, stride: Int) -> Int {
    let out = outputSize(input, stride: stride)
    return max((out - 1) * stride + kernel - input, 0) / 2
  }
}

/// A K×K, stride-S window over an H×W input with SAME padding: output size and padding, one
/// definition for the stem and depthwise shapes.
public protocol SamePaddedShape {
  var height: Int { get }
  var width: Int { get }
  var kernel: Int { get }
  var stride: Int { get }
}

public extension SamePaddedShape {
  var outHeight: Int { SamePadding.outputSize(height, stride: stride) }
  var outWidth: Int { SamePadding.outputSize(width, stride: stride) }
  var padTop: Int { SamePadding.before(height, kernel: kernel, stride: stride) }
  var padLeft: Int { SamePadding.before(width, kernel: kernel, stride: stride) }
  internal var window: SameWindow {
    SameWindow(kernel: kernel, stride: stride, padTop: padTop, padLeft: padLeft, height: height, width: width)
  }
}

/// The K×K input window of an output pixel under SAME padding, clipped to the H×W input: the one
/// tap loop that the stem and depthwise kernels share.
struct SameWindow {
  let kernel, stride, padTop, padLeft, height, width: Int

  /// Calls `body(tap, iy, ix)` for every tap (ky·K + kx) of output pixel (oy, ox) that falls
  /// inside the input, in row-major tap order.
  @inline(__always)
  func forEachTap(oy: Int, ox: Int, _ body: (_ tap: Int, _ iy: Int, _ ix: Int) -> Void) {
    for ky in 0..<kernel {
      let iy = oy * stride - padTop + ky
      if iy < 0 || iy >= height { continue }
      for kx in 0..<kernel {
        let ix = ox * stride - padLeft + kx
        if ix < 0 || ix >= width { continue }
        body(ky * kernel + kx, iy, ix)
      }
    }
  }
}
