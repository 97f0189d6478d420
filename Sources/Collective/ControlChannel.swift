// The control channel between the `launch` processes of one job (one per server): short text
// messages over ZeroMQ, authenticated and encrypted with the job secret exactly as the ring is
// (CURVE with the job's key pair, checked by the same ZAP handler). The first server's launch is
// the coordinator (a ROUTER bound at its server address); every other launch is a member (a
// DEALER whose routing id is its server id, connecting from its own address).
//
// A thread of its own owns the socket: it sends a heartbeat every `beatInterval` and notes when
// each peer was last heard, so liveness does not depend on what launch's loop is doing (stopping
// workers, waiting for a grace period). Callers post messages and drain the received ones.

import CZMQ
import Foundation

public final class ControlChannel: @unchecked Sendable {
  /// Seconds between heartbeats.
  public static let beatInterval = 1.0
  /// The heartbeat's text (never delivered to `receive`).
  static let beat = "beat"
  /// How long close() lets queued messages (the final decision) reach the peers.
  static let lingerMilliseconds: Int32 = 2000

  public let isCoordinator: Bool
  private let context: UnsafeMutableRawPointer
  private let socket: UnsafeMutableRawPointer
  private let zap: ZAPAuthenticator?
  private let lock = NSLock()
  private var outbox: [(peer: String?, text: String)] = []
  private var inbox: [(from: String, text: String)] = []
  private var lastHeard: [String: Date] = [:]
  /// When the channel's thread last went round its loop (every ≤ 50 ms while this process runs).
  private var lastTurn = Date()
  private var stopping = false
  private var thread: Thread?
  private let finished = DispatchSemaphore(value: 0)
  /// The coordinator's name as members see it.
  public static let coordinatorName = "coordinator"

  /// The coordinator: binds `endpoint` (this server's own address, never the wildcard).
  public convenience init(coordinatorAt endpoint: Endpoint, secret: JobSecret) throws {
    try self.init(coordinator: true, id: nil, bind: endpoint, connectFrom: nil, secret: secret)
  }

  /// A member named `id` (its server id) connecting from `localHost` to the coordinator.
  public convenience init(member id: String, from localHost: String, coordinator: Endpoint, secret: JobSecret) throws {
    try self.init(coordinator: false, id: id, bind: coordinator, connectFrom: localHost, secret: secret)
  }

  private init(coordinator: Bool, id: String?, bind endpoint: Endpoint, connectFrom: String?, secret: JobSecret) throws {
    isCoordinator = coordinator
    guard let ctx = zmq_ctx_new() else { throw CollectiveError.transport("cannot create a ZeroMQ context") }
    context = ctx
    let keys = try secret.curveKeys()
    guard let s = zmq_socket(ctx, coordinator ? ZMQ_ROUTER : ZMQ_DEALER) else {
      zmq_ctx_term(ctx)
      throw CollectiveError.transport("cannot create the control socket: \(zmqError())")
    }
    socket = s
    func set(_ option: Int32, _ value: Int32) { var v = value; zmq_setsockopt(s, option, &v, 4) }
    func set(_ option: Int32, _ text: String) {
      let b = Array(text.utf8); _ = b.withUnsafeBytes { zmq_setsockopt(s, option, $0.baseAddress, $0.count) }
    }
    set(ZMQ_LINGER, Self.lingerMilliseconds)
    if coordinator {
      var publicKey = [UInt8](repeating: 0, count: 32)
      guard zmq_z85_decode(&publicKey, keys.publicKey) != nil else { throw CollectiveError.transport("cannot decode the job's public key") }
      zap = try ZAPAuthenticator(context: ctx, curvePublicKey: publicKey, password: Array(secret.hex.utf8)) { _ in }
      set(ZMQ_ZAP_DOMAIN, "mnv2-control")
      set(ZMQ_CURVE_SERVER, 1)
      set(ZMQ_CURVE_SECRETKEY, keys.secretKey)
      set(ZMQ_ROUTER_HANDOVER, 1)  // a member's launch that reconnects keeps its name
      guard zmq_bind(s, "tcp://\(endpoint.host):\(endpoint.port)") == 0 else {
        let code = zmq_errno()
        zmq_close(s); zmq_ctx_shutdown(ctx); zap?.waitUntilStopped(); zmq_ctx_term(ctx)
        throw CollectiveError.transport("the launch control channel cannot bind \(endpoint): "
                                        + (code == EADDRINUSE ? "port \(endpoint.port) is already in use (pass another --control-port)" : zmqError(code)))
      }
    } else {
      zap = nil
      set(ZMQ_ROUTING_ID, id ?? "member")
      set(ZMQ_CURVE_SERVERKEY, keys.publicKey)
      set(ZMQ_CURVE_PUBLICKEY, keys.publicKey)
      set(ZMQ_CURVE_SECRETKEY, keys.secretKey)
      guard zmq_connect(s, "tcp://\(connectFrom ?? endpoint.host):0;\(endpoint.host):\(endpoint.port)") == 0 else {
        let e = zmqError()
        zmq_close(s); zmq_ctx_term(ctx)
        throw CollectiveError.transport("the launch control channel cannot connect to \(endpoint): \(e)")
      }
    }
    let t = Thread { [self] in serve() }
    t.name = "launch-control"
    thread = t
    t.start()
  }

