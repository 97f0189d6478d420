// The generated vcvtne2ps2bf16 conversion loops against the Swift ones (`bf16Bits`): every word the
// same for normal values, infinities, NaNs, overflow and rounding ties, every layout and column tail,
// strides with gaps (never written), odd row counts, with and without a pending BN (+ ReLU6) applied
// first; float32 denormals become ±0 (the instruction's documented difference, BF16Conversion.swift).
import Foundation
import XCTest
import Common
import KernelsJIT
#if canImport(Glibc)
import Glibc
#endif

final class BF16ConversionTests: XCTestCase {
  private func jitAvailable() -> Bool {
    if BF16JIT.isAvailable { return true }
    XCTAssertFalse(CPUFlags.hostHas(BF16JIT.requiredFlags), "cpuinfo has the flags but the JIT says unavailable")
    print("BF16ConversionTests: this CPU lacks \(BF16JIT.requiredFlags.joined(separator: "/")): only the Swift conversions run")
    return false
  }

  /// Random floats of every magnitude plus the special values, at deterministic positions.
  private func values(_ count: Int, seed: UInt64) -> [Float] {
    var s = seed
    let specials: [Float] = [.infinity, -.infinity, .nan, -.nan, Float(bitPattern: 0x7F80_0001), 0, -0.0,
                             .greatestFiniteMagnitude, Float(bitPattern: 0x3F80_8000), Float(bitPattern: 0x3F81_8000),
                             Float(bitPattern: 0x3F80_7FFF), Float(bitPattern: 0x7F7F_FFFF), 1e-30, -3.5]
    return (0..<count).map { i in
      s = s &* 6364136223846793005 &+ 1442695040888963407
      if i % 7 == 3 { return specials[Int(s >> 33) % specials.count] }
      // A random normal bit pattern: exponent 1…254.
      let bits = UInt32(truncatingIfNeeded: s >> 32)
      let exponent = UInt32(1 + Int(s >> 20) % 254)
      return Float(bitPattern: (bits & 0x807F_FFFF) | exponent << 23)
    }
  }

  private func assertSameWords(_ got: [UInt16], _ want: [UInt16], _ what: String, line: UInt = #line) {
    XCTAssertEqual(got.count, want.count, what, line: line)
    for i in 0..<min(got.count, want.count) where got[i] != want[i] {
      XCTFail("\(what): word \(i) is 0x\(String(got[i], radix: 16)), want 0x\(String(want[i], radix: 16))", line: line)
      return
    }
  }

  func testRowsMatchSwift() {
    guard jitAvailable() else { return }
    for columns in [1, 2, 7, 15, 16, 17, 24, 31, 32, 33, 48, 63, 96, 144, 1001] {
      for (rows, gap) in [(1, 0), (5, 2), (3, 9)] {
        let srcStride = columns + gap, dstStride = (columns + 1) / 2 * 2 + 2 * gap
        let src = values(rows * srcStride, seed: UInt64(columns * 31 + rows))
        var generated = [UInt16](repeating: 0xABCD, count: rows * dstStride), swift = generated
        src.withUnsafeBufferPointer { p in
          convertRowsToBF16(&generated, stride: dstStride, p.baseAddress!, stride: srcStride, rows: rows, columns: columns,
                            generated: true)
          convertRowsToBF16(&swift, stride: dstStride, p.baseAddress!, stride: srcStride, rows: rows, columns: columns,
                            generated: false)
        }
        assertSameWords(generated, swift, "rows \(rows) × \(columns), gap \(gap)")
      }
    }
  }

  func testRowPairsMatchSwift() {
    guard jitAvailable() else { return }
    for columns in [1, 5, 16, 17, 24, 32, 40, 96, 144] {
      for (rows, gap) in [(1, 0), (2, 0), (7, 3), (256, 1)] {
        let stride = columns + gap
        let src = values(rows * stride, seed: UInt64(columns * 131 + rows))
        var generated = [UInt16](repeating: 0xABCD, count: (rows + 1) / 2 * columns * 2), swift = generated
        src.withUnsafeBufferPointer { p in
          interleaveRowPairsBF16(&generated, p.baseAddress!, stride: stride, rows: rows, columns: columns, generated: true)
          interleaveRowPairsBF16(&swift, p.baseAddress!, stride: stride, rows: rows, columns: columns, generated: false)
        }
        assertSameWords(generated, swift, "row pairs of \(rows) × \(columns), gap \(gap)")
      }
    }
  }

  /// packBF16B's row-major case: every panel width and tail, all rows or a prefix (odd and even).
  func testPackedPanelsMatchSwift() {
    guard jitAvailable() else { return }
    for (k, n) in [(1, 5), (2, 16), (9, 24), (256, 96), (255, 144), (6, 70), (4, 1001)] {
      for rows in Set([k, max(1, k - 1)]) {
        let src = values(k * n, seed: UInt64(k * 7 + n))
        let generated = BF16PackedMatrix(k: k, n: n), swift = BF16PackedMatrix(k: k, n: n)
        src.withUnsafeBufferPointer { p in
          packBF16B(generated, p.baseAddress!, transposed: false, rows: rows, generated: true)
          packBF16B(swift, p.baseAddress!, transposed: false, rows: rows, generated: false)
        }
        let words = generated.kPairs * 2 * ((n + 15) / 16 * 16)
        assertSameWords(Array(UnsafeBufferPointer(start: generated.storage, count: words)),
                        Array(UnsafeBufferPointer(start: swift.storage, count: words)), "pack \(rows) of \(k) × \(n)")
      }
    }
  }

