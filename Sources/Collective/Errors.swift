// Errors of the collective layer. Every message names the rank (and address when known) it is
// about, so that a failure on one of eight ranks reads as a root cause, not as a cascade.

public enum CollectiveError: Error, CustomStringConvertible, Equatable {
  /// The neighbour `peer` disconnected (process died or closed its sockets).
  case peerLost(peer: String, detail: String)
  /// The neighbour `peer` sent nothing within the timeout (stopped, hung or partitioned).
  case peerSilent(peer: String, seconds: Double, phase: String)
  /// Another rank failed and told the ring; `reason` is its message.
  case aborted(reason: String)
  /// The handshake found that the ranks do not belong to one job (job id, world size, model).
  case handshakeMismatch(String)
  /// A socket could not be bound, connected or configured.
  case transport(String)
  /// Ranks called different collectives, or a message had an unexpected size.
  case protocolViolation(String)
  /// A misuse of the API (bad root, sizes disagreeing, group closed).
  case invalidArgument(String)

  public var description: String {
    switch self {
    case let .peerLost(peer, detail): return "lost connection to \(peer): \(detail)"
    case let .peerSilent(peer, seconds, phase):
      return "\(peer) sent nothing for \(formatSeconds(seconds)) during \(phase) (stopped, hung or unreachable)"
    case let .aborted(reason): return "job aborted by another rank: \(reason)"
    case let .handshakeMismatch(m): return "handshake mismatch: \(m)"
    case let .transport(m): return m
    case let .protocolViolation(m): return "protocol violation: \(m)"
    case let .invalidArgument(m): return "invalid argument: \(m)"
    }
  }

  /// True when this rank failed because of another rank (launch ranks such exits below own failures).
  public var isCausedByPeer: Bool {
    switch self {
    case .peerLost, .peerSilent, .aborted: return true
    default: return false
    }
  }
}

func formatSeconds(_ s: Double) -> String {
  s >= 10 || s == s.rounded() ? "\(Int(s.rounded())) s" : String(format: "%.1f s", s)
}
