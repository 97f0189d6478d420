// Our own GEMM row kernels (RowKernels.gemm / gemmTransposedA, in KernelsAVX2/RowKernels.swift) for the 1×1-convolution shapes where
// single-threaded cblas_sgemm is slow: small K or N (the early layers), where OpenBLAS packs and
// loops with little work per panel and its 16/32-wide register tiles are mostly empty.
// Pointwise.swift asks `useOwnGEMM` per product and keeps OpenBLAS for the others.
import CBLAS
import Foundation
import KernelRows

/// The two GEMM forms of a 1×1 convolution.
enum GemmForm {
  /// c[rows, n] = a[rows, k] · b: the forward (k = Ci, n = Co) and the input gradient (k = Co, n = Ci).
  case product
  /// c[k, n] += a[rows, k]ᵀ · b[rows, n]: the weight gradient (k = Ci, n = Co).
  case weightGradient
}

/// Who computes the fp32 1×1-convolution GEMMs.
public enum GemmImplementation: String, CaseIterable, Sendable {
  case own, blas
}

public enum GemmChoice {
  public static let environmentVariable = "MNV2_GEMM"
  /// nil: per shape (`useOwnGEMM`); otherwise that implementation for every shape. From MNV2_GEMM
  /// (own or blas) at start-up; the tests and `bench gemm` set it to run both on the same shape.
  public static var forced: GemmImplementation? =
    ProcessInfo.processInfo.environment[environmentVariable].flatMap { GemmImplementation(rawValue: $0.lowercased()) }
  /// The facts of this machine the choice follows (tests set it).
  public static var machine: GemmMachine = .host
  /// One line for logs: who runs the fp32 1×1 GEMMs and why.
  public static var summary: String {
    if let forced { return "GEMM: \(forced.rawValue) for every shape (\(environmentVariable))" }
    let m = machine
    return m.ownRunsEverything
      ? "GEMM: ours for every shape (ours run AVX-512; OpenBLAS core \(m.blasCore))"
      : "GEMM: per shape (OpenBLAS core \(m.blasCore), ours AVX2)"
  }
}

/// What decides between our GEMM kernel and cblas_sgemm when MNV2_GEMM does not: fixed facts of the
/// machine, never a timing. The two sum in different orders, so the choice changes the weights a run
/// ends with; an earlier version timed both at start-up, and with 4 ranks on 2 cores the timings
/// (cblas 31–101, ours 33–110 GFLOP/s) flipped the choice between runs, so a restarted job ended with
/// other weights than the uninterrupted one.
///
/// The fact that matters is whether our kernels run their AVX-512 copy. Then ours runs every shape:
/// `bench gemm` measured them ahead of Debian's OpenBLAS 0.3.21 on every MobileNetV2 1×1 shape on
/// Zen 5, where OpenBLAS runs its Haswell AVX2 kernel (0.6× ours; 114 vs 223 GFLOP/s on one core),
/// and on Zen 4, where it runs its Cooperlake AVX-512 kernel (ours 1.00–2.50×, docs/performance.md
/// round 19; the round-8 shape rule had given it the big expand forwards, some input gradients and
/// the 7² layers, which cost 2.8 % of a 1.0/224 step). Intel AVX-512 CPUs were not measured
/// (MNV2_GEMM=blas gives OpenBLAS every shape). With our AVX2 kernels the shape rule
/// `shapePrefersOwnGEMM` stands.
public struct GemmMachine: Sendable, Equatable {
  /// OpenBLAS's kernel for this CPU (`openblas_get_corename`, e.g. "Haswell", "Cooperlake").
  public var blasCore: String
  /// Whether our row kernels run their AVX-512 copy (`KernelISA.current`).
  public var ownAVX512: Bool
  public init(blasCore: String, ownAVX512: Bool) { self.blasCore = blasCore; self.ownAVX512 = ownAVX512 }

  /// Ours run 512-bit vectors: ours for every shape (see above).
  public var ownRunsEverything: Bool { ownAVX512 }

