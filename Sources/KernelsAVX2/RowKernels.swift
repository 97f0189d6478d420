// The row kernels of one instruction set (see Sources/KernelRows/KernelRows.swift). This file is
// compiled into KernelsAVX2 (-target-cpu haswell) and, through the symlink in Sources/KernelsAVX512,
// into KernelsAVX512 (-target-cpu skylake-avx512): edit it here, both builds follow. It must stay
// self-contained (no calls into other modules inside the loops) so that all of its machine code is
// generated for the module's instruction set.
import CStreaming
import KernelRows

@inline(__always) private func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
  UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}
@inline(__always) private func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
  UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}
@inline(__always) private func load16(_ p: UnsafeMutablePointer<Float>) -> SIMD16<Float> { load16(UnsafePointer(p)) }
@inline(__always) private func load8(_ p: UnsafeMutablePointer<Float>) -> SIMD8<Float> { load8(UnsafePointer(p)) }
@inline(__always) private func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}
@inline(__always) private func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}
/// store16, or with `stream` a streaming store (p aligned to 64 bytes: the caller's `stream` says so).
@inline(__always) private func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>, stream: Bool) {
  guard stream else { return store16(v, p) }
  withUnsafePointer(to: v) { mnv2_stream16(p, UnsafeRawPointer($0).assumingMemoryBound(to: Float.self)) }
}
@inline(__always) private func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>, stream: Bool) {
  guard stream else { return store8(v, p) }
  withUnsafePointer(to: v) { mnv2_stream8(p, UnsafeRawPointer($0).assumingMemoryBound(to: Float.self)) }
}
/// g where 0 < y < 6, else 0 (TF's Relu6Grad).
@inline(__always) private func relu6Mask(_ g: SIMD16<Float>, _ y: SIMD16<Float>) -> SIMD16<Float> {
  g.replacing(with: 0, where: (y .<= 0) .| (y .>= 6))
}
@inline(__always) private func relu6Mask(_ g: SIMD8<Float>, _ y: SIMD8<Float>) -> SIMD8<Float> {
  g.replacing(with: 0, where: (y .<= 0) .| (y .>= 6))
}
@inline(__always) private func relu6Mask(_ g: Float, _ y: Float) -> Float { (y > 0 && y < 6) ? g : 0 }

/// Float block sums [2·C] (s0 then s1) folded into double sums every `rowKernelBlockPixels` pixels.
private struct BlockSums {
  let s0, s1: UnsafeMutablePointer<Float>
  let out: UnsafeMutablePointer<Double>
  let channels: Int
  var pending = 0
  init(_ buffer: UnsafeMutablePointer<Float>, channels: Int, out: UnsafeMutablePointer<Double>) {
    s0 = buffer; s1 = buffer + channels; self.channels = channels; self.out = out
    buffer.update(repeating: 0, count: 2 * channels)
  }
  @inline(__always) mutating func pixelDone() {
    pending += 1
    if pending == rowKernelBlockPixels { fold() }
  }
  mutating func fold() {
    guard pending > 0 else { return }
    for c in 0..<(2 * channels) { out[c] += Double(s0[c]) }
    s0.update(repeating: 0, count: 2 * channels)
    pending = 0
  }
}

/// `capacity` elements of heap scratch for body. Not withUnsafeTemporaryAllocation: where the
/// optimiser did not inline a call through it, the call came back with garbage in the error
/// register and the caller aborted on its "threw" path (see the note in the GEMM section).
@inline(__always)
private func withScratch<T, R>(of _: T.Type, capacity: Int, _ body: (UnsafeMutableBufferPointer<T>) -> R) -> R {
  let p = UnsafeMutablePointer<T>.allocate(capacity: capacity)
  defer { p.deallocate() }
  return body(UnsafeMutableBufferPointer(start: p, count: capacity))
}

/// Rows of a channel count that is not a multiple of 16 (the 0.35 model's 8, 24, 56) would leave a
/// scalar tail on every row; the elementwise kernels take g = 16 / gcd(C, 16) rows at a time instead,
/// one flat run of g·C floats (a multiple of 16) against per-channel parameters tiled g times.
@inline(__always)
private func rowsPerVectorGroup(channels C: Int) -> Int {
  var (a, b) = (C, 16)
  while b != 0 { (a, b) = (b, a % b) }
  return C > 0 ? 16 / a : 1
}

@inline(__always)
private func tileChannels(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, channels C: Int, count: Int) {
  for i in 0..<count { dst[i] = src[i % C] }
}

/// Runs `groups(p, L, tiles)` for each group of g = rowsPerVectorGroup(C) rows of `rows` (p: the
/// group's first element, L = g·C floats, `tiles`: each of `params` tiled g times, L floats each, in
/// order), then `rest` on the remaining rows; `rest` on all of them where tiling does not apply.
@inline(__always)
private func inVectorGroups(channels C: Int, rows: Range<Int>, tiling params: [UnsafePointer<Float>],
                            groups: (_ p: Int, _ L: Int, _ tiles: UnsafePointer<Float>) -> Void,
                            rest: (Range<Int>) -> Void) {
  let g = rowsPerVectorGroup(channels: C)
  guard g > 1, rows.count >= g else { rest(rows); return }
  let L = g * C
  withScratch(of: Float.self, capacity: params.count * L) { buf in
    let tiles = buf.baseAddress!
    for (j, p) in params.enumerated() { tileChannels(p, into: tiles + j * L, channels: C, count: L) }
    var r = rows.lowerBound
    while r + g <= rows.upperBound { groups(r * C, L, UnsafePointer(tiles)); r += g }
    rest(r..<rows.upperBound)
  }
}

/// Runs body with block sums over 2·C floats of heap scratch, folding at the end.
@inline(__always)
private func withBlockSums(channels C: Int, out: UnsafeMutablePointer<Double>, _ body: (inout BlockSums) -> Void) {
  withScratch(of: Float.self, capacity: 2 * C) { buf in
    var b = BlockSums(buf.baseAddress!, channels: C, out: out)
    body(&b)
    b.fold()
  }
}

/// body with block sums into `out` (folded at the end), or with nil when there is nothing to sum.
@inline(__always)
private func withOptionalBlockSums(channels C: Int, out: UnsafeMutablePointer<Double>?, _ body: (inout BlockSums?) -> Void) {
  guard let out else {
    var none: BlockSums? = nil
    return body(&none)
  }
  withBlockSums(channels: C, out: out) { b in
    var s: BlockSums? = b
    body(&s)
    b = s!
  }
}

/// The three rows a 3×3 tap window reads: where each starts and whether it lies inside the image.
private struct TapRows3 {
  let r0, r1, r2: UnsafePointer<Float>
  let v0, v1, v2: Bool
  @inline(__always) init(_ r0: UnsafePointer<Float>, _ r1: UnsafePointer<Float>, _ r2: UnsafePointer<Float>,
                         _ v0: Bool, _ v1: Bool, _ v2: Bool) {
    self.r0 = r0; self.r1 = r1; self.r2 = r2; self.v0 = v0; self.v1 = v1; self.v2 = v2
  }
  /// All three rows inside the image.
  var all: Bool { v0 && v1 && v2 }
  /// Input rows iy0, iy0 + 1, iy0 + 2 of `g`'s image, with input row `origin` at `base` (the forward
  /// and weight-gradient windows of an output row).
  @inline(__always) init(first iy0: Int, _ g: DepthwiseGeometry, base: UnsafePointer<Float>, origin: Int) {
    let (H, rowFloats) = (g.height, g.width * g.channels)
    self.init(base + max(0, iy0 - origin) * rowFloats, base + max(0, iy0 + 1 - origin) * rowFloats,
              base + max(0, iy0 + 2 - origin) * rowFloats,
              iy0 >= 0 && iy0 < H, iy0 + 1 >= 0 && iy0 + 1 < H, iy0 + 2 >= 0 && iy0 + 2 < H)
  }
}

/// The three columns a 3×3 tap window reads: the offsets of channel c0 in a row and whether each lies inside.
private struct TapColumns3 {
  let o0, o1, o2: Int
  let u0, u1, u2: Bool
  @inline(__always) init(_ o0: Int, _ o1: Int, _ o2: Int, _ u0: Bool, _ u1: Bool, _ u2: Bool) {
    self.o0 = o0; self.o1 = o1; self.o2 = o2; self.u0 = u0; self.u1 = u1; self.u2 = u2
  }
  /// All three columns inside the row.
  var all: Bool { u0 && u1 && u2 }
  /// Input columns ix, ix + 1, ix + 2 of a row `width` pixels wide (the forward and weight-gradient
  /// windows of an output column).
  @inline(__always) init(first ix: Int, width W: Int, channels C: Int, from c0: Int) {
    let o0 = ix * C + c0
    self.init(o0, o0 + C, o0 + 2 * C, ix >= 0 && ix < W, ix + 1 >= 0 && ix + 1 < W, ix + 2 >= 0 && ix + 2 < W)
  }
}

/// The output columns ox of a 3×3 window row whose three input columns ox·S − pl … ox·S − pl + 2 all
/// lie in 0..<W (empty where a row is narrower than a window: W − 3 + pl < 0 must not round up to 0).
@inline(__always)
private func interiorColumns(width W: Int, outWidth Wo: Int, stride S: Int, padLeft pl: Int) -> Range<Int> {
  let start = min(Wo, (pl + S - 1) / S)
  let last = W - 3 + pl  // the largest ox·S allowed
  return start..<(last < 0 ? start : max(start, min(Wo, last / S + 1)))
}

/// The nine weights of a 3×3 depthwise kernel for 16 channels (from c0), held in registers along a row.
private struct Weights3x3 {
  let w0, w1, w2, w3, w4, w5, w6, w7, w8: SIMD16<Float>
  @inline(__always) init(_ w: UnsafePointer<Float>, channels C: Int, from c0: Int) {
    w0 = load16(w + c0); w1 = load16(w + C + c0); w2 = load16(w + 2 * C + c0)
    w3 = load16(w + 3 * C + c0); w4 = load16(w + 4 * C + c0); w5 = load16(w + 5 * C + c0)
    w6 = load16(w + 6 * C + c0); w7 = load16(w + 7 * C + c0); w8 = load16(w + 8 * C + c0)
  }
  /// Σ over the valid taps in (ky, kx) order of row ky's vector at column kx times w[3·ky + kx]
  /// (the per-pixel taps' order, so the same bits); straight-line where every tap is inside (nine
  /// branches per pixel and 16 channels cost as much as the FMAs). Three columns all inside are
  /// evenly spaced (C apart, or −C for the input gradient's; at stride 2 its parities never reach all
  /// three), so they take `sumAll`'s row pointers and column step.
  @inline(__always)
  func sum(_ rows: TapRows3, _ cols: TapColumns3) -> SIMD16<Float> {
    if rows.all && cols.all {
      assert(cols.o2 - cols.o1 == cols.o1 - cols.o0, "the columns of a full window are evenly spaced")
      return sumAll(rows.r0 + cols.o0, rows.r1 + cols.o0, rows.r2 + cols.o0, columnStep: cols.o1 - cols.o0)
    }
    let (r0, r1, r2, v0, v1, v2) = (rows.r0, rows.r1, rows.r2, rows.v0, rows.v1, rows.v2)
    let (o0, o1, o2, u0, u1, u2) = (cols.o0, cols.o1, cols.o2, cols.u0, cols.u1, cols.u2)
    var acc = SIMD16<Float>()
    if v0 {
      if u0 { acc = acc.addingProduct(load16(r0 + o0), w0) }
      if u1 { acc = acc.addingProduct(load16(r0 + o1), w1) }
      if u2 { acc = acc.addingProduct(load16(r0 + o2), w2) }
    }
    if v1 {
      if u0 { acc = acc.addingProduct(load16(r1 + o0), w3) }
      if u1 { acc = acc.addingProduct(load16(r1 + o1), w4) }
      if u2 { acc = acc.addingProduct(load16(r1 + o2), w5) }
    }
    if v2 {
      if u0 { acc = acc.addingProduct(load16(r2 + o0), w6) }
      if u1 { acc = acc.addingProduct(load16(r2 + o1), w7) }
      if u2 { acc = acc.addingProduct(load16(r2 + o2), w8) }
    }
    return acc
  }
  /// The nine products of a window with every tap inside, straight-line, in `sum`'s order: row ky's
  /// three columns at q_ky, q_ky + d, q_ky + 2d (d = C for the forward's windows, −C for the input
  /// gradient's, whose columns run backwards).
  @inline(__always)
  func sumAll(_ q0: UnsafePointer<Float>, _ q1: UnsafePointer<Float>, _ q2: UnsafePointer<Float>, columnStep d: Int) -> SIMD16<Float> {
    var acc = SIMD16<Float>()
    acc = acc.addingProduct(load16(q0), w0)
    acc = acc.addingProduct(load16(q0 + d), w1)
    acc = acc.addingProduct(load16(q0 + 2 * d), w2)
    acc = acc.addingProduct(load16(q1), w3)
    acc = acc.addingProduct(load16(q1 + d), w4)
    acc = acc.addingProduct(load16(q1 + 2 * d), w5)
    acc = acc.addingProduct(load16(q2), w6)
    acc = acc.addingProduct(load16(q2 + d), w7)
    acc = acc.addingProduct(load16(q2 + 2 * d), w8)
    return acc
  }
}

