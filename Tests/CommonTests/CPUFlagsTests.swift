import XCTest
import Common

final class CPUFlagsTests: XCTestCase {
  func testParsesTheFirstFlagsLineOnly() {
    let text = """
      processor\t: 0
      model name\t: AMD EPYC
      flags\t\t: fpu sse2 avx2 avx512f avx512_bf16
      bugs\t\t: sysret_ss_attrs
      processor\t: 1
      flags\t\t: fpu mmx
      """
    let flags = CPUFlags.parse(cpuinfo: text)
    XCTAssertEqual(flags, ["fpu", "sse2", "avx2", "avx512f", "avx512_bf16"])
    XCTAssertFalse(flags.contains("sysret_ss_attrs"))  // the bugs line is not flags
  }

  func testTextWithoutFlagsGivesNone() {
    XCTAssertEqual(CPUFlags.parse(cpuinfo: ""), [])
    XCTAssertEqual(CPUFlags.parse(cpuinfo: "Features\t: fp asimd\n"), [])  // arm64 spells it differently
  }

  func testHostHasAgreesWithHost() {
    XCTAssertTrue(CPUFlags.hostHas([]))
    XCTAssertFalse(CPUFlags.hostHas(["no_such_flag_anywhere"]))
    for f in CPUFlags.host.prefix(3) { XCTAssertTrue(CPUFlags.hostHas([f])) }
  }
}

final class BFloat16Tests: XCTestCase {
  /// Round to nearest even written out by cases: the truncated value, plus one unit when the dropped
  /// half is above a half unit or exactly half with an odd kept part; NaN becomes a quiet NaN.
  func naiveBits(_ b: UInt32) -> UInt16 {
    if b & 0x7F80_0000 == 0x7F80_0000 && b & 0x007F_FFFF != 0 { return UInt16(b >> 16) | 0x0040 }
    let kept = b >> 16, dropped = b & 0xFFFF
    let up = dropped > 0x8000 || (dropped == 0x8000 && kept & 1 == 1)
    return UInt16(truncatingIfNeeded: up ? kept + 1 : kept)
  }

  func testBranchFreeRoundingMatchesTheCaseAnalysis() {
    var patterns: [UInt32] = [0, 0x8000_0000, 0x3F80_0000, 0x3F80_8000, 0x3F81_8000, 0x3F80_8001, 0x7F7F_FFFF,
                              0x7F80_0000, 0xFF80_0000, 0x7F80_0001, 0x7FC0_0000, 0xFFFF_FFFF, 0x0000_8000]
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    for _ in 0..<200_000 {
      state = state &* 6364136223846793005 &+ 1442695040888963407
      patterns.append(UInt32(truncatingIfNeeded: state >> 32))
    }
    for b in patterns {
      XCTAssertEqual(bf16Bits(bitPattern: b), naiveBits(b), "pattern \(String(b, radix: 16))")
      XCTAssertEqual(bf16Bits(Float(bitPattern: b)), naiveBits(b))
    }
    XCTAssertEqual(bf16Bits(Float.greatestFiniteMagnitude), 0x7F80)  // past the largest bf16: +infinity
  }
}
