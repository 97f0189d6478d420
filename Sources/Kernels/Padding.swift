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
