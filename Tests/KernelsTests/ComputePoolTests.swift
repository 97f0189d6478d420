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
}
