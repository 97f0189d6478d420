// 1×1 convolution = GEMM over the N·H·W rows of an NHWC tensor, through CBLAS:
//   forward        y[M,Co]  = x[M,Ci] · w[Ci,Co]
//   input grad     dx[M,Ci] = dy[M,Co] · wᵀ
//   weight grad    dw[Ci,Co] += xᵀ · dy
// w is TF's [1,1,Ci,Co] layout, which is exactly the row-major [Ci,Co] matrix GEMM wants.
// Also the logits layer: the same product on [N, C] plus a bias.
import CBLAS

public func pointwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             rows: Int, inChannels: Int, outChannels: Int) {
  guard rows > 0 else { return }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(outChannels), Int32(inChannels),
              1, x, Int32(inChannels), w, Int32(outChannels), 0, y, Int32(outChannels))
}

/// dw += xᵀ·dy; dx (if given) = dy·wᵀ (overwritten).
public func pointwiseBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                              dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              rows: Int, inChannels: Int, outChannels: Int) {
  guard rows > 0 else { return }
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(inChannels), Int32(outChannels), Int32(rows),
              1, x, Int32(inChannels), dy, Int32(outChannels), 1, dw, Int32(outChannels))
  if let dx {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(inChannels), Int32(outChannels),
                1, dy, Int32(outChannels), w, Int32(outChannels), 0, dx, Int32(inChannels))
  }
}

/// Logits: y[N,K] = x[N,C]·w[C,K] + b[K].
public func denseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                         b: UnsafePointer<Float>, rows: Int, inChannels: Int, outChannels: Int) {
  for r in 0..<rows { (y + r * outChannels).update(from: b, count: outChannels) }
  guard rows > 0 else { return }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(outChannels), Int32(inChannels),
              1, x, Int32(inChannels), w, Int32(outChannels), 1, y, Int32(outChannels))
}

/// dw += xᵀ·dy; db += Σrows dy; dx (if given) = dy·wᵀ.
public func denseBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                          db: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                          w: UnsafePointer<Float>, rows: Int, inChannels: Int, outChannels: Int) {
  for r in 0..<rows {
    let g = dy + r * outChannels
    for k in 0..<outChannels { db[k] += g[k] }
  }
  pointwiseBackward(dx: dx, dw: dw, dy: dy, x: x, w: w, rows: rows, inChannels: inChannels, outChannels: outChannels)
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
