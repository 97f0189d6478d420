// bf16 mode of the 1×1 convolutions and the logits GEMM on the generated vdpbf16ps microkernels
// (KernelsJIT), where the CPU has AVX512-BF16. Same products and fused epilogues as the float32
// kernels in Pointwise.swift (forward with the BN statistics per block, input gradient with the BN
// backward reductions per block); the block's rows of the float32 operand are converted to bf16 into
// a per-thread buffer right before its GEMM, so no extra pass over the activations (the generated
// conversions of KernelsJIT/BF16Conversion.swift; a pending BN + ReLU6 of the input is applied by
// the same conversion, so no float32 activation rows either). The weights come
// packed (BF16PackedMatrix, once per step). The weight gradient xᵀ·dy runs on the JIT too, with the
// rows as the reduction dimension, in the same pass over dy (pointwiseBackwardBF16); only the logits' (batch rows) stays on
// the float32 weight-gradient GEMM over bf16-rounded operands (exactly the bf16 products, see BF16.swift).
// On a CPU without AVX512-BF16 bf16 mode runs the emulation (rounded fp32 operands, BF16.swift).
import Common
@_exported import KernelsJIT

/// How bf16 mode computes its GEMMs: generated vdpbf16ps code, or float32 kernels on rounded operands.
public enum BF16Arithmetic: String, Sendable {
  case jit, emulated
  /// The JIT where this CPU has AVX512-BF16 (+F/BW/VL), else the emulation.
  public static var host: BF16Arithmetic { BF16JIT.isAvailable ? .jit : .emulated }
}

/// Per-thread bf16 rows for the JIT GEMMs (grows on demand, kept; stale contents).
public final class BF16Workspace {
  private var buffer = UnsafeMutablePointer<UInt16>.allocate(capacity: 1)
  private var capacity = 1
  /// Per thread: B blocks of the weight gradient (dy's rows packed), by (chunk, rows, columns).
  private var packedBlocks: [[Int]: BF16PackedMatrix] = [:]
  public init() {}
  deinit { buffer.deallocate() }
  /// A kept packed matrix of `rows` × `columns` for thread `chunk` (called outside the parallel region).
  func rowsPacked(chunk: Int, rows: Int, columns: Int) -> BF16PackedMatrix {
    if let m = packedBlocks[[chunk, rows, columns]] { return m }
    let m = BF16PackedMatrix(k: rows, n: columns)
    packedBlocks[[chunk, rows, columns]] = m
    return m
  }
  /// At least `count` bf16 elements, 64-byte aligned, valid until the next call.
  func elements(_ count: Int) -> UnsafeMutablePointer<UInt16> {
    if capacity < count {
      buffer.deallocate()
      let raw = UnsafeMutableRawPointer.allocate(byteCount: count * 2, alignment: 64)
      buffer = raw.bindMemory(to: UInt16.self, capacity: count)
      capacity = count
    }
    return buffer
  }
}

extension PendingBatchNorm {
  /// This BN + ReLU6 as the JIT conversions apply it (they round, so `roundToBF16` has no part in it).
  var bf16Activation: BF16InputActivation { BF16InputActivation(scale: scale, shift: shift, relu6: relu6) }
}

/// Rows per JIT block: the bf16 A block within ~96 KiB and the fp32 output block within ~128 KiB (both
/// in L2 while the panels of B stream past and the epilogue reads the block back), a multiple of 24
/// (every tile height divides or nearly divides it), at least 24.
func bf16BlockRows(k: Int, n: Int) -> Int {
  let rows = min(98_304 / max(2 * k, 1), 32_768 / max(n, 1))
  return max(24, rows / 24 * 24)
}

