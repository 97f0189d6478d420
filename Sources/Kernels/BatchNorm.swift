import KernelRows

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
}

// The pieces below are what the fused MobileNet graph calls (issue 12, item 3): the producer of an
// activation accumulates its statistics (`ChannelStatistics`, see Depthwise/Pointwise/Conv2D),
// `batchNormForward(fromSums:)` turns them into mean/σ and applies BN(+ReLU6)(+residual) in one pass;
// in backward the producer of `da` accumulates the reductions (`BatchNormReduction`) and
// `batchNormBackward(fromSums:)` writes dz in one pass. `batchNormForward`/`batchNormBackward` with
// no sums compute them in a separate pass (the unfused path, and what the tests compare against).

/// Runs `body(chunk, rows, partialSums)` over row chunks in parallel, each chunk with zeroed [2·C]
/// double partials, and writes their total into `out` (2·C doubles). A caller with other per-chunk
/// state sizes it by `chunkCount` with the same `minPerChunk`, `split` and `grain`.
func parallelChannelSums(rows M: Int, channels C: Int, minPerChunk: Int = 64, split: ChunkSplit = .perThread, grain: Int = 1,
                         scratch: Scratch, into out: UnsafeMutablePointer<Double>,
                         _ body: (_ chunk: Int, _ rows: Range<Int>, _ partial: UnsafeMutablePointer<Double>) -> Void) {
  let chunks = chunkCount(M, minPerChunk: minPerChunk, split: split, grain: grain)
  let partial = scratch.zeroedDoubles(max(chunks, 1) * 2 * C)
  let used = parallelChunks(M, minPerChunk: minPerChunk, split: split, grain: grain) { chunk, range in
    body(chunk, range, partial + chunk * 2 * C)
  }
  out.update(repeating: 0, count: 2 * C)
  for ch in 0..<used {
    let acc = partial + ch * 2 * C
    for c in 0..<(2 * C) { out[c] += acc[c] }
  }
}

/// Shifted sums of z (Σ(z − shift), Σ(z − shift)²) in a separate pass; `shift` = z's first row.
public func batchNormStatistics(z: UnsafePointer<Float>, rows M: Int, channels C: Int, shift: UnsafeMutablePointer<Float>,
                                sums: UnsafeMutablePointer<Double>, scratch: Scratch) {
  guard M > 0 else { sums.update(repeating: 0, count: 2 * C); return }
  shift.update(from: z, count: C)
  let stats = ChannelStatistics(shift: UnsafePointer(shift), sums: sums)
  let rows = KernelISA.rows
  parallelChannelSums(rows: M, channels: C, split: .balanced, scratch: scratch, into: sums) { _, range, partial in
    rows.channelStatistics(z: z, channels: C, rows: range, stats.with(sums: partial))
  }
}

/// scale = γ·invStd, shift = β − μ·scale: the per-channel affine map of BN, as forward applies it and
/// backward recomputes the ReLU6 mask with it.
public func batchNormScaleShift(scale: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>,
                                gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                                mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>, channels C: Int) {
  for c in 0..<C {
    scale[c] = gamma[c] * invStd[c]
    shift[c] = beta[c] - mean[c] * scale[c]
  }
}

/// a = act((z − mean)·invStd·γ + β). Fills `mean`/`invStd` (saved for backward) and, in training,
/// updates the moving statistics. Statistics in a separate pass over z.
public func batchNormForward(a: UnsafeMutablePointer<Float>, z: UnsafePointer<Float>,
                             gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                             mean: UnsafeMutablePointer<Float>, invStd: UnsafeMutablePointer<Float>,
                             movingMean: UnsafeMutablePointer<Float>, movingVariance: UnsafeMutablePointer<Float>,
                             rows M: Int, channels C: Int, training: Bool, relu6: Bool,
                             decay: Float = BatchNormDefaults.decay, epsilon: Float = BatchNormDefaults.epsilon,
                             scratch: Scratch) {
  withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * C) { sumsBuf in
    withUnsafeTemporaryAllocation(of: Float.self, capacity: C) { shiftBuf in
      let sums = sumsBuf.baseAddress!, shift = shiftBuf.baseAddress!
      if training { batchNormStatistics(z: z, rows: M, channels: C, shift: shift, sums: sums, scratch: scratch) }
      batchNormForward(fromSums: UnsafePointer(sums), shift: UnsafePointer(shift), a: a, z: z, gamma: gamma, beta: beta,
                       mean: mean, invStd: invStd, movingMean: movingMean, movingVariance: movingVariance,
                       rows: M, channels: C, training: training, relu6: relu6, decay: decay, epsilon: epsilon)
    }
  }
}

