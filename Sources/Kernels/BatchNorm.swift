// Batch normalisation over the N·H·W rows of an NHWC tensor, with the following ReLU6 fused in
// (TF-slim: conv → BatchNorm → ReLU6; the `project` layer has no activation).
//
// Training mode normalises with the batch mean and biased variance and moves the moving averages
// toward the batch statistics: moving -= (moving − batch)·(1 − decay), using the unbiased
// (Bessel-corrected) batch variance for moving_variance, as TF's fused batch norm does.
// Inference mode normalises with the moving statistics.
//
// Saved for backward: the conv output z (input to BN), the activation a (output) and per-channel
// mean and 1/σ. Statistics are summed in float over short pixel blocks and in double across blocks,
// shifted by the first pixel (the shifted-data algorithm), so one pass is enough and stays accurate.

public enum BatchNormDefaults {
  /// TF-slim mobilenet training_scope: bn_decay = 0.997.
  public static let decay: Float = 0.997
  /// slim.batch_norm default epsilon.
  public static let epsilon: Float = 0.001
  /// Pixels summed in float before folding into the double accumulators.
  static let blockPixels = 32
}

/// Per-channel sums Σ f0(row,c), Σ f1(row,c) over `rows`, in double, parallel over row chunks.
/// `body(rowPointerOffset, s0, s1)` adds one row's contribution into the float block sums.
@inline(__always)
private func channelSums(rows M: Int, channels C: Int, scratch: Scratch,
                         into out: UnsafeMutablePointer<Double>,
                         _ body: (_ row: Int, _ s0: UnsafeMutablePointer<Float>, _ s1: UnsafeMutablePointer<Float>) -> Void) {
  let chunks = chunkCount(M, minPerChunk: 64)
  let partial = scratch.zeroedDoubles(max(chunks, 1) * 2 * C)
  let used = parallelChunks(M, minPerChunk: 64) { chunk, range in
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * C) { blk in
      let s0 = blk.baseAddress!, s1 = s0 + C
      let acc = partial + chunk * 2 * C
      var p = range.lowerBound
      while p < range.upperBound {
        let end = min(p + BatchNormDefaults.blockPixels, range.upperBound)
        s0.update(repeating: 0, count: 2 * C)
        for r in p..<end { body(r, s0, s1) }
        for c in 0..<(2 * C) { acc[c] += Double(s0[c]) }
        p = end
      }
    }
  }
  out.update(repeating: 0, count: 2 * C)
  for ch in 0..<used {
    let acc = partial + ch * 2 * C
    for c in 0..<(2 * C) { out[c] += acc[c] }
  }
}

/// a = act((z − mean)·invStd·γ + β). Fills `mean`/`invStd` (saved for backward) and, in training,
/// updates the moving statistics.
public func batchNormForward(a: UnsafeMutablePointer<Float>, z: UnsafePointer<Float>,
                             gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                             mean: UnsafeMutablePointer<Float>, invStd: UnsafeMutablePointer<Float>,
                             movingMean: UnsafeMutablePointer<Float>, movingVariance: UnsafeMutablePointer<Float>,
                             rows M: Int, channels C: Int, training: Bool, relu6: Bool,
                             decay: Float = BatchNormDefaults.decay, epsilon: Float = BatchNormDefaults.epsilon,
                             scratch: Scratch) {
  if training && M > 0 {
    withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * C) { sumsBuf in
    let sums = sumsBuf.baseAddress!
    let shift = z  // first row: a sample of each channel close to its mean
    channelSums(rows: M, channels: C, scratch: scratch, into: sums) { r, s0, s1 in
      let row = z + r * C
      var c = 0
      while c + 16 <= C {
        let d = load16(row + c) - load16(shift + c)
        store16(load16(s0 + c) + d, s0 + c)
        store16(load16(s1 + c) + d * d, s1 + c)
        c += 16
      }
      while c < C {
        let d = row[c] - shift[c]
        s0[c] += d
        s1[c] += d * d
        c += 1
      }
    }
    let m = Double(M)
    for c in 0..<C {
      let meanShifted = sums[c] / m
      let variance = max(sums[C + c] / m - meanShifted * meanShifted, 0)
      let mu = meanShifted + Double(shift[c])
      mean[c] = Float(mu)
      invStd[c] = Float(1 / (variance + Double(epsilon)).squareRoot())
      let unbiased = M > 1 ? variance * m / (m - 1) : variance
      movingMean[c] -= (movingMean[c] - Float(mu)) * (1 - decay)
      movingVariance[c] -= (movingVariance[c] - Float(unbiased)) * (1 - decay)
    }
    }
  } else {
    for c in 0..<C {
      mean[c] = movingMean[c]
      invStd[c] = 1 / (movingVariance[c] + epsilon).squareRoot()
    }
  }
  withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * C) { buf in
    let scale = buf.baseAddress!, shift = scale + C
    for c in 0..<C {
      scale[c] = gamma[c] * invStd[c]
      shift[c] = beta[c] - mean[c] * scale[c]
    }
    let scaleP = UnsafePointer(scale), shiftP = UnsafePointer(shift)
    parallelChunks(M, minPerChunk: 64) { _, range in
      for r in range {
        let zi = z + r * C, ai = a + r * C
        var c = 0
        while c + 16 <= C {
          var v = load16(zi + c) * load16(scaleP + c) + load16(shiftP + c)
          // replacing(with:where:) compiles to blends; clamped(lowerBound:upperBound:) did not vectorise.
          if relu6 { v = v.replacing(with: 0, where: v .< 0).replacing(with: 6, where: v .> 6) }
          store16(v, ai + c)
          c += 16
        }
        while c < C {
          let v = zi[c] * scaleP[c] + shiftP[c]
          ai[c] = relu6 ? min(max(v, 0), 6) : v
          c += 1
        }
      }
    }
  }
}

