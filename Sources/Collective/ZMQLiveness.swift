// Liveness of the ZeroMQ ring edge. A socket monitor reports connections (by file descriptor),
// their handshakes and their disconnection; ConnectionTracker works out which descriptor is the
// authenticated neighbour, so only its disconnect counts as a lost rank, while strays (port
// scanners, HTTP probes, other jobs) are logged with their source address and ignored. ZMTP
// heartbeats close connections whose peer stopped answering, so a dead or stopped neighbour is
// reported by name instead of waiting forever.
import CZMQ
import Foundation

extension ZMQTransport {
  /// Failed security handshakes with the next rank (and none succeeded) before we conclude it
  /// refuses us for good (a different job secret) instead of, say, restarting mid-handshake.
  static let refusalsBeforeGivingUp = 2
  /// Upper bound of one zmq_poll, so timeouts are checked even without events.
  static let pollSliceMilliseconds = 500
  /// Monitor events we act on (values from zmq.h, stable since libzmq 4.3).
  static let eventHandshakeSucceeded: UInt16 = 0x1000
  static let eventDisconnected: UInt16 = 0x0200
  static let eventHandshakeFailedAuth: UInt16 = 0x4000
  static let eventHandshakeFailedProtocol: UInt16 = 0x2000
  static let eventHandshakeFailedNoDetail: UInt16 = 0x0800
  static let eventAccepted: UInt16 = 0x0020
  static let eventConnected: UInt16 = 0x0001


  /// Reads pending monitor events and updates the neighbours' state.
  func drainMonitors() throws {
    if let m = inMonitor {
      while let (event, value, address) = readEvent(m) {
        report(Self.apply(event, value: value, address: address, to: &inboundConnections))
      }
    }
    if let m = outMonitor {
      while let (event, value, _) = readEvent(m) {
        _ = Self.apply(event, value: value, to: &outboundConnections)  // (refusals by the next rank: rightRefusals)
        if event == Self.eventHandshakeSucceeded { rightRefusals = 0 }
        if Self.failureEvents.contains(event) { rightRefusals += 1 }
      }
    }
  }

  static let failureEvents: Set<UInt16> = [eventHandshakeFailedAuth, eventHandshakeFailedProtocol, eventHandshakeFailedNoDetail]

  /// Feeds one monitor event to `tracker`; returns the strays it settled.
  static func apply(_ event: UInt16, value: UInt32, address: String = "", to tracker: inout ConnectionTracker) -> [ConnectionTracker.Stray] {
    let fd = Int32(bitPattern: value)
    switch event {
    case eventAccepted, eventConnected: tracker.opened(fd: fd, address: address)
    case eventHandshakeSucceeded: tracker.handshakeSucceeded()
    case eventHandshakeFailedAuth: tracker.handshakeFailed(reason: "credentials refused: it does not hold this job's secret")
    case eventHandshakeFailedProtocol:
      tracker.handshakeFailed(reason: "ZMTP protocol error 0x\(String(value, radix: 16))"
                              + (value == 0x1100_0002 ? " (security mechanism mismatch)" : ""))
    case eventHandshakeFailedNoDetail:
      tracker.handshakeFailed(reason: "closed or timed out during the handshake (\(String(cString: strerror(Int32(bitPattern: value)))))")
    case eventDisconnected: return tracker.closed(fd: fd)
    default: break
    }
    return []
  }

  /// Logs strays (rate-limited): they are ignored, never counted as the neighbour.
  func report(_ strays: [ConnectionTracker.Stray]) {
    for s in strays {
      let address = s.address.isEmpty ? "an unknown address (closed before it could be read)" : s.address
      let line = "warning: \(describe(rank: rank)): ignored a connection from \(address): \(s.reason)"
      for l in strayLog.admit(line, now: Date().timeIntervalSince(clock)) {
        log(l.hasPrefix("warning:") ? l : "warning: \(describe(rank: rank)): \(l)")
      }
    }
  }

  func rightFailure() -> CollectiveError {
    if rightRefusedUs {
      return .handshakeMismatch("\(describe(rank: right)) refused this rank's credentials: the job secrets differ, "
                                + "or that address belongs to another job (every launch of a multi-server job needs the same --secret-file)")
    }
    return .peerLost(peer: describe(rank: right), detail: "the connection closed (the process exited, was killed, or stopped answering heartbeats)")
  }

  /// One monitor event (event id, value = file descriptor, second frame: the relay's source
  /// address or libzmq's endpoint), or nil when none is pending.
  func readEvent(_ monitor: UnsafeMutableRawPointer) -> (UInt16, UInt32, String)? {
    var msg = zmq_msg_t()
    zmq_msg_init(&msg)
    defer { zmq_msg_close(&msg) }
    guard zmq_msg_recv(&msg, monitor, ZMQ_DONTWAIT) >= 0 else { return nil }
    var result: (UInt16, UInt32)?
    if zmq_msg_size(&msg) >= 6, let p = zmq_msg_data(&msg) {
      result = (p.loadUnaligned(as: UInt16.self), p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
    }
    if logMonitorEvents { log("debug: rank \(rank) \(monitor == inMonitor ? "in" : "out") event \(String(result?.0 ?? 0, radix: 16)) value \(result?.1 ?? 0)") }
    var second = ""
    while zmq_msg_more(&msg) != 0 {
      zmq_msg_close(&msg)
      zmq_msg_init(&msg)
      if zmq_msg_recv(&msg, monitor, ZMQ_DONTWAIT) < 0 { break }
      if second.isEmpty, let p = zmq_msg_data(&msg) {
        second = String(decoding: UnsafeRawBufferPointer(start: p, count: zmq_msg_size(&msg)), as: UTF8.self)
      }
    }
    return (result?.0 ?? 0, result?.1 ?? 0, second)
  }

  /// Waits (up to `seconds`) until the next rank accepted our credentials; names it on failure.
  func waitForNext(seconds: Double) throws {
    let deadline = Date(timeIntervalSinceNow: seconds)
    while !isConnectedToNext {
      try drainMonitors()
      if rightRefusedUs { throw rightFailure() }
      if isConnectedToNext { break }
      if deadline.timeIntervalSinceNow <= 0 {
        throw CollectiveError.peerSilent(peer: describe(rank: right), seconds: seconds,
                                         phase: "connecting (no listener accepted this rank's connection)")
      }
      var items = [zmq_pollitem_t(socket: outMonitor, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)]
      _ = zmq_poll(&items, 1, min(Self.pollSliceMilliseconds, max(1, Int(deadline.timeIntervalSinceNow * 1000))))
    }
  }

}
