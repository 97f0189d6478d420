// TensorFlow's V2 checkpoint ("tensor bundle", what tf.compat.v1.train.Saver, Estimator and TF-slim
// write) for a prefix P:
//
//   P.index                   an SSTable (SSTable.swift): key "" → BundleHeaderProto (shard count,
//                             endianness), every other key a tensor name → BundleEntryProto (dtype,
//                             shape, shard, offset, size, masked CRC-32C of the tensor's bytes)
//   P.data-0000i-of-0000n     the tensors' raw little-endian bytes, back to back
//
// Reading checks what TensorFlow's BundleReader checks: the table's block CRCs, little-endian
// header, every shard present, each tensor inside its shard and its CRC-32C. Writing produces the
// same layout; the data shards are renamed into place before the index, so a prefix whose .index
// exists is complete (TensorFlow's own test for a checkpoint's existence is the .index file).
import Foundation
import Common
import Kernels
import SwiftProtobuf

public enum TFCheckpoint {
  public static let indexSuffix = ".index"
  /// TensorFlow's kTensorBundleVersion.
  static let bundleVersion: Int32 = 1

  public static func dataPath(prefix: String, shard: Int, of count: Int) -> String {
    String(format: "%@.data-%05d-of-%05d", prefix, shard, count)
  }

  /// The prefix a `.index` or `.data-NNNNN-of-NNNNN` path belongs to, nil for other names.
  public static func prefix(ofFile path: String) -> String? {
    if path.hasSuffix(indexSuffix) { return String(path.dropLast(indexSuffix.count)) }
    guard let r = path.range(of: #"\.data-\d{5}-of-\d{5}$"#, options: .regularExpression) else { return nil }
    return String(path[..<r.lowerBound])
  }

  static func tfType(_ d: DType) -> Tensorflow_DataType {
    switch d {
    case .f32: return .dtFloat
    case .f64: return .dtDouble
    case .i32: return .dtInt32
    case .i64: return .dtInt64
    case .u8: return .dtUint8
    case .u64: return .UNRECOGNIZED(23)  // DT_UINT64
    }
  }

  static func dtype(_ t: Tensorflow_DataType) -> (DType?, String) {
    switch t {
    case .dtFloat: return (.f32, "DT_FLOAT")
    case .dtDouble: return (.f64, "DT_DOUBLE")
    case .dtInt32: return (.i32, "DT_INT32")
    case .dtInt64: return (.i64, "DT_INT64")
    case .dtUint8: return (.u8, "DT_UINT8")
    case .dtString: return (nil, "DT_STRING")
    case .dtBool: return (nil, "DT_BOOL")
    case .dtInvalid: return (nil, "DT_INVALID")
    case .UNRECOGNIZED(23): return (.u64, "DT_UINT64")
    case .UNRECOGNIZED(let n): return (nil, "DataType \(n)")
    }
  }

  /// Writes `tensors` as the checkpoint `prefix` (shards > 1 splits them round-robin, as a sharded
  /// Saver would). Every file is written atomically; the index last.
  public static func write(_ tensors: [TensorSource], prefix: String, shards: Int = 1) throws {
    precondition(shards >= 1)
    var seen = Set<String>()
    var entries: [(key: [UInt8], value: [UInt8])] = []
    var perShard = [[TensorSource]](repeating: [], count: shards)
    for (i, t) in tensors.enumerated() {
      guard !t.name.isEmpty, seen.insert(t.name).inserted else {
        throw CheckpointError("\(prefix): duplicate or empty tensor name '\(t.name)'")
      }
      perShard[i % shards].append(t)
    }
    for (s, list) in perShard.enumerated() {
      var offset = 0
      for t in list {
        var e = Tensorflow_BundleEntryProto()
        e.dtype = tfType(t.dtype)
        e.shape.dim = t.shape.map { var d = Tensorflow_TensorShapeProto.Dim(); d.size = Int64($0); return d }
        e.shardID = Int32(s)
        e.offset = Int64(offset)
        e.size = Int64(t.byteCount)
        e.crc32C = CRC32C.masked(CRC32C.checksum(UnsafeRawBufferPointer(start: t.data, count: t.byteCount)))
        entries.append((Array(t.name.utf8), [UInt8](try e.serializedData())))
        offset += t.byteCount
      }
      let path = dataPath(prefix: prefix, shard: s, of: shards)
      try AtomicFile.write(to: path) { fd in
        for t in list { try AtomicFile.writeAll(fd, t.data, t.byteCount, path) }
      }
    }
    var header = Tensorflow_BundleHeaderProto()
    header.numShards = Int32(shards)
    header.endianness = .little
    header.version.producer = bundleVersion
    entries.append(([], [UInt8](try header.serializedData())))
    entries.sort { $0.key.lexicographicallyPrecedes($1.key) }
    let table = SSTable.build(entries)
    let indexPath = prefix + indexSuffix
    try AtomicFile.write(table, to: indexPath)
  }

  /// Every file of the checkpoint `prefix` that exists (index first, then the data shards).
  public static func files(prefix checkpoint: String) -> [String] {
    let url = URL(fileURLWithPath: checkpoint)
    let dir = url.deletingLastPathComponent().path, base = url.lastPathComponent
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    var out = names.contains(base + indexSuffix) ? ["\(dir)/\(base)\(indexSuffix)"] : []
    out += names.filter { $0.hasPrefix(base + ".data-") && prefix(ofFile: $0) == base }.sorted().map { "\(dir)/\($0)" }
    return out
  }
}

/// A TensorFlow V2 checkpoint opened by prefix: the index is parsed and checked at once, the data
/// shards are read when a tensor is.
public final class TFCheckpointFile: TensorFile {
  public let path: String
  public let names: [String]
  public let metadata: [String: String] = [:]
  public let numShards: Int
  private let entries: [String: Tensorflow_BundleEntryProto]
  private var shardBytes: [Int: Data] = [:]