  /// Per-column scale and shift for `columns` columns (scale of both signs, large enough that ReLU6
  /// clamps at both ends), as the BN of the layer that made the source.
  private func activation(columns: Int, relu6: Bool, _ storage: inout [Float]) -> BF16InputActivation {
    storage = (0..<(2 * columns)).map { i in i < columns ? Float(i % 5) - 1.5 : Float(i % 3) - 0.75 }
    return storage.withUnsafeBufferPointer { BF16InputActivation(scale: $0.baseAddress!, shift: $0.baseAddress! + columns, relu6: relu6) }
  }

  func testActivatedConversionsMatchSwift() {
    guard jitAvailable() else { return }
    for columns in [3, 16, 24, 40, 96] { for relu6 in [false, true] {
      var params = [Float]()
      let act = activation(columns: columns, relu6: relu6, &params)
      let rows = 7, stride = columns + 1
      let src = values(rows * stride, seed: UInt64(columns * 3 + (relu6 ? 1 : 0))).map { $0.isFinite && abs($0) > 1e4 ? $0 * 1e-30 : $0 }
      params.withUnsafeBufferPointer { _ in
        src.withUnsafeBufferPointer { p in
          let dstStride = (columns + 1) / 2 * 2 + 2
          var generated = [UInt16](repeating: 0xABCD, count: rows * dstStride), swift = generated
          convertRowsToBF16(&generated, stride: dstStride, p.baseAddress!, stride: stride, rows: rows, columns: columns,
                            activation: act, generated: true)
          convertRowsToBF16(&swift, stride: dstStride, p.baseAddress!, stride: stride, rows: rows, columns: columns,
                            activation: act, generated: false)
          assertSameWords(generated, swift, "activated rows, \(columns) columns, relu6 \(relu6)")
          var pairsG = [UInt16](repeating: 0xABCD, count: (rows + 1) / 2 * columns * 2), pairsS = pairsG
          interleaveRowPairsBF16(&pairsG, p.baseAddress!, stride: stride, rows: rows, columns: columns, activation: act,
                                 generated: true)
          interleaveRowPairsBF16(&pairsS, p.baseAddress!, stride: stride, rows: rows, columns: columns, activation: act,
                                 generated: false)
          assertSameWords(pairsG, pairsS, "activated row pairs, \(columns) columns, relu6 \(relu6)")
          // The activation took effect: with ReLU6 no word is a value outside [0, 6] (NaN aside).
          if relu6 {
            XCTAssertTrue(generated.enumerated().allSatisfy { i, w in
              i % dstStride >= columns || bf16Value(w).isNaN || (0...6).contains(bf16Value(w))
            }, "ReLU6 not applied, \(columns) columns")
          }
        }
      }
    } }
  }

  /// Denormal inputs: ±0 from the instruction, a bf16 denormal (or ±0 after rounding) from bf16Bits.
  func testDenormalsBecomeZero() {
    guard jitAvailable() else { return }
    let src: [Float] = [Float(bitPattern: 0x0040_0000), -Float(bitPattern: 0x0040_0000), .leastNonzeroMagnitude,
                        Float(bitPattern: 0x007F_FFFF), .leastNormalMagnitude, 1]
    var out = [UInt16](repeating: 0xFFFF, count: src.count)
    src.withUnsafeBufferPointer {
      convertRowsToBF16(&out, stride: src.count, $0.baseAddress!, stride: src.count, rows: 1, columns: src.count, generated: true)
    }
    XCTAssertEqual(out, [0x0000, 0x8000, 0x0000, 0x0000, 0x0080, 0x3F80])
    XCTAssertEqual(bf16Bits(src[0]), 0x0040, "bf16Bits keeps a denormal")
  }

  /// MNV2_PERF_MAP=1: a newly generated loop is named in /tmp/perf-<pid>.map for perf.
  func testPerfMapNamesGeneratedCode() throws {
    guard jitAvailable() else { return }
    let path = "/tmp/perf-\(getpid()).map"
    setenv("MNV2_PERF_MAP", "1", 1)
    defer { unsetenv("MNV2_PERF_MAP") }
    let src = [Float](repeating: 2, count: 200)
    var out = [UInt16](repeating: 0, count: 200)
    // A column count no other test uses, so this call generates a loop.
    src.withUnsafeBufferPointer { convertRowsToBF16(&out, stride: 78, $0.baseAddress!, stride: 77, rows: 2, columns: 77) }
    let map = try String(contentsOfFile: path, encoding: .utf8)
    let line = try XCTUnwrap(map.split(separator: "\n").first { $0.contains("columns: 77") }, "no map line for the loop")
    let fields = line.split(separator: " ")
    XCTAssertNotNil(UInt(fields[0], radix: 16), "address field: \(line)")
    XCTAssertGreaterThan(UInt(fields[1], radix: 16) ?? 0, 0, "size field: \(line)")
    XCTAssertEqual(out[0], 0x4000)
  }

  /// One loop per shape, kept: converting the same shape again generates nothing.
  func testLoopsAreCached() {
    guard jitAvailable() else { return }
    let src = [Float](repeating: 1.5, count: 64)
    var out = [UInt16](repeating: 0, count: 64)
    src.withUnsafeBufferPointer { convertRowsToBF16(&out, stride: 22, $0.baseAddress!, stride: 21, rows: 2, columns: 21) }
    let count = BF16Conversion.cachedCount
    src.withUnsafeBufferPointer { convertRowsToBF16(&out, stride: 22, $0.baseAddress!, stride: 21, rows: 3, columns: 21) }
    XCTAssertEqual(BF16Conversion.cachedCount, count)
    XCTAssertEqual(out[0], 0x3FC0)
  }
}
