import Foundation
import XCTest
import DataPipeline
import Common

final class TFRecordTests: XCTestCase {
  func testFrameLayout() {
    let payload: [UInt8] = Array("hello".utf8)
    let framed = payload.withUnsafeBytes { TFRecord.frame($0) }
    XCTAssertEqual(framed.count, 8 + 4 + 5 + 4)
    XCTAssertEqual(Array(framed[0..<8]), [5, 0, 0, 0, 0, 0, 0, 0])
    let lengthCRC = CRC32C.masked(CRC32C.checksum(Array(framed[0..<8])))
    XCTAssertEqual(Array(framed[8..<12]), withUnsafeBytes(of: lengthCRC.littleEndian) { Array($0) })
    XCTAssertEqual(Array(framed[12..<17]), payload)
    let dataCRC = CRC32C.masked(CRC32C.checksum(payload))
    XCTAssertEqual(Array(framed[17..<21]), withUnsafeBytes(of: dataCRC.littleEndian) { Array($0) })
  }

  func testMaskIsTensorFlows() {
    // mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8, on a value worked by hand.
    XCTAssertEqual(CRC32C.masked(0), 0xA282_EAD8)
    XCTAssertEqual(CRC32C.masked(0x0000_8000), 0xA282_EAD9)
    XCTAssertEqual(CRC32C.masked(1), 0xA284_EAD8)
  }

  func testWriteReadRoundTrip() throws {
    let dir = try temporaryDirectory(self)
    let path = dir + "/r.tfrecord"
    let w = try TFRecordWriter(path: path)
    let payloads: [[UInt8]] = [[], [1], Array(0..<255), [UInt8](repeating: 7, count: 100_000)]
    for p in payloads { try w.write(p) }
    try w.close()
    XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".tmp"))
    XCTAssertEqual(try TFRecord.readAll(path: path), payloads)
    let index = try TFRecord.index(path: path).records
    XCTAssertEqual(index.map(\.length), payloads.map(\.count))
    XCTAssertEqual(index.map(\.offset), [0, 16, 16 + 17, 16 + 17 + 271])
  }

  /// Flipping any single byte of a small file is always detected, with the record's offset.
  func testEveryByteFlipIsDetected() throws {
    let dir = try temporaryDirectory(self)
    let path = dir + "/r.tfrecord"
    let w = try TFRecordWriter(path: path)
    for p: [UInt8] in [[1, 2, 3], Array(repeating: 9, count: 40), [42]] { try w.write(p) }
    try w.close()
    let good = try Data(contentsOf: URL(fileURLWithPath: path))
    let offsets = try TFRecord.index(path: path).records.map(\.offset)
    for i in 0..<good.count {
      var bad = good
      bad[i] ^= 0x5A
      try bad.write(to: URL(fileURLWithPath: path))
      let recordStart = offsets.last { $0 <= i }!
      do {
        _ = try TFRecord.readAll(path: path)
        XCTFail("flip at \(i) not detected")
      } catch let e as DataPipelineError {
        switch e {
        case .dataCRCMismatch(_, let at), .lengthCRCMismatch(_, let at):
          XCTAssertEqual(at, recordStart, "flip at byte \(i)")
        case .truncatedRecord(_, let at):
          XCTAssertEqual(at, recordStart, "flip at byte \(i)")
        default: XCTFail("unexpected \(e)")
        }
        XCTAssertTrue(e.description.contains(path), e.description)
      }
    }
  }

  func testEveryTruncationIsDetectedOrEndsAtABoundary() throws {
    let dir = try temporaryDirectory(self)
    let path = dir + "/r.tfrecord"
    let w = try TFRecordWriter(path: path)
    for p: [UInt8] in [[1, 2, 3], [4, 5], [6]] { try w.write(p) }
    try w.close()
    let good = try Data(contentsOf: URL(fileURLWithPath: path))
    let boundaries = [0, 19, 19 + 18, 19 + 18 + 17]
    for n in 0..<good.count {
      try good.prefix(n).write(to: URL(fileURLWithPath: path))
      if let k = boundaries.firstIndex(of: n) {
        XCTAssertEqual(try TFRecord.readAll(path: path).count, k)
      } else {
        XCTAssertThrowsError(try TFRecord.index(path: path)) { e in
          guard case .truncatedRecord(_, let at)? = e as? DataPipelineError else { return XCTFail("\(e)") }
          XCTAssertEqual(at, boundaries.last { $0 <= n })
        }
        // Skipping mode keeps the complete records before the damage.
        let (records, corruptAt) = try TFRecord.index(path: path, stopAtCorruption: true)
        XCTAssertEqual(records.count, boundaries.lastIndex { $0 <= n }!, "n=\(n)")
        XCTAssertNotNil(corruptAt)
      }
    }
  }
}
