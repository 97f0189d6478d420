// The safetensors container: an 8-byte little-endian header length, a JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the raw
// little-endian tensor bytes back to back. Readable by Python's `safetensors` and by numpy alone.
// Writes are atomic (Common.AtomicFile: a temporary file in the same directory, fsync, rename, fsync of the directory).
import Common
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum DType: String, Sendable {
  case f32 = "F32", i64 = "I64", u64 = "U64", i32 = "I32", u8 = "U8", f64 = "F64"
  public var size: Int {
    switch self {
    case .f32, .i32: return 4
    case .i64, .u64, .f64: return 8
    case .u8: return 1
    }
  }
}

public struct CheckpointError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// One tensor to write: its bytes are read from `data` during `write`.
public struct TensorSource {
  public var name: String
  public var dtype: DType
  public var shape: [Int]
  public var data: UnsafeRawPointer
  public var byteCount: Int { shape.reduce(1, *) * dtype.size }
  public init(name: String, dtype: DType, shape: [Int], data: UnsafeRawPointer) {
    self.name = name; self.dtype = dtype; self.shape = shape; self.data = data
  }
}

public struct TensorInfo: Equatable, Sendable {
  public let dtype: DType
  public let shape: [Int]
  public let byteRange: Range<Int>  // within the data section
}

public enum SafeTensors {
  /// Header sizes beyond this are treated as corruption rather than allocated.
  static let maxHeaderBytes = 100 << 20

  public static func write(_ tensors: [TensorSource], metadata: [String: String], to path: String) throws {
    var header = "{"
    if !metadata.isEmpty {
      let items = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
      header += "\"__metadata__\":{\(items.joined(separator: ","))}"
    }
    var offset = 0
    var seen = Set<String>()
    for t in tensors {
      guard seen.insert(t.name).inserted else { throw CheckpointError("duplicate tensor name \(t.name)") }
      if header.count > 1 { header += "," }
      let shape = t.shape.map(String.init).joined(separator: ",")
      header += "\(jsonString(t.name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + t.byteCount)]}"
      offset += t.byteCount
    }
    header += "}"
    var headerBytes = Array(header.utf8)
    while (8 + headerBytes.count) % 8 != 0 { headerBytes.append(0x20) }  // pad with spaces to 8-byte alignment

    try AtomicFile.write(to: path) { fd in
      var len = UInt64(headerBytes.count).littleEndian
      try withUnsafeBytes(of: &len) { try AtomicFile.writeAll(fd, $0.baseAddress!, 8, path) }
      try headerBytes.withUnsafeBytes { try AtomicFile.writeAll(fd, $0.baseAddress!, $0.count, path) }
      for t in tensors { try AtomicFile.writeAll(fd, t.data, t.byteCount, path) }
    }
  }

  static func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
      switch u {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\t": out += "\\t"
      default:
        if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
      }
    }
    return out + "\""
  }
}

/// A safetensors file read into memory, with its header validated.
public final class SafeTensorsFile {
  public let path: String
  public let metadata: [String: String]
  public let tensors: [String: TensorInfo]
  /// Tensor names in file order.
  public let names: [String]
  private let bytes: [UInt8]
  private let dataStart: Int

  public init(path: String) throws {
    self.path = path
    guard FileManager.default.fileExists(atPath: path) else { throw CheckpointError("checkpoint \(path) does not exist") }
    guard let data = FileManager.default.contents(atPath: path) else { throw CheckpointError("cannot read checkpoint \(path)") }
    bytes = [UInt8](data)
    guard bytes.count >= 8 else { throw CheckpointError("\(path): not a safetensors file (\(bytes.count) bytes, too short)") }
    var len: UInt64 = 0
    for i in 0..<8 { len |= UInt64(bytes[i]) << (8 * UInt64(i)) }
    guard len <= UInt64(SafeTensors.maxHeaderBytes), 8 + Int(len) <= bytes.count else {
      throw CheckpointError("\(path): header length \(len) does not fit the file (\(bytes.count) bytes); truncated or not safetensors")
    }
    dataStart = 8 + Int(len)
    let headerData = Data(bytes[8..<dataStart])
    guard let obj = try? JSONSerialization.jsonObject(with: headerData), let dict = obj as? [String: Any] else {
      throw CheckpointError("\(path): header is not a JSON object")
    }
    var meta: [String: String] = [:]
    var infos: [String: TensorInfo] = [:]
    var order: [(Int, String)] = []
    let dataCount = bytes.count - dataStart
    for (name, value) in dict {
      if name == "__metadata__" {
        guard let m = value as? [String: Any] else { throw CheckpointError("\(path): __metadata__ is not an object") }
        for (k, v) in m {
          guard let s = v as? String else { throw CheckpointError("\(path): metadata \(k) is not a string") }
          meta[k] = s
        }
        continue
      }
      guard let e = value as? [String: Any], let dt = e["dtype"] as? String,
            let shapeAny = e["shape"] as? [Any], let offsAny = e["data_offsets"] as? [Any], offsAny.count == 2 else {
        throw CheckpointError("\(path): tensor \(name) has a malformed header entry")
      }
      guard let dtype = DType(rawValue: dt) else { throw CheckpointError("\(path): tensor \(name) has unsupported dtype \(dt)") }
      let shape = shapeAny.compactMap { ($0 as? NSNumber)?.intValue }
      let offs = offsAny.compactMap { ($0 as? NSNumber)?.intValue }
      guard shape.count == shapeAny.count, shape.allSatisfy({ $0 >= 0 }), offs.count == 2,
            offs[0] >= 0, offs[0] <= offs[1], offs[1] <= dataCount else {
        throw CheckpointError("\(path): tensor \(name) has offsets or shape outside the file (truncated?)")
      }
      guard offs[1] - offs[0] == shape.reduce(1, *) * dtype.size else {
        throw CheckpointError("\(path): tensor \(name) byte size \(offs[1] - offs[0]) does not match shape \(shape) of \(dt)")
      }
      infos[name] = TensorInfo(dtype: dtype, shape: shape, byteRange: offs[0]..<offs[1])
      order.append((offs[0], name))
    }
    metadata = meta
    tensors = infos
    names = order.sorted { $0.0 < $1.0 }.map(\.1)
  }

  /// Copies a tensor's raw bytes to `dst` (which must hold `byteRange.count` bytes).
  public func copyBytes(of name: String, to dst: UnsafeMutableRawPointer) {
    let info = tensors[name]!
    bytes.withUnsafeBytes { src in
      dst.copyMemory(from: src.baseAddress! + dataStart + info.byteRange.lowerBound, byteCount: info.byteRange.count)
    }
  }

  public func floats(_ name: String) -> [Float]? {
    guard let info = tensors[name], info.dtype == .f32 else { return nil }
    var out = [Float](repeating: 0, count: info.byteRange.count / 4)
    out.withUnsafeMutableBytes { copyBytes(of: name, to: $0.baseAddress!) }
    return out
  }

  public func int64(_ name: String) -> Int64? {
    guard let info = tensors[name], info.dtype == .i64, info.byteRange.count == 8 else { return nil }
    var v: Int64 = 0
    withUnsafeMutableBytes(of: &v) { copyBytes(of: name, to: $0.baseAddress!) }
    return Int64(littleEndian: v)
  }
}
