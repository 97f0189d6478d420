// The sorted-string table a TensorFlow checkpoint's `.index` is (TensorFlow's lib/io/table, the
// LevelDB table format):
//
//   data block* | metaindex block | index block | footer (48 bytes)
//   block   = entries | restarts (uint32 LE each) | num_restarts (uint32 LE) | trailer
//   entry   = varint32 shared | varint32 non_shared | varint32 value_length | key delta | value
//             (the key shares `shared` bytes with the previous key; 0 at every restart point)
//   trailer = 1 byte compression type (0 none, 1 snappy) | masked CRC-32C of contents + type byte
//   index   = one entry per data block: key ≥ the block's last key and < the next block's first,
//             value = BlockHandle (varint64 offset, varint64 size, size without the trailer)
//   footer  = metaindex handle | index handle | zero padding to 40 bytes | magic (fixed64 LE)
//
// TensorFlow writes bundle indexes uncompressed; a snappy block is refused with a clear error.
import Foundation
import Common
import Kernels

enum SSTable {
  static let magic: UInt64 = 0xdb47_7524_8b80_fb57
  static let footerSize = 48
  static let trailerSize = 5
  static let noCompression: UInt8 = 0
  static let snappyCompression: UInt8 = 1
  /// LevelDB's defaults: a new data block after ~4 KiB, a restart point every 16 keys.
  static let blockSize = 4096
  static let restartInterval = 16

  // MARK: Varints

  static func putVarint(_ v: UInt64, _ out: inout [UInt8]) {
    var v = v
    while v >= 0x80 { out.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
    out.append(UInt8(v))
  }

  static func putFixed32(_ v: UInt32, _ out: inout [UInt8]) {
    for i in 0..<4 { out.append(UInt8((v >> (8 * UInt32(i))) & 0xFF)) }
  }

  /// Reads a varint at `pos` within `limit`, advancing `pos`; nil when malformed or cut off.
  static func varint(_ b: UnsafeRawBufferPointer, _ pos: inout Int, limit: Int) -> UInt64? {
    var v: UInt64 = 0
    var shift: UInt64 = 0
    while pos < limit && shift <= 63 {
      let byte = b[pos]; pos += 1
      v |= UInt64(byte & 0x7F) << shift
      if byte & 0x80 == 0 { return v }
      shift += 7
    }
    return nil
  }

  static func fixed32(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
    (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) }
  }

  // MARK: Writing

  struct BlockBuilder {
    let restartInterval: Int
    var buffer: [UInt8] = []
    var restarts: [UInt32] = [0]
    var counter = 0
    var lastKey: [UInt8] = []
    var isEmpty: Bool { buffer.isEmpty }

    init(restartInterval: Int) { self.restartInterval = restartInterval }

    mutating func add(_ key: [UInt8], _ value: [UInt8]) {
      var shared = 0
      if counter < restartInterval {
        while shared < min(lastKey.count, key.count) && lastKey[shared] == key[shared] { shared += 1 }
      } else {
        restarts.append(UInt32(buffer.count))
        counter = 0
      }
      SSTable.putVarint(UInt64(shared), &buffer)
      SSTable.putVarint(UInt64(key.count - shared), &buffer)
      SSTable.putVarint(UInt64(value.count), &buffer)
      buffer += key[shared...]
      buffer += value
      lastKey = key
      counter += 1
    }

    /// Contents with the restart array (no trailer); the builder is reset.
    mutating func finish() -> [UInt8] {
      var out = buffer
      for r in restarts { SSTable.putFixed32(r, &out) }
      SSTable.putFixed32(UInt32(restarts.count), &out)
      self = BlockBuilder(restartInterval: restartInterval)
      return out
    }
  }

  /// A complete table of `entries` (keys strictly increasing, bytewise).
  static func build(_ entries: [(key: [UInt8], value: [UInt8])]) -> [UInt8] {
    var file: [UInt8] = []
    var data = BlockBuilder(restartInterval: restartInterval)
    var index = BlockBuilder(restartInterval: 1)

    func emit(_ contents: [UInt8]) -> [UInt8] {
      var handle: [UInt8] = []
      putVarint(UInt64(file.count), &handle)
      putVarint(UInt64(contents.count), &handle)
      file += contents
      let crc = CRC32C.masked(CRC32C.checksum(contents + [noCompression]))
      file.append(noCompression)
      putFixed32(crc, &file)
      return handle
    }
    func flushData() {
      guard !data.isEmpty else { return }
      let last = data.lastKey
      index.add(last, emit(data.finish()))
    }
    for e in entries {
      data.add(e.key, e.value)
      if data.buffer.count >= blockSize { flushData() }
    }
    flushData()
    var meta = BlockBuilder(restartInterval: restartInterval)
    let metaHandle = emit(meta.finish())
    let indexHandle = emit(index.finish())
    var footer = metaHandle + indexHandle
    footer += [UInt8](repeating: 0, count: footerSize - 8 - footer.count)
    putFixed32(UInt32(magic & 0xFFFF_FFFF), &footer)
    putFixed32(UInt32(magic >> 32), &footer)
    return file + footer
  }

