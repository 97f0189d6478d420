// MNIST / Fashion-MNIST IDX files (big-endian magic 0x0000_08_NN, NN = number of dimensions,
// then one uint32 per dimension, then uint8 data), optionally gzip-compressed.
import Foundation

public struct IDXArray {
  public var dimensions: [Int]
  public var data: [UInt8]

  public init(dimensions: [Int], data: [UInt8]) { self.dimensions = dimensions; self.data = data }

  /// Reads `path`; a `.gz` file is decompressed with the system's `gzip -dc` (present on every
  /// Debian machine, and it verifies the gzip CRC).
  public init(path: String) throws {
    let bytes = path.hasSuffix(".gz") ? try IDXArray.gunzip(path) : [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    try self.init(bytes: bytes, path: path)
  }

  public init(bytes: [UInt8], path: String = "<memory>") throws {
    func bad(_ why: String) -> DataPipelineError { .io(path: path, reason: "not an IDX file: \(why)") }
    guard bytes.count >= 4, bytes[0] == 0, bytes[1] == 0 else { throw bad("bad magic") }
    guard bytes[2] == 0x08 else { throw bad("element type \(bytes[2]) is not unsigned byte") }
    let rank = Int(bytes[3])
    guard rank >= 1, bytes.count >= 4 + 4 * rank else { throw bad("truncated header") }
    var dims = [Int]()
    for d in 0..<rank {
      let o = 4 + 4 * d
      dims.append(Int(bytes[o]) << 24 | Int(bytes[o + 1]) << 16 | Int(bytes[o + 2]) << 8 | Int(bytes[o + 3]))
    }
    let count = dims.reduce(1, *)
    guard bytes.count - (4 + 4 * rank) == count else {
      throw bad("holds \(bytes.count - 4 - 4 * rank) data bytes, dimensions \(dims) need \(count)")
    }
    self.init(dimensions: dims, data: Array(bytes[(4 + 4 * rank)...]))
  }

  static func gunzip(_ path: String) throws -> [UInt8] {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["gzip", "-dc", path]
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    if p.terminationStatus != 0 {
      let msg = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
      throw DataPipelineError.io(path: path, reason: "gzip -dc failed: \(msg.trimmingCharacters(in: .whitespacesAndNewlines))")
    }
    return [UInt8](data)
  }
}
