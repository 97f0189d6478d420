// The ZeroMQ ring edge: a PULL socket bound at this rank's own device address receives from the
// previous rank, a PUSH socket connected to the next rank sends. Sends are asynchronous (libzmq's
// I/O thread writes while this thread reduces the next segment), which is what pipelines the ring.
//
// Liveness: a socket monitor reports connections (by file descriptor), their handshakes and their
// disconnection; ConnectionTracker works out which descriptor is the authenticated neighbour, so
// only its disconnect counts as a lost rank, while strays (port scanners, HTTP probes, other
// jobs) are logged with their source address and ignored. ZMTP heartbeats close connections whose
// peer stopped answering, so a dead or stopped neighbour is reported by name instead of waiting
// forever. Every wait is bounded by the current timeout.

import CZMQ
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

final class ZMQTransport: RingTransport {
  // Named constants.
  /// Send and receive queues are unbounded in messages: a ring schedule never has more than one
  /// buffer in flight, and a bounded queue could block both neighbours sending at once.
  static let highWaterMark: Int32 = 0
  /// Time libzmq keeps trying to deliver queued messages (an abort notice, the last segments)
  /// after close; short, so a failing job still stops within seconds.
  static let lingerMilliseconds: Int32 = 1000
  /// ZMTP ping interval; the heartbeat timeout is half the running timeout.
  static let heartbeatIntervalMilliseconds: Int32 = 1000
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

  let rank: Int
  let size: Int
  let endpoints: [Endpoint]
  private let context: UnsafeMutableRawPointer
  private var inbound: UnsafeMutableRawPointer?
  private var outbound: UnsafeMutableRawPointer?
  private var inMonitor: UnsafeMutableRawPointer?
  /// Reads the inbound monitor at once, to catch strays' source addresses (see MonitorRelay).
  private var inRelay: MonitorRelay?
  private var outMonitor: UnsafeMutableRawPointer?
  private var zap: ZAPAuthenticator?
  /// Connection bookkeeping from the monitors, by file descriptor (see ConnectionTracker).
  private var inboundConnections = ConnectionTracker()
  private var outboundConnections = ConnectionTracker()
  private var leftLost: Bool { inboundConnections.lost }
  private var rightLost: Bool { outboundConnections.lost }
  /// The descriptor the last message came from (already known to be the neighbour's).
  private var lastSourceFD: Int32 = -1
  /// Failed handshakes with the next rank since the last success.
  private var rightRefusals = 0
  private var rightRefusedUs: Bool { !outboundConnections.mayBeAuthenticated && rightRefusals >= Self.refusalsBeforeGivingUp }
  private let log: (String) -> Void
  /// Stray connections are logged once each, at most a burst per window.
  private var strayLog = RateLimitedLog()
  private let clock = Date()
  /// Zero-copy sends whose memory libzmq has not released yet.
  private let releases = ReleaseCounter()
  private var sent: UInt64 = 0
  private var received: UInt64 = 0
  private var timeout: Double
  private var phase = "connecting"
  private var failed = false
  private var closed = false

  /// Inbound connections that closed without completing the security handshake (rogue
  /// processes, other jobs, port scanners, HTTP probes); each was logged and ignored.
  var refusedConnections: Int { inboundConnections.strays }
  /// True once the connection to the next rank completed its security handshake.
  var isConnectedToNext: Bool { outboundConnections.mayBeAuthenticated }

  init(rank: Int, endpoints: [Endpoint], secret: JobSecret, security: SecurityMode,
       timeout: Double, runningTimeout: Double, log: @escaping (String) -> Void) throws {
    precondition(endpoints.count >= 2 && endpoints.indices.contains(rank))
    self.rank = rank
    self.size = endpoints.count
    self.endpoints = endpoints
    self.timeout = timeout
    self.log = log
    Self.tuneAllocatorOnce
    guard let ctx = zmq_ctx_new() else { throw CollectiveError.transport("cannot create a ZeroMQ context") }
    context = ctx
    zmq_ctx_set(ctx, ZMQ_IO_THREADS, 1)  // one I/O thread: one connection each way
    do {
      try setUp(secret: secret, security: security, runningTimeout: runningTimeout, log: log)
    } catch {
      close()
      throw error
    }
  }

