// 1×1 convolution = GEMM over the N·H·W rows of an NHWC tensor, through CBLAS:
//   forward        y[M,Co]  = x[M,Ci] · w[Ci,Co]
//   input grad     dx[M,Ci] = dy[M,Co] · wᵀ
//   weight grad    dw[Ci,Co] += xᵀ · dy
// w is TF's [1,1,Ci,Co] layout, which is exactly the row-major [Ci,Co] matrix GEMM wants.
// Also the logits layer: the same product on [N, C] plus a bias.
import CBLAS
import Foundation
import KernelRows

public func pointwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             rows: Int, inChannels: Int, outChannels: Int) {
  gemmRows(c: y, a: x, b: w, rows: rows, k: inChannels, n: outChannels, transposeB: false)
}

/// y = act(z·scale + shift)·w: x is the producing layer's raw z, its BN + ReLU6 (`input`) applied as
/// the rows are read (see `pendingInputRows`).
public func pointwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             rows: Int, inChannels: Int, outChannels: Int, input: PendingBatchNorm, scratch: Scratch) {
  let (k, n) = (inChannels, outChannels)
  guard rows > 0 else { return }
  let own = useOwnGEMM(.product, rows: rows, k: k, n: n)
  let blockRows = pendingBlockRows(k: k, n: n, own: own)
  let prefetchNext = NextBlockPrefetch.use(tensorBytes: rows * k * MemoryLayout<Float>.stride)
  let stream = StreamingStores.use(y, count: rows * n, channels: n)
  withPackedB(own ? w : nil, k: k, n: n) { packed, ldb in
    if let packed, ActivatedInputTiles.use(input) {  // one call per chunk, the activation made tile by tile
      // The block pass's partition (grain blockRows, a multiple of every tile), so both give the same bits.
      parallelChunks(rows, minPerChunk: gemmMinRowsPerThread, split: .balanced, grain: blockRows) { _, r in
        KernelISA.rows.gemmActivatedInput(c: y, a: x, scale: input.scale, shift: input.shift, relu6: input.relu6,
                                          b: packed, ldb: ldb, k: k, n: n, rows: r, stats: nil, prefetch: nil, stream: stream)
      }
      return
    }
    withPendingBuffers(input, rows: rows, k: k, blockRows: blockRows, scratch: scratch) { tmp in
      parallelChunks(rows, minPerChunk: gemmMinRowsPerThread, split: .balanced, grain: blockRows) { _, r in
        forEachBlock(r, blockRows: blockRows) { b in
          let a = pendingInputRows(x, input, rows: b, channels: k, tmp: tmp())
          if let packed {
            let next = nextBlock(after: b, blockRows: blockRows, in: r)
            withPrefetch(next.isEmpty || !prefetchNext ? nil : rowBytes(x, next, k), units: gemmFMAs(rows: b.count, k: k, n: n)) {
              KernelISA.rows.gemm(c: y, a: a, b: packed, ldb: ldb, k: k, n: n, rows: b, stats: nil, prefetch: $0, stream: stream)
            }
          } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(b.count), Int32(n), Int32(k),
                        1, a + b.lowerBound * k, Int32(k), w, Int32(n), 0, y + b.lowerBound * n, Int32(n))
          }
        }
      }
    }
  }
}

// MARK: - BN + ReLU6 of the input applied as the GEMM reads it

// A 1×1 convolution reading a depthwise output (the project layer) takes that layer's raw z and
// applies its BN + ReLU6 as it reads, instead of a separate pass writing the whole activation and the
// GEMM reading it back: the activation is never stored (forward, or backward where the weight
// gradient remakes it the same way). Our fp32 forward GEMM does it register tile by register tile
// (`gemmActivatedInput`, one call per thread); the others block by block into a small per-thread
// buffer right before the block's GEMM (`pendingInputRows`). `bench gemm` fwd+bn-in, Zen 5, 2 threads,
// blocks → tiles: 100352x96x24 228 → 284 GFLOP/s, 25088x192x32 330 → 368, 1568x960x320 428 → 477,
// 401408x32x16 190 → 261: per block, a call (buffers, statistics folds, prefetch set-up) and a burst
// of activation whose stores the GEMM then read back from L2 (a 64 KiB block outgrows the 48 KiB L1).

