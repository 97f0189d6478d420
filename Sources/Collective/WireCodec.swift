// Element codecs between buffers and message payloads. Payloads live inside transport messages
// at arbitrary byte offsets, so every access is an unaligned load/store (free on x86-64 and arm64).
import Common

/// How a training run's gradients travel (`--allreduce-dtype`): sums and results stay float32 on
/// every rank; fp16 and bf16 halve the bytes on the wire.
public enum GradientWire: String, CaseIterable, Sendable {
  case fp32, fp16, bf16
  var floatWire: FloatWire {
    switch self {
    case .fp32: return .float32
    case .fp16: return .float16
    case .bf16: return .bfloat16
    }
  }
}

/// How floats travel on the wire.
enum FloatWire {
  /// float32 as is.
  case float32
  /// IEEE half precision: half the bytes; sums stay float32 on every rank.
  case float16
  /// bfloat16 (round to nearest even): half the bytes, float32's range (no overflow of large gradients).
  case bfloat16

  var bytesPerElement: Int { self == .float32 ? 4 : 2 }
}

/// Element types the ring reduces.
protocol RingElement: BinaryFloatingPoint {}
extension Float: RingElement {}
extension Double: RingElement {}

@inline(__always)
func encode<T: RingElement>(_ src: UnsafePointer<T>, count: Int, wire: FloatWire, into dst: UnsafeMutableRawPointer) {
  if wire == .float16, T.self == Float.self {
    let s = UnsafeRawPointer(src).assumingMemoryBound(to: Float.self)
    for i in 0..<count { dst.storeBytes(of: Float16(s[i]), toByteOffset: 2 * i, as: Float16.self) }
  } else if wire == .bfloat16, T.self == Float.self {
    let s = UnsafeRawPointer(src).assumingMemoryBound(to: Float.self)
    for i in 0..<count { dst.storeBytes(of: bf16Bits(s[i]), toByteOffset: 2 * i, as: UInt16.self) }
  } else {
    dst.copyMemory(from: src, byteCount: count * MemoryLayout<T>.stride)
  }
}

/// dst[i] += payload[i]
@inline(__always)
func accumulate<T: RingElement>(_ dst: UnsafeMutablePointer<T>, count: Int, wire: FloatWire, from src: UnsafeRawPointer) {
  if wire == .float16, T.self == Float.self {
    let d = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Float.self)
    for i in 0..<count { d[i] += Float(src.loadUnaligned(fromByteOffset: 2 * i, as: Float16.self)) }
  } else if wire == .bfloat16, T.self == Float.self {
    let d = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Float.self)
    for i in 0..<count { d[i] += bf16Value(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
  } else if T.self == Float.self {
    accumulateFloats(UnsafeMutableRawPointer(dst), count: count, from: src)
  } else {
    let stride = MemoryLayout<T>.stride
    for i in 0..<count { dst[i] += src.loadUnaligned(fromByteOffset: stride * i, as: T.self) }
  }
}

/// Lanes per step of the float32 sum: 64 bytes, one AVX-512 register or two AVX2 ones.
let accumulateLanes = 16

/// dst[i] += payload[i] for float32, explicitly vectorized: this sum is the only arithmetic of the
/// reduce-scatter and runs on every byte a rank receives (the scalar unaligned-load loop was 1.5x
/// Gloo's AVX2 sum in the 8-rank profile).
@inline(__always)
func accumulateFloats(_ dst: UnsafeMutableRawPointer, count: Int, from src: UnsafeRawPointer) {
  typealias Vector = SIMD16<Float>
  let vectorBytes = MemoryLayout<Vector>.size
  let whole = count / accumulateLanes
  for v in 0..<whole {
    let o = v * vectorBytes
    let sum = dst.loadUnaligned(fromByteOffset: o, as: Vector.self) + src.loadUnaligned(fromByteOffset: o, as: Vector.self)
    dst.storeBytes(of: sum, toByteOffset: o, as: Vector.self)
  }
  for i in (whole * accumulateLanes)..<count {
    let o = 4 * i
    dst.storeBytes(of: dst.loadUnaligned(fromByteOffset: o, as: Float.self) + src.loadUnaligned(fromByteOffset: o, as: Float.self),
                   toByteOffset: o, as: Float.self)
  }
}

/// dst[i] = payload[i]
@inline(__always)
func decode<T: RingElement>(_ dst: UnsafeMutablePointer<T>, count: Int, wire: FloatWire, from src: UnsafeRawPointer) {
  if wire == .float16, T.self == Float.self {
    let d = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Float.self)
    for i in 0..<count { d[i] = Float(src.loadUnaligned(fromByteOffset: 2 * i, as: Float16.self)) }
  } else if wire == .bfloat16, T.self == Float.self {
    let d = UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Float.self)
    for i in 0..<count { d[i] = bf16Value(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
  } else {
    UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * MemoryLayout<T>.stride)
  }
}

/// The owner's final step on its chunk: scale (average), and round to what the wire will carry,
/// so every rank ends with bit-identical values.
@inline(__always)
func finalize<T: RingElement>(_ p: UnsafeMutablePointer<T>, count: Int, scale: T?, wire: FloatWire) {
  if let s = scale { for i in 0..<count { p[i] *= s } }
  if wire == .float16, T.self == Float.self {
    let d = UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self)
    for i in 0..<count { d[i] = Float(Float16(d[i])) }
  } else if wire == .bfloat16, T.self == Float.self {
    let d = UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self)
    for i in 0..<count { d[i] = roundedToBF16(d[i]) }
  }
}
