// The ZeroMQ ring edge: a PULL socket bound at this rank's own device address receives from the
// previous rank, a PUSH socket connected to the next rank sends. Sends are asynchronous (libzmq's
// I/O thread writes while this thread reduces the next segment), which is what pipelines the ring.
//
// The transport is split by job, as gloo splits its tcp transport:
//   ZMQTransport.swift  the edge itself: state, framed send/receive with deadlines, abort, close
//   ZMQSockets.swift    socket and security set-up (CURVE/PLAIN, ZAP, bind/connect, options)
//   ZMQLiveness.swift   socket monitors: which connection is the authenticated neighbour, strays
// Every wait is bounded by the current timeout.

import CZMQ
import Foundation

final class ZMQTransport: RingTransport {
  // Named constants: socket options in ZMQSockets.swift, liveness ones in ZMQLiveness.swift.
  let rank: Int
  let size: Int
  let endpoints: [Endpoint]
  let context: UnsafeMutableRawPointer
  var inbound: UnsafeMutableRawPointer?
  var outbound: UnsafeMutableRawPointer?
  var inMonitor: UnsafeMutableRawPointer?
  /// Reads the inbound monitor at once, to catch strays' source addresses (see MonitorRelay).
  var inRelay: MonitorRelay?
  var outMonitor: UnsafeMutableRawPointer?
  var zap: ZAPAuthenticator?
  /// Connection bookkeeping from the monitors, by file descriptor (see ConnectionTracker).
  var inboundConnections = ConnectionTracker()
  var outboundConnections = ConnectionTracker()
  var leftLost: Bool { inboundConnections.lost }
  var rightLost: Bool { outboundConnections.lost }
  /// The descriptor the last message came from (already known to be the neighbour's).
  var lastSourceFD: Int32 = -1
  /// Failed handshakes with the next rank since the last success.
  var rightRefusals = 0
  var rightRefusedUs: Bool { !outboundConnections.mayBeAuthenticated && rightRefusals >= Self.refusalsBeforeGivingUp }
  let log: (String) -> Void
  let logMonitorEvents: Bool
  /// Stray connections are logged once each, at most a burst per window.
  var strayLog = RateLimitedLog()
  let clock = Date()
  /// Zero-copy sends whose memory libzmq has not released yet.
  let releases = ReleaseCounter()
  var sent: UInt64 = 0
  var received: UInt64 = 0
  var timeout: Double
  var phase = "connecting"
  var failed = false
  var closed = false
  /// The Unix-domain socket file this rank bound (GroupOptions.localSockets), removed at close:
  /// libzmq leaves it behind.
  var boundLocalSocket: String?

  /// Inbound connections that closed without completing the security handshake (rogue
  /// processes, other jobs, port scanners, HTTP probes); each was logged and ignored.
  var refusedConnections: Int { inboundConnections.strays }
  /// True once the connection to the next rank completed its security handshake.
  var isConnectedToNext: Bool { outboundConnections.mayBeAuthenticated }

  init(rank: Int, endpoints: [Endpoint], secret: JobSecret, security: SecurityMode,
       timeout: Double, runningTimeout: Double, logMonitorEvents: Bool = false, localSockets: Bool = true,
       log: @escaping (String) -> Void) throws {
    precondition(endpoints.count >= 2 && endpoints.indices.contains(rank))
    self.rank = rank
    self.size = endpoints.count
    self.endpoints = endpoints
    self.timeout = timeout
    self.log = log
    self.logMonitorEvents = logMonitorEvents
    guard let ctx = zmq_ctx_new() else { throw CollectiveError.transport("cannot create a ZeroMQ context") }
    context = ctx
    zmq_ctx_set(ctx, ZMQ_IO_THREADS, 1)  // one I/O thread: one connection each way
    do {
      try setUp(secret: secret, security: security, runningTimeout: runningTimeout, localSockets: localSockets, log: log)
    } catch {
      close()
      throw error
    }
  }

  // MARK: RingTransport

  func describe(rank: Int) -> String { "rank \(rank) (\(endpoints[rank]))" }
  var left: Int { (rank + size - 1) % size }
  var right: Int { (rank + 1) % size }

  func setTimeout(_ seconds: Double, phase: String) { timeout = seconds; self.phase = phase }

  // Messages are two frames: the header, then the payload. The payload frame of a segment refers
  // to the caller's buffer (zero-copy, released through `releases`), or is a fresh copy.

  func send(tag: UInt32, byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) throws {
    try post(.data, tag: tag, byteCount: byteCount, fill)
  }

