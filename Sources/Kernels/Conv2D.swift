// Regular K×K convolution, NHWC, TF `SAME` padding, no bias. MobileNetV2 uses it once: the
// 3×3 stride-2 stem (3 → 32 channels). Weights are TF's HWIO layout [K, K, Cin, Cout].
//
// Fast paths: a direct forward with SIMD16 register accumulators when the output channels are a
// multiple of 16, else im2col + GEMM; the training backward (weight gradient only) reads the 3×3×3
// windows in place into register accumulators (`convWeightGradientDirect9`), other shapes take
// im2col + GEMM block by block. The naive path is the textbook loop nest used as the test reference.
import CBLAS
import KernelRows

/// Shape of a convolution: batch, input size, channels, kernel and stride.
public struct ConvShape: Equatable, SamePaddedShape {
  public var batch, height, width, inChannels, outChannels, kernel, stride: Int
  public init(batch: Int, height: Int, width: Int, inChannels: Int, outChannels: Int, kernel: Int, stride: Int) {
    self.batch = batch; self.height = height; self.width = width
    self.inChannels = inChannels; self.outChannels = outChannels
    self.kernel = kernel; self.stride = stride
  }
  public var inputCount: Int { batch * height * width * inChannels }
  public var outputCount: Int { batch * outHeight * outWidth * outChannels }
  public var weightCount: Int { kernel * kernel * inChannels * outChannels }
}

/// y[N,Ho,Wo,Co] = conv(x[N,H,W,Ci], w[K,K,Ci,Co]): direct (below) when Co is a multiple of 16,
/// else im2col then one GEMM, patches[N·Ho·Wo, K·K·Ci] · w[K·K·Ci, Co], the patches in `scratch`.
public func conv2dForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                          _ s: ConvShape, scratch: Scratch) {
  if s.outChannels % 16 == 0 { return conv2dForwardDirect16(y: y, x: x, w: w, s) }
  let rows = s.batch * s.outHeight * s.outWidth, depth = s.kernel * s.kernel * s.inChannels
  guard rows > 0 else { return }
  let patches = scratch.uninitialized(rows * depth)
  im2col(patches, x, s)
  gemmRows(c: y, a: patches, b: w, rows: rows, k: depth, n: s.outChannels, transposeB: false)
}

/// The same, with the batch-norm statistics of y (see `pointwiseForward(statisticsShift:)`): on the
/// direct path the kernel adds each output vector to them from its registers; the GEMM path makes
/// them in a separate pass.
public func conv2dForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                          _ s: ConvShape, statisticsShift shift: UnsafeMutablePointer<Float>,
                          sums: UnsafeMutablePointer<Double>, scratch: Scratch) {
  let Co = s.outChannels, rows = s.batch * s.outHeight * s.outWidth
  guard s.outChannels % 16 == 0, rows > 0 else {
    conv2dForward(y: y, x: x, w: w, s, scratch: scratch)
    return batchNormStatistics(z: y, rows: rows, channels: Co, shift: shift, sums: sums, scratch: scratch)
  }
  // Output pixel (0, 0, 0), computed directly, as the shift.
  shift.update(repeating: 0, count: Co)
  s.window.forEachTap(oy: 0, ox: 0) { tap, iy, ix in
    let xin = x + (iy * s.width + ix) * s.inChannels
    for ci in 0..<s.inChannels { for co in 0..<Co { shift[co] += xin[ci] * w[(tap * s.inChannels + ci) * Co + co] } }
  }
  let stats = ChannelStatistics(shift: UnsafePointer(shift), sums: sums)
  let kernels = KernelISA.rows, g = s.geometry
  // Not streamed, although the statistics come from the kernel's registers: with the 51 MB 1.0/224
  // b32 output streamed, the step was 3 % slower (medians of five alternating profiles), the stem
  // forward itself 0.4 ms faster.
  parallelChannelSums(rows: s.batch * s.outHeight, channels: Co, minPerChunk: 1, split: .balanced, scratch: scratch,
                      into: sums) { _, r, partial in
    kernels.convForwardDirect16(y: y, x: x, w: w, g, rows: r, stats: stats.with(sums: partial), stream: false,
                                prefetch: NextBlockPrefetch.enabled)
  }
}

