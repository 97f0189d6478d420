// What the training loop needs from the data pipeline and from the process group. The loop is
// written against these protocols; `worker` and `evaluate` plug in the real DataLoader and
// ZeroMQ ProcessGroup, tests plug in in-memory ones.
import Foundation

/// One rank's stream of batches.
public protocol BatchSource: AnyObject {
  /// Examples in the whole split (all ranks), for steps_per_epoch.
  var examplesInSplit: Int { get }
  /// Positions the stream at batch `skipBatches` of `epoch` (exact resume).
  func start(epoch: Int, skipBatches: Int) throws
  /// Writes the next batch (NHWC float32 in [−1, 1], labels) and returns how many examples it holds;
  /// 0 at the end of the epoch.
  func next(images: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>) throws -> Int
  /// Corrupt examples skipped so far (reported in the log).
  var skippedCorrupt: Int { get }
}

/// Reduces a gradient slab while backward is still running.
public protocol GradientReducing: AnyObject {
  /// Called from backward with consecutive ranges of the gradient slab, front to back.
  func ready(_ range: Range<Int>)
  /// Waits until the whole slab holds the average over all ranks.
  func finish() throws
}

/// The collective operations training uses.
public protocol Communicator: AnyObject {
  var rank: Int { get }
  var size: Int { get }
  func broadcast(_ p: UnsafeMutablePointer<Float>, count: Int, root: Int) throws
  func allreduceSum(_ p: UnsafeMutablePointer<Double>, count: Int) throws
  func allgather(_ bytes: [UInt8]) throws -> [[UInt8]]
  func barrier() throws
  func gradientReducer(buffer: UnsafeMutablePointer<Float>, count: Int) -> GradientReducing
}

/// World size 1: every collective is the identity, no sockets.
public final class SingleProcess: Communicator {
  public init() {}
  public var rank: Int { 0 }
  public var size: Int { 1 }
  public func broadcast(_ p: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {}
  public func allreduceSum(_ p: UnsafeMutablePointer<Double>, count: Int) throws {}
  public func allgather(_ bytes: [UInt8]) throws -> [[UInt8]] { [bytes] }
  public func barrier() throws {}
  public func gradientReducer(buffer: UnsafeMutablePointer<Float>, count: Int) -> GradientReducing { NoReduction() }

  final class NoReduction: GradientReducing {
    func ready(_ range: Range<Int>) {}
    func finish() throws {}
  }
}

/// Where the loop's messages go: the worker prints them (launch routes each rank to its log file).
public protocol TrainLog: AnyObject {
  func info(_ line: String)
  func warning(_ line: String)
}

/// Prints each line and flushes at once, so a supervising `launch` sees it when it happens.
public final class PrintLog: TrainLog {
  let prefix: String
  public init(prefix: String = "") { self.prefix = prefix }
  public func info(_ line: String) { emit(prefix + line) }
  public func warning(_ line: String) { emit("\(prefix)warning: \(line)") }
  private func emit(_ s: String) {
    print(s)
    fflush(stdout)
  }
}
