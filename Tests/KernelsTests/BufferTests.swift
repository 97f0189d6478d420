// FloatBuffer: zeroed, aligned, and (from 2 MiB on) advised as transparent huge pages.
import Foundation
import Kernels
import XCTest

final class BufferTests: XCTestCase {
  private var savedEnabled = HugePages.enabled
  override func setUp() { savedEnabled = HugePages.enabled }
  override func tearDown() { HugePages.enabled = savedEnabled }  // MNV2_HUGEPAGES=0 stays off for later tests

  /// Whether this kernel exposes transparent huge pages (the sysfs switch exists).
  var kernelHasTHP: Bool { FileManager.default.fileExists(atPath: "/sys/kernel/mm/transparent_hugepage/enabled") }

  /// A block of at least one huge page starts on a 2 MiB boundary, reserves whole huge pages (rounded
  /// up, never down), is zero throughout, and is advised wherever the kernel has THP (where sysfs is
  /// hidden, as in some build sandboxes, madvise may go either way and only the rest is checked). A
  /// smaller block keeps the 64-byte alignment, reserves exactly its bytes and is not advised.
  func testLargeBlocksAreHugePageAlignedRoundedUpAndAdvised() {
    HugePages.enabled = true
    let count = 3 * HugePages.pageBytes / 4 + 5  // floats: 6 MiB + 20 bytes
    let big = FloatBuffer(count: count)
    XCTAssertEqual(Int(bitPattern: big.base) % HugePages.pageBytes, 0, "2 MiB alignment")
    XCTAssertEqual(big.reservedBytes, 4 * HugePages.pageBytes, "6 MiB + 20 bytes rounded up to four huge pages")
    if kernelHasTHP { XCTAssertTrue(big.hugePagesAdvised, "madvise(MADV_HUGEPAGE) accepted where THP exists") }
    XCTAssertTrue((0..<count).allSatisfy { big[$0] == 0 }, "zero-initialised")
    let exact = FloatBuffer(count: HugePages.pageBytes / 4)  // exactly 2 MiB: one page, no rounding
    XCTAssertEqual(exact.reservedBytes, HugePages.pageBytes)
    let small = FloatBuffer(count: 1000)
    XCTAssertEqual(Int(bitPattern: small.base) % FloatBuffer.alignment, 0)
    XCTAssertEqual(small.reservedBytes, 4000)
    XCTAssertFalse(small.hugePagesAdvised, "below one huge page nothing is advised")
  }

  /// MNV2_HUGEPAGES=0 (HugePages.enabled = false): no advice, no rounding, the ordinary alignment, zeros.
  func testHugePagesCanBeSwitchedOff() {
    HugePages.enabled = false
    let b = FloatBuffer(count: HugePages.pageBytes + 3)
    XCTAssertFalse(b.hugePagesAdvised)
    XCTAssertEqual(b.reservedBytes, (HugePages.pageBytes + 3) * 4)
    XCTAssertEqual(Int(bitPattern: b.base) % FloatBuffer.alignment, 0)
    XCTAssertTrue((0..<b.count).allSatisfy { b[$0] == 0 })
  }

  /// The figure `bench train-one` prints (`huge_pages_kib`) is the AnonHugePages line of smaps_rollup.
  func testAnonHugePagesAreParsedFromSmaps() {
    let smaps = """
      55d0c0000000-7ffd1e9ff000 ---p 00000000 00:00 0                          [rollup]
      Rss:             1416364 kB
      AnonHugePages:   1386496 kB
      ShmemPmdMapped:        0 kB
      """
    XCTAssertEqual(HugePages.anonHugePagesKiB(smaps: smaps), 1_386_496)
    XCTAssertEqual(HugePages.anonHugePagesKiB(smaps: "AnonHugePages:        0 kB\n"), 0)
    XCTAssertNil(HugePages.anonHugePagesKiB(smaps: "Rss: 12 kB\nAnonymous: 4 kB\n"), "no such line")
    XCTAssertNil(HugePages.anonHugePagesKiB(smaps: "AnonHugePages: lots kB\n"), "not a number")
    // This process: a number where the kernel has smaps_rollup, nil where it has not.
    let hasRollup = FileManager.default.fileExists(atPath: "/proc/self/smaps_rollup")
    XCTAssertEqual(HugePages.residentKiB != nil, hasRollup)
  }
}
