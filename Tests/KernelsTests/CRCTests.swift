import XCTest
import Kernels

final class CRCTests: XCTestCase {
  func testKnownVectors() {
    // RFC 3720 (iSCSI) test vectors for CRC-32C.
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
    XCTAssertEqual(CRC32C.checksum(Array(UInt8(0)..<UInt8(32))), 0x46DD_794E)
    XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
  }
}
