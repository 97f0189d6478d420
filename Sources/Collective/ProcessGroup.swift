// The group context (gloo's context): rank, size, the transport to the ring neighbours, timeouts
// and the failure state. Collectives are serialized (one at a time per group, in the same order
// on every rank); after any failure the group is unusable and every call rethrows that failure.

import Foundation

/// One rank's address.
public struct Endpoint: Equatable, Sendable, CustomStringConvertible {
  public var host: String
  public var port: Int
  public init(host: String, port: Int) { self.host = host; self.port = port }
  public var description: String { "\(host):\(port)" }
}

/// How ranks prove they belong to the job.
public enum SecurityMode: String, Sendable, CaseIterable {
  /// CURVE (Curve25519 key exchange, encrypted and authenticated traffic) with the job secret as
  /// the shared key pair; the ZAP handler refuses other keys.
  case curve
  /// PLAIN: the job secret as password, checked by the ZAP handler; traffic is not encrypted.
  /// Faster; acceptable where the network is trusted (one host's loopback).
  case plain
}

/// Where the ranks of a ZeroMQ group are and what they share.
public struct GroupSpec: Sendable {
  public var rank: Int
  /// Every rank's bind address, in rank order.
  public var endpoints: [Endpoint]
  public var jobID: String
  public var secret: JobSecret

  public init(rank: Int, endpoints: [Endpoint], jobID: String, secret: JobSecret) {
    self.rank = rank; self.endpoints = endpoints; self.jobID = jobID; self.secret = secret
  }
}

/// A model signature: parameter names and element counts in slab order.
public typealias ModelSignature = [(name: String, count: Int)]

public final class ProcessGroup: @unchecked Sendable {
  public let rank: Int
  public let size: Int
  fileprivate let ring: Ring?
  private let lock = NSLock()
  private var sequence: UInt32 = 0
  private var failure: Error?
  private var isClosed = false
  private let runningTimeout: Double

  /// The single-rank group: every collective is a local no-op, no sockets exist.
  public static func single() -> ProcessGroup { ProcessGroup(rank: 0, size: 1, ring: nil, runningTimeout: 0) }

  private init(rank: Int, size: Int, ring: Ring?, runningTimeout: Double) {
    self.rank = rank; self.size = size; self.ring = ring; self.runningTimeout = runningTimeout
  }

  /// Forms the ZeroMQ ring described by `spec` (world size 1: no sockets).
  public static func join(_ spec: GroupSpec, modelSignature: ModelSignature, options: GroupOptions) throws -> ProcessGroup {
    guard spec.endpoints.indices.contains(spec.rank) else {
      throw CollectiveError.invalidArgument("rank \(spec.rank) is not in a group of \(spec.endpoints.count)")
    }
    if spec.endpoints.count == 1 { return single() }
    let transport = try ZMQTransport(rank: spec.rank, endpoints: spec.endpoints, secret: spec.secret,
                                     security: options.security, timeout: options.connectTimeout,
                                     runningTimeout: options.runningTimeout, logMonitorEvents: options.logMonitorEvents,
                                     localSockets: options.localSockets, log: options.log)
    do {
      try transport.waitForNext(seconds: options.connectTimeout)
      return try join(transport: transport, jobID: spec.jobID, address: spec.endpoints[spec.rank].description,
                      modelSignature: modelSignature, options: options)
    } catch {
      transport.close()
      throw error
    }
  }

  /// Forms a group over any transport (the in-process one in tests): handshake, then ready.
  public static func join(transport: RingTransport, jobID: String, address: String = "",
                          modelSignature: ModelSignature, options: GroupOptions) throws -> ProcessGroup {
    let ring = Ring(transport: transport, minSegmentElements: max(1, options.segmentBytes / MemoryLayout<Float>.stride),
                    maxSegmentElements: max(1, options.maxSegmentBytes / MemoryLayout<Float>.stride),
                    peer: PeerMemory(minBytes: options.peerMemoryMinBytes))
    let group = ProcessGroup(rank: transport.rank, size: transport.size, ring: ring, runningTimeout: options.runningTimeout)
    transport.setTimeout(options.connectTimeout, phase: "the handshake")
    let hello = Hello(jobID: jobID, worldSize: transport.size, rank: transport.rank,
                      address: address.isEmpty ? "in-process" : address,
                      signature: modelSignature.map(\.name), counts: modelSignature.map(\.count))
    try group.run(.hello) { tag in try Handshake.run(ring, hello: hello, tag: { _ in tag }) }
    try group.run(.hello) { tag in try ring.probePeerMemory(tag: tag, enabled: options.peerMemory) }
    transport.setTimeout(options.runningTimeout, phase: "a collective")
    return group
  }