/// The rows `b` of the GEMM's A operand: x itself, or with `input` act(z·scale + shift) (bf16-rounded
/// if `input.roundToBF16`) written into `tmp` (b.count·k floats). Returned as a base addressed by
/// absolute row, like x.
@inline(__always)
func pendingInputRows(_ x: UnsafePointer<Float>, _ input: PendingBatchNorm?, rows b: Range<Int>, channels k: Int,
                      tmp: UnsafeMutablePointer<Float>?) -> UnsafePointer<Float> {
  guard let input, let tmp else { return x }
  let base = tmp - b.lowerBound * k
  KernelISA.rows.batchNormApply(a: base, z: x, scale: input.scale, shift: input.shift, channels: k, rows: b,
                                relu6: input.relu6, residual: nil)
  if input.roundToBF16 { roundToBF16Serial(tmp, tmp, count: b.count * k) }
  return UnsafePointer(base)
}

/// Whether our GEMM activates a pending input tile by tile (`gemmActivatedInput`) instead of block by
/// block into a buffer before each block's GEMM.
public enum ActivatedInputTiles {
  public static let environmentVariable = "MNV2_TILE_INPUT"
  /// On unless MNV2_TILE_INPUT=0 (tests switch it to compare both).
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  /// fp32 inputs only: the bf16 path rounds the activated rows, which the tile kernel does not.
  static func use(_ input: PendingBatchNorm?) -> Bool { enabled && input.map { !$0.roundToBF16 } ?? false }
}

/// Rows per block when the input's BN is pending. Our GEMM (B packed once per call) takes small blocks,
/// whose activated rows stay in L1/L2 (~64 KiB); a BLAS call repacks B every time, so it keeps the
/// larger blocks of the fused kernels.
func pendingBlockRows(k: Int, n: Int, own: Bool) -> Int {
  own ? wholeTiles(pendingBlockFloats / max(k, 1)) : fusedBlockRows(k: k, n: n)
}

/// Rows rounded up to whole blocks of `rowKernelBlockPixels` (a multiple of every register tile's
/// height): the rows of a block beyond its last whole tile run one at a time on a single accumulator
/// chain, and 16384/576 = 28-row blocks (3 tiles + 4 such rows) halved the project layers' rate.
func wholeTiles(_ rows: Int) -> Int { max(1, (rows + rowKernelBlockPixels - 1) / rowKernelBlockPixels) * rowKernelBlockPixels }
let pendingBlockFloats = 16_384

/// Per-thread buffers (`tmp()`, the calling thread's: `Compute.slot`) for blocks of up to `blockRows`
/// activated rows of k channels, from the scratch's input-rows region; nil buffers (and no memory)
/// without a pending `input`.
func withPendingBuffers<R>(_ input: PendingBatchNorm?, rows: Int, k: Int, blockRows: Int, scratch: Scratch,
                           _ body: (() -> UnsafeMutablePointer<Float>?) -> R) -> R {
  guard input != nil else { return body { nil } }
  let perThread = min(rows, blockRows) * k
  let buffer = scratch.inputRows(Compute.threads * perThread)
  return body { buffer + Compute.slot * perThread }
}

/// `w` ([k, n], or [n, k] read transposed) packed for our GEMM when given (nil: the caller uses BLAS on w itself).
func withPackedB<R>(_ w: UnsafePointer<Float>?, k: Int, n: Int, transposed: Bool = false,
                    _ body: (UnsafePointer<Float>?, Int) -> R) -> R {
  guard let w else { return body(nil, 0) }
  return withUnsafeTemporaryAllocation(of: Float.self, capacity: gemmPackedCount(k: k, n: n)) { buf in
    let ldb = packGemmB(w, k: k, n: n, transposed: transposed, into: buf.baseAddress!)
    return body(UnsafePointer(buf.baseAddress!), ldb)
  }
}

/// dw += xᵀ·dy; dx (if given) = dy·wᵀ (overwritten). With `input`, x is the producing layer's raw z
/// and the weight gradient remakes its activation block by block as forward did.
public func pointwiseBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                              dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              rows: Int, inChannels: Int, outChannels: Int, scratch: Scratch,
                              input: PendingBatchNorm? = nil, outputGradient: PendingBatchNormBackward? = nil) {
  pointwiseBackwardBlocks(dx: dx, dw: dw, dy: dy, outputGradient: outputGradient, x: x, w: w, rows: rows,
                          inChannels: inChannels, outChannels: outChannels, scratch: scratch,
                          residual: nil, reduce: nil, input: input)
}

