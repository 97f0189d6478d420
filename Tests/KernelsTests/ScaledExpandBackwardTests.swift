// The expand layer's backward from P = k·mask(dA) and x alone (`pointwiseBackwardScaled`), and the
// depthwise input gradient that stores P (`BatchNormReduction.storesScaledGradient`).
import Kernels
import XCTest

final class ScaledExpandBackwardTests: XCTestCase {
  /// An expand layer's forward as the model runs it: z = x·w (our GEMM), then its training-mode BN
  /// (naive, in double), and the consumer's reductions (Σg, Σg·x̂) for a given dA.
  struct Expand {
    let rows, m, n: Int
    let x, w: FloatBuffer
    /// z = x·w and its BN.
    let bn: FusedKernelsTests.Layer
    init(rows: Int, m: Int, n: Int, relu6: Bool, xMean: Float, xSpread: Float, seed: UInt64) {
      self.rows = rows; self.m = m; self.n = n
      x = randomBuffer(rows * m, seed: seed, scale: xSpread, offset: xMean)
      // Weights with a mean of their own, so that z's mean (μ) is large and every term of the
      // rewritten products matters.
      w = randomBuffer(m * n, seed: seed + 1, scale: 0.5, offset: 0.2)
      let z = FloatBuffer(count: rows * n)
      pointwiseForward(y: z.base, x: x.base, w: w.base, rows: rows, inChannels: m, outChannels: n)
      bn = FusedKernelsTests.Layer(z: z, rows: rows, channels: n, relu6: relu6, seed: seed + 2)
    }
    var relu6: Bool { bn.relu6 }
    var z: FloatBuffer { bn.z }
    var a: FloatBuffer { bn.a }
    var gamma: FloatBuffer { bn.gamma }
    var mean: FloatBuffer { bn.mean }
    var invStd: FloatBuffer { bn.invStd }
    var scaleShift: FloatBuffer { bn.scaleShift }
    func reduction(_ sums: UnsafeMutablePointer<Double>) -> BatchNormReduction { bn.reduction(sums) }
    /// P = scale·g with the kernels' own mask expression (y = z·scale + shift inside (0, 6)).
    func scaled(_ da: FloatBuffer) -> FloatBuffer {
      let p = FloatBuffer(count: rows * n)
      for i in 0..<(rows * n) {
        let c = i % n, y = z[i] * scaleShift[c] + scaleShift[n + c]
        p[i] = (relu6 && !(y > 0 && y < 6) ? 0 : da[i]) * scaleShift[c]
      }
      return p
    }
  }

