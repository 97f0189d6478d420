// Depthwise K×K convolution (MobileNetV2: 3×3, stride 1 or 2), NHWC, TF `SAME` padding, no bias.
// Weights are TF's [K, K, C, 1] layout, i.e. [K·K][C] in memory.
//
// Fast path: per output pixel, blocks of 16 (then 8, then 1) channels are accumulated in registers
// over all valid taps and stored once; output rows are split across threads. The input gradient is
// computed as a gather (each input pixel sums the taps that read it), so threads never write the
// same memory; the weight gradient uses per-thread partials reduced at the end.

import Common
import KernelRows

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

extension DepthwiseShape {
  var geometry: DepthwiseGeometry {
    DepthwiseGeometry(height: height, width: width, channels: channels, kernel: kernel, stride: stride,
                      outHeight: outHeight, outWidth: outWidth, padTop: padTop, padLeft: padLeft)
  }
}

/// A depthwise input not stored as such: the previous layer's conv output z, whose batch norm (the
/// per-channel `scale`, `shift` of `batchNormScaleShift`) and ReLU6 the depthwise applies as it reads.
public struct PendingBatchNorm {
  public let scale, shift: UnsafePointer<Float>
  public let relu6: Bool
  /// Mixed precision: x is rounded to bf16 after the activation (it is the depthwise's operand;
  /// rounding z before BN would be amplified by the normalisation).
  public let roundToBF16: Bool
  public init(scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, relu6: Bool, roundToBF16: Bool = false) {
    self.scale = scale; self.shift = shift; self.relu6 = relu6; self.roundToBF16 = roundToBF16
  }
  /// x = act(z·scale + shift), one value (the row kernels vectorise the same expression).
  @inline(__always) func apply(_ z: Float, channel c: Int) -> Float {
    let v = z * scale[c] + shift[c]
    let a = relu6 ? min(max(v, 0), 6) : v
    return roundToBF16 ? roundedToBF16(a) : a
  }
}

/// Input rows a thread transforms at a time for a `PendingBatchNorm` input: a group of output rows
/// whose input rows fill about 256 KiB (kept in L2 while the group's taps read them).
func transformRows(_ s: DepthwiseShape) -> Int {
  let outRows = max(1, 65536 / max(1, s.width * s.channels * s.stride))
  return (outRows - 1) * s.stride + s.kernel
}

/// Floats of the transform buffers of all `Compute.threads` threads (one each, see `Compute.slot`).
func transformFloats(_ s: DepthwiseShape) -> Int { Compute.threads * transformRows(s) * s.width * s.channels }

extension PendingBatchNorm {
  /// The transform into the calling thread's buffer of `buffers` (`transformFloats`).
  func transform(_ s: DepthwiseShape, buffers: UnsafeMutablePointer<Float>) -> DepthwiseInputTransform {
    let rows = transformRows(s)
    return DepthwiseInputTransform(scale: scale, shift: shift, relu6: relu6, roundToBF16: roundToBF16,
                                   buffer: buffers + Compute.slot * rows * s.width * s.channels, bufferRows: rows)
  }
}

/// y[N,Ho,Wo,C] = depthwise(x[N,H,W,C], w[K,K,C]); with `input`, x is act(BN(z)) of the given z (see
/// `PendingBatchNorm`), made as read.
public func depthwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             _ s: DepthwiseShape, input: PendingBatchNorm? = nil, scratch: Scratch? = nil) {
  let g = s.geometry, rows = KernelISA.rows
  let total = s.batch * s.outHeight
  let buffers = input.map { _ in (scratch ?? Scratch()).uninitialized(transformFloats(s)) }
  let stream = StreamingStores.use(y, count: s.outputCount, channels: s.channels)
  parallelChunks(total, split: .balanced) { _, r in
    rows.depthwiseForward(y: y, x: x, w: w, g, rows: r, stats: nil,
                          input: input.map { $0.transform(s, buffers: buffers!) }, stream: stream)
  }
}