/// The forward GEMM with the batch-norm statistics of y made while each block of rows is still in
/// cache (the GEMM runs in blocks of `fusedBlockRows` rows per thread, each followed by its statistics):
/// `shift` (Co floats) receives y's first row, `sums` (2·Co doubles) Σ(y − shift), Σ(y − shift)².
/// With `input`, x is the producing layer's raw z and its BN + ReLU6 are applied as the rows are read.
public func pointwiseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                             rows: Int, inChannels: Int, outChannels: Int,
                             statisticsShift shift: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Double>,
                             scratch: Scratch, input: PendingBatchNorm? = nil) {
  let (k, n) = (inChannels, outChannels)
  guard rows > 0 else { sums.update(repeating: 0, count: 2 * n); return }
  // Row 0 of y, computed directly, as the shift (any value near the mean will do). Row by row of w:
  // each shift[o] is the same sum in the same order as a column walk, which for w's row stride of
  // n floats missed L1 on every element, serially before the threads start (~0.5 ms for 960×320).
  shift.update(repeating: 0, count: n)
  for i in 0..<k {
    let a = input?.apply(x[i], channel: i) ?? x[i], wi = w + i * n
    for o in 0..<n { shift[o] += a * wi[o] }
  }
  let stats = ChannelStatistics(shift: UnsafePointer(shift), sums: sums)
  let kernels = KernelISA.rows
  let own = useOwnGEMM(.product, rows: rows, k: k, n: n)
  let stream = StreamingStores.use(y, count: rows * n, channels: n)
  if own && input == nil {  // statistics from the kernel's registers, one call per chunk
    let packed = scratch.uninitialized(gemmPackedCount(k: k, n: n))
    let ldb = packGemmB(w, k: k, n: n, transposed: false, into: packed)
    parallelChannelSums(rows: rows, channels: n, minPerChunk: gemmMinRowsPerThread, split: .balanced,
                        grain: rowKernelBlockPixels, scratch: scratch, into: sums) { _, r, partial in
      kernels.gemm(c: y, a: x, b: packed, ldb: ldb, k: k, n: n, rows: r, stats: stats.with(sums: partial), prefetch: nil,
                   stream: stream)
    }
    return
  }
  _ = Compute.blasSingleThreaded
  let packed = own ? scratch.uninitialized(gemmPackedCount(k: k, n: n)) : nil
  let ldb = packed.map { packGemmB(w, k: k, n: n, transposed: false, into: $0) } ?? 0
  let blockRows = pendingBlockRows(k: k, n: n, own: own)
  let prefetchNext = NextBlockPrefetch.use(tensorBytes: rows * k * MemoryLayout<Float>.stride)
  if let packed, let input, ActivatedInputTiles.use(input) {  // one call per chunk, the activation made tile by tile
    parallelChannelSums(rows: rows, channels: n, minPerChunk: gemmMinRowsPerThread, split: .balanced,
                        grain: blockRows, scratch: scratch, into: sums) { _, r, partial in
      kernels.gemmActivatedInput(c: y, a: x, scale: input.scale, shift: input.shift, relu6: input.relu6, b: packed, ldb: ldb,
                                 k: k, n: n, rows: r, stats: stats.with(sums: partial), prefetch: nil, stream: stream)
    }
    return
  }
  withPendingBuffers(input, rows: rows, k: k, blockRows: blockRows, scratch: scratch) { tmp in
    parallelChannelSums(rows: rows, channels: n, minPerChunk: gemmMinRowsPerThread, split: .balanced, grain: blockRows,
                        scratch: scratch, into: sums) { _, r, partial in
      forEachBlock(r, blockRows: blockRows) { b in
        let a = pendingInputRows(x, input, rows: b, channels: k, tmp: tmp())
        if let packed {
          let next = nextBlock(after: b, blockRows: blockRows, in: r)
          // y's lines fetched for writing where it is not streamed (the 24-channel project outputs).
          withPrefetch(next.isEmpty || !prefetchNext ? nil : rowBytes(x, next, k), nil,
                       stream ? nil : rowBytes(UnsafePointer(y), next, n), writesThird: !stream,
                       units: gemmFMAs(rows: b.count, k: k, n: n)) {
            kernels.gemm(c: y, a: a, b: packed, ldb: ldb, k: k, n: n, rows: b, stats: stats.with(sums: partial), prefetch: $0,
                         stream: stream)
          }
        } else {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(b.count), Int32(n), Int32(k),
                      1, a + b.lowerBound * k, Int32(k), w, Int32(n), 0, y + b.lowerBound * n, Int32(n))
          kernels.channelStatistics(z: y, channels: n, rows: b, stats.with(sums: partial))
        }
      }
    }
  }
}