  public init(prefix: String) throws {
    path = prefix
    let indexPath = prefix + TFCheckpoint.indexSuffix
    guard let data = FileManager.default.contents(atPath: indexPath) else {
      throw CheckpointError("\(indexPath) does not exist or cannot be read")
    }
    let table = try SSTable.read([UInt8](data), path: indexPath)
    guard let first = table.first, first.key.isEmpty else {
      throw CheckpointError("\(indexPath): no bundle header (entry \"\"); not a TensorFlow V2 checkpoint")
    }
    let header: Tensorflow_BundleHeaderProto
    do { header = try Tensorflow_BundleHeaderProto(serializedBytes: first.value) } catch {
      throw CheckpointError("\(indexPath): corrupt bundle header (\(error))")
    }
    guard header.endianness == .little else {
      throw CheckpointError("\(indexPath): big-endian checkpoint; only little-endian checkpoints are supported")
    }
    guard header.numShards >= 1 else { throw CheckpointError("\(indexPath): bundle header says \(header.numShards) shards") }
    numShards = Int(header.numShards)
    var parsed: [String: Tensorflow_BundleEntryProto] = [:]
    var order: [String] = []
    for (key, value) in table.dropFirst() {
      guard let name = String(bytes: key, encoding: .utf8) else { throw CheckpointError("\(indexPath): a tensor name is not UTF-8") }
      let e: Tensorflow_BundleEntryProto
      do { e = try Tensorflow_BundleEntryProto(serializedBytes: value) } catch {
        throw CheckpointError("\(indexPath): tensor \(name) has a corrupt entry (\(error))")
      }
      guard e.unknownFields.data.isEmpty else {
        throw CheckpointError("\(indexPath): tensor \(name) is a partitioned (sliced) variable, which is not supported")
      }
      guard e.shardID >= 0, Int(e.shardID) < numShards, e.offset >= 0, e.size >= 0,
            e.shape.dim.allSatisfy({ $0.size >= 0 }) else {
        throw CheckpointError("\(indexPath): tensor \(name) has an invalid entry (shard \(e.shardID) of \(numShards), offset \(e.offset), size \(e.size))")
      }
      let (dt, dtName) = TFCheckpoint.dtype(e.dtype)
      if let dt {
        // Overflow-checked: a corrupt shape must be an error, not a wrapped size.
        var bytes: Int64? = Int64(dt.size)
        for d in e.shape.dim { bytes = bytes.flatMap { b in let (r, o) = b.multipliedReportingOverflow(by: d.size); return o ? nil : r } }
        guard let need = bytes, need == e.size else {
          throw CheckpointError("\(indexPath): tensor \(name) has \(e.size) bytes, but shape \(e.shape.dim.map(\.size)) of \(dtName) needs \(bytes.map(String.init) ?? "more than 2^63")")
        }
      }
      parsed[name] = e
      order.append(name)
    }
    entries = parsed
    names = order
    // Every shard a tensor lives in must be there (TensorFlow fails the same way, at restore).
    for name in order {
      let shard = Int(parsed[name]!.shardID)
      let file = TFCheckpoint.dataPath(prefix: prefix, shard: shard, of: numShards)
      if !FileManager.default.fileExists(atPath: file) {
        throw CheckpointError("\(file) is missing (it holds tensor \(name))")
      }
    }
  }

  public func entry(_ name: String) -> TensorEntry? {
    guard let e = entries[name] else { return nil }
    let (dt, dtName) = TFCheckpoint.dtype(e.dtype)
    return TensorEntry(dtype: dt, dtypeName: dtName, shape: e.shape.dim.map { Int($0.size) })
  }

  public func read(_ name: String, into dst: UnsafeMutableRawPointer) throws {
    guard let e = entries[name] else { throw CheckpointError("\(path): no tensor \(name)") }
    let shard = Int(e.shardID)
    let file = TFCheckpoint.dataPath(prefix: path, shard: shard, of: numShards)
    if shardBytes[shard] == nil {
      guard let d = FileManager.default.contents(atPath: file) else {
        throw CheckpointError("\(file) is missing or unreadable (it holds tensor \(name))")
      }
      shardBytes[shard] = d
    }
    let bytes = shardBytes[shard]!
    let start = Int(e.offset), n = Int(e.size)
    guard start <= bytes.count, n <= bytes.count - start else {
      throw CheckpointError("\(file): tensor \(name) needs bytes \(start)..<\(start + n) but the file has \(bytes.count); truncated")
    }
    try bytes.withUnsafeBytes { b in
      let src = UnsafeRawBufferPointer(rebasing: b[start..<(start + n)])
      let crc = CRC32C.masked(CRC32C.checksum(src))
      guard crc == e.crc32C else {
        throw CheckpointError(String(format: "%@: tensor %@ fails its CRC-32C check (stored %08x, computed %08x); the file is corrupt", file, name, e.crc32C, crc))
      }
      if n > 0 { dst.copyMemory(from: src.baseAddress!, byteCount: n) }
    }
  }
}
