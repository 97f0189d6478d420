// A compute/communication timeline (Horovod's Timeline, PyTorch's profiler trace) as a Chrome
// trace: JSON that Perfetto (ui.perfetto.dev) and chrome://tracing open. One process per rank,
// one thread track for the training loop and one for the communication thread; every span is a
// complete event (ph "X", ts/dur in µs) with the step in its args. Only a window of steps is
// kept (after a warm-up), so the file stays small whatever the run's length; when the timeline
// is off the loop pays one nil check per span.
import Common
import Foundation

public final class Timeline: @unchecked Sendable {
  /// The thread tracks of one rank (Chrome trace `tid`).
  public enum Track: Int, Sendable, CaseIterable {
    case compute = 0, communication = 1
    var title: String { self == .compute ? "training loop" : "allreduce (communication thread)" }
  }

  /// Span names, shared by the trainer, the gradient reducer and the tests.
  public enum Name {
    public static let step = "step", dataWait = "data wait", forward = "forward", backward = "backward"
    public static let allreduce = "allreduce", allreduceWait = "allreduce wait", optimizer = "optimizer"
    public static let metrics = "metrics", checkpoint = "checkpoint"
  }

  public static let defaultWarmupSteps = 5
  public static let defaultSteps = 20

  struct Span {
    var name: String
    var track: Track
    var start: Int64
    var duration: Int64
    var args: [String: Int]
  }

  public let rank: Int
  public let path: String
  public let warmupSteps: Int
  public let steps: Int
  private let lock = NSLock()
  private var spans: [Span] = []
  private var window = 0..<0
  private var written = false
  /// The step the training loop is in (set on its thread, read there and at submit time).
  public private(set) var step = -1
  /// Whether the current step is inside the recorded window.
  public private(set) var isRecording = false

  public init(rank: Int, path: String, warmupSteps: Int = Timeline.defaultWarmupSteps, steps: Int = Timeline.defaultSteps) {
    self.rank = rank; self.path = path; self.warmupSteps = max(0, warmupSteps); self.steps = max(1, steps)
  }

  /// The run starts at `firstStep` (a resumed run records its own first steps after the warm-up).
  public func start(atStep firstStep: Int) {
    window = (firstStep + warmupSteps)..<(firstStep + warmupSteps + steps)
  }

  /// Called by the training loop at the top of every step; writes the file once the window ends.
  public func beginStep(_ s: Int) throws {
    step = s
    isRecording = window.contains(s)
    if s >= window.upperBound && !written { try write() }
  }

  /// Microseconds of the wall clock (CLOCK_REALTIME: comparable across the ranks' processes).
  @inline(__always)
  public static func now() -> Int64 {
    var t = timespec()
    clock_gettime(CLOCK_REALTIME, &t)
    return Int64(t.tv_sec) * 1_000_000 + Int64(t.tv_nsec) / 1000
  }

  /// Thread-safe (the communication thread records its buckets).
  public func record(_ name: String, track: Track, start: Int64, end: Int64, args: [String: Int]) {
    lock.lock()
    spans.append(Span(name: name, track: track, start: start, duration: max(0, end - start), args: args))
    lock.unlock()
  }

  /// Times `body` as a span of the current step when recording.
  @inline(__always)
  public func measure<T>(_ name: String, track: Track = .compute, _ body: () throws -> T) rethrows -> T {
    guard isRecording else { return try body() }
    let t0 = Self.now()
    defer { record(name, track: track, start: t0, end: Self.now(), args: ["step": step]) }
    return try body()
  }

  /// With `end`, a span around code that does not fit in a closure: nil when not recording.
  @inline(__always)
  public func begin() -> Int64? { isRecording ? Self.now() : nil }

  /// Records the span `name` of the current step that began at `since` (nothing when nil).
  @inline(__always)
  public func end(_ name: String, track: Track = .compute, since: Int64?) {
    guard let s = since else { return }
    record(name, track: track, start: s, end: Self.now(), args: ["step": step])
  }

  /// Writes the spans so far (atomically); a second call rewrites the file.
  public func write() throws {
    lock.lock()
    let copy = spans
    lock.unlock()
    written = true
    var events: [[String: Any]] = Self.metadata(rank: rank)
    for s in copy {
      events.append(["name": s.name, "cat": s.track == .compute ? "compute" : "communication", "ph": "X",
                     "ts": s.start, "dur": s.duration, "pid": rank, "tid": s.track.rawValue, "args": s.args])
    }
    try Self.writeTrace(events, to: path)
  }

  /// Writes the file unless the window already did (end of a run shorter than the window).
  public func close() throws { if !written { try write() } }

  static func metadata(rank: Int) -> [[String: Any]] {
    var m: [[String: Any]] = [["name": "process_name", "ph": "M", "pid": rank, "args": ["name": "rank \(rank)"]],
                              ["name": "process_sort_index", "ph": "M", "pid": rank, "args": ["sort_index": rank]]]
    for t in Track.allCases {
      m.append(["name": "thread_name", "ph": "M", "pid": rank, "tid": t.rawValue, "args": ["name": t.title]])
    }
    return m
  }

  static func writeTrace(_ events: [[String: Any]], to path: String) throws {
    let object: [String: Any] = ["traceEvents": events, "displayTimeUnit": "ms"]
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    let dir = (path as NSString).deletingLastPathComponent
    if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
    try AtomicFile.write(data, to: path)
  }

  /// The events of a trace file (the object form, or a bare array).
  public static func events(inFile path: String) throws -> [[String: Any]] {
    guard let data = FileManager.default.contents(atPath: path) else { throw TelemetryError("cannot read the timeline \(path)") }
    let json = try JSONSerialization.jsonObject(with: data)
    if let object = json as? [String: Any], let events = object["traceEvents"] as? [[String: Any]] { return events }
    if let events = json as? [[String: Any]] { return events }
    throw TelemetryError("\(path) is not a Chrome trace (no traceEvents array)")
  }

  /// One trace from the ranks' files: every event kept, times shifted so the earliest span starts
  /// at 0 (the ranks' clocks are the same wall clock). Returns the number of spans.
  @discardableResult
  public static func merge(_ files: [String], into path: String) throws -> Int {
    var all: [[String: Any]] = []
    for f in files { all += try events(inFile: f) }
    let origin = all.compactMap { $0["ts"] as? Int64 ?? ($0["ts"] as? NSNumber)?.int64Value }.min() ?? 0
    var spans = 0
    for i in all.indices {
      guard let ts = all[i]["ts"] as? NSNumber else { continue }
      all[i]["ts"] = ts.int64Value - origin
      spans += 1
    }
    try writeTrace(all, to: path)
    return spans
  }
}

public struct TelemetryError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}
