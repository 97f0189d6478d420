// The training forward of an expand 1×1 layer and the depthwise after it in one pass, the expanded
// tensor z made a few rows at a time in cache and read there by the depthwise.
//
// Unfused, the expand writes z (T bytes: 154 MB at 1.0/224 b32 layer 3) and the depthwise reads it
// back from memory, because the depthwise applies the expand's batch norm, whose statistics are only
// known once all of z exists. But z = x·w is linear in x, so its statistics follow from x's mean and
// covariance (k×k, k = the block's input channels): mean(z) = mean(x)·w, var(z_j) = w_jᵀ·Cov(x)·w_j.
// One pass over x (T/6 bytes at expansion 6) gives them (`pointwiseStatisticsFromInput`); then each
// thread makes, group by group of output rows, the input rows of z the group's taps read with our
// GEMM (`gemmActivated`: the activation into a cache-resident buffer, the product of the rows the
// thread owns streamed out to z, which backward reads), and runs the depthwise kernel on the buffer
// (`expandDepthwiseForward`). z is written once and never read back in forward. Each z row is the same sum in the same order as the unfused GEMM's (the
// same kernel), so z and the depthwise output are bit-identical to the unfused pass given the same
// batch-norm parameters; the parameters themselves come from the covariance instead of from z, and
// differ from the unfused ones by rounding (tested in ExpandDepthwiseForwardTests).
import Foundation
import KernelRows

/// Which expand → depthwise pairs take the fused training forward.
public enum FusedExpandForward {
  public static let environmentVariable = "MNV2_FUSED_EXPAND"
  /// On unless MNV2_FUSED_EXPAND=0 (tests switch it and lower the threshold to compare both paths).
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  /// Expanded tensors (z) of at least this many bytes: those the depthwise would read back from memory
  /// rather than from L3. 16 MiB (was 32): on Zen 4 (32 MiB L3) 0.35/96 b64's layer 3+4 (z 28 MB) took
  /// 0.8 ms less a step fused, 1.0/224 b32's 28² pairs (z 19 MB) 0.1–0.26 ms each (round 20).
  public static var minimumBytes = 16 << 20
  /// Whether an expand layer of `rows` pixels, k → n channels, takes the fused forward: z large
  /// enough, whole vectors of channels, and its GEMM ours (the only one `expandDepthwiseForward` runs;
  /// with our AVX-512 kernels that is every shape, see `GemmMachine`; on Zen 4 the fused pass made
  /// layers 3+4, 6+7 and 9+10 of 1.0/224 b32 8.2–8.4, 2.4–2.6 and 2.4–3.0 ms faster than OpenBLAS's
  /// product + the depthwise, docs/performance.md round 19).
  public static func use(rows: Int, inChannels k: Int, outChannels n: Int) -> Bool {
    enabled && rows * n * MemoryLayout<Float>.stride >= minimumBytes && n % 16 == 0
      && useOwnGEMM(.product, rows: rows, k: k, n: n)
  }
}

/// Rows of x per block of the moment pass: float sums over a block, then into doubles.
private let momentBlockRows = 256

