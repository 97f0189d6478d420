// The backward of an expand 1×1 layer without reading its output z.
//
// The expand's BN(+ReLU6) backward makes dz = k·(g − meanG − (z − μ)·meanGX) (k = γ·invStd, g = dA
// masked by ReLU6's window), and both products read it: dW += xᵀ·dz, dx = dz·wᵀ. Made block by block
// (`PendingBatchNormBackward`) that reads dA and z, two tensors of the expanded size T (154 MB each
// at 1.0/224 b32 layer 3). But z = x·w, so z − μ is linear in x and the products can be rewritten
// on P = k·g alone, which the depthwise backward before writes in place of dA (it has z in cache for
// the mask anyway; `BatchNormReduction.storesScaledGradient`). With c1 = k·meanG, v = k·meanGX and a
// per-channel shift s of x (x̃ = x − s, μ̃ = μ − s·w, q = c1 − μ̃·v):
//   dz = P − q − (x̃·w)·diag(v)
//   dW += x̃ᵀ·P − Σx̃·qᵀ − (x̃ᵀx̃)·w·diag(v) + s·Σdzᵀ,   Σdz = k·Σg − N·q − (Σx̃·w)·diag(v)
//   dx  = P·wᵀ − x̃·M − r,   M = w·diag(v)·wᵀ (k×k), r = q·wᵀ
// (xᵀdz = x̃ᵀdz + s·Σdzᵀ; Σdz, the per-channel sums of dz, is zero in exact arithmetic with training-mode
// BN, but not with μ the float mean of the rounded z, nor with inference-mode BN; see the end of the pass.)
// The products with P need no coefficient (x̃ᵀ·P, P·wᵀ), so they run fused into the depthwise
// backward, group by group on the P it has just made (`ScaledExpandBackwardPass`): P is never
// stored. The coefficients come from the reductions that pass makes (meanG, meanGX); a second pass
// over x and dx then adds −x̃·M − r. The k×k products (x̃ᵀx̃, x̃·M) are 1/6 of the FMAs at
// MobileNetV2's expansion 6. The shift keeps
// the float sums of x̃ᵀP and x̃ᵀx̃ from carrying x's mean (x is a block output: its mean can be large
// against its spread); s is the mean of x's first rows.
import Foundation
import KernelRows

/// Which expand layers take `pointwiseBackwardScaled`.
public enum ScaledExpandBackward {
  public static let environmentVariable = "MNV2_SCALED_EXPAND"
  /// On unless MNV2_SCALED_EXPAND=0 (tests switch it and lower the threshold to compare both paths).
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  /// Expanded tensors (z) of at least this many bytes: below it z is read back from L3, where the
  /// read saved costs less than the k×k products added (see docs/performance.md, issue 12 round 13).
  public static var minimumBytes = 64 << 20
  /// Narrow inputs (at most `narrowInputChannels`): their k×k products cost little. Fused into the
  /// depthwise backward (`FusedScaledExpandBackward`), at every size: on Zen 4 0.35/96 b64's 24² pairs
  /// (k 8, z 7 MB) took 0.35–0.40 ms less each, the 12² ones (k 16, z 3.5 MB) 0.03–0.09, the step 1.3–3.9 %
  /// (round 21), while k 24 still loses (1.0/224's 56² and 28² pairs −0.4 to +0.3 ms, 0.35's 6² pairs
  /// +0.1–0.3). Unfused, from `narrowMinimumBytes`: 0.35/96 b64's layer 3 (z 28 MB) took 0.6 ms less a
  /// step scaled, while 1.0/224 b32's layers 6 and 9 (k 24, z 58 MB) took 0.1–0.7 ms more (round 20).
  public static var narrowInputChannels = 16, narrowMinimumBytes = 16 << 20
  /// Whether an expand layer of `rows` pixels takes the scaled path: its output large enough or its
  /// input narrow, and both of its backward products on our GEMM kernels (the only ones
  /// `pointwiseBackwardScaled` runs).
  public static func use(rows: Int, inChannels: Int, outChannels: Int) -> Bool {
    let bytes = rows * outChannels * MemoryLayout<Float>.stride
    let narrow = inChannels <= narrowInputChannels
    return enabled && (bytes >= minimumBytes || (narrow && (FusedScaledExpandBackward.enabled || bytes >= narrowMinimumBytes)))
      && useOwnGEMM(.weightGradient, rows: rows, k: inChannels, n: outChannels)
      && useOwnGEMM(.product, rows: rows, k: outChannels, n: inChannels)
  }
}