  public static var host: GemmMachine {
    let core = openblas_get_corename().map { String(cString: $0) } ?? "unknown"
    return GemmMachine(blasCore: core, ownAVX512: KernelISA.current == .avx512)
  }
}

/// Whether our kernels run this shape instead of cblas_sgemm: every shape where they run AVX-512
/// (`GemmMachine`), else by `shapePrefersOwnGEMM`.
func useOwnGEMM(_ form: GemmForm, rows: Int, k: Int, n: Int) -> Bool {
  if let forced = GemmChoice.forced { return forced == .own }
  if GemmChoice.machine.ownRunsEverything { return true }
  return shapePrefersOwnGEMM(form, rows: rows, k: k, n: n)
}

/// The shapes where our kernels beat cblas_sgemm when OpenBLAS runs at its peak: where `bench gemm` (2 threads, Zen 4,
/// AVX-512, minimum of alternating repetitions, 3 runs; docs/performance.md round 8) measured them faster. Since
/// round 19 it decides only for our AVX2 kernels (not re-measured there); our AVX-512 kernels run every shape.
/// Products: ours 1.0–2.6x with min(k, n) ≤ 160 and max ≤ 576 (401408x32x16 fwd+stats 2.6x,
/// 6272x384x64 fwd 1.35x), except the big expand layers: k ≤ 32 into n ≥ 96 with an output of
/// ≥ 2²² floats (401408x16x96 fwd+stats 0.76x, 100352x24x144 0.88x, 25088x32x192 0.86x), where
/// writing the large output is the cost and OpenBLAS's blocked stores do it better; small expands
/// (0.35/96: 9216x16x96 1.3x) stay ours. OpenBLAS ahead from (1568, 960, 160) on (fwd 0.6–0.9x).
/// Weight gradients: ours 1.1–1.9x with min(k, n) ≤ 64 (401408x32x16 1.9x, 401408x16x96 1.5x) and
/// about even to 384x96; OpenBLAS ahead at 6272x576x96 (0.7x) and 1568x960x320 (0.9x).
func shapePrefersOwnGEMM(_ form: GemmForm, rows: Int, k: Int, n: Int) -> Bool {
  let (small, large) = (min(k, n), max(k, n))
  switch form {
  case .product:
    let bigExpand = k <= 32 && n >= 96 && rows * n >= 1 << 22
    return small <= 160 && large <= 576 && !bigExpand
  case .weightGradient: return small <= 64 || large <= 384
  }
}

/// Copies b ([k, n], or [n, k] read transposed) into `packed` as [k, ldb] with columns n..<ldb zero,
/// the layout `RowKernelSet.gemm` reads; returns ldb. `packed` holds `gemmPackedCount(k:n:)` floats.
func packGemmB(_ b: UnsafePointer<Float>, k: Int, n: Int, transposed: Bool, into packed: UnsafeMutablePointer<Float>) -> Int {
  let ldb = gemmPackedStride(n)
  guard transposed else {
    for i in 0..<k {
      let row = packed + i * ldb
      row.update(from: b + i * n, count: n)
      (row + n).update(repeating: 0, count: ldb - n)
    }
    return ldb
  }
  // bᵀ ([n, k] read down its columns): in tiles of 16×16, so each tile's rows of b and of packed stay
  // in L1, and split over the threads from `transposedPackingMinimum` elements on. A column walk
  // missed L1 on every element of the wide layers' w and ran on one thread before the backward's
  // threads start (~0.3 ms for 320×1280, ~0.7 ms a step at 1.0/224; Zen 5).
  func pack(_ rows: Range<Int>) {
    var i0 = rows.lowerBound
    while i0 < rows.upperBound {
      let i1 = min(i0 + transposeTile, rows.upperBound)
      var j0 = 0
      while j0 < n {
        let j1 = min(j0 + transposeTile, n)
        for j in j0..<j1 {
          let src = b + j * k
          for i in i0..<i1 { packed[i * ldb + j] = src[i] }
        }
        j0 = j1
      }
      for i in i0..<i1 { (packed + i * ldb + n).update(repeating: 0, count: ldb - n) }
      i0 = i1
    }
  }
  if k * n >= transposedPackingMinimum {
    _ = parallelChunks(k, minPerChunk: transposeTile) { _, r in pack(r) }
  } else {
    pack(0..<k)
  }
  return ldb
}

