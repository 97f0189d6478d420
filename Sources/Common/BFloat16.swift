// bfloat16 conversions, one definition for the kernels (mixed precision) and the wire (gradients
// allreduced as bf16). bf16 is the top half of a float32: same exponent, 7 mantissa bits.

/// The bf16 bit pattern nearest to `x` (ties to even, as vcvtneps2bf16 and PyTorch's c10::BFloat16):
/// NaN stays a quiet NaN, values past the largest bf16 round to ±infinity.
@inlinable @inline(__always)
public func bf16Bits(_ x: Float) -> UInt16 { bf16Bits(bitPattern: x.bitPattern) }

/// `bf16Bits` of a float32 bit pattern. Branch-free (a select, not an `if`), so that conversion
/// loops over arrays vectorise.
@inlinable @inline(__always)
public func bf16Bits(bitPattern b: UInt32) -> UInt16 {
  let nearest = (b &+ 0x7FFF &+ ((b &>> 16) & 1)) &>> 16
  let quietNaN = (b | 0x0040_0000) &>> 16
  return UInt16(truncatingIfNeeded: (b & 0x7FFF_FFFF) > 0x7F80_0000 ? quietNaN : nearest)
}

/// The float32 value of a bf16 bit pattern (exact).
@inlinable @inline(__always)
public func bf16Value(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

/// `x` rounded to the nearest bf16 value, kept as a float32.
@inlinable @inline(__always)
public func roundedToBF16(_ x: Float) -> Float { bf16Value(bf16Bits(x)) }
