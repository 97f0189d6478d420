// The ZeroMQ transport on loopback, ranks as threads of this process (each with its own
// context, as separate processes would have): correctness, port in use, wrong secrets, rogues.

import Collective
import CollectiveCheck
import CZMQ
import XCTest

final class ZMQTransportTests: XCTestCase {
  func testRingOverLoopbackInBothSecurityModes() throws {
    for (n, security) in [(2, SecurityMode.curve), (5, .plain), (3, .curve)] {
      let endpoints = try loopbackEndpoints(n)
      let secret = JobSecret.generate()
      let bad = ResultBox(n)
      let errors = runRanks(n) { r in
        let g = try ProcessGroup.join(GroupSpec(rank: r, endpoints: endpoints, jobID: "j", secret: secret),
                                      modelSignature: testSignature, options: zmqOptions(security))
        defer { g.close() }
        for count in [0, 1, 7, 1000, 1_000_000] {
          var buf = [Float](repeating: Float(r), count: count)
          try g.allreduceSum(&buf, count: count)
          if buf.contains(where: { $0 != Float(n * (n - 1) / 2) }) { bad.set(r, CollectiveSelfTest.Failure(description: "\(security) count \(count)")) }
        }
        var w = [Float](repeating: r == 0 ? 3 : 0, count: 100_000)
        try g.broadcast(&w, count: w.count, root: 0)
        if w.contains(where: { $0 != 3 }) { bad.set(r, CollectiveSelfTest.Failure(description: "broadcast")) }
      }
      XCTAssertEqual((errors + bad.all).compactMap { $0 }.map(message), [String](), "\(n) ranks, \(security)")
    }
  }

  /// Loopback neighbours talk over Unix-domain sockets by default and over TCP with the option
  /// off; both rings give exact sums, each rank's socket file exists while its group lives (the
  /// previous rank connected to it) and is gone after close.
  func testLocalSocketsAndTCPBothCarryTheRing() throws {
    for local in [true, false] {
      let n = 3
      let endpoints = try loopbackEndpoints(n)
      let secret = JobSecret.generate()
      let options: GroupOptions = { var o = zmqOptions(.plain); o.localSockets = local; return o }()
      let paths = endpoints.map { "/tmp/mnv2-ring-\(getuid())-\($0.host)-\($0.port).sock" }
      let bad = ResultBox(n)
      let errors = runRanks(n) { r in
        let g = try ProcessGroup.join(GroupSpec(rank: r, endpoints: endpoints, jobID: "j", secret: secret),
                                      modelSignature: testSignature, options: options)
        var buf = (0..<300_001).map { Float(r + $0 % 5) }
        try g.allreduceSum(&buf, count: buf.count)
        if let i = buf.indices.first(where: { buf[$0] != Float(n * (n - 1) / 2 + n * ($0 % 5)) }) {
          bad.set(r, CollectiveSelfTest.Failure(description: "local=\(local) rank \(r): element \(i) = \(buf[i])"))
        }
        if FileManager.default.fileExists(atPath: paths[r]) != local {
          bad.set(r, CollectiveSelfTest.Failure(description: "local=\(local) rank \(r): socket file present = \(!local)"))
        }
        try g.barrier()  // nobody closes before every rank looked
        g.close()
      }
      XCTAssertEqual((errors + bad.all).compactMap { $0 }.map(message), [String](), "localSockets=\(local)")
      for p in paths { XCTAssertFalse(FileManager.default.fileExists(atPath: p), "\(p) left behind") }
    }
  }

  func testPortInUseNamesRankAddressAndPort() throws {
    let endpoints = try loopbackEndpoints(2)
    // Occupy rank 1's port with another ZeroMQ socket.
    let ctx = zmq_ctx_new()!
    defer { zmq_ctx_term(ctx) }
    let blocker = zmq_socket(ctx, ZMQ_PULL)!
    defer { zmq_close(blocker) }
    XCTAssertEqual(zmq_bind(blocker, "tcp://\(endpoints[1])"), 0)
    XCTAssertThrowsError(try ProcessGroup.join(GroupSpec(rank: 1, endpoints: endpoints, jobID: "j", secret: .generate()),
                                               modelSignature: testSignature, options: zmqOptions(timeout: 2))) { e in
      let text = "\(e)"
      XCTAssertTrue(text.contains("rank 1") && text.contains("\(endpoints[1])") && text.contains("port \(endpoints[1].port) is already in use"), text)
    }
  }

