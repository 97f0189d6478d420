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

  /// The calling thread's slot for per-thread scratch (`ComputePool.slotOfCallingThread`, 0 outside
  /// the pool's workers): kernels size such scratch for `threads` slots and index it by this, not by chunk.
  public static var slot: Int { pool?.slotOfCallingThread() ?? 0 }

  /// OpenBLAS single-threaded, once per process: the GEMM wrappers touch it before every call, so
  /// code that never calls setThreads gets it too.
  static let blasSingleThreaded: Void = openblas_set_num_threads(1)
}

/// How a parallel region's items are split into chunks.
public enum ChunkSplit: Sendable {
  /// One contiguous chunk per thread.
  case perThread
  /// One large chunk per thread, then small tail chunks that whichever thread is free takes
  /// (`BalancedChunks`). For regions whose per-chunk partials are cheap to add up.
  case balanced
}

/// Whether `.balanced` regions get their tail chunks. With one equal chunk per thread a region ends
/// when its slowest thread does: on the shared 2-core VM measured (1.0/224 b32, 2 threads) the thread
/// that finished first waited 13 ms a step for the other at 0.27 s per step (5 %), and 45 ms at 0.30 s
/// when the machine was loaded, mostly in regions of 2 ms and more. Whoever finishes its large chunk
/// first takes the tail chunks, so a delayed thread holds the region back by one tail chunk at most.
/// Which thread runs a chunk never changes the partition, so results stay deterministic.
public enum BalancedChunks {
  public static let environmentVariable = "MNV2_BALANCE"
  /// On unless MNV2_BALANCE=0.
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  /// The share of a region's items left to the tail chunks, and how many tail chunks per thread.
  static let tailShare = 4, tailChunksPerThread = 4
}

/// A split of `0..<count` into `chunks` dense, contiguous chunks: `head` equal ones covering the first
/// `headItems` items, then `tail` equal ones covering the rest (`tail` 0: one equal split). Inner
/// boundaries are rounded down to multiples of `grain`, so a chunk spanning fewer than `grain` items
/// before rounding can come out empty (`chunkPartition` never makes one).
public struct ChunkPartition: Sendable, Equatable {
  public let count: Int, head: Int, tail: Int, headItems: Int, grain: Int
  public var chunks: Int { head + tail }

  public static func uniform(_ count: Int, chunks: Int, grain: Int = 1) -> ChunkPartition {
    ChunkPartition(count: count, head: chunks, tail: 0, headItems: count, grain: max(1, grain))
  }

  /// Where chunk c starts (c = chunks: count).
  func boundary(_ c: Int) -> Int {
    if c >= chunks { return count }
    let raw = c <= head ? headItems * c / head : headItems + (count - headItems) * (c - head) / tail
    return raw / grain * grain
  }

  public func range(_ c: Int) -> Range<Int> { boundary(c)..<boundary(c + 1) }
}

/// The partition `parallelChunks` uses: at most `Compute.threads` chunks of at least `minPerChunk`
/// items; `.balanced` (when `BalancedChunks.enabled`) adds tail chunks where every chunk keeps
/// `minPerChunk` and `grain` items, its inner boundaries on multiples of `grain` (the kernel's block of
/// rows, so that splitting adds no short blocks: a 32-row block of the 7² GEMMs sweeps all of b).
public func chunkPartition(_ count: Int, minPerChunk: Int = 1, split: ChunkSplit = .perThread,
                           grain: Int = 1) -> ChunkPartition {
  guard count > 0 else { return .uniform(0, chunks: 0) }
  let minimum = max(1, minPerChunk), threads = Compute.threads
  let perThread = max(1, min(threads, count / minimum))
  guard split == .balanced, BalancedChunks.enabled, perThread == threads, threads > 1 else {
    return .uniform(count, chunks: perThread)
  }
  let smallest = max(minimum, grain)
  let tailItems = count / BalancedChunks.tailShare
  let tail = min(threads * BalancedChunks.tailChunksPerThread, tailItems / smallest)
  guard tail >= threads, (count - tailItems) / threads >= smallest else { return .uniform(count, chunks: perThread) }
  return ChunkPartition(count: count, head: threads, tail: tail, headItems: count - tailItems, grain: max(1, grain))
}

/// Splits `0..<count` by `chunkPartition` and runs `body(chunkIndex, range)` for each chunk, in
/// parallel on the compute pool (a region opened inside another runs inline). Chunk indices are dense
/// (0..<chunks) so callers can keep per-chunk partials, sized by `chunkCount` with the same arguments.
/// Returns the number of chunks used.
@discardableResult
public func parallelChunks(_ count: Int, minPerChunk: Int = 1, split: ChunkSplit = .perThread, grain: Int = 1,
                           _ body: (_ chunk: Int, _ range: Range<Int>) -> Void) -> Int {
  if count <= 0 { return 0 }
  let partition = chunkPartition(count, minPerChunk: minPerChunk, split: split, grain: grain)
  if partition.chunks == 1 {
    body(0, 0..<count)
    return 1
  }
  guard let pool = Compute.pool else {
    for c in 0..<partition.chunks { body(c, partition.range(c)) }
    return partition.chunks
  }
  pool.run(partition, body)
  return partition.chunks
}

/// The number of chunks `parallelChunks` will use for `count` items.
public func chunkCount(_ count: Int, minPerChunk: Int = 1, split: ChunkSplit = .perThread, grain: Int = 1) -> Int {
  chunkPartition(count, minPerChunk: minPerChunk, split: split, grain: grain).chunks
}
