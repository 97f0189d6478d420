// Element-wise layers of MobileNetV2: ReLU6, the residual add, global average pooling and dropout.

/// ReLU6 gradient as TF's Relu6Grad: passes where 0 < x < 6 (x may be the input or the output).
@inline(__always) public func relu6Gradient(_ dy: Float, _ x: Float) -> Float { (x > 0 && x < 6) ? dy : 0 }

public func relu6Forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, count: Int) {
  for i in 0..<count { y[i] = min(max(x[i], 0), 6) }
}

public func relu6Backward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, y: UnsafePointer<Float>, count: Int) {
  for i in 0..<count { dx[i] = relu6Gradient(dy[i], y[i]) }
}

/// out = a + b (the residual connection; its backward passes the gradient to both inputs).
public func addForward(out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
  parallelChunks(count, minPerChunk: 65536) { _, r in for i in r { out[i] = a[i] + b[i] } }
}

/// acc += g (gradient accumulation into an existing buffer).
public func addInPlace(_ acc: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, count: Int) {
  parallelChunks(count, minPerChunk: 65536) { _, r in for i in r { acc[i] += g[i] } }
}

/// y[N,C] = mean over H·W of x[N,H,W,C] (slim's global pool, reduce_mean over [1, 2]).
public func globalAvgPoolForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                                 batch: Int, pixels: Int, channels C: Int) {
  let inv = 1 / Float(pixels)
  for n in 0..<batch {
    let out = y + n * C
    out.update(repeating: 0, count: C)
    for p in 0..<pixels {
      let row = x + (n * pixels + p) * C
      for c in 0..<C { out[c] += row[c] }
    }
    for c in 0..<C { out[c] *= inv }
  }
}

public func globalAvgPoolBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                  batch: Int, pixels: Int, channels C: Int) {
  let inv = 1 / Float(pixels)
  for n in 0..<batch {
    let g = dy + n * C
    for p in 0..<pixels {
      let row = dx + (n * pixels + p) * C
      for c in 0..<C { row[c] = g[c] * inv }
    }
  }
}

/// Inverted dropout as slim.dropout: keep each element with probability `keep`, scale kept ones by
/// 1/keep. The mask (0 or 1/keep) is saved for backward.
public func dropoutForward(y: UnsafeMutablePointer<Float>, mask: UnsafeMutablePointer<Float>,
                           x: UnsafePointer<Float>, count: Int, keep: Float, rng: inout RandomState) {
  let scale = 1 / keep
  for i in 0..<count {
    mask[i] = rng.uniform() < keep ? scale : 0
    y[i] = x[i] * mask[i]
  }
}

public func dropoutBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                            mask: UnsafePointer<Float>, count: Int) {
  for i in 0..<count { dx[i] = dy[i] * mask[i] }
}
