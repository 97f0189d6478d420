// The generated bf16 GEMM against a naive double-precision product of the same bf16 values.
// Products of bf16 values are exact in fp32 and double, so the only difference is the fp32 sum
// order: the tolerance is relative to Σ|a·b| (+|c| when accumulating).
import XCTest
import Common
#if canImport(Glibc)
import Glibc
#endif
import KernelsJIT

final class BF16GEMMTests: XCTestCase {
  /// On a CPU without AVX512-BF16 the JIT must say so (the kernels then take the emulation path,
  /// checked in KernelsTests); never a silent skip.
  private func jitAvailable() -> Bool {
    if BF16JIT.isAvailable { return true }
    let flags = procLines("/proc/cpuinfo").joined(separator: "\n")
    XCTAssertFalse(BF16JIT.requiredFlags.allSatisfy { flags.contains($0) }, "cpuinfo has the flags but the JIT says unavailable")
    print("BF16GEMMTests: this CPU lacks \(BF16JIT.requiredFlags.joined(separator: "/")): JIT reported unavailable, bf16 runs the emulation path")
    return false
  }

  private struct RNG {
    var s: UInt64
    mutating func next() -> Float {
      s = s &* 6364136223846793005 &+ 1442695040888963407
      return Float(Int64(bitPattern: s >> 11) % 2001 - 1000) / 250  // [−4, 4]
    }
  }

  /// One shape: A [m, k] with row stride lda (≥ k padded), C [m, n] with row stride ldc.
  private func check(m: Int, k: Int, n: Int, accumulate: Bool, extraLDA: Int = 0, extraLDC: Int = 0,
                     line: UInt = #line) {
    var rng = RNG(s: UInt64(m * 1_000_003 + k * 1009 + n * 7 + (accumulate ? 1 : 0)))
    let lda = (k + 1) / 2 * 2 + extraLDA, ldc = n + extraLDC
    let aF = (0..<(m * k)).map { _ in rng.next() }
    let bF = (0..<(k * n)).map { _ in rng.next() }
    let c0 = (0..<(m * ldc)).map { _ in rng.next() }
    var a = [UInt16](repeating: 0xFFFF, count: max(1, m * lda))  // garbage beyond the pad column
    aF.withUnsafeBufferPointer { convertRowsToBF16(&a, stride: lda, $0.baseAddress!, stride: k, rows: m, columns: k) }
    let b = BF16PackedMatrix(k: k, n: n)
    bF.withUnsafeBufferPointer { packBF16B(b, $0.baseAddress!, transposed: false) }
    var c = c0
    a.withUnsafeBufferPointer { ap in
      bf16Gemm(c: &c, ldc: ldc, a: ap.baseAddress!, lda: lda, b: b, rows: m, accumulate: accumulate)
    }
    var worst = 0.0
    for i in 0..<m { for j in 0..<ldc {
      let got = Double(c[i * ldc + j])
      if j >= n {  // the stride gap is never written
        XCTAssertEqual(got, Double(c0[i * ldc + j]), "m\(m) k\(k) n\(n): gap written", line: line); continue
      }
      var ref = accumulate ? Double(c0[i * ldc + j]) : 0, mag = abs(ref)
      for kk in 0..<k {
        let p = Double(roundedToBF16(aF[i * k + kk])) * Double(roundedToBF16(bF[kk * n + j]))
        ref += p; mag += abs(p)
      }
      let err = abs(got - ref) / max(mag, 1e-30)
      worst = max(worst, err)
    } }
    let tolerance = Double(k + 2) * 0x1p-23
    XCTAssertLessThanOrEqual(worst, tolerance, "m\(m) k\(k) n\(n) beta \(accumulate ? 1 : 0)", line: line)
  }

  func testShapeGrid() {
    guard jitAvailable() else { return }
    let mr = BF16Microkernel.tileRows(vectors: BF16Microkernel.maxVectors)
    for m in [1, 5, mr, mr + 3, 100] { for k in [2, 16, 30, 96] { for n in [1, 15, 16, 17, 33, 96, 1001] {
      for accumulate in [false, true] { check(m: m, k: k, n: n, accumulate: accumulate) }
    } } }
  }

  /// Every tile height of every panel width (the row tails), odd K (zero pad), strides with gaps.
  func testTileRowsOddKAndStrides() {
    guard jitAvailable() else { return }
    for nv in 1...BF16Microkernel.maxVectors {
      let n = 16 * nv - 3
      for m in 1...(BF16Microkernel.tileRows(vectors: nv) + 1) { check(m: m, k: 6, n: n, accumulate: m % 2 == 0) }
    }
    for k in [1, 7, 33] { check(m: 9, k: k, n: 40, accumulate: false) }
    check(m: 13, k: 20, n: 70, accumulate: true, extraLDA: 6, extraLDC: 5)
    check(m: 3, k: 0, n: 20, accumulate: false)
    // Several of the driver's 168-row blocks, the last one with a row tail.
    check(m: 400, k: 30, n: 100, accumulate: true)
    check(m: 337, k: 18, n: 17, accumulate: false)
  }

