// FloatBuffer: zeroed, aligned, and (from 2 MiB on) advised as transparent huge pages.
import Foundation
import Kernels
import XCTest

final class BufferTests: XCTestCase {
  override func tearDown() { HugePages.enabled = true }

  /// Whether this kernel has transparent huge pages at all (the sysfs switch exists).
  var kernelHasTHP: Bool { FileManager.default.fileExists(atPath: "/sys/kernel/mm/transparent_hugepage/enabled") }

  /// A block of at least one huge page starts on a 2 MiB boundary, is zero throughout, and the
  /// kernel took the advice wherever it has THP; a smaller block keeps the 64-byte alignment and
  /// is not advised. Writing to the last float stays inside the block (the rounding is up, not down).
  func testLargeBlocksAreHugePageAlignedAndAdvised() {
    HugePages.enabled = true
    let count = 3 * HugePages.pageBytes / 4 + 5  // floats: 6 MiB + 20 bytes, rounded up to four pages
    let big = FloatBuffer(count: count)
    XCTAssertEqual(Int(bitPattern: big.base) % HugePages.pageBytes, 0, "2 MiB alignment")
    XCTAssertEqual(big.hugePagesAdvised, kernelHasTHP, "madvise(MADV_HUGEPAGE) accepted where THP exists")
    XCTAssertTrue((0..<count).allSatisfy { big[$0] == 0 }, "zero-initialised")
    big[count - 1] = 7
    XCTAssertEqual(big[count - 1], 7)
    let small = FloatBuffer(count: 1000)
    XCTAssertEqual(Int(bitPattern: small.base) % FloatBuffer.alignment, 0)
    XCTAssertFalse(small.hugePagesAdvised, "below one huge page nothing is advised")
  }

  /// MNV2_HUGEPAGES=0 (HugePages.enabled = false): no advice, the ordinary alignment, same contents.
  func testHugePagesCanBeSwitchedOff() {
    HugePages.enabled = false
    let b = FloatBuffer(count: HugePages.pageBytes)
    XCTAssertFalse(b.hugePagesAdvised)
    XCTAssertEqual(Int(bitPattern: b.base) % FloatBuffer.alignment, 0)
    XCTAssertTrue((0..<b.count).allSatisfy { b[$0] == 0 })
  }

  /// The resident huge-page figure `bench train-one` prints is read from this process's smaps.
  func testResidentHugePagesAreReadFromSmaps() throws {
    guard FileManager.default.fileExists(atPath: "/proc/self/smaps_rollup") else {
      XCTAssertNil(HugePages.residentKiB)
      return
    }
    let kib = try XCTUnwrap(HugePages.residentKiB, "AnonHugePages parsed from /proc/self/smaps_rollup")
    XCTAssertGreaterThanOrEqual(kib, 0)
  }
}