extension BlockSums {
  /// Float sums of 16 channels from c0 (s0, s1) kept in registers over at most rowKernelBlockPixels
  /// pixels, added straight into the double sums.
  /// Widened as vectors: lane by lane the same additions, but a per-lane loop went through a
  /// stack copy of t0 and t1 whose 4-byte reloads missed store forwarding (~20 % of the depthwise
  /// input gradient's samples on Zen 4).
  @inline(__always) func addToDoubles(_ t0: SIMD16<Float>, _ t1: SIMD16<Float>, from c0: Int) {
    addWidened(t0, to: out + c0)
    addWidened(t1, to: out + channels + c0)
  }
}

/// p[0..<16] += t, widened to doubles as vectors.
@inline(__always) private func addWidened(_ t: SIMD16<Float>, to p: UnsafeMutablePointer<Double>) {
  let lo = UnsafeMutableRawPointer(p), hi = UnsafeMutableRawPointer(p + 8)
  lo.storeBytes(of: lo.loadUnaligned(as: SIMD8<Double>.self) + SIMD8<Double>(t.lowHalf), as: SIMD8<Double>.self)
  hi.storeBytes(of: hi.loadUnaligned(as: SIMD8<Double>.self) + SIMD8<Double>(t.highHalf), as: SIMD8<Double>.self)
}

/// p[0..<8] += t, widened to doubles as a vector.
@inline(__always) private func addWidened(_ t: SIMD8<Float>, to p: UnsafeMutablePointer<Double>) {
  let raw = UnsafeMutableRawPointer(p)
  raw.storeBytes(of: raw.loadUnaligned(as: SIMD8<Double>.self) + SIMD8<Double>(t), as: SIMD8<Double>.self)
}

#if KERNELS_AVX512
/// The 3×3 depthwise input gradient along a row keeps nine weights, four BN parameters and two sums
/// in registers. AVX-512 has the 32 for it (`bench fused` 56²x144 on Zen 5: 12.5 vs 15.5 ms); on
/// AVX2's 16 they spill and the per-pixel taps stay faster (18–21 vs 15–16 ms), so AVX2 keeps those.
private let depthwiseInputGradientAlongRows = true
#else
private let depthwiseInputGradientAlongRows = false
#endif

public enum RowKernels: RowKernelSet {
#if KERNELS_AVX512
  public static let name = "AVX-512"
#else
  public static let name = "AVX2"
#endif

  /// out[c] = Σ_taps a[tap][c]·b[tap][c] for c in c0..<C; with `shift`, also s0 += out − shift, s1 += (out − shift)².
  @inline(__always)
  private static func multiplyAccumulateTaps(out: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>,
                                             b: UnsafePointer<Float>, taps: UnsafePointer<Int>, tapCount: Int,
                                             channels C: Int, from c0: Int = 0, shift: UnsafePointer<Float>?, sums: BlockSums?) {
    var c = c0
    while c + 16 <= C {
      var acc = SIMD16<Float>()
      for t in 0..<tapCount { acc = acc.addingProduct(load16(a + taps[2 * t] + c), load16(b + taps[2 * t + 1] + c)) }
      store16(acc, out + c)
      if let shift, let s = sums {
        let d = acc - load16(shift + c)
        store16(load16(s.s0 + c) + d, s.s0 + c)
        store16(load16(s.s1 + c).addingProduct(d, d), s.s1 + c)
      }
      c += 16
    }
    while c + 8 <= C {
      var acc = SIMD8<Float>()
      for t in 0..<tapCount { acc = acc.addingProduct(load8(a + taps[2 * t] + c), load8(b + taps[2 * t + 1] + c)) }
      store8(acc, out + c)
      if let shift, let s = sums {
        let d = acc - load8(shift + c)
        store8(load8(s.s0 + c) + d, s.s0 + c)
        store8(load8(s.s1 + c).addingProduct(d, d), s.s1 + c)
      }
      c += 8
    }
    while c < C {
      var acc: Float = 0
      for t in 0..<tapCount { acc += a[taps[2 * t] + c] * b[taps[2 * t + 1] + c] }
      out[c] = acc
      if let shift, let s = sums {
        let d = acc - shift[c]
        s.s0[c] += d
        s.s1[c] += d * d
      }
      c += 1
    }
  }

  /// Splits output rows into groups within one image and calls body(n, oyRange, base, rowOrigin), where
  /// base + ((iy − rowOrigin)·W + ix)·C is input pixel (iy, ix) of image n: x itself, or the rows the
  /// group reads, transformed into the buffer of `input`.
  @inline(__always)
  private static func forEachInputWindow(rows: Range<Int>, _ g: DepthwiseGeometry, x: UnsafePointer<Float>,
                                         input: DepthwiseInputTransform?,
                                         _ body: (_ n: Int, _ oy: Range<Int>, _ base: UnsafePointer<Float>, _ rowOrigin: Int) -> Void) {
    let (H, W, C, K, S, Ho, pt) = (g.height, g.width, g.channels, g.kernel, g.stride, g.outHeight, g.padTop)
    let group = input.map { max(1, ($0.bufferRows - K) / S + 1) } ?? Ho  // (group − 1)·S + K input rows fit
    var r = rows.lowerBound
    while r < rows.upperBound {
      let n = r / Ho
      let end = min(rows.upperBound, (n + 1) * Ho, r + group)
      let oy0 = r - n * Ho, oy1 = end - n * Ho
      if let t = input {
        let lo = max(0, oy0 * S - pt), hi = min(H, (oy1 - 1) * S - pt + K)
        let ahead = StreamAhead.distance
        for iy in lo..<hi {
          let src = x + (n * H + iy) * W * C, dst = t.buffer + (iy - lo) * W * C
          for px in 0..<W {
            let zi = src + px * C, ai = dst + px * C
            var c = 0
            while c + 16 <= C {
              if ahead > 0 { prefetchLineIntoL1(zi + c + ahead) }
              // The same expression as batchNormApply: the backward's ReLU6 mask recomputes it from z.
              var v = load16(zi + c) * load16(t.scale + c) + load16(t.shift + c)
              if t.relu6 { v = v.replacing(with: 0, where: v .< 0).replacing(with: 6, where: v .> 6) }
              if t.roundToBF16 { v = roundedToBF16(v) }
              store16(v, ai + c)
              c += 16
            }
            while c < C {
              var v = zi[c] * t.scale[c] + t.shift[c]
              if t.relu6 { v = min(max(v, 0), 6) }
              if t.roundToBF16 { v = roundedToBF16(v) }
              ai[c] = v
              c += 1
            }
          }
        }
        body(n, oy0..<oy1, UnsafePointer(t.buffer), lo)
      } else {
        body(n, oy0..<oy1, x + n * H * W * C, 0)
      }
      r = end
    }
  }

  // MARK: - Direct convolution (the stem)

  /// Four output pixels whose windows lie inside the image at a time: independent accumulator chains
  /// (one alone waits out the FMA latency on every tap), each weight vector loaded once for the four.
  /// AVX-512 takes 32 channels at a time (eight chains, two FMA pipes × four cycles of latency, in its
  /// 32 registers); AVX2's 16 registers hold the four chains of one 16-channel block (a SIMD16 is two
  /// of them). Every output sums its taps in the same order as the one-pixel path, so the same bits.
#if KERNELS_AVX512
  private static let convPairTiles = true
#else
  private static let convPairTiles = false
#endif
  /// 16 output channels alone (the 0.35 and 0.5 stems) on AVX-512: eight pixels at a time, the eight
  /// chains of the 32-wide tile, where four waited on the FMA latency (0.35/96 b64 on Zen 4, the stem
  /// forward in alternating steps: −0.23 and −0.25 ms of 1.7–1.8). Same sums in the same order: the
  /// same bits.
  private static let convEightPixelTiles = convPairTiles

