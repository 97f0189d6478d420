// bf16 rounding (Kernels/BF16.swift) and the kernels on bf16 operands. The rounding is checked
// against an independent definition (the nearest of the two neighbouring bf16 values, in double,
// ties to the even one); the kernels on rounded operands against the naive loops on the same rounded
// operands in double, i.e. exact products with float32 accumulation as the only error.
import Common
import Kernels
import XCTest

final class BF16Tests: XCTestCase {
  /// The bf16 value nearest to a finite x, computed from the two bf16 neighbours in double.
  func nearestBF16(_ x: Float) -> Float {
    let down = Float(bitPattern: x.bitPattern & 0xFFFF_0000)  // toward zero
    let upBits = (x.bitPattern & 0xFFFF_0000) &+ 0x1_0000       // next bf16 away from zero (may be ±inf)
    let up = Float(bitPattern: upBits)
    if down == x { return x }
    let dDown = abs(Double(x) - Double(down))
    // Past the largest finite bf16 the "up" neighbour is infinity: the halfway point is still
    // down + half an ulp, so measure against the finite value it would have had.
    let ulp = Double(down.magnitude.binade) * 0x1p-7  // bf16 keeps 7 bits after the leading one
    let dUp = up.isInfinite ? ulp - dDown : abs(Double(up) - Double(x))
    if dDown < dUp { return down }
    if dUp < dDown { return up }
    return (down.bitPattern >> 16) & 1 == 0 ? down : up
  }