/// The apply half: mean/invStd from the shifted sums (training) or the moving statistics
/// (inference), moving averages updated in training, then a = act(BN(z)) + residual in one pass.
/// `scaleShift` ([2·C], optional) receives the per-channel scale and shift used. With `a` nil nothing
/// is applied: the consumer applies scale and shift as it reads z (`PendingBatchNorm`).
public func batchNormForward(fromSums sums: UnsafePointer<Double>, shift statShift: UnsafePointer<Float>,
                             a: UnsafeMutablePointer<Float>?, z: UnsafePointer<Float>,
                             gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                             mean: UnsafeMutablePointer<Float>, invStd: UnsafeMutablePointer<Float>,
                             movingMean: UnsafeMutablePointer<Float>, movingVariance: UnsafeMutablePointer<Float>,
                             rows M: Int, channels C: Int, training: Bool, relu6: Bool,
                             residual: UnsafePointer<Float>? = nil, scaleShift: UnsafeMutablePointer<Float>? = nil,
                             decay: Float = BatchNormDefaults.decay, epsilon: Float = BatchNormDefaults.epsilon) {
  if training && M > 0 {
    let m = Double(M)
    for c in 0..<C {
      let meanShifted = sums[c] / m
      let variance = max(sums[C + c] / m - meanShifted * meanShifted, 0)
      let mu = meanShifted + Double(statShift[c])
      mean[c] = Float(mu)
      invStd[c] = Float(1 / (variance + Double(epsilon)).squareRoot())
      let unbiased = M > 1 ? variance * m / (m - 1) : variance
      movingMean[c] -= (movingMean[c] - Float(mu)) * (1 - decay)
      movingVariance[c] -= (movingVariance[c] - Float(unbiased)) * (1 - decay)
    }
  } else {
    for c in 0..<C {
      mean[c] = movingMean[c]
      invStd[c] = 1 / (movingVariance[c] + epsilon).squareRoot()
    }
  }
  withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * C) { buf in
    let ss = scaleShift ?? buf.baseAddress!
    let scale = ss, shift = ss + C
    batchNormScaleShift(scale: scale, shift: shift, gamma: gamma, beta: beta, mean: mean, invStd: invStd, channels: C)
    guard let a else { return }
    let rows = KernelISA.rows
    parallelChunks(M, minPerChunk: 64, split: .balanced) { _, range in
      rows.batchNormApply(a: a, z: z, scale: scale, shift: shift, channels: C, rows: range, relu6: relu6, residual: residual)
    }
  }
}

/// Backward of `batchNormForward` (with its ReLU6 if `relu6`). `dz` may alias `da`.
/// dγ += Σ g·x̂, dβ += Σ g, where g = da masked by 0 < y < 6 (TF's Relu6Grad) and x̂ = (z − mean)·invStd.
/// Training: dz = γ·invStd·(g − mean(g) − x̂·mean(g·x̂)); inference: dz = γ·invStd·g.
/// The ReLU6 mask is recomputed from z exactly as forward computed y (same scale/shift, same
/// rounding) rather than read from the saved activation: one memory stream less per pass.
/// This form makes the reductions in a separate pass over da.
public func batchNormBackward(dz: UnsafeMutablePointer<Float>, da: UnsafePointer<Float>,
                              z: UnsafePointer<Float>,
                              gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                              mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                              dGamma: UnsafeMutablePointer<Float>, dBeta: UnsafeMutablePointer<Float>,
                              rows M: Int, channels C: Int, training: Bool, relu6: Bool, scratch: Scratch) {
  guard M > 0 else { return }
  withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * C) { buf in
    withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * C) { sumsBuf in
      let scale = buf.baseAddress!, shift = scale + C, sums = sumsBuf.baseAddress!
      batchNormScaleShift(scale: scale, shift: shift, gamma: gamma, beta: beta, mean: mean, invStd: invStd, channels: C)
      let red = BatchNormReduction(z: z, scale: scale, shift: shift, mean: mean, invStd: invStd, relu6: relu6, sums: sums)
      batchNormReduce(da: UnsafeMutablePointer(mutating: da), residual: nil, rows: M, channels: C, red, scratch: scratch)
      batchNormBackward(fromSums: UnsafePointer(sums), dz: dz, da: da, red, dGamma: dGamma, dBeta: dBeta,
                        rows: M, channels: C, training: training)
    }
  }
}