  /// Every message is a heap block of a segment's size (libzmq allocates received ones), freed
  /// on another thread. glibc's defaults hand such blocks back to the kernel and fault them in
  /// again each time (measured: a third of the ring's time); keep them instead. Process-wide.
  private static let tuneAllocatorOnce: Void = {
    #if os(Linux)
    // malloc.h is not part of Swift's Glibc module; mallopt(int, int) is looked up instead.
    let mTrimThreshold: Int32 = -1, mMmapThreshold: Int32 = -3  // values from glibc's malloc.h
    typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
    if let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
      let mallopt = unsafeBitCast(sym, to: Mallopt.self)
      _ = mallopt(mMmapThreshold, 32 << 20)   // glibc's maximum: segments come from the heap
      _ = mallopt(mTrimThreshold, 512 << 20)  // do not trim (madvise) below this much free heap
    }
    #endif
  }()

  private func setUp(secret: JobSecret, security: SecurityMode, runningTimeout: Double,
                     log: @escaping (String) -> Void) throws {
    let me = endpoints[rank]
    let keys = try secret.curveKeys()
    var publicKey = [UInt8](repeating: 0, count: 32)
    guard zmq_z85_decode(&publicKey, keys.publicKey) != nil else {
      throw CollectiveError.transport("cannot decode the job's public key")
    }
    let password = Array(secret.hex.utf8)
    // (Refusals are logged by the monitor, which knows the connection's source address and port.)
    zap = try ZAPAuthenticator(context: context, curvePublicKey: publicKey, password: password) { _ in }

    // Inbound: server side of the security handshake.
    let pull = try makeSocket(ZMQ_PULL, runningTimeout: runningTimeout)
    inbound = pull
    try setOption(pull, ZMQ_ZAP_DOMAIN, string: "mnv2")
    switch security {
    case .curve:
      try setOption(pull, ZMQ_CURVE_SERVER, int: 1)
      try setOption(pull, ZMQ_CURVE_SECRETKEY, string: keys.secretKey)
    case .plain:
      try setOption(pull, ZMQ_PLAIN_SERVER, int: 1)
    }
    inMonitor = try monitor(pull, name: "in", relayed: true)
    if zmq_bind(pull, "tcp://\(me.host):\(me.port)") != 0 {
      let code = zmq_errno()
      switch code {
      case EADDRINUSE:
        throw CollectiveError.transport(
          "rank \(rank) cannot bind \(me): port \(me.port) is already in use on \(me.host) "
          + "(another job, or a worker of an earlier run still running)")
      case EADDRNOTAVAIL:
        throw CollectiveError.transport("rank \(rank) cannot bind \(me): address \(me.host) is not on this host")
      default:
        throw CollectiveError.transport("rank \(rank) cannot bind \(me): \(zmqError(code))")
      }
    }

    // Outbound: client side, connecting from our own address (never the wildcard).
    let push = try makeSocket(ZMQ_PUSH, runningTimeout: runningTimeout)
    outbound = push
    switch security {
    case .curve:
      try setOption(push, ZMQ_CURVE_SERVERKEY, string: keys.publicKey)
      try setOption(push, ZMQ_CURVE_PUBLICKEY, string: keys.publicKey)
      try setOption(push, ZMQ_CURVE_SECRETKEY, string: keys.secretKey)
    case .plain:
      try setOption(push, ZMQ_PLAIN_USERNAME, string: "mnv2")
      try setOption(push, ZMQ_PLAIN_PASSWORD, string: secret.hex)
    }
    outMonitor = try monitor(push, name: "out")
    let next = endpoints[(rank + 1) % size]
    guard zmq_connect(push, "tcp://\(me.host):0;\(next.host):\(next.port)") == 0 else {
      throw CollectiveError.transport("rank \(rank) cannot connect to \(describe(rank: (rank + 1) % size)): \(zmqError())")
    }
  }

  private func makeSocket(_ type: Int32, runningTimeout: Double) throws -> UnsafeMutableRawPointer {
    guard let s = zmq_socket(context, type) else { throw CollectiveError.transport("cannot create socket: \(zmqError())") }
    try setOption(s, ZMQ_SNDHWM, int: Self.highWaterMark)
    try setOption(s, ZMQ_RCVHWM, int: Self.highWaterMark)
    try setOption(s, ZMQ_LINGER, int: Self.lingerMilliseconds)
    try setOption(s, ZMQ_HEARTBEAT_IVL, int: Self.heartbeatIntervalMilliseconds)
    // Half the running timeout: a stopped or vanished peer is dropped by its neighbours, which
    // report it by name and tell the ring, before the other ranks' own receive timeouts fire
    // (they would name their blocked, innocent neighbours). A busy peer still answers: libzmq's
    // I/O thread replies to pings whatever the application thread is doing.
    let heartbeatTimeout = Int32(clamping: Int(runningTimeout * 500))
    try setOption(s, ZMQ_HEARTBEAT_TIMEOUT, int: heartbeatTimeout)
    try setOption(s, ZMQ_HEARTBEAT_TTL, int: heartbeatTimeout)
    return s
  }

  private func monitor(_ socket: UnsafeMutableRawPointer, name: String, relayed: Bool = false) throws -> UnsafeMutableRawPointer {
    let endpoint = "inproc://monitor.\(name)"
    let events = Int32(Self.eventHandshakeSucceeded | Self.eventDisconnected | Self.eventHandshakeFailedAuth
                       | Self.eventHandshakeFailedProtocol | Self.eventHandshakeFailedNoDetail
                       | Self.eventAccepted | Self.eventConnected)
    guard zmq_socket_monitor(socket, endpoint, events) == 0 else { throw CollectiveError.transport("cannot monitor socket: \(zmqError())") }
    if relayed {
      let relay = try MonitorRelay(context: context, monitorEndpoint: endpoint, name: name)
      inRelay = relay
      return relay.output
    }
    guard let pair = zmq_socket(context, ZMQ_PAIR) else {
      throw CollectiveError.transport("cannot monitor socket: \(zmqError())")
    }
    try setOption(pair, ZMQ_LINGER, int: 0)
    // Unbounded: a flood of stray connections while this rank computes must neither drop events
    // nor block libzmq's I/O thread on a full monitor pipe.
    try setOption(pair, ZMQ_RCVHWM, int: 0)
    guard zmq_connect(pair, endpoint) == 0 else { throw CollectiveError.transport("cannot monitor socket: \(zmqError())") }
    return pair
  }

  private func setOption(_ s: UnsafeMutableRawPointer, _ option: Int32, int value: Int32) throws {
    var v = value
    guard zmq_setsockopt(s, option, &v, MemoryLayout<Int32>.size) == 0 else {
      throw CollectiveError.transport("zmq_setsockopt(\(option)): \(zmqError())")
    }
  }

  private func setOption(_ s: UnsafeMutableRawPointer, _ option: Int32, string: String) throws {
    let bytes = Array(string.utf8)
    guard bytes.withUnsafeBytes({ zmq_setsockopt(s, option, $0.baseAddress, $0.count) }) == 0 else {
      throw CollectiveError.transport("zmq_setsockopt(\(option)): \(zmqError())")
    }
  }

  // MARK: RingTransport

  func describe(rank: Int) -> String { "rank \(rank) (\(endpoints[rank]))" }
  private var left: Int { (rank + size - 1) % size }
  private var right: Int { (rank + 1) % size }

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

  func flush() throws {
    guard releases.wait(seconds: timeout) else {
      throw CollectiveError.peerSilent(peer: describe(rank: right), seconds: timeout, phase: "\(phase) (sends not taken)")
    }
  }

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
  private func wait(for socket: UnsafeMutableRawPointer, events: Int16, until deadline: Date) throws {
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

  /// Reads pending monitor events and updates the neighbours' state.
  private func drainMonitors() throws {
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
  private func report(_ strays: [ConnectionTracker.Stray]) {
    for s in strays {
      let address = s.address.isEmpty ? "an unknown address (closed before it could be read)" : s.address
      let line = "warning: \(describe(rank: rank)): ignored a connection from \(address): \(s.reason)"
      for l in strayLog.admit(line, now: Date().timeIntervalSince(clock)) {
        log(l.hasPrefix("warning:") ? l : "warning: \(describe(rank: rank)): \(l)")
      }
    }
  }

  private func rightFailure() -> CollectiveError {
    if rightRefusedUs {
      return .handshakeMismatch("\(describe(rank: right)) refused this rank's credentials: the job secrets differ, "
                                + "or that address belongs to another job (every launch of a multi-server job needs the same --secret-file)")
    }
    return .peerLost(peer: describe(rank: right), detail: "the connection closed (the process exited, was killed, or stopped answering heartbeats)")
  }

  /// One monitor event (event id, value = file descriptor, second frame: the relay's source
  /// address or libzmq's endpoint), or nil when none is pending.
  private func readEvent(_ monitor: UnsafeMutableRawPointer) -> (UInt16, UInt32, String)? {
    var msg = zmq_msg_t()
    zmq_msg_init(&msg)
    defer { zmq_msg_close(&msg) }
    guard zmq_msg_recv(&msg, monitor, ZMQ_DONTWAIT) >= 0 else { return nil }
    var result: (UInt16, UInt32)?
    if zmq_msg_size(&msg) >= 6, let p = zmq_msg_data(&msg) {
      result = (p.loadUnaligned(as: UInt16.self), p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
    }
    if getenv("MNV2_DEBUG_EVENTS") != nil { log("debug: rank \(rank) \(monitor == inMonitor ? "in" : "out") event \(String(result?.0 ?? 0, radix: 16)) value \(result?.1 ?? 0)") }
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
