// Progress of long work (dataset conversion, the record scan, evaluation, export) on stderr: a
// redrawn bar with rate and ETA when stderr is a terminal, otherwise one plain line per ~10 % so
// that log files stay short and grep-able. Work that ends within `quietSeconds` prints nothing.
import Common
import Foundation

public final class ProgressReporter {
  /// How amounts are printed.
  public enum Unit: Sendable {
    /// A count of things (`records`, `images`, …).
    case items(String)
    /// Bytes, printed in binary units.
    case bytes
  }

  /// Non-terminal output: one line each time another tenth of the total is done.
  public static let linesPerTotal = 10
  /// Terminal output: redraws at most this often.
  public static let redrawSeconds = 0.2
  /// Nothing is printed for work that finishes sooner (a cached scan, a tiny test split).
  public static let defaultQuietSeconds = 1.0
  /// Non-terminal output with an unknown total: one line this often.
  public static let unknownTotalLineSeconds = 10.0
  static let barWidth = 30

  public let label: String
  public let total: Int?
  public let unit: Unit
  let interactive: Bool
  let quietSeconds: Double
  let write: (String) -> Void
  let clock: () -> Double
  let start: Double
  public private(set) var done = 0
  private var detail = ""
  private var lastDraw = -Double.infinity
  private var nextLine = 1
  private var shown = false
  private var finished = false

  /// `total` nil: unknown (counts and rate only). `interactive` defaults to isatty(stderr);
  /// `write` and `clock` are for tests.
  public init(_ label: String, total: Int?, unit: Unit = .items("items"), interactive: Bool? = nil,
              quietSeconds: Double = ProgressReporter.defaultQuietSeconds,
              write: ((String) -> Void)? = nil, clock: (() -> Double)? = nil) {
    self.label = label
    self.total = total.map { max(0, $0) }
    self.unit = unit
    self.interactive = interactive ?? (isatty(STDERR_FILENO) != 0)
    self.quietSeconds = quietSeconds
    self.write = write ?? { writeStderr($0, newline: false) }
    let clock = clock ?? { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
    self.clock = clock
    start = clock()
  }

  /// Adds `n` to the amount done; `detail` (e.g. "top1 0.71") is shown after the rate.
  public func advance(by n: Int = 1, detail: String? = nil) { update(done + n, detail: detail) }

  /// Sets the amount done.
  public func update(_ value: Int, detail: String? = nil) {
    done = value
    if let detail { self.detail = detail }
    let now = clock()
    let elapsed = now - start
    if elapsed < quietSeconds && !shown { return }
    if interactive {
      if now - lastDraw >= Self.redrawSeconds {
        lastDraw = now
        draw(elapsed: elapsed)
      }
    } else if let total, total > 0 {
      // The first line says where we are when the quiet period ends, then one per tenth;
      // the last tenth is finish()'s line.
      let tenth = min(done, total) * Self.linesPerTotal / total
      if (tenth >= nextLine || !shown) && tenth < Self.linesPerTotal {
        nextLine = tenth + 1
        emitLine(elapsed: elapsed)
      }
    } else if now - lastDraw >= Self.unknownTotalLineSeconds {
      lastDraw = now
      emitLine(elapsed: elapsed)
    }
  }

  /// Prints the final state (only if anything was printed before) and ends the bar's line.
  public func finish(detail: String? = nil) {
    guard !finished else { return }
    finished = true
    if let detail { self.detail = detail }
    guard shown else { return }
    let elapsed = clock() - start
    if interactive {
      draw(elapsed: elapsed)
      write("\n")
    } else {
      emitLine(elapsed: elapsed, final: true)
    }
  }

  // MARK: Text

  /// "convert train: 40% 24000/60000 records, 2,400 records/s, ETA 0:15" (plain lines).
  func status(elapsed: Double, final: Bool = false) -> String {
    let rate = elapsed > 0 ? Double(done) / elapsed : 0
    var s = ""
    if let total {
      let pct = total > 0 ? Int((100 * Double(done) / Double(total)).rounded(.down)) : 100
      s += "\(pct)% \(amount(done))/\(amount(total, withUnit: true))"
    } else {
      s += amount(done, withUnit: true)
    }
    s += ", \(rateText(rate))"
    if final {
      s += ", \(Self.clockText(elapsed))"
    } else if let total, rate > 0, done < total {
      s += ", ETA \(Self.clockText(Double(total - done) / rate))"
    }
    if !detail.isEmpty { s += ", \(detail)" }
    return s
  }

  private func emitLine(elapsed: Double, final: Bool = false) {
    shown = true
    write("\(label): \(status(elapsed: elapsed, final: final))\n")
  }

  private func draw(elapsed: Double) {
    shown = true
    var bar = ""
    if let total, total > 0 {
      let filled = min(Self.barWidth, Int(Double(Self.barWidth) * Double(done) / Double(total)))
      bar = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: Self.barWidth - filled) + "] "
    }
    // \r returns to the line start, ESC[K clears what a longer previous line left.
    write("\r\(label): \(bar)\(status(elapsed: elapsed))\u{1B}[K")
  }

  func amount(_ n: Int, withUnit: Bool = false) -> String {
    switch unit {
    case .items(let name): return withUnit ? "\(n) \(name)" : String(n)
    case .bytes: return Self.bytesText(Double(n))
    }
  }

  func rateText(_ perSecond: Double) -> String {
    switch unit {
    case .items(let name): return "\(Self.compact(perSecond)) \(name)/s"
    case .bytes: return "\(Self.bytesText(perSecond))/s"
    }
  }

  static func compact(_ x: Double) -> String {
    x >= 100 ? String(Int(x.rounded())) : String(format: "%.1f", x)
  }

  static func bytesText(_ b: Double) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = b, i = 0
    while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(Int(v)) B" : String(format: "%.1f %@", v, units[i])
  }

  /// m:ss or h:mm:ss.
  static func clockText(_ seconds: Double) -> String {
    let s = max(0, Int(seconds.rounded()))
    return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                     : String(format: "%d:%02d", s / 60, s % 60)
  }
}