/// Backward of `batchNormForward` (with its ReLU6 if `relu6`). `dz` may alias `da`.
/// dγ += Σ g·x̂, dβ += Σ g, where g = da masked by 0 < y < 6 (TF's Relu6Grad) and x̂ = (z − mean)·invStd.
/// Training: dz = γ·invStd·(g − mean(g) − x̂·mean(g·x̂)); inference: dz = γ·invStd·g.
/// The ReLU6 mask is recomputed from z exactly as forward computed y (same scale/shift, same
/// rounding) rather than read from the saved activation: one memory stream less per pass.
public func batchNormBackward(dz: UnsafeMutablePointer<Float>, da: UnsafePointer<Float>,
                              z: UnsafePointer<Float>,
                              gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                              mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                              dGamma: UnsafeMutablePointer<Float>, dBeta: UnsafeMutablePointer<Float>,
                              rows M: Int, channels C: Int, training: Bool, relu6: Bool, scratch: Scratch) {
  guard M > 0 else { return }
  withUnsafeTemporaryAllocation(of: Float.self, capacity: 5 * C) { buf in
    let scale = buf.baseAddress!, shift = scale + C, k = scale + 2 * C, meanG = scale + 3 * C, meanGX = scale + 4 * C
    for c in 0..<C {
      scale[c] = gamma[c] * invStd[c]
      shift[c] = beta[c] - mean[c] * scale[c]
    }
    let scaleP = UnsafePointer(scale), shiftP = UnsafePointer(shift)
    withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * C) { sumsBuf in
      let sums = sumsBuf.baseAddress!
      channelSums(rows: M, channels: C, scratch: scratch, into: sums) { r, s0, s1 in
        let dai = da + r * C, zi = z + r * C
        var c = 0
        while c + 16 <= C {
          let zv = load16(zi + c)
          let xhat = (zv - load16(mean + c)) * load16(invStd + c)
          var g = load16(dai + c)
          if relu6 { g = relu6Mask16(g, zv * load16(scaleP + c) + load16(shiftP + c)) }
          store16(load16(s0 + c) + g, s0 + c)
          store16(load16(s1 + c) + g * xhat, s1 + c)
          c += 16
        }
        while c < C {
          let xhat = (zi[c] - mean[c]) * invStd[c]
          let g = relu6 ? relu6Gradient(dai[c], zi[c] * scaleP[c] + shiftP[c]) : dai[c]
          s0[c] += g
          s1[c] += g * xhat
          c += 1
        }
      }
      for c in 0..<C {
        dBeta[c] += Float(sums[c])
        dGamma[c] += Float(sums[C + c])
        k[c] = scale[c]
        meanG[c] = training ? Float(sums[c] / Double(M)) : 0
        // x̂·mean(g·x̂) = (z − μ)·invStd·Σ(g·x̂)/M, folded as (z − μ)·meanGX.
        meanGX[c] = training ? Float(sums[C + c] / Double(M)) * invStd[c] : 0
      }
    }
    let kP = UnsafePointer(k), mgP = UnsafePointer(meanG), mgxP = UnsafePointer(meanGX)
    parallelChunks(M, minPerChunk: 64) { _, range in
      for r in range {
        let dai = da + r * C, zi = z + r * C, dzi = dz + r * C
        var c = 0
        while c + 16 <= C {
          let zv = load16(zi + c)
          var g = load16(dai + c)
          if relu6 { g = relu6Mask16(g, zv * load16(scaleP + c) + load16(shiftP + c)) }
          store16(load16(kP + c) * (g - load16(mgP + c) - (zv - load16(mean + c)) * load16(mgxP + c)), dzi + c)
          c += 16
        }
        while c < C {
          let g = relu6 ? relu6Gradient(dai[c], zi[c] * scaleP[c] + shiftP[c]) : dai[c]
          dzi[c] = kP[c] * (g - mgP[c] - (zi[c] - mean[c]) * mgxP[c])
          c += 1
        }
      }
    }
  }
}

