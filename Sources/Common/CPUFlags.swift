// The CPU feature flags Linux lists in /proc/cpuinfo, parsed once for everything that dispatches on
// them (the kernels' instruction set, the bf16 JIT, the precision policy).
import Foundation

public enum CPUFlags {
  /// The words of the first `flags` line of a /proc/cpuinfo text (every core lists the same ones);
  /// empty when there is none (another OS, or a text without one).
  public static func parse(cpuinfo: String) -> Set<String> {
    for line in cpuinfo.split(separator: "\n") where line.hasPrefix("flags") {
      guard let colon = line.firstIndex(of: ":") else { continue }
      return Set(line[line.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init))
    }
    return []
  }

  /// This machine's flags (empty where /proc/cpuinfo cannot be read).
  public static let host: Set<String> =
    (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)).map(parse(cpuinfo:)) ?? []

  /// True if this machine lists every flag in `required`.
  public static func hostHas(_ required: [String]) -> Bool { required.allSatisfy(host.contains) }
}
