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
// Every coefficient is known before the pass (the reductions behind meanG, meanGX were made by the
// depthwise backward), so one pass reads P and x and writes dx; the k×k products (x̃ᵀx̃, x̃·M) are
// 1/6 of the block's FMAs at MobileNetV2's expansion 6, on rows already in cache. The shift keeps
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
  /// Narrow inputs (at most `narrowInputChannels`) from `narrowMinimumBytes`: their k×k products cost
  /// little, and on Zen 4 0.35/96 b64's layer 3 (k 8, z 28 MB) took 0.6 ms less a step scaled, while
  /// 1.0/224 b32's layers 6 and 9 (k 24, z 58 MB) took 0.1–0.7 ms more (round 20).
  public static var narrowInputChannels = 16, narrowMinimumBytes = 16 << 20
  /// Whether an expand layer of `rows` pixels takes the scaled path: its output large enough, and
  /// both of its backward products on our GEMM kernels (the only ones `pointwiseBackwardScaled` runs).
  public static func use(rows: Int, inChannels: Int, outChannels: Int) -> Bool {
    let bytes = rows * outChannels * MemoryLayout<Float>.stride
    return enabled && (bytes >= minimumBytes || (inChannels <= narrowInputChannels && bytes >= narrowMinimumBytes))
      && useOwnGEMM(.weightGradient, rows: rows, k: inChannels, n: outChannels)
      && useOwnGEMM(.product, rows: rows, k: outChannels, n: inChannels)
  }
}

/// Rows of x averaged for the shift s.
private let shiftSampleRows = 256

