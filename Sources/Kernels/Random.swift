// Deterministic random numbers: the same seed gives the same weights, dropout masks and shuffles
// on every machine (no dependence on the system generator).
import Foundation

/// xoshiro256** seeded through SplitMix64. Small, fast and statistically sound for ML use.
public struct RandomState: RandomNumberGenerator, Equatable {
  public var s: (UInt64, UInt64, UInt64, UInt64)

  public init(seed: UInt64) {
    var x = seed
    func splitmix() -> UInt64 {
      x &+= 0x9E37_79B9_7F4A_7C15
      var z = x
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    s = (splitmix(), splitmix(), splitmix(), splitmix())
  }

  public init(state: [UInt64]) {
    precondition(state.count == 4)
    s = (state[0], state[1], state[2], state[3])
  }

  public var stateWords: [UInt64] { [s.0, s.1, s.2, s.3] }

  public static func == (a: RandomState, b: RandomState) -> Bool { a.stateWords == b.stateWords }

  @inline(__always)
  public mutating func next() -> UInt64 {
    let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
    let t = s.1 << 17
    s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
    s.2 ^= t
    s.3 = (s.3 << 45) | (s.3 >> 19)
    return result
  }

  /// Uniform in [0, 1) with 24 random bits (exactly representable as Float).
  @inline(__always)
  public mutating func uniform() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

  /// Uniform in [0, 1) with 53 random bits.
  @inline(__always)
  public mutating func uniformDouble() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }

  /// Standard normal (Box–Muller).
  public mutating func normal() -> Double {
    var u1 = uniformDouble()
    while u1 <= .leastNormalMagnitude { u1 = uniformDouble() }
    let u2 = uniformDouble()
    return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
  }

  /// TensorFlow's truncated normal: values beyond two standard deviations are redrawn.
  public mutating func truncatedNormal(stddev: Double) -> Float {
    while true {
      let z = normal()
      if abs(z) <= 2 { return Float(z * stddev) }
    }
  }
}

