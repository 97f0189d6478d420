// Free TCP ports for tests, benchmarks and `launch --local-ranks` on a shared machine: probe by
// binding, starting from a per-process offset so that concurrent jobs rarely even try the same.

import Foundation

public enum LoopbackPorts {
  /// Probing range: below Linux's ephemeral range (32768+), so outgoing connections never take them.
  public static let range = 20000..<32000
  private static let lock = NSLock()
  nonisolated(unsafe) private static var cursor = range.lowerBound + Int(getpid() % 400) * 28

  /// `count` consecutive ports that are free on every address in `hosts` right now.
  public static func findFree(count: Int, hosts: [String] = ["127.0.0.1"]) -> Int? {
    lock.lock(); defer { lock.unlock() }
    for _ in 0..<(range.count / max(1, count)) {
      let base = cursor
      cursor += count
      if cursor + count >= range.upperBound { cursor = range.lowerBound }
      if (base..<(base + count)).allSatisfy({ port in
        hosts.allSatisfy { isFree(port: port, host: $0) && !localSocketExists(port: port, host: $0) }
      }) { return base }
    }
    return nil
  }

  /// True if a ring's local socket file for host:port exists: a live job in another network namespace
  /// that shares /tmp, or one a killed job left. Either way the port is not taken (a rank would
  /// replace the file on bind, and a test checking the file would see a stranger's).
  public static func localSocketExists(port: Int, host: String) -> Bool {
    FileManager.default.fileExists(atPath: ZMQTransport.localSocketPath(for: Endpoint(host: host, port: port)))
  }
  /// True if a TCP socket can bind host:port (the probe socket is closed again at once).
  public static func isFree(port: Int, host: String) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { return false }
    return withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
  }
}
