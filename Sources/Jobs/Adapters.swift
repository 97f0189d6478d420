// The real data loader and process group behind the training loop's protocols.
import ArgumentParser
import Collective
import Common
import DataPipeline
import Telemetry
import Training

/// DataLoader as the training loop's BatchSource.
public final class LoaderSource: BatchSource {
  public let loader: DataLoader
  public init(_ loader: DataLoader) { self.loader = loader }
  public var examplesInSplit: Int { loader.examplesInSplit }
  public var skippedCorrupt: Int { loader.skippedCorruptImages + loader.skippedCorruptRecords }
  public func start(epoch: Int, skipBatches: Int) throws { loader.start(epoch: epoch, skipBatches: skipBatches) }
  public func next(images: UnsafeMutablePointer<Float>, labels: UnsafeMutablePointer<Int32>) throws -> Int {
    try loader.next(images: images, labels: labels)
  }
}

/// ProcessGroup as the training loop's Communicator; gradients go through fusion buckets that are
/// reduced on a communication thread while backward continues (unless overlap is off).
public final class GroupCommunicator: Communicator {
  public let group: ProcessGroup
  let overlap: Bool, wire: GradientWire, bucketBytes: Int
  /// Bucket allreduces become timeline spans (set before the trainer asks for its reducer).
  public var timeline: Timeline?

  public init(_ group: ProcessGroup, overlap: Bool, fp16: Bool = false, wire: GradientWire? = nil, bucketBytes: Int) {
    self.group = group; self.overlap = overlap; self.wire = wire ?? (fp16 ? .fp16 : .fp32); self.bucketBytes = bucketBytes
  }
  public var rank: Int { group.rank }
  public var size: Int { group.size }
  public func broadcast(_ p: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
    try group.broadcast(p, count: count, root: root)
  }
  public func allreduceSum(_ p: UnsafeMutablePointer<Double>, count: Int) throws { try group.allreduceSum(p, count: count) }
  public func allgather(_ bytes: [UInt8]) throws -> [[UInt8]] { try group.allgather(bytes) }
  public func barrier() throws { try group.barrier() }
  public func gradientReducer(buffer: UnsafeMutablePointer<Float>, count: Int) -> GradientReducing {
    let r = GradientReducer(group: group, buffer: buffer, count: count, bucketBytes: bucketBytes, overlap: overlap, wire: wire)
    r.timeline = timeline
    return Reducer(r)
  }

  final class Reducer: GradientReducing {
    let inner: GradientReducer
    init(_ r: GradientReducer) { inner = r }
    func ready(_ range: Range<Int>) { inner.ready(range) }
    func finish() throws { try inner.finish() }
  }
}

/// Runs the job behind a command. A runtime failure (bad file, tensor, address…) is one line,
/// "<command>: error: …", on stderr and exit status 1, without ArgumentParser's usage text, which is
/// for flag errors only.
public func runReportingFailure(_ command: String, _ job: () throws -> Void) throws {
  do { try job() } catch {
    writeStderr("\(command): error: \(error)")
    throw ExitCode.failure
  }
}