/// g where 0 < y < 6, else 0 (Relu6Grad, 16 lanes).
@inline(__always)
private func relu6Mask16(_ g: SIMD16<Float>, _ y: SIMD16<Float>) -> SIMD16<Float> {
  g.replacing(with: 0, where: (y .<= 0) .| (y .>= 6))
}

// MARK: - Naive reference (two-pass statistics in double, separate ReLU6)

public func batchNormForwardNaive(a: UnsafeMutablePointer<Float>, z: UnsafePointer<Float>,
                                  gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                                  mean: UnsafeMutablePointer<Float>, invStd: UnsafeMutablePointer<Float>,
                                  movingMean: UnsafeMutablePointer<Float>, movingVariance: UnsafeMutablePointer<Float>,
                                  rows M: Int, channels C: Int, training: Bool, relu6: Bool,
                                  decay: Float = BatchNormDefaults.decay, epsilon: Float = BatchNormDefaults.epsilon) {
  for c in 0..<C {
    var mu = Double(movingMean[c]), variance = Double(movingVariance[c])
    if training {
      mu = 0
      for r in 0..<M { mu += Double(z[r * C + c]) }
      mu /= Double(M)
      variance = 0
      for r in 0..<M { let d = Double(z[r * C + c]) - mu; variance += d * d }
      variance /= Double(M)
      let unbiased = M > 1 ? variance * Double(M) / Double(M - 1) : variance
      movingMean[c] = Float(Double(movingMean[c]) * Double(decay) + mu * (1 - Double(decay)))
      movingVariance[c] = Float(Double(movingVariance[c]) * Double(decay) + unbiased * (1 - Double(decay)))
    }
    let inv = 1 / (variance + Double(epsilon)).squareRoot()
    mean[c] = Float(mu)
    invStd[c] = Float(inv)
    for r in 0..<M {
      let y = (Double(z[r * C + c]) - mu) * inv * Double(gamma[c]) + Double(beta[c])
      a[r * C + c] = relu6 ? Float(min(max(y, 0), 6)) : Float(y)
    }
  }
}

public func batchNormBackwardNaive(dz: UnsafeMutablePointer<Float>, da: UnsafePointer<Float>,
                                   a: UnsafePointer<Float>, z: UnsafePointer<Float>,
                                   gamma: UnsafePointer<Float>, mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                   dGamma: UnsafeMutablePointer<Float>, dBeta: UnsafeMutablePointer<Float>,
                                   rows M: Int, channels C: Int, training: Bool, relu6: Bool) {
  for c in 0..<C {
    var g = [Double](repeating: 0, count: M), xhat = [Double](repeating: 0, count: M)
    var sg = 0.0, sgx = 0.0
    for r in 0..<M {
      let i = r * C + c
      g[r] = relu6 ? Double(relu6Gradient(da[i], a[i])) : Double(da[i])
      xhat[r] = (Double(z[i]) - Double(mean[c])) * Double(invStd[c])
      sg += g[r]; sgx += g[r] * xhat[r]
    }
    dBeta[c] += Float(sg)
    dGamma[c] += Float(sgx)
    let k = Double(gamma[c]) * Double(invStd[c])
    for r in 0..<M {
      let v = training ? k * (g[r] - sg / Double(M) - xhat[r] * sgx / Double(M)) : k * g[r]
      dz[r * C + c] = Float(v)
    }
  }
}