  func testRoundingIsNearestTiesToEven() {
    var rng = RandomState(seed: 5)
    var checked = 0
    for _ in 0..<200_000 {
      let x = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))
      if x.isNaN || x.isInfinite { continue }
      let got = roundedToBF16(x), want = nearestBF16(x)
      XCTAssertEqual(got.bitPattern, want.bitPattern, "\(x) (bits \(String(x.bitPattern, radix: 16)))")
      if got.bitPattern != want.bitPattern { return }
      checked += 1
    }
    XCTAssertGreaterThan(checked, 190_000)
    // Exact ties, both ways: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 (even: 1); 1 + 3·2^-8 is
    // halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
    XCTAssertEqual(roundedToBF16(1 + 0x1p-8), 1)
    XCTAssertEqual(roundedToBF16(1 + 3 * 0x1p-8), 1 + 0x1p-6)
    XCTAssertEqual(roundedToBF16(-(1 + 3 * 0x1p-8)), -(1 + 0x1p-6))
    XCTAssertEqual(roundedToBF16(1 + 0x1p-8 + 0x1p-20), 1 + 0x1p-7)  // just above the tie
    // Specials: infinities and signed zero kept, NaN stays NaN (never becomes infinity), overflow.
    XCTAssertEqual(roundedToBF16(.infinity), .infinity)
    XCTAssertEqual(roundedToBF16(-.infinity), -.infinity)
    XCTAssertEqual(roundedToBF16(-0.0).bitPattern, (-0.0 as Float).bitPattern)
    XCTAssertTrue(roundedToBF16(.nan).isNaN)
    XCTAssertTrue(roundedToBF16(Float(bitPattern: 0x7FFF_FFFF)).isNaN)
    XCTAssertTrue(roundedToBF16(Float(bitPattern: 0x7F80_0001)).isNaN)  // signalling NaN, low bits only
    XCTAssertEqual(roundedToBF16(.greatestFiniteMagnitude), .infinity)
    XCTAssertEqual(bf16Bits(1), 0x3F80)
    XCTAssertEqual(bf16Value(0xC040), -3)
  }

  /// The threaded, 16-wide pass gives the scalar function's bits on every pattern, tails included.
  func testVectorPassMatchesScalar() {
    var rng = RandomState(seed: 6)
    let n = 100_003
    let src = FloatBuffer(count: n)
    for i in 0..<n { src[i] = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
    for (i, special) in [Float.nan, .infinity, -.infinity, 0, -0.0, .greatestFiniteMagnitude,
                         Float(bitPattern: 0x7F80_0001), Float.leastNonzeroMagnitude].enumerated() {
      src[i * 17] = special
    }
    for threads in [1, 2, 3] {
      Compute.setThreads(threads)
      defer { Compute.setThreads(1) }
      let dst = FloatBuffer(count: n)
      roundToBF16(dst.base, src.base, count: n)
      var mismatches = 0
      for i in 0..<n {
        let want = roundedToBF16(src[i])
        if want.isNaN ? !dst[i].isNaN : dst[i].bitPattern != want.bitPattern { mismatches += 1 }
        if dst[i].bitPattern & 0xFFFF != 0 && !dst[i].isNaN { mismatches += 1 }
      }
      XCTAssertEqual(mismatches, 0, "threads \(threads)")
    }
    // In place too.
    let copy = FloatBuffer(count: n)
    copy.copy(from: src.array)
    roundToBF16(copy.base, copy.base, count: n)
    for i in stride(from: 1, to: n, by: 997) where !src[i].isNaN {
      XCTAssertEqual(copy[i].bitPattern, roundedToBF16(src[i]).bitPattern)
    }
  }

  func testPackUnpackRoundTrip() {
    let x = randomBuffer(1000, seed: 7, scale: 50)
    var bits = [UInt16](repeating: 0, count: 1000)
    let back = FloatBuffer(count: 1000)
    bits.withUnsafeMutableBufferPointer { packBF16($0.baseAddress!, x.base, count: 1000) }
    bits.withUnsafeBufferPointer { unpackBF16(back.base, $0.baseAddress!, count: 1000) }
    for i in 0..<1000 { XCTAssertEqual(back[i], roundedToBF16(x[i])) }
  }

  /// A copy of `b` rounded to bf16.
  func rounded(_ b: FloatBuffer) -> FloatBuffer {
    let r = FloatBuffer(count: b.count)
    roundToBF16(r.base, b.base, count: b.count)
    return r
  }

  /// The largest |a − b| over max |b|.
  func relDiff(_ a: FloatBuffer, _ b: FloatBuffer) -> Float {
    var d: Float = 0, m: Float = 0
    for i in 0..<a.count { d = max(d, abs(a[i] - b[i])); m = max(m, abs(b[i])) }
    return d / m
  }

  /// Fast kernels on bf16 operands against the naive double loops on the same operands: float32
  /// accumulation of exact products, so the fp32 tests' tight bounds hold. The unrounded fp32 answer
  /// must be visibly different (≥ 1e-3 relative, bf16 steps are 2^-8), or the rounding did nothing.
  func testKernelsOnBF16OperandsMatchNaive() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    let scratch = Scratch()
    // 1×1 (GEMM), forward and both gradients.
    let (m, ci, co) = (300, 48, 40)
    let x = randomBuffer(m * ci, seed: 31), w = randomBuffer(ci * co, seed: 32), dy = randomBuffer(m * co, seed: 33)
    let (xb, wb, dyb) = (rounded(x), rounded(w), rounded(dy))
    let y = FloatBuffer(count: m * co), yRef = FloatBuffer(count: m * co), yFP32 = FloatBuffer(count: m * co)
    pointwiseForward(y: y.base, x: xb.base, w: wb.base, rows: m, inChannels: ci, outChannels: co)
    pointwiseForwardNaive(y: yRef.base, x: xb.base, w: wb.base, rows: m, inChannels: ci, outChannels: co)
    pointwiseForwardNaive(y: yFP32.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
    assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, "bf16 1x1 forward")
    XCTAssertGreaterThan(relDiff(y, yFP32), 1e-3, "bf16 1x1 forward equals the fp32 one: operands not rounded?")
    let dx = FloatBuffer(count: m * ci), dxRef = FloatBuffer(count: m * ci)
    let dw = FloatBuffer(count: ci * co), dwRef = FloatBuffer(count: ci * co)
    pointwiseBackward(dx: dx.base, dw: dw.base, dy: dyb.base, x: xb.base, w: wb.base, rows: m, inChannels: ci,
                      outChannels: co, scratch: scratch)
    pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dyb.base, x: xb.base, w: wb.base, rows: m,
                           inChannels: ci, outChannels: co)
    assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, "bf16 1x1 dx")
    assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, "bf16 1x1 dw")

    // The stem (direct SIMD16 path: 16 outputs) and the im2col path (24 outputs).
    for outC in [16, 24] {
      let s = ConvShape(batch: 2, height: 9, width: 9, inChannels: 3, outChannels: outC, kernel: 3, stride: 2)
      let cx = rounded(randomBuffer(s.inputCount, seed: 34)), cw = rounded(randomBuffer(s.weightCount, seed: 35))
      let cdy = rounded(randomBuffer(s.outputCount, seed: 36))
      let cy = FloatBuffer(count: s.outputCount), cyRef = FloatBuffer(count: s.outputCount)
      conv2dForward(y: cy.base, x: cx.base, w: cw.base, s, scratch: scratch)
      conv2dForwardNaive(y: cyRef.base, x: cx.base, w: cw.base, s)
      assertClose(cy, cyRef, atol: 1e-5, rtol: 1e-5, "bf16 conv forward \(outC)")
      let cdx = FloatBuffer(count: s.inputCount), cdxRef = FloatBuffer(count: s.inputCount)
      let cdw = FloatBuffer(count: s.weightCount), cdwRef = FloatBuffer(count: s.weightCount)
      conv2dBackward(dx: cdx.base, dw: cdw.base, dy: cdy.base, x: cx.base, w: cw.base, s, scratch: scratch)
      conv2dBackwardNaive(dx: cdxRef.base, dw: cdwRef.base, dy: cdy.base, x: cx.base, w: cw.base, s)
      assertClose(cdx, cdxRef, atol: 1e-5, rtol: 1e-5, "bf16 conv dx \(outC)")
      assertClose(cdw, cdwRef, atol: 1e-4, rtol: 1e-5, "bf16 conv dw \(outC)")
    }

    // Depthwise, stride 2, a channel count that takes the 16-, 8- and 1-wide paths.
    let d = DepthwiseShape(batch: 2, height: 8, width: 8, channels: 29, stride: 2)
    let dxIn = rounded(randomBuffer(d.inputCount, seed: 37)), dwt = rounded(randomBuffer(d.weightCount, seed: 38))
    let ddy = rounded(randomBuffer(d.outputCount, seed: 39))
    let dy2 = FloatBuffer(count: d.outputCount), dy2Ref = FloatBuffer(count: d.outputCount)
    depthwiseForward(y: dy2.base, x: dxIn.base, w: dwt.base, d)
    depthwiseForwardNaive(y: dy2Ref.base, x: dxIn.base, w: dwt.base, d)
    assertClose(dy2, dy2Ref, atol: 1e-5, rtol: 1e-5, "bf16 depthwise forward")
    let ddx = FloatBuffer(count: d.inputCount), ddxRef = FloatBuffer(count: d.inputCount)
    let ddw = FloatBuffer(count: d.weightCount), ddwRef = FloatBuffer(count: d.weightCount)
    depthwiseBackward(dx: ddx.base, dw: ddw.base, dy: ddy.base, x: dxIn.base, w: dwt.base, d, scratch: scratch)
    depthwiseBackwardNaive(dx: ddxRef.base, dw: ddwRef.base, dy: ddy.base, x: dxIn.base, w: dwt.base, d)
    assertClose(ddx, ddxRef, atol: 1e-5, rtol: 1e-5, "bf16 depthwise dx")
    assertClose(ddw, ddwRef, atol: 1e-4, rtol: 1e-5, "bf16 depthwise dw")
  }
}