/// The batch-norm statistics of y = x·w (x [rows, k], w [k, n]) without making y, from x's mean and
/// covariance, in the form `pointwiseForward(statisticsShift:sums:)` leaves them: shift[j] (n floats)
/// near y_j's mean, sums (2·n doubles) = Σ(y − shift), Σ(y − shift)². x is centred by the mean of rows
/// sampled across it before its sums and Gram are made (a block output's mean can be large against its
/// spread). The variance is as exact as the Gram's float block sums: ~1e-7 relative, times
/// ‖w_j‖²·var(x)/var(y_j) where w_j nearly cancels correlated channels (tested).
public func pointwiseStatisticsFromInput(x: UnsafePointer<Float>, w: UnsafePointer<Float>, rows: Int,
                                         inChannels k: Int, outChannels n: Int,
                                         statisticsShift shift: UnsafeMutablePointer<Float>,
                                         sums: UnsafeMutablePointer<Double>, scratch: Scratch) {
  guard rows > 0 else {
    shift.update(repeating: 0, count: n)
    sums.update(repeating: 0, count: 2 * n)
    return
  }
  let kernels = KernelISA.rows
  // The centre every row is centred by: the mean of rows sampled evenly across x (a block output's
  // first rows, the top edge of the first image, can sit far from its mean).
  let centre = sampledRowMean(x, rows: rows, channels: k, sample: momentBlockRows, spread: true)
  // Per chunk: Σx̃ (k doubles) and Σx̃x̃ᵀ (k·k doubles), from float sums over blocks of rows.
  let chunks = chunkCount(rows, minPerChunk: momentBlockRows, split: .balanced, grain: momentBlockRows)
  let perChunk = k + k * k
  var moments = [Double](repeating: 0, count: chunks * perChunk)
  let blockFloats = momentBlockRows * k + k + k * k
  let region = scratch.uninitialized(Compute.threads * blockFloats)  // per thread: a centred block, its sums, its Gram
  centre.withUnsafeBufferPointer { centre in
    moments.withUnsafeMutableBufferPointer { moments in
      _ = parallelChunks(rows, minPerChunk: momentBlockRows, split: .balanced, grain: momentBlockRows) { chunk, r in
        let block = region + Compute.slot * blockFloats, t = block + momentBlockRows * k, gram = t + k
        let sum = moments.baseAddress! + chunk * perChunk, gramSum = sum + k
        forEachBlock(r, blockRows: momentBlockRows) { b in
          let xt = block - b.lowerBound * k
          t.update(repeating: 0, count: k)
          gram.update(repeating: 0, count: k * k)
          centreRows(x, minus: centre.baseAddress!, into: xt, rows: b, channels: k, sums: t)
          kernels.gemmTransposedA(c: gram, a: xt, b: xt, k: k, n: k, rows: b, prefetch: nil)
          for a in 0..<k { sum[a] += Double(t[a]) }
          for i in 0..<(k * k) { gramSum[i] += Double(gram[i]) }
        }
      }
    }
  }
  // Mean m̃ and covariance C of x̃, then ȳ = (s + m̃)·w and var(y_j) = w_jᵀ·C·w_j, in doubles.
  let count = Double(rows)
  var mean = [Double](repeating: 0, count: k), cov = [Double](repeating: 0, count: k * k)
  for c in 0..<chunks {
    let m = c * perChunk
    for a in 0..<k { mean[a] += moments[m + a] }
    for i in 0..<(k * k) { cov[i] += moments[m + k + i] }
  }
  for a in 0..<k { mean[a] /= count }
  for a in 0..<k { for b in 0..<k { cov[a * k + b] = cov[a * k + b] / count - mean[a] * mean[b] } }
  var cw = [Double](repeating: 0, count: k)
  for j in 0..<n {
    var yMean = 0.0
    for a in 0..<k { yMean += (Double(centre[a]) + mean[a]) * Double(w[a * n + j]) }
    for a in 0..<k {
      var t = 0.0
      for b in 0..<k { t += cov[a * k + b] * Double(w[b * n + j]) }
      cw[a] = t
    }
    var variance = 0.0
    for a in 0..<k { variance += Double(w[a * n + j]) * cw[a] }
    let f = Float(yMean), d = yMean - Double(f)
    shift[j] = f
    sums[j] = count * d
    sums[n + j] = count * (max(variance, 0) + d * d)
  }
}

/// The expand's activated rows of one image held in a thread's buffer: input rows lo..<hi.
private struct HeldRows { var image, lo, hi: Int }

