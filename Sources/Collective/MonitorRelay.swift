// Reads a socket monitor on its own thread, the moment libzmq emits an event, and forwards each
// event to a PAIR socket the transport polls, with the connection's source address added for
// ACCEPTED. A stray that sends garbage is closed by libzmq microseconds after it was accepted
// (with a reset, so the kernel keeps no trace of it), long before the transport's own thread reads
// its events between collectives: the address comes from AcceptLog, recorded inside accept4.

import CZMQ
import Foundation

final class MonitorRelay {
  /// The transport's end: frame 1 as libzmq's (event id, value), frame 2 the source address
  /// ("" when unknown or not an ACCEPTED event).
  let output: UnsafeMutableRawPointer
  private let done = DispatchSemaphore(value: 0)

  private let port: UInt16

  /// `port`: the monitored socket's bound port, whose accepted connections AcceptLog records.
  init(context: UnsafeMutableRawPointer, monitorEndpoint: String, name: String, port: UInt16) throws {
    self.port = port
    func pair() throws -> UnsafeMutableRawPointer {
      guard let s = zmq_socket(context, ZMQ_PAIR) else { throw CollectiveError.transport("cannot create a monitor relay: \(zmqError())") }
      var zero: Int32 = 0
      for option in [ZMQ_LINGER, ZMQ_SNDHWM, ZMQ_RCVHWM] { zmq_setsockopt(s, option, &zero, 4) }  // unbounded, never blocks
      return s
    }
    let input = try pair(), relay = try pair()
    output = try pair()
    let relayEndpoint = "inproc://relay.\(name)"
    guard zmq_connect(input, monitorEndpoint) == 0, zmq_bind(relay, relayEndpoint) == 0, zmq_connect(output, relayEndpoint) == 0 else {
      let e = zmqError()
      for s in [input, relay, output] { zmq_close(s) }
      throw CollectiveError.transport("cannot start the monitor relay: \(e)")
    }
    let sockets = Sockets(input: input, relay: relay)  // used only by the relay thread from now on
    AcceptLog.watch(port: port)
    let t = Thread { [done] in
      Self.forward(from: sockets.input, to: sockets.relay, port: port)
      AcceptLog.unwatch(port: port)
      zmq_close(sockets.input)
      zmq_close(sockets.relay)
      done.signal()
    }
    t.name = "monitor-\(name)"
    t.start()
  }

  private struct Sockets: @unchecked Sendable { let input: UnsafeMutableRawPointer, relay: UnsafeMutableRawPointer }

  /// Returns after the context was shut down (zmq_ctx_shutdown) and the relay's sockets closed.
  func waitUntilStopped() { done.wait() }

  /// Blocks for an event, takes every event already queued behind it, adds the source address of
  /// each ACCEPTED descriptor (recorded by accept4; failing that, asked of the kernel unless the
  /// descriptor is closed or reused later in the same batch), and forwards them in order.
  private static func forward(from input: UnsafeMutableRawPointer, to relay: UnsafeMutableRawPointer, port: UInt16) {
    while true {
      guard let first = receiveEvent(input, flags: 0) else { return }  // ETERM: the context is shutting down
      var batch = [first]
      while let e = receiveEvent(input, flags: ZMQ_DONTWAIT) { batch.append(e) }
      for (i, (event, value)) in batch.enumerated() {
        var address = ""
        if event == ZMQTransport.eventAccepted, let recorded = AcceptLog.take(fd: Int32(bitPattern: value), port: port),
           !recorded.isEmpty {
          address = recorded
        } else if event == ZMQTransport.eventAccepted,
           !batch[(i + 1)...].contains(where: { $0.1 == value && ($0.0 == ZMQTransport.eventDisconnected || $0.0 == ZMQTransport.eventAccepted) }) {
          address = peerAddress(fd: Int32(bitPattern: value)) ?? ""
        }
        var head = [UInt8](repeating: 0, count: 6)
        head.withUnsafeMutableBytes {
          $0.storeBytes(of: event, toByteOffset: 0, as: UInt16.self)
          $0.storeBytes(of: value, toByteOffset: 2, as: UInt32.self)
        }
        let bytes = Array(address.utf8)
        guard head.withUnsafeBytes({ zmq_send(relay, $0.baseAddress, $0.count, ZMQ_SNDMORE) }) >= 0,
              bytes.withUnsafeBytes({ zmq_send(relay, $0.baseAddress, $0.count, 0) }) >= 0 else { return }
      }
    }
  }

  /// One monitor event (id, value), its endpoint frame skipped; nil on EAGAIN or ETERM.
  private static func receiveEvent(_ input: UnsafeMutableRawPointer, flags: Int32) -> (UInt16, UInt32)? {
    var msg = zmq_msg_t()
    zmq_msg_init(&msg)
    defer { zmq_msg_close(&msg) }
    while zmq_msg_recv(&msg, input, flags) < 0 {
      if zmq_errno() != EINTR { return nil }
    }
    var event: (UInt16, UInt32) = (0, 0)
    if zmq_msg_size(&msg) >= 6, let p = zmq_msg_data(&msg) {
      event = (p.loadUnaligned(as: UInt16.self), p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
    }
    while zmq_msg_more(&msg) != 0 {  // libzmq's second frame: the endpoint (not needed)
      zmq_msg_close(&msg)
      zmq_msg_init(&msg)
      if zmq_msg_recv(&msg, input, 0) < 0 { break }
    }
    return event
  }
}
