// Which TCP connections of a ring socket belong to the authenticated neighbour.
//
// libzmq's socket monitor reports ACCEPTED / CONNECTED and DISCONNECTED with the connection's file
// descriptor, but HANDSHAKE_SUCCEEDED without it, and a connection that fails before the security
// mechanism starts (HTTP, random bytes: libzmq treats them as ZMTP 1.0 and drops them) ends with
// DISCONNECTED alone. Counting events therefore cannot tell a stray connection from the neighbour
// leaving. This tracker follows connections by descriptor:
//
// - an opened descriptor is *handshaking* until it is known to be authenticated;
// - a descriptor is known authenticated when a message arrives from it (ZMQ_SRCFD: only a
//   connection that passed the handshake delivers messages), or when every handshaking
//   descriptor must have succeeded (successes = handshaking + ambiguously closed);
// - a handshaking descriptor that closes while no success is unaccounted for never completed the
//   handshake: a stray, logged and ignored. One that closes while a success is unaccounted for is
//   ambiguous until a message or the other descriptors settle it.
//
// The neighbour is lost when a handshake once succeeded and no connection can still be the
// authenticated one. Pure bookkeeping (no sockets), so it is unit-tested with event sequences.

import Foundation

public struct ConnectionTracker {
  public init() {}
  /// A connection that closed without completing the handshake.
  public struct Stray: Equatable, Sendable {
    public var address: String
    public var reason: String
    public init(address: String, reason: String) { self.address = address; self.reason = reason }
  }

  /// Reason logged for a stray that closed without any handshake-failure event: libzmq drops a
  /// peer whose greeting is not ZMTP 3 with a security mechanism before the mechanism starts.
  public static let malformedGreeting = "not a ZeroMQ peer of this job (malformed greeting or not ZMTP)"

  /// Open descriptors not known to be authenticated, with their source address.
  private(set) var handshaking: [Int32: String] = [:]
  /// Open descriptors known to be authenticated.
  private(set) var authenticated: Set<Int32> = []
  /// HANDSHAKE_SUCCEEDED events not yet tied to a descriptor (they belong to `handshaking` or `ambiguous`).
  private(set) var unattributedSuccesses = 0
  /// Descriptors that closed while a success was unaccounted for: authenticated or strays.
  private(set) var ambiguous: [Stray] = []
  public private(set) var everSucceeded = false
  /// Strays seen so far.
  public private(set) var strays = 0
  /// The last handshake-failure reason, for the next stray to close (failure events carry no
  /// descriptor; libzmq emits a connection's failure right before its DISCONNECTED).
  private var pendingReason: String?
  /// A message arrived from a descriptor whose ACCEPTED/SUCCEEDED events were not read yet.
  private var earlyDescriptors: Set<Int32> = []
  private var earlySuccesses = 0

  /// ACCEPTED (inbound) or CONNECTED (outbound).
  public mutating func opened(fd: Int32, address: String) {
    if earlyDescriptors.remove(fd) != nil { return }
    handshaking[fd] = address
  }

  public mutating func handshakeSucceeded() {
    everSucceeded = true
    if earlySuccesses > 0 { earlySuccesses -= 1; return }
    unattributedSuccesses += 1
    settle()
  }

  public mutating func handshakeFailed(reason: String) { pendingReason = reason }

  /// DISCONNECTED; returns the strays this settles (to be logged).
  public mutating func closed(fd: Int32) -> [Stray] {
    if authenticated.remove(fd) != nil { return [] }
    guard let address = handshaking.removeValue(forKey: fd) else { return [] }
    let reason = pendingReason ?? Self.malformedGreeting
    pendingReason = nil
    if unattributedSuccesses == 0 {
      strays += 1
      return [Stray(address: address, reason: reason)]
    }
    ambiguous.append(Stray(address: address, reason: reason))
    return settle()
  }