/// The stems of mobilenet_v2_035/_050 (16), _100 (32) and _140 (48) output channels (_075 has 24 and
/// _130 40, which take the GEMM path): register accumulators per 16 output channels across all
/// K·K·Ci taps, so each tap is one broadcast FMA and the output is written once (3× faster than
/// im2col + GEMM on the 0.35/96 stem, which is bound by writing and reading the patch matrix). The
/// loops are `RowKernelSet.convForwardDirect16`, in the CPU's instruction set.
func conv2dForwardDirect16(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                           _ s: ConvShape) {
  let stream = StreamingStores.use(y, count: s.outputCount, channels: s.outChannels)
  let kernels = KernelISA.rows, g = s.geometry
  parallelChunks(s.batch * s.outHeight, split: .balanced) { _, rows in
    kernels.convForwardDirect16(y: y, x: x, w: w, g, rows: rows, stats: nil, stream: stream,
                                prefetch: NextBlockPrefetch.enabled)
  }
}

extension ConvShape {
  var geometry: ConvGeometry {
    ConvGeometry(height: height, width: width, inChannels: inChannels, outChannels: outChannels, kernel: kernel,
                 stride: stride, outHeight: outHeight, outWidth: outWidth, padTop: padTop, padLeft: padLeft)
  }
}

/// dw[K,K,Ci,Co] += patchesᵀ · dy; dx (if given) = col2im(dy · wᵀ) (overwritten). The patches are
/// rebuilt from x (one cheap pass) rather than kept from the forward pass. (A direct SIMD16 weight
/// gradient, like the forward, measured no faster: 9.1 vs 9.5 ms on the 0.35/96 stem.)
public func conv2dBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                           dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                           _ s: ConvShape, scratch: Scratch) {
  let rows = s.batch * s.outHeight * s.outWidth, depth = s.kernel * s.kernel * s.inChannels
  guard rows > 0 else {
    dx?.update(repeating: 0, count: s.inputCount)
    return
  }
  let region = scratch.uninitialized(rows * depth + gemmPartialsCount(rows: rows, m: depth, n: s.outChannels))
  let patches = region
  im2col(patches, x, s)
  gemmTransposedRows(c: dw, a: patches, b: dy, rows: rows, m: depth, n: s.outChannels, partials: region + rows * depth)
  guard let dx else { return }
  let dPatches = patches  // the patches are consumed
  gemmRows(c: dPatches, a: dy, b: w, rows: rows, k: s.outChannels, n: depth, transposeB: true, mayStream: false)  // col2im reads it next
  col2im(dx, dPatches, s)
}

