// TFRecord framing: every record is
//   uint64 length (little endian) | uint32 masked CRC-32C of those 8 bytes |
//   length bytes of data          | uint32 masked CRC-32C of the data
// Both CRCs are verified. Files are read with pread so many decode threads share one descriptor.
import Foundation
import Common

/// Where one record sits in its file.
public struct RecordLocation: Equatable, Sendable {
  /// Byte offset of the record's header (where a CRC error is reported).
  public var offset: Int
  /// Length of the payload.
  public var length: Int
  public var dataOffset: Int { offset + TFRecord.headerSize }
}

public enum TFRecord {
  static let headerSize = 12  // length + length CRC
  static let footerSize = 4   // data CRC

  /// Frames one payload as a TFRecord.
  public static func frame(_ payload: UnsafeRawBufferPointer) -> [UInt8] {
    var out = [UInt8]()
    out.reserveCapacity(payload.count + headerSize + footerSize)
    let length = UInt64(payload.count).littleEndian
    withUnsafeBytes(of: length) { out.append(contentsOf: $0) }
    let lengthCRC = withUnsafeBytes(of: length) { CRC32C.masked(CRC32C.checksum($0)) }
    withUnsafeBytes(of: lengthCRC.littleEndian) { out.append(contentsOf: $0) }
    out.append(contentsOf: payload)
    withUnsafeBytes(of: CRC32C.masked(CRC32C.checksum(payload)).littleEndian) { out.append(contentsOf: $0) }
    return out
  }

  /// Scans a file's headers (not its payloads) and returns every record's location. Verifies
  /// each length CRC and that the file holds the whole record. With `stopAtCorruption` a bad
  /// tail is dropped (returned in `corruptAt`) instead of thrown: framing cannot resynchronize.
  public static func index(path: String, stopAtCorruption: Bool = false) throws
    -> (records: [RecordLocation], corruptAt: Int?)
  {
    let file = try RecordFile(path: path)
    var records = [RecordLocation]()
    var offset = 0
    var header = [UInt8](repeating: 0, count: headerSize)
    while offset < file.size {
      var failure: DataPipelineError?
      if offset + headerSize > file.size {
        failure = .truncatedRecord(path: path, offset: offset)
      } else {
        try file.read(into: &header, count: headerSize, at: offset)
        let (length, ok) = header.withUnsafeBytes { h -> (UInt64, Bool) in
          let length = h.loadUnaligned(as: UInt64.self).littleEndian
          let stored = h.loadUnaligned(fromByteOffset: 8, as: UInt32.self).littleEndian
          return (length, CRC32C.masked(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: h[0..<8]))) == stored)
        }
        if !ok {
          failure = .lengthCRCMismatch(path: path, offset: offset)
        } else if file.size - offset - headerSize - footerSize < 0
                    || length > UInt64(file.size - offset - headerSize - footerSize) {
          failure = .truncatedRecord(path: path, offset: offset)
        } else {
          records.append(RecordLocation(offset: offset, length: Int(length)))
          offset += headerSize + Int(length) + footerSize
          continue
        }
      }
      if stopAtCorruption { return (records, offset) }
      throw failure!
    }
    return (records, nil)
  }

  /// All payloads of a file, every CRC verified (for tools and tests; the loader reads lazily).
  public static func readAll(path: String) throws -> [[UInt8]] {
    let file = try RecordFile(path: path)
    var buffer = [UInt8]()
    return try index(path: path).records.map { loc in
      try file.readRecord(loc, into: &buffer)
      return buffer
    }
  }
}

/// A read-only TFRecord file shared by threads (pread has no file position to race on).
public final class RecordFile: @unchecked Sendable {
  public let path: String
  public let size: Int
  private let fd: Int32

  public init(path: String) throws {
    fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { throw DataPipelineError.io(path: path, reason: String(cString: strerror(errno))) }
    var st = stat()
    if fstat(fd, &st) != 0 {
      close(fd)
      throw DataPipelineError.io(path: path, reason: "cannot stat")
    }
    self.path = path
    size = Int(st.st_size)
  }

  deinit { close(fd) }

  func read(into buffer: inout [UInt8], count: Int, at offset: Int) throws {
    if buffer.count < count { buffer = [UInt8](repeating: 0, count: count) }
    var done = 0
    try buffer.withUnsafeMutableBytes { b in
      while done < count {
        let n = pread(fd, b.baseAddress! + done, count - done, off_t(offset + done))
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { throw DataPipelineError.truncatedRecord(path: path, offset: offset) }
        done += n
      }
    }
  }

  /// Reads one record's payload into `buffer` (resized to exactly the payload) and verifies
  /// its data CRC.
  public func readRecord(_ loc: RecordLocation, into buffer: inout [UInt8]) throws {
    let total = loc.length + TFRecord.footerSize
    if buffer.count != total { buffer = [UInt8](repeating: 0, count: total) }
    try read(into: &buffer, count: total, at: loc.dataOffset)
    let ok = buffer.withUnsafeBytes { b -> Bool in
      let stored = b.loadUnaligned(fromByteOffset: loc.length, as: UInt32.self).littleEndian
      return CRC32C.masked(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<loc.length]))) == stored
    }
    buffer.removeLast(TFRecord.footerSize)
    if !ok { throw DataPipelineError.dataCRCMismatch(path: path, offset: loc.offset) }
  }
}

/// Appends framed records to a new file; written to `<path>.tmp` and renamed on `close()` so a
/// crash never leaves a half-written shard under its final name.
public final class TFRecordWriter {
  public let path: String
  private let handle: FileHandle
  private let tmpPath: String
  public private(set) var count = 0

  public init(path: String) throws {
    self.path = path
    tmpPath = path + ".tmp"
    guard FileManager.default.createFile(atPath: tmpPath, contents: nil),
          let h = FileHandle(forWritingAtPath: tmpPath) else {
      throw DataPipelineError.io(path: tmpPath, reason: "cannot create")
    }
    handle = h
  }

  public func write<C: ContiguousBytes>(_ payload: C) throws {
    let framed = payload.withUnsafeBytes { TFRecord.frame($0) }
    try handle.write(contentsOf: framed)
    count += 1
  }

  public func close() throws {
    try handle.synchronize()
    try handle.close()
    if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
    try FileManager.default.moveItem(atPath: tmpPath, toPath: path)
  }
}

extension RecordFile {
  /// Reads `count` raw bytes at `offset` into `buffer` (resized to exactly `count`).
  public func readRaw(into buffer: inout [UInt8], count: Int, at offset: Int) throws {
    if buffer.count != count { buffer = [UInt8](repeating: 0, count: count) }
    if count > 0 { try read(into: &buffer, count: count, at: offset) }
  }
}
