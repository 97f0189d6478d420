// Test doubles and harness: an in-memory dataset with the loader's determinism contract, and ranks
// as threads over the real process group on the in-process transport.
import Collective
import Foundation
import Jobs
import Kernels
import TestSupport
import Training
import XCTest

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

/// Runs `body` on `n` ranks as threads (real threads: a blocked rank must not starve the others)
/// over the production stack: ProcessGroup on the in-process transport, behind the worker's own
/// GroupCommunicator (fusion buckets reduced on a communication thread while backward runs).
/// Returns each rank's error; fails the test if the ranks do not finish in `timeout` seconds.
func runInProcessRanks(_ n: Int, bucketBytes: Int = 64 << 10, timeout: Double = 120,
                       file: StaticString = #filePath, line: UInt = #line,
                       _ body: @escaping (Int, Communicator) throws -> Void) -> [Error?] {
  let fabric = InProcessFabric(size: n)
  var groupOptions = GroupOptions()
  groupOptions.connectTimeout = timeout
  groupOptions.runningTimeout = timeout
  let options = groupOptions
  let work = UncheckedSendable(body)
  return runRanks(n, timeout: timeout, file: file, line: line) { r in
    let group = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "training-tests",
                                      modelSignature: [("training-tests", n)], options: options)
    try work.value(r, GroupCommunicator(group, overlap: true, fp16: false, bucketBytes: bucketBytes))
  }
}

/// The tests' rank bodies share models and boxes across threads by design (each rank touches its own).
struct UncheckedSendable<T>: @unchecked Sendable {
  let value: T
  init(_ value: T) { self.value = value }
}

/// Collects log lines.
final class MemoryLog: TrainLog {
  private let lock = NSLock()
  var lines: [String] = []
  func info(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
  func warning(_ line: String) { lock.lock(); lines.append("warning: " + line); lock.unlock() }
}
