import Foundation
import Synchronization
import XCTest
import Kernels

/// The compute pool behind parallelChunks: every chunk runs exactly once with the same partition as
/// the serial loop, regions nested or opened from other threads run inline, and back-to-back regions
/// (where a late worker could take a chunk of the next region) never mix up.
final class ComputePoolTests: XCTestCase {
  override func tearDown() { Compute.setThreads(1) }

  /// Marks each element's visits; returns (visits per element, chunk index seen per element).
  private func cover(_ count: Int, threads: Int) -> (visits: [Int], chunkOf: [Int], chunks: Int) {
    Compute.setThreads(threads)
    var visits = [Int](repeating: 0, count: count)
    var chunkOf = [Int](repeating: -1, count: count)
    let chunks = visits.withUnsafeMutableBufferPointer { v in
      chunkOf.withUnsafeMutableBufferPointer { co in
        parallelChunks(count) { c, r in
          for i in r { v[i] += 1; co[i] = c }
        }
      }
    }
    return (visits, chunkOf, chunks)
  }

  func testEveryElementRunsOnceInTheSerialPartition() {
    for threads in [1, 2, 3, 5] {
      for count in [1, 2, 7, 64, 1001] {
        let (visits, chunkOf, chunks) = cover(count, threads: threads)
        XCTAssertEqual(chunks, min(threads, count), "threads \(threads) count \(count)")
        XCTAssertEqual(visits, [Int](repeating: 1, count: count), "threads \(threads) count \(count)")
        for c in 0..<chunks {
          for i in ComputePool.range(c, count: count, chunks: chunks) { XCTAssertEqual(chunkOf[i], c) }
        }
      }
    }
  }

  /// Thousands of tiny regions back to back: the window where a worker late for region g meets
  /// region g+1. Each region's chunk sums must be its own.
  func testBackToBackRegionsDoNotMix() {
    Compute.setThreads(3)
    let regions = 20_000
    var partial = [Int](repeating: 0, count: 3)
    for g in 0..<regions {
      let n = 3 + g % 5
      let used = partial.withUnsafeMutableBufferPointer { p in
        parallelChunks(n) { c, r in p[c] = r.reduce(0) { $0 + $1 * (g + 1) } }
      }
      let total = partial[0..<used].reduce(0, +)
      XCTAssertEqual(total, (g + 1) * n * (n - 1) / 2, "region \(g)")
      if total != (g + 1) * n * (n - 1) / 2 { return }
    }
  }

  func testNestedRegionRunsInlineWithTheSamePartition() {
    Compute.setThreads(2)
    let outer = 4, inner = 6
    var seen = [[Int]](repeating: [], count: outer)
    let lock = NSLock()
    parallelChunks(outer) { _, r in
      for o in r {
        var chunks: [Int] = []
        let used = parallelChunks(inner) { c, _ in
          lock.lock(); chunks.append(c); lock.unlock()
        }
        XCTAssertEqual(used, 2)
        lock.lock(); seen[o] = chunks; lock.unlock()
      }
    }
    // Inline means serial and in order on the thread that opened it.
    XCTAssertEqual(seen, [[Int]](repeating: [0, 1], count: outer))
  }

  /// Two threads opening regions at once: one gets the pool, the other runs inline; both correct.
  func testConcurrentCallersAreBothCorrect() {
    Compute.setThreads(2)
    let sums = Mutex<[Int]>([0, 0])
    DispatchQueue.concurrentPerform(iterations: 2) { caller in
      for _ in 0..<2_000 {
        var part = [0, 0]
        part.withUnsafeMutableBufferPointer { p in
          _ = parallelChunks(100) { c, r in p[c] = r.reduce(0, +) }
        }
        sums.withLock { $0[caller] += part[0] + part[1] }
      }
    }
    XCTAssertEqual(sums.withLock { $0 }, [2_000 * 4950, 2_000 * 4950])
  }

  /// Workers that went to sleep (spin budget exhausted) wake for the next region.
  func testSleepingWorkersWake() {
    let pool = ComputePool(workers: 2, spinMicroseconds: 0)
    defer { pool.shutdown() }
    for _ in 0..<50 {
      usleep(200)
      var hits = [Int](repeating: 0, count: 3)
      hits.withUnsafeMutableBufferPointer { h in pool.run(count: 3, chunks: 3) { c, _ in h[c] += 1 } }
      XCTAssertEqual(hits, [1, 1, 1])
    }
  }

  /// Changing the thread count replaces the pool; the old workers exit and the new count applies.
  func testThreadCountChangesApply() {
    for t in [2, 4, 1, 3] {
      Compute.setThreads(t)
      XCTAssertEqual(Compute.threads, t)
      XCTAssertEqual(Compute.pool?.workerCount ?? 0, t - 1)
      XCTAssertEqual(chunkCount(100), t)
    }
  }