/// Rows of x averaged for the shift s.
private let shiftSampleRows = 256

/// The coefficients of the rewritten products (see the top of this file), from the expand's BN
/// backward `og` (its reductions complete) and the shift s of x.
struct ScaledCoefficients {
  let m, n: Int
  /// s as doubles, and v, q (n each) in doubles.
  let s: [Double], v: [Double], q: [Double]
  /// −M = −w·diag(v)·wᵀ (m×m) and r = q·wᵀ (m), as the kernels read them.
  let negM: [Float], r: [Float]

  init(_ og: PendingBatchNormBackward, shift: [Float], w: UnsafePointer<Float>, inChannels m: Int, outChannels n: Int) {
    self.m = m; self.n = n
    let s = shift.map(Double.init)
    var v = [Double](repeating: 0, count: n), q = [Double](repeating: 0, count: n)
    for j in 0..<n {
      var sw = 0.0
      for a in 0..<m { sw += s[a] * Double(w[a * n + j]) }
      let k = Double(og.k[j])
      v[j] = k * Double(og.meanGX[j])
      q[j] = k * Double(og.meanG[j]) - (Double(og.reduction.mean[j]) - sw) * v[j]
    }
    var negM = [Float](repeating: 0, count: m * m), r = [Float](repeating: 0, count: m)
    for a in 0..<m {
      var ra = 0.0
      for j in 0..<n { ra += q[j] * Double(w[a * n + j]) }
      r[a] = Float(ra)
      for b in 0..<m {
        var mab = 0.0
        for j in 0..<n { mab += Double(w[a * n + j]) * v[j] * Double(w[b * n + j]) }
        negM[a * m + b] = Float(-mab)
      }
    }
    self.s = s; self.v = v; self.q = q; self.negM = negM; self.r = r
  }

  /// dW −= Σx̃·qᵀ + (x̃ᵀx̃)·w·diag(v), and += s·Σdzᵀ: xᵀdz = x̃ᵀdz + s·Σdzᵀ. With training-mode BN,
  /// Σdz = ΣP − N·q − Σx̃·w·diag(v) is zero in exact arithmetic, but μ is the mean of the rounded z,
  /// kept as a float (~1e-6 off at |μ| ~ 20), and x's mean amplifies what is left (~1e-3 of dW at a
  /// mean of 4 in the tests). With inference-mode BN it is ΣP itself (dz = P). `xSums` and `grams`:
  /// Σx̃ (m doubles) and x̃ᵀx̃ (m×m floats) per chunk.
  func addWeightGradientCorrections(_ dw: UnsafeMutablePointer<Float>, _ og: PendingBatchNormBackward,
                                    xSums: UnsafePointer<Double>, grams: UnsafePointer<Float>, chunks: Int, rows: Int,
                                    w: UnsafePointer<Float>) {
    var sx = [Double](repeating: 0, count: m)
    for c in 0..<chunks { for a in 0..<m { sx[a] += xSums[c * m + a] } }
    var sdz = [Double](repeating: 0, count: n)
    for j in 0..<n {
      var t = 0.0
      for a in 0..<m { t += sx[a] * Double(w[a * n + j]) }
      sdz[j] = Double(og.k[j]) * og.sums[j] - Double(rows) * q[j] - t * v[j]
    }
    for a in 0..<m {
      var gRow = [Double](repeating: 0, count: m)
      for c in 0..<chunks { for b in 0..<m { gRow[b] += Double(grams[c * m * m + a * m + b]) } }
      for j in 0..<n {
        var gw = 0.0
        for b in 0..<m { gw += gRow[b] * Double(w[b * n + j]) }
        dw[a * n + j] += Float(s[a] * sdz[j] - sx[a] * q[j] - gw * v[j])
      }
    }
  }
}

