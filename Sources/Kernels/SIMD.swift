// Unaligned SIMD loads and stores over float pointers. NHWC puts channels innermost, so every
// per-pixel kernel (depthwise, batch norm, ReLU6) vectorises over contiguous channels with these.
import CStreaming

@inline(__always) func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
  UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}
@inline(__always) func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
  UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}
@inline(__always) func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}
@inline(__always) func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}
@inline(__always) func load16(_ p: UnsafeMutablePointer<Float>) -> SIMD16<Float> { load16(UnsafePointer(p)) }
@inline(__always) func load8(_ p: UnsafeMutablePointer<Float>) -> SIMD8<Float> { load8(UnsafePointer(p)) }

/// store16, or with `stream` a streaming store (`StreamingStores`; p aligned to 64 bytes).
@inline(__always) func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>, stream: Bool) {
  guard stream else { return store16(v, p) }
  withUnsafePointer(to: v) { mnv2_stream16(p, UnsafeRawPointer($0).assumingMemoryBound(to: Float.self)) }
}