/// dw[K,K,Ci,Co] += patchesᵀ · dz with neither stored: each thread takes blocks of output pixels
/// (`backwardBlockRows`, as the 1×1 backward: ~128 KiB of patch and dz rows), remakes the block's
/// patches from x and, with `outputGradient`, its dz from the layer's pending BN backward into
/// per-thread buffers, and adds the block's product into its dw partial while both are in cache. The
/// stem's backward (its input gradient is never needed): the separate BN-backward pass over dA and
/// the whole patch matrix (rows·K·K·Ci floats, written and read back) are gone. Our GEMM gets patch
/// rows padded with zero columns to a multiple of its 8-column register tile (the stem's 27 would
/// leave 3 columns to its one-accumulator remainder loop, which cost more than the 24 in tiles); each
/// thread's partial is then [padded depth, Co] and only its first K·K·Ci rows are added into dw.
/// 3×3 windows over 3 channels (every MobileNetV2 stem) skip the patch rows: the row kernel sums each
/// kernel row's nine (kx, ci) gradients in registers over the block's pixels, broadcasting the window
/// straight from x (27 FMAs a pixel against the padded GEMM's 32 and the patch rows' stores and loads;
/// 0.35/96 b64 on Zen 4: the stem's backward −0.13 and −0.17 ms of 1.8–2.0 in alternating steps).
public func conv2dWeightGradient(dw: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                 outputGradient: PendingBatchNormBackward?, x: UnsafePointer<Float>,
                                 _ s: ConvShape, scratch: Scratch) {
  let rows = s.batch * s.outHeight * s.outWidth, depth = s.kernel * s.kernel * s.inChannels, co = s.outChannels
  guard rows > 0 else { return }
  let kernels = KernelISA.rows
  let own = useOwnGEMM(.weightGradient, rows: rows, k: depth, n: co)
  let padded = own ? (depth + gemmReductionTile - 1) / gemmReductionTile * gemmReductionTile : depth
  // 3×3 windows over 3 channels (every stem): register accumulators over the windows read in place
  // (`convWeightGradientDirect9`), no patch rows.
  let direct = own && s.kernel * s.inChannels == 9 && co % gemmLanes == 0
  _ = Compute.blasSingleThreaded
  let blockRows = min(rows, backwardBlockRows(inChannels: padded, outChannels: co, own: own))
  let chunks = chunkCount(rows, minPerChunk: gemmMinRowsPerThread, split: .balanced, grain: blockRows)
  // One scratch region: per chunk a [padded, co] partial, then per thread a patch block (none when
  // direct) and a dz block.
  let partialFloats = padded * co, dzFloats = outputGradient == nil ? 0 : blockRows * co
  let patchFloats = direct ? 0 : blockRows * padded
  let perThread = patchFloats + dzFloats
  let geometry = s.geometry
  let region = scratch.uninitialized(chunks * partialFloats + Compute.threads * perThread)
  let used = parallelChunks(rows, minPerChunk: gemmMinRowsPerThread, split: .balanced, grain: blockRows) { chunk, r in
    let partial = region + chunk * partialFloats
    let patchBuffer = region + chunks * partialFloats + Compute.slot * perThread, dzBuffer = patchBuffer + patchFloats
    partial.update(repeating: 0, count: partialFloats)
    forEachBlock(r, blockRows: blockRows) { b in
      let lo = b.lowerBound
      let g = outputGradient?.block(rows: b, into: dzBuffer) ?? dy
      if direct {
        kernels.convWeightGradientDirect9(dw: partial, dy: g, x: x, geometry, pixels: b)
        return
      }
      let patches = patchBuffer - lo * padded
      im2col(patches, x, s, pixels: b, rowStride: padded)
      if own {
        // The next block's dy (and z) rows, and the input rows its patches read, arrive while this
        // block's product runs (see PrefetchStreams).
        let next = nextBlock(after: b, blockRows: blockRows, in: r)
        withPrefetch(next.isEmpty ? nil : rowBytes(outputGradient?.da ?? dy, next, co),
                     outputGradient.map { rowBytes($0.reduction.z, next, co) }, next.isEmpty ? nil : inputRows(of: next, s, x),
                     units: gemmFMAs(rows: b.count, k: padded, n: co)) { streams in
          kernels.gemmTransposedA(c: partial, a: patches, b: g, k: padded, n: co, rows: b, prefetch: streams)
        }
      } else {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(depth), Int32(co), Int32(b.count),
                    1, patches + lo * padded, Int32(padded), g + lo * co, Int32(co), 1, partial, Int32(co))
      }
    }
  }
  // The partials in chunk order, the padding rows (all zero) left out.
  for chunk in 0..<used {
    let partial = region + chunk * partialFloats
    for i in 0..<(depth * co) { dw[i] += partial[i] }
  }
}

