// What is in each TFRecord file (record count, label range), found once by reading every
// record (all CRCs verified, every Example parsed) and cached next to the data as
// `<split>.count`: JSON keyed by file name, size and mtime, recomputed when any of them change.
// The scan is what lets a bad label or a corrupt record stop the run before training starts.
import Common
import Foundation
import Telemetry

/// One file's summary.
public struct FileSummary: Codable, Equatable, Sendable {
  public var name: String
  public var size: Int
  public var mtime: Double
  public var records: Int
  /// Smallest and largest stored label and the records holding them (nil for no records).
  public var minLabel: Int64?
  public var maxLabel: Int64?
  public var minLabelRecord: Int?
  public var maxLabelRecord: Int?
}

struct CountCache: Codable {
  static let version = 2
  var version: Int
  var files: [FileSummary]
}

public enum RecordCounts {
  public static func cachePath(directory: String, split: String) -> String {
    (directory as NSString).appendingPathComponent("\(split).count")
  }

  /// Summary of every file of a source, from the cache when it is current. For an image
  /// folder every file is one record with a known label (nothing to cache).
  public static func summaries(of source: DatasetSource, skipCorrupt: Bool = false) throws -> [FileSummary] {
    if source.layout == .imageFolder {
      return zip(source.files, source.imageLabels).map { f, l in
        FileSummary(name: f.path, size: f.size, mtime: f.mtime, records: 1, minLabel: Int64(l), maxLabel: Int64(l),
                    minLabelRecord: 0, maxLabelRecord: 0)
      }
    }
    let path = cachePath(directory: source.directory, split: source.split)
    func name(_ f: SourceFile) -> String { (f.path as NSString).lastPathComponent }
    if let data = FileManager.default.contents(atPath: path),
       let cache = try? JSONDecoder().decode(CountCache.self, from: data),
       cache.version == CountCache.version, cache.files.count == source.files.count,
       zip(cache.files, source.files).allSatisfy({ e, f in e.name == name(f) && e.size == f.size && e.mtime == f.mtime }) {
      return cache.files
    }
    var entries = [FileSummary]()
    // The first scan of a split reads all of it (ImageNet: minutes): say how far it is.
    let progress = ProgressReporter("scan \(source.split) records", total: source.files.reduce(0) { $0 + $1.size }, unit: .bytes)
    defer { progress.finish() }
    for f in source.files {
      var s = FileSummary(name: name(f), size: f.size, mtime: f.mtime, records: 0)
      let (records, corruptAt) = try TFRecord.index(path: f.path, stopAtCorruption: skipCorrupt)
      if let at = corruptAt {
        warn("corrupt TFRecord framing in \(f.path) at byte offset \(at): the rest of the file is skipped")
      }
      s.records = records.count
      let file = try RecordFile(path: f.path)
      var buffer = [UInt8]()
      for (r, loc) in records.enumerated() {
        progress.advance(by: TFRecord.headerSize + loc.length + TFRecord.footerSize)
        let label: Int64
        do {
          try file.readRecord(loc, into: &buffer)
          do { label = try ImageExample(serialized: buffer).label } catch {
            throw DataPipelineError.badExample(path: f.path, record: r, reason: "\(error)")
          }
        } catch {
          if skipCorrupt { continue }  // counted; the loader skips it again when it reads it
          throw error
        }
        if s.minLabel == nil || label < s.minLabel! { s.minLabel = label; s.minLabelRecord = r }
        if s.maxLabel == nil || label > s.maxLabel! { s.maxLabel = label; s.maxLabelRecord = r }
      }
      entries.append(s)
    }
    // Best effort and atomic (several ranks may write at once); a read-only dataset is just
    // scanned again next time.
    if let data = try? JSONEncoder().encode(CountCache(version: CountCache.version, files: entries)) {
      try? AtomicFile.write(data, to: path)
    }
    return entries
  }

  /// Records per file.
  public static func counts(of source: DatasetSource, skipCorrupt: Bool = false) throws -> [Int] {
    try summaries(of: source, skipCorrupt: skipCorrupt).map(\.records)
  }
}

/// Warnings go to stderr, one line each, so they reach every rank's log.
func warn(_ message: String) { writeStderr("warning: " + message) }