  /// Balanced regions: one large chunk per thread, then small tail chunks; together they cover every
  /// item once, in index order, none empty, inner boundaries on the grain, each chunk at least
  /// minPerChunk items. Off (or one thread, or too few items) it is the equal split of before.
  func testBalancedPartitionCoversEveryItemOnceOnItsGrain() {
    defer { Compute.setThreads(1); BalancedChunks.enabled = true }
    for threads in [2, 3] {
      Compute.setThreads(threads)
      for (count, minPer, grain) in [(10, 1, 1), (64, 1, 1), (1000, 1, 1), (1000, 64, 32), (3001, 64, 128),
                                     (100_352, 64, 128), (224, 1, 1), (7, 1, 1), (1568, 64, 32)] {
        let p = chunkPartition(count, minPerChunk: minPer, split: .balanced, grain: grain)
        let what = "threads \(threads) count \(count) min \(minPer) grain \(grain)"
        var next = 0
        for c in 0..<p.chunks {
          let r = p.range(c)
          XCTAssertEqual(r.lowerBound, next, what)
          XCTAssertFalse(r.isEmpty, what)
          XCTAssertGreaterThanOrEqual(r.count, min(minPer, count), what)
          if c > 0 { XCTAssertEqual(r.lowerBound % grain, 0, what) }
          next = r.upperBound
        }
        XCTAssertEqual(next, count, what)
        let perThread = min(threads, count / minPer)
        if count / 4 / max(minPer, grain) >= threads && (count - count / 4) / threads >= max(minPer, grain) {
          XCTAssertEqual(p.head, threads, what)
          XCTAssertGreaterThanOrEqual(p.tail, threads, what)
          XCTAssertLessThanOrEqual(p.tail, 4 * threads, what)
          // The head covers about three quarters, each tail chunk at most a quarter of a head chunk's share.
          XCTAssertEqual(Double(p.range(threads - 1).upperBound) / Double(count), 0.75, accuracy: Double(grain) / Double(count) + 0.01, what)
        } else {
          XCTAssertEqual(p, .uniform(count, chunks: perThread), what)
        }
        XCTAssertEqual(chunkCount(count, minPerChunk: minPer, split: .balanced, grain: grain), p.chunks, what)
        BalancedChunks.enabled = false
        XCTAssertEqual(chunkPartition(count, minPerChunk: minPer, split: .balanced, grain: grain), .uniform(count, chunks: perThread), what)
        BalancedChunks.enabled = true
        XCTAssertEqual(chunkPartition(count, minPerChunk: minPer, split: .perThread, grain: grain), .uniform(count, chunks: perThread), what)
      }
    }
    Compute.setThreads(1)
    XCTAssertEqual(chunkPartition(1000, split: .balanced), .uniform(1000, chunks: 1))
  }

  /// A region runs its balanced partition: every chunk once, on the range the partition gives, and
  /// when the thread that took chunk 0 is held up, the other thread takes the tail chunks.
  func testBalancedRegionLetsTheFreeThreadTakeTheTail() {
    Compute.setThreads(2)
    let count = 4000
    let p = chunkPartition(count, split: .balanced)
    XCTAssertGreaterThan(p.tail, 0)
    let runs = Mutex<[Int: (range: Range<Int>, thread: pthread_t)]>([:])
    let used = parallelChunks(count, split: .balanced) { c, r in
      let tid = pthread_self()
      if c == 0 { usleep(100_000) }  // held up: the other thread should finish everything else meanwhile
      runs.withLock { $0[c] = (r, tid) }
    }
    let seen = runs.withLock { $0 }
    XCTAssertEqual(used, p.chunks)
    XCTAssertEqual(seen.count, p.chunks)
    for c in 0..<p.chunks { XCTAssertEqual(seen[c]?.range, p.range(c)) }
    let held = seen[0]!.thread
    let others = (p.head..<p.chunks).filter { pthread_equal(seen[$0]!.thread, held) == 0 }
    XCTAssertFalse(others.isEmpty, "no tail chunk ran on the thread that was not held up")
  }

  /// Per-thread scratch slots: within a region each thread has one slot, distinct threads distinct
  /// slots, all below Compute.threads; the opening thread (and any thread outside the pool) has 0.
  func testThreadSlotsAreDistinctAndBelowTheThreadCount() {
    defer { Compute.setThreads(1) }
    for threads in [1, 2, 3] {
      Compute.setThreads(threads)
      XCTAssertEqual(Compute.slot, 0)
      for _ in 0..<200 {
        let seen = Mutex<[(thread: pthread_t, slot: Int)]>([])
        parallelChunks(4000, split: .balanced) { _, _ in
          let entry = (pthread_self(), Compute.slot)
          seen.withLock { $0.append(entry) }
        }
        let entries = seen.withLock { $0 }
        for a in entries {
          XCTAssertLessThan(a.slot, threads)
          for b in entries {
            XCTAssertEqual(pthread_equal(a.thread, b.thread) != 0, a.slot == b.slot, "threads \(threads)")
          }
          if pthread_equal(a.thread, pthread_self()) != 0 { XCTAssertEqual(a.slot, 0) }
        }
      }
    }
  }
}