/// The bytes of x the windows of output pixels `pixels` read: from the first one's top input row to
/// the last one's bottom row (images are consecutive, so a range across two of them is contiguous).
func inputRows(of pixels: Range<Int>, _ s: ConvShape, _ x: UnsafePointer<Float>) -> (UnsafeRawPointer, Int) {
  let (Ho, Wo, H) = (s.outHeight, s.outWidth, s.height)
  let first = pixels.lowerBound / Wo, last = (pixels.upperBound - 1) / Wo
  let top = (first / Ho) * H + max(0, (first % Ho) * s.stride - s.padTop)
  let bottom = (last / Ho) * H + min(H, (last % Ho) * s.stride - s.padTop + s.kernel)
  let rowFloats = s.width * s.inChannels
  return (UnsafeRawPointer(x + top * rowFloats), max(0, bottom - top) * rowFloats * MemoryLayout<Float>.stride)
}

/// Row (n, oy, ox) of `patches` = the K×K×Ci input window of that output pixel, in the weights'
/// (ky, kx, ci) order; taps in the SAME padding are zeros.
func im2col(_ patches: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ s: ConvShape) {
  let Wo = s.outWidth
  parallelChunks(s.batch * s.outHeight) { _, outRows in im2col(patches, x, s, pixels: (outRows.lowerBound * Wo)..<(outRows.upperBound * Wo)) }
}

/// The patch rows of output pixels `pixels` (n·Ho·Wo + oy·Wo + ox), single-threaded, `rowStride`
/// floats apart (≥ K·K·Ci; the columns past K·K·Ci are zeros); `patches` is addressed by absolute
/// pixel (a block buffer passes its base minus the first pixel's offset).
func im2col(_ patches: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ s: ConvShape, pixels: Range<Int>,
            rowStride: Int? = nil) {
  let (H, W, Ci, K, S) = (s.height, s.width, s.inChannels, s.kernel, s.stride)
  let (Ho, Wo, pt, pl) = (s.outHeight, s.outWidth, s.padTop, s.padLeft)
  let depth = K * K * Ci, stride = rowStride ?? depth
  // The stem's 3×3×3 windows: a window row is 9 contiguous floats, copied as one 8-wide vector and a
  // float, with the padding columns of a 32-float row zeroed by one vector (4× the generic loop).
  let stemRows = K == 3 && Ci == 3 && stride == 32
  for pixel in pixels {
    let row = pixel / Wo, ox = pixel % Wo
    let n = row / Ho, oy = row % Ho
    var p = patches + pixel * stride
    if stemRows {
      let ix0 = ox * S - pl, iy0 = oy * S - pt
      if ix0 >= 0 && ix0 + 3 <= W && iy0 >= 0 && iy0 + 3 <= H {
        let src = x + ((n * H + iy0) * W + ix0) * 3, rowFloats = W * 3
        copyStemWindow(p, src, rowFloats)
        continue
      }
    }
    for j in depth..<stride { p[j] = 0 }
    let ix0 = ox * S - pl
    let inside = ix0 >= 0 && ix0 + K <= W  // the window's K pixels of a row are contiguous in x
    for ky in 0..<K {
      let iy = oy * S - pt + ky
      if iy < 0 || iy >= H {
        for j in 0..<(K * Ci) { p[j] = 0 }
      } else if inside {
        // Element loops, not memcpy: the runs are a few floats (9 for the stem).
        let src = x + ((n * H + iy) * W + ix0) * Ci
        for j in 0..<(K * Ci) { p[j] = src[j] }
      } else {
        for kx in 0..<K {
          let ix = ix0 + kx
          let src = x + ((n * H + iy) * W + ix) * Ci
          for c in 0..<Ci { p[kx * Ci + c] = ix < 0 || ix >= W ? 0 : src[c] }
        }
      }
      p += K * Ci
    }
  }
}