/// dW += xᵀ·dz, dx = dz·wᵀ (+ residual, with the reductions `reduce` of the layer that produced x),
/// where dz is the BN backward of `outputGradient`, whose `da` holds P = k·mask(dA) (the depthwise
/// backward's `storesScaledGradient` output) instead of dA: z is not read (see the top of this file).
/// Our GEMM kernels only (callers check `useOwnGEMM`).
public func pointwiseBackwardScaled(dx: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                                    outputGradient og: PendingBatchNormBackward, x: UnsafePointer<Float>,
                                    w: UnsafePointer<Float>, rows: Int, inChannels m: Int, outChannels n: Int,
                                    scratch: Scratch, residual: UnsafePointer<Float>?, reduce: BatchNormReduction?) {
  precondition(residual == nil || reduce != nil, "a residual gradient is added by the reduction pass")
  precondition(reduce?.storesScaledGradient != true, "only the depthwise input gradient stores the scaled gradient")
  precondition(og.channels == n, "outputGradient has \(og.channels) channels, the layer \(n)")
  guard rows > 0 else { reduce?.sums.update(repeating: 0, count: 2 * m); return }
  let kernels = KernelISA.rows
  let p = og.da

  // The coefficients, in doubles: s, μ̃, q, v, M and r.
  // s: the float the kernels subtract, as doubles.
  let s = sampledRowMean(x, rows: rows, channels: m, sample: shiftSampleRows, spread: false).map(Double.init)
  var v = [Double](repeating: 0, count: n), q = [Double](repeating: 0, count: n)
  for j in 0..<n {
    var sw = 0.0
    for a in 0..<m { sw += s[a] * Double(w[a * n + j]) }
    let k = Double(og.k[j])
    v[j] = k * Double(og.meanGX[j])
    q[j] = k * Double(og.meanG[j]) - (Double(og.reduction.mean[j]) - sw) * v[j]
  }
  var negM = [Float](repeating: 0, count: m * m), r = [Float](repeating: 0, count: m)
  var shift = [Float](repeating: 0, count: m)
  for a in 0..<m {
    var ra = 0.0
    for j in 0..<n { ra += q[j] * Double(w[a * n + j]) }
    r[a] = Float(ra)
    shift[a] = Float(s[a])
    for b in 0..<m {
      var mab = 0.0
      for j in 0..<n { mab += Double(w[a * n + j]) * v[j] * Double(w[b * n + j]) }
      negM[a * m + b] = Float(-mab)
    }
  }

  let blockRows = backwardBlockRows(inChannels: m, outChannels: n, own: true)
  let split = weightPartialSplit(rows: rows, m: m, n: n)
  let chunks = chunkCount(rows, minPerChunk: gemmMinRowsPerThread, split: split, grain: blockRows)
  let prefetchNext = NextBlockPrefetch.use(tensorBytes: rows * n * MemoryLayout<Float>.stride)
  // One scratch region: the weight partials of chunks 1…, the Gram partials, packed wᵀ and −M, the
  // per-thread blocks of x̃·(−M) and block sums of x̃; the per-thread blocks of x̃ in the input-rows region.
  let threads = Compute.threads
  let partialFloats = (chunks - 1) * m * n, gramFloats = chunks * m * m
  let packedWT = gemmPackedCount(k: n, n: m), packedM = gemmPackedCount(k: m, n: m)
  let corrFloats = min(rows, blockRows) * m
  let region = scratch.uninitialized(partialFloats + gramFloats + packedWT + packedM + threads * (corrFloats + m))
  let partials = region, grams = region + partialFloats
  let packedW = grams + gramFloats, packedNegM = packedW + packedWT, corrBlocks = packedNegM + packedM
  let blockSums = corrBlocks + threads * corrFloats
  grams.update(repeating: 0, count: gramFloats)
  let ldw = packGemmB(w, k: n, n: m, transposed: true, into: packedW)
  let ldm = negM.withUnsafeBufferPointer { packGemmB($0.baseAddress!, k: m, n: m, transposed: false, into: packedNegM) }
  let xBlocks = scratch.inputRows(threads * corrFloats)
  var xSums = [Double](repeating: 0, count: chunks * m)

  shift.withUnsafeBufferPointer { shift in
  r.withUnsafeBufferPointer { r in
  xSums.withUnsafeMutableBufferPointer { xSums in
    do {
      func run(_ chunk: Int, _ range: Range<Int>, _ sums: UnsafeMutablePointer<Double>?) {
        let out = chunk == 0 ? dw : partials + (chunk - 1) * m * n
        if chunk > 0 { out.update(repeating: 0, count: m * n) }
        let gram = grams + chunk * m * m, xSum = xSums.baseAddress! + chunk * m
        forEachBlock(range, blockRows: blockRows) { b in
          // x̃ = x − s into the block buffer, and Σx̃ of the block (in floats over one block, then into
          // the doubles).
          let slot = Compute.slot
          let t = blockSums + slot * m
          t.update(repeating: 0, count: m)
          let xt = xBlocks + slot * corrFloats - b.lowerBound * m
          centreRows(x, minus: shift.baseAddress!, into: xt, rows: b, channels: m, sums: t)
          for a in 0..<m { xSum[a] += Double(t[a]) }
          let next = nextBlock(after: b, blockRows: blockRows, in: range)
          let corr = corrBlocks + slot * corrFloats - b.lowerBound * m
          withPrefetch(next.isEmpty || !prefetchNext ? nil : rowBytes(p, next, n), rowBytes(x, next, m),
                       units: gemmFMAs(rows: b.count, k: m, n: n) + gemmFMAs(rows: b.count, k: n, n: m)
                         + 2 * gemmFMAs(rows: b.count, k: m, n: m)) { streams in
            kernels.gemmTransposedA(c: out, a: xt, b: p, k: m, n: n, rows: b, prefetch: streams)
            kernels.gemmTransposedA(c: gram, a: xt, b: xt, k: m, n: m, rows: b, prefetch: streams)
            kernels.gemm(c: dx, a: p, b: packedW, ldb: ldw, k: n, n: m, rows: b, stats: nil, prefetch: streams, stream: false)
            kernels.gemm(c: corr, a: xt, b: packedNegM, ldb: ldm, k: m, n: m, rows: b, stats: nil, prefetch: streams, stream: false)
          }
          addCorrection(dx, corr, minus: r.baseAddress!, rows: b, channels: m)
          if let reduce, let sums {
            kernels.batchNormReduce(da: dx, residual: residual, channels: m, rows: b, reduce.with(sums: sums))
          }
        }
      }
      parallelGemmRows(rows, reduce: reduce, channels: m, split: split, grain: blockRows, scratch: scratch, run)
    }
    addChunkPartials(into: dw, partials, count: m * n, chunks: chunks)
    // dW −= Σx̃·qᵀ + (x̃ᵀx̃)·w·diag(v), and += s·Σdzᵀ: xᵀdz = x̃ᵀdz + s·Σdzᵀ. With training-mode BN,
    // Σdz = ΣP − N·q − Σx̃·w·diag(v) is zero in exact arithmetic, but μ is the mean of the rounded z,
    // kept as a float (~1e-6 off at |μ| ~ 20), and x's mean amplifies what is left (~1e-3 of dW at a
    // mean of 4 in the tests). With inference-mode BN it is ΣP itself (dz = P).
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