/// Rows per GEMM block in the fused kernels: the output block stays within ~128 KiB (in L2 when its
/// epilogue reads it back), but at least 2·k rows so that packing the [k, n] weights, redone by every
/// call, stays small against the block's own work.
func fusedBlockRows(k: Int, n: Int) -> Int { wholeTiles(max(2 * k, 32768 / max(n, 1), 64)) }

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
/// With `outputGradient`, dy is this layer's BN-backward dz, made block by block (`dy` itself is that
/// BN's da and is not overwritten).
public func pointwiseBackward(dx: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
                              dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              rows: Int, inChannels: Int, outChannels: Int, scratch: Scratch,
                              residual: UnsafePointer<Float>?, reduce: BatchNormReduction, input: PendingBatchNorm? = nil,
                              outputGradient: PendingBatchNormBackward? = nil) {
  pointwiseBackwardBlocks(dx: dx, dw: dw, dy: dy, outputGradient: outputGradient, x: x, w: w, rows: rows,
                          inChannels: inChannels, outChannels: outChannels, scratch: scratch,
                          residual: residual, reduce: reduce, input: input)
}

/// Both backward GEMMs of a 1×1 convolution block by block of rows on each thread: the block of
/// dz (read from dy, or made from the pending BN backward into a per-thread buffer), then its
/// weight-gradient product and its input-gradient product while the block is in cache, then the
/// reductions of dx's block. dz streams from memory once instead of twice, and with
/// `outputGradient` it is never written at all (the BN backward's own pass over the big expanded
/// tensors, a write and two reads of each, is gone).
public func pointwiseBackwardBlocks(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                    outputGradient: PendingBatchNormBackward?, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                    rows: Int, inChannels m: Int, outChannels n: Int, scratch: Scratch,
                                    residual: UnsafePointer<Float>?, reduce: BatchNormReduction?, input: PendingBatchNorm?) {
  precondition(residual == nil || (dx != nil && reduce != nil), "a residual gradient is added by the reduction pass")
  precondition(reduce?.storesScaledGradient != true, "only the depthwise input gradient stores the scaled gradient")
  guard rows > 0 else { reduce?.sums.update(repeating: 0, count: 2 * m); return }
  let kernels = KernelISA.rows
  let ownW = useOwnGEMM(.weightGradient, rows: rows, k: m, n: n)
  let ownX = dx != nil && useOwnGEMM(.product, rows: rows, k: n, n: m)
  _ = Compute.blasSingleThreaded
  let blockRows = backwardBlockRows(inChannels: m, outChannels: n, own: ownW && (dx == nil || ownX))
  let split = weightPartialSplit(rows: rows, m: m, n: n)
  let chunks = chunkCount(rows, minPerChunk: gemmMinRowsPerThread, split: split, grain: blockRows)
  let prefetchNext = NextBlockPrefetch.use(tensorBytes: rows * max(m, n) * MemoryLayout<Float>.stride)
  // Streamed only without reductions: those read each dx block back (and add the residual into it)
  // while it is in cache, which a streamed block no longer is.
  let streamDX = reduce == nil ? dx.map { StreamingStores.use($0, count: rows * m, channels: m) } ?? false : false
  // One scratch region: the weight partials of chunks 1…, the packed wᵀ, the per-thread dz blocks,
  // and for a transposed weight gradient (TransposedWeightGradient) each chunk's dwᵀ.
  let transposedW = ownW && TransposedWeightGradient.use(m: m, n: n)
  let partialFloats = (chunks - 1) * m * n, packedFloats = ownX ? gemmPackedCount(k: n, n: m) : 0
  let dzFloats = outputGradient == nil ? 0 : min(rows, blockRows) * n
  let region = scratch.uninitialized(partialFloats + packedFloats + Compute.threads * dzFloats
                                     + (transposedW ? chunks * m * n : 0))
  let partials = region, packed = region + partialFloats, dzBlocks = packed + packedFloats
  let transposedTiles = dzBlocks + Compute.threads * dzFloats
  let ldb = ownX ? packGemmB(w, k: n, n: m, transposed: true, into: packed) : 0
  withPendingBuffers(input, rows: rows, k: m, blockRows: blockRows, scratch: scratch) { tmp in
    func run(_ chunk: Int, _ r: Range<Int>, _ sums: UnsafeMutablePointer<Double>?) {
      let out = chunk == 0 ? dw : partials + (chunk - 1) * m * n
      if chunk > 0 { out.update(repeating: 0, count: m * n) }
      let outT = transposedW ? transposedTiles + chunk * m * n : nil
      outT?.update(repeating: 0, count: m * n)
      defer { if let outT { addTransposed(into: out, outT, m: m, n: n) } }
      forEachBlock(r, blockRows: blockRows) { b in
        let lo = b.lowerBound
        var g = dy
        if let pending = outputGradient { g = pending.block(rows: b, into: dzBlocks + Compute.slot * dzFloats) }
        let xb = pendingInputRows(x, input, rows: b, channels: m, tmp: tmp())
        // The next block's dy (and z), x rows arrive while this block's products compute (paced over
        // both when both are ours).
        let next = nextBlock(after: b, blockRows: blockRows, in: r)
        let dyRows = rowBytes(outputGradient?.da ?? dy, next, n)
        let dxFMAs = ownX ? gemmFMAs(rows: b.count, k: n, n: m) : 0
        // dx wider than dy (the project layers'), written with ordinary stores: its lines are fetched
        // for writing in place of the narrow z rows of dz (`PrefetchStreams`).
        let dxRows = dx.flatMap { streamDX || m <= n ? nil : rowBytes(UnsafePointer($0), next, m) }
        let zRows = outputGradient.map { rowBytes($0.reduction.z, next, n) }
        withPrefetch(next.isEmpty || !ownW || !prefetchNext ? nil : dyRows, rowBytes(x, next, m), dxRows ?? zRows,
                     writesThird: dxRows != nil,
                     units: (transposedW ? gemmFMAs(rows: b.count, k: n, n: m) : gemmFMAs(rows: b.count, k: m, n: n)) + dxFMAs) { streams in
          if let outT {
            kernels.gemmTransposedA(c: outT, a: g, b: xb, k: n, n: m, rows: b, prefetch: streams)
          } else if ownW {
            kernels.gemmTransposedA(c: out, a: xb, b: g, k: m, n: n, rows: b, prefetch: streams)
          } else {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(b.count),
                        1, xb + lo * m, Int32(m), g + lo * n, Int32(n), 1, out, Int32(n))
          }
          if let dx, ownX {
            if streamDX {
              kernels.gemm(c: dx, a: g, b: packed, ldb: ldb, k: n, n: m, rows: b, stats: nil, prefetch: streams, stream: true)
            } else {
              kernels.gemmOfCachedRows(c: dx, a: g, b: packed, ldb: ldb, k: n, n: m, rows: b, prefetch: streams)
            }
          }
        }
        guard let dx else { return }
        if !ownX {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(b.count), Int32(m), Int32(n),
                      1, g + lo * n, Int32(n), w, Int32(n), 0, dx + lo * m, Int32(m))
        }
        if let reduce, let sums {
          kernels.batchNormReduce(da: dx, residual: residual, channels: m, rows: b, reduce.with(sums: sums))
        }
      }
    }
    parallelGemmRows(rows, reduce: reduce, channels: m, split: split, grain: blockRows, scratch: scratch, run)
  }
  addChunkPartials(into: dw, partials, count: m * n, chunks: chunks)
}