/// The same, also accumulating the batch-norm statistics of y while each output pixel is in
/// registers: `shift` (C floats) receives output pixel 0, `sums` (2·C doubles) Σ(y − shift), Σ(y − shift)².
public func depthwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             _ s: DepthwiseShape, statisticsShift shift: UnsafeMutablePointer<Float>,
                             sums: UnsafeMutablePointer<Double>, scratch: Scratch, input: PendingBatchNorm? = nil) {
  let C = s.channels
  let rowsTotal = s.batch * s.outHeight
  guard rowsTotal > 0 && s.outWidth > 0 else { sums.update(repeating: 0, count: 2 * C); return }
  // Output pixel (0, 0, 0) as the shift: a sample of each channel close to its mean.
  shift.update(repeating: 0, count: C)
  s.window.forEachTap(oy: 0, ox: 0) { tap, iy, ix in
    let xin = x + (iy * s.width + ix) * C, wk = w + tap * C
    for c in 0..<C { shift[c] += (input?.apply(xin[c], channel: c) ?? xin[c]) * wk[c] }
  }
  let g = s.geometry, rows = KernelISA.rows
  let stats = ChannelStatistics(shift: UnsafePointer(shift), sums: sums)
  let buffers = input.map { _ in scratch.uninitialized(transformFloats(s)) }
  let stream = StreamingStores.use(y, count: s.outputCount, channels: C)
  parallelChannelSums(rows: rowsTotal, channels: C, minPerChunk: 1, split: .balanced, scratch: scratch, into: sums) { _, r, partial in
    rows.depthwiseForward(y: y, x: x, w: w, g, rows: r, stats: stats.with(sums: partial),
                          input: input.map { $0.transform(s, buffers: buffers!) }, stream: stream)
  }
}