  /// A given as row pairs of a tall [K, M] matrix (the weight gradient's xᵀ): c = srcᵀ · b.
  func testRowPairsGemmMatchesNaive() {
    guard jitAvailable() else { return }
    for (k, m, n, kUsed) in [(6, 5, 17, 6), (256, 40, 70, 256), (256, 24, 16, 131), (9, 100, 33, 9), (20, 200, 50, 19)] {
      var rng = RNG(s: UInt64(k * 31 + m * 7 + n))
      let src = (0..<(k * m)).map { _ in rng.next() }   // [K, M]
      let bF = (0..<(k * n)).map { _ in rng.next() }    // [K, N]
      let c0 = (0..<(m * n)).map { _ in rng.next() }
      var pairs = [UInt16](repeating: 0xFFFF, count: (k + 1) / 2 * m * 2)
      src.withUnsafeBufferPointer { interleaveRowPairsBF16(&pairs, $0.baseAddress!, stride: m, rows: kUsed, columns: m) }
      let b = BF16PackedMatrix(k: k, n: n)
      bF.withUnsafeBufferPointer { packBF16B(b, $0.baseAddress!, transposed: false, rows: kUsed) }
      var c = c0
      pairs.withUnsafeBufferPointer {
        bf16GemmRowPairs(c: &c, ldc: n, pairs: $0.baseAddress!, b: b, rows: m, accumulate: true, kPairs: (kUsed + 1) / 2)
      }
      var worst = 0.0
      for i in 0..<m { for j in 0..<n {
        var ref = Double(c0[i * n + j]), mag = abs(ref)
        for kk in 0..<kUsed {
          let p = Double(roundedToBF16(src[kk * m + i])) * Double(roundedToBF16(bF[kk * n + j]))
          ref += p; mag += abs(p)
        }
        worst = max(worst, abs(Double(c[i * n + j]) - ref) / mag)
      } }
      XCTAssertLessThanOrEqual(worst, Double(kUsed + 2) * 0x1p-23, "row pairs k\(k) (\(kUsed) used) m\(m) n\(n)")
    }
  }

  func testPackedLayout() {
    let (k, n) = (5, 70)
    let w = (0..<(k * n)).map { Float($0) * 0.25 }
    let b = BF16PackedMatrix(k: k, n: n), t = BF16PackedMatrix(k: k, n: n)
    w.withUnsafeBufferPointer { packBF16B(b, $0.baseAddress!, transposed: false) }
    // The same matrix stored as [N, K], read transposed.
    let wT = (0..<(n * k)).map { i in w[(i % k) * n + i / k] }
    wT.withUnsafeBufferPointer { packBF16B(t, $0.baseAddress!, transposed: true) }
    for kk in 0..<k { for j in 0..<n {
      XCTAssertEqual(b.value(kk, j), roundedToBF16(w[kk * n + j]))
      XCTAssertEqual(t.value(kk, j), roundedToBF16(w[kk * n + j]))
    } }
    // Panel 0: 64 columns, [k-pair][column][pair]; element (3, 5) sits in pair 1, column 5, slot 1.
    XCTAssertEqual(b.storage[1 * 64 * 2 + 5 * 2 + 1], bf16Bits(w[3 * n + 5]))
    // Panel 1 holds columns 64…69 in a 16-wide panel padded with zeros, and the odd K a zero row.
    let panel1 = b.storage + 3 * 2 * 64
    XCTAssertEqual(panel1[2 * 16 * 2 + 0 * 2 + 0], bf16Bits(w[4 * n + 64]))
    XCTAssertEqual(panel1[2 * 16 * 2 + 0 * 2 + 1], 0)
    XCTAssertEqual(panel1[0 * 16 * 2 + 6 * 2], 0)
  }

  func testConvertRowsRoundsToNearestEvenAndKeepsNaN() {
    let src: [Float] = [1.0, Float(bitPattern: 0x3F80_8000), Float(bitPattern: 0x3F81_8000), -.infinity, .nan]
    var dst = [UInt16](repeating: 0xFFFF, count: 6)
    src.withUnsafeBufferPointer { convertRowsToBF16(&dst, stride: 6, $0.baseAddress!, stride: 5, rows: 1, columns: 5) }
    for i in 0..<4 { XCTAssertEqual(dst[i], bf16Bits(src[i])) }
    XCTAssertTrue(bf16Value(dst[4]).isNaN)
    XCTAssertEqual(dst[5], 0, "odd K: zero partner of the last pair")
  }

  /// W^X: the installed kernel's mapping is r-x (never writable) in /proc/self/maps.
  func testGeneratedCodeIsReadExecuteOnly() {
    guard jitAvailable() else { return }
    let f = BF16Microkernel.function(BF16MicrokernelShape(rows: 2, vectors: 1, tailLanes: 3, accumulate: false, lda: 8, ldc: 12))
    let address = UInt(bitPattern: unsafeBitCast(f, to: UnsafeRawPointer.self))
    let line = procLines("/proc/self/maps").first { l in
      let range = l.split(separator: " ")[0].split(separator: "-").compactMap { UInt($0, radix: 16) }
      return range.count == 2 && range[0] <= address && address < range[1]
    }
    XCTAssertEqual(line.map { String($0.split(separator: " ")[1]) }, "r-xp")
  }
}

/// The lines of a /proc file (read with getline: procfs files report size 0).
func procLines(_ path: String) -> [String] {
  guard let f = fopen(path, "r") else { return [] }
  defer { fclose(f) }
  var out: [String] = []
  var line: UnsafeMutablePointer<CChar>? = nil
  var capacity = 0
  defer { free(line) }
  while getline(&line, &capacity, f) > 0 { out.append(String(cString: line!).trimmingCharacters(in: .newlines)) }
  return out
}