  public static func convForwardDirect16(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                         _ g: ConvGeometry, rows: Range<Int>, stats: ChannelStatistics?, stream: Bool,
                                         prefetch: Bool) {
    let (H, W, Ci, Co, K, S) = (g.height, g.width, g.inChannels, g.outChannels, g.kernel, g.stride)
    let (Ho, Wo, pt, pl) = (g.outHeight, g.outWidth, g.padTop, g.padLeft)
    defer { if stream { streamingFence() } }
    // Output columns whose windows lie inside the image.
    let firstInside = (pl + S - 1) / S, lastInside = (W - K + pl) / S
    let inside = firstInside..<max(firstInside, min(Wo, lastInside + 1))
    let pairs = convPairTiles ? Co / 32 * 32 : 0  // channels the 32-wide tiles take; 16-wide ones the rest
    func run(_ sums: inout BlockSums?) {
      /// Stores output vector `v` (channels cb..<cb + 16) of pixel `pixel`, and its statistics.
      @inline(__always) func emit(_ v: SIMD16<Float>, _ pixel: Int, _ cb: Int) {
        store16(v, y + pixel * Co + cb, stream: stream)
        if let s = sums, let stats {
          let d = v - load16(stats.shift + cb)
          store16(load16(s.s0 + cb) + d, s.s0 + cb)
          store16(load16(s.s1 + cb).addingProduct(d, d), s.s1 + cb)
        }
      }
      for row in rows {
        let n = row / Ho, oy = row % Ho
        let iy0 = oy * S - pt
        // The input rows the next output row adds (S of them), into L1 while this row computes: the
        // taps read three rows at a time, interleaved, which the hardware prefetcher does not follow
        // (the stem forward on 1.0/224 b32 waited on these loads: 4.9–5.3 → 3.5–3.8 ms with it).
        if prefetch && oy + 1 < Ho {
          let first = iy0 + K, last = min(H, iy0 + K + S)
          if first < last {
            var q = UnsafeRawPointer(x + (n * H + first) * W * Ci)
            let end = UnsafeRawPointer(x + (n * H + last) * W * Ci)
            while q < end { prefetchLineIntoL1(q); q += prefetchLine }
          }
        }
        /// Output pixel ox on its own, the taps the padding leaves.
        func single(_ ox: Int) {
          let ix0 = ox * S - pl
          for cb in stride(from: 0, to: Co, by: 16) {
            var acc = SIMD16<Float>()
            for ky in 0..<K where iy0 + ky >= 0 && iy0 + ky < H {
              for kx in 0..<K where ix0 + kx >= 0 && ix0 + kx < W {
                let xin = x + ((n * H + iy0 + ky) * W + ix0 + kx) * Ci
                let wk = w + (ky * K + kx) * Ci * Co + cb
                for ci in 0..<Ci { acc = acc.addingProduct(SIMD16(repeating: xin[ci]), load16(wk + ci * Co)) }
              }
            }
            emit(acc, row * Wo + ox, cb)
          }
          sums?.pixelDone()
        }
        guard iy0 >= 0 && iy0 + K <= H else {
          for ox in 0..<Wo { single(ox) }
          continue
        }
        for ox in 0..<inside.lowerBound { single(ox) }
        var ox = inside.lowerBound
        let step = S * Ci  // from one output pixel's window to the next one's
        while convEightPixelTiles && Co == 16 && ox + 8 <= inside.upperBound {
          let ix0 = ox * S - pl, p = row * Wo + ox
          var a0 = SIMD16<Float>(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0
          for ky in 0..<K {
            for kx in 0..<K {
              let xin = x + ((n * H + iy0 + ky) * W + ix0 + kx) * Ci
              let wk = w + (ky * K + kx) * Ci * Co
              for ci in 0..<Ci {
                let wv = load16(wk + ci * Co), xi = xin + ci
                a0 = a0.addingProduct(SIMD16(repeating: xi[0]), wv)
                a1 = a1.addingProduct(SIMD16(repeating: xi[step]), wv)
                a2 = a2.addingProduct(SIMD16(repeating: xi[2 * step]), wv)
                a3 = a3.addingProduct(SIMD16(repeating: xi[3 * step]), wv)
                a4 = a4.addingProduct(SIMD16(repeating: xi[4 * step]), wv)
                a5 = a5.addingProduct(SIMD16(repeating: xi[5 * step]), wv)
                a6 = a6.addingProduct(SIMD16(repeating: xi[6 * step]), wv)
                a7 = a7.addingProduct(SIMD16(repeating: xi[7 * step]), wv)
              }
            }
          }
          emit(a0, p, 0); emit(a1, p + 1, 0); emit(a2, p + 2, 0); emit(a3, p + 3, 0)
          emit(a4, p + 4, 0); emit(a5, p + 5, 0); emit(a6, p + 6, 0); emit(a7, p + 7, 0)
          for _ in 0..<8 { sums?.pixelDone() }
          ox += 8
        }
        while ox + 4 <= inside.upperBound {
          let ix0 = ox * S - pl, p = row * Wo + ox
          for cb in stride(from: 0, to: pairs, by: 32) {
            var a0 = SIMD16<Float>(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0
            for ky in 0..<K {
              for kx in 0..<K {
                let xin = x + ((n * H + iy0 + ky) * W + ix0 + kx) * Ci
                let wk = w + (ky * K + kx) * Ci * Co + cb
                for ci in 0..<Ci {
                  let wa = load16(wk + ci * Co), wb = load16(wk + ci * Co + 16)
                  let x0 = SIMD16(repeating: xin[ci]), x1 = SIMD16(repeating: xin[step + ci])
                  let x2 = SIMD16(repeating: xin[2 * step + ci]), x3 = SIMD16(repeating: xin[3 * step + ci])
                  a0 = a0.addingProduct(x0, wa); b0 = b0.addingProduct(x0, wb)
                  a1 = a1.addingProduct(x1, wa); b1 = b1.addingProduct(x1, wb)
                  a2 = a2.addingProduct(x2, wa); b2 = b2.addingProduct(x2, wb)
                  a3 = a3.addingProduct(x3, wa); b3 = b3.addingProduct(x3, wb)
                }
              }
            }
            emit(a0, p, cb); emit(b0, p, cb + 16); emit(a1, p + 1, cb); emit(b1, p + 1, cb + 16)
            emit(a2, p + 2, cb); emit(b2, p + 2, cb + 16); emit(a3, p + 3, cb); emit(b3, p + 3, cb + 16)
          }
          for cb in stride(from: pairs, to: Co, by: 16) {
            var a0 = SIMD16<Float>(), a1 = a0, a2 = a0, a3 = a0
            for ky in 0..<K {
              for kx in 0..<K {
                let xin = x + ((n * H + iy0 + ky) * W + ix0 + kx) * Ci
                let wk = w + (ky * K + kx) * Ci * Co + cb
                for ci in 0..<Ci {
                  let wv = load16(wk + ci * Co)
                  a0 = a0.addingProduct(SIMD16(repeating: xin[ci]), wv)
                  a1 = a1.addingProduct(SIMD16(repeating: xin[step + ci]), wv)
                  a2 = a2.addingProduct(SIMD16(repeating: xin[2 * step + ci]), wv)
                  a3 = a3.addingProduct(SIMD16(repeating: xin[3 * step + ci]), wv)
                }
              }
            }
            emit(a0, p, cb); emit(a1, p + 1, cb); emit(a2, p + 2, cb); emit(a3, p + 3, cb)
          }
          for _ in 0..<4 { sums?.pixelDone() }
          ox += 4
        }
        for ox in ox..<Wo { single(ox) }
      }
    }
    withOptionalBlockSums(channels: Co, out: stats?.sums, run)
  }

  /// dw[K, K, Ci, Co] += Σ over output pixels `pixels` (n·Ho·Wo + oy·Wo + ox) of the pixel's input
  /// window ⊗ dy[pixel] (the stem's weight gradient), for windows of K·Ci = 9 floats per kernel row
  /// (3×3 over 3 channels: every MobileNetV2 stem). Kernel row by kernel row, the row's nine
  /// (kx, ci) weight-gradient vectors are register accumulators over the pixels, each pixel one
  /// vector of dy and nine broadcasts of its window row, read in place from x: no patch matrix.
  /// Windows in the padding read a zero-filled copy of their row. Float sums over at most
  /// `convWeightGradientFoldPixels` pixels, then added into dw.
  public static func convWeightGradientDirect9(dw: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                               x: UnsafePointer<Float>, _ g: ConvGeometry, pixels: Range<Int>) {
    let (H, W, Ci, Co, K, S) = (g.height, g.width, g.inChannels, g.outChannels, g.kernel, g.stride)
    let (Ho, Wo, pt, pl) = (g.outHeight, g.outWidth, g.padTop, g.padLeft)
    precondition(K * Ci == 9 && Co % lanes == 0, "convWeightGradientDirect9 takes 3×3×3 windows, whole vectors of Co")
    guard !pixels.isEmpty else { return }
    withScratch(of: Float.self, capacity: 16) { edgeBuffer in
      let edge = edgeBuffer.baseAddress!
      for ky in 0..<K {
        for cb in stride(from: 0, to: Co, by: lanes) {
          var p0 = pixels.lowerBound
          while p0 < pixels.upperBound {
            let p1 = min(pixels.upperBound, p0 + convWeightGradientFoldPixels)
            var a0 = GemmVector(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0
            var row = p0 / Wo, ox = p0 - row * Wo
            var p = p0
            while p < p1 {
              // The pixels of this output row in the fold.
              let rowEnd = min(p1, p + (Wo - ox))
              let n = row / Ho, oy = row - n * Ho
              let iy = oy * S - pt + ky
              if iy >= 0 && iy < H {
                let line = x + (n * H + iy) * W * Ci
                var q = p
                while q < rowEnd {
                  let ix0 = (ox + q - p) * S - pl
                  var src = line + ix0 * Ci
                  if ix0 < 0 || ix0 + K > W {
                    for kx in 0..<K {
                      let ix = ix0 + kx
                      for c in 0..<Ci { edge[kx * Ci + c] = ix >= 0 && ix < W ? line[ix * Ci + c] : 0 }
                    }
                    src = UnsafePointer(edge)
                  }
                  let d = vload(dy + q * Co + cb)
                  a0 = a0.addingProduct(splat(src[0]), d); a1 = a1.addingProduct(splat(src[1]), d)
                  a2 = a2.addingProduct(splat(src[2]), d); a3 = a3.addingProduct(splat(src[3]), d)
                  a4 = a4.addingProduct(splat(src[4]), d); a5 = a5.addingProduct(splat(src[5]), d)
                  a6 = a6.addingProduct(splat(src[6]), d); a7 = a7.addingProduct(splat(src[7]), d)
                  a8 = a8.addingProduct(splat(src[8]), d)
                  q += 1
                }
              }
              p = rowEnd
              row += 1
              ox = 0
            }
            let out = dw + ky * 9 * Co + cb
            @inline(__always) func add(_ v: GemmVector, _ j: Int) { vstore(vload(out + j * Co) + v, out + j * Co) }
            add(a0, 0); add(a1, 1); add(a2, 2); add(a3, 3); add(a4, 4); add(a5, 5); add(a6, 6); add(a7, 7); add(a8, 8)
            p0 = p1
          }
        }
      }
    }
  }

  // MARK: - Depthwise

  public static func depthwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                      _ g: DepthwiseGeometry, rows: Range<Int>, stats: ChannelStatistics?,
                                      input: DepthwiseInputTransform?, stream: Bool) {
    let (H, W, C, K, S) = (g.height, g.width, g.channels, g.kernel, g.stride)
    let (Ho, Wo, pt, pl) = (g.outHeight, g.outWidth, g.padTop, g.padLeft)
    defer { if stream { streamingFence() } }
    withScratch(of: Int.self, capacity: 2 * K * K) { tapBuf in
      let taps = tapBuf.baseAddress!
      func run(_ sums: inout BlockSums?) {
        forEachInputWindow(rows: rows, g, x: x, input: input) { n, oys, base, origin in
          for oy in oys {
            let row = n * Ho + oy
            // 3×3: 16 channels at a time along the row, the nine weights and the statistics in
            // registers (the taps below reload both per pixel); the same sums in the same order.
            var c0 = 0
            if K == 3 {
              let window = TapRows3(first: oy * S - pt, g, base: base, origin: origin)
              let out = y + row * Wo * C
              // The interior columns (see depthwiseWeightGradient) read their taps through three row
              // pointers moving S pixels per output instead of per-tap offsets.
              let interior = window.all ? interiorColumns(width: W, outWidth: Wo, stride: S, padLeft: pl) : Wo..<Wo
              let (interiorStart, interiorEnd) = (interior.lowerBound, interior.upperBound)
              let step = S * C
              while c0 + 16 <= C {
                let taps = Weights3x3(w, channels: C, from: c0)
                let sh = stats.map { load16($0.shift + c0) } ?? SIMD16<Float>()
                // At output column ox: input column ox·S − pl of each row (only read inside the interior).
                var q0 = window.r0 + c0 - pl * C, q1 = window.r1 + c0 - pl * C, q2 = window.r2 + c0 - pl * C
                var ox0 = 0
                while ox0 < Wo {
                  // Float sums over at most rowKernelBlockPixels pixels, then into the doubles.
                  let ox1 = min(Wo, ox0 + rowKernelBlockPixels)
                  var t0 = SIMD16<Float>(), t1 = t0
                  for ox in ox0..<ox1 {
                    let acc = ox >= interiorStart && ox < interiorEnd
                      ? taps.sumAll(q0, q1, q2, columnStep: C)
                      : taps.sum(window, TapColumns3(first: ox * S - pl, width: W, channels: C, from: c0))
                    q0 += step; q1 += step; q2 += step
                    store16(acc, out + ox * C + c0, stream: stream)
                    if sums != nil {
                      let d = acc - sh
                      t0 += d
                      t1 = t1.addingProduct(d, d)
                    }
                  }
                  sums?.addToDoubles(t0, t1, from: c0)
                  ox0 = ox1
                }
                c0 += 16
              }
            }
            guard c0 < C else { continue }
            for ox in 0..<Wo {
              var count = 0
              for ky in 0..<K {
                let iy = oy * S - pt + ky
                if iy < 0 || iy >= H { continue }
                for kx in 0..<K {
                  let ix = ox * S - pl + kx
                  if ix < 0 || ix >= W { continue }
                  taps[2 * count] = ((iy - origin) * W + ix) * C
                  taps[2 * count + 1] = (ky * K + kx) * C
                  count += 1
                }
              }
              multiplyAccumulateTaps(out: y + (row * Wo + ox) * C, a: base, b: w, taps: taps, tapCount: count,
                                     channels: C, from: c0, shift: stats?.shift, sums: sums)
              sums?.pixelDone()
            }
          }
        }
      }
      withOptionalBlockSums(channels: C, out: stats?.sums, run)
    }
  }

  public static func depthwiseInputGradient(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                            w: UnsafePointer<Float>, _ g: DepthwiseGeometry, rows: Range<Int>,
                                            residual: UnsafePointer<Float>?, reduce: BatchNormReduction?, stream: Bool) {
    let (H, W, C, K, S) = (g.height, g.width, g.channels, g.kernel, g.stride)
    let (Ho, Wo, pt, pl) = (g.outHeight, g.outWidth, g.padTop, g.padLeft)
    defer { if stream { streamingFence() } }
    withScratch(of: Int.self, capacity: 2 * K * K) { tapBuf in
      let taps = tapBuf.baseAddress!
      // Gather: input pixel (iy, ix) is read by output (oy, ox) through tap (ky, kx) when
      // oy·S − pt + ky = iy, i.e. oy = (iy + pt − ky) / S exactly.
      func run(_ sums: inout BlockSums?) {
        for row in rows {
          let n = row / H, iy = row % H
          // 3×3, stride 1 or 2: 16 channels at a time along the row, the nine weights, the BN
          // parameters and the reductions in registers; the same sums in the same order as the taps.
          var c0 = 0
          if depthwiseInputGradientAlongRows && K == 3 && (S == 1 || S == 2) {
            /// Output row or column t·S reached: t, if the stride divides it and it is in range.
            // t / S as a shift (S is 1 or 2 here, t ≥ 0 wherever it is used): a `div` per tap was
            // three integer divisions per pixel and 16 channels.
            let sh = S == 2 ? 1 : 0
            @inline(__always) func reached(_ t: Int, _ limit: Int) -> Bool { t >= 0 && (S == 1 || t & 1 == 0) && t >> sh < limit }
            let ty0 = iy + pt, ty1 = ty0 - 1, ty2 = ty0 - 2
            let v0 = reached(ty0, Ho), v1 = reached(ty1, Ho), v2 = reached(ty2, Ho)
            let d0 = dy + (n * Ho + max(0, ty0) >> sh) * Wo * C, d1 = dy + (n * Ho + max(0, ty1) >> sh) * Wo * C
            let d2 = dy + (n * Ho + max(0, ty2) >> sh) * Wo * C
            let rowBase = row * W * C
            // The next input row's z, one line per 16 channels of a pixel handled here (as many as the
            // row has lines), so that row's reductions find it in cache (`StreamAhead`; the same
            // channel block some pixels ahead gained nothing: the hardware's stride prefetch has those).
            var nextZ = StreamAhead.enabled && row + 1 < rows.upperBound ? reduce.map { $0.z + rowBase + W * C } : nil
            // Stride 2: which output rows this input row reaches, the same for each of its pixels:
            // rows 0 and 2 (2), row 1 alone (1), or a pattern at the image's edge (0: per tap).
            let stridedRows = S != 2 ? 0 : v0 && v2 ? 2 : v1 && !v0 && !v2 ? 1 : 0
            // Stride 1: the pixels all of whose taps are inside (all three rows, and output columns
            // ix + pl − 2 ≥ 0 to ix + pl ≤ Wo − 1) read them through three moving row pointers.
            let interiorStart = S == 1 && v0 && v1 && v2 ? min(W, max(0, 2 - pl)) : W
            let interiorEnd = S == 1 && v0 && v1 && v2 ? max(interiorStart, min(W, Wo - pl)) : W
            while c0 + 16 <= C {
              let taps = Weights3x3(w, channels: C, from: c0)
              let zero = SIMD16<Float>()
              let sc = reduce.map { load16($0.scale + c0) } ?? zero, sf = reduce.map { load16($0.shift + c0) } ?? zero
              let mu = reduce.map { load16($0.mean + c0) } ?? zero, isd = reduce.map { load16($0.invStd + c0) } ?? zero
              // At input column ix: output column ix + pl of each row (only read inside the interior).
              var e0 = d0 + pl * C + c0, e1 = d1 + pl * C + c0, e2 = d2 + pl * C + c0
              var ix0 = 0
              while ix0 < W {
                let ix1 = min(W, ix0 + rowKernelBlockPixels)
                var t0 = zero, t1 = zero
                for ix in ix0..<ix1 {
                  let tx0 = ix + pl, tx1 = tx0 - 1, tx2 = tx0 - 2
                  var acc: SIMD16<Float>
                  if ix >= interiorStart && ix < interiorEnd {
                    acc = taps.sumAll(e0, e1, e2, columnStep: -C)
                  } else if stridedRows != 0 && tx2 >= 0 && tx0 >> 1 < Wo {
                    // Stride 2 inside the row: the taps whose row and column parities match this
                    // pixel's, straight-line and in (ky, kx) order (the order and bits of `sum`).
                    let even = tx0 & 1 == 0
                    let q0 = (tx0 >> 1) * C + c0, q1 = (tx1 >> 1) * C + c0, q2 = (tx2 >> 1) * C + c0
                    if stridedRows == 2 {
                      // Rows 0 and 2: columns 0 and 2 of an even pixel, column 1 of an odd one.
                      if even {
                        acc = SIMD16<Float>().addingProduct(load16(d0 + q0), taps.w0).addingProduct(load16(d0 + q2), taps.w2)
                          .addingProduct(load16(d2 + q0), taps.w6).addingProduct(load16(d2 + q2), taps.w8)
                      } else {
                        acc = SIMD16<Float>().addingProduct(load16(d0 + q1), taps.w1).addingProduct(load16(d2 + q1), taps.w7)
                      }
                    } else {
                      // Row 1 alone.
                      if even {
                        acc = SIMD16<Float>().addingProduct(load16(d1 + q0), taps.w3).addingProduct(load16(d1 + q2), taps.w5)
                      } else {
                        acc = SIMD16<Float>().addingProduct(load16(d1 + q1), taps.w4)
                      }
                    }
                  } else {
                    let u0 = reached(tx0, Wo), u1 = reached(tx1, Wo), u2 = reached(tx2, Wo)
                    let q0 = (tx0 >> sh) * C + c0, q1 = (tx1 >> sh) * C + c0, q2 = (tx2 >> sh) * C + c0
                    acc = taps.sum(TapRows3(d0, d1, d2, v0, v1, v2), TapColumns3(q0, q1, q2, u0, u1, u2))
                  }
                  e0 += C; e1 += C; e2 += C
                  let p = rowBase + ix * C + c0
                  if let q = nextZ { prefetchLineIntoL1(q); nextZ = q + 16 }
                  if let residual { acc += load16(residual + p) }
                  if let r = reduce {
                    let zv = load16(r.z + p)
                    let gm = r.relu6 ? relu6Mask(acc, zv * sc + sf) : acc
                    store16(r.storesScaledGradient ? gm * sc : acc, dx + p, stream: stream)
                    let xhat = (zv - mu) * isd
                    t0 += gm
                    t1 = t1.addingProduct(gm, xhat)
                  } else {
                    store16(acc, dx + p, stream: stream)
                  }
                }
                sums?.addToDoubles(t0, t1, from: c0)
                ix0 = ix1
              }
              c0 += 16
            }
          }
          guard c0 < C else { continue }
          for ix in 0..<W {
            var count = 0
            for ky in 0..<K {
              let ty = iy + pt - ky
              if ty < 0 || ty % S != 0 || ty / S >= Ho { continue }
              for kx in 0..<K {
                let tx = ix + pl - kx
                if tx < 0 || tx % S != 0 || tx / S >= Wo { continue }
                taps[2 * count] = ((n * Ho + ty / S) * Wo + tx / S) * C
                taps[2 * count + 1] = (ky * K + kx) * C
                count += 1
              }
            }
            let p = (row * W + ix) * C
            let out = dx + p
            if residual == nil && reduce == nil {
              multiplyAccumulateTaps(out: out, a: dy, b: w, taps: taps, tapCount: count, channels: C, from: c0,
                                     shift: nil, sums: nil)
              continue
            }
            // The 16- and 8-wide loops are written out twice on purpose: one helper generic over SIMD
            // (with a generic relu6Mask) ran the 56²×144 backward 6× slower on AVX2 (`bench fused`
            // 10.9 → 67 ms): its masks, compares and FMAs became per-lane loops.
            var c = c0
            while c + 16 <= C {
              var acc = SIMD16<Float>()
              for t in 0..<count { acc = acc.addingProduct(load16(dy + taps[2 * t] + c), load16(w + taps[2 * t + 1] + c)) }
              if let residual { acc += load16(residual + p + c) }
              if let r = reduce {
                let zv = load16(r.z + p + c)
                let gm = r.relu6 ? relu6Mask(acc, zv * load16(r.scale + c) + load16(r.shift + c)) : acc
                store16(r.storesScaledGradient ? gm * load16(r.scale + c) : acc, out + c)
                if let s = sums {
                  let xhat = (zv - load16(r.mean + c)) * load16(r.invStd + c)
                  store16(load16(s.s0 + c) + gm, s.s0 + c)
                  store16(load16(s.s1 + c).addingProduct(gm, xhat), s.s1 + c)
                }
              } else {
                store16(acc, out + c)
              }
              c += 16
            }
            while c + 8 <= C {
              var acc = SIMD8<Float>()
              for t in 0..<count { acc = acc.addingProduct(load8(dy + taps[2 * t] + c), load8(w + taps[2 * t + 1] + c)) }
              if let residual { acc += load8(residual + p + c) }
              if let r = reduce {
                let zv = load8(r.z + p + c)
                let gm = r.relu6 ? relu6Mask(acc, zv * load8(r.scale + c) + load8(r.shift + c)) : acc
                store8(r.storesScaledGradient ? gm * load8(r.scale + c) : acc, out + c)
                if let s = sums {
                  let xhat = (zv - load8(r.mean + c)) * load8(r.invStd + c)
                  store8(load8(s.s0 + c) + gm, s.s0 + c)
                  store8(load8(s.s1 + c).addingProduct(gm, xhat), s.s1 + c)
                }
              } else {
                store8(acc, out + c)
              }
              c += 8
            }
            while c < C {
              var acc: Float = 0
              for t in 0..<count { acc += dy[taps[2 * t] + c] * w[taps[2 * t + 1] + c] }
              if let residual { acc += residual[p + c] }
              if let r = reduce {
                let zv = r.z[p + c]
                let gm = r.relu6 ? relu6Mask(acc, zv * r.scale[c] + r.shift[c]) : acc
                out[c] = r.storesScaledGradient ? gm * r.scale[c] : acc
                if let s = sums {
                  s.s0[c] += gm
                  s.s1[c] += gm * ((zv - r.mean[c]) * r.invStd[c])
                }
              } else {
                out[c] = acc
              }
              c += 1
            }
            sums?.pixelDone()
          }
        }
      }
      withOptionalBlockSums(channels: C, out: reduce?.sums, run)
    }
  }

  public static func depthwiseWeightGradient(dw: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                             x: UnsafePointer<Float>, _ g: DepthwiseGeometry, rows: Range<Int>,
                                             input: DepthwiseInputTransform?) {
    let (H, W, C, K, S) = (g.height, g.width, g.channels, g.kernel, g.stride)
    let (Ho, Wo, pt, pl) = (g.outHeight, g.outWidth, g.padTop, g.padLeft)
    forEachInputWindow(rows: rows, g, x: x, input: input) { n, oys, base, origin in
      for oy in oys {
        let row = n * Ho + oy
        var c0 = 0
        if K == 3 {
          // 3×3: the nine taps' sums for 16 channels stay in registers along the output row and are
          // added to dw once per row (instead of a load and a store of dw per tap and pixel).
          let window = TapRows3(first: oy * S - pt, g, base: base, origin: origin)
          let (r0, r1, r2, v0, v1, v2) = (window.r0, window.r1, window.r2, window.v0, window.v1, window.v2)
          // The output columns whose three input columns all lie inside the row, with all three rows
          // inside too, take the straight-line loop.
          let interior = window.all ? interiorColumns(width: W, outWidth: Wo, stride: S, padLeft: pl) : Wo..<Wo
          let (interiorStart, interiorEnd) = (interior.lowerBound, interior.upperBound)
          while c0 + 16 <= C {
            var a0 = SIMD16<Float>(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0
            var ox = 0
            while ox < Wo {
              if ox == interiorStart && interiorStart < interiorEnd {
                // The interior, straight-line through three row pointers that move S pixels per
                // output (the same nine products per pixel in the same order as the per-pixel
                // path; offsets per tap held in memory made it reload one per FMA).
                let first = (interiorStart * S - pl) * C + c0, step = S * C
                var q0 = r0 + first, q1 = r1 + first, q2 = r2 + first
                var gp = dy + (row * Wo + interiorStart) * C + c0
                for _ in interiorStart..<interiorEnd {
                  let gv = load16(gp)
                  a0 = a0.addingProduct(load16(q0), gv); a1 = a1.addingProduct(load16(q0 + C), gv)
                  a2 = a2.addingProduct(load16(q0 + 2 * C), gv); a3 = a3.addingProduct(load16(q1), gv)
                  a4 = a4.addingProduct(load16(q1 + C), gv); a5 = a5.addingProduct(load16(q1 + 2 * C), gv)
                  a6 = a6.addingProduct(load16(q2), gv); a7 = a7.addingProduct(load16(q2 + C), gv)
                  a8 = a8.addingProduct(load16(q2 + 2 * C), gv)
                  q0 += step; q1 += step; q2 += step; gp += C
                }
                ox = interiorEnd
                continue
              }
              let gv = load16(dy + (row * Wo + ox) * C + c0)
              let cols = TapColumns3(first: ox * S - pl, width: W, channels: C, from: c0)
              let (o0, o1, o2, u0, u1, u2) = (cols.o0, cols.o1, cols.o2, cols.u0, cols.u1, cols.u2)
              if v0 {
                if u0 { a0 = a0.addingProduct(load16(r0 + o0), gv) }
                if u1 { a1 = a1.addingProduct(load16(r0 + o1), gv) }
                if u2 { a2 = a2.addingProduct(load16(r0 + o2), gv) }
              }
              if v1 {
                if u0 { a3 = a3.addingProduct(load16(r1 + o0), gv) }
                if u1 { a4 = a4.addingProduct(load16(r1 + o1), gv) }
                if u2 { a5 = a5.addingProduct(load16(r1 + o2), gv) }
              }
              if v2 {
                if u0 { a6 = a6.addingProduct(load16(r2 + o0), gv) }
                if u1 { a7 = a7.addingProduct(load16(r2 + o1), gv) }
                if u2 { a8 = a8.addingProduct(load16(r2 + o2), gv) }
              }
              ox += 1
            }
            let pk = dw + c0
            store16(load16(pk) + a0, pk); store16(load16(pk + C) + a1, pk + C); store16(load16(pk + 2 * C) + a2, pk + 2 * C)
            store16(load16(pk + 3 * C) + a3, pk + 3 * C); store16(load16(pk + 4 * C) + a4, pk + 4 * C)
            store16(load16(pk + 5 * C) + a5, pk + 5 * C); store16(load16(pk + 6 * C) + a6, pk + 6 * C)
            store16(load16(pk + 7 * C) + a7, pk + 7 * C); store16(load16(pk + 8 * C) + a8, pk + 8 * C)
            c0 += 16
          }
        }
        guard c0 < C else { continue }
        for ox in 0..<Wo {
          let gp = dy + (row * Wo + ox) * C
          for ky in 0..<K {
            let iy = oy * S - pt + ky
            if iy < 0 || iy >= H { continue }
            for kx in 0..<K {
              let ix = ox * S - pl + kx
              if ix < 0 || ix >= W { continue }
              let xin = base + ((iy - origin) * W + ix) * C
              let pk = dw + (ky * K + kx) * C
              var c = c0
              while c + 16 <= C {
                store16(load16(pk + c).addingProduct(load16(xin + c), load16(gp + c)), pk + c)
                c += 16
              }
              while c + 8 <= C {
                store8(load8(pk + c).addingProduct(load8(xin + c), load8(gp + c)), pk + c)
                c += 8
              }
              while c < C {
                pk[c] += xin[c] * gp[c]
                c += 1
              }
            }
          }
        }
      }
    }
  }

  public static func channelStatistics(z: UnsafePointer<Float>, channels C: Int, rows: Range<Int>,
                                       _ stats: ChannelStatistics) {
    let shift = stats.shift
    withBlockSums(channels: C, out: stats.sums) { b in
      for r in rows {
        let row = z + r * C
        var c = 0
        while c + 16 <= C {
          let d = load16(row + c) - load16(shift + c)
          store16(load16(b.s0 + c) + d, b.s0 + c)
          store16(load16(b.s1 + c).addingProduct(d, d), b.s1 + c)
          c += 16
        }
        while c < C {
          let d = row[c] - shift[c]
          b.s0[c] += d
          b.s1[c] += d * d
          c += 1
        }
        b.pixelDone()
      }
    }
  }

  public static func batchNormApply(a: UnsafeMutablePointer<Float>, z: UnsafePointer<Float>,
                                    scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, channels C: Int,
                                    rows: Range<Int>, relu6: Bool, residual: UnsafePointer<Float>?) {
    inVectorGroups(channels: C, rows: rows, tiling: [scale, shift], groups: { p, L, t in
      var i = 0
      while i < L {
        var v = load16(z + p + i) * load16(t + i) + load16(t + L + i)
        if relu6 { v = v.replacing(with: 0, where: v .< 0).replacing(with: 6, where: v .> 6) }
        if let residual { v += load16(residual + p + i) }
        store16(v, a + p + i)
        i += 16
      }
    }, rest: { r in
      batchNormApplyRows(a: a, z: z, scale: scale, shift: shift, channels: C, rows: r, relu6: relu6, residual: residual)
    })
  }

  @inline(__always)
  private static func batchNormApplyRows(a: UnsafeMutablePointer<Float>, z: UnsafePointer<Float>,
                                         scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, channels C: Int,
                                         rows: Range<Int>, relu6: Bool, residual: UnsafePointer<Float>?) {
    for r in rows {
      let zi = z + r * C, ai = a + r * C
      var c = 0
      while c + 16 <= C {
        var v = load16(zi + c) * load16(scale + c) + load16(shift + c)
        // replacing(with:where:) compiles to blends; clamped(lowerBound:upperBound:) did not vectorise.
        if relu6 { v = v.replacing(with: 0, where: v .< 0).replacing(with: 6, where: v .> 6) }
        if let residual { v += load16(residual + r * C + c) }
        store16(v, ai + c)
        c += 16
      }
      while c < C {
        var v = zi[c] * scale[c] + shift[c]
        if relu6 { v = min(max(v, 0), 6) }
        if let residual { v += residual[r * C + c] }
        ai[c] = v
        c += 1
      }
    }
  }

  /// Channel block by channel block down the rows, the block's two sums in registers: row by row
  /// with the sums in memory, a narrow layer (16–32 channels) waited on each sum's store before the
  /// next row could add to it. Per lane the same float additions in the same order (rows in runs of
  /// `rowKernelBlockPixels` from the first, each run's sum then added to the doubles), so the same bits.
  public static func batchNormReduce(da: UnsafeMutablePointer<Float>, residual: UnsafePointer<Float>?, channels C: Int,
                                     rows: Range<Int>, _ red: BatchNormReduction) {
    let z = red.z, relu6 = red.relu6, out = red.sums
    /// Runs of rows (r0, r1) over which float sums are kept.
    @inline(__always) func forEachRun(_ body: (Int, Int) -> Void) {
      var r0 = rows.lowerBound
      while r0 < rows.upperBound {
        let r1 = min(r0 + rowKernelBlockPixels, rows.upperBound)
        body(r0, r1)
        r0 = r1
      }
    }
    // Written out for 16 and 8 lanes (and one), as the other row kernels are: a helper generic over
    // SIMD became per-lane loops (see depthwiseInputGradient).
    var c0 = 0
    // z's lines StreamAhead.distance floats ahead, as whole rows: the same channel block of a later row.
    let aheadRows = (StreamAhead.distance + C - 1) / C
    while c0 + 16 <= C {
      let sc = load16(red.scale + c0), sf = load16(red.shift + c0)
      let mu = load16(red.mean + c0), isd = load16(red.invStd + c0)
      forEachRun { r0, r1 in
        var t0 = SIMD16<Float>(), t1 = t0
        for r in r0..<r1 {
          let p = r * C + c0
          if aheadRows > 0 { prefetchLineIntoL1(z + p + aheadRows * C) }
          var g = load16(da + p)
          if let residual { g += load16(residual + p); store16(g, da + p) }
          let zv = load16(z + p)
          if relu6 { g = relu6Mask(g, zv * sc + sf) }
          let xhat = (zv - mu) * isd
          t0 += g
          t1 = t1.addingProduct(g, xhat)
        }
        addWidened(t0, to: out + c0)
        addWidened(t1, to: out + C + c0)
      }
      c0 += 16
    }
    while c0 + 8 <= C {
      let sc = load8(red.scale + c0), sf = load8(red.shift + c0)
      let mu = load8(red.mean + c0), isd = load8(red.invStd + c0)
      forEachRun { r0, r1 in
        var t0 = SIMD8<Float>(), t1 = t0
        for r in r0..<r1 {
          let p = r * C + c0
          var g = load8(da + p)
          if let residual { g += load8(residual + p); store8(g, da + p) }
          let zv = load8(z + p)
          if relu6 { g = relu6Mask(g, zv * sc + sf) }
          let xhat = (zv - mu) * isd
          t0 += g
          t1 += g * xhat  // not fused: the per-channel loop these channels took before did not fuse it
        }
        addWidened(t0, to: out + c0)
        addWidened(t1, to: out + C + c0)
      }
      c0 += 8
    }
    while c0 < C {
      let c = c0
      forEachRun { r0, r1 in
        var t0: Float = 0, t1: Float = 0
        for r in r0..<r1 {
          let p = r * C + c
          var g = da[p]
          if let residual { g += residual[p]; da[p] = g }
          let zv = z[p]
          if relu6 { g = relu6Mask(g, zv * red.scale[c] + red.shift[c]) }
          t0 += g
          t1 += g * ((zv - red.mean[c]) * red.invStd[c])
        }
        out[c] += Double(t0)
        out[C + c] += Double(t1)
      }
      c0 += 1
    }
  }

  public static func batchNormBackwardApply(dz: UnsafeMutablePointer<Float>, da: UnsafePointer<Float>,
                                            _ r: BatchNormReduction, k: UnsafePointer<Float>,
                                            meanG: UnsafePointer<Float>, meanGX: UnsafePointer<Float>,
                                            channels C: Int, rows: Range<Int>) {
    // Tiles, L floats each: k, meanG, meanGX, scale, shift, mean.
    let ahead = StreamAhead.distance
    inVectorGroups(channels: C, rows: rows, tiling: [k, meanG, meanGX, r.scale, r.shift, r.mean], groups: { p, L, t in
      var i = 0
      while i < L {
        if ahead > 0 { prefetchLineIntoL1(r.z + p + i + ahead); prefetchLineIntoL1(da + p + i + ahead) }
        let zv = load16(r.z + p + i)
        var gv = load16(da + p + i)
        if r.relu6 { gv = relu6Mask(gv, zv * load16(t + 3 * L + i) + load16(t + 4 * L + i)) }
        store16(load16(t + i) * (gv - load16(t + L + i) - (zv - load16(t + 5 * L + i)) * load16(t + 2 * L + i)),
                dz + p + i)
        i += 16
      }
    }, rest: { rest in
      batchNormBackwardApplyRows(dz: dz, da: da, r, k: k, meanG: meanG, meanGX: meanGX, channels: C, rows: rest)
    })
  }

  @inline(__always)
  private static func batchNormBackwardApplyRows(dz: UnsafeMutablePointer<Float>, da: UnsafePointer<Float>,
                                                 _ r: BatchNormReduction, k: UnsafePointer<Float>,
                                                 meanG: UnsafePointer<Float>, meanGX: UnsafePointer<Float>,
                                                 channels C: Int, rows: Range<Int>) {
    let ahead = StreamAhead.distance
    for row in rows {
      let p = row * C
      var c = 0
      while c + 16 <= C {
        if ahead > 0 { prefetchLineIntoL1(r.z + p + c + ahead); prefetchLineIntoL1(da + p + c + ahead) }
        let zv = load16(r.z + p + c)
        var g = load16(da + p + c)
        if r.relu6 { g = relu6Mask(g, zv * load16(r.scale + c) + load16(r.shift + c)) }
        store16(load16(k + c) * (g - load16(meanG + c) - (zv - load16(r.mean + c)) * load16(meanGX + c)), dz + p + c)
        c += 16
      }
      while c < C {
        let zv = r.z[p + c]
        let g = r.relu6 ? relu6Mask(da[p + c], zv * r.scale[c] + r.shift[c]) : da[p + c]
        dz[p + c] = k[c] * (g - meanG[c] - (zv - r.mean[c]) * meanGX[c])
        c += 1
      }
    }
  }
}

/// Round to nearest even bf16, kept as float32 (the same rounding as Kernels.roundToBF16; finite
/// values and the usual quiet NaN, which is all an activation can be here).
@inline(__always)
private func roundedToBF16(_ v: SIMD16<Float>) -> SIMD16<Float> {
  let b = unsafeBitCast(v, to: SIMD16<UInt32>.self)
  let r = (b &+ 0x7FFF &+ ((b &>> 16) & 1)) & 0xFFFF_0000
  return unsafeBitCast(r, to: SIMD16<Float>.self)
}

@inline(__always)
private func roundedToBF16(_ x: Float) -> Float {
  let b = x.bitPattern
  return Float(bitPattern: (b &+ 0x7FFF &+ ((b >> 16) & 1)) & 0xFFFF_0000)
}

// MARK: - GEMM

// Register-blocked fp32 GEMM row kernels for the skinny 1×1 convolutions of the early layers
// (Kernels/Pointwise.swift decides per shape whether they or cblas_sgemm run; see `useOwnGEMM`).
// They live in this file, not a second one: with any second source file in KernelsAVX2 (even an
// empty extension) the optimiser stopped inlining `withBlockSums` into depthwiseForward, and the
// call came back with garbage in the error register (r12 = 3 where a non-throwing call must leave
// 0), so the caller took its "closure threw" path, which ends in __stack_chk_fail: the model tests
// aborted with "stack smashing detected" although no stack was written out of bounds. A Swift
// 6.3 miscompile of withUnsafeTemporaryAllocation's typed rethrow through a non-inlined
// specialisation, found with gdb. The row kernels now take their scratch from `withScratch` (heap)
// instead, which survives a second file (checked with an empty extension file), but one file
// per module stays the rule.
//
// Shapes they are for: rows = N·H·W in the 10⁵–10⁶, K and N in 16…192. A row of A is K contiguous
// floats read in place (no packing: each element is broadcast once per tile), the small B is
// resident in L1/L2, C is written once, and the batch-norm statistics of C come from the registers.

#if KERNELS_AVX512
/// One zmm register.
typealias GemmVector = SIMD16<Float>
#else
/// One ymm register: SIMD16 would take two of AVX2's 16 registers per accumulator, and the 8-row
/// tile (8 accumulators + the B vector + the broadcast) would spill.
typealias GemmVector = SIMD8<Float>
#endif
private let lanes = GemmVector.scalarCount

@inline(__always) private func vload(_ p: UnsafePointer<Float>) -> GemmVector {
  UnsafeRawPointer(p).loadUnaligned(as: GemmVector.self)
}
@inline(__always) private func vstore(_ v: GemmVector, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: GemmVector.self)
}
#if KERNELS_AVX512
@inline(__always) private func vstore(_ v: GemmVector, _ p: UnsafeMutablePointer<Float>, stream: Bool) { store16(v, p, stream: stream) }
#else
@inline(__always) private func vstore(_ v: GemmVector, _ p: UnsafeMutablePointer<Float>, stream: Bool) { store8(v, p, stream: stream) }
#endif
/// The first `count` (< lanes) floats of v to p: the last column block of a row whose width is not
/// a multiple of the vector must not write into the next row.
/// (On AVX-512 a first half of 8 goes in one store: 8-channel layers are common in the 0.35 models.)
@inline(__always) private func storePartial(_ v: GemmVector, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
  var j = 0
  #if KERNELS_AVX512
  if count >= 8 {
    UnsafeMutableRawPointer(p).storeBytes(of: v.lowHalf, as: SIMD8<Float>.self)
    j = 8
  }
  #endif
  while j < count { p[j] = v[j]; j += 1 }
}
/// `count` floats from p, the other lanes 0 (loads that would run past the end of a buffer).
@inline(__always) private func loadPartial(_ p: UnsafePointer<Float>, _ count: Int) -> GemmVector {
  var v = GemmVector()
  var j = 0
  #if KERNELS_AVX512
  if count >= 8 {
    v.lowHalf = UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    j = 8
  }
  #endif
  while j < count { v[j] = p[j]; j += 1 }
  return v
}
@inline(__always) private func splat(_ x: Float) -> GemmVector { GemmVector(repeating: x) }

/// Pixels the direct stem weight gradient sums in float registers before adding into dw (as the
/// 1×1 weight gradient's reduction blocks).
private let convWeightGradientFoldPixels = 128

/// Rows of A per forward register tile: 8 independent accumulator chains hide the FMA latency
/// (4 cycles, 1 zmm or 2 ymm FMAs per cycle on Zen 4).
private let gemmTileRows = 8
/// Rows of the weight-gradient reduction per block: A and B blocks (≤ 128·192 floats each) stay
/// in L2 while every (K, N) register tile sweeps them.
private let gemmReductionBlockRows = 128
#if KERNELS_AVX512
/// Tiles two vectors wide where the columns allow: 16 accumulators, half the broadcasts per FMA.
/// AVX-512 has the 32 registers for it; AVX2's 16 would spill.
private let gemmPairTiles = true
#else
private let gemmPairTiles = false
#endif

/// The forward tile: acc[j][v] = Σ_i a[row j, i] · b[i, v-th vector] for 8 rows of a (stride k)
/// and 1 or 2 vectors of b (stride ldb), handed to `emit(vector, row offset, vector index)`.
/// `narrowSecond`: the second vector has at most 8 columns (24 = 16 + 8: the 1.0 models' 24-channel
/// project forwards), made in 8-lane vectors as in `productTile16Narrow` and emitted with a zero
/// upper half (AVX-512 only).
@inline(__always)
private func productTile8(_ a: UnsafePointer<Float>, k K: Int, _ b: UnsafePointer<Float>, ldb: Int, pair: Bool,
                          narrowSecond: Bool = false, _ emit: (GemmVector, Int, Int) -> Void) {
  let p0 = a, p1 = p0 + K, p2 = p1 + K, p3 = p2 + K, p4 = p3 + K, p5 = p4 + K, p6 = p5 + K, p7 = p6 + K
  var c0 = GemmVector(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0
  var bp = b
#if KERNELS_AVX512
  if pair && narrowSecond {
    typealias Half = SIMD8<Float>
    var d0 = Half(), d1 = d0, d2 = d0, d3 = d0, d4 = d0, d5 = d0, d6 = d0, d7 = d0
    for i in 0..<K {
      let bv = vload(bp), bw = UnsafeRawPointer(bp + lanes).loadUnaligned(as: Half.self)
      var x = p0[i]; c0 = c0.addingProduct(splat(x), bv); d0 = d0.addingProduct(Half(repeating: x), bw)
      x = p1[i]; c1 = c1.addingProduct(splat(x), bv); d1 = d1.addingProduct(Half(repeating: x), bw)
      x = p2[i]; c2 = c2.addingProduct(splat(x), bv); d2 = d2.addingProduct(Half(repeating: x), bw)
      x = p3[i]; c3 = c3.addingProduct(splat(x), bv); d3 = d3.addingProduct(Half(repeating: x), bw)
      x = p4[i]; c4 = c4.addingProduct(splat(x), bv); d4 = d4.addingProduct(Half(repeating: x), bw)
      x = p5[i]; c5 = c5.addingProduct(splat(x), bv); d5 = d5.addingProduct(Half(repeating: x), bw)
      x = p6[i]; c6 = c6.addingProduct(splat(x), bv); d6 = d6.addingProduct(Half(repeating: x), bw)
      x = p7[i]; c7 = c7.addingProduct(splat(x), bv); d7 = d7.addingProduct(Half(repeating: x), bw)
      bp += ldb
    }
    @inline(__always) func second(_ v: Half, _ j: Int) { emit(GemmVector(lowHalf: v, highHalf: Half()), j, 1) }
    second(d0, 0); second(d1, 1); second(d2, 2); second(d3, 3); second(d4, 4); second(d5, 5); second(d6, 6); second(d7, 7)
    emit(c0, 0, 0); emit(c1, 1, 0); emit(c2, 2, 0); emit(c3, 3, 0)
    emit(c4, 4, 0); emit(c5, 5, 0); emit(c6, 6, 0); emit(c7, 7, 0)
    return
  }
#endif
  if pair {
    var d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0, d6 = c0, d7 = c0
    for i in 0..<K {
      let bv = vload(bp), bw = vload(bp + lanes)
      var x = splat(p0[i]); c0 = c0.addingProduct(x, bv); d0 = d0.addingProduct(x, bw)
      x = splat(p1[i]); c1 = c1.addingProduct(x, bv); d1 = d1.addingProduct(x, bw)
      x = splat(p2[i]); c2 = c2.addingProduct(x, bv); d2 = d2.addingProduct(x, bw)
      x = splat(p3[i]); c3 = c3.addingProduct(x, bv); d3 = d3.addingProduct(x, bw)
      x = splat(p4[i]); c4 = c4.addingProduct(x, bv); d4 = d4.addingProduct(x, bw)
      x = splat(p5[i]); c5 = c5.addingProduct(x, bv); d5 = d5.addingProduct(x, bw)
      x = splat(p6[i]); c6 = c6.addingProduct(x, bv); d6 = d6.addingProduct(x, bw)
      x = splat(p7[i]); c7 = c7.addingProduct(x, bv); d7 = d7.addingProduct(x, bw)
      bp += ldb
    }
    emit(d0, 0, 1); emit(d1, 1, 1); emit(d2, 2, 1); emit(d3, 3, 1)
    emit(d4, 4, 1); emit(d5, 5, 1); emit(d6, 6, 1); emit(d7, 7, 1)
  } else {
    for i in 0..<K {
      let bv = vload(bp)
      c0 = c0.addingProduct(splat(p0[i]), bv)
      c1 = c1.addingProduct(splat(p1[i]), bv)
      c2 = c2.addingProduct(splat(p2[i]), bv)
      c3 = c3.addingProduct(splat(p3[i]), bv)
      c4 = c4.addingProduct(splat(p4[i]), bv)
      c5 = c5.addingProduct(splat(p5[i]), bv)
      c6 = c6.addingProduct(splat(p6[i]), bv)
      c7 = c7.addingProduct(splat(p7[i]), bv)
      bp += ldb
    }
  }
  emit(c0, 0, 0); emit(c1, 1, 0); emit(c2, 2, 0); emit(c3, 3, 0)
  emit(c4, 4, 0); emit(c5, 5, 0); emit(c6, 6, 0); emit(c7, 7, 0)
}

/// The forward tile of a single column vector (n ≤ lanes, e.g. the 16-channel outputs of the first
/// blocks and the input gradients into them): 16 rows, so 16 independent accumulator chains keep both
/// FMA pipes busy where 8 only just cover the FMA latency. AVX-512 only (AVX2's 16 registers would spill).
@inline(__always)
private func productTile16(_ a: UnsafePointer<Float>, k K: Int, _ b: UnsafePointer<Float>, ldb: Int,
                           _ emit: (GemmVector, Int, Int) -> Void) {
  let p0 = a, p1 = p0 + K, p2 = p1 + K, p3 = p2 + K, p4 = p3 + K, p5 = p4 + K, p6 = p5 + K, p7 = p6 + K
  let p8 = p7 + K, p9 = p8 + K, p10 = p9 + K, p11 = p10 + K, p12 = p11 + K, p13 = p12 + K, p14 = p13 + K, p15 = p14 + K
  var c0 = GemmVector(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0
  var c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0
  var bp = b
  for i in 0..<K {
    let bv = vload(bp)
    c0 = c0.addingProduct(splat(p0[i]), bv); c1 = c1.addingProduct(splat(p1[i]), bv)
    c2 = c2.addingProduct(splat(p2[i]), bv); c3 = c3.addingProduct(splat(p3[i]), bv)
    c4 = c4.addingProduct(splat(p4[i]), bv); c5 = c5.addingProduct(splat(p5[i]), bv)
    c6 = c6.addingProduct(splat(p6[i]), bv); c7 = c7.addingProduct(splat(p7[i]), bv)
    c8 = c8.addingProduct(splat(p8[i]), bv); c9 = c9.addingProduct(splat(p9[i]), bv)
    c10 = c10.addingProduct(splat(p10[i]), bv); c11 = c11.addingProduct(splat(p11[i]), bv)
    c12 = c12.addingProduct(splat(p12[i]), bv); c13 = c13.addingProduct(splat(p13[i]), bv)
    c14 = c14.addingProduct(splat(p14[i]), bv); c15 = c15.addingProduct(splat(p15[i]), bv)
    bp += ldb
  }
  emit(c0, 0, 0); emit(c1, 1, 0); emit(c2, 2, 0); emit(c3, 3, 0); emit(c4, 4, 0); emit(c5, 5, 0)
  emit(c6, 6, 0); emit(c7, 7, 0); emit(c8, 8, 0); emit(c9, 9, 0); emit(c10, 10, 0); emit(c11, 11, 0)
  emit(c12, 12, 0); emit(c13, 13, 0); emit(c14, 14, 0); emit(c15, 15, 0)
}

#if KERNELS_AVX512
/// The 16-row tile of at most 8 columns (the 8-channel layers of the 0.35 models: their project
/// forwards and the input gradients of the expands before them) in 8-lane vectors: a 16-lane FMA of
/// which half the lanes are empty takes the whole 512-bit FMA slot (one a cycle on Zen 4, whose
/// FMA pipes are 256 bits wide), two 8-lane FMAs take the same slot. Emitted as vectors whose upper
/// half is zero; each output is the same chain of FMAs over k in order as `productTile16`'s: the same
/// bits.
@inline(__always)
private func productTile16Narrow(_ a: UnsafePointer<Float>, k K: Int, _ b: UnsafePointer<Float>, ldb: Int,
                                 _ emit: (GemmVector, Int, Int) -> Void) {
  typealias Half = SIMD8<Float>
  let p0 = a, p1 = p0 + K, p2 = p1 + K, p3 = p2 + K, p4 = p3 + K, p5 = p4 + K, p6 = p5 + K, p7 = p6 + K
  let p8 = p7 + K, p9 = p8 + K, p10 = p9 + K, p11 = p10 + K, p12 = p11 + K, p13 = p12 + K, p14 = p13 + K, p15 = p14 + K
  var c0 = Half(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0
  var c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0
  var bp = b
  @inline(__always) func h(_ x: Float) -> Half { Half(repeating: x) }
  for i in 0..<K {
    let bv = UnsafeRawPointer(bp).loadUnaligned(as: Half.self)
    c0 = c0.addingProduct(h(p0[i]), bv); c1 = c1.addingProduct(h(p1[i]), bv)
    c2 = c2.addingProduct(h(p2[i]), bv); c3 = c3.addingProduct(h(p3[i]), bv)
    c4 = c4.addingProduct(h(p4[i]), bv); c5 = c5.addingProduct(h(p5[i]), bv)
    c6 = c6.addingProduct(h(p6[i]), bv); c7 = c7.addingProduct(h(p7[i]), bv)
    c8 = c8.addingProduct(h(p8[i]), bv); c9 = c9.addingProduct(h(p9[i]), bv)
    c10 = c10.addingProduct(h(p10[i]), bv); c11 = c11.addingProduct(h(p11[i]), bv)
    c12 = c12.addingProduct(h(p12[i]), bv); c13 = c13.addingProduct(h(p13[i]), bv)
    c14 = c14.addingProduct(h(p14[i]), bv); c15 = c15.addingProduct(h(p15[i]), bv)
    bp += ldb
  }
  @inline(__always) func out(_ v: Half, _ j: Int) { emit(GemmVector(lowHalf: v, highHalf: Half()), j, 0) }
  out(c0, 0); out(c1, 1); out(c2, 2); out(c3, 3); out(c4, 4); out(c5, 5); out(c6, 6); out(c7, 7)
  out(c8, 8); out(c9, 9); out(c10, 10); out(c11, 11); out(c12, 12); out(c13, 13); out(c14, 14); out(c15, 15)
}

/// c = a·b for 24 columns (the 24-channel input gradients of the 56² expand layers), eight rows at a
/// time as four pairs: a pair's 48 outputs are contiguous in c, three whole vectors (row r's 16, then
/// its last 8 with row r + 1's first 8, then row r + 1's last 16). Column by column vectors would be
/// two per row with the second half empty: a quarter of the FMAs wasted. The middle vector's
/// multiplier is row r's a in its first 8 lanes and row r + 1's in the rest, its b the matching halves
/// of b's row. Every output is the same chain of FMAs over k in order as `productTile8`'s: the same
/// bits. Returns the first row it left (the last 0–7 rows go to the column-vector tiles).
/// Only for rows of a in cache (`gemmOfCachedRows`): reading a from memory (`bench gemm`,
/// 100352x144x24 forward, 1 thread) they ran at 74–101 GFLOP/s against the column tiles' 131–145 (the
/// FMAs they save leave the loads of a less time to arrive); from L3 or L2 faster (2 threads: 25088
/// rows 397–407 vs 327–329, 6272 rows 449 vs 345–347).
@inline(__always)
private func gemmRowPairs24(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>, ldb: Int,
                            k K: Int, rows: Range<Int>, prefetch: UnsafeMutablePointer<PrefetchStreams>?) -> Int {
  let second = SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) .>= 8  // lanes 8…15
  var r = rows.lowerBound
  while r + 8 <= rows.upperBound {
    let p0 = a + r * K, p1 = p0 + K, p2 = p1 + K, p3 = p2 + K, p4 = p3 + K, p5 = p4 + K, p6 = p5 + K, p7 = p6 + K
    var c00 = SIMD16<Float>(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00
    var c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00
    var bp = b
    for i in 0..<K {
      let b0 = vload(bp), b2 = vload(bp + 8)
      let b1 = SIMD16<Float>(lowHalf: b2.highHalf, highHalf: b0.lowHalf)
      var x = splat(p0[i]), y = splat(p1[i])
      c00 = c00.addingProduct(x, b0); c01 = c01.addingProduct(x.replacing(with: y, where: second), b1); c02 = c02.addingProduct(y, b2)
      x = splat(p2[i]); y = splat(p3[i])
      c10 = c10.addingProduct(x, b0); c11 = c11.addingProduct(x.replacing(with: y, where: second), b1); c12 = c12.addingProduct(y, b2)
      x = splat(p4[i]); y = splat(p5[i])
      c20 = c20.addingProduct(x, b0); c21 = c21.addingProduct(x.replacing(with: y, where: second), b1); c22 = c22.addingProduct(y, b2)
      x = splat(p6[i]); y = splat(p7[i])
      c30 = c30.addingProduct(x, b0); c31 = c31.addingProduct(x.replacing(with: y, where: second), b1); c32 = c32.addingProduct(y, b2)
      bp += ldb
    }
    let out = c + r * 24
    vstore(c00, out); vstore(c01, out + 16); vstore(c02, out + 32)
    vstore(c10, out + 48); vstore(c11, out + 64); vstore(c12, out + 80)
    vstore(c20, out + 96); vstore(c21, out + 112); vstore(c22, out + 128)
    vstore(c30, out + 144); vstore(c31, out + 160); vstore(c32, out + 176)
    prefetch?.pointee.step(16 * K)  // the units of the column-vector tiles: 8 rows × 2 vectors × K
    r += 8
  }
  return r
}
#endif

/// One register tile of the product against the columns of `b` (b + col): 16 rows (`productTile16`)
/// or 8 (`productTile8`, one or two vectors) from row r where `tall`, else rows r..<end one at a time
/// on one accumulator (the block's last rows); each output vector handed to `emit(vector, row − r, v)`.
@inline(__always)
private func productTileRows(_ a: UnsafePointer<Float>, k K: Int, _ b: UnsafePointer<Float>, ldb: Int, from r: Int, to end: Int,
                             tileRows: Int, tall: Bool, pair: Bool, columns: Int, _ emit: (GemmVector, Int, Int) -> Void) {
#if KERNELS_AVX512
  if tall && tileRows == 16 && columns <= 8 {
    productTile16Narrow(a + r * K, k: K, b, ldb: ldb, emit)
    return
  }
#endif
  if tall && tileRows == 16 {
    productTile16(a + r * K, k: K, b, ldb: ldb, emit)
  } else if tall {
    productTile8(a + r * K, k: K, b, ldb: ldb, pair: pair, narrowSecond: columns <= lanes + 8, emit)
  } else {
    for row in r..<end {
      let p0 = a + row * K
      var c0 = GemmVector()
      var bp = b
      for i in 0..<K {
        c0 = c0.addingProduct(splat(p0[i]), vload(bp))
        bp += ldb
      }
      emit(c0, row - r, 0)
    }
  }
}

/// The register tiles of rows lo..<hi, row tile by row tile, all column blocks of a tile before the
/// next (two vectors wide where the columns allow, with `gemmPairTiles`): c is written in order, whole
/// rows at a time. `tile(r, col, pair, tall)`: `tall` where tileRows rows remain.
@inline(__always)
private func forEachTileInRowOrder(_ lo: Int, _ hi: Int, n N: Int, tileRows: Int,
                                   _ tile: (_ r: Int, _ col: Int, _ pair: Bool, _ tall: Bool) -> Void) {
  var r = lo
  while r < hi {
    let tall = r + tileRows <= hi
    var col = 0
    while col < N {
      let pair = gemmPairTiles && tall && col + lanes < N
      tile(r, col, pair, tall)
      col += pair ? 2 * lanes : lanes
    }
    r = tall ? r + tileRows : hi
  }
}

/// The weight-gradient tile: acc[j][v] = Σ_rows a[r, j] · b[r, v-th vector] for 8 columns of a
/// (a row stride k) and 1 or 2 vectors of b (row stride n), over `count` rows, added by `fold(vector, j, v)`.
/// `loadB(p, v)` reads a vector of b (whole, or lane by lane at the end of b).
@inline(__always)
private func reductionTile8(_ a: UnsafePointer<Float>, k K: Int, _ b: UnsafePointer<Float>, n N: Int, count: Int,
                            pair: Bool, prefetch: UnsafeMutablePointer<PrefetchStreams>?, _ loadB: (UnsafePointer<Float>, Int) -> GemmVector,
                            _ fold: (GemmVector, Int, Int) -> Void) {
  var c0 = GemmVector(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0
  var ap = a, bp = b
  if pair {
    var d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0, d6 = c0, d7 = c0
    for _ in 0..<count {
      let bv = loadB(bp, 0), bw = loadB(bp + lanes, 1)
      var x = splat(ap[0]); c0 = c0.addingProduct(x, bv); d0 = d0.addingProduct(x, bw)
      x = splat(ap[1]); c1 = c1.addingProduct(x, bv); d1 = d1.addingProduct(x, bw)
      x = splat(ap[2]); c2 = c2.addingProduct(x, bv); d2 = d2.addingProduct(x, bw)
      x = splat(ap[3]); c3 = c3.addingProduct(x, bv); d3 = d3.addingProduct(x, bw)
      x = splat(ap[4]); c4 = c4.addingProduct(x, bv); d4 = d4.addingProduct(x, bw)
      x = splat(ap[5]); c5 = c5.addingProduct(x, bv); d5 = d5.addingProduct(x, bw)
      x = splat(ap[6]); c6 = c6.addingProduct(x, bv); d6 = d6.addingProduct(x, bw)
      x = splat(ap[7]); c7 = c7.addingProduct(x, bv); d7 = d7.addingProduct(x, bw)
      prefetch?.pointee.step(16)
      ap += K; bp += N
    }
    fold(d0, 0, 1); fold(d1, 1, 1); fold(d2, 2, 1); fold(d3, 3, 1)
    fold(d4, 4, 1); fold(d5, 5, 1); fold(d6, 6, 1); fold(d7, 7, 1)
  } else {
    for _ in 0..<count {
      let bv = loadB(bp, 0)
      c0 = c0.addingProduct(splat(ap[0]), bv)
      c1 = c1.addingProduct(splat(ap[1]), bv)
      c2 = c2.addingProduct(splat(ap[2]), bv)
      c3 = c3.addingProduct(splat(ap[3]), bv)
      c4 = c4.addingProduct(splat(ap[4]), bv)
      c5 = c5.addingProduct(splat(ap[5]), bv)
      c6 = c6.addingProduct(splat(ap[6]), bv)
      c7 = c7.addingProduct(splat(ap[7]), bv)
      prefetch?.pointee.step(8)
      ap += K; bp += N
    }
  }
  fold(c0, 0, 0); fold(c1, 1, 0); fold(c2, 2, 0); fold(c3, 3, 0)
  fold(c4, 4, 0); fold(c5, 5, 0); fold(c6, 6, 0); fold(c7, 7, 0)
}

extension RowKernels {
  public static var gemmColumnPadding: Int { lanes }

  public static func gemm(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                          ldb: Int, k K: Int, n N: Int, rows: Range<Int>, stats: ChannelStatistics?,
                          prefetch: UnsafeMutablePointer<PrefetchStreams>?, stream: Bool) {
    gemmRows(c: c, a: a, input: nil, b: b, ldb: ldb, k: K, n: N, rows: rows, stats: stats, prefetch: prefetch, stream: stream)
  }

  public static func gemmOfCachedRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                                      ldb: Int, k K: Int, n N: Int, rows: Range<Int>,
                                      prefetch: UnsafeMutablePointer<PrefetchStreams>?) {
#if KERNELS_AVX512
    // The rows the row pairs leave, if any, to the column-vector tiles.
    let rest = N == 24 ? gemmRowPairs24(c: c, a: a, b: b, ldb: ldb, k: K, rows: rows, prefetch: prefetch)..<rows.upperBound : rows
    guard !rest.isEmpty else { return }
#else
    let rest = rows
#endif
    gemm(c: c, a: a, b: b, ldb: ldb, k: K, n: N, rows: rest, stats: nil, prefetch: prefetch, stream: false)
  }

  public static func gemmActivatedInput(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                                        shift: UnsafePointer<Float>, relu6: Bool, b: UnsafePointer<Float>, ldb: Int,
                                        k K: Int, n N: Int, rows: Range<Int>, stats: ChannelStatistics?,
                                        prefetch: UnsafeMutablePointer<PrefetchStreams>?, stream: Bool) {
    gemmRows(c: c, a: a, input: (scale, shift, relu6), b: b, ldb: ldb, k: K, n: N, rows: rows, stats: stats,
             prefetch: prefetch, stream: stream)
  }

  /// `gemm`, or with `input` `gemmActivatedInput` (A's rows activated tile by tile into `act`).
  @inline(__always)
  private static func gemmRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>,
                               input: (scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, relu6: Bool)?,
                               b: UnsafePointer<Float>, ldb: Int, k K: Int, n N: Int, rows: Range<Int>,
                               stats: ChannelStatistics?, prefetch: UnsafeMutablePointer<PrefetchStreams>?, stream: Bool) {
    let withStats = stats != nil
    defer { if stream { streamingFence() } }
    let tileRows = gemmPairTiles && N <= lanes ? 16 : gemmTileRows  // divides rowKernelBlockPixels
    // A b too large for L2 (the late layers' 960×320, 320×1280) is swept column panel by column
    // panel over the block's rows; streamed outputs keep whole rows in order (`GemmPanels`).
    let panelsOuter = !stream && K * ldb * MemoryLayout<Float>.stride >= GemmPanels.minimumBytes
    // Padded copies: the last column block reads the shift and its float sums in whole vectors.
    let shift = UnsafeMutablePointer<Float>.allocate(capacity: 3 * ldb), s0 = shift + ldb, s1 = s0 + ldb
    let sums = UnsafeMutablePointer<Double>.allocate(capacity: 2 * ldb)
    // The activated rows of A: a block's (column panels), or two register tiles' (row order, in L1):
    // each tile's rows are made one tile ahead, while the tile before runs, because a tile reading
    // rows it has just stored (64-byte stores, 4-byte broadcasts) measured no faster than the
    // separate pass it replaces.
    let tileFloats = tileRows * K
    let act = input == nil ? nil : UnsafeMutablePointer<Float>.allocate(capacity: max(rowKernelBlockPixels, 2 * tileRows) * K)
    defer { shift.deallocate(); sums.deallocate(); act?.deallocate() }
    /// Rows lo..<hi of act(A) into `into`, returned as a base addressed by absolute row.
    @inline(__always) func activate(_ lo: Int, _ hi: Int, into: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
      guard let input else { return a }
      let base = into - lo * K
      batchNormApplyRows(a: base, z: a, scale: input.scale, shift: input.shift, channels: K, rows: lo..<hi,
                         relu6: input.relu6, residual: nil)
      return UnsafePointer(base)
    }
    var current = 0, ahead = -1  // the tile slot read now; the first row of the tile made ahead (or −1)
    /// A addressed by absolute row for the row-order tile at r: its rows activated (ahead, normally),
    /// and the next tile's made into the other slot.
    @inline(__always) func tileRowsOfA(_ r: Int) -> UnsafePointer<Float> {
      guard let act else { return a }
      let end = rows.upperBound
      if r == ahead { current ^= 1 } else { _ = activate(r, min(r + tileRows, end), into: act + current * tileFloats) }
      let next = min(r + tileRows, end)
      ahead = next < end ? next : -1
      if next < end { _ = activate(next, min(next + tileRows, end), into: act + (current ^ 1) * tileFloats) }
      // The z rows of the tile after that into L1 during this tile's FMAs: read in a burst by
      // `activate`, rows arriving from L2 or L3 would stall it.
      let far = min(next + tileRows, end), farEnd = min(far + tileRows, end)
      if far < farEnd {
        let lo = UnsafeRawPointer(a + far * K), hi = UnsafeRawPointer(a + farEnd * K)
        var p = lo
        while p < hi { prefetchLineIntoL1(p); p += prefetchLine }
      }
      return UnsafePointer(act + current * tileFloats - r * K)
    }
    do {
      do {
        if let stats {
          shift.update(from: stats.shift, count: N)
          (shift + N).update(repeating: 0, count: ldb - N)
          sums.update(repeating: 0, count: 2 * ldb)
        }
        var r0 = rows.lowerBound
        while r0 < rows.upperBound {
          // Blocks of rowKernelBlockPixels rows: float sums per block, folded into doubles after it.
          let r1 = min(r0 + rowKernelBlockPixels, rows.upperBound)
          if withStats { s0.update(repeating: 0, count: 2 * ldb) }
          /// One register tile: rows r..< (r + tileRows, or r1 where not `tall`), columns col..< (one
          /// vector, or two with `pair`), stored and added into the block's float sums.
          @inline(__always) func tile(_ a: UnsafePointer<Float>, _ r: Int, _ col: Int, pair: Bool, tall: Bool) {
            let width = min(lanes, N - col), width1 = pair ? min(lanes, N - col - lanes) : 0
            let sh0 = withStats ? vload(shift + col) : GemmVector()
            let sh1 = withStats && pair ? vload(shift + col + lanes) : GemmVector()
            var t0 = GemmVector(), t1 = GemmVector(), u0 = GemmVector(), u1 = GemmVector()
            /// Stores vector v of row r + j; its statistics into t (first vector) or u (second).
            @inline(__always) func emit(_ value: GemmVector, _ j: Int, _ v: Int) {
              let p = c + (r + j) * N + col + v * lanes
              let w = v == 0 ? width : width1
              if w == lanes { vstore(value, p, stream: stream) } else { storePartial(value, p, w) }
              prefetch?.pointee.step(K)
              if withStats {
                if v == 0 {
                  let d = value - sh0
                  t0 += d
                  t1 = t1.addingProduct(d, d)
                } else {
                  let d = value - sh1
                  u0 += d
                  u1 = u1.addingProduct(d, d)
                }
              }
            }
            productTileRows(a, k: K, b + col, ldb: ldb, from: r, to: r1, tileRows: tileRows, tall: tall, pair: pair,
                            columns: N - col, emit)
            if withStats {
              vstore(vload(s0 + col) + t0, s0 + col)
              vstore(vload(s1 + col) + t1, s1 + col)
              if pair {
                vstore(vload(s0 + col + lanes) + u0, s0 + col + lanes)
                vstore(vload(s1 + col + lanes) + u1, s1 + col + lanes)
              }
            }
          }
          // A pair's second vector may be partial (24 channels: 16 + 8): b is packed with zero
          // columns to ldb, so its loads stay inside b, and only the stores are partial.
          if panelsOuter {
            // Column panel by column panel: the panel's rows of b stay in L2 across the block's tiles.
            let a = act.map { activate(r0, r1, into: $0) } ?? a
            var col = 0
            while col < N {
              let wide = gemmPairTiles && col + lanes < N
              var r = r0
              while r < r1 {
                let tall = r + tileRows <= r1
                if tall {
                  tile(a, r, col, pair: wide, tall: true)
                } else {
                  tile(a, r, col, pair: false, tall: false)
                  if wide { tile(a, r, col + lanes, pair: false, tall: false) }
                }
                r = tall ? r + tileRows : r1
              }
              col += wide ? 2 * lanes : lanes
            }
          } else {
            var aTile = a
            forEachTileInRowOrder(r0, r1, n: N, tileRows: tileRows) { r, col, pair, tall in
              if col == 0 { aTile = tileRowsOfA(r) }
              tile(aTile, r, col, pair: pair, tall: tall)
            }
          }
          if withStats {
            for j in 0..<N {
              sums[j] += Double(s0[j])
              sums[ldb + j] += Double(s1[j])
            }
          }
          r0 = r1
        }
        if let stats {
          for j in 0..<N {
            stats.sums[j] += sums[j]
            stats.sums[N + j] += sums[ldb + j]
          }
        }
      }
    }
  }

  public static func gemmActivated(c: UnsafeMutablePointer<Float>, raw: UnsafeMutablePointer<Float>?, a: UnsafePointer<Float>,
                                   b: UnsafePointer<Float>, ldb: Int, k K: Int, n N: Int, rows: Range<Int>,
                                   scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, relu6: Bool, stream: Bool) {
    precondition(N % 16 == 0, "gemmActivated takes whole vectors of columns")
    defer { if raw != nil && stream { streamingFence() } }
    let tileRows = gemmPairTiles && N <= lanes ? 16 : gemmTileRows
    let end = rows.upperBound
    /// One register tile (as in `gemm`): rows r..< (r + tileRows, or end where not `tall`), columns
    /// col..< (one vector, or two with `pair`).
    @inline(__always) func tile(_ r: Int, _ col: Int, pair: Bool, tall: Bool) {
      @inline(__always) func emit(_ value: GemmVector, _ j: Int, _ v: Int) {
        let offset = (r + j) * N + col + v * lanes
        if let raw { vstore(value, raw + offset, stream: stream) }
        vstore(value, c + offset)
      }
      productTileRows(a, k: K, b + col, ldb: ldb, from: r, to: end, tileRows: tileRows, tall: tall, pair: pair,
                      columns: N - col, emit)
      // The tile's outputs, still in L1, activated in place by the expression of batchNormApply (and
      // of the depthwise's input transform): the same bits. (In the emit above, the activation kept the
      // compiler from inlining it: a call per vector.)
      let width = pair ? 2 * lanes : lanes
      for row in r..<min(end, r + tileRows) {
        var v = 0
        while v < width {
          let p = c + row * N + col + v
          var act = vload(p) * vload(scale + col + v) + vload(shift + col + v)
          if relu6 { act = act.replacing(with: 0, where: act .< 0).replacing(with: 6, where: act .> 6) }
          vstore(act, p)
          v += lanes
        }
      }
    }
    forEachTileInRowOrder(rows.lowerBound, end, n: N, tileRows: tileRows) { tile($0, $1, pair: $2, tall: $3) }
  }

  public static func gemmTransposedA(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                                     k K: Int, n N: Int, rows: Range<Int>, prefetch: UnsafeMutablePointer<PrefetchStreams>?) {
    let end = rows.upperBound * N  // b's floats this call may read
    var r0 = rows.lowerBound
    while r0 < rows.upperBound {
      let r1 = min(r0 + gemmReductionBlockRows, rows.upperBound)
      var col = 0
      while col < N {
        // A pair's second vector may be partial (24 channels: 16 + 8); its lanes past the row hold
        // the next row's values, which go only into accumulator lanes that are never folded.
        let pair = gemmPairTiles && col + lanes < N
        let width = min(lanes, N - col), width1 = pair ? min(lanes, N - col - lanes) : 0
        @inline(__always) func widthOf(_ u: Int) -> Int { u == 0 ? width : width1 }
        // A whole-vector load of b's row r at col (and col + lanes in a pair) reads up to
        // r·N + col + vectors·lanes − 1: past the row only where the last vector is partial, and past
        // the end of b only for the last row or two there, from `safe` on, which are read lane by lane.
        let vectors = pair ? 2 : 1
        let limit = end - col - vectors * lanes
        let safe = widthOf(vectors - 1) == lanes ? r1 : limit < 0 ? r0 : max(r0, min(r1, limit / N + 1))
        @inline(__always) func fold(_ v: GemmVector, _ i: Int, _ u: Int) {
          let p = c + i * N + col + u * lanes, w = widthOf(u)
          if w == lanes { vstore(vload(p) + v, p) } else { storePartial(loadPartial(p, w) + v, p, w) }
        }
        @inline(__always) func whole(_ p: UnsafePointer<Float>, _ u: Int) -> GemmVector { vload(p) }
        @inline(__always) func partial(_ p: UnsafePointer<Float>, _ u: Int) -> GemmVector { loadPartial(p, widthOf(u)) }
        var i = 0
        while i + 8 <= K {
          @inline(__always) func foldAt(_ v: GemmVector, _ j: Int, _ u: Int) { fold(v, i + j, u) }
          reductionTile8(a + r0 * K + i, k: K, b + r0 * N + col, n: N, count: safe - r0, pair: pair, prefetch: prefetch, whole, foldAt)
          if safe < r1 {
            reductionTile8(a + safe * K + i, k: K, b + safe * N + col, n: N, count: r1 - safe, pair: pair, prefetch: prefetch, partial, foldAt)
          }
          i += 8
        }
        while i < K {
          for u in 0..<vectors {
            var c0 = GemmVector()
            for r in r0..<r1 {
              let p = b + r * N + col + u * lanes
              c0 = c0.addingProduct(splat(a[r * K + i]), r < safe ? vload(p) : loadPartial(p, widthOf(u)))
            }
            fold(c0, i, u)
            prefetch?.pointee.step(r1 - r0)  // the columns past the last 8-column tile count too
          }
          i += 1
        }
        col += pair ? 2 * lanes : lanes
      }
      r0 = r1
    }
  }
}
