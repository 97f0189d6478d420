// Test doubles: an in-memory dataset with the loader's determinism contract, and ranks as threads
// sharing memory (a reference implementation of the collectives, independent of any transport).
import Foundation
import Kernels
import Training

/// `count` random images of `size`² with labels; each epoch is a permutation depending only on
/// (seed, epoch); rank r of n takes every n-th example of it.
final class MemoryDataset: BatchSource {
  let images: [Float], labels: [Int32]
  let count, size, batch, rank, ranks: Int
  let seed: UInt64
  var order: [Int] = []
  var cursor = 0
  var skippedCorrupt: Int { 0 }
  var examplesInSplit: Int { count }

  init(count: Int, size: Int, classes: Int, batch: Int, rank: Int = 0, ranks: Int = 1, seed: UInt64 = 5) {
    var rng = RandomState(seed: 1234)
    var im = [Float](repeating: 0, count: count * size * size * 3)
    var lb = [Int32](repeating: 0, count: count)
    for i in 0..<count {
      let label = i % classes
      lb[i] = Int32(label)
      // Learnable: the class sets the mean brightness of one channel, plus noise.
      for p in 0..<(size * size) {
        for c in 0..<3 {
          im[(i * size * size + p) * 3 + c] = (c == label % 3 ? 0.6 : -0.3) + (rng.uniform() - 0.5) * 0.8
        }
      }
    }
    images = im; labels = lb
    self.count = count; self.size = size; self.batch = batch; self.rank = rank; self.ranks = ranks; self.seed = seed
  }

  func start(epoch: Int, skipBatches: Int) throws {
    var rng = RandomState(seed: seed ^ UInt64(epoch) &* 0x9E37_79B9)
    var perm = Array(0..<count)
    perm.shuffle(using: &rng)
    order = stride(from: rank, to: count, by: ranks).map { perm[$0] }
    cursor = skipBatches * batch
  }

  func next(images out: UnsafeMutablePointer<Float>, labels outLabels: UnsafeMutablePointer<Int32>) throws -> Int {
    guard cursor + batch <= order.count else { return 0 }
    let px = size * size * 3
    for j in 0..<batch {
      let i = order[cursor + j]
      images.withUnsafeBufferPointer { (out + j * px).update(from: $0.baseAddress! + i * px, count: px) }
      outLabels[j] = labels[i]
    }
    cursor += batch
    return batch
  }
}

/// Ranks as threads: collectives meet at a shared rendezvous; sums are taken in rank order so every
/// rank gets bit-identical results.
final class ThreadGroup {
  let size: Int
  private let cond = NSCondition()
  private var arrived = 0, generation = 0
  private var slots: [[Double]]
  private var bytes: [[UInt8]]

  init(size: Int) {
    self.size = size
    slots = Array(repeating: [], count: size)
    bytes = Array(repeating: [], count: size)
  }

  func barrier() {
    cond.lock()
    let gen = generation
    arrived += 1
    if arrived == size { arrived = 0; generation += 1; cond.broadcast() } else {
      while gen == generation { cond.wait() }
    }
    cond.unlock()
  }

  func exchange(rank: Int, _ values: [Double]) -> [[Double]] {
    cond.lock(); slots[rank] = values; cond.unlock()
    barrier()
    cond.lock(); let all = slots; cond.unlock()
    barrier()
    return all
  }

  func exchangeBytes(rank: Int, _ b: [UInt8]) -> [[UInt8]] {
    cond.lock(); bytes[rank] = b; cond.unlock()
    barrier()
    cond.lock(); let all = bytes; cond.unlock()
    barrier()
    return all
  }

  func member(_ rank: Int) -> ThreadRank { ThreadRank(group: self, rank: rank) }
}

final class ThreadRank: Communicator {
  let group: ThreadGroup
  let rank: Int
  var size: Int { group.size }
  init(group: ThreadGroup, rank: Int) { self.group = group; self.rank = rank }

  func broadcast(_ p: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
    let all = group.exchange(rank: rank, rank == root ? (0..<count).map { Double(p[$0]) } : [])
    for i in 0..<count { p[i] = Float(all[root][i]) }
  }
  func allreduceSum(_ p: UnsafeMutablePointer<Double>, count: Int) throws {
    let all = group.exchange(rank: rank, (0..<count).map { p[$0] })
    for i in 0..<count { p[i] = all.reduce(0) { $0 + $1[i] } }
  }
  func allgather(_ bytes: [UInt8]) throws -> [[UInt8]] { group.exchangeBytes(rank: rank, bytes) }
  func barrier() throws { group.barrier() }
  func gradientReducer(buffer: UnsafeMutablePointer<Float>, count: Int) -> GradientReducing {
    Reducer(rank: self, buffer: buffer, count: count)
  }

  final class Reducer: GradientReducing {
    let rank: ThreadRank, buffer: UnsafeMutablePointer<Float>, count: Int
    var covered = 0
    init(rank: ThreadRank, buffer: UnsafeMutablePointer<Float>, count: Int) { self.rank = rank; self.buffer = buffer; self.count = count }
    func ready(_ range: Range<Int>) {
      precondition(range.lowerBound == covered, "ranges must arrive front to back")
      covered = range.upperBound
    }
    func finish() throws {
      precondition(covered == count, "backward reported \(covered) of \(count) gradients")
      covered = 0
      let all = rank.group.exchange(rank: rank.rank, (0..<count).map { Double(buffer[$0]) })
      let n = Float(rank.size)
      for i in 0..<count {
        var s: Float = 0
        for r in 0..<rank.size { s += Float(all[r][i]) }
        buffer[i] = s / n
      }
    }
  }
}

/// Collects log lines.
final class MemoryLog: TrainLog {
  private let lock = NSLock()
  var lines: [String] = []
  func info(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
  func warning(_ line: String) { lock.lock(); lines.append("warning: " + line); lock.unlock() }
}
