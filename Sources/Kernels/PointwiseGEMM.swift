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
  /// This CPU's OpenBLAS against our kernel, measured once at first use (tests set it).
  public static var calibration: GemmCalibration = .measure()
  /// One line for logs: who runs the fp32 1×1 GEMMs and why.
  public static var summary: String {
    if let forced { return "GEMM: \(forced.rawValue) for every shape (\(environmentVariable))" }
    let c = calibration
    let figures = String(format: "cblas_sgemm %.0f vs ours %.0f GFLOP/s on one core", c.blasGFLOPs, c.ownGFLOPs)
    return c.blasBehind ? "GEMM: ours for every shape (\(figures))" : "GEMM: per shape (\(figures))"
  }
}

/// Our GEMM kernel and single-threaded cblas_sgemm on one compute-bound product (the late layers'
/// kind), best of alternating repetitions. Why: the shape rules of `useOwnGEMM` were measured on a
/// CPU where OpenBLAS's kernel runs at its peak (Zen 4, whose 512-bit units are half width, so its
/// AVX2 kernel is as fast as AVX-512). Debian's OpenBLAS 0.3.21 has no kernel for newer CPUs and runs
/// its Haswell one: on Zen 5 (full-width AVX-512) at 0.6× of ours, behind on every 1×1 shape
/// (`bench gemm`), so there ours runs everything.
public struct GemmCalibration: Sendable {
  public var ownGFLOPs, blasGFLOPs: Double
  public init(ownGFLOPs: Double, blasGFLOPs: Double) { self.ownGFLOPs = ownGFLOPs; self.blasGFLOPs = blasGFLOPs }
  /// OpenBLAS is behind when under this fraction of our speed (Zen 4: 1.1–1.7× ours; Zen 5: 0.6×).
  public static let behindBelow = 0.8
  public var blasBehind: Bool { blasGFLOPs < Self.behindBelow * ownGFLOPs }

  static let shape = (rows: 768, k: 384, n: 320)
  static let repetitions = 5

  public static func measure() -> GemmCalibration {
    let (m, k, n) = shape
    let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k), b = UnsafeMutablePointer<Float>.allocate(capacity: k * n)
    let c = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
    let packed = UnsafeMutablePointer<Float>.allocate(capacity: gemmPackedCount(k: k, n: n))
    defer { a.deallocate(); b.deallocate(); c.deallocate(); packed.deallocate() }
    for i in 0..<(m * k) { a[i] = Float(i % 7) * 0.125 - 0.375 }
    for i in 0..<(k * n) { b[i] = Float(i % 5) * 0.25 - 0.5 }
    let ldb = packGemmB(b, k: k, n: n, transposed: false, into: packed)
    _ = Compute.blasSingleThreaded
    func seconds(_ body: () -> Void) -> Double {
      let t0 = DispatchTime.now().uptimeNanoseconds
      body()
      return Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
    }
    var own = Double.infinity, blas = Double.infinity
    for _ in 0...repetitions {  // the first round warms caches and pages up
      own = min(own, seconds { KernelISA.rows.gemm(c: c, a: a, b: packed, ldb: ldb, k: k, n: n, rows: 0..<m, stats: nil) })
      blas = min(blas, seconds {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), 1, a, Int32(k), b, Int32(n),
                    0, c, Int32(n))
      })
    }
    let flop = 2.0 * Double(m * k * n) * 1e-9
    return GemmCalibration(ownGFLOPs: flop / own, blasGFLOPs: flop / blas)
  }
}

/// Whether our kernels run this shape instead of cblas_sgemm: everywhere when the calibration finds
/// OpenBLAS behind on this CPU, else by `shapePrefersOwnGEMM`.
func useOwnGEMM(_ form: GemmForm, rows: Int, k: Int, n: Int) -> Bool {
  if let forced = GemmChoice.forced { return forced == .own }
  if GemmChoice.calibration.blasBehind { return true }
  return shapePrefersOwnGEMM(form, rows: rows, k: k, n: n)
}

/// The shapes where our kernels beat cblas_sgemm when OpenBLAS runs at its peak: where `bench gemm` (2 threads, Zen 4,
/// AVX-512, minimum of alternating repetitions, 3 runs; docs/performance.md) measured them faster.
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
  for i in 0..<k {
    let row = packed + i * ldb
    if transposed {
      for j in 0..<n { row[j] = b[j * k + i] }
    } else {
      row.update(from: b + i * n, count: n)
    }
    (row + n).update(repeating: 0, count: ldb - n)
  }
  return ldb
}

func gemmPackedStride(_ n: Int) -> Int {
  let pad = KernelISA.rows.gemmColumnPadding
  return (n + pad - 1) / pad * pad
}

func gemmPackedCount(k: Int, n: Int) -> Int { k * gemmPackedStride(n) }

/// c[rows, n] = a[rows, k] · b with our kernels, rows split over threads (b packed by `packGemmB`).
func ownGemmRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, packed: UnsafePointer<Float>, ldb: Int,
                 rows: Int, k: Int, n: Int) {
  let kernels = KernelISA.rows
  parallelChunks(rows, minPerChunk: gemmMinRowsPerThread) { _, r in
    kernels.gemm(c: c, a: a, b: packed, ldb: ldb, k: k, n: n, rows: r, stats: nil)
  }
}

/// c[m, n] += a[rows, m]ᵀ · b[rows, n] with our kernels: the first chunk accumulates into c, the
/// others into zeroed partials (gemmPartialsCount floats), added at the end.
func ownGemmTransposedRows(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                           rows: Int, m: Int, n: Int, partials: UnsafeMutablePointer<Float>) {
  let kernels = KernelISA.rows
  let chunks = parallelChunks(rows, minPerChunk: gemmMinRowsPerThread) { chunk, r in
    let out = chunk == 0 ? c : partials + (chunk - 1) * m * n
    if chunk > 0 { out.update(repeating: 0, count: m * n) }
    kernels.gemmTransposedA(c: out, a: a, b: b, k: m, n: n, rows: r)
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
