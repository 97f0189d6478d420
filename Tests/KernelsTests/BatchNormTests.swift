// Batch norm (+ fused ReLU6): fused fast path vs naive two-pass reference, moving averages,
// inference mode, and finite-difference gradients in both modes.
import Kernels
import XCTest

final class BatchNormTests: XCTestCase {
  struct Case {
    let m, c: Int
    let x, gamma, beta, mm, mv: FloatBuffer
    init(m: Int, c: Int, seed: UInt64, offset: Float = 0.5, betaOffset: Float = 0) {
      self.m = m; self.c = c
      x = randomBuffer(m * c, seed: seed, scale: 2, offset: offset)
      gamma = randomBuffer(c, seed: seed + 1, scale: 0.1, offset: 0.8)
      beta = randomBuffer(c, seed: seed + 2, scale: 0.1, offset: betaOffset)
      mm = randomBuffer(c, seed: seed + 3, scale: 0.1)
      mv = randomBuffer(c, seed: seed + 4, scale: 0.1, offset: 1.5)
    }
  }

  func testFastMatchesNaiveBothModes() {
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    forEachInstructionSet { _ in
      // Includes a large row count with a big mean offset, where naive one-pass variance would fail.
      for (m, c, off) in [(40, 16, Float(0.5)), (257, 24, 0.5), (9, 37, 0.5), (41, 37, 0.5), (5000, 8, 100)] {
        for training in [true, false] {
          for relu6 in [true, false] {
            let k = Case(m: m, c: c, seed: 30, offset: off, betaOffset: 2)
            let mm2 = FloatBuffer(count: c), mv2 = FloatBuffer(count: c)
            mm2.copy(from: k.mm.array); mv2.copy(from: k.mv.array)
            let a = FloatBuffer(count: m * c), aRef = FloatBuffer(count: m * c)
            let mean = FloatBuffer(count: c), inv = FloatBuffer(count: c), meanRef = FloatBuffer(count: c), invRef = FloatBuffer(count: c)
            batchNormForward(a: a.base, z: k.x.base, gamma: k.gamma.base, beta: k.beta.base, mean: mean.base, invStd: inv.base,
                             movingMean: k.mm.base, movingVariance: k.mv.base, rows: m, channels: c,
                             training: training, relu6: relu6, scratch: Scratch())
            batchNormForwardNaive(a: aRef.base, z: k.x.base, gamma: k.gamma.base, beta: k.beta.base, mean: meanRef.base,
                                  invStd: invRef.base, movingMean: mm2.base, movingVariance: mv2.base, rows: m, channels: c,
                                  training: training, relu6: relu6)
            let what = "bn m=\(m) c=\(c) training=\(training) relu6=\(relu6)"
            assertClose(a, aRef, atol: 2e-4, rtol: 2e-4, what)
            assertClose(mean, meanRef, atol: 1e-4, rtol: 1e-5, what + " mean")
            assertClose(inv, invRef, atol: 1e-5, rtol: 1e-4, what + " invstd")
            assertClose(k.mm, mm2, atol: 1e-5, rtol: 1e-5, what + " moving mean")
            assertClose(k.mv, mv2, atol: 1e-4, rtol: 1e-4, what + " moving variance")

            let da = randomBuffer(m * c, seed: 31)
            let dz = FloatBuffer(count: m * c), dzRef = FloatBuffer(count: m * c)
            let dg = FloatBuffer(count: c), db = FloatBuffer(count: c), dgRef = FloatBuffer(count: c), dbRef = FloatBuffer(count: c)
            batchNormBackward(dz: dz.base, da: da.base, z: k.x.base, gamma: k.gamma.base, beta: k.beta.base, mean: mean.base,
                              invStd: inv.base, dGamma: dg.base, dBeta: db.base, rows: m, channels: c,
                              training: training, relu6: relu6, scratch: Scratch())
            batchNormBackwardNaive(dz: dzRef.base, da: da.base, a: aRef.base, z: k.x.base, gamma: k.gamma.base,
                                   mean: meanRef.base, invStd: invRef.base, dGamma: dgRef.base, dBeta: dbRef.base,
                                   rows: m, channels: c, training: training, relu6: relu6)
            assertClose(dz, dzRef, atol: 1e-4, rtol: 1e-3, what + " dz")
            assertClose(dg, dgRef, atol: 1e-3, rtol: 1e-3, what + " dgamma")
            assertClose(db, dbRef, atol: 1e-3, rtol: 1e-4, what + " dbeta")
          }
        }
      }
    }
  }