  func send(tag: UInt32, referencing bytes: UnsafeRawBufferPointer) throws {
    var payload = zmq_msg_t()
    if bytes.isEmpty {
      zmq_msg_init(&payload)
    } else {
      releases.add()
      let hint = Unmanaged.passUnretained(releases).toOpaque()
      let rc = zmq_msg_init_data(&payload, UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count,
                                 { _, hint in Unmanaged<ReleaseCounter>.fromOpaque(hint!).takeUnretainedValue().release() }, hint)
      guard rc == 0 else {
        releases.release()
        throw CollectiveError.transport("zmq_msg_init_data: \(zmqError())")
      }
    }
    try transmit(.data, tag: tag, payload: &payload)
  }

  /// Waits in slices, watching the monitors: sends queued to a next rank that died are never
  /// released, and that loss (not a timeout long after) is the error to report.
  func flush() throws {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while !releases.wait(seconds: min(Self.flushSliceSeconds, max(0, deadline.timeIntervalSinceNow))) {
      try drainMonitors()
      if rightLost || rightRefusedUs { throw rightFailure() }
      if deadline.timeIntervalSinceNow <= 0 {
        throw CollectiveError.peerSilent(peer: describe(rank: right), seconds: timeout, phase: "\(phase) (sends not taken)")
      }
    }
  }
  static let flushSliceSeconds = 0.1

  private func post(_ kind: WireKind, tag: UInt32, byteCount: Int,
                    _ fill: (UnsafeMutableRawBufferPointer) -> Void) throws {
    var payload = zmq_msg_t()
    guard zmq_msg_init_size(&payload, byteCount) == 0 else {
      throw CollectiveError.transport("cannot allocate a \(byteCount)-byte message: \(zmqError())")
    }
    if byteCount > 0 { fill(UnsafeMutableRawBufferPointer(start: zmq_msg_data(&payload), count: byteCount)) }
    try transmit(kind, tag: tag, payload: &payload)
  }

  /// Sends the header frame and `payload` (which it consumes, also on error).
  private func transmit(_ kind: WireKind, tag: UInt32, payload: inout zmq_msg_t) throws {
    guard let push = outbound else {
      zmq_msg_close(&payload)
      throw CollectiveError.invalidArgument("transport closed")
    }
    do {
      try drainMonitors()
      if rightLost || rightRefusedUs { throw rightFailure() }
    } catch {
      zmq_msg_close(&payload)
      throw error
    }
    var head = zmq_msg_t()
    zmq_msg_init_size(&head, WireHeader.byteCount)
    WireHeader(kind: kind.rawValue, tag: tag, index: sent).write(to: zmq_msg_data(&head)!)
    do {
      try sendFrame(&head, on: push, more: true)
    } catch {
      zmq_msg_close(&payload)
      throw error
    }
    try sendFrame(&payload, on: push, more: false)
    sent += 1
  }

