// ZeroMQ's authentication protocol (ZAP, RFC 27): libzmq asks an inproc REP socket bound at
// "inproc://zeromq.zap.01" about every incoming connection's credentials before it attaches.
// This handler accepts CURVE clients presenting the job's public key, or PLAIN clients presenting
// the job's password, and refuses everyone else (logged with the remote address).

import CZMQ
import Foundation

final class ZAPAuthenticator {
  /// The endpoint libzmq queries; fixed by RFC 27.
  static let endpoint = "inproc://zeromq.zap.01"

  private let socket: UnsafeMutableRawPointer
  private let expectedCurveKey: [UInt8]
  private let expectedPassword: [UInt8]
  private let lock = NSLock()
  private var refused = 0
  private let onRefused: (String) -> Void
  private var thread: Thread?
  private let done = DispatchSemaphore(value: 0)

  /// Connections refused so far (tests check that a rogue was refused).
  var refusedCount: Int { lock.lock(); defer { lock.unlock() }; return refused }

  init(context: UnsafeMutableRawPointer, curvePublicKey: [UInt8], password: [UInt8],
       onRefused: @escaping (String) -> Void) throws {
    guard let s = zmq_socket(context, ZMQ_REP) else {
      throw CollectiveError.transport("cannot create ZAP socket: \(zmqError())")
    }
    var linger: Int32 = 0
    zmq_setsockopt(s, ZMQ_LINGER, &linger, 4)
    guard zmq_bind(s, Self.endpoint) == 0 else {
      let e = zmqError()
      zmq_close(s)
      throw CollectiveError.transport("cannot bind ZAP handler: \(e)")
    }
    socket = s
    expectedCurveKey = curvePublicKey
    expectedPassword = password
    self.onRefused = onRefused
    let t = Thread { [self] in serve() }
    t.name = "zap"
    thread = t
    t.start()
  }

  /// Returns after the context was shut down (zmq_ctx_shutdown) and the socket closed.
  func waitUntilStopped() { done.wait() }

  private func serve() {
    defer { zmq_close(socket); done.signal() }
    while true {
      guard let frames = receiveMultipart() else { return }  // ETERM: context shutting down
      guard frames.count >= 6 else { continue }
      let mechanism = String(decoding: frames[5], as: UTF8.self)
      let address = String(decoding: frames[3], as: UTF8.self)
      let credentials = Array(frames.dropFirst(6))
      var ok = false
      switch mechanism {
      case "CURVE": ok = credentials.first == expectedCurveKey
      case "PLAIN": ok = credentials.count == 2 && constantTimeEqual(credentials[1], expectedPassword)
      default: ok = false
      }
      if !ok {
        lock.lock(); refused += 1; lock.unlock()
        onRefused("refused a \(mechanism) connection from \(address.isEmpty ? "?" : address): it does not hold this job's secret")
      }
      let reply: [[UInt8]] = [Array("1.0".utf8), frames[1], Array((ok ? "200" : "400").utf8),
                              Array((ok ? "OK" : "not a member of this job").utf8), [], []]
      for (i, frame) in reply.enumerated() {
        let flags = i + 1 < reply.count ? ZMQ_SNDMORE : 0
        _ = frame.withUnsafeBytes { zmq_send(socket, $0.baseAddress, $0.count, flags) }
      }
    }
  }

  private func receiveMultipart() -> [[UInt8]]? {
    var frames: [[UInt8]] = []
    while true {
      var msg = zmq_msg_t()
      zmq_msg_init(&msg)
      defer { zmq_msg_close(&msg) }
      while zmq_msg_recv(&msg, socket, 0) < 0 {
        if zmq_errno() != EINTR { return nil }
      }
      let n = zmq_msg_size(&msg)
      let p = zmq_msg_data(&msg)!.assumingMemoryBound(to: UInt8.self)
      frames.append(Array(UnsafeBufferPointer(start: p, count: n)))
      if zmq_msg_more(&msg) == 0 { return frames }
    }
  }
}

private func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
  guard a.count == b.count else { return false }
  var diff: UInt8 = 0
  for i in a.indices { diff |= a[i] ^ b[i] }
  return diff == 0
}