  /// Queues `text` for `peer` (coordinator: a member's id, nil = every member heard so far;
  /// member: always the coordinator).
  public func send(_ text: String, to peer: String? = nil) {
    lock.lock(); outbox.append((peer, text)); lock.unlock()
  }

  /// The messages received since the last call (heartbeats excluded), oldest first.
  public func receive() -> [(from: String, text: String)] {
    lock.lock(); defer { lock.unlock() }
    let out = inbox
    inbox.removeAll()
    return out
  }

  /// A gap longer than this between two turns of the channel's loop means this process was not
  /// running (SIGSTOP, a suspended VM): the gap is not counted as any peer's silence.
  static let stallAllowance = 1.0

  /// Seconds since `peer` was last heard (any message or heartbeat); nil if never. Time this process
  /// spent stopped does not count: after a SIGCONT the peers' queued messages (a decision, their
  /// heartbeats) must be read before anyone is declared silent, and the channel's thread may not have
  /// turned yet when the caller asks.
  public func silence(of peer: String) -> Double? {
    lock.lock(); defer { lock.unlock() }
    let now = min(Date(), lastTurn.addingTimeInterval(Self.stallAllowance))
    return lastHeard[peer].map { max(0, now.timeIntervalSince($0)) }
  }

  /// Peers heard so far.
  public var peers: [String] { lock.lock(); defer { lock.unlock() }; return lastHeard.keys.sorted() }

  /// Delivers what is queued (up to the linger time), then closes the socket.
  public func close() {
    lock.lock()
    let already = stopping
    stopping = true
    lock.unlock()
    guard !already else { return }
    finished.wait()
    zmq_close(socket)  // lingers: queued messages still go out
    zmq_ctx_shutdown(context)
    zap?.waitUntilStopped()
    zmq_ctx_term(context)
  }

  deinit { close() }

  // MARK: The channel's thread

  private func serve() {
    defer { finished.signal() }
    var lastBeat = Date.distantPast
    while true {
      var item = zmq_pollitem_t(socket: socket, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
      _ = zmq_poll(&item, 1, 50)
      lock.lock()
      let now = Date(), gap = now.timeIntervalSince(lastTurn)
      if gap > Self.stallAllowance {
        // This process was stopped: the peers were not silent for that long, we were not listening.
        for (peer, heard) in lastHeard { lastHeard[peer] = heard.addingTimeInterval(gap) }
      }
      lastTurn = now
      lock.unlock()
      while let frames = receiveMultipart() {
        let from = isCoordinator ? String(decoding: frames.first ?? [], as: UTF8.self) : Self.coordinatorName
        let text = String(decoding: frames.last ?? [], as: UTF8.self)
        lock.lock()
        lastHeard[from] = Date()
        if text != Self.beat { inbox.append((from, text)) }
        lock.unlock()
      }
      lock.lock()
      var pending = outbox
      outbox.removeAll()
      let done = stopping
      let known = Array(lastHeard.keys)
      lock.unlock()
      if Date().timeIntervalSince(lastBeat) >= Self.beatInterval {
        lastBeat = Date()
        pending.append((nil, Self.beat))
      }
      for (peer, text) in pending {
        if isCoordinator {
          for p in peer.map({ [$0] }) ?? known { sendFrames([Array(p.utf8), Array(text.utf8)]) }
        } else {
          sendFrames([Array(text.utf8)])
        }
      }
      if done { return }
    }
  }

  private func sendFrames(_ frames: [[UInt8]]) {
    for (i, f) in frames.enumerated() {
      let flags = (i + 1 < frames.count ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT
      _ = f.withUnsafeBytes { zmq_send(socket, $0.baseAddress, $0.count, flags) }
    }
  }

  private func receiveMultipart() -> [[UInt8]]? {
    var frames: [[UInt8]] = []
    while true {
      var msg = zmq_msg_t()
      zmq_msg_init(&msg)
      defer { zmq_msg_close(&msg) }
      if zmq_msg_recv(&msg, socket, frames.isEmpty ? ZMQ_DONTWAIT : 0) < 0 { return nil }
      let n = zmq_msg_size(&msg)
      let p = zmq_msg_data(&msg)!.assumingMemoryBound(to: UInt8.self)
      frames.append(Array(UnsafeBufferPointer(start: p, count: n)))
      if zmq_msg_more(&msg) == 0 { return frames }
    }
  }
}
