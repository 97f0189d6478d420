// The accept4 defined by Collective is the one this executable's accept4 calls resolve to (as
// libzmq's do), and it records the peer of each connection accepted on a watched port.
import Collective
import Foundation
import XCTest

final class AcceptLogTests: XCTestCase {
  private typealias Accept4 = @convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32
  /// accept4 as the dynamic linker resolves it for libzmq: the global scope's first definition.
  private func accept4(_ fd: Int32, _ flags: Int32) throws -> Int32 {
    let symbol = try XCTUnwrap(dlsym(nil /* RTLD_DEFAULT */, "accept4"), "accept4 is not exported")
    return unsafeBitCast(symbol, to: Accept4.self)(fd, nil, nil, flags)
  }

  /// A listening loopback socket on a free port.
  private func listener() throws -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && listen(fd, 8) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    XCTAssertTrue(bound, "bind/listen on 127.0.0.1: errno \(errno)")
    return (fd, UInt16(bigEndian: address.sin_port))
  }

  /// Connects to 127.0.0.1:port; returns the descriptor and its own local address:port.
  private func connectClient(port: UInt16) throws -> (fd: Int32, source: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = port.bigEndian
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    XCTAssertTrue(connected, "connect: errno \(errno)")
    var local = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return (fd, "127.0.0.1:\(UInt16(bigEndian: local.sin_port))")
  }

  func testAcceptOnAWatchedPortRecordsThePeerEvenAfterItReset() throws {
    let (server, port) = try listener()
    defer { close(server) }
    AcceptLog.watch(port: port)
    defer { AcceptLog.unwatch(port: port) }
    var accepted: [(fd: Int32, source: String)] = []
    for _ in 0..<3 {
      let client = try connectClient(port: port)
      let fd = try accept4(server, Int32(SOCK_CLOEXEC.rawValue))
      XCTAssertGreaterThanOrEqual(fd, 0)
      accepted.append((fd, client.source))
      close(client.fd)
      close(fd)  // the next accept reuses the descriptor: its record queues behind this one
    }
    XCTAssertEqual(Set(accepted.map(\.fd)).count, 1, "the test expects descriptor reuse")
    for a in accepted {
      XCTAssertEqual(AcceptLog.take(fd: a.fd, port: port), a.source, "oldest record first")
    }
    XCTAssertNil(AcceptLog.take(fd: accepted[0].fd, port: port), "each record is taken once")
  }

  func testAcceptOnAnUnwatchedPortRecordsNothing() throws {
    let (server, port) = try listener()
    defer { close(server) }
    let client = try connectClient(port: port)
    defer { close(client.fd) }
    let fd = try accept4(server, 0)
    defer { close(fd) }
    XCTAssertGreaterThanOrEqual(fd, 0)
    XCTAssertNil(AcceptLog.take(fd: fd, port: port))
  }
}