  /// bf16 mode's rounded dz (for the conv backward that reads it) is exactly the unrounded dz rounded
  /// afterwards, across row blocks and thread chunks.
  func testRoundedOutputGradientEqualsRoundingAfterwards() {
    Compute.setThreads(3)
    defer { Compute.setThreads(1) }
    for (m, c) in [(7, 5), (1000, 24), (300, 96)] {  // 300·96 spans several 8192-float blocks per chunk
      let k = Case(m: m, c: c, seed: 40)
      let ss = randomBuffer(2 * c, seed: 42, scale: 0.5, offset: 1)
      let mean = randomBuffer(c, seed: 43, scale: 0.5), inv = randomBuffer(c, seed: 44, scale: 0.5, offset: 1)
      let da = randomBuffer(m * c, seed: 41)
      let gsums = UnsafeMutablePointer<Double>.allocate(capacity: 2 * c)
      defer { gsums.deallocate() }
      for j in 0..<(2 * c) { gsums[j] = Double(j % 7) - 3 }
      let red = BatchNormReduction(z: k.x.base, scale: ss.base, shift: ss.base + c, mean: mean.base, invStd: inv.base,
                                   relu6: true, sums: gsums)
      var dzs: [FloatBuffer] = []
      for round in [false, true] {
        let dz = FloatBuffer(count: m * c), dg = FloatBuffer(count: c), db = FloatBuffer(count: c)
        batchNormBackward(fromSums: UnsafePointer(gsums), dz: dz.base, da: da.base, red, dGamma: dg.base, dBeta: db.base,
                          rows: m, channels: c, training: true, roundOutputToBF16: round)
        dzs.append(dz)
      }
      roundToBF16(dzs[0].base, dzs[0].base, count: m * c)
      XCTAssertEqual(dzs[0].array, dzs[1].array, "backward m=\(m) c=\(c)")
      XCTAssertNotEqual(dzs[1].array, da.array)
    }
  }

  func testMovingAverageUpdateUsesDecayAndUnbiasedVariance() {
    // One channel, values 1, 2, 3, 4: mean 2.5, biased variance 1.25, unbiased 5/3.
    let z = FloatBuffer(count: 4)
    z.copy(from: [1, 2, 3, 4])
    let one = FloatBuffer(count: 1), zero = FloatBuffer(count: 1)
    one[0] = 1
    let mm = FloatBuffer(count: 1), mv = FloatBuffer(count: 1)
    mv[0] = 1
    let a = FloatBuffer(count: 4), mean = FloatBuffer(count: 1), inv = FloatBuffer(count: 1)
    batchNormForward(a: a.base, z: z.base, gamma: one.base, beta: zero.base, mean: mean.base, invStd: inv.base,
                     movingMean: mm.base, movingVariance: mv.base, rows: 4, channels: 1, training: true,
                     relu6: false, scratch: Scratch())
    XCTAssertEqual(BatchNormDefaults.decay, 0.997)
    XCTAssertEqual(BatchNormDefaults.epsilon, 0.001)
    XCTAssertEqual(mm[0], 0.003 * 2.5, accuracy: 1e-6)
    XCTAssertEqual(mv[0], 0.997 + 0.003 * 5 / 3, accuracy: 1e-6)
    XCTAssertEqual(inv[0], 1 / (1.25 + 0.001).squareRoot(), accuracy: 1e-6)
    XCTAssertEqual(a[0], (1 - 2.5) / (1.25 + 0.001).squareRoot(), accuracy: 1e-5)
  }

  func testGradientsByFiniteDifferences() {
    for training in [true, false] {
      for relu6 in [false, true] {
        // gamma ≈ 0.8 and beta ≈ 3 keep ReLU6 inputs inside (0, 6), away from its kinks.
        let k = Case(m: 12, c: 5, seed: 40, betaOffset: relu6 ? 3 : 0)
        let r = randomBuffer(k.m * k.c, seed: 41)
        let a = FloatBuffer(count: k.m * k.c), mean = FloatBuffer(count: k.c), inv = FloatBuffer(count: k.c)
        let fwd = {
          batchNormForward(a: a.base, z: k.x.base, gamma: k.gamma.base, beta: k.beta.base, mean: mean.base,
                           invStd: inv.base, movingMean: k.mm.base, movingVariance: k.mv.base, rows: k.m,
                           channels: k.c, training: training, relu6: relu6, scratch: Scratch())
        }
        fwd()
        let dz = FloatBuffer(count: k.m * k.c), dg = FloatBuffer(count: k.c), db = FloatBuffer(count: k.c)
        batchNormBackward(dz: dz.base, da: r.base, z: k.x.base, gamma: k.gamma.base, beta: k.beta.base, mean: mean.base,
                          invStd: inv.base, dGamma: dg.base, dBeta: db.base, rows: k.m, channels: k.c,
                          training: training, relu6: relu6, scratch: Scratch())
        let f = { () -> Double in fwd(); return dot(r, a.base) }
        let what = "bn training=\(training) relu6=\(relu6)"
        checkGradient(k.x, analytic: dz, h: 1e-2, atol: 3e-3, rtol: 2e-2, what + " dz", f: f)
        checkGradient(k.gamma, analytic: dg, what + " dgamma", f: f)
        checkGradient(k.beta, analytic: db, what + " dbeta", f: f)
      }
    }
  }
}