/// y[rows, N] = bf16(x)[rows, K] · w (packed [K, N]); with `statisticsShift`/`sums` also the BN
/// statistics of y per block, as the float32 `pointwiseForward(… statisticsShift:sums:scratch:)`.
public func pointwiseForwardBF16(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: BF16PackedMatrix, rows: Int,
                                 statisticsShift shift: UnsafeMutablePointer<Float>? = nil,
                                 sums: UnsafeMutablePointer<Double>? = nil, scratch: Scratch, workspace: BF16Workspace,
                                 input: PendingBatchNorm? = nil) {
  let n = w.n
  guard let shift, let sums else {
    bf16BlockedProduct(out: y, src: x, w: w, rows: rows, scratch: scratch, workspace: workspace, sums: nil, input: input)
    return
  }
  guard rows > 0 else { sums.update(repeating: 0, count: 2 * n); return }
  // Row 0 of y as the shift (any value near the mean will do), by the same kernel.
  bf16BlockedProduct(out: shift, src: x, w: w, rows: 1, scratch: scratch, workspace: workspace, sums: nil, input: input)
  let stats = ChannelStatistics(shift: UnsafePointer(shift), sums: sums)
  let kernels = KernelISA.rows
  bf16BlockedProduct(out: y, src: x, w: w, rows: rows, scratch: scratch, workspace: workspace, sums: sums,
                     input: input) { b, partial in
    kernels.channelStatistics(z: y, channels: n, rows: b, stats.with(sums: partial!))
  }
}

/// out[rows, w.n] = bf16(src)[rows, w.k] · w over blocks of rows (bf16BlockRows) on the compute
/// threads: each block is converted into its chunk's bf16 buffer right before its GEMM, then
/// `epilogue(block, partial)` reads the finished block while it is in cache. With `sums` the chunks'
/// [2·n] partial sums (zeroed, passed to the epilogue) are totalled into it (parallelChannelSums);
/// without, the partial is nil.
func bf16BlockedProduct(out: UnsafeMutablePointer<Float>, src: UnsafePointer<Float>, w: BF16PackedMatrix, rows: Int,
                        scratch: Scratch, workspace: BF16Workspace, sums: UnsafeMutablePointer<Double>?,
                        input: PendingBatchNorm? = nil,
                        epilogue: ((Range<Int>, UnsafeMutablePointer<Double>?) -> Void)? = nil) {
  let (k, n) = (w.k, w.n)
  let lda = 2 * w.kPairs
  let blockRows = bf16BlockRows(k: k, n: n)
  let chunks = chunkCount(rows, minPerChunk: gemmMinRowsPerThread)
  let buffers = workspace.elements(max(chunks, 1) * blockRows * lda)
  // A pending BN is applied by the conversion, which rounds: no float32 activation rows in between.
  let activation = input?.bf16Activation
  func run(_ chunk: Int, _ r: Range<Int>, _ partial: UnsafeMutablePointer<Double>?) {
    let a = buffers + chunk * blockRows * lda
    forEachBlock(r, blockRows: blockRows) { b in
      convertRowsToBF16(a, stride: lda, src + b.lowerBound * k, stride: k, rows: b.count, columns: k, activation: activation)
      bf16Gemm(c: out + b.lowerBound * n, ldc: n, a: a, lda: lda, b: w, rows: b.count, accumulate: false)
      epilogue?(b, partial)
    }
  }
  if let sums {
    parallelChannelSums(rows: rows, channels: n, minPerChunk: gemmMinRowsPerThread, scratch: scratch,
                        into: sums) { chunk, r, partial in run(chunk, r, partial) }
  } else {
    parallelChunks(rows, minPerChunk: gemmMinRowsPerThread) { chunk, r in run(chunk, r, nil) }
  }
}

/// Rows of x and dy per weight-gradient block: the reduction dimension of one JIT GEMM (even).
let bf16WeightGradientRows = 256