  // MARK: Reading

  /// Every (key, value) of the table in `bytes`, in order. Verifies the footer magic and every
  /// block's CRC; errors name `path` and say what is wrong.
  static func read(_ bytes: [UInt8], path: String) throws -> [(key: [UInt8], value: [UInt8])] {
    try bytes.withUnsafeBytes { b -> [(key: [UInt8], value: [UInt8])] in
      guard b.count >= footerSize else {
        throw CheckpointError("\(path): \(b.count) bytes, too short for a TensorFlow checkpoint index (truncated?)")
      }
      let f = b.count - footerSize
      let m = UInt64(fixed32(b, b.count - 8)) | UInt64(fixed32(b, b.count - 4)) << 32
      guard m == magic else {
        throw CheckpointError("\(path): not a TensorFlow checkpoint index (bad table magic; truncated or another file type)")
      }
      var pos = f
      guard varint(b, &pos, limit: b.count - 8) != nil, varint(b, &pos, limit: b.count - 8) != nil,
            let indexOffset = varint(b, &pos, limit: b.count - 8), let indexSize = varint(b, &pos, limit: b.count - 8) else {
        throw CheckpointError("\(path): corrupt table footer")
      }
      var out: [(key: [UInt8], value: [UInt8])] = []
      for (_, handle) in try block(b, offset: indexOffset, size: indexSize, path: path, what: "index block") {
        var hp = 0
        let ok: (UInt64, UInt64)? = handle.withUnsafeBytes { h in
          guard let o = varint(h, &hp, limit: h.count), let s = varint(h, &hp, limit: h.count) else { return nil }
          return (o, s)
        }
        guard let (o, s) = ok else { throw CheckpointError("\(path): corrupt block handle in the index block") }
        out += try block(b, offset: o, size: s, path: path, what: "data block at byte \(o)")
      }
      return out
    }
  }

  /// The entries of the block at (offset, size), after checking it lies in the file, is
  /// uncompressed and matches its CRC.
  static func block(_ b: UnsafeRawBufferPointer, offset: UInt64, size: UInt64, path: String, what: String) throws
    -> [(key: [UInt8], value: [UInt8])]
  {
    let limit = UInt64(b.count - footerSize)
    guard offset <= limit, size <= limit, offset + size + UInt64(trailerSize) <= limit else {
      throw CheckpointError("\(path): \(what) (\(size) bytes at \(offset)) lies outside the file (\(b.count) bytes); truncated?")
    }
    let start = Int(offset), n = Int(size)
    let type = b[start + n]
    let stored = fixed32(b, start + n + 1)
    let actual = CRC32C.masked(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[start..<(start + n + 1)])))
    guard stored == actual else {
      throw CheckpointError(String(format: "%@: CRC-32C mismatch in %@ (stored %08x, computed %08x); the file is corrupt", path, what, stored, actual))
    }
    guard type == noCompression else {
      let name = type == snappyCompression ? "snappy" : "type \(type)"
      throw CheckpointError("\(path): \(what) is \(name)-compressed; only uncompressed tables (as TensorFlow writes checkpoint indexes) are supported")
    }
    guard n >= 4 else { throw CheckpointError("\(path): \(what) is too short (\(n) bytes)") }
    let numRestarts = Int(fixed32(b, start + n - 4))
    guard numRestarts >= 1, 4 * (numRestarts + 1) <= n else {
      throw CheckpointError("\(path): \(what) has a corrupt restart array")
    }
    let end = start + n - 4 * (numRestarts + 1)
    var pos = start
    var key: [UInt8] = []
    var entries: [(key: [UInt8], value: [UInt8])] = []
    while pos < end {
      guard let shared = varint(b, &pos, limit: end), let nonShared = varint(b, &pos, limit: end),
            let valueLength = varint(b, &pos, limit: end), Int(shared) <= key.count,
            nonShared <= UInt64(end - pos), valueLength <= UInt64(end - pos) - nonShared else {
        throw CheckpointError("\(path): corrupt entry in \(what)")
      }
      key = Array(key[0..<Int(shared)]) + Array(b[pos..<(pos + Int(nonShared))])
      pos += Int(nonShared)
      entries.append((key, Array(b[pos..<(pos + Int(valueLength))])))
      pos += Int(valueLength)
    }
    return entries
  }
}