/// dW += xᵀ·dz, dx = dz·wᵀ (+ residual, with the reductions `reduce` of the layer that produced x),
/// where dz is the BN backward of `outputGradient`, whose `da` holds P = k·mask(dA) (the depthwise
/// backward's `storesScaledGradient` output) instead of dA: z is not read (see the top of this file).
/// Our GEMM kernels only (callers check `useOwnGEMM`). The step runs the same products fused into
/// the depthwise backward (`ScaledExpandBackwardPass`); this is that pass over a stored P.
public func pointwiseBackwardScaled(dx: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                                    outputGradient og: PendingBatchNormBackward, x: UnsafePointer<Float>,
                                    w: UnsafePointer<Float>, rows: Int, inChannels m: Int, outChannels n: Int,
                                    scratch: Scratch, residual: UnsafePointer<Float>?, reduce: BatchNormReduction?) {
  precondition(reduce?.storesScaledGradient != true, "only the depthwise input gradient stores the scaled gradient")
  guard rows > 0 else { reduce?.sums.update(repeating: 0, count: 2 * m); return }
  let blockRows = backwardBlockRows(inChannels: m, outChannels: n, own: true)
  let split = ChunkSplit.balanced
  let pass = ScaledExpandBackwardPass(dx: dx, x: x, w: w, rows: rows, inChannels: m, outChannels: n,
                                      chunks: chunkCount(rows, minPerChunk: gemmMinRowsPerThread, split: split, grain: blockRows),
                                      pixelsPerCall: min(rows, blockRows), buffersP: false)
  parallelChunks(rows, minPerChunk: gemmMinRowsPerThread, split: split, grain: blockRows) { chunk, r in
    forEachBlock(r, blockRows: blockRows) { b in pass.consume(chunk: chunk, pixels: b, p: og.da) }
  }
  pass.finish(outputGradient: og, dw: dw, scratch: scratch, residual: residual, reduce: reduce)
}

// MARK: - Fused into the depthwise backward (P never stored)

/// Which scaled expand backwards run fused into the depthwise backward before them
/// (`ScaledExpandBackwardPass`).
public enum FusedScaledExpandBackward {
  public static let environmentVariable = "MNV2_FUSED_SCALED_EXPAND"
  /// On unless MNV2_FUSED_SCALED_EXPAND=0.
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
}

/// `pointwiseBackwardScaled` split in two so that P is never stored. Its products with P need no
/// coefficient: x̃ᵀ·P (into dW) and P·wᵀ (dx's first term). The depthwise backward makes P group by
/// group of input rows into a per-thread buffer (`pBuffer`) and hands each group to `consume`, which
/// runs both products (and x̃ᵀx̃, Σx̃) while the group is in L2. Once the depthwise pass has made the
/// reductions, `finish` has the coefficients: one pass over x and dx adds −x̃·M − r to dx and makes
/// the reductions of x's producer, and dW gets its corrections. The expanded-size P (28 MB at
/// 0.35/96 b64, 154 MB at 1.0/224 b32) is neither written nor read back; the second pass moves
/// x and dx, 1/6 of that at expansion 6. Measured on Zen 4 (`bench train-one --alternate
/// MNV2_FUSED_SCALED_EXPAND`, layers 3 + 4 backward): 1.0/224 b32 −0.92 and −0.94 ms, 0.35/96 b64
/// +0.01, −0.11 and −0.28 ms. Small: those layers were bound by the narrow products (dx has 8 or 16
/// channels, half or all of a vector), which P's streams overlapped; it is the memory traffic that is gone.
/// `pointwiseBackwardScaled` is the same pass over a stored P (tests compare the two).
public final class ScaledExpandBackwardPass {
  let x, w: UnsafePointer<Float>
  let dx: UnsafeMutablePointer<Float>
  let rows, m, n, chunks: Int
  let shift: [Float]
  /// Per chunk of the depthwise pass: dW partial (m·n), Gram (m·m), then Σx̃ in doubles (separately);
  /// per thread: a P group buffer, a block of x̃ and its float sums; packed wᵀ.
  let storage: UnsafeMutablePointer<Float>
  let xSums: UnsafeMutablePointer<Double>
  let partials, grams, packedW, pBuffers, xBlocks, blockSums: UnsafeMutablePointer<Float>
  let ldw, pFloats, xFloats: Int

