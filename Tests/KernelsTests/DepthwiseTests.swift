// 3×3 depthwise convolution, stride 1 and 2, SAME padding.
import Kernels
import XCTest

final class DepthwiseTests: XCTestCase {
  // Channel counts exercise the 16-wide, 8-wide and scalar paths; sizes even and odd.
  let shapes = [
    DepthwiseShape(batch: 2, height: 6, width: 6, channels: 16, stride: 1),
    DepthwiseShape(batch: 2, height: 8, width: 8, channels: 24, stride: 2),
    DepthwiseShape(batch: 1, height: 7, width: 5, channels: 37, stride: 2),
    DepthwiseShape(batch: 3, height: 5, width: 7, channels: 3, stride: 1),
    DepthwiseShape(batch: 1, height: 1, width: 1, channels: 8, stride: 1),
    // Rows narrower than a window (the last stride-2 layer of a 32² model): no interior at all.
    DepthwiseShape(batch: 2, height: 2, width: 2, channels: 16, stride: 2),
    DepthwiseShape(batch: 1, height: 5, width: 2, channels: 16, stride: 2),
    DepthwiseShape(batch: 1, height: 3, width: 2, channels: 32, stride: 1),
  ]

  func testFastMatchesNaive() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    forEachInstructionSet { _ in
      for (k, s) in shapes.enumerated() {
        let x = randomBuffer(s.inputCount, seed: 20 + UInt64(k)), w = randomBuffer(s.weightCount, seed: 21)
        let dy = randomBuffer(s.outputCount, seed: 22)
        let y = FloatBuffer(count: s.outputCount), yRef = FloatBuffer(count: s.outputCount)
        depthwiseForward(y: y.base, x: x.base, w: w.base, s)
        depthwiseForwardNaive(y: yRef.base, x: x.base, w: w.base, s)
        assertClose(y, yRef, atol: 1e-5, rtol: 1e-5, "depthwise forward \(s)")
        checkBackwardAgainstNaive(s, x: x, dy: dy, w: w, dwAtol: 1e-4, dwRtol: 1e-5)
      }
    }
  }

  /// The fast backward against `depthwiseBackwardNaive`: dx is NaN-filled first, so every element
  /// must be written; dw starts non-zero, so it must be accumulated onto (the weight-gradient
  /// contract). Sums over many rows round differently, hence dw's own tolerance.
  private func checkBackwardAgainstNaive(_ s: DepthwiseShape, x: FloatBuffer, dy: FloatBuffer, w: FloatBuffer,
                                         dwAtol: Float, dwRtol: Float, file: StaticString = #filePath, line: UInt = #line) {
    let dx = FloatBuffer(count: s.inputCount), dxRef = FloatBuffer(count: s.inputCount)
    dx.base.update(repeating: .nan, count: s.inputCount)
    let dw = randomBuffer(s.weightCount, seed: 23), dwRef = FloatBuffer(count: s.weightCount)
    dwRef.copy(from: dw.array)
    depthwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, s, scratch: Scratch())
    depthwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, s)
    assertClose(dx, dxRef, atol: 1e-5, rtol: 1e-5, "depthwise dx \(s)", file: file, line: line)
    assertClose(dw, dwRef, atol: dwAtol, rtol: dwRtol, "depthwise dw \(s)", file: file, line: line)
  }

  /// Wide rows split an image into several groups of the one-pass backward (each group's weight
  /// gradient, then the input rows it owns): every input row gets its gradient exactly once, odd
  /// heights and stride 2 included.
  func testOnePassBackwardAcrossRowGroups() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    let wide = [DepthwiseShape(batch: 2, height: 40, width: 64, channels: 64, stride: 1),
                DepthwiseShape(batch: 2, height: 37, width: 64, channels: 64, stride: 2),
                DepthwiseShape(batch: 1, height: 38, width: 65, channels: 72, stride: 2)]
    for (k, s) in wide.enumerated() {
      XCTAssertLessThan(backwardGroupRows(s), s.outHeight / 2, "\(s) must span several groups")
      let x = randomBuffer(s.inputCount, seed: 60 + UInt64(k)), w = randomBuffer(s.weightCount, seed: 61)
      let dy = randomBuffer(s.outputCount, seed: 62)
      checkBackwardAgainstNaive(s, x: x, dy: dy, w: w, dwAtol: 1e-3, dwRtol: 1e-4)
    }
  }

  /// The depthwise making its output gradient from its BN backward group by group (dz never
  /// stored) gives what the BN backward pass followed by the depthwise backward gives: dx, dw, and
  /// dγ/dβ, with ReLU6 and bf16 rounding, across row groups, stride 1 and 2.
  func testPendingOutputGradientMatchesSeparatePass() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    let wide = [DepthwiseShape(batch: 2, height: 40, width: 64, channels: 64, stride: 1),
                DepthwiseShape(batch: 2, height: 37, width: 64, channels: 48, stride: 2),
                DepthwiseShape(batch: 3, height: 6, width: 5, channels: 24, stride: 2)]
    for (k, s) in wide.enumerated() {
      for (relu6, round) in [(true, false), (false, false), (true, true)] {
        let C = s.channels
        let x = randomBuffer(s.inputCount, seed: 70 + UInt64(k)), w = randomBuffer(s.weightCount, seed: 71)
        let da = randomBuffer(s.outputCount, seed: 72), z = randomBuffer(s.outputCount, seed: 73)
        let params = randomBuffer(4 * C, seed: 74)  // scale, shift, mean, invStd
        for c in 0..<C { params[c] += 1.5; params[C + c] *= 4; params[3 * C + c] = 0.5 + abs(params[3 * C + c]) }
        var sums = (0..<(2 * C)).map { Double($0 % 7) - 3.1 }
        sums.withUnsafeMutableBufferPointer { sp in
          let red = BatchNormReduction(z: z.base, scale: params.base, shift: params.base + C, mean: params.base + 2 * C,
                                       invStd: params.base + 3 * C, relu6: relu6, sums: sp.baseAddress!)
          let dz = FloatBuffer(count: s.outputCount)
          let (dx, dxRef) = (FloatBuffer(count: s.inputCount), FloatBuffer(count: s.inputCount))
          let (dw, dwRef) = (FloatBuffer(count: s.weightCount), FloatBuffer(count: s.weightCount))
          let (dg, dgRef, db, dbRef) = (FloatBuffer(count: C), FloatBuffer(count: C), FloatBuffer(count: C), FloatBuffer(count: C))
          let M = s.outputCount / C
          batchNormBackward(fromSums: sp.baseAddress!, dz: dz.base, da: da.base, red, dGamma: dgRef.base, dBeta: dbRef.base,
                            rows: M, channels: C, training: true, roundOutputToBF16: round)
          depthwiseBackward(dx: dxRef.base, dw: dwRef.base, dy: dz.base, x: x.base, w: w.base, s, scratch: Scratch())
          withBatchNormBackward(fromSums: sp.baseAddress!, da: da.base, red, dGamma: dg.base, dBeta: db.base,
                                rows: M, channels: C, training: true, roundOutputToBF16: round) { pending in
            depthwiseBackward(dx: dx.base, dw: dw.base, dy: da.base, x: x.base, w: w.base, s, scratch: Scratch(),
                              outputGradient: pending)
          }
          let what = "\(s) relu6=\(relu6) bf16=\(round)"
          assertClose(dx, dxRef, atol: 1e-5, rtol: 1e-5, "dx " + what)
          assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-5, "dw " + what)
          assertClose(dg, dgRef, atol: 0, rtol: 0, "dgamma " + what)
          assertClose(db, dbRef, atol: 0, rtol: 0, "dbeta " + what)
        }
      }
    }
  }

  func testGradientsByFiniteDifferences() {
    for s in shapes {
      let x = randomBuffer(s.inputCount, seed: 24), w = randomBuffer(s.weightCount, seed: 25)
      let r = randomBuffer(s.outputCount, seed: 26)
      let dx = FloatBuffer(count: s.inputCount), dw = FloatBuffer(count: s.weightCount)
      depthwiseBackward(dx: dx.base, dw: dw.base, dy: r.base, x: x.base, w: w.base, s, scratch: Scratch())
      let y = FloatBuffer(count: s.outputCount)
      let f = { () -> Double in depthwiseForward(y: y.base, x: x.base, w: w.base, s); return dot(r, y.base) }
      checkGradient(x, analytic: dx, "depthwise dx", f: f)
      checkGradient(w, analytic: dw, "depthwise dw", f: f)
    }
  }

  func testStrideTwoSamePaddingByHand() {
    // 4×4 single channel, all-ones kernel, stride 2: no padding before, one after.
    let s = DepthwiseShape(batch: 1, height: 4, width: 4, channels: 1, stride: 2)
    let x = FloatBuffer(count: 16)
    for i in 0..<16 { x[i] = Float(i) }
    let w = FloatBuffer(count: 9)
    for i in 0..<9 { w[i] = 1 }
    let y = FloatBuffer(count: 4)
    depthwiseForward(y: y.base, x: x.base, w: w.base, s)
    // (0,0): rows 0-2 × cols 0-2; (0,1): rows 0-2 × cols 2-3; (1,0): rows 2-3 × cols 0-2; (1,1): rows 2-3 × cols 2-3.
    let expected: [Float] = [45, 39, 66, 50]
    XCTAssertEqual(y.array, expected)
  }
}
