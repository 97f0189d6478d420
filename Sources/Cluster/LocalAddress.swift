// Is an address on this host? A worker must bind only to its own device address and refuse one
// that is not local before it connects anywhere (a wrong table must not make it talk to others).

import Foundation

public enum LocalAddress {
  /// IPv4 addresses of this host's interfaces (getifaddrs).
  public static func interfaceAddresses() -> Set<String> {
    var result = Set<String>()
    var list: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&list) == 0 else { return result }
    defer { freeifaddrs(list) }
    var p = list
    while let entry = p {
      if let sa = entry.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET) {
        var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
          var a = sin.pointee.sin_addr
          _ = inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
        }
        result.insert(String(cString: buf))
      }
      p = entry.pointee.ifa_next
    }
    return result
  }

  /// True for 127.0.0.0/8 (Linux routes the whole block to `lo`) and for interface addresses.
  public static func isLocal(_ address: String, interfaces: Set<String>? = nil) -> Bool {
    if isLoopback(address) { return true }
    return (interfaces ?? interfaceAddresses()).contains(address)
  }

  public static func isLoopback(_ address: String) -> Bool {
    guard isIPv4(address) else { return false }
    return address.hasPrefix("127.")
  }
}