/// The split of a row-parallel weight gradient, whose chunks after the first each leave an m×n
/// partial to add up: balanced only where the tail's partials are a small part of the bytes the GEMMs
/// read (at most 1/32 of the rows' m + n floats: the 112² to 28² layers of 1.0/224 b32, not the 14²
/// and 7² ones, whose weights reach 1.6 MB).
func weightPartialSplit(rows: Int, m: Int, n: Int) -> ChunkSplit {
  let tailPartials = Compute.threads * BalancedChunks.tailChunksPerThread * m * n
  return tailPartials * 32 <= rows * (m + n) ? .balanced : .perThread
}

/// run(chunk, rows, sums) on each chunk of a GEMM's rows (`gemmMinRowsPerThread` at least), with the
/// chunk's partial sums for `reduce` (added into `reduce.sums` at the end), or nil without.
func parallelGemmRows(_ rows: Int, reduce: BatchNormReduction?, channels: Int, split: ChunkSplit, grain: Int,
                      scratch: Scratch, _ run: (_ chunk: Int, _ rows: Range<Int>, _ sums: UnsafeMutablePointer<Double>?) -> Void) {
  if let reduce {
    parallelChannelSums(rows: rows, channels: channels, minPerChunk: gemmMinRowsPerThread, split: split, grain: grain,
                        scratch: scratch, into: reduce.sums) { chunk, r, partial in run(chunk, r, partial) }
  } else {
    _ = parallelChunks(rows, minPerChunk: gemmMinRowsPerThread, split: split, grain: grain) { chunk, r in run(chunk, r, nil) }
  }
}

