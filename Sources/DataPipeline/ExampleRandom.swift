// Counter-based randomness: the numbers for an example are a pure function of
// (seed, epoch, stream, index), so they do not depend on which thread decodes it or when.

/// SplitMix64 started from a hash of its key. Cheap to create per example.
public struct ExampleRandom {
  private var state: UInt64

  static func mix(_ z0: UInt64) -> UInt64 {
    var z = z0
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// Streams keep the shuffle and the augmentations of the same (seed, epoch) independent.
  public enum Stream: UInt64 { case shuffle = 1, augment = 2, substitute = 3, fileOrder = 4 }

  public init(seed: UInt64, epoch: Int, stream: Stream, index: Int = 0) {
    var h = ExampleRandom.mix(seed &+ 0x9E37_79B9_7F4A_7C15)
    h = ExampleRandom.mix(h ^ UInt64(truncatingIfNeeded: epoch))
    h = ExampleRandom.mix(h ^ (stream.rawValue &* 0xD1B5_4A32_D192_ED03))
    state = ExampleRandom.mix(h ^ UInt64(truncatingIfNeeded: index))
  }

  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    return ExampleRandom.mix(state)
  }

  /// Uniform in [0, 1) with 24 bits, like TensorFlow's RandFloat.
  public mutating func float() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

  /// Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; bias below 2^-32 for our n).
  public mutating func below(_ n: Int) -> Int {
    Int((UInt64(UInt32(truncatingIfNeeded: next() >> 32)) &* UInt64(n)) >> 32)
  }

  /// Fisher–Yates shuffle of `a[range]`.
  public mutating func shuffle<T>(_ a: inout [T], range: Range<Int>) {
    var i = range.upperBound - 1
    while i > range.lowerBound {
      let j = range.lowerBound + below(i - range.lowerBound + 1)
      a.swapAt(i, j)
      i -= 1
    }
  }
}
