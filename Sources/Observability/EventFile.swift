// TensorBoard event files: TFRecords (DataPipeline's framing) of tensorflow.Event protos, named
// `events.out.tfevents.<unix seconds>.<host>` as TensorFlow's writer names them. The first record
// is the file_version event ("brain.Event:2"); scalars are Summary.Value simple_value (float32).
// Every event is one write(2) on an O_APPEND descriptor the moment it is added: nothing waits
// in a buffer, so a crash loses at most the event being written.
import Common
import DataPipeline
import Foundation
import SwiftProtobuf

public final class EventFileWriter {
  public static let fileVersion = "brain.Event:2"
  public static let prefix = "events.out.tfevents."
  public var path: String { file.path }
  private let file: AppendOnlyFile

  /// A new file in `directory` (created if missing).
  public init(directory: String, time: Date = Date(), host: String = EventFileWriter.hostName()) throws {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let base = (directory as NSString).appendingPathComponent("\(Self.prefix)\(Int(time.timeIntervalSince1970)).\(host)")
    // Two writers in the same second (evaluate run twice): a suffix keeps both files.
    var candidate = base, n = 0
    while true {
      do {
        file = try AppendOnlyFile(path: candidate, exclusive: true)
        break
      } catch let e as FileError where e.code == EEXIST {
        n += 1
        candidate = "\(base).\(n)"
      }
    }
    var e = Tensorflow_Event()
    e.wallTime = time.timeIntervalSince1970
    e.fileVersion = Self.fileVersion
    try append(e)
  }

  /// One Summary with a simple_value per (tag, value) at `step`.
  public func addScalars(_ values: [(tag: String, value: Double)], step: Int, wallTime: Date = Date()) throws {
    var e = Tensorflow_Event()
    e.wallTime = wallTime.timeIntervalSince1970
    e.step = Int64(step)
    e.summary = Tensorflow_Summary.with { s in
      s.value = values.map { v in Tensorflow_Summary.Value.with { $0.tag = v.tag; $0.simpleValue = Float(v.value) } }
    }
    try append(e)
  }

  /// SessionLog START at `step`: TensorBoard drops what earlier files hold at steps ≥ `step`
  /// (a resumed run logs those steps again), as after TensorFlow's Estimator restores.
  public func addSessionStart(step: Int, wallTime: Date = Date()) throws {
    var e = Tensorflow_Event()
    e.wallTime = wallTime.timeIntervalSince1970
    e.step = Int64(step)
    e.sessionLog = Tensorflow_SessionLog.with { $0.status = .start }
    try append(e)
  }

  func append(_ event: Tensorflow_Event) throws {
    let payload: [UInt8] = try event.serializedBytes()
    try file.append(payload.withUnsafeBytes { TFRecord.frame($0) })
  }

  /// The host name as TensorFlow puts it in the file name (gethostname, no lookup).
  public static func hostName() -> String {
    var buf = [CChar](repeating: 0, count: 256)
    guard gethostname(&buf, buf.count - 1) == 0 else { return "localhost" }
    let name = String(cString: buf)
    return name.isEmpty ? "localhost" : name
  }
}

/// Reading event files back (tests, `report`): every record's CRCs verified.
public enum EventFileReader {
  public struct Scalar: Equatable, Sendable {
    public var tag: String
    public var step: Int
    public var value: Float
    public var wallTime: Double
  }

  public static func events(path: String) throws -> [Tensorflow_Event] {
    try TFRecord.readAll(path: path).enumerated().map { i, bytes in
      do { return try Tensorflow_Event(serializedBytes: bytes) } catch {
        throw ObservabilityError("\(path): record \(i) is not a tensorflow.Event (\(error))")
      }
    }
  }

  public static func scalars(path: String) throws -> [Scalar] {
    try events(path: path).flatMap { e -> [Scalar] in
      guard case .summary(let s)? = e.what else { return [] }
      return s.value.compactMap { v in
        guard case .simpleValue(let x)? = v.value else { return nil }
        return Scalar(tag: v.tag, step: Int(e.step), value: x, wallTime: e.wallTime)
      }
    }
  }

  /// The event files of a directory, oldest first (the order TensorBoard reads them in).
  public static func files(in directory: String) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return names.filter { $0.hasPrefix(EventFileWriter.prefix) }.sorted()
      .map { (directory as NSString).appendingPathComponent($0) }
  }
}

public struct ObservabilityError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}