  /// For the expand layer x [rows, m] · w [m, n] whose output the depthwise `s` reads (s.inputCount
  /// = rows·n); dx receives the expand's input gradient.
  public convenience init(dx: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>, rows: Int,
                          inChannels m: Int, outChannels n: Int, depthwise s: DepthwiseShape) {
    precondition(s.inputCount == rows * n && s.channels == n, "the depthwise reads the expand's output")
    // P rows of one group: the input rows a group of output rows owns (at most group·stride image rows).
    self.init(dx: dx, x: x, w: w, rows: rows, inChannels: m, outChannels: n, chunks: depthwiseBackwardChunks(s),
              pixelsPerCall: backwardGroupRows(s) * s.stride * s.width, buffersP: true)
  }

  /// `chunks` chunks of consumers (each running on one thread at a time), at most `pixelsPerCall` rows
  /// per `consume`, with per-thread P buffers of that size if `buffersP`.
  init(dx: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>, rows: Int,
       inChannels m: Int, outChannels n: Int, chunks: Int, pixelsPerCall: Int, buffersP: Bool) {
    self.dx = dx; self.x = x; self.w = w; self.rows = rows; self.m = m; self.n = n; self.chunks = chunks
    shift = sampledRowMean(x, rows: rows, channels: m, sample: shiftSampleRows, spread: false)
    pFloats = buffersP ? pixelsPerCall * n : 0
    xFloats = pixelsPerCall * m
    let packedCount = gemmPackedCount(k: n, n: m), threads = Compute.threads
    let count = chunks * (m * n + m * m) + packedCount + threads * (pFloats + xFloats + m)
    storage = .allocate(capacity: count)
    partials = storage
    grams = partials + chunks * m * n
    packedW = grams + chunks * m * m
    pBuffers = packedW + packedCount
    xBlocks = pBuffers + threads * pFloats
    blockSums = xBlocks + threads * xFloats
    partials.update(repeating: 0, count: chunks * (m * n + m * m))  // and the Grams after them
    ldw = packGemmB(w, k: n, n: m, transposed: true, into: packedW)
    xSums = .allocate(capacity: chunks * m)
    xSums.update(repeating: 0, count: chunks * m)
  }

  deinit { storage.deallocate(); xSums.deallocate() }

  /// The calling thread's P buffer for the image rows `imageRows` (n·H + iy) of the depthwise input,
  /// addressed by absolute image row like the depthwise's dx (`rowFloats` = W·C floats a row).
  func pBuffer(imageRows: Range<Int>, rowFloats: Int) -> UnsafeMutablePointer<Float> {
    precondition(imageRows.count * rowFloats <= pFloats, "a group's P rows fit the buffer")
    return pBuffers + Compute.slot * pFloats - imageRows.lowerBound * rowFloats
  }