  // MARK: Collectives

  /// Copies `count` floats from rank `root` to every rank.
  public func broadcast(_ p: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
    guard (0..<size).contains(root) else { throw CollectiveError.invalidArgument("broadcast root \(root) not in 0..<\(size)") }
    try run(.broadcast) { tag in try ring?.broadcast(p, count: count, root: root, tag: tag) }
  }

  /// In place: every rank ends with the element-wise mean over ranks, bit-identical everywhere.
  public func allreduceAverage(_ p: UnsafeMutablePointer<Float>, count: Int) throws {
    try allreduceAverage(p, count: count, fp16: false)
  }

  /// As above; `fp16` sends half-precision values (sums stay float32; results are rounded to
  /// half precision identically on every rank).
  public func allreduceAverage(_ p: UnsafeMutablePointer<Float>, count: Int, fp16: Bool) throws {
    try allreduceAverage(p, count: count, wire: fp16 ? .fp16 : .fp32)
  }

  /// As above with the values sent as `wire` (sums stay float32; results rounded to `wire`
  /// identically on every rank).
  public func allreduceAverage(_ p: UnsafeMutablePointer<Float>, count: Int, wire: GradientWire) throws {
    try run(.allreduce) { tag in
      try ring?.allreduce(p, count: count, scale: 1 / Float(size), wire: wire.floatWire, tag: tag)
    }
  }

  /// In place sum of floats over ranks.
  public func allreduceSum(_ p: UnsafeMutablePointer<Float>, count: Int) throws {
    try run(.allreduce) { tag in try ring?.allreduce(p, count: count, scale: nil, wire: .float32, tag: tag) }
  }

  /// In place sum over ranks, for metrics (loss sums, correct counts): exact for integers < 2^53.
  public func allreduceSum(_ p: UnsafeMutablePointer<Double>, count: Int) throws {
    try run(.allreduce) { tag in try ring?.allreduce(p, count: count, scale: nil, wire: .float32, tag: tag) }
  }

  /// Every rank's bytes, in rank order (small metadata: checksums, counts, host names).
  public func allgather(_ bytes: [UInt8]) throws -> [[UInt8]] {
    guard let ring else { return [bytes] }
    var result: [[UInt8]] = []
    try run(.allgather) { tag in result = try ring.allgather(bytes, tag: tag) }
    return result
  }

  /// Returns once every rank called barrier.
  public func barrier() throws {
    try run(.barrier) { tag in _ = try ring?.allgather([], tag: tag) }
  }

  /// Closes the sockets. Not collective: a rank that finished its collectives may close while
  /// others still receive what it already sent (the transport lingers briefly to deliver it).
  public func close() {
    lock.lock(); defer { lock.unlock() }
    guard !isClosed else { return }
    isClosed = true
    ring?.transport.close()
  }

  deinit { close() }

  /// Serializes collectives, numbers them (the tag checked on every message) and turns the first
  /// failure into an abort notice for the rest of the ring.
  private func run(_ kind: OpKind, _ body: (UInt32) throws -> Void) throws {
    lock.lock(); defer { lock.unlock() }
    if let failure { throw failure }
    guard !isClosed else { throw CollectiveError.invalidArgument("the process group is closed") }
    let tag = kind.tag(sequence: sequence)
    sequence &+= 1
    do {
      try body(tag)
    } catch {
      failure = error
      if let ring, !((error as? CollectiveError).map { if case .aborted = $0 { return true } else { return false } } ?? false) {
        ring.transport.abort("\(ring.transport.describe(rank: rank)): \(error)")
      }
      // The group is dead; closing releases libzmq's zero-copy references to the caller's buffer
      // before the caller sees the error (and perhaps frees the buffer). A neighbour may still be
      // reading it directly (PeerMemory.swift): it then sums garbage into an op that fails anyway,
      // or gets EFAULT and reports this rank as failed or aborted.
      isClosed = true
      ring?.transport.close()
      throw error
    }
  }
}

extension ProcessGroup {
  /// Connections this rank refused because they lacked the job secret (0 for in-process groups).
  public var refusedConnections: Int { (ring?.transport as? ZMQTransport)?.refusedConnections ?? 0 }
  /// True when some edge of the ring reads allreduce segments straight from the sending rank's
  /// memory (PeerMemory.swift); the same on every rank.
  public var readsPeerMemory: Bool { ring?.peer.anyEdge ?? false }
}
