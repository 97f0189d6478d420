// Thread control for the kernels: our own loops take `Compute.threads`; OpenBLAS runs single-threaded
// inside them (see Pointwise.swift).
import CBLAS
import Foundation

public enum Compute {
  /// Threads used by our kernels (and so by the row-split GEMMs). Set once at start-up (launch hands each worker
  /// cores ÷ local workers); 1 until set so tests and libraries are deterministic by default.
  public private(set) static var threads = 1

  /// BLAS itself stays single-threaded: our GEMM wrappers split rows across our threads (see
  /// Pointwise.swift), which avoids waking OpenBLAS's own pool on every call.
  public static func setThreads(_ n: Int) {
    let n = max(1, n)
    _ = blasSingleThreaded
    if n == threads && (n == 1 || pool != nil) { return }
    pool?.shutdown()
    pool = n > 1 ? ComputePool(workers: n - 1, spinMicroseconds: spinMicroseconds) : nil
    threads = n
  }

  /// The caller plus `threads - 1` persistent workers (ComputePool.swift); nil when single-threaded.
  public nonisolated(unsafe) private(set) static var pool: ComputePool?

  /// MNV2_SPIN_US: how long idle compute threads poll before sleeping (default 200 µs; 0 sleeps at once).
  static var spinMicroseconds: Int {
    ProcessInfo.processInfo.environment["MNV2_SPIN_US"].flatMap { Int($0) } ?? ComputePool.defaultSpinMicroseconds
  }

  /// OpenBLAS single-threaded, once per process: the GEMM wrappers touch it before every call, so
  /// code that never calls setThreads gets it too.
  static let blasSingleThreaded: Void = openblas_set_num_threads(1)
}

/// Splits `0..<count` into at most `Compute.threads` contiguous chunks and runs `body(chunkIndex, range)`
/// for each, in parallel on the compute pool (a region opened inside another runs inline). Chunk
/// indices are dense (0..<chunks) so callers can keep per-chunk partials.
/// Returns the number of chunks used.
@discardableResult
public func parallelChunks(_ count: Int, minPerChunk: Int = 1,
                           _ body: (_ chunk: Int, _ range: Range<Int>) -> Void) -> Int {
  if count <= 0 { return 0 }
  let chunks = max(1, min(Compute.threads, count / max(1, minPerChunk)))
  if chunks == 1 {
    body(0, 0..<count)
    return 1
  }
  guard let pool = Compute.pool else {
    for c in 0..<chunks { body(c, ComputePool.range(c, count: count, chunks: chunks)) }
    return chunks
  }
  pool.run(count: count, chunks: chunks, body)
  return chunks
}

/// The number of chunks `parallelChunks` will use for `count` items.
public func chunkCount(_ count: Int, minPerChunk: Int = 1) -> Int {
  count <= 0 ? 0 : max(1, min(Compute.threads, count / max(1, minPerChunk)))
}