  /// The products of P's pixel rows `pixels` (p addressed by absolute pixel) on chunk `chunk`'s partials.
  func consume(chunk: Int, pixels b: Range<Int>, p: UnsafePointer<Float>) {
    guard !b.isEmpty else { return }
    precondition(b.count * m <= xFloats, "at most pixelsPerCall rows per call")
    let kernels = KernelISA.rows, slot = Compute.slot
    let t = blockSums + slot * m
    t.update(repeating: 0, count: m)
    let xt = xBlocks + slot * xFloats - b.lowerBound * m
    shift.withUnsafeBufferPointer { centreRows(x, minus: $0.baseAddress!, into: xt, rows: b, channels: m, sums: t) }
    let xSum = xSums + chunk * m
    for a in 0..<m { xSum[a] += Double(t[a]) }
    kernels.gemmTransposedA(c: partials + chunk * m * n, a: xt, b: p, k: m, n: n, rows: b, prefetch: nil)
    kernels.gemmTransposedA(c: grams + chunk * m * m, a: xt, b: xt, k: m, n: m, rows: b, prefetch: nil)
    kernels.gemm(c: dx, a: p, b: packedW, ldb: ldw, k: n, n: m, rows: b, stats: nil, prefetch: nil, stream: false)
  }

  /// After the depthwise pass: dx += −x̃·M − r (+ residual) with the reductions `reduce` of x's
  /// producer, and dW (accumulated into `dw`) from the partials and the corrections. `og`: the
  /// expand's BN backward from the reductions the depthwise pass made (its da is not read).
  public func finish(outputGradient og: PendingBatchNormBackward, dw: UnsafeMutablePointer<Float>, scratch: Scratch,
                     residual: UnsafePointer<Float>?, reduce: BatchNormReduction?) {
    precondition(residual == nil || reduce != nil, "a residual gradient is added by the reduction pass")
    precondition(og.channels == n, "outputGradient has \(og.channels) channels, the layer \(n)")
    guard rows > 0 else { reduce?.sums.update(repeating: 0, count: 2 * m); return }
    let kernels = KernelISA.rows
    let c = ScaledCoefficients(og, shift: shift, w: w, inChannels: m, outChannels: n)
    let blockRows = backwardBlockRows(inChannels: m, outChannels: n, own: true)
    let threads = Compute.threads
    let packedM = gemmPackedCount(k: m, n: m), blockFloats = min(rows, blockRows) * m
    let region = scratch.uninitialized(packedM + 2 * threads * blockFloats + threads * m)
    let packedNegM = region, corrBlocks = region + packedM, xtBlocks = corrBlocks + threads * blockFloats
    // Σx̃ of the blocks again (centreRows makes it; `consume` already has it): zeroed, not read.
    let sumsBuffer = xtBlocks + threads * blockFloats
    sumsBuffer.update(repeating: 0, count: threads * m)
    let ldm = c.negM.withUnsafeBufferPointer { packGemmB($0.baseAddress!, k: m, n: m, transposed: false, into: packedNegM) }
    shift.withUnsafeBufferPointer { shift in
      c.r.withUnsafeBufferPointer { r in
        parallelGemmRows(rows, reduce: reduce, channels: m, split: .balanced, grain: blockRows, scratch: scratch) { _, range, sums in
          forEachBlock(range, blockRows: blockRows) { b in
            let slot = Compute.slot
            let xt = xtBlocks + slot * blockFloats - b.lowerBound * m, corr = corrBlocks + slot * blockFloats - b.lowerBound * m
            centreRows(x, minus: shift.baseAddress!, into: xt, rows: b, channels: m, sums: sumsBuffer + slot * m)
            kernels.gemm(c: corr, a: xt, b: packedNegM, ldb: ldm, k: m, n: m, rows: b, stats: nil, prefetch: nil, stream: false)
            addCorrection(dx, corr, minus: r.baseAddress!, rows: b, channels: m)
            if let reduce, let sums {
              kernels.batchNormReduce(da: dx, residual: residual, channels: m, rows: b, reduce.with(sums: sums))
            }
          }
        }
      }
    }
    for chunk in 0..<chunks {
      let partial = partials + chunk * m * n
      for i in 0..<(m * n) { dw[i] += partial[i] }
    }
    c.addWeightGradientCorrections(dw, og, xSums: UnsafePointer(xSums), grams: UnsafePointer(grams), chunks: chunks,
                                   rows: rows, w: w)
  }
}

