// Records per TFRecord file, counted once by scanning headers and cached next to the data as
// `<split>.count` (JSON keyed by file name, size and mtime; rewritten when any of them change).
import Foundation

struct CountCache: Codable {
  static let version = 1
  var version: Int
  var files: [Entry]
  struct Entry: Codable, Equatable {
    var name: String
    var size: Int
    var mtime: Double
    var records: Int
  }
}

public enum RecordCounts {
  public static func cachePath(directory: String, split: String) -> String {
    (directory as NSString).appendingPathComponent("\(split).count")
  }

  /// Record count of every file of a TFRecord source, from the cache when it is current.
  /// Counting verifies each length CRC; with `skipCorrupt` a corrupt tail is left out.
  public static func counts(of source: DatasetSource, skipCorrupt: Bool = false) throws -> [Int] {
    guard source.layout == .tfrecord else { return source.files.map { _ in 1 } }
    let path = cachePath(directory: source.directory, split: source.split)
    func key(_ f: SourceFile) -> (String, Int, Double) { ((f.path as NSString).lastPathComponent, f.size, f.mtime) }
    if let data = FileManager.default.contents(atPath: path),
       let cache = try? JSONDecoder().decode(CountCache.self, from: data),
       cache.version == CountCache.version, cache.files.count == source.files.count,
       zip(cache.files, source.files).allSatisfy({ e, f in
         let k = key(f); return e.name == k.0 && e.size == k.1 && e.mtime == k.2 }) {
      return cache.files.map(\.records)
    }
    var entries = [CountCache.Entry]()
    for f in source.files {
      let (records, corruptAt) = try TFRecord.index(path: f.path, stopAtCorruption: skipCorrupt)
      if let at = corruptAt {
        warn("corrupt TFRecord framing in \(f.path) at byte offset \(at): the rest of the file is skipped")
      }
      let k = key(f)
      entries.append(.init(name: k.0, size: k.1, mtime: k.2, records: records.count))
    }
    // Best effort and atomic (several ranks may write at once); a read-only dataset just
    // counts again next time.
    if let data = try? JSONEncoder().encode(CountCache(version: CountCache.version, files: entries)) {
      let tmp = path + ".\(getpid()).tmp"
      if FileManager.default.createFile(atPath: tmp, contents: data) {
        if rename(tmp, path) != 0 { unlink(tmp) }
      }
    }
    return entries.map(\.records)
  }
}

/// Warnings go to stderr, one line each, so they reach every rank's log.
func warn(_ message: String) {
  FileHandle.standardError.write(Data(("warning: " + message + "\n").utf8))
}
