// The transport seam (gloo's "pair" layer, reduced to what a ring needs): every algorithm in this
// library is a schedule of messages sent to the next rank and received from the previous one, so
// a transport only moves ordered messages along one ring edge in each direction of data flow.
//
// Wire format shared by transports: a fixed header, then the payload.
//   kind  UInt32  data or abort
//   tag   UInt32  which collective the message belongs to (op kind << 24 | op sequence),
//                 so ranks calling different collectives fail loudly instead of mixing data
//   index UInt64  message counter of this ring edge: both ends count, a gap is a bug

import Foundation

/// Ordered, reliable messages along one ring edge: to `rank + 1`, from `rank - 1` (mod size).
public protocol RingTransport: AnyObject {
  var rank: Int { get }
  var size: Int { get }
  /// Describes a rank for error messages, e.g. "rank 3 (127.0.0.1:29503)".
  func describe(rank: Int) -> String
  /// Sends one message whose payload `fill` writes (exactly `byteCount` bytes) to the next rank.
  /// May return before the peer has it; order is preserved.
  func send(tag: UInt32, byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) throws
  /// Sends `bytes` without copying them: they must stay unchanged until `flush()` returned.
  func send(tag: UInt32, referencing bytes: UnsafeRawBufferPointer) throws
  /// Waits until the transport no longer refers to memory passed to `send(tag:referencing:)`.
  func flush() throws
  /// Receives the next message from the previous rank, checks its tag and hands the payload to
  /// `consume` (valid only during the call). An abort message from the ring throws `.aborted`.
  func receive(tag: UInt32, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws
  /// Sets the receive timeout (seconds) and the phase named in timeout errors.
  func setTimeout(_ seconds: Double, phase: String)
  /// Tells the rest of the ring that this rank failed (best effort, does not block for long).
  func abort(_ reason: String)
  func close()
}

/// Message kinds in the wire header.
enum WireKind: UInt32 {
  case data = 0x4D4E_3244   // "MN2D"
  case abort = 0x4D4E_3241  // "MN2A"
}

/// The fixed header in front of every message.
struct WireHeader {
  static let byteCount = 16
  var kind: UInt32
  var tag: UInt32
  var index: UInt64

  func write(to p: UnsafeMutableRawPointer) {
    p.storeBytes(of: kind.littleEndian, toByteOffset: 0, as: UInt32.self)
    p.storeBytes(of: tag.littleEndian, toByteOffset: 4, as: UInt32.self)
    p.storeBytes(of: index.littleEndian, toByteOffset: 8, as: UInt64.self)
  }

  static func read(_ p: UnsafeRawBufferPointer) -> WireHeader? {
    guard p.count >= byteCount, let base = p.baseAddress else { return nil }
    return WireHeader(kind: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 0, as: UInt32.self)),
                      tag: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
                      index: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
  }
}

/// Collective kinds, the high byte of a message tag.
enum OpKind: UInt32 {
  case hello = 1, barrier, broadcast, allreduce, allgather

  var name: String {
    switch self {
    case .hello: return "handshake"
    case .barrier: return "barrier"
    case .broadcast: return "broadcast"
    case .allreduce: return "allreduce"
    case .allgather: return "allgather"
    }
  }

  func tag(sequence: UInt32) -> UInt32 { rawValue << 24 | (sequence & 0xFF_FFFF) }

  static func describe(tag: UInt32) -> String {
    let kind = OpKind(rawValue: tag >> 24)?.name ?? "unknown op \(tag >> 24)"
    return "\(kind) #\(tag & 0xFF_FFFF)"
  }
}

/// Checks a received header against what the schedule expects; shared by the transports.
func validate(_ header: WireHeader?, expectedTag: UInt32, expectedIndex: UInt64, from peer: String) throws {
  guard let h = header else { throw CollectiveError.protocolViolation("short message from \(peer)") }
  if h.kind == WireKind.abort.rawValue { return }  // handled by the caller
  guard h.kind == WireKind.data.rawValue else {
    throw CollectiveError.protocolViolation("unknown message kind \(h.kind) from \(peer)")
  }
  guard h.tag == expectedTag else {
    throw CollectiveError.protocolViolation(
      "\(peer) is in \(OpKind.describe(tag: h.tag)) but this rank is in \(OpKind.describe(tag: expectedTag)): "
      + "ranks must call the same collectives in the same order")
  }
  guard h.index == expectedIndex else {
    throw CollectiveError.protocolViolation("message \(h.index) from \(peer), expected \(expectedIndex)")
  }
}
