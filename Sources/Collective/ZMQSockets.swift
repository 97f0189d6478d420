// Socket and security set-up of the ZeroMQ ring edge: the PULL socket bound at this rank's own
// address (server side of the CURVE/PLAIN handshake, checked by the ZAP handler), the PUSH socket
// connected to the next rank from our own address (never the wildcard), their options, monitors.
import CZMQ
import Foundation

extension ZMQTransport {
  /// Send and receive queues are unbounded in messages: a ring schedule never has more than one
  /// buffer in flight, and a bounded queue could block both neighbours sending at once.
  static let highWaterMark: Int32 = 0
  /// Time libzmq keeps trying to deliver queued messages (an abort notice, the last segments)
  /// after close; short, so a failing job still stops within seconds.
  static let lingerMilliseconds: Int32 = 1000
  /// ZMTP ping interval; the heartbeat timeout is half the running timeout.
  static let heartbeatIntervalMilliseconds: Int32 = 1000

  func setUp(secret: JobSecret, security: SecurityMode, runningTimeout: Double, localSockets: Bool,
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
    inMonitor = try monitor(pull, name: "in", relayedPort: UInt16(me.port))
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
    // The local socket is bound only after the TCP port: owning host:port is what makes its path
    // (which names them) ours, so a file left by a crashed run on this port may be replaced.
    if localSockets && Self.isLoopback(me.host) {
      let path = Self.localSocketPath(for: me)
      guard zmq_bind(pull, "ipc://\(path)") == 0 else {
        throw CollectiveError.transport("rank \(rank) cannot bind the local socket \(path): \(zmqError()) "
                                        + "(MNV2_LOCAL_SOCKETS=0 uses TCP only)")
      }
      boundLocalSocket = path
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
    let address = localSockets && Self.isLoopback(me.host) && Self.isLoopback(next.host)
      ? "ipc://\(Self.localSocketPath(for: next))" : "tcp://\(me.host):0;\(next.host):\(next.port)"
    guard zmq_connect(push, address) == 0 else {
      throw CollectiveError.transport("rank \(rank) cannot connect to \(describe(rank: (rank + 1) % size)): \(zmqError())")
    }
  }

  /// Loopback addresses (127.0.0.0/8, ::1, localhost) name this host's own network namespace.
  static func isLoopback(_ host: String) -> Bool {
    host.hasPrefix("127.") || host == "::1" || host == "localhost"
  }

  /// The local socket of the rank listening at `endpoint`: a function of its address only, so both
  /// neighbours derive it; under /tmp (not $TMPDIR, which ranks need not share; a Unix socket path
  /// is at most 107 bytes), with the user id so users never collide.
  static func localSocketPath(for endpoint: Endpoint) -> String {
    "/tmp/mnv2-ring-\(getuid())-\(endpoint.host)-\(endpoint.port).sock"
  }

  func makeSocket(_ type: Int32, runningTimeout: Double) throws -> UnsafeMutableRawPointer {
    guard let s = zmq_socket(context, type) else { throw CollectiveError.transport("cannot create socket: \(zmqError())") }
    try setOption(s, ZMQ_SNDHWM, int: Self.highWaterMark)
    try setOption(s, ZMQ_RCVHWM, int: Self.highWaterMark)
    try setOption(s, ZMQ_LINGER, int: Self.lingerMilliseconds)
    try setOption(s, ZMQ_HEARTBEAT_IVL, int: Self.heartbeatIntervalMilliseconds)
    // At most half the running timeout: a stopped or vanished peer is dropped by its neighbours,
    // which report it by name and tell the ring, before the other ranks' own receive timeouts fire
    // (they would name their blocked, innocent neighbours). A busy peer still answers: libzmq's
    // I/O thread replies to pings whatever the application thread is doing (a long checkpoint
    // write, the first dataset scan), so the cap of GroupOptions.heartbeatTimeout (10 s) detects a
    // stopped rank in seconds without false alarms, whatever the running timeout.
    let heartbeatTimeout = Int32(clamping: Int(min(GroupOptions.heartbeatTimeout, runningTimeout / 2) * 1000))
    try setOption(s, ZMQ_HEARTBEAT_TIMEOUT, int: heartbeatTimeout)
    try setOption(s, ZMQ_HEARTBEAT_TTL, int: heartbeatTimeout)
    return s
  }

  func monitor(_ socket: UnsafeMutableRawPointer, name: String, relayedPort: UInt16? = nil) throws -> UnsafeMutableRawPointer {
    let endpoint = "inproc://monitor.\(name)"
    let events = Int32(Self.eventHandshakeSucceeded | Self.eventDisconnected | Self.eventHandshakeFailedAuth
                       | Self.eventHandshakeFailedProtocol | Self.eventHandshakeFailedNoDetail
                       | Self.eventAccepted | Self.eventConnected)
    guard zmq_socket_monitor(socket, endpoint, events) == 0 else { throw CollectiveError.transport("cannot monitor socket: \(zmqError())") }
    if let port = relayedPort {
      let relay = try MonitorRelay(context: context, monitorEndpoint: endpoint, name: name, port: port)
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

  func setOption(_ s: UnsafeMutableRawPointer, _ option: Int32, int value: Int32) throws {
    var v = value
    guard zmq_setsockopt(s, option, &v, MemoryLayout<Int32>.size) == 0 else {
      throw CollectiveError.transport("zmq_setsockopt(\(option)): \(zmqError())")
    }
  }

  func setOption(_ s: UnsafeMutableRawPointer, _ option: Int32, string: String) throws {
    let bytes = Array(string.utf8)
    guard bytes.withUnsafeBytes({ zmq_setsockopt(s, option, $0.baseAddress, $0.count) }) == 0 else {
      throw CollectiveError.transport("zmq_setsockopt(\(option)): \(zmqError())")
    }
  }

}