/// Side of the tiles `packGemmB` transposes in.
private let transposeTile = 16
/// Elements of b from which `packGemmB` transposes on every thread: a chosen size, not a measured
/// crossover (the wide 7² layers' w are 150 K–410 K elements, the 56² ones' 2–3 K).
private let transposedPackingMinimum = 1 << 16

func gemmPackedStride(_ n: Int) -> Int {
  let pad = KernelISA.rows.gemmColumnPadding
  return (n + pad - 1) / pad * pad
}

func gemmPackedCount(k: Int, n: Int) -> Int { k * gemmPackedStride(n) }

/// Software prefetch in the blocked 1×1 kernels: while a block's products run on operands already in
/// cache, the next block's rows (dy and z for its dz, the input rows) are pulled into L2 a few lines
/// per kernel step, instead of the next block starting with a memory-stalled pass. Results are
/// bit-identical either way (prefetching reads nothing into the arithmetic).
public enum NextBlockPrefetch {
  public static let environmentVariable = "MNV2_PREFETCH"
  /// On unless MNV2_PREFETCH=0 (tests switch it to compare both).
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  /// Only tensors of at least this many bytes are prefetched: smaller ones are read back from L3
  /// (below half its 32 MiB), where the hardware prefetchers keep up and the software lines only take
  /// issue slots. Measured on Zen 5 (1.0/224 b32, four alternating profiles with prefetch on and
  /// off): the 112² and 56² layers gained 0.5–2.3 ms each from it, the 14² and 7² layers' backwards
  /// (5–15 MB tensors) lost ~0.2 ms each.
  public static var minimumBytes = 16 << 20
  /// Whether a kernel reading tensors of up to `bytes` prefetches its next blocks.
  static func use(tensorBytes bytes: Int) -> Bool { enabled && bytes >= minimumBytes }
}

/// Floats per vector of the GEMM row kernels (for counting their vector FMAs, the prefetch pacing units).
var gemmLanes: Int { KernelISA.rows.gemmColumnPadding }

/// c[rows, n] = a[rows, k] · b with our kernels, rows split over threads (b packed by `packGemmB`).
func ownGemmRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, packed: UnsafePointer<Float>, ldb: Int,
                 rows: Int, k: Int, n: Int, stream: Bool = false) {
  let kernels = KernelISA.rows
  parallelChunks(rows, minPerChunk: gemmMinRowsPerThread, split: .balanced, grain: rowKernelBlockPixels) { _, r in
    kernels.gemm(c: c, a: a, b: packed, ldb: ldb, k: k, n: n, rows: r, stats: nil, prefetch: nil, stream: stream)
  }
}

/// Which weight gradients c[m, n] += a[rows, m]ᵀ·b[rows, n] our kernels run transposed, as
/// cᵀ[n, m] += bᵀ·a folded into c at the end: those whose n is narrower than a tile (two vectors) and
/// not whole vectors while m is. The kernel's tiles are 8 columns of a by one or two vectors of b's n,
/// so at n = 24 (the 1.0/224 project layers 96 → 24 and 144 → 24) the second vector uses 8 of its 16
/// lanes, and at n = 8 (0.35's) one vector uses half; transposed, every vector is whole. A wide n
/// wastes a small share of its lanes (the logits' 1001: 0.7 %), and there the fold's transpose costs
/// more than it saves (32x1280x1001 ran at 32 GFLOP/s transposed, 95 direct). Each element is the same products summed in
/// the same row order, so the sums agree (bit for bit where c starts at zero, but for a chain the
/// kernel splits at the end of b, see its `safe`).
public enum TransposedWeightGradient {
  public static let environmentVariable = "MNV2_DW_TRANSPOSED"
  /// On unless MNV2_DW_TRANSPOSED=0.
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  public static func use(m: Int, n: Int) -> Bool {
    enabled && n < 2 * gemmLanes && n % gemmLanes != 0 && m % gemmLanes == 0 && n < m
  }
}