/// The reductions of a BN backward in their own pass: red.sums = (Σg, Σg·x̂) over da (+ residual,
/// written back into da first when given; da is only written then).
public func batchNormReduce(da: UnsafeMutablePointer<Float>, residual: UnsafePointer<Float>?, rows M: Int, channels C: Int,
                            _ red: BatchNormReduction, scratch: Scratch) {
  precondition(!red.storesScaledGradient, "only the depthwise input gradient stores the scaled gradient")
  let rows = KernelISA.rows
  parallelChannelSums(rows: M, channels: C, split: .balanced, scratch: scratch, into: red.sums) { _, range, partial in
    rows.batchNormReduce(da: da, residual: residual, channels: C, rows: range, red.with(sums: partial))
  }
}

/// The apply half of the BN backward, from reductions already made (by the kernel that produced da,
/// or by `batchNormReduce`): dγ, dβ accumulated, dz written in one pass (dz may alias da; rounded to
/// bf16 as it is written with `roundOutputToBF16`: the conv backward that reads it wants bf16 operands).
public func batchNormBackward(fromSums sums: UnsafePointer<Double>, dz: UnsafeMutablePointer<Float>,
                              da: UnsafePointer<Float>, _ red: BatchNormReduction,
                              dGamma: UnsafeMutablePointer<Float>, dBeta: UnsafeMutablePointer<Float>,
                              rows M: Int, channels C: Int, training: Bool, roundOutputToBF16: Bool = false) {
  guard M > 0 else { return }
  withBatchNormBackward(fromSums: sums, da: da, red, dGamma: dGamma, dBeta: dBeta, rows: M, channels: C,
                        training: training, roundOutputToBF16: roundOutputToBF16) { pending in
    parallelChunks(M, minPerChunk: 64, split: .balanced) { _, range in pending.apply(dz: dz, rows: range) }
  }
}

/// A BN backward whose apply half its consumer runs on the rows it reads (the depthwise backward,
/// into a per-thread buffer), so dz is never written whole: dz = k·(g − meanG − (z − μ)·meanGX) with
/// g = da, masked by ReLU6 where the layer has one.
public struct PendingBatchNormBackward {
  public let da: UnsafePointer<Float>
  public let reduction: BatchNormReduction
  public let channels: Int
  let k, meanG, meanGX: UnsafePointer<Float>
  /// The reductions it was made from: Σg ([C]), then Σg·x̂ ([C]).
  let sums: UnsafePointer<Double>
  let roundToBF16: Bool
  /// dz rows `rows` (absolute row indices; dz addressed by absolute row, like da).
  @inline(__always)
  public func apply(dz: UnsafeMutablePointer<Float>, rows range: Range<Int>) {
    let rows = KernelISA.rows
    applyThenRound(dz, channels: channels, rows: range, round: roundToBF16) { r in
      rows.batchNormBackwardApply(dz: dz, da: da, reduction, k: k, meanG: meanG, meanGX: meanGX, channels: channels, rows: r)
    }
  }
  /// dz rows `rows` written into `buffer` (rows.count · channels floats), returned as a base addressed
  /// by absolute row, like da: the per-thread block of a consumer that never stores dz whole.
  @inline(__always)
  public func block(rows range: Range<Int>, into buffer: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
    let base = buffer - range.lowerBound * channels
    apply(dz: base, rows: range)
    return UnsafePointer(base)
  }
}

/// dγ, dβ accumulated from the reductions, then body with the apply half pending (valid inside body).
public func withBatchNormBackward<R>(fromSums sums: UnsafePointer<Double>, da: UnsafePointer<Float>, _ red: BatchNormReduction,
                                     dGamma: UnsafeMutablePointer<Float>, dBeta: UnsafeMutablePointer<Float>,
                                     rows M: Int, channels C: Int, training: Bool, roundOutputToBF16: Bool = false,
                                     _ body: (PendingBatchNormBackward) -> R) -> R {
  withUnsafeTemporaryAllocation(of: Float.self, capacity: 3 * C) { buf in
    let k = buf.baseAddress!, meanG = k + C, meanGX = k + 2 * C
    for c in 0..<C {
      dBeta[c] += Float(sums[c])
      dGamma[c] += Float(sums[C + c])
      k[c] = red.scale[c]
      meanG[c] = training && M > 0 ? Float(sums[c] / Double(M)) : 0
      // x̂·mean(g·x̂) = (z − μ)·invStd·Σ(g·x̂)/M, folded as (z − μ)·meanGX.
      meanGX[c] = training && M > 0 ? Float(sums[C + c] / Double(M)) * red.invStd[c] : 0
    }
    return body(PendingBatchNormBackward(da: da, reduction: red, channels: C, k: k, meanG: meanG, meanGX: meanGX,
                                         sums: sums, roundToBF16: roundOutputToBF16))
  }
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
