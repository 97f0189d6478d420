// 1×1 convolution = GEMM over the N·H·W rows of an NHWC tensor, through CBLAS:
//   forward        y[M,Co]  = x[M,Ci] · w[Ci,Co]
//   input grad     dx[M,Ci] = dy[M,Co] · wᵀ
//   weight grad    dw[Ci,Co] += xᵀ · dy
// w is TF's [1,1,Ci,Co] layout, which is exactly the row-major [Ci,Co] matrix GEMM wants.
// Also the logits layer: the same product on [N, C] plus a bias.
import CBLAS

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

// Threading of the GEMMs: our threads split the rows (N·H·W) and each makes a single-threaded BLAS
// call on its slice. OpenBLAS's own threading, on these skinny shapes, wakes and joins its pool on
// every call and was slower on 2 threads than on 1 for the 0.35/96 model (0.108 vs 0.095 s/step).
/// Fewer rows than this per thread are not worth a split.
let gemmMinRowsPerThread = 64

/// c[rows, n] = a[rows, k] · b (b is [k, n], or [n, k] read transposed).
func gemmRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
              rows: Int, k: Int, n: Int, transposeB: Bool) {
  guard rows > 0 else { return }
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
