// 3×3 stride-2 stem convolution: SAME padding, fast vs naive, finite-difference gradients.
import Kernels
import XCTest

final class ConvTests: XCTestCase {
  func testSamePaddingMatchesTensorFlow() {
    // Stride 2 on an even input: 0 before, 1 after; on an odd input: 1 and 1.
    XCTAssertEqual(SamePadding.before(224, kernel: 3, stride: 2), 0)
    XCTAssertEqual(SamePadding.outputSize(224, stride: 2), 112)
    XCTAssertEqual(SamePadding.before(7, kernel: 3, stride: 2), 1)
    XCTAssertEqual(SamePadding.outputSize(7, stride: 2), 4)
    XCTAssertEqual(SamePadding.before(14, kernel: 3, stride: 1), 1)
  }

  func testStrideTwoPaddingByHand() {
    // 1 image 4×4×1, all-ones 3×3 kernel, stride 2: output (0,0) sums rows 0-1 × cols 0-1
    // (no padding before), output (1,1) sums rows 2-3 × cols 2-3 plus the padded row/col after.
    let s = ConvShape(batch: 1, height: 4, width: 4, inChannels: 1, outChannels: 1, kernel: 3, stride: 2)
    let x = FloatBuffer(count: 16)
    for i in 0..<16 { x[i] = Float(i) }
    let w = FloatBuffer(count: 9)
    for i in 0..<9 { w[i] = 1 }
    let y = FloatBuffer(count: 4)
    conv2dForward(y: y.base, x: x.base, w: w.base, s, scratch: Scratch())
    // rows 0..2, cols 0..2 of 0..15 = 0+1+2+4+5+6+8+9+10
    XCTAssertEqual(y[0], 45)
    // rows 2..3, cols 2..3 = 10+11+14+15
    XCTAssertEqual(y[3], 50)
  }

  let shapes = [
    ConvShape(batch: 2, height: 8, width: 8, inChannels: 3, outChannels: 16, kernel: 3, stride: 2),
    ConvShape(batch: 3, height: 7, width: 9, inChannels: 3, outChannels: 24, kernel: 3, stride: 2),
    ConvShape(batch: 1, height: 6, width: 6, inChannels: 5, outChannels: 7, kernel: 3, stride: 1),
    // Wide enough for the direct forward's four-pixel interior groups, a left padding column
    // (stride 1) and a leftover pixel before the right edge.
    ConvShape(batch: 2, height: 9, width: 21, inChannels: 3, outChannels: 32, kernel: 3, stride: 2),
    ConvShape(batch: 1, height: 5, width: 13, inChannels: 3, outChannels: 16, kernel: 3, stride: 1),
  ]

