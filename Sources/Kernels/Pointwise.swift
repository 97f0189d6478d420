// 1×1 convolution = GEMM over the N·H·W rows of an NHWC tensor, through CBLAS:
//   forward        y[M,Co]  = x[M,Ci] · w[Ci,Co]
//   input grad     dx[M,Ci] = dy[M,Co] · wᵀ
//   weight grad    dw[Ci,Co] += xᵀ · dy
// w is TF's [1,1,Ci,Co] layout, which is exactly the row-major [Ci,Co] matrix GEMM wants.
// Also the logits layer: the same product on [N, C] plus a bias.
import CBLAS
import KernelRows

public func pointwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             rows: Int, inChannels: Int, outChannels: Int) {
  gemmRows(c: y, a: x, b: w, rows: rows, k: inChannels, n: outChannels, transposeB: false)
}

/// dw += xᵀ·dy; dx (if given) = dy·wᵀ (overwritten).
public func pointwiseBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                              dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              rows: Int, inChannels: Int, outChannels: Int, scratch: Scratch) {
  let partials = scratch.uninitialized(gemmPartialsCount(rows: rows, m: inChannels, n: outChannels))
  gemmTransposedRows(c: dw, a: x, b: dy, rows: rows, m: inChannels, n: outChannels, partials: partials)
  if let dx { gemmRows(c: dx, a: dy, b: w, rows: rows, k: outChannels, n: inChannels, transposeB: true) }
}

/// The forward GEMM with the batch-norm statistics of y made while each block of rows is still in
/// cache (the GEMM runs in blocks of `fusedBlockRows` rows per thread, each followed by its statistics):
/// `shift` (Co floats) receives y's first row, `sums` (2·Co doubles) Σ(y − shift), Σ(y − shift)².
public func pointwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             rows: Int, inChannels: Int, outChannels: Int,
                             statisticsShift shift: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Double>,
                             scratch: Scratch) {
  let (k, n) = (inChannels, outChannels)
  guard rows > 0 else { sums.update(repeating: 0, count: 2 * n); return }
  // Row 0 of y, computed directly, as the shift (any value near the mean will do).
  for o in 0..<n {
    var acc: Float = 0
    for i in 0..<k { acc += x[i] * w[i * n + o] }
    shift[o] = acc
  }
  let stats = ChannelStatistics(shift: UnsafePointer(shift), sums: sums)
  let kernels = KernelISA.rows
  if useOwnGEMM(.product, rows: rows, k: k, n: n) {  // statistics from the kernel's registers
    let packed = scratch.uninitialized(gemmPackedCount(k: k, n: n))
    let ldb = packGemmB(w, k: k, n: n, transposed: false, into: packed)
    parallelChannelSums(rows: rows, channels: n, minPerChunk: gemmMinRowsPerThread, scratch: scratch, into: sums) { _, r, partial in
      kernels.gemm(c: y, a: x, b: packed, ldb: ldb, k: k, n: n, rows: r, stats: stats.with(sums: partial))
    }
    return
  }
  _ = Compute.blasSingleThreaded
  parallelChannelSums(rows: rows, channels: n, minPerChunk: gemmMinRowsPerThread, scratch: scratch, into: sums) { _, r, partial in
    forEachBlock(r, blockRows: fusedBlockRows(k: k, n: n)) { b in
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(b.count), Int32(n), Int32(k),
                  1, x + b.lowerBound * k, Int32(k), w, Int32(n), 0, y + b.lowerBound * n, Int32(n))
      kernels.channelStatistics(z: y, channels: n, rows: b, stats.with(sums: partial))
    }
  }
}

/// Rows per GEMM block in the fused kernels: the output block stays within ~128 KiB (in L2 when its
/// epilogue reads it back), but at least 2·k rows so that packing the [k, n] weights, redone by every
/// call, stays small against the block's own work.
func fusedBlockRows(k: Int, n: Int) -> Int { max(2 * k, 32768 / max(n, 1), 64) }

@inline(__always)
func forEachBlock(_ r: Range<Int>, blockRows: Int, _ body: (Range<Int>) -> Void) {
  var lo = r.lowerBound
  while lo < r.upperBound {
    let hi = min(lo + blockRows, r.upperBound)
    body(lo..<hi)
    lo = hi
  }
}

/// dw += xᵀ·dy; dx = dy·wᵀ (+ residual), with the batch-norm backward reductions of the layer
/// that produced x made over each block of dx while it is in cache (`reduce.sums` overwritten):
/// that layer's BN backward then needs no reduction pass of its own, and the residual gradient no add pass.
public func pointwiseBackward(dx: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                              dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              rows: Int, inChannels: Int, outChannels: Int, scratch: Scratch,
                              residual: UnsafePointer<Float>?, reduce: BatchNormReduction) {
  let partials = scratch.uninitialized(gemmPartialsCount(rows: rows, m: inChannels, n: outChannels))
  gemmTransposedRows(c: dw, a: x, b: dy, rows: rows, m: inChannels, n: outChannels, partials: partials)
  let (k, n) = (outChannels, inChannels)  // dx[rows, n] = dy[rows, k] · wᵀ
  guard rows > 0 else { reduce.sums.update(repeating: 0, count: 2 * n); return }
  let kernels = KernelISA.rows
  _ = Compute.blasSingleThreaded
  let own = useOwnGEMM(.product, rows: rows, k: k, n: n)
  let packed = own ? scratch.uninitialized(gemmPackedCount(k: k, n: n)) : nil  // dw is done with the partials
  let ldb = packed.map { packGemmB(w, k: k, n: n, transposed: true, into: $0) } ?? 0
  parallelChannelSums(rows: rows, channels: n, minPerChunk: gemmMinRowsPerThread, scratch: scratch,
                      into: reduce.sums) { _, r, partial in
    forEachBlock(r, blockRows: fusedBlockRows(k: k, n: n)) { b in
      if let packed {
        kernels.gemm(c: dx, a: dy, b: packed, ldb: ldb, k: k, n: n, rows: b, stats: nil)
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(b.count), Int32(n), Int32(k),
                    1, dy + b.lowerBound * k, Int32(k), w, Int32(k), 0, dx + b.lowerBound * n, Int32(n))
      }
      kernels.batchNormReduce(da: dx, residual: residual, channels: n, rows: b, reduce.with(sums: partial))
    }
  }
}