/// The float mean of `sample` rows of x [rows, channels] (all rows if fewer), summed in doubles: the
/// first ones, or with `spread` rows evenly spaced across x. The centre a kernel subtracts from x's
/// rows before summing their products in floats (`centreRows`).
func sampledRowMean(_ x: UnsafePointer<Float>, rows: Int, channels m: Int, sample: Int, spread: Bool) -> [Float] {
  let sampled = min(rows, sample)
  guard sampled > 0 else { return [Float](repeating: 0, count: m) }
  return (0..<m).map { a in
    var t = 0.0
    for i in 0..<sampled { t += Double(x[(spread ? i * rows / sampled : i) * m + a]) }
    return Float(t / Double(sampled))
  }
}

/// out rows = x rows − s, and t += their sum (t: m floats): vectors of 16 down each column block,
/// then 8, then single channels.
@inline(__always)
func centreRows(_ x: UnsafePointer<Float>, minus s: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
                        rows b: Range<Int>, channels m: Int, sums t: UnsafeMutablePointer<Float>) {
  var a = 0
  while a + 16 <= m { centreColumns(SIMD16<Float>.self, x, minus: s, into: out, rows: b, channels: m, from: a, sums: t); a += 16 }
  while a + 8 <= m { centreColumns(SIMD8<Float>.self, x, minus: s, into: out, rows: b, channels: m, from: a, sums: t); a += 8 }
  while a < m {
    for i in b {
      out[i * m + a] = x[i * m + a] - s[a]
      t[a] += out[i * m + a]
    }
    a += 1
  }
}

/// centreRows for channels a..<a + V.scalarCount.
@inline(__always)
private func centreColumns<V: SIMD>(_: V.Type, _ x: UnsafePointer<Float>, minus s: UnsafePointer<Float>,
                                    into out: UnsafeMutablePointer<Float>, rows b: Range<Int>, channels m: Int, from a: Int,
                                    sums t: UnsafeMutablePointer<Float>) where V.Scalar == Float {
  let sv = columns(V.self, s + a)
  var acc = V()
  for i in b {
    let v = columns(V.self, x + i * m + a) - sv
    UnsafeMutableRawPointer(out + i * m + a).storeBytes(of: v, as: V.self)
    acc += v
  }
  UnsafeMutableRawPointer(t + a).storeBytes(of: columns(V.self, t + a) + acc, as: V.self)
}

/// dx rows += corr rows − r, in the same column blocks.
@inline(__always)
private func addCorrection(_ dx: UnsafeMutablePointer<Float>, _ corr: UnsafePointer<Float>, minus r: UnsafePointer<Float>,
                           rows b: Range<Int>, channels m: Int) {
  @inline(__always) func add<V: SIMD>(_: V.Type, _ a: Int) where V.Scalar == Float {
    let rv = columns(V.self, r + a)
    for i in b {
      let p = dx + i * m + a
      UnsafeMutableRawPointer(p).storeBytes(of: columns(V.self, p) + (columns(V.self, corr + i * m + a) - rv), as: V.self)
    }
  }
  var a = 0
  while a + 16 <= m { add(SIMD16<Float>.self, a); a += 16 }
  while a + 8 <= m { add(SIMD8<Float>.self, a); a += 8 }
  while a < m {
    for i in b { dx[i * m + a] += corr[i * m + a] - r[a] }
    a += 1
  }
}

/// V.scalarCount floats from p (unaligned).
@inline(__always)
private func columns<V: SIMD>(_: V.Type, _ p: UnsafePointer<Float>) -> V where V.Scalar == Float {
  UnsafeRawPointer(p).loadUnaligned(as: V.self)
}