/// dw[K,K,C] += Σ x·dy; dx (if given) = depthwiseᵀ(dy) (overwritten), plus `residual` if given.
/// With `reduce`, the batch-norm backward reductions of the layer that produced x are made over dx
/// while it is in registers (`reduce.sums` is overwritten), so that layer's BN backward needs no pass
/// of its own. With `input`, x is act(BN(z)) of the given z, remade as read (as in forward).
///
/// One pass: each thread walks its output rows in groups (`backwardGroupRows`), making the group's
/// weight gradient and then the input gradient of the input rows the group owns, whose dy and z rows
/// the weight gradient has just brought into cache; dy and z stream from memory once, not twice.
/// With `outputGradient`, dy is that BN backward's dz, made per group (with the rows the group's input
/// gradient reads beyond it) into a per-thread buffer: dz is never stored, and `dy` is not read.
public func depthwiseBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                              dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              _ s: DepthwiseShape, scratch: Scratch,
                              residual: UnsafePointer<Float>? = nil, reduce: BatchNormReduction? = nil,
                              input: PendingBatchNorm? = nil, outputGradient: PendingBatchNormBackward? = nil,
                              scaledExpand: ScaledExpandBackwardPass? = nil) {
  precondition(scaledExpand == nil || (dx != nil && residual == nil && reduce?.storesScaledGradient == true),
               "the fused expand backward takes the stored-P input gradient, without residual")
  let g = s.geometry, rows = KernelISA.rows
  let C = s.channels, wc = s.weightCount
  let (S, Ho, Wo, H) = (s.stride, s.outHeight, s.outWidth, s.height)
  let rowsTotal = s.batch * Ho
  guard rowsTotal > 0 else {
    reduce?.sums.update(repeating: 0, count: 2 * C)
    return
  }
  let chunks = depthwiseBackwardChunks(s)
  let group = backwardGroupRows(s)
  let streamDX = scaledExpand == nil && (dx.map { StreamingStores.use($0, count: s.inputCount, channels: C) } ?? false)
  // One scratch region: the per-chunk weight partials (zeroed), then per thread a transform buffer
  // and a dz buffer (`Compute.slot`).
  let transformBase = chunks * wc, dzBase = transformBase + (input == nil ? 0 : transformFloats(s))
  let dzFloats = (group + 2 * s.kernel) * Wo * C
  let region = scratch.uninitialized(dzBase + (outputGradient == nil ? 0 : Compute.threads * dzFloats))
  let partial = region
  partial.update(repeating: 0, count: chunks * wc)
  func run(_ chunk: Int, _ r: Range<Int>, _ sums: UnsafeMutablePointer<Double>?) {
    let transform = input.map { $0.transform(s, buffers: region + transformBase) }
    let dzBuffer = region + dzBase + Compute.slot * dzFloats
    var made = 0..<0  // the output rows whose dz the buffer holds, from its start (with `outputGradient`)
    var lo = r.lowerBound
    while lo < r.upperBound {
      let n = lo / Ho
      let hi = min(r.upperBound, (n + 1) * Ho, lo + group)
      // Input rows owned by output rows oy0..<oy1: iy in [oy0·S, oy1·S) (SAME: Ho = ⌈H/S⌉, so
      // Ho·S ≥ H and the groups of an image cover its H rows exactly once).
      let oy0 = lo - n * Ho, oy1 = hi - n * Ho
      let iy0 = min(H, oy0 * S), iy1 = min(H, oy1 * S)
      var grad = dy
      if let pending = outputGradient {
        // The output rows the group reads: its own, and those its input rows' taps reach
        // (oy = (iy + pt − ky) / S for ky in 0..<K).
        let need0 = iy0 < iy1 ? max(0, (iy0 + s.padTop - (s.kernel - 1) + S - 1) / S) : oy0
        let need1 = iy0 < iy1 ? min(Ho, (iy1 - 1 + s.padTop) / S + 1) : oy1
        let first = n * Ho + min(oy0, need0), last = n * Ho + max(oy1, need1)
        // The rows the previous group made too (its last rows, which this group's taps reach again)
        // move to the front of the buffer instead of being made twice: the same values.
        let kept = first >= made.lowerBound && first < made.upperBound ? min(last, made.upperBound) - first : 0
        let rowFloats = Wo * C
        if kept > 0 {
          dzBuffer.update(from: dzBuffer + (first - made.lowerBound) * rowFloats, count: kept * rowFloats)
        }
        let base = dzBuffer - first * rowFloats
        pending.apply(dz: base, rows: ((first + kept) * Wo)..<(last * Wo))
        grad = UnsafePointer(base)
        made = first..<last
      }
      rows.depthwiseWeightGradient(dw: partial + chunk * wc, dy: grad, x: x, g, rows: lo..<hi, input: transform)
      if let dx, iy0 < iy1 {
        let imageRows = (n * H + iy0)..<(n * H + iy1)
        if let pass = scaledExpand {
          // P of the group's input rows into this thread's buffer, and the expand's products on it there.
          let p = pass.pBuffer(imageRows: imageRows, rowFloats: s.width * C)
          rows.depthwiseInputGradient(dx: p, dy: grad, w: w, g, rows: imageRows, residual: nil,
                                      reduce: sums.map { reduce!.with(sums: $0) }, stream: false)
          pass.consume(chunk: chunk, pixels: (imageRows.lowerBound * s.width)..<(imageRows.upperBound * s.width),
                       p: UnsafePointer(p))
        } else {
          rows.depthwiseInputGradient(dx: dx, dy: grad, w: w, g, rows: imageRows,
                                      residual: residual, reduce: sums.map { reduce!.with(sums: $0) }, stream: streamDX)
        }
      }
      lo = hi
    }
  }
  if let reduce, dx != nil {
    parallelChannelSums(rows: rowsTotal, channels: C, minPerChunk: 1, split: .balanced, scratch: scratch,
                        into: reduce.sums) { chunk, r, sums in
      run(chunk, r, sums)
    }
  } else {
    parallelChunks(rowsTotal, split: .balanced) { chunk, r in run(chunk, r, nil) }
  }
  for ch in 0..<chunks {
    let p = partial + ch * wc
    for i in 0..<wc { dw[i] += p[i] }
  }
}

/// Chunks of `depthwiseBackward`'s rows (the weight partials, and a fused expand's, are per chunk).
func depthwiseBackwardChunks(_ s: DepthwiseShape) -> Int { chunkCount(s.batch * s.outHeight, split: .balanced) }

/// Output rows per group of the one-pass backward: as many as one transform buffer holds (about
/// 256 KiB of input rows), so that a group's dy, z and dx rows stay in L2 between its two halves.
public func backwardGroupRows(_ s: DepthwiseShape) -> Int { max(1, (transformRows(s) - s.kernel) / s.stride + 1) }

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