// Threading of the GEMMs: our threads split the rows (N·H·W) and each makes a single-threaded BLAS
// call on its slice. OpenBLAS's own threading, on these skinny shapes, wakes and joins its pool on
// every call and was slower on 2 threads than on 1 for the 0.35/96 model (0.108 vs 0.095 s/step).
/// Fewer rows than this per thread are not worth a split.
let gemmMinRowsPerThread = 64

/// c[rows, n] = a[rows, k] · b (b is [k, n], or [n, k] read transposed).
func gemmRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
              rows: Int, k: Int, n: Int, transposeB: Bool) {
  guard rows > 0 else { return }
  if useOwnGEMM(.product, rows: rows, k: k, n: n) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: gemmPackedCount(k: k, n: n)) { buf in
      let ldb = packGemmB(b, k: k, n: n, transposed: transposeB, into: buf.baseAddress!)
      ownGemmRows(c: c, a: a, packed: buf.baseAddress!, ldb: ldb, rows: rows, k: k, n: n)
    }
    return
  }
  _ = Compute.blasSingleThreaded
  parallelChunks(rows, minPerChunk: gemmMinRowsPerThread) { _, r in
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans, Int32(r.count), Int32(n), Int32(k),
                1, a + r.lowerBound * k, Int32(k), b, Int32(transposeB ? k : n), 0, c + r.lowerBound * n, Int32(n))
  }
}

/// Floats of partial sums `gemmTransposedRows` needs for this shape.
func gemmPartialsCount(rows: Int, m: Int, n: Int) -> Int {
  max(0, chunkCount(rows, minPerChunk: gemmMinRowsPerThread) - 1) * m * n
}

/// c[m, n] += a[rows, m]ᵀ · b[rows, n]: the sum over rows is split across threads; the first chunk
/// accumulates into c, the others write partials (gemmPartialsCount floats) added at the end.
func gemmTransposedRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                        rows: Int, m: Int, n: Int, partials: UnsafeMutablePointer<Float>) {
  guard rows > 0 else { return }
  if useOwnGEMM(.weightGradient, rows: rows, k: m, n: n) {
    ownGemmTransposedRows(c: c, a: a, b: b, rows: rows, m: m, n: n, partials: partials)
    return
  }
  _ = Compute.blasSingleThreaded
  let chunks = chunkCount(rows, minPerChunk: gemmMinRowsPerThread)
  parallelChunks(rows, minPerChunk: gemmMinRowsPerThread) { chunk, r in
    let out = chunk == 0 ? c : partials + (chunk - 1) * m * n
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(r.count),
                1, a + r.lowerBound * m, Int32(m), b + r.lowerBound * n, Int32(n), chunk == 0 ? 1 : 0, out, Int32(n))
  }
  for p in 0..<(chunks - 1) {
    let src = partials + p * m * n
    for i in 0..<(m * n) { c[i] += src[i] }
  }
}

/// Logits: y[N,K] = x[N,C]·w[C,K] + b[K].
public func denseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                         b: UnsafePointer<Float>, rows: Int, inChannels: Int, outChannels: Int) {
  for r in 0..<rows { (y + r * outChannels).update(from: b, count: outChannels) }
  guard rows > 0 else { return }
  _ = Compute.blasSingleThreaded
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(outChannels), Int32(inChannels),
              1, x, Int32(inChannels), w, Int32(outChannels), 1, y, Int32(outChannels))
}

/// dw += xᵀ·dy; db += Σrows dy; dx (if given) = dy·wᵀ.
public func denseBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                          db: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                          w: UnsafePointer<Float>, rows: Int, inChannels: Int, outChannels: Int, scratch: Scratch) {
  for r in 0..<rows {
    let g = dy + r * outChannels
    for k in 0..<outChannels { db[k] += g[k] }
  }
  pointwiseBackward(dx: dx, dw: dw, dy: dy, x: x, w: w, rows: rows, inChannels: inChannels, outChannels: outChannels,
                    scratch: scratch)
}

// MARK: - Naive reference

public func pointwiseForwardNaive(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                  rows: Int, inChannels: Int, outChannels: Int) {
  for r in 0..<rows { for o in 0..<outChannels {
    var acc = 0.0
    for i in 0..<inChannels { acc += Double(x[r * inChannels + i]) * Double(w[i * outChannels + o]) }
    y[r * outChannels + o] = Float(acc)
  } }
}

public func pointwiseBackwardNaive(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                                   dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                   rows: Int, inChannels: Int, outChannels: Int) {
  for i in 0..<inChannels { for o in 0..<outChannels {
    var acc = 0.0
    for r in 0..<rows { acc += Double(x[r * inChannels + i]) * Double(dy[r * outChannels + o]) }
    dw[i * outChannels + o] += Float(acc)
  } }
  guard let dx else { return }
  for r in 0..<rows { for i in 0..<inChannels {
    var acc = 0.0
    for o in 0..<outChannels { acc += Double(dy[r * outChannels + o]) * Double(w[i * outChannels + o]) }
    dx[r * inChannels + i] = Float(acc)
  } }
}