// MARK: - Prefetching the next block (NextBlockPrefetch)

/// The block `forEachBlock` hands out after b within r (empty after the last).
@inline(__always)
func nextBlock(after b: Range<Int>, blockRows: Int, in r: Range<Int>) -> Range<Int> {
  b.upperBound..<min(b.upperBound + blockRows, r.upperBound)
}

/// Rows `r` of a row-major [rows, channels] tensor as a byte range.
@inline(__always)
func rowBytes(_ p: UnsafePointer<Float>, _ r: Range<Int>, _ channels: Int) -> (UnsafeRawPointer, Int) {
  (UnsafeRawPointer(p + r.lowerBound * channels), r.count * channels * MemoryLayout<Float>.stride)
}

/// Vector FMAs of a `gemm` call over `rows` rows (c[rows, n] = a[rows, k]·b), and as well of a
/// `gemmTransposedA` call (c[k, n] += a[rows, k]ᵀ·b[rows, n]): the units `PrefetchStreams.step` counts.
func gemmFMAs(rows: Int, k: Int, n: Int) -> Int { rows * k * ((n + gemmLanes - 1) / gemmLanes) }

/// body with the ranges as prefetch streams paced over `units` vector FMAs (`NextBlockPrefetch`), or
/// nil (no first range: the last block, or prefetch off).
@inline(__always)
func withPrefetch<R>(_ r0: (UnsafeRawPointer, Int)?, _ r1: (UnsafeRawPointer, Int)? = nil, _ r2: (UnsafeRawPointer, Int)? = nil,
                     writesThird: Bool = false,
                     units: Int, _ body: (UnsafeMutablePointer<PrefetchStreams>?) -> R) -> R {
  guard NextBlockPrefetch.enabled, let r0 else { return body(nil) }
  var streams = PrefetchStreams(r0, r1, r2, writesThird: writesThird, units: units)
  return withUnsafeMutablePointer(to: &streams) { body($0) }
}

/// Columns of A per register tile of the weight-gradient kernel (`gemmTransposedA`): a K that is not a
/// multiple of it leaves the rest to a one-accumulator loop.
let gemmReductionTile = 8

/// Floats of one block's dz, x and dx rows together (128 KiB).
let backwardBlockFloats = 32768

/// Rows per block of `pointwiseBackwardBlocks`. Our kernels: the dz, x and dx blocks together within
/// ~128 KiB (in L2 while both products read them), but at least 128 rows, the weight-gradient
/// kernel's reduction block, below which folding its register tiles into dw costs as much as the
/// products. BLAS calls repack their operands each time and keep the fused kernels' larger blocks.
/// Measured on Zen 5 (1.0/224 b32, alternating profiles): with the next block's prefetch issued all
/// within the weight gradient, 256 KiB was 4 % faster per step than 128 KiB; since the prefetch is
/// paced over both products (`PrefetchStreams`), 128 KiB is 2 % faster than 256 KiB (layer 3's
/// backward 14.9 → 13.0 ms), 512 KiB no better and 64 KiB 2 % slower.
func backwardBlockRows(inChannels m: Int, outChannels n: Int, own: Bool) -> Int {
  guard own else { return fusedBlockRows(k: n, n: m) }
  return wholeTiles(max(128, backwardBlockFloats / max(1, n + 2 * m)))
}

