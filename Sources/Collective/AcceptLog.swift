// The source address of every connection accepted on a ring port, taken inside accept4 itself.
//
// libzmq accepts on its I/O thread and closes a connection whose first bytes are garbage within
// microseconds, with a reset; by the time any other thread sees the ACCEPTED monitor event the
// descriptor is gone (or reused), and the kernel keeps no trace of the peer. So this process
// defines `accept4`: libzmq's call resolves to it (the symbol is exported from every executable,
// see Package.swift), it calls glibc's, and, for a port a MonitorRelay watches, records
// (descriptor, port, peer address) before returning the descriptor to libzmq. The relay takes the
// oldest record of a descriptor and port when that descriptor's ACCEPTED event arrives: libzmq
// emits the event after accept4 returned, and a reused descriptor's records queue behind the
// earlier connection's, so the address is always the connection's own.

import Foundation
import Synchronization

public enum AcceptLog {
  private struct Record { let fd: Int32, port: UInt16, address: String }
  private struct State {
    var watched: [UInt16: Int] = [:]  // port -> number of relays watching it
    var records: [Record] = []
  }
  /// A bound on unclaimed records (a relay that stopped reading); the oldest are dropped.
  private static let maximumRecords = 4096
  private static let state = Mutex(State())
  /// Whether any port is watched: lets accept4 skip the lock in processes without a ring.
  private static let anyWatched = Atomic<Int>(0)

  public static func watch(port: UInt16) {
    state.withLock { $0.watched[port, default: 0] += 1 }
    anyWatched.add(1, ordering: .sequentiallyConsistent)
  }

  public static func unwatch(port: UInt16) {
    state.withLock {
      let n = ($0.watched[port] ?? 1) - 1
      $0.watched[port] = n > 0 ? n : nil
      if n <= 0 { $0.records.removeAll { $0.port == port } }
    }
    anyWatched.subtract(1, ordering: .sequentiallyConsistent)
  }

  /// Called by accept4 with each accepted descriptor.
  static func accepted(_ fd: Int32) {
    guard anyWatched.load(ordering: .sequentiallyConsistent) > 0, let port = ipv4Name(fd: fd, peer: false)?.port else { return }
    guard state.withLock({ $0.watched[port] != nil }) else { return }
    let address = peerAddress(fd: fd) ?? ""  // the peer may have reset already; then it is unknown
    state.withLock {
      if $0.records.count >= maximumRecords { $0.records.removeFirst() }
      $0.records.append(Record(fd: fd, port: port, address: address))
    }
  }

  /// The address recorded when `fd` was accepted on `port` (oldest first), or nil when none was
  /// recorded (accept4 not interposed in this executable).
  public static func take(fd: Int32, port: UInt16) -> String? {
    state.withLock {
      guard let i = $0.records.firstIndex(where: { $0.fd == fd && $0.port == port }) else { return nil }
      return $0.records.remove(at: i).address
    }
  }
}

private typealias Accept4Function = @convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32

/// glibc's accept4, the next definition after this executable's.
private let systemAccept4: Accept4Function = {
  guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: -1) /* RTLD_NEXT */, "accept4") else {
    fatalError("accept4 not found in the C library")
  }
  return unsafeBitCast(symbol, to: Accept4Function.self)
}()

@_cdecl("accept4")
public func interposedAccept4(_ listener: Int32, _ address: UnsafeMutablePointer<sockaddr>?,
                              _ length: UnsafeMutablePointer<socklen_t>?, _ flags: Int32) -> Int32 {
  let fd = systemAccept4(listener, address, length, flags)
  if fd >= 0 { AcceptLog.accepted(fd) }
  return fd
}