  /// A message arrived from `fd` (ZMQ_SRCFD); returns the strays this settles.
  public mutating func delivered(fd: Int32) -> [Stray] {
    if authenticated.contains(fd) { return [] }
    authenticated.insert(fd)
    if handshaking.removeValue(forKey: fd) != nil {
      if unattributedSuccesses > 0 {
        unattributedSuccesses -= 1
      } else {
        earlySuccesses += 1  // its HANDSHAKE_SUCCEEDED is still queued: absorb it when it comes
      }
      return settle()
    }
    // Its monitor events are still queued: absorb them when they come.
    everSucceeded = true
    earlyDescriptors.insert(fd)
    earlySuccesses += 1
    return []
  }

  /// Resolves what the counts decide.
  @discardableResult
  private mutating func settle() -> [Stray] {
    if unattributedSuccesses == 0 && !ambiguous.isEmpty {
      // No success was left for them: every ambiguous one was a stray.
      let settled = ambiguous
      strays += settled.count
      ambiguous = []
      return settled
    }
    if unattributedSuccesses > 0 && unattributedSuccesses == handshaking.count + ambiguous.count {
      // Every candidate succeeded: the open ones are authenticated, the closed ones were.
      authenticated.formUnion(handshaking.keys)
      handshaking = [:]
      ambiguous = []
      unattributedSuccesses = 0
    }
    return []
  }

  /// An open connection may be the authenticated one.
  public var mayBeAuthenticated: Bool { !authenticated.isEmpty || (unattributedSuccesses > 0 && !handshaking.isEmpty) }

  /// A handshake succeeded once and no open connection can be the authenticated one.
  public var lost: Bool { everSucceeded && !mayBeAuthenticated }
}

/// At most `burst` lines per `window` seconds; the rest are counted and summarized later.
public struct RateLimitedLog {
  public static let defaultBurst = 10
  public static let defaultWindow = 10.0

  public var burst = RateLimitedLog.defaultBurst
  public var window = RateLimitedLog.defaultWindow
  private var windowStart = -Double.infinity
  private var inWindow = 0
  public private(set) var suppressed = 0

  public init(burst: Int = RateLimitedLog.defaultBurst, window: Double = RateLimitedLog.defaultWindow) {
    self.burst = burst; self.window = window
  }

  /// The lines to emit now for `line` at time `now` (seconds): none, the line, or a summary and the line.
  public mutating func admit(_ line: String, now: Double) -> [String] {
    var out: [String] = []
    if now - windowStart >= window {
      if suppressed > 0 { out.append(summary()) }
      windowStart = now
      inWindow = 0
    }
    guard inWindow < burst else { suppressed += 1; return out }
    inWindow += 1
    out.append(line)
    return out
  }

  /// The summary of suppressed lines (and resets the count); nil when none were suppressed.
  public mutating func flush() -> String? { suppressed > 0 ? summary() : nil }

  private mutating func summary() -> String {
    defer { suppressed = 0 }
    return "\(suppressed) more such connections were not logged (at most \(burst) lines per \(Int(window)) s)"
  }
}

/// "address:port" of the peer of a connected TCP socket; nil once it is closed.
func peerAddress(fd: Int32) -> String? {
  ipv4Name(fd: fd, peer: true).map { formatAddress($0.address, port: $0.port) }
}

/// The IPv4 address and port of a socket's peer (getpeername) or its own end (getsockname).
func ipv4Name(fd: Int32, peer: Bool) -> (address: in_addr, port: UInt16)? {
  var storage = sockaddr_storage()
  var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
  let ok = withUnsafeMutablePointer(to: &storage) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { (peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length)) == 0 }
  }
  guard ok, storage.ss_family == sa_family_t(AF_INET) else { return nil }
  return withUnsafePointer(to: &storage) {
    $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { ($0.pointee.sin_addr, UInt16(bigEndian: $0.pointee.sin_port)) }
  }
}

func formatAddress(_ address: in_addr, port: UInt16) -> String {
  var a = address
  var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
  inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
  return "\(String(cString: buf)):\(port)"
}