  /// Queues one frame (libzmq owns it afterwards); on error the frame is closed.
  private func sendFrame(_ msg: inout zmq_msg_t, on push: UnsafeMutableRawPointer, more: Bool) throws {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while zmq_msg_send(&msg, push, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)) < 0 {
      let code = zmq_errno()
      guard code == EAGAIN || code == EINTR else {
        zmq_msg_close(&msg)
        throw CollectiveError.transport("send to \(describe(rank: right)) failed: \(zmqError(code))")
      }
      do {
        try wait(for: push, events: Int16(ZMQ_POLLOUT), until: deadline)
        if rightLost || rightRefusedUs { throw rightFailure() }
      } catch {
        zmq_msg_close(&msg)
        throw error
      }
    }
  }

  func receive(tag: UInt32, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws {
    guard let pull = inbound else { throw CollectiveError.invalidArgument("transport closed") }
    var head = zmq_msg_t(), msg = zmq_msg_t()
    zmq_msg_init(&head)
    zmq_msg_init(&msg)
    defer { zmq_msg_close(&head); zmq_msg_close(&msg) }
    let deadline = Date(timeIntervalSinceNow: timeout)
    while zmq_msg_recv(&head, pull, ZMQ_DONTWAIT) < 0 {
      let code = zmq_errno()
      guard code == EAGAIN || code == EINTR else {
        throw CollectiveError.transport("receive from \(describe(rank: left)) failed: \(zmqError(code))")
      }
      try drainMonitors()
      if leftLost {
        // Data that arrived before the disconnect is still queued: take it first.
        if zmq_msg_recv(&head, pull, ZMQ_DONTWAIT) >= 0 { break }
        throw CollectiveError.peerLost(peer: describe(rank: left), detail: "the connection closed (the process exited, was killed, or stopped answering heartbeats)")
      }
      if rightRefusedUs { throw rightFailure() }
      try wait(for: pull, events: Int16(ZMQ_POLLIN), until: deadline)
    }
    // Only an authenticated connection delivers messages: its descriptor is the neighbour's.
    let source = zmq_msg_get(&head, ZMQ_SRCFD)
    if source >= 0 && source != lastSourceFD {
      try drainMonitors()  // its ACCEPTED and SUCCEEDED events come first
      report(inboundConnections.delivered(fd: source))
      lastSourceFD = source
    }
    // Multipart messages arrive whole: the payload frame is already here.
    guard zmq_msg_more(&head) != 0, zmq_msg_recv(&msg, pull, ZMQ_DONTWAIT) >= 0 else {
      throw CollectiveError.protocolViolation("a message from \(describe(rank: left)) has no payload frame")
    }
    let header = WireHeader.read(UnsafeRawBufferPointer(start: zmq_msg_data(&head), count: zmq_msg_size(&head)))
    try validate(header, expectedTag: tag, expectedIndex: received, from: describe(rank: left))
    received += 1
    let body = UnsafeRawBufferPointer(start: zmq_msg_data(&msg), count: zmq_msg_size(&msg))
    if header!.kind == WireKind.abort.rawValue {
      let reason = String(decoding: body, as: UTF8.self)
      abort(reason)
      throw CollectiveError.aborted(reason: reason)
    }
    try consume(body)
  }

  /// Waits until `socket` is ready for `events` or a monitor reports something; throws at the deadline.
  func wait(for socket: UnsafeMutableRawPointer, events: Int16, until deadline: Date) throws {
    let remaining = deadline.timeIntervalSinceNow
    if remaining <= 0 {
      // A receive that timed out while the next rank is gone: that loss is the cause (the ring
      // stalls behind it), not the previous rank, which is waiting for it too.
      if rightLost { throw rightFailure() }
      let peer = events == Int16(ZMQ_POLLIN) ? left : right
      throw CollectiveError.peerSilent(peer: describe(rank: peer), seconds: timeout, phase: phase)
    }
    var items = [
      zmq_pollitem_t(socket: socket, fd: 0, events: events, revents: 0),
      zmq_pollitem_t(socket: inMonitor, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0),
      zmq_pollitem_t(socket: outMonitor, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0),
    ]
    let slice = min(Self.pollSliceMilliseconds, max(1, Int(remaining * 1000)))
    if zmq_poll(&items, 3, slice) < 0 && zmq_errno() != EINTR {
      throw CollectiveError.transport("zmq_poll: \(zmqError())")
    }
    try drainMonitors()
  }

  func abort(_ reason: String) {
    guard !failed, !closed else { return }
    failed = true
    let bytes = Array(reason.utf8)
    let saved = timeout
    timeout = 0.2  // best effort: never wait long on a neighbour that may be gone
    try? post(.abort, tag: 0, byteCount: bytes.count) { $0.copyBytes(from: bytes) }
    timeout = saved
  }

  func close() {
    guard !closed else { return }
    closed = true
    if let summary = strayLog.flush() { log("warning: \(describe(rank: rank)): \(summary)") }
    for case let s? in [inbound, outbound] { zmq_socket_monitor(s, nil, 0) }
    for case let s? in [inMonitor, outMonitor, inbound, outbound] { zmq_close(s) }
    inbound = nil; outbound = nil; inMonitor = nil; outMonitor = nil
    zmq_ctx_shutdown(context)  // wakes the ZAP thread with ETERM
    zap?.waitUntilStopped()
    inRelay?.waitUntilStopped()
    zmq_ctx_term(context)
    if let path = boundLocalSocket { unlink(path) }
  }

  deinit { close() }
}

/// Counts zero-copy messages in flight; libzmq's I/O thread calls `release` when done with one.
final class ReleaseCounter: @unchecked Sendable {
  private let cond = NSCondition()
  private var outstanding = 0

  func add() { cond.lock(); outstanding += 1; cond.unlock() }

  func release() {
    cond.lock()
    outstanding -= 1
    if outstanding == 0 { cond.broadcast() }
    cond.unlock()
  }

  /// True once nothing is outstanding; false if `seconds` passed first.
  func wait(seconds: Double) -> Bool {
    let deadline = Date(timeIntervalSinceNow: seconds)
    cond.lock(); defer { cond.unlock() }
    while outstanding > 0 { if !cond.wait(until: deadline) { return outstanding == 0 } }
    return true
  }
}
