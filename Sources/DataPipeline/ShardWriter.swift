// Writes a split as TF-slim shards `<split>-00000-of-0000N`, examples dealt round-robin.
import Foundation

public final class ShardWriter {
  public let directory: String
  public let split: String
  public let shards: Int
  private var writers: [TFRecordWriter] = []
  public private(set) var written = 0

  public init(directory: String, split: String, shards: Int) throws {
    precondition(shards >= 1, "at least one shard")
    self.directory = directory; self.split = split; self.shards = shards
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    for s in 0..<shards {
      writers.append(try TFRecordWriter(path: (directory as NSString).appendingPathComponent(ShardWriter.name(split, s, shards))))
    }
  }

  public static func name(_ split: String, _ shard: Int, _ of: Int) -> String {
    split + "-" + pad(shard) + "-of-" + pad(of)
  }

  static func pad(_ n: Int) -> String {
    let s = String(n)
    return String(repeating: "0", count: max(0, 5 - s.count)) + s
  }

  public func write(_ example: ImageExample) throws {
    try writers[written % shards].write(try example.serialized())
    written += 1
  }

  /// Renames every shard to its final name; stale counts next to the data are removed.
  public func close() throws {
    for w in writers { try w.close() }
    try? FileManager.default.removeItem(atPath: RecordCounts.cachePath(directory: directory, split: split))
  }
}
