// Persistent worker threads for `parallelChunks`. A training step opens a few hundred parallel
// regions, many of them tens of microseconds long; DispatchQueue.concurrentPerform pays a wake-up
// per region and hands chunks out statically, so one preempted thread stalls the region. Here the
// workers spin for a bounded time between regions (then sleep on a condition), the caller runs
// chunks itself, and chunks are claimed dynamically: whoever is running takes the next one, so a
// worker that has not woken yet, or was preempted by a decode thread, costs at most one chunk.
// The partition into chunks does not depend on who runs them, so results stay deterministic.
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public final class ComputePool: @unchecked Sendable {
  public typealias Body = (_ chunk: Int, _ range: Range<Int>) -> Void

  /// How long an idle worker polls for the next region before it sleeps. Between the regions of a
  /// step the gaps are microseconds; between steps (data, allreduce, logging) they can be long, and
  /// a sleeping worker leaves the core to the decode and allreduce threads.
  public static let defaultSpinMicroseconds = 200

  public let workerCount: Int
  private let spinNanoseconds: UInt64

  /// One word publishes a region and hands out its chunks: generation (32 bits) | chunk count
  /// (16 bits) | next unclaimed chunk (16 bits). A claim is a compare-exchange on the whole word, so a
  /// worker that is late for one region can never take a chunk of the next one.
  private let claimWord = Atomic<UInt64>(0)
  /// Chunks of the current region that have finished; the caller returns when all have.
  private let finished = Atomic<Int>(0)
  /// Workers asleep on `cond` (read by the caller to skip the broadcast when nobody sleeps).
  private let sleepers = Atomic<Int>(0)
  /// Set while a region runs: a region opened inside one (or from another thread meanwhile) runs inline.
  private let busy = Atomic<Bool>(false)
  private let stopping = Atomic<Bool>(false)
  private let cond = NSCondition()

  // The current region, written by the caller before it publishes the claim word and read by a
  // worker only after it has claimed a chunk (the region cannot end before that chunk has finished).
  private var body: Body?
  private var partition = ChunkPartition.uniform(0, chunks: 0)
  private var generation: UInt32 = 0

  /// Each worker's thread (pthread_self, set by the worker before its first chunk; 0 until then).
  private let workerThreads: [WorkerThread]
  private final class WorkerThread: Sendable { let id = Atomic<UInt>(0) }

  /// Which of this pool's threads runs the calling code: i for worker i (1…workerCount), 0 for any
  /// other thread (the one that opened the region). So a region's threads have distinct slots below
  /// workerCount + 1, and kernels can keep per-thread scratch (buffers a chunk fills and uses up
  /// before it ends) in that many slots, warm in cache from the thread's previous chunk, where
  /// per-chunk buffers would be cold for every tail chunk of a balanced region.
  public func slotOfCallingThread() -> Int {
    let me = UInt(pthread_self())
    for i in 0..<workerThreads.count where workerThreads[i].id.load(ordering: .relaxed) == me { return i + 1 }
    return 0
  }

  private static let chunkBits: UInt64 = 16
  static let maxChunks = Int((1 << chunkBits) - 1)

  public init(workers: Int, spinMicroseconds: Int = ComputePool.defaultSpinMicroseconds) {
    workerCount = max(0, workers)
    spinNanoseconds = UInt64(max(0, spinMicroseconds)) * 1000
    workerThreads = (0..<max(0, workers)).map { _ in WorkerThread() }
    for i in 0..<workerCount {
      let t = Thread { [self] in
        workerThreads[i].id.store(UInt(pthread_self()), ordering: .relaxed)
        workerLoop()
      }
      t.name = "compute-\(i + 1)"
      t.start()
    }
  }

  /// Stops the workers once they are idle (they exit at their next look at the claim word).
  public func shutdown() {
    stopping.store(true, ordering: .sequentiallyConsistent)
    bumpGeneration(chunks: 0)
  }

  /// Runs `body(c, range_c)` for the `chunks` equal contiguous pieces of `0..<count`, on the caller and
  /// the workers; returns when every chunk has finished.
  public func run(count: Int, chunks: Int, _ body: Body) {
    run(.uniform(count, chunks: chunks), body)
  }

  /// Runs `body(c, partition.range(c))` for every chunk of `partition`, on the caller and the workers
  /// (chunks are claimed in index order by whoever is free); returns when every chunk has finished.
  public func run(_ partition: ChunkPartition, _ body: Body) {
    let chunks = partition.chunks
    precondition(chunks >= 1 && chunks <= ComputePool.maxChunks)
    guard workerCount > 0, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
      for c in 0..<chunks { body(c, partition.range(c)) }
      return
    }
    withoutActuallyEscaping(body) { escaping in
      self.body = escaping
      self.partition = partition
      finished.store(0, ordering: .relaxed)
      let g = bumpGeneration(chunks: chunks)
      runChunks(generation: g)
      // The rest are in flight on workers; they are short, so poll rather than sleep.
      while finished.load(ordering: .acquiring) < chunks {}
      self.body = nil
    }
    busy.store(false, ordering: .releasing)
  }

  public static func range(_ c: Int, count: Int, chunks: Int) -> Range<Int> {
    ChunkPartition.uniform(count, chunks: chunks).range(c)
  }

  /// Publishes a new region (or, with 0 chunks, just a new generation) and wakes sleeping workers.
  @discardableResult
  private func bumpGeneration(chunks: Int) -> UInt32 {
    generation &+= 1
    let word = UInt64(generation) << 32 | UInt64(chunks) << ComputePool.chunkBits
    // Sequentially consistent with the worker's `sleepers` increment then re-check: either the
    // worker sees this word, or we see it asleep and broadcast (under the lock, so not before it waits).
    claimWord.store(word, ordering: .sequentiallyConsistent)
    if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
      cond.lock(); cond.broadcast(); cond.unlock()
    }
    return generation
  }

  /// Claims and runs chunks of region `g` until none is left (or the region is no longer `g`).
  private func runChunks(generation g: UInt32) {
    let chunkMask: UInt64 = (1 << ComputePool.chunkBits) - 1
    var word = claimWord.load(ordering: .acquiring)
    while true {
      guard UInt32(truncatingIfNeeded: word >> 32) == g else { return }
      let chunks = Int((word >> ComputePool.chunkBits) & chunkMask)
      let next = Int(word & chunkMask)
      guard next < chunks else { return }
      let (exchanged, current) = claimWord.compareExchange(
        expected: word, desired: word + 1, ordering: .acquiringAndReleasing)
      if exchanged {
        runClaimed(next, chunks: chunks)
        finished.add(1, ordering: .releasing)
        word = claimWord.load(ordering: .acquiring)
      } else {
        word = current
      }
    }
  }

  // Separate so that the worker's reference to the body is released before the chunk counts as finished.
  @inline(never)
  private func runClaimed(_ c: Int, chunks: Int) {
    guard let body else { return }
    body(c, partition.range(c))
  }

  private func workerLoop() {
    var seen: UInt32 = 0
    while true {
      let g = waitForGeneration(after: seen)
      if stopping.load(ordering: .acquiring) { return }
      seen = g
      runChunks(generation: g)
    }
  }

  /// Spins for up to `spinNanoseconds`, then sleeps, until the claim word's generation differs from `seen`.
  private func waitForGeneration(after seen: UInt32) -> UInt32 {
    func current() -> UInt32 { UInt32(truncatingIfNeeded: claimWord.load(ordering: .acquiring) >> 32) }
    let deadline = monotonicNanoseconds() + spinNanoseconds
    var polls = 0
    while true {
      let g = current()
      if g != seen { return g }
      polls += 1
      // Reading the clock costs ~20 ns: look at it every few hundred polls only.
      if polls & 255 == 0 && monotonicNanoseconds() >= deadline { break }
    }
    cond.lock()
    sleepers.add(1, ordering: .sequentiallyConsistent)
    var g = UInt32(truncatingIfNeeded: claimWord.load(ordering: .sequentiallyConsistent) >> 32)
    while g == seen {
      cond.wait()
      g = current()
    }
    sleepers.subtract(1, ordering: .sequentiallyConsistent)
    cond.unlock()
    return g
  }
}

@inline(__always)
func monotonicNanoseconds() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