/// z = x·we (the expand's raw output, [batch·H·W, C], written for backward) and y = depthwise(act(z))
/// (`expanded`: the expand's batch norm + ReLU6, made from `pointwiseStatisticsFromInput`), with the
/// batch-norm statistics of y as `depthwiseForward(statisticsShift:sums:)` makes them. x is [batch·H·W, k].
///
/// Each thread takes its output rows in groups; a group's input rows are made by `gemmActivated`
/// into a buffer (the activation, in cache) while z streams out, then the depthwise kernel reads the
/// buffer. Rows the previous group of the same image made move to the front instead of being made
/// again; a thread streams to z only the rows its output rows own (input rows [oy0·S, oy1·S), the
/// image's last rows to H), so each row of z is written once although the threads' first groups
/// remake the rows their windows share with the other thread's.
public func expandDepthwiseForward(z: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, expandWeights we: UnsafePointer<Float>,
                                   inChannels k: Int, expanded: PendingBatchNorm, y: UnsafeMutablePointer<Float>,
                                   depthwiseWeights wd: UnsafePointer<Float>, _ s: DepthwiseShape,
                                   statisticsShift shift: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Double>,
                                   scratch: Scratch) {
  let (H, W, C, K, S, Ho, pt) = (s.height, s.width, s.channels, s.kernel, s.stride, s.outHeight, s.padTop)
  precondition(C % 16 == 0 && !expanded.roundToBF16, "the fused forward takes fp32 and whole vectors of channels")
  // The rows a thread owns, [oy0·S, oy1·S) per image, lie within the rows its groups make only if a
  // window reaches at least one stride past its first row (true of MobileNetV2's 3×3, stride 1 and 2).
  precondition(K - pt >= S && S <= K, "the fused forward needs kernel − padTop ≥ stride")
  let outRows = s.batch * Ho
  guard outRows > 0 && s.outWidth > 0 else { sums.update(repeating: 0, count: 2 * C); return }
  // Output pixel (0, 0, 0) as the shift, from z made directly at its taps.
  shift.update(repeating: 0, count: C)
  s.window.forEachTap(oy: 0, ox: 0) { tap, iy, ix in
    let xin = x + (iy * W + ix) * k, wk = wd + tap * C
    for c in 0..<C {
      var zc: Float = 0
      for i in 0..<k { zc += xin[i] * we[i * C + c] }
      shift[c] += expanded.apply(zc, channel: c) * wk[c]
    }
  }
  let g = s.geometry, kernels = KernelISA.rows
  let rowFloats = W * C
  // A group of output rows reads (group − 1)·S + K input rows: as many as one buffer holds (the
  // groups of the depthwise backward).
  let bufferRows = transformRows(s), group = backwardGroupRows(s)
  let packedFloats = gemmPackedCount(k: k, n: C)
  let region = scratch.uninitialized(packedFloats + Compute.threads * bufferRows * rowFloats)  // per thread: a row buffer
  let ldb = packGemmB(we, k: k, n: C, transposed: false, into: region)
  let packed = UnsafePointer(region), buffers = region + packedFloats
  let streamZ = StreamingStores.use(z, count: s.inputCount, channels: C)
  let streamY = StreamingStores.use(y, count: s.outputCount, channels: C)
  let stats = ChannelStatistics(shift: UnsafePointer(shift), sums: sums)
  parallelChannelSums(rows: outRows, channels: C, minPerChunk: 1, split: .balanced, scratch: scratch, into: sums) { _, r, partial in
    let buffer = buffers + Compute.slot * bufferRows * rowFloats
    var held: HeldRows? = nil
    var o = r.lowerBound
    while o < r.upperBound {
      let n = o / Ho
      let end = min(r.upperBound, (n + 1) * Ho, o + group)
      let oy0 = o - n * Ho, oy1 = end - n * Ho
      // The input rows the group's taps read (as the depthwise kernel finds them).
      let lo = max(0, oy0 * S - pt), hi = min(H, (oy1 - 1) * S - pt + K)
      var first = lo
      if let h = held, h.image == n, h.lo <= lo, lo < h.hi {
        memmove(buffer, buffer + (lo - h.lo) * rowFloats, (h.hi - lo) * rowFloats * MemoryLayout<Float>.stride)
        first = h.hi
      }
      let base = buffer - (n * H + lo) * rowFloats  // input row iy of image n at base + (n·H + iy)·W·C
      // The rows of z this thread owns in image n: those of its first and last output rows there.
      let firstOut = max(r.lowerBound, n * Ho) - n * Ho, lastOut = min(r.upperBound, (n + 1) * Ho) - n * Ho
      let own0 = min(H, firstOut * S), own1 = lastOut == Ho ? H : min(H, lastOut * S)
      /// Input rows a..<b of image n, with z for those in own0..<own1.
      func make(_ a: Int, _ b: Int) {
        let (writes0, writes1) = (max(a, own0), min(b, own1))
        func run(_ from: Int, _ to: Int, raw: Bool) {
          guard from < to else { return }
          kernels.gemmActivated(c: base, raw: raw ? z : nil, a: x, b: packed, ldb: ldb, k: k, n: C,
                                rows: ((n * H + from) * W)..<((n * H + to) * W), scale: expanded.scale,
                                shift: expanded.shift, relu6: expanded.relu6, stream: streamZ)
        }
        guard writes0 < writes1 else { return run(a, b, raw: false) }
        run(a, writes0, raw: false)
        run(writes0, writes1, raw: true)
        run(writes1, b, raw: false)
      }
      make(first, hi)
      kernels.depthwiseForward(y: y, x: UnsafePointer(base), w: wd, g, rows: o..<end, stats: stats.with(sums: partial),
                               input: nil, stream: streamY)
      held = HeldRows(image: n, lo: lo, hi: hi)
      o = end
    }
  }
}