/// dw += bf16(x)ᵀ·bf16(dy) and dx = bf16(dy) · wᵀ (+ residual), both on the JIT (`wT` is wᵀ packed:
/// [Co, Ci]), with the BN backward reductions `reduce` over each block of dx as the fused float32
/// `pointwiseBackward` makes them (dx overwritten; no reduction without `reduce`).
/// One pass over the rows in blocks of `bf16WeightGradientRows`, so dy is read from memory once:
/// - dw: the reduction runs over rows, so x's block is interleaved into row pairs (A = xᵀ as
///   [rows/2][Ci][2]: each channel's k-pair is one 32-bit broadcast) and dy's block packed as B
///   ([rows/2][Co][2], rows as k); the product accumulates into the thread's dw (the first chunk into
///   dw itself, the others into partials added at the end, as gemmTransposedRows);
/// - dx: dy's block (still in cache) converted to bf16 rows, times wᵀ, then the block's reductions.
/// With `outputGradient`, dy is this layer's BN-backward dz, made block by block into a per-thread
/// buffer (never stored whole; `dy` is that BN's da, left as it was).
public func pointwiseBackwardBF16(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                                  dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                  wT: BF16PackedMatrix, rows: Int, scratch: Scratch, workspace: BF16Workspace,
                                  residual: UnsafePointer<Float>? = nil, reduce: BatchNormReduction? = nil,
                                  input: PendingBatchNorm? = nil, outputGradient: PendingBatchNormBackward? = nil) {
  let (co, ci) = (wT.k, wT.n)
  precondition(residual == nil || (reduce != nil && dx != nil), "a residual gradient needs the fused backward")
  precondition(reduce?.storesScaledGradient != true, "only the depthwise input gradient stores the scaled gradient")
  guard rows > 0 else {
    if let reduce, dx != nil { reduce.sums.update(repeating: 0, count: 2 * ci) }
    return
  }
  let r = bf16WeightGradientRows
  let chunks = chunkCount(rows, minPerChunk: gemmMinRowsPerThread)
  let partialFloats = max(0, chunks - 1) * ci * co, dzFloats = outputGradient == nil ? 0 : min(rows, r) * co
  let partials = scratch.uninitialized(partialFloats + chunks * dzFloats), dzBlocks = partials + partialFloats
  let ldaDx = 2 * wT.kPairs
  let perChunk = ci * r + r * ldaDx  // xᵀ row pairs, then dy's bf16 rows
  let buffers = workspace.elements(chunks * perChunk)
  let bBlocks = (0..<chunks).map { workspace.rowsPacked(chunk: $0, rows: r, columns: co) }
  let kernels = KernelISA.rows
  // x's rows are remade from z as forward made them, by the conversion (which rounds them).
  let activation = input?.bf16Activation
  func run(_ chunk: Int, _ range: Range<Int>, _ partial: UnsafeMutablePointer<Double>?) {
    let out = chunk == 0 ? dw : partials + (chunk - 1) * ci * co
    let pairs = buffers + chunk * perChunk, dyRows = pairs + ci * r, b = bBlocks[chunk]
    var first = true
    forEachBlock(range, blockRows: r) { blk in
      var dyBlock = dy + blk.lowerBound * co
      if let pending = outputGradient { dyBlock = pending.block(rows: blk, into: dzBlocks + chunk * dzFloats) + blk.lowerBound * co }
      interleaveRowPairsBF16(pairs, x + blk.lowerBound * ci, stride: ci, rows: blk.count, columns: ci, activation: activation)
      packBF16B(b, dyBlock, transposed: false, rows: blk.count)
      bf16GemmRowPairs(c: out, ldc: co, pairs: pairs, b: b, rows: ci, accumulate: chunk == 0 || !first,
                       kPairs: (blk.count + 1) / 2)
      first = false
      guard let dx else { return }
      convertRowsToBF16(dyRows, stride: ldaDx, dyBlock, stride: co, rows: blk.count, columns: co)
      bf16Gemm(c: dx + blk.lowerBound * ci, ldc: ci, a: dyRows, lda: ldaDx, b: wT, rows: blk.count, accumulate: false)
      if let reduce, let partial {
        kernels.batchNormReduce(da: dx, residual: residual, channels: ci, rows: blk, reduce.with(sums: partial))
      }
    }
  }
  if let reduce, dx != nil {
    parallelChannelSums(rows: rows, channels: ci, minPerChunk: gemmMinRowsPerThread, scratch: scratch,
                        into: reduce.sums) { chunk, range, partial in run(chunk, range, partial) }
  } else {
    parallelChunks(rows, minPerChunk: gemmMinRowsPerThread) { chunk, range in run(chunk, range, nil) }
  }
  addChunkPartials(into: dw, partials, count: ci * co, chunks: chunks)
}

