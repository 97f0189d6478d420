// Depthwise K×K convolution (MobileNetV2: 3×3, stride 1 or 2), NHWC, TF `SAME` padding, no bias.
// Weights are TF's [K, K, C, 1] layout, i.e. [K·K][C] in memory.
//
// Fast path: per output pixel, blocks of 16 (then 8, then 1) channels are accumulated in registers
// over all valid taps and stored once; output rows are split across threads. The input gradient is
// computed as a gather (each input pixel sums the taps that read it), so threads never write the
// same memory; the weight gradient uses per-thread partials reduced at the end.

public struct DepthwiseShape: Equatable, SamePaddedShape {
  public var batch, height, width, channels, kernel, stride: Int
  public init(batch: Int, height: Int, width: Int, channels: Int, kernel: Int = 3, stride: Int) {
    self.batch = batch; self.height = height; self.width = width
    self.channels = channels; self.kernel = kernel; self.stride = stride
  }
  public var inputCount: Int { batch * height * width * channels }
  public var outputCount: Int { batch * outHeight * outWidth * channels }
  public var weightCount: Int { kernel * kernel * channels }
}

/// out[c] = Σ_taps a[tap][c] · b[tap][c] over `tapCount` (aOffset, bOffset) pairs, channels vectorised.
@inline(__always)
private func multiplyAccumulateTaps(out: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>,
                                    b: UnsafePointer<Float>, taps: UnsafePointer<Int>, tapCount: Int, channels C: Int) {
  var c = 0
  while c + 16 <= C {
    var acc = SIMD16<Float>()
    for t in 0..<tapCount { acc += load16(a + taps[2 * t] + c) * load16(b + taps[2 * t + 1] + c) }
    store16(acc, out + c)
    c += 16
  }
  while c + 8 <= C {
    var acc = SIMD8<Float>()
    for t in 0..<tapCount { acc += load8(a + taps[2 * t] + c) * load8(b + taps[2 * t + 1] + c) }
    store8(acc, out + c)
    c += 8
  }
  while c < C {
    var acc: Float = 0
    for t in 0..<tapCount { acc += a[taps[2 * t] + c] * b[taps[2 * t + 1] + c] }
    out[c] = acc
    c += 1
  }
}

/// y[N,Ho,Wo,C] = depthwise(x[N,H,W,C], w[K,K,C]).
public func depthwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             _ s: DepthwiseShape) {
  let (H, W, C, K) = (s.height, s.width, s.channels, s.kernel)
  let (Ho, Wo, window) = (s.outHeight, s.outWidth, s.window)
  parallelChunks(s.batch * Ho) { _, rows in
    withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * K * K) { tapBuf in
      let taps = tapBuf.baseAddress!
      for row in rows {
        let n = row / Ho, oy = row % Ho
        for ox in 0..<Wo {
          var count = 0
          window.forEachTap(oy: oy, ox: ox) { tap, iy, ix in
            taps[2 * count] = ((n * H + iy) * W + ix) * C
            taps[2 * count + 1] = tap * C
            count += 1
          }
          multiplyAccumulateTaps(out: y + ((n * Ho + oy) * Wo + ox) * C, a: x, b: w,
                                 taps: taps, tapCount: count, channels: C)
        }
      }
    }
  }
}

/// dw[K,K,C] += Σ x·dy; dx (if given) = depthwiseᵀ(dy) (overwritten).
public func depthwiseBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                              dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              _ s: DepthwiseShape, scratch: Scratch) {
  let (H, W, C, K, S) = (s.height, s.width, s.channels, s.kernel, s.stride)
  let (Ho, Wo, pt, pl, window) = (s.outHeight, s.outWidth, s.padTop, s.padLeft, s.window)
  if let dx {
    // Gather: input pixel (iy, ix) is read by output (oy, ox) through tap (ky, kx) when
    // oy·S − pt + ky = iy, i.e. oy = (iy + pt − ky) / S exactly.
    parallelChunks(s.batch * H) { _, rows in
      withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * K * K) { tapBuf in
        let taps = tapBuf.baseAddress!
        for row in rows {
          let n = row / H, iy = row % H
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
            multiplyAccumulateTaps(out: dx + ((n * H + iy) * W + ix) * C, a: dy, b: w,
                                   taps: taps, tapCount: count, channels: C)
          }
        }
      }
    }
  }
  let wc = s.weightCount
  let rowsTotal = s.batch * Ho
  let partial = scratch.zeroed(chunkCount(rowsTotal) * wc)
  let used = parallelChunks(rowsTotal) { chunk, rows in
    let p = partial + chunk * wc
    for row in rows {
      let n = row / Ho, oy = row % Ho
      for ox in 0..<Wo {
        let g = dy + ((n * Ho + oy) * Wo + ox) * C
        window.forEachTap(oy: oy, ox: ox) { tap, iy, ix in
          let xin = x + ((n * H + iy) * W + ix) * C
          let pk = p + tap * C
          var c = 0
          while c + 16 <= C {
            store16(load16(pk + c) + load16(xin + c) * load16(g + c), pk + c)
            c += 16
          }
          while c < C {
            pk[c] += xin[c] * g[c]
            c += 1
          }
        }
      }
    }
  }
  for ch in 0..<used {
    let p = partial + ch * wc
    for i in 0..<wc { dw[i] += p[i] }
  }
}

// MARK: - Naive reference

public func depthwiseForwardNaive(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                  _ s: DepthwiseShape) {
  let (H, W, C, K, S) = (s.height, s.width, s.channels, s.kernel, s.stride)
  for n in 0..<s.batch { for oy in 0..<s.outHeight { for ox in 0..<s.outWidth { for c in 0..<C {
    var acc = 0.0
    for ky in 0..<K { for kx in 0..<K {
      let iy = oy * S - s.padTop + ky, ix = ox * S - s.padLeft + kx
      if iy < 0 || iy >= H || ix < 0 || ix >= W { continue }
      acc += Double(x[((n * H + iy) * W + ix) * C + c]) * Double(w[(ky * K + kx) * C + c])
    } }
    y[((n * s.outHeight + oy) * s.outWidth + ox) * C + c] = Float(acc)
  } } } }
}

public func depthwiseBackwardNaive(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                                   dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                   _ s: DepthwiseShape) {
  let (H, W, C, K, S) = (s.height, s.width, s.channels, s.kernel, s.stride)
  dx?.update(repeating: 0, count: s.inputCount)
  for n in 0..<s.batch { for oy in 0..<s.outHeight { for ox in 0..<s.outWidth { for c in 0..<C {
    let g = dy[((n * s.outHeight + oy) * s.outWidth + ox) * C + c]
    for ky in 0..<K { for kx in 0..<K {
      let iy = oy * S - s.padTop + ky, ix = ox * S - s.padLeft + kx
      if iy < 0 || iy >= H || ix < 0 || ix >= W { continue }
      let xi = ((n * H + iy) * W + ix) * C + c, wi = (ky * K + kx) * C + c
      dw[wi] += x[xi] * g
      dx?[xi] += w[wi] * g
    } }
  } } } }
}