  func testFastMatchesNaive() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    forEachInstructionSet { _ in
      for (k, s) in shapes.enumerated() {
        let x = randomBuffer(s.inputCount, seed: 1 + UInt64(k)), w = randomBuffer(s.weightCount, seed: 2)
        let dy = randomBuffer(s.outputCount, seed: 3)
        let y = FloatBuffer(count: s.outputCount), yRef = FloatBuffer(count: s.outputCount)
        conv2dForward(y: y.base, x: x.base, w: w.base, s, scratch: Scratch())
        conv2dForwardNaive(y: yRef.base, x: x.base, w: w.base, s)
        assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, "conv forward \(s)")
        let dx = FloatBuffer(count: s.inputCount), dxRef = FloatBuffer(count: s.inputCount)
        let dw = randomBuffer(s.weightCount, seed: 4), dwRef = FloatBuffer(count: s.weightCount)
        dwRef.copy(from: dw.array)  // backward accumulates into dw
        conv2dBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, s, scratch: Scratch())
        conv2dBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, s)
        assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, "conv dx \(s)")
        assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, "conv dw \(s)")
      }
    }
  }

  /// The stem without input gradient, dw accumulated, a scratch reused across calls of different
  /// sizes (stale contents must not leak into the patches or their zero padding): the whole-patch
  /// backward and the blocked weight gradient the model runs.
  func testStemWithoutInputGradientAndReusedScratch() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    let scratch = Scratch()
    _ = scratch.uninitialized(1 << 16).update(repeating: .nan, count: 1 << 16)
    for s in [ConvShape(batch: 2, height: 32, width: 32, inChannels: 3, outChannels: 16, kernel: 3, stride: 2),
              ConvShape(batch: 1, height: 15, width: 17, inChannels: 3, outChannels: 8, kernel: 3, stride: 2)] {
      let x = randomBuffer(s.inputCount, seed: 11), w = randomBuffer(s.weightCount, seed: 12)
      let dy = randomBuffer(s.outputCount, seed: 13)
      let y = FloatBuffer(count: s.outputCount), yRef = FloatBuffer(count: s.outputCount)
      conv2dForward(y: y.base, x: x.base, w: w.base, s, scratch: scratch)
      conv2dForwardNaive(y: yRef.base, x: x.base, w: w.base, s)
      assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, "stem forward \(s)")
      let dw = FloatBuffer(count: s.weightCount), dwRef = FloatBuffer(count: s.weightCount)
      conv2dBackward(dx: nil, dw: dw.base, dy: dy.base, x: x.base, w: w.base, s, scratch: scratch)
      conv2dBackward(dx: nil, dw: dw.base, dy: dy.base, x: x.base, w: w.base, s, scratch: scratch)  // accumulates
      conv2dBackwardNaive(dx: nil, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, s)
      conv2dBackwardNaive(dx: nil, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, s)
      assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, "stem dw \(s)")
      let dwBlocked = FloatBuffer(count: s.weightCount)
      _ = scratch.uninitialized(1 << 16).update(repeating: .nan, count: 1 << 16)
      conv2dWeightGradient(dw: dwBlocked.base, dy: dy.base, outputGradient: nil, x: x.base, s, scratch: scratch)
      conv2dWeightGradient(dw: dwBlocked.base, dy: dy.base, outputGradient: nil, x: x.base, s, scratch: scratch)
      assertClose(dwBlocked, dwRef, atol: 1e-3, rtol: 1e-4, "stem blocked dw \(s)")
    }
  }

  /// The direct stem weight gradient (3×3 windows over 3 channels, read in place from x) against
  /// the naive backward on every instruction set: windows in the padding on each side (stride 1 pads
  /// both, stride 2 on an odd size both, on an even size only after), a pixel range split mid-row and
  /// mid-image into calls that accumulate, 16 and 32 output channels, and the model path
  /// (`conv2dWeightGradient`) taking it.
  func testDirectStemWeightGradientMatchesNaive() {
    defer { Compute.setThreads(1) }
    Compute.setThreads(2)
    forEachInstructionSet { isa in
      for s in [ConvShape(batch: 2, height: 9, width: 11, inChannels: 3, outChannels: 16, kernel: 3, stride: 1),
                ConvShape(batch: 2, height: 15, width: 13, inChannels: 3, outChannels: 32, kernel: 3, stride: 2),
                ConvShape(batch: 3, height: 20, width: 18, inChannels: 3, outChannels: 16, kernel: 3, stride: 2)] {
        let x = randomBuffer(s.inputCount, seed: 41), dy = randomBuffer(s.outputCount, seed: 42)
        let w = randomBuffer(s.weightCount, seed: 43)
        let dwRef = FloatBuffer(count: s.weightCount)
        conv2dBackwardNaive(dx: nil, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, s)
        let pixels = s.batch * s.outHeight * s.outWidth
        let g = ConvGeometry(height: s.height, width: s.width, inChannels: 3, outChannels: s.outChannels, kernel: 3,
                             stride: s.stride, outHeight: s.outHeight, outWidth: s.outWidth, padTop: s.padTop,
                             padLeft: s.padLeft)
        let dw = FloatBuffer(count: s.weightCount)
        for cut in [0..<7, 7..<(s.outWidth * s.outHeight + 3), (s.outWidth * s.outHeight + 3)..<pixels] {
          KernelISA.rows.convWeightGradientDirect9(dw: dw.base, dy: dy.base, x: x.base, g, pixels: cut)
        }
        assertClose(dw, dwRef, atol: 1e-4, rtol: 1e-4, "\(isa) direct stem dw \(s)")
        let dwModel = FloatBuffer(count: s.weightCount)
        for i in 0..<dwModel.count { dwModel[i] = 1 }  // accumulated into
        conv2dWeightGradient(dw: dwModel.base, dy: dy.base, outputGradient: nil, x: x.base, s, scratch: Scratch())
        for i in 0..<dwModel.count { dwModel[i] -= 1 }
        assertClose(dwModel, dwRef, atol: 1e-4, rtol: 1e-4, "\(isa) conv2dWeightGradient \(s)")
      }
    }
  }

  /// The stem's blocked weight gradient making its dz from the pending BN backward block by block
  /// (neither dz nor the patches stored) against the naive backward on the dz of the separate BN
  /// backward pass: ReLU6 and bf16 rounding of dz, our GEMM (patch rows padded to its tile) and BLAS,
  /// one and two threads, up to several blocks per thread; dγ, dβ exactly those of the separate pass.
  func testBlockedWeightGradientFromPendingBatchNormMatchesNaive() {
    defer { GemmChoice.forced = nil; Compute.setThreads(1) }
    let manyBlocks = ConvShape(batch: 2, height: 96, width: 80, inChannels: 3, outChannels: 32, kernel: 3, stride: 2)
    for (threads, impl) in [(1, GemmImplementation.own), (2, .own), (2, .blas)] {
      Compute.setThreads(threads)
      GemmChoice.forced = impl
      for s in shapes + [manyBlocks] {
        for round in [false, true] {
          let rows = s.batch * s.outHeight * s.outWidth, co = s.outChannels
          let layer = FusedKernelsTests.Layer(rows: rows, channels: co, relu6: true, seed: 30)
          let x = randomBuffer(s.inputCount, seed: 31), w = randomBuffer(s.weightCount, seed: 33)
          let da = randomBuffer(s.outputCount, seed: 32), daCopy = da.array
          var sums = layer.naiveSums(da: da.base)
          let dz = FloatBuffer(count: s.outputCount)
          let (dg, db, dgRef, dbRef) = (FloatBuffer(count: co), FloatBuffer(count: co), FloatBuffer(count: co), FloatBuffer(count: co))
          let dw = FloatBuffer(count: s.weightCount), dwRef = FloatBuffer(count: s.weightCount)
          sums.withUnsafeMutableBufferPointer { sp in
            let bn = layer.reduction(sp.baseAddress!)
            batchNormBackward(fromSums: sp.baseAddress!, dz: dz.base, da: da.base, bn, dGamma: dgRef.base, dBeta: dbRef.base,
                              rows: rows, channels: co, training: true, roundOutputToBF16: round)
            withBatchNormBackward(fromSums: sp.baseAddress!, da: da.base, bn, dGamma: dg.base, dBeta: db.base, rows: rows,
                                  channels: co, training: true, roundOutputToBF16: round) { pending in
              conv2dWeightGradient(dw: dw.base, dy: da.base, outputGradient: pending, x: x.base, s, scratch: Scratch())
            }
          }
          conv2dBackwardNaive(dx: nil, dw: dwRef.base, dy: dz.base, x: x.base, w: w.base, s)
          let what = "\(impl) \(threads)t \(s) bf16=\(round)"
          assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, what + " dw")
          XCTAssertEqual(dg.array, dgRef.array, what + " dgamma")
          XCTAssertEqual(db.array, dbRef.array, what + " dbeta")
          XCTAssertEqual(da.array, daCopy, what + ": da must not be overwritten")
        }
      }
    }
  }

  func testGradientsByFiniteDifferences() {
    for s in shapes {
      let x = randomBuffer(s.inputCount, seed: 5), w = randomBuffer(s.weightCount, seed: 6)
      let r = randomBuffer(s.outputCount, seed: 7)
      let dx = FloatBuffer(count: s.inputCount), dw = FloatBuffer(count: s.weightCount)
      conv2dBackward(dx: dx.base, dw: dw.base, dy: r.base, x: x.base, w: w.base, s, scratch: Scratch())
      let y = FloatBuffer(count: s.outputCount)
      let f = { () -> Double in conv2dForward(y: y.base, x: x.base, w: w.base, s, scratch: Scratch()); return dot(r, y.base) }
      checkGradient(x, analytic: dx, "conv dx", f: f)
      checkGradient(w, analytic: dw, "conv dw", f: f)
    }
  }
}