  func testDifferentSecretsCannotFormARing() throws {
    let endpoints = try loopbackEndpoints(2)
    let start = Date()
    let errors = runRanks(2) { r in
      _ = try ProcessGroup.join(GroupSpec(rank: r, endpoints: endpoints, jobID: "j", secret: .generate()),
                                modelSignature: testSignature, options: zmqOptions(.curve, timeout: 3))
    }
    // Both fail; at least one names the refusal (the other may see its peer give up first).
    XCTAssertEqual(errors.compactMap { $0 }.count, 2)
    XCTAssertTrue(errors.contains { message($0).contains("refused this rank's credentials") }, errors.map(message).joined(separator: "; "))
    XCTAssertLessThan(Date().timeIntervalSince(start), 10)
  }

  /// A process without the secret connects to a rank's port (with no security, with a CURVE key
  /// of its own, with a wrong PLAIN password) and pushes data that would corrupt the sum: it is
  /// refused, and the job's results stay exact.
  func testRogueConnectionsAreRefusedAndCannotInjectData() throws {
    for security in [SecurityMode.curve, .plain] {
      let endpoints = try loopbackEndpoints(2)
      let secret = JobSecret.generate()
      let rogue = RogueSockets()
      let refused = ResultBox(2)
      let bad = ResultBox(2)
      let errors = runRanks(2) { r in
        let g = try ProcessGroup.join(GroupSpec(rank: r, endpoints: endpoints, jobID: "j", secret: secret),
                                      modelSignature: testSignature, options: zmqOptions(security))
        defer { g.close() }
        if r == 0 {
          // Rogues, once the ring exists: the same wire header a real rank would send.
          for mechanism in ["null", "curve", "plain"] {
            let s = zmq_socket(rogue.context, ZMQ_PUSH)!
            var zero: Int32 = 0
            zmq_setsockopt(s, ZMQ_LINGER, &zero, 4)
            if mechanism == "curve" {
              var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
              zmq_curve_keypair(&pub, &sec)
              let (jobPublic, _) = try secret.curveKeys()
              zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, jobPublic, 40)
              zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, 40)
              zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 40)
            } else if mechanism == "plain" {
              zmq_setsockopt(s, ZMQ_PLAIN_USERNAME, "mnv2", 4)
              zmq_setsockopt(s, ZMQ_PLAIN_PASSWORD, "guess", 5)
            }
            zmq_socket_monitor(s, "inproc://rogue.\(mechanism)", ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
            let m = zmq_socket(rogue.context, ZMQ_PAIR)!
            zmq_connect(m, "inproc://rogue.\(mechanism)")
            XCTAssertEqual(zmq_connect(s, "tcp://\(endpoints[0])"), 0)
            rogue.sockets.append(s); rogue.monitors.append(m)
            var junk = [UInt8](repeating: 0, count: 16 + 400)
            for i in 0..<16 { junk[i] = UInt8(i) }
            _ = zmq_send(s, &junk, junk.count, ZMQ_DONTWAIT)
          }
          Thread.sleep(forTimeInterval: 0.5)
        }
        for _ in 0..<5 {
          var buf = [Float](repeating: Float(r + 1), count: 100)
          try g.allreduceSum(&buf, count: 100)
          if buf.contains(where: { $0 != 3 }) { bad.set(r, CollectiveSelfTest.Failure(description: "wrong sum \(buf[0])")) }
        }
        try g.barrier()
        if r == 0 && g.refusedConnections < 3 {
          refused.set(r, CollectiveSelfTest.Failure(description: "\(security): only \(g.refusedConnections) rogue connections were refused"))
        }
      }
      XCTAssertEqual((errors + bad.all + refused.all).compactMap { $0 }.map(message), [String](), "\(security)")
      for m in rogue.monitors {  // no rogue ever completed a handshake
        var msg = zmq_msg_t()
        zmq_msg_init(&msg)
        XCTAssertEqual(zmq_msg_recv(&msg, m, ZMQ_DONTWAIT), -1, "a rogue completed a handshake (\(security))")
        zmq_msg_close(&msg)
      }
      for s in rogue.sockets { zmq_socket_monitor(s, nil, 0); zmq_close(s) }
      for m in rogue.monitors { zmq_close(m) }
      zmq_ctx_term(rogue.context)
    }
  }
}

/// The rogue's sockets, created on rank 0's thread and closed by the test afterwards.
final class RogueSockets: @unchecked Sendable {
  let context = zmq_ctx_new()!
  var sockets: [UnsafeMutableRawPointer] = []
  var monitors: [UnsafeMutableRawPointer] = []
}