  func testScaledExpandBackwardMatchesNaive() {
    // The next block's rows prefetched as in the step (the tensors here are below the threshold).
    let savedPrefetch = NextBlockPrefetch.minimumBytes
    defer { Compute.setThreads(1); NextBlockPrefetch.minimumBytes = savedPrefetch }
    NextBlockPrefetch.minimumBytes = 0
    forEachInstructionSet { isa in
      for threads in [1, 3] {
        Compute.setThreads(threads)
        for (rows, m, n) in [(1, 3, 5), (37, 16, 96), (3001, 24, 144), (5000, 8, 40), (700, 5, 30)] {
          // x centred, and x far from zero against its spread (a block output can be), which the
          // shift in the kernel is for. And a BN mean that is not the mean of x·w: the model's is the
          // float mean of the rounded z (~1e-6 off); 1e-3 makes the difference visible. Every path
          // then computes xᵀdz with that mean, the scaled one through its s·Σdz term.
          // Inference-mode BN too (dz = P: nothing subtracted), a mean of 20 (without ReLU6: the
          // naive mask, made in double, would differ from the kernels' float one near 0 and 6), and
          // no reductions of the producer.
          for (relu6, withResidual, xMean, meanOffset, training, reduced) in [
            (true, false, Float(0), Float(0), true, true), (true, false, 4, 0, true, true), (false, true, 4, 0, true, true),
            (true, true, 4, 0, true, true), (true, false, 4, 1e-3, true, true), (true, true, 4, 0, false, true),
            (false, false, 20, 0, true, true), (true, false, 4, 0, true, false)] {
            let e = Expand(rows: rows, m: m, n: n, relu6: relu6, xMean: xMean, xSpread: 0.3, seed: 200)
            for c in 0..<n { e.mean[c] += meanOffset }
            let producer = FusedKernelsTests.Layer(rows: rows, channels: m, relu6: false, seed: 210)
            let da = randomBuffer(rows * n, seed: 220, offset: 0.3), res = randomBuffer(rows * m, seed: 221)
            // The reductions as the depthwise backward makes them: the naive BN backward's dβ, dγ.
            let dzRef = FloatBuffer(count: rows * n), dgRef = FloatBuffer(count: n), dbRef = FloatBuffer(count: n)
            batchNormBackwardNaive(dz: dzRef.base, da: da.base, a: e.a.base, z: e.z.base, gamma: e.gamma.base,
                                   mean: e.mean.base, invStd: e.invStd.base, dGamma: dgRef.base, dBeta: dbRef.base,
                                   rows: rows, channels: n, training: training, relu6: relu6)
            var gradSums = dbRef.array.map(Double.init) + dgRef.array.map(Double.init)
            // dW accumulates onto what is there.
            let dw0 = randomBuffer(m * n, seed: 222), dxRef = FloatBuffer(count: rows * m), dwRef = FloatBuffer(count: m * n)
            let dw = FloatBuffer(count: m * n)
            dwRef.copy(from: dw0.array); dw.copy(from: dw0.array)
            pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dzRef.base, x: e.x.base, w: e.w.base, rows: rows,
                                   inChannels: m, outChannels: n)
            if withResidual { for i in 0..<(rows * m) { dxRef[i] += res[i] } }

            // The direct path (dz made from dA and z as the products read it), which the model ran before.
            let dxDirect = FloatBuffer(count: rows * m), dwDirect = FloatBuffer(count: m * n)
            dwDirect.copy(from: dw0.array)
            var redDirect = [Double](repeating: .nan, count: 2 * m)
            gradSums.withUnsafeMutableBufferPointer { gp in
              redDirect.withUnsafeMutableBufferPointer { rp in
                let (dg, db) = (FloatBuffer(count: n), FloatBuffer(count: n))
                withBatchNormBackward(fromSums: gp.baseAddress!, da: da.base, e.reduction(gp.baseAddress!), dGamma: dg.base,
                                      dBeta: db.base, rows: rows, channels: n, training: training) { pending in
                  pointwiseBackward(dx: dxDirect.base, dw: dwDirect.base, dy: da.base, x: e.x.base, w: e.w.base, rows: rows,
                                    inChannels: m, outChannels: n, scratch: Scratch(),
                                    residual: withResidual ? UnsafePointer(res.base) : nil,
                                    reduce: producer.reduction(rp.baseAddress!), outputGradient: pending)
                }
              }
            }
            let p = e.scaled(da), dx = FloatBuffer(count: rows * m)
            dx.base.update(repeating: .nan, count: rows * m)
            let (dg, db) = (FloatBuffer(count: n), FloatBuffer(count: n))
            var red = [Double](repeating: .nan, count: 2 * m)
            gradSums.withUnsafeMutableBufferPointer { gp in
              red.withUnsafeMutableBufferPointer { rp in
                withBatchNormBackward(fromSums: gp.baseAddress!, da: p.base, e.reduction(gp.baseAddress!), dGamma: dg.base,
                                      dBeta: db.base, rows: rows, channels: n, training: training) { pending in
                  pointwiseBackwardScaled(dx: dx.base, dw: dw.base, outputGradient: pending, x: e.x.base, w: e.w.base,
                                          rows: rows, inChannels: m, outChannels: n, scratch: Scratch(),
                                          residual: withResidual ? UnsafePointer(res.base) : nil,
                                          reduce: reduced ? producer.reduction(rp.baseAddress!) : nil)
                }
              }
            }
            let what = "\(isa) \(threads)t scaled expand backward \(rows)x\(m)x\(n) relu6=\(relu6) residual=\(withResidual) x̄=\(xMean) μ+\(meanOffset) training=\(training) reduced=\(reduced)"
            let dwScale = (0..<(m * n)).map { abs(dwRef[$0]) }.max() ?? 0
            let dxScale = (0..<(rows * m)).map { abs(dxRef[$0]) }.max() ?? 0
            // Tolerances relative to the largest element: the rewritten sums round differently, and
            // x's mean amplifies rounding in both paths (μ is the mean of the rounded z).
            assertClose(dx, dxRef, atol: 1e-5 * max(1, dxScale), rtol: 1e-4, what + " dx")
            assertClose(dw, dwRef, atol: 1e-4 * max(1, dwScale), rtol: 1e-4, what + " dw")
            assertClose(dx, dxDirect, atol: 1e-5 * max(1, dxScale), rtol: 1e-4, what + " dx against the direct path")
            assertClose(dw, dwDirect, atol: 1e-4 * max(1, dwScale), rtol: 1e-4, what + " dw against the direct path")
            assertClose(dg, dgRef, atol: 1e-5, rtol: 1e-5, what + " dgamma")
            assertClose(db, dbRef, atol: 1e-5, rtol: 1e-5, what + " dbeta")
            // Σdx is ~0 (dz's per-channel sums are) and rounds to ~1e-6 of Σ|dx| in either path.
            let expected = producer.naiveSums(da: dxRef.base)
            for c in 0..<m where reduced {
              var mass = 0.0
              for r in 0..<rows { mass += abs(Double(dxRef[r * m + c])) * max(1, abs(Double(producer.z[r * m + c]))) }
              for (i, sum) in [(c, "Σg"), (m + c, "Σg·x̂")] {
                XCTAssertEqual(red[i], expected[i], accuracy: 1e-4 + 2e-6 * mass, "\(what) channel \(c) reduction \(sum)")
              }
            }
            // The rewriting is not trivially exact here: xᵀP alone (no corrections) is far from dW
            // (with inference-mode BN, dz = P and xᵀP is dW).
            if rows > 1 && training {
              var uncorrected = 0.0
              for a in 0..<m { for j in 0..<n {
                var s = 0.0
                for r in 0..<rows { s += Double(e.x[r * m + a]) * Double(p[r * n + j]) }
                uncorrected = max(uncorrected, abs(s - Double(dwRef[a * n + j] - dw0[a * n + j])))
              } }
              XCTAssertGreaterThan(uncorrected, 1e-2 * max(1, Double(dwScale)), what + ": corrections too small to test")
            }
          }
        }
      }
    }
  }

  /// The scaled expand backward fused into the depthwise backward (`ScaledExpandBackwardPass`: P made
  /// group by group into a per-thread buffer and consumed there, never stored) against the two
  /// passes (the depthwise storing P, then `pointwiseBackwardScaled` reading it): the depthwise's own
  /// weight gradient and the expand BN's reductions are the same computation (bit-identical); the
  /// expand's dx, dW and its producer's reductions agree to rounding (the partial sums are grouped
  /// by the depthwise's chunks instead of the GEMM's blocks); the P buffer is not written. Strides 1
  /// and 2, several groups per image and several images per chunk, 1 and 3 threads, with and
  /// without a residual, both instruction sets.
  func testFusedPassMatchesTheSeparateOne() {
    defer { Compute.setThreads(1) }
    forEachInstructionSet { isa in
      for threads in [1, 3] {
        Compute.setThreads(threads)
        for (k, (s, m)) in [(DepthwiseShape(batch: 3, height: 20, width: 18, channels: 48, stride: 2), 8),
                            (DepthwiseShape(batch: 2, height: 40, width: 40, channels: 96, stride: 1), 16),
                            (DepthwiseShape(batch: 4, height: 7, width: 5, channels: 40, stride: 1), 7)].enumerated() {
          for withResidual in [false, true] {
            let rows = s.batch * s.height * s.width, n = s.channels
            let e = Expand(rows: rows, m: m, n: n, relu6: true, xMean: 2, xSpread: 0.3, seed: 300 + UInt64(k))
            let producer = FusedKernelsTests.Layer(rows: rows, channels: m, relu6: false, seed: 310)
            let wD = randomBuffer(s.weightCount, seed: 311), dy = randomBuffer(s.outputCount, seed: 312)
            let res = randomBuffer(rows * m, seed: 313)
            let input = PendingBatchNorm(scale: e.scaleShift.base, shift: e.scaleShift.base + n, relu6: true)
            func run(fused: Bool) -> (dwD: [Float], sums: [Double], dg: [Float], db: [Float], dx: FloatBuffer, dw: FloatBuffer,
                                      red: [Double], p: [Float]) {
              let p = FloatBuffer(count: rows * n), dx = FloatBuffer(count: rows * m)
              p.base.update(repeating: .nan, count: rows * n)
              dx.base.update(repeating: .nan, count: rows * m)
              let dwD = FloatBuffer(count: s.weightCount), dw = randomBuffer(m * n, seed: 314)
              let (dg, db) = (FloatBuffer(count: n), FloatBuffer(count: n))
              var sums = [Double](repeating: .nan, count: 2 * n), red = [Double](repeating: .nan, count: 2 * m)
              let scratch = Scratch()
              let pass = fused ? ScaledExpandBackwardPass(dx: dx.base, x: e.x.base, w: e.w.base, rows: rows, inChannels: m,
                                                          outChannels: n, depthwise: s) : nil
              sums.withUnsafeMutableBufferPointer { sp in
                red.withUnsafeMutableBufferPointer { rp in
                  let expandBN = e.reduction(sp.baseAddress!)
                  depthwiseBackward(dx: p.base, dw: dwD.base, dy: dy.base, x: e.z.base, w: wD.base, s, scratch: scratch,
                                    reduce: expandBN.storingScaledGradient(), input: input, scaledExpand: pass)
                  withBatchNormBackward(fromSums: sp.baseAddress!, da: p.base, expandBN, dGamma: dg.base, dBeta: db.base,
                                        rows: rows, channels: n, training: true) { og in
                    let residual = withResidual ? UnsafePointer(res.base) : nil, reduce = producer.reduction(rp.baseAddress!)
                    if let pass {
                      pass.finish(outputGradient: og, dw: dw.base, scratch: scratch, residual: residual, reduce: reduce)
                    } else {
                      pointwiseBackwardScaled(dx: dx.base, dw: dw.base, outputGradient: og, x: e.x.base, w: e.w.base, rows: rows,
                                              inChannels: m, outChannels: n, scratch: scratch, residual: residual, reduce: reduce)
                    }
                  }
                }
              }
              return (dwD.array, sums, dg.array, db.array, dx, dw, red, p.array)
            }
            let separate = run(fused: false), fused = run(fused: true)
            let what = "\(isa) \(threads)t fused expand backward \(s) m=\(m) residual=\(withResidual)"
            XCTAssertEqual(fused.dwD, separate.dwD, what + ": depthwise dw")
            XCTAssertEqual(fused.sums, separate.sums, what + ": expand BN reductions")
            XCTAssertEqual(fused.dg, separate.dg, what + ": dgamma")
            XCTAssertEqual(fused.db, separate.db, what + ": dbeta")
            XCTAssertTrue(fused.p.allSatisfy(\.isNaN), what + ": P was written")
            XCTAssertFalse(separate.p.contains(where: \.isNaN), what + ": the separate pass stores all of P")
            let dxScale = (0..<(rows * m)).map { abs(separate.dx[$0]) }.max() ?? 0
            let dwScale = (0..<(m * n)).map { abs(separate.dw[$0]) }.max() ?? 0
            assertClose(fused.dx, separate.dx, atol: 1e-5 * max(1, dxScale), rtol: 1e-4, what + " dx")
            assertClose(fused.dw, separate.dw, atol: 1e-4 * max(1, dwScale), rtol: 1e-4, what + " dw")
            // The reductions (Σg, Σg·x̂) sum dx, whose per-channel sums are ~0: each path rounds to ~1e-6
            // of Σ|dx| (as in testScaledExpandBackwardMatchesNaive).
            for c in 0..<m {
              var mass = 0.0
              for r in 0..<rows { mass += abs(Double(separate.dx[r * m + c])) * max(1, abs(Double(producer.z[r * m + c]))) }
              for i in [c, m + c] {
                XCTAssertEqual(fused.red[i], separate.red[i], accuracy: 1e-4 + 2e-6 * mass, "\(what) producer reduction \(i)")
              }
            }
          }
        }
      }
    }
  }

  /// The depthwise input gradient storing P = scale·mask(dx) writes exactly that (the same bits as
  /// masking and scaling its ordinary output), with the same reductions and weight gradient.
  func testDepthwiseStoresTheScaledGradient() {
    let shapes = FusedKernelsTests.depthwiseShapes
    forEachInstructionSet { isa in
      for (k, s) in shapes.enumerated() {
        for relu6 in [true, false] {
          let x = randomBuffer(s.inputCount, seed: 230 + UInt64(k)), w = randomBuffer(s.weightCount, seed: 231)
          let dy = randomBuffer(s.outputCount, seed: 232)
          let producer = FusedKernelsTests.Layer(rows: s.inputCount / s.channels, channels: s.channels, relu6: relu6, seed: 233)
          let (dx, p) = (FloatBuffer(count: s.inputCount), FloatBuffer(count: s.inputCount))
          let (dw, dwScaled) = (FloatBuffer(count: s.weightCount), FloatBuffer(count: s.weightCount))
          var (sums, sumsScaled) = ([Double](repeating: .nan, count: 2 * s.channels), [Double](repeating: .nan, count: 2 * s.channels))
          sums.withUnsafeMutableBufferPointer { sp in
            depthwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, s, scratch: Scratch(),
                              reduce: producer.reduction(sp.baseAddress!))
          }
          sumsScaled.withUnsafeMutableBufferPointer { sp in
            depthwiseBackward(dx: p.base, dw: dwScaled.base, dy: dy.base, x: x.base, w: w.base, s, scratch: Scratch(),
                              reduce: producer.reduction(sp.baseAddress!).storingScaledGradient())
          }
          let expected = FloatBuffer(count: s.inputCount)
          let C = s.channels, sc = producer.scaleShift
          for i in 0..<s.inputCount {
            let c = i % C, y = producer.z[i] * sc[c] + sc[C + c]
            expected[i] = (relu6 && !(y > 0 && y < 6) ? 0 : dx[i]) * sc[c]
          }
          let what = "\(isa) depthwise \(s) relu6=\(relu6)"
          XCTAssertEqual(p.array, expected.array, what + ": P")
          XCTAssertEqual(dwScaled.array, dw.array, what + ": dw")
          XCTAssertEqual(sumsScaled, sums, what + ": reductions")
        }
      }
    }
  }
}