// Threading of the GEMMs: our threads split the rows (N·H·W) and each makes a single-threaded BLAS
// call on its slice. OpenBLAS's own threading, on these skinny shapes, wakes and joins its pool on
// every call and was slower on 2 threads than on 1 for the 0.35/96 model (0.108 vs 0.095 s/step).
/// Fewer rows than this per thread are not worth a split.
let gemmMinRowsPerThread = 64

/// c[rows, n] = a[rows, k] · b (b is [k, n], or [n, k] read transposed). `mayStream: false` where the
/// caller reads c straight back (see `StreamingStores`).
func gemmRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
              rows: Int, k: Int, n: Int, transposeB: Bool, mayStream: Bool = true) {
  guard rows > 0 else { return }
  if useOwnGEMM(.product, rows: rows, k: k, n: n) {
    withPackedB(b, k: k, n: n, transposed: transposeB) { packed, ldb in
      ownGemmRows(c: c, a: a, packed: packed!, ldb: ldb, rows: rows, k: k, n: n,
                  stream: mayStream && StreamingStores.use(c, count: rows * n, channels: n))
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
  let chunks = chunkCount(rows, minPerChunk: gemmMinRowsPerThread)
  // Then, where our kernels run it transposed, each chunk's cᵀ (ownGemmTransposedRows).
  return (max(0, chunks - 1) + (TransposedWeightGradient.use(m: m, n: n) ? chunks : 0)) * m * n
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
  addChunkPartials(into: c, partials, count: m * n, chunks: chunks)
}

// The logits layer has a batch of rows (32 at 1.0/224), too few to split by rows: its products are
// split by columns instead, each thread one BLAS call on its slice (1.0/224 b32, 1001 classes: 82
// MFLOP forward and 164 backward took 1.0 and 1.85 ms a step on one thread).

/// Columns per slice of the logits layer's products: slice boundaries on whole 64-byte vectors (a
/// narrow layer's slices may be empty), and enough columns that a slice is worth a thread.
let denseColumnGrain = 16, denseMinColumnsPerThread = 128

/// Logits: y[N,K] = x[N,C]·w[C,K] + b[K], the K columns split over the threads.
public func denseForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                         b: UnsafePointer<Float>, rows: Int, inChannels: Int, outChannels: Int) {
  for r in 0..<rows { (y + r * outChannels).update(from: b, count: outChannels) }
  guard rows > 0 else { return }
  _ = Compute.blasSingleThreaded
  let k = outChannels
  let columns = ChunkPartition.uniform(k, chunks: chunkCount(k, minPerChunk: denseMinColumnsPerThread), grain: denseColumnGrain)
  parallelChunks(columns.chunks) { part, _ in
    let cols = columns.range(part)
    guard !cols.isEmpty else { return }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(cols.count), Int32(inChannels),
                1, x, Int32(inChannels), w + cols.lowerBound, Int32(k), 1, y + cols.lowerBound, Int32(k))
  }
}

/// dw += xᵀ·dy; db += Σrows dy; dx (if given) = dy·wᵀ. Each thread makes its share of dw's columns
/// (K) and of dx's (C).
public func denseBackward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>,
                          db: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                          w: UnsafePointer<Float>, rows: Int, inChannels: Int, outChannels: Int, scratch: Scratch) {
  for r in 0..<rows {
    let g = dy + r * outChannels
    for k in 0..<outChannels { db[k] += g[k] }
  }
  guard rows > 0 else { return }
  _ = Compute.blasSingleThreaded
  let (c, k) = (inChannels, outChannels)
  let chunks = chunkCount(max(c, k), minPerChunk: denseMinColumnsPerThread)
  let kColumns = ChunkPartition.uniform(k, chunks: chunks, grain: denseColumnGrain)
  let cColumns = ChunkPartition.uniform(c, chunks: chunks, grain: denseColumnGrain)
  parallelChunks(chunks) { part, _ in
    let kCols = kColumns.range(part), cCols = cColumns.range(part)
    if !kCols.isEmpty {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(c), Int32(kCols.count), Int32(rows),
                  1, x, Int32(c), dy + kCols.lowerBound, Int32(k), 1, dw + kCols.lowerBound, Int32(k))
    }
    if let dx, !cCols.isEmpty {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(cCols.count), Int32(k),
                  1, dy, Int32(k), w + cCols.lowerBound * k, Int32(k), 0, dx + cCols.lowerBound, Int32(c))
    }
  }
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