/// One interior 3×3×3 window (rows `rowFloats` apart from `src`) into a 32-float patch row: the three
/// 9-float rows at 0, 9, 18 and zeros in 27..<32. The zero vector goes first; the third row overwrites
/// its first three floats.
@inline(__always)
private func copyStemWindow(_ p: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ rowFloats: Int) {
  let dst = UnsafeMutableRawPointer(p)
  dst.storeBytes(of: SIMD8<Float>(repeating: 0), toByteOffset: 24 * 4, as: SIMD8<Float>.self)
  for r in 0..<3 {
    let s = src + r * rowFloats
    dst.storeBytes(of: UnsafeRawPointer(s).loadUnaligned(as: SIMD8<Float>.self), toByteOffset: r * 9 * 4, as: SIMD8<Float>.self)
    p[r * 9 + 8] = s[8]
  }
}

/// dx = Σ over output pixels of their patch gradients, scattered back to the window they came
/// from (windows overlap, so images go to threads and each image is summed by one thread).
func col2im(_ dx: UnsafeMutablePointer<Float>, _ dPatches: UnsafePointer<Float>, _ s: ConvShape) {
  let (H, W, Ci, K) = (s.height, s.width, s.inChannels, s.kernel)
  let (Ho, Wo, window) = (s.outHeight, s.outWidth, s.window)
  let depth = K * K * Ci
  parallelChunks(s.batch) { _, images in
    for n in images {
      (dx + n * H * W * Ci).update(repeating: 0, count: H * W * Ci)
      for oy in 0..<Ho {
        for ox in 0..<Wo {
          let p = dPatches + ((n * Ho + oy) * Wo + ox) * depth
          window.forEachTap(oy: oy, ox: ox) { tap, iy, ix in
            let d = dx + ((n * H + iy) * W + ix) * Ci, g = p + tap * Ci
            for c in 0..<Ci { d[c] += g[c] }
          }
        }
      }
    }
  }
}

// MARK: - Naive reference

public func conv2dForwardNaive(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                               _ s: ConvShape) {
  let (H, W, Ci, Co, K, S) = (s.height, s.width, s.inChannels, s.outChannels, s.kernel, s.stride)
  for n in 0..<s.batch { for oy in 0..<s.outHeight { for ox in 0..<s.outWidth { for co in 0..<Co {
    var acc = 0.0
    for ky in 0..<K { for kx in 0..<K {
      let iy = oy * S - s.padTop + ky, ix = ox * S - s.padLeft + kx
      if iy < 0 || iy >= H || ix < 0 || ix >= W { continue }
      for ci in 0..<Ci {
        acc += Double(x[((n * H + iy) * W + ix) * Ci + ci]) * Double(w[((ky * K + kx) * Ci + ci) * Co + co])
      }
    } }
    y[((n * s.outHeight + oy) * s.outWidth + ox) * Co + co] = Float(acc)
  } } } }
}

public func conv2dBackwardNaive(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                                dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                _ s: ConvShape) {
  let (H, W, Ci, Co, K, S) = (s.height, s.width, s.inChannels, s.outChannels, s.kernel, s.stride)
  dx?.update(repeating: 0, count: s.inputCount)
  for n in 0..<s.batch { for oy in 0..<s.outHeight { for ox in 0..<s.outWidth { for co in 0..<Co {
    let g = dy[((n * s.outHeight + oy) * s.outWidth + ox) * Co + co]
    for ky in 0..<K { for kx in 0..<K {
      let iy = oy * S - s.padTop + ky, ix = ox * S - s.padLeft + kx
      if iy < 0 || iy >= H || ix < 0 || ix >= W { continue }
      for ci in 0..<Ci {
        let xi = ((n * H + iy) * W + ix) * Ci + ci
        let wi = ((ky * K + kx) * Ci + ci) * Co + co
        dw[wi] += x[xi] * g
        dx?[xi] += w[wi] * g
      }
    } }
  } } } }
}