/// c[m, n] += tᵀ, t being [n, m] (a transposed weight gradient's fold, see TransposedWeightGradient).
func addTransposed(into c: UnsafeMutablePointer<Float>, _ t: UnsafePointer<Float>, m: Int, n: Int) {
  for i in 0..<m {
    let row = c + i * n
    for j in 0..<n { row[j] += t[j * m + i] }
  }
}

/// c[m, n] += a[rows, m]ᵀ · b[rows, n] with our kernels: the first chunk accumulates into c, the
/// others into zeroed partials, added at the end; a transposed product (TransposedWeightGradient) makes
/// each chunk's cᵀ after those partials (gemmPartialsCount floats in all).
func ownGemmTransposedRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                           rows: Int, m: Int, n: Int, partials: UnsafeMutablePointer<Float>) {
  let kernels = KernelISA.rows
  let chunkTotal = chunkCount(rows, minPerChunk: gemmMinRowsPerThread)
  let tiles = TransposedWeightGradient.use(m: m, n: n) ? partials + (chunkTotal - 1) * m * n : nil
  let chunks = parallelChunks(rows, minPerChunk: gemmMinRowsPerThread) { chunk, r in
    let out = chunk == 0 ? c : partials + (chunk - 1) * m * n
    if chunk > 0 { out.update(repeating: 0, count: m * n) }
    if let t = tiles.map({ $0 + chunk * m * n }) {
      t.update(repeating: 0, count: m * n)
      kernels.gemmTransposedA(c: t, a: b, b: a, k: n, n: m, rows: r, prefetch: nil)
      addTransposed(into: out, t, m: m, n: n)
    } else {
      kernels.gemmTransposedA(c: out, a: a, b: b, k: m, n: n, rows: r, prefetch: nil)
    }
  }
  addChunkPartials(into: c, partials, count: m * n, chunks: chunks)
}

/// c[0..<count] += each of the `chunks − 1` partials (count floats each, in chunk order) that the
/// row-split weight-gradient GEMMs leave beside chunk 0's, which accumulated into c itself.
func addChunkPartials(into c: UnsafeMutablePointer<Float>, _ partials: UnsafePointer<Float>, count: Int, chunks: Int) {
  for p in 0..<max(0, chunks - 1) {
    let src = partials + p * count
    for i in 0..<count { c[i] += src[i] }
  }
}

/// What `useOwnGEMM` picks for a 1×1 convolution of Ci → Co over `rows` pixels: (forward, input gradient, weight gradient).
public func pointwiseGemmSelection(rows: Int, inChannels ci: Int, outChannels co: Int)
  -> (forward: GemmImplementation, inputGradient: GemmImplementation, weightGradient: GemmImplementation) {
  func pick(_ own: Bool) -> GemmImplementation { own ? .own : .blas }
  return (pick(useOwnGEMM(.product, rows: rows, k: ci, n: co)), pick(useOwnGEMM(.product, rows: rows, k: co, n: ci)),
          pick(useOwnGEMM(.weightGradient, rows: rows, k: ci, n: co)))
}

/// dx[rows, Ci] = dy[rows, Co] · wᵀ alone, as the unfused backward runs it (`bench gemm` times it).
public func pointwiseInputGradient(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                   rows: Int, inChannels: Int, outChannels: Int) {
  gemmRows(c: dx, a: dy, b: w, rows: rows, k: outChannels, n: inChannels, transposeB: true)
}

/// dw[Ci, Co] += xᵀ·dy alone, as both backwards run it (`bench gemm` times it).
public func pointwiseWeightGradient(dw: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                    rows: Int, inChannels: Int, outChannels: Int, scratch: Scratch) {
  let partials = scratch.uninitialized(gemmPartialsCount(rows: rows, m: inChannels, n: outChannels))
  gemmTransposedRows(c: dw, a: x, b: dy, rows: rows, m: inChannels, n: outChannels, partials: partials)
}
