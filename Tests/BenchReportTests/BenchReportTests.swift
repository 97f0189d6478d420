// The report arithmetic of `make bench`: medians, which PyTorch variant a row is compared with,
// ratios, GFLOP/s and roofline, output parsing and the CPU header.
import BenchReport
import XCTest

final class BenchReportTests: XCTestCase {
  func testMedianOddEvenAndEmpty() {
    XCTAssertEqual(BenchMath.median([3, 1, 2]), 2)
    XCTAssertEqual(BenchMath.median([4, 1, 3, 2]), 2.5)
    XCTAssertEqual(BenchMath.median([7]), 7)
    XCTAssertTrue(BenchMath.median([]).isNaN)
  }

  /// fp32 rows are compared with the faster of eager and compile, bf16 rows with the faster of
  /// bf16 and bf16+compile — never across classes, however fast the other class is.
  func testBestVariantStaysWithinPrecisionClass() {
    let medians: [TorchVariant: Double] = [.eager: 16, .compile: 22.5, .bf16: 24.3, .bf16Compile: 30]
    XCTAssertEqual(BenchMath.best(of: medians, for: .fp32)?.variant, .compile)
    XCTAssertEqual(BenchMath.best(of: medians, for: .fp32)?.imagesPerSecond, 22.5)
    XCTAssertEqual(BenchMath.best(of: medians, for: .bf16)?.variant, .bf16Compile)
    // A variant that failed (absent) or produced no number (NaN) is not a candidate.
    XCTAssertEqual(BenchMath.best(of: [.eager: 16, .compile: .nan, .bf16: 24.3], for: .fp32)?.variant, .eager)
    XCTAssertNil(BenchMath.best(of: [.eager: 16], for: .bf16))
  }

  func testVariantFlagsAndClasses() {
    XCTAssertEqual(TorchVariant.eager.flags, ["--channels-last"])
    XCTAssertEqual(TorchVariant.bf16Compile.flags, ["--channels-last", "--bf16", "--compile"])
    XCTAssertEqual(TorchVariant.allCases.filter { $0.precisionClass == .bf16 }, [.bf16, .bf16Compile])
    XCTAssertEqual(TorchVariant.allCases.filter(\.compiles), [.compile, .bf16Compile])
  }

  /// The peak is the best round, so a disturbed round lowers nothing and raises no roofline.
  func testPeakIsTheBestRound() {
    XCTAssertEqual(BenchMath.peak(ofRounds: [458.1, 444.2, 372.1]), 458.1)
    XCTAssertEqual(BenchMath.peak(ofRounds: [491]), 491)
    XCTAssertTrue(BenchMath.peak(ofRounds: []).isNaN)
    XCTAssertLessThan(BenchMath.rooflinePercent(gflops: 218.5, peakGflops: BenchMath.peak(ofRounds: [458.1, 444.2, 372.1])),
                      BenchMath.rooflinePercent(gflops: 218.5, peakGflops: BenchMath.median([458.1, 444.2, 372.1])))
  }

  /// 1.0/224: 6 × 300.78 M FLOPs per image at 37 img/s is 66.8 GFLOP/s, 32 % of a 208 GFLOP/s peak
  /// (the figures of issue 12).
  func testGflopsAndRoofline() {
    let g = BenchMath.gflops(flopsPerImage: 6 * 300_775_552, imagesPerSecond: 37)
    XCTAssertEqual(g, 66.77, accuracy: 0.01)
    XCTAssertEqual(BenchMath.rooflinePercent(gflops: g, peakGflops: 208), 32.1, accuracy: 0.05)
    XCTAssertEqual(BenchMath.gemmFLOPs(m: 2048, n: 1024, k: 512), 2_147_483_648)
    XCTAssertEqual(BenchMath.ratio(ours: 45, baseline: 22.5), 2)
  }

  func testValueParsingTakesTheLastMatchingLine() {
    let out = "torch 2.5 threads=2\nimages_per_s 12.5\nnote: x\nimages_per_s 31.20\npeak_rss_kib 81920\n"
    XCTAssertEqual(BenchMath.value("images_per_s", in: out), 31.2)
    XCTAssertEqual(BenchMath.value("peak_rss_kib", in: out), 81920)
    XCTAssertNil(BenchMath.value("images_per", in: out))  // whole keys only
    XCTAssertNil(BenchMath.value("sgemm_gflops", in: out))
  }

  func testCPUDescriptionFromCpuinfo() {
    let cpuinfo = """
      processor\t: 0
      model name\t: AMD EPYC 9R14 96-Core Processor
      flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni
      processor\t: 1
      model name\t: other
      flags\t\t: fpu
      """
    let cpu = CPUDescription(cpuinfo: cpuinfo)
    XCTAssertEqual(cpu.model, "AMD EPYC 9R14 96-Core Processor")
    // Listed in the header's fixed order, not /proc's.
    XCTAssertEqual(cpu.flags, ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"])
    XCTAssertTrue(cpu.hasBF16)
    XCTAssertFalse(CPUDescription(cpuinfo: "flags : avx2 fma").hasBF16)
    XCTAssertEqual(CPUDescription(cpuinfo: "").model, "unknown CPU")
  }
}
