import XCTest
import Common

final class CRCTests: XCTestCase {
  func testKnownVectors() {
    // RFC 3720 (iSCSI) test vectors for CRC-32C.
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
    XCTAssertEqual(CRC32C.checksum(Array(UInt8(0)..<UInt8(32))), 0x46DD_794E)
    XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
  }
}

final class FNV1aTests: XCTestCase {
  /// Published FNV-1a 64-bit test vectors (empty input is the offset basis).
  func testKnownVectors() {
    XCTAssertEqual(fnv1a([UInt8]()), 0xcbf2_9ce4_8422_2325)
    XCTAssertEqual(fnv1a("a".utf8), 0xaf63_dc4c_8601_ec8c)
    XCTAssertEqual(fnv1a("foobar".utf8), 0x85944171f73967e8)
    // Same bytes, same hash, whatever the container.
    let bytes: [UInt8] = Array("foobar".utf8)
    XCTAssertEqual(bytes.withUnsafeBytes { fnv1a($0) }, fnv1a("foobar".utf8))
  }
}