/// dx = bf16(dy) · wᵀ (+ residual) with the optional fused BN reductions.
func bf16InputGradient(dx: UnsafeMutablePointer<Float>?, dy: UnsafePointer<Float>, wT: BF16PackedMatrix, rows: Int,
                       scratch: Scratch, workspace: BF16Workspace, residual: UnsafePointer<Float>?,
                       reduce: BatchNormReduction?) {
  // dx[rows, Ci] = dy[rows, Co] · wᵀ
  guard let dx else { return }
  precondition(residual == nil || reduce != nil, "a residual gradient needs the fused backward")
  guard let reduce else {
    bf16BlockedProduct(out: dx, src: dy, w: wT, rows: rows, scratch: scratch, workspace: workspace, sums: nil)
    return
  }
  let n = wT.n
  guard rows > 0 else { reduce.sums.update(repeating: 0, count: 2 * n); return }
  let kernels = KernelISA.rows
  bf16BlockedProduct(out: dx, src: dy, w: wT, rows: rows, scratch: scratch, workspace: workspace,
                     sums: reduce.sums) { b, partial in
    kernels.batchNormReduce(da: dx, residual: residual, channels: n, rows: b, reduce.with(sums: partial!))
  }
}

/// Logits in bf16: y[N, classes] = bf16(x) · w + b (w packed [C, classes]; single-threaded, as denseForward).
public func denseForwardBF16(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: BF16PackedMatrix,
                             b: UnsafePointer<Float>, rows: Int, workspace: BF16Workspace) {
  let (k, n) = (w.k, w.n)
  for r in 0..<rows { (y + r * n).update(from: b, count: n) }
  guard rows > 0 else { return }
  let lda = 2 * w.kPairs
  let a = workspace.elements(rows * lda)
  convertRowsToBF16(a, stride: lda, x, stride: k, rows: rows, columns: k)
  bf16Gemm(c: y, ldc: n, a: a, lda: lda, b: w, rows: rows, accumulate: true)
}

/// Logits backward in bf16: db += Σ dy; dw += xᵀ·dy (the float32 weight-gradient GEMM on rounded operands:
/// batch-sized, too small for the JIT's row blocks); dx = bf16(dy) · wᵀ on the JIT.
public func denseBackwardBF16(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>,
                              dy: UnsafePointer<Float>, roundedDY: UnsafePointer<Float>, roundedX: UnsafePointer<Float>,
                              wT: BF16PackedMatrix, rows: Int, scratch: Scratch, workspace: BF16Workspace) {
  let (classes, c) = (wT.k, wT.n)
  let partials = scratch.uninitialized(gemmPartialsCount(rows: rows, m: c, n: classes))
  gemmTransposedRows(c: dw, a: roundedX, b: roundedDY, rows: rows, m: c, n: classes, partials: partials)
  for r in 0..<rows {
    let g = roundedDY + r * classes
    for c in 0..<classes { db[c] += g[c] }  // rounded, as the emulation (denseBackward on rounded dy)
  }
  bf16InputGradient(dx: dx, dy: dy, wT: wT, rows: rows, scratch: scratch, workspace: workspace, residual: nil, reduce: nil)
}
