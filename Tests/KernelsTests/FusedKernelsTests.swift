// The fused kernels of issue 12 (item 3) against their naive twins, on every instruction set this
// CPU runs (item 2): statistics made inside the conv kernels, BN apply with the residual, and the BN
// backward reductions made by the kernels that produce the output gradient (with the residual add).
import Kernels
import XCTest

final class FusedKernelsTests: XCTestCase {
  override func setUp() { Compute.setThreads(2) }
  override func tearDown() { Compute.setThreads(1) }

  func testInstructionSetChoiceIsReportedAndSwitchable() {
    XCTAssertTrue(KernelISA.available.contains(.avx2))
    XCTAssertEqual(KernelISA.available.first, KernelISA.hostHasAVX512 ? .avx512 : .avx2)
    forEachInstructionSet { isa in
      XCTAssertEqual(KernelISA.current, isa)
      XCTAssertTrue(KernelISA.summary.hasPrefix("kernels: \(isa.displayName) ("), KernelISA.summary)
    }
    XCTAssertNotEqual(InstructionSet.avx512.displayName, InstructionSet.avx2.displayName)
  }

  static let depthwiseShapes = [
    DepthwiseShape(batch: 2, height: 6, width: 6, channels: 16, stride: 1),
    DepthwiseShape(batch: 2, height: 9, width: 8, channels: 24, stride: 2),
    DepthwiseShape(batch: 1, height: 7, width: 5, channels: 37, stride: 2),
    DepthwiseShape(batch: 3, height: 5, width: 7, channels: 3, stride: 1),
    DepthwiseShape(batch: 4, height: 12, width: 12, channels: 40, stride: 1),  // > 32 pixels per row chunk
  ]

  func testDepthwiseForwardStatisticsMatchNaive() {
    forEachInstructionSet { isa in
      for (k, s) in Self.depthwiseShapes.enumerated() {
        let x = randomBuffer(s.inputCount, seed: 40 + UInt64(k), offset: 3), w = randomBuffer(s.weightCount, seed: 41)
        let y = FloatBuffer(count: s.outputCount), yRef = FloatBuffer(count: s.outputCount)
        let shift = FloatBuffer(count: s.channels)
        var sums = [Double](repeating: .nan, count: 2 * s.channels)
        depthwiseForward(y: y.base, x: x.base, w: w.base, s, statisticsShift: shift.base, sums: &sums, scratch: Scratch())
        depthwiseForwardNaive(y: yRef.base, x: x.base, w: w.base, s)
        let what = "\(isa) depthwise \(s)"
        assertClose(y, yRef, atol: 1e-5, rtol: 1e-5, what)
        assertStatistics(shift: shift, sums: sums, of: yRef.base, rows: s.outputCount / s.channels, channels: s.channels, what)
      }
    }
  }

  func testPointwiseForwardStatisticsMatchNaive() {
    forEachInstructionSet { isa in
      // Row counts spanning several fused blocks per thread (fusedBlockRows = max(2k, 32768/n, 64) in whole
      // 32-row blocks), with and without rows beyond the last whole tile.
      for (m, ci, co) in [(1, 3, 5), (37, 16, 96), (5000, 8, 24), (3001, 24, 144), (130, 96, 16)] {
        let x = randomBuffer(m * ci, seed: 50, offset: 1), w = randomBuffer(ci * co, seed: 51)
        let y = FloatBuffer(count: m * co), yRef = FloatBuffer(count: m * co), shift = FloatBuffer(count: co)
        var sums = [Double](repeating: .nan, count: 2 * co)
        pointwiseForward(y: y.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                         statisticsShift: shift.base, sums: &sums, scratch: Scratch())
        pointwiseForwardNaive(y: yRef.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
        let what = "\(isa) 1x1 \(m)x\(ci)x\(co)"
        assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, what)
        assertStatistics(shift: shift, sums: sums, of: yRef.base, rows: m, channels: co, what)
      }
    }
  }

  func testStemForwardStatisticsMatchNaive() {
    forEachInstructionSet { isa in
      // 16 channels; 24 (the GEMM path); 32 and 48 over rows wide enough for the four-pixel tiles (two
      // 16-channel blocks at a time on AVX-512, then one), with the borders' one-pixel path around them.
      for s in [ConvShape(batch: 2, height: 8, width: 8, inChannels: 3, outChannels: 16, kernel: 3, stride: 2),
                ConvShape(batch: 3, height: 7, width: 9, inChannels: 3, outChannels: 24, kernel: 3, stride: 2),
                ConvShape(batch: 2, height: 21, width: 30, inChannels: 3, outChannels: 32, kernel: 3, stride: 2),
                ConvShape(batch: 1, height: 16, width: 23, inChannels: 3, outChannels: 48, kernel: 3, stride: 2)] {
        let x = randomBuffer(s.inputCount, seed: 60, offset: -2), w = randomBuffer(s.weightCount, seed: 61)
        let y = FloatBuffer(count: s.outputCount), yRef = FloatBuffer(count: s.outputCount)
        let shift = FloatBuffer(count: s.outChannels)
        var sums = [Double](repeating: .nan, count: 2 * s.outChannels)
        conv2dForward(y: y.base, x: x.base, w: w.base, s, statisticsShift: shift.base, sums: &sums, scratch: Scratch())
        conv2dForwardNaive(y: yRef.base, x: x.base, w: w.base, s)
        let what = "\(isa) stem \(s)"
        assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, what)
        assertStatistics(shift: shift, sums: sums, of: yRef.base, rows: s.outputCount / s.outChannels,
                         channels: s.outChannels, what)
      }
    }
  }

  /// The BN of a layer whose output gradient the fused kernels produce: z, γ, β and the forward
  /// results (mean, 1/σ, scale/shift, the naive activation used for the naive ReLU6 mask).
  struct Layer {
    let m, c: Int
    let relu6: Bool
    let z, gamma, beta, mean, invStd, scaleShift, a: FloatBuffer
    init(rows m: Int, channels c: Int, relu6: Bool, seed: UInt64) {
      self.init(z: randomBuffer(m * c, seed: seed, scale: 2, offset: 0.5), rows: m, channels: c, relu6: relu6, seed: seed)
    }
    /// The BN of a given z [m, c].
    init(z: FloatBuffer, rows m: Int, channels c: Int, relu6: Bool, seed: UInt64) {
      self.m = m; self.c = c; self.relu6 = relu6
      self.z = z
      gamma = randomBuffer(c, seed: seed + 1, scale: 0.3, offset: 1)
      beta = randomBuffer(c, seed: seed + 2, scale: 0.5, offset: 1.5)
      mean = FloatBuffer(count: c); invStd = FloatBuffer(count: c); scaleShift = FloatBuffer(count: 2 * c)
      a = FloatBuffer(count: m * c)
      let mm = FloatBuffer(count: c), mv = FloatBuffer(count: c)
      batchNormForwardNaive(a: a.base, z: z.base, gamma: gamma.base, beta: beta.base, mean: mean.base, invStd: invStd.base,
                            movingMean: mm.base, movingVariance: mv.base, rows: m, channels: c, training: true, relu6: relu6)
      batchNormScaleShift(scale: scaleShift.base, shift: scaleShift.base + c, gamma: gamma.base, beta: beta.base,
                          mean: mean.base, invStd: invStd.base, channels: c)
    }
    func reduction(_ sums: UnsafeMutablePointer<Double>) -> BatchNormReduction {
      BatchNormReduction(z: z.base, scale: scaleShift.base, shift: scaleShift.base + c, mean: mean.base,
                         invStd: invStd.base, relu6: relu6, sums: sums)
    }
    /// Naive reductions: (Σg, Σg·x̂) are the naive backward's dβ and dγ.
    func naiveSums(da: UnsafePointer<Float>) -> [Double] {
      let dz = FloatBuffer(count: m * c), dg = FloatBuffer(count: c), db = FloatBuffer(count: c)
      batchNormBackwardNaive(dz: dz.base, da: da, a: a.base, z: z.base, gamma: gamma.base, mean: mean.base,
                             invStd: invStd.base, dGamma: dg.base, dBeta: db.base, rows: m, channels: c,
                             training: true, relu6: relu6)
      return db.array.map(Double.init) + dg.array.map(Double.init)
    }
  }

  func testDepthwiseBackwardWithFusedReductionsAndResidualMatchesNaive() {
    forEachInstructionSet { isa in
      for (k, s) in Self.depthwiseShapes.enumerated() {
        for (relu6, withResidual) in [(true, false), (false, true), (true, true)] {
          let x = randomBuffer(s.inputCount, seed: 70 + UInt64(k)), w = randomBuffer(s.weightCount, seed: 71)
          let dy = randomBuffer(s.outputCount, seed: 72), res = randomBuffer(s.inputCount, seed: 73)
          let producer = Layer(rows: s.inputCount / s.channels, channels: s.channels, relu6: relu6, seed: 74)
          let dx = FloatBuffer(count: s.inputCount), dxRef = FloatBuffer(count: s.inputCount)
          let dw = randomBuffer(s.weightCount, seed: 75), dwRef = FloatBuffer(count: s.weightCount)
          dwRef.copy(from: dw.array)
          var sums = [Double](repeating: .nan, count: 2 * s.channels)
          sums.withUnsafeMutableBufferPointer { sp in
            depthwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, s, scratch: Scratch(),
                              residual: withResidual ? UnsafePointer(res.base) : nil, reduce: producer.reduction(sp.baseAddress!))
          }
          depthwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, s)
          if withResidual { for i in 0..<s.inputCount { dxRef[i] += res[i] } }
          let what = "\(isa) depthwise backward \(s) relu6=\(relu6) residual=\(withResidual)"
          assertClose(dx, dxRef, atol: 1e-5, rtol: 1e-5, what + " dx")
          assertClose(dw, dwRef, atol: 1e-4, rtol: 1e-5, what + " dw")
          assertSums(sums, producer.naiveSums(da: dxRef.base), what)
        }
      }
    }
  }

  func testPointwiseBackwardWithFusedReductionsAndResidualMatchesNaive() {
    forEachInstructionSet { isa in
      for (m, ci, co) in [(1, 3, 5), (37, 16, 96), (5000, 8, 24), (3001, 24, 144), (130, 96, 16)] {
        for (relu6, withResidual) in [(true, false), (false, true)] {
          let x = randomBuffer(m * ci, seed: 80), w = randomBuffer(ci * co, seed: 81), dy = randomBuffer(m * co, seed: 82)
          let res = randomBuffer(m * ci, seed: 83)
          let producer = Layer(rows: m, channels: ci, relu6: relu6, seed: 84)
          let dx = FloatBuffer(count: m * ci), dxRef = FloatBuffer(count: m * ci)
          let dw = randomBuffer(ci * co, seed: 85), dwRef = FloatBuffer(count: ci * co)
          dwRef.copy(from: dw.array)
          var sums = [Double](repeating: .nan, count: 2 * ci)
          sums.withUnsafeMutableBufferPointer { sp in
            pointwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, rows: m, inChannels: ci,
                              outChannels: co, scratch: Scratch(), residual: withResidual ? UnsafePointer(res.base) : nil,
                              reduce: producer.reduction(sp.baseAddress!))
          }
          pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, rows: m,
                                 inChannels: ci, outChannels: co)
          if withResidual { for i in 0..<(m * ci) { dxRef[i] += res[i] } }
          let what = "\(isa) 1x1 backward \(m)x\(ci)x\(co) relu6=\(relu6) residual=\(withResidual)"
          assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, what + " dx")
          assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, what + " dw")
          assertSums(sums, producer.naiveSums(da: dxRef.base), what)
        }
      }
    }
  }

  /// BN forward from fused sums with the residual written by the same pass, and BN backward from
  /// reductions made elsewhere, against the naive BN (+ a separate add).
  func testBatchNormFromSumsWithResidualMatchesNaive() {
    forEachInstructionSet { isa in
      for (m, c) in [(40, 16), (257, 24), (9, 37), (41, 37), (3000, 8)] {
        for relu6 in [true, false] {
          let z = randomBuffer(m * c, seed: 90, scale: 2, offset: 4)
          let gamma = randomBuffer(c, seed: 91, scale: 0.1, offset: 0.8), beta = randomBuffer(c, seed: 92, offset: 2)
          let res = randomBuffer(m * c, seed: 93)
          let shift = FloatBuffer(count: c)
          var sums = [Double](repeating: .nan, count: 2 * c)
          batchNormStatistics(z: z.base, rows: m, channels: c, shift: shift.base, sums: &sums, scratch: Scratch())
          assertStatistics(shift: shift, sums: sums, of: z.base, rows: m, channels: c, "\(isa) statistics \(m)x\(c)")
          let mm = FloatBuffer(count: c), mv = FloatBuffer(count: c), mmRef = FloatBuffer(count: c), mvRef = FloatBuffer(count: c)
          let mean = FloatBuffer(count: c), inv = FloatBuffer(count: c), meanRef = FloatBuffer(count: c), invRef = FloatBuffer(count: c)
          let a = FloatBuffer(count: m * c), aRef = FloatBuffer(count: m * c), ss = FloatBuffer(count: 2 * c)
          batchNormForward(fromSums: sums, shift: shift.base, a: a.base, z: z.base, gamma: gamma.base, beta: beta.base,
                           mean: mean.base, invStd: inv.base, movingMean: mm.base, movingVariance: mv.base, rows: m,
                           channels: c, training: true, relu6: relu6, residual: res.base, scaleShift: ss.base)
          batchNormForwardNaive(a: aRef.base, z: z.base, gamma: gamma.base, beta: beta.base, mean: meanRef.base,
                                invStd: invRef.base, movingMean: mmRef.base, movingVariance: mvRef.base, rows: m,
                                channels: c, training: true, relu6: relu6)
          let what = "\(isa) bn from sums \(m)x\(c) relu6=\(relu6)"
          let bnOnly = FloatBuffer(count: m * c)
          bnOnly.copy(from: aRef.array)
          for i in 0..<(m * c) { aRef[i] += res[i] }
          assertClose(a, aRef, atol: 2e-4, rtol: 2e-4, what)
          assertClose(mean, meanRef, atol: 1e-4, rtol: 1e-5, what + " mean")
          assertClose(inv, invRef, atol: 1e-5, rtol: 1e-4, what + " invstd")
          assertClose(mv, mvRef, atol: 1e-4, rtol: 1e-4, what + " moving variance")
          for ch in 0..<c { XCTAssertEqual(ss[ch], gamma[ch] * inv[ch], accuracy: 1e-6 * abs(gamma[ch] * inv[ch]), what) }

          // Backward from reductions made by batchNormReduce (standing in for a fused producer).
          let da = randomBuffer(m * c, seed: 94)
          var red = [Double](repeating: .nan, count: 2 * c)
          let dz = FloatBuffer(count: m * c), dg = FloatBuffer(count: c), db = FloatBuffer(count: c)
          red.withUnsafeMutableBufferPointer { rp in
            let r = BatchNormReduction(z: z.base, scale: ss.base, shift: ss.base + c, mean: mean.base, invStd: inv.base,
                                       relu6: relu6, sums: rp.baseAddress!)
            batchNormReduce(da: da.base, residual: nil, rows: m, channels: c, r, scratch: Scratch())
            batchNormBackward(fromSums: rp.baseAddress!, dz: dz.base, da: da.base, r, dGamma: dg.base, dBeta: db.base,
                              rows: m, channels: c, training: true)
          }
          let dzRef = FloatBuffer(count: m * c), dgRef = FloatBuffer(count: c), dbRef = FloatBuffer(count: c)
          batchNormBackwardNaive(dz: dzRef.base, da: da.base, a: bnOnly.base, z: z.base, gamma: gamma.base,
                                 mean: meanRef.base, invStd: invRef.base, dGamma: dgRef.base, dBeta: dbRef.base,
                                 rows: m, channels: c, training: true, relu6: relu6)
          assertClose(dz, dzRef, atol: 1e-4, rtol: 1e-3, what + " dz")
          assertClose(dg, dgRef, atol: 1e-3, rtol: 1e-3, what + " dgamma")
          assertClose(db, dbRef, atol: 1e-3, rtol: 1e-4, what + " dbeta")
        }
      }
    }
  }
  /// The depthwise reading z of the previous layer and applying its BN + ReLU6 as it reads (forward,
  /// with statistics, and the weight gradient), against the naive depthwise of the stored activation.
  /// Large enough that a thread processes several groups of transformed rows.
  func testDepthwiseWithPendingBatchNormInputMatchesNaive() {
    let shapes = Self.depthwiseShapes + [DepthwiseShape(batch: 2, height: 40, width: 40, channels: 48, stride: 1),
                                    DepthwiseShape(batch: 2, height: 41, width: 40, channels: 48, stride: 2)]
    forEachInstructionSet { isa in
      for (k, s) in shapes.enumerated() {
        for relu6 in [true, false] {
          let producer = Layer(rows: s.inputCount / s.channels, channels: s.channels, relu6: relu6, seed: 100 + UInt64(k))
          let c = s.channels
          let pending = PendingBatchNorm(scale: producer.scaleShift.base, shift: producer.scaleShift.base + c, relu6: relu6)
          // The activation as BN + ReLU6 would store it (the same scale/shift expression).
          let x = FloatBuffer(count: s.inputCount)
          for i in 0..<s.inputCount {
            let v = producer.z[i] * producer.scaleShift[i % c] + producer.scaleShift[c + i % c]
            x[i] = relu6 ? min(max(v, 0), 6) : v
          }
          let w = randomBuffer(s.weightCount, seed: 101)
          let y = FloatBuffer(count: s.outputCount), y2 = FloatBuffer(count: s.outputCount), yRef = FloatBuffer(count: s.outputCount)
          let shift = FloatBuffer(count: c)
          var sums = [Double](repeating: .nan, count: 2 * c)
          let scratch = Scratch()
          depthwiseForward(y: y.base, x: producer.z.base, w: w.base, s, statisticsShift: shift.base, sums: &sums,
                           scratch: scratch, input: pending)
          depthwiseForward(y: y2.base, x: producer.z.base, w: w.base, s, input: pending, scratch: scratch)
          depthwiseForwardNaive(y: yRef.base, x: x.base, w: w.base, s)
          let what = "\(isa) pending-BN depthwise \(s) relu6=\(relu6)"
          assertClose(y, yRef, atol: 1e-4, rtol: 1e-5, what)
          assertClose(y2, yRef, atol: 1e-4, rtol: 1e-5, what + " (inference)")
          assertStatistics(shift: shift, sums: sums, of: yRef.base, rows: s.outputCount / c, channels: c, what)
          let dy = randomBuffer(s.outputCount, seed: 102)
          let dw = FloatBuffer(count: s.weightCount), dwRef = FloatBuffer(count: s.weightCount)
          depthwiseBackward(dx: nil, dw: dw.base, dy: dy.base, x: producer.z.base, w: w.base, s, scratch: scratch, input: pending)
          depthwiseBackwardNaive(dx: nil, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, s)
          assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, what + " dw")
        }
      }
    }
  }

  /// The project 1×1 reading the depthwise's raw z with its BN + ReLU6 pending, both GEMMs (own, BLAS),
  /// 1 and 2 threads, forward (with and without statistics) and backward, against the naive GEMMs on the
  /// activation as BN + ReLU6 would have stored it.
  func testPointwiseWithPendingBatchNormInputMatchesNaive() {
    defer { GemmChoice.forced = nil; Compute.setThreads(1) }
    for (threads, impl) in [(1, GemmImplementation.own), (2, .own), (2, .blas)] {
      Compute.setThreads(threads)
      GemmChoice.forced = impl
      for (m, ci, co) in [(1, 3, 5), (300, 48, 8), (3001, 144, 24), (700, 96, 160)] {
        for relu6 in [true, false] {
          let producer = Layer(rows: m, channels: ci, relu6: relu6, seed: 120)
          let pending = PendingBatchNorm(scale: producer.scaleShift.base, shift: producer.scaleShift.base + ci, relu6: relu6)
          let x = FloatBuffer(count: m * ci)
          for i in 0..<(m * ci) {
            let v = producer.z[i] * producer.scaleShift[i % ci] + producer.scaleShift[ci + i % ci]
            x[i] = relu6 ? min(max(v, 0), 6) : v
          }
          let w = randomBuffer(ci * co, seed: 121), dy = randomBuffer(m * co, seed: 122)
          let y = FloatBuffer(count: m * co), y2 = FloatBuffer(count: m * co), yRef = FloatBuffer(count: m * co)
          let shift = FloatBuffer(count: co)
          var sums = [Double](repeating: .nan, count: 2 * co)
          let scratch = Scratch()
          pointwiseForward(y: y.base, x: producer.z.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                           statisticsShift: shift.base, sums: &sums, scratch: scratch, input: pending)
          pointwiseForward(y: y2.base, x: producer.z.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                           input: pending, scratch: scratch)
          pointwiseForwardNaive(y: yRef.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
          let what = "\(impl) \(threads)t pending-BN 1x1 \(m)x\(ci)x\(co) relu6=\(relu6)"
          assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, what)
          assertClose(y2, yRef, atol: 1e-4, rtol: 1e-4, what + " (inference)")
          assertStatistics(shift: shift, sums: sums, of: yRef.base, rows: m, channels: co, what)

          let dw = randomBuffer(ci * co, seed: 123), dwRef = FloatBuffer(count: ci * co), dw2 = FloatBuffer(count: ci * co)
          dwRef.copy(from: dw.array); dw2.copy(from: dw.array)
          let dx = FloatBuffer(count: m * ci), dxRef = FloatBuffer(count: m * ci)
          var red = [Double](repeating: .nan, count: 2 * ci)
          red.withUnsafeMutableBufferPointer { rp in
            pointwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: producer.z.base, w: w.base, rows: m,
                              inChannels: ci, outChannels: co, scratch: scratch, residual: nil,
                              reduce: producer.reduction(rp.baseAddress!), input: pending)
          }
          pointwiseBackward(dx: nil, dw: dw2.base, dy: dy.base, x: producer.z.base, w: w.base, rows: m,
                            inChannels: ci, outChannels: co, scratch: scratch, input: pending)
          pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, rows: m,
                                 inChannels: ci, outChannels: co)
          assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, what + " dx")
          assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, what + " dw")
          assertClose(dw2, dwRef, atol: 1e-3, rtol: 1e-4, what + " dw (unfused backward)")
          assertSums(red, producer.naiveSums(da: dxRef.base), what)
        }
      }
    }
  }

  /// The 1×1 backward making its own dz from its BN backward block by block (dz never stored) gives
  /// what the BN backward pass followed by the 1×1 backward gives: dx (with the producer's fused
  /// reductions and a residual), dw, dγ/dβ; with ReLU6 and bf16 rounding of dz, one and two threads,
  /// our kernels and BLAS, and blocks of many rows; da is left as it was.
  func testPointwiseBackwardMakingItsOutputGradientMatchesSeparatePass() {
    defer { GemmChoice.forced = nil; Compute.setThreads(1) }
    for (threads, impl) in [(1, GemmImplementation.own), (2, .own), (2, .blas)] {
      Compute.setThreads(threads)
      GemmChoice.forced = impl
      for (m, ci, co) in [(1, 3, 5), (3001, 16, 96), (2000, 24, 144), (700, 96, 160), (333, 144, 24)] {
        for (relu6, round, withDX) in [(true, false, true), (false, false, true), (true, true, true), (true, false, false)] {
          let layer = Layer(rows: m, channels: co, relu6: relu6, seed: 140)
          let producer = Layer(rows: m, channels: ci, relu6: true, seed: 150)
          let x = randomBuffer(m * ci, seed: 141), w = randomBuffer(ci * co, seed: 142), res = randomBuffer(m * ci, seed: 143)
          let da = randomBuffer(m * co, seed: 144), daCopy = da.array
          var gradSums = layer.naiveSums(da: da.base)  // Σg, Σg·x̂ as the consumer's backward made them
          let dz = FloatBuffer(count: m * co)
          let (dx, dxRef) = (FloatBuffer(count: m * ci), FloatBuffer(count: m * ci))
          let dw = randomBuffer(ci * co, seed: 145), dwRef = FloatBuffer(count: ci * co)
          dwRef.copy(from: dw.array)
          let (dg, dgRef, db, dbRef) = (FloatBuffer(count: co), FloatBuffer(count: co), FloatBuffer(count: co), FloatBuffer(count: co))
          var red = [Double](repeating: .nan, count: 2 * ci), redRef = red
          let scratch = Scratch()
          gradSums.withUnsafeMutableBufferPointer { gp in
            let g = UnsafePointer(gp.baseAddress!), bn = layer.reduction(gp.baseAddress!)
            batchNormBackward(fromSums: g, dz: dz.base, da: da.base, bn, dGamma: dgRef.base, dBeta: dbRef.base,
                              rows: m, channels: co, training: true, roundOutputToBF16: round)
            redRef.withUnsafeMutableBufferPointer { rp in
              if withDX {
                pointwiseBackward(dx: dxRef.base, dw: dwRef.base, dy: dz.base, x: x.base, w: w.base, rows: m, inChannels: ci,
                                  outChannels: co, scratch: scratch, residual: res.base, reduce: producer.reduction(rp.baseAddress!))
              } else {
                pointwiseBackward(dx: nil, dw: dwRef.base, dy: dz.base, x: x.base, w: w.base, rows: m, inChannels: ci,
                                  outChannels: co, scratch: scratch)
              }
            }
            red.withUnsafeMutableBufferPointer { rp in
              withBatchNormBackward(fromSums: g, da: da.base, bn, dGamma: dg.base, dBeta: db.base, rows: m, channels: co,
                                    training: true, roundOutputToBF16: round) { pending in
                if withDX {
                  pointwiseBackward(dx: dx.base, dw: dw.base, dy: da.base, x: x.base, w: w.base, rows: m, inChannels: ci,
                                    outChannels: co, scratch: scratch, residual: res.base, reduce: producer.reduction(rp.baseAddress!),
                                    outputGradient: pending)
                } else {
                  pointwiseBackward(dx: nil, dw: dw.base, dy: da.base, x: x.base, w: w.base, rows: m, inChannels: ci,
                                    outChannels: co, scratch: scratch, outputGradient: pending)
                }
              }
            }
          }
          let what = "\(impl) \(threads)t 1x1 \(m)x\(ci)x\(co) relu6=\(relu6) bf16=\(round) dx=\(withDX)"
          if withDX {
            assertClose(dx, dxRef, atol: 1e-5, rtol: 1e-5, what + " dx")
            assertSums(red, redRef, what)
          }
          assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-5, what + " dw")
          assertClose(dg, dgRef, atol: 0, rtol: 0, what + " dgamma")
          assertClose(db, dbRef, atol: 0, rtol: 0, what + " dbeta")
          XCTAssertEqual(da.array, daCopy, what + ": da must not be overwritten")
        }
      }
    }
  }

  /// The stem's prefetches (the next output row's input rows in the direct forward; the next block's
  /// dA, z and input rows in the blocked weight gradient) change nothing computed: bit-identical
  /// forward (with statistics and without) and dw with them on and off, two threads, many rows and blocks.
  func testStemResultsAreBitIdenticalWithAndWithoutPrefetch() {
    let saved = NextBlockPrefetch.enabled
    defer { GemmChoice.forced = nil; NextBlockPrefetch.enabled = saved; Compute.setThreads(1) }
    GemmChoice.forced = .own
    Compute.setThreads(2)
    forEachInstructionSet { isa in
      let s = ConvShape(batch: 2, height: 96, width: 80, inChannels: 3, outChannels: 32, kernel: 3, stride: 2)
      let x = randomBuffer(s.inputCount, seed: 190), w = randomBuffer(s.weightCount, seed: 191)
      let dy = randomBuffer(s.outputCount, seed: 192)
      func run(prefetch: Bool) -> [[Float]] {
        NextBlockPrefetch.enabled = prefetch
        let scratch = Scratch()
        let y = FloatBuffer(count: s.outputCount), y2 = FloatBuffer(count: s.outputCount), shift = FloatBuffer(count: 32)
        var sums = [Double](repeating: .nan, count: 64)
        conv2dForward(y: y.base, x: x.base, w: w.base, s, statisticsShift: shift.base, sums: &sums, scratch: scratch)
        conv2dForward(y: y2.base, x: x.base, w: w.base, s, scratch: scratch)
        let dw = FloatBuffer(count: s.weightCount)
        conv2dWeightGradient(dw: dw.base, dy: dy.base, outputGradient: nil, x: x.base, s, scratch: scratch)
        return [y.array, y2.array, sums.map(Float.init), dw.array]
      }
      let off = run(prefetch: false), on = run(prefetch: true)
      for (i, name) in ["y", "y (inference)", "statistics", "dw"].enumerated() {
        XCTAssertEqual(on[i].map(\.bitPattern), off[i].map(\.bitPattern), "\(isa) stem \(name)")
      }
      XCTAssertFalse(off[3].allSatisfy { $0 == 0 }, "the weight gradient was computed")
    }
  }

  /// Prefetching the next block (NextBlockPrefetch) changes when data arrives, never what is computed:
  /// the blocked 1×1 forward (pending input, with and without statistics) and backward (dz made block by
  /// block, pending input, residual, reductions) give bit-identical results with it on and off, over
  /// many blocks per thread, on every instruction set this CPU runs. (The test's tensors are far below
  /// the size from which training prefetches, `NextBlockPrefetch.minimumBytes`: it is lowered to 0.)
  func testPointwiseResultsAreBitIdenticalWithAndWithoutNextBlockPrefetch() {
    let saved = NextBlockPrefetch.enabled  // MNV2_PREFETCH=0 must stay off for later tests
    let savedBytes = NextBlockPrefetch.minimumBytes
    defer { GemmChoice.forced = nil; NextBlockPrefetch.enabled = saved; NextBlockPrefetch.minimumBytes = savedBytes }
    NextBlockPrefetch.minimumBytes = 0
    GemmChoice.forced = .own
    forEachInstructionSet { isa in
      for (m, ci, co) in [(5000, 16, 96), (3001, 144, 24)] {
        let producer = Layer(rows: m, channels: ci, relu6: true, seed: 160)
        let layer = Layer(rows: m, channels: co, relu6: true, seed: 170)
        let pending = PendingBatchNorm(scale: producer.scaleShift.base, shift: producer.scaleShift.base + ci, relu6: true)
        let w = randomBuffer(ci * co, seed: 161), da = randomBuffer(m * co, seed: 162), res = randomBuffer(m * ci, seed: 163)
        func run(prefetch: Bool) -> [[Float]] {
          NextBlockPrefetch.enabled = prefetch
          let scratch = Scratch()
          let y = FloatBuffer(count: m * co), y2 = FloatBuffer(count: m * co), shift = FloatBuffer(count: co)
          var sums = [Double](repeating: .nan, count: 2 * co)
          pointwiseForward(y: y.base, x: producer.z.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                           statisticsShift: shift.base, sums: &sums, scratch: scratch, input: pending)
          pointwiseForward(y: y2.base, x: producer.z.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                           input: pending, scratch: scratch)
          let dx = FloatBuffer(count: m * ci), dw = FloatBuffer(count: ci * co)
          let (dg, db) = (FloatBuffer(count: co), FloatBuffer(count: co))
          var gradSums = layer.naiveSums(da: da.base)
          var red = [Double](repeating: .nan, count: 2 * ci)
          gradSums.withUnsafeMutableBufferPointer { gp in
            red.withUnsafeMutableBufferPointer { rp in
              withBatchNormBackward(fromSums: UnsafePointer(gp.baseAddress!), da: da.base, layer.reduction(gp.baseAddress!),
                                    dGamma: dg.base, dBeta: db.base, rows: m, channels: co, training: true) { outputGradient in
                pointwiseBackward(dx: dx.base, dw: dw.base, dy: da.base, x: producer.z.base, w: w.base, rows: m,
                                  inChannels: ci, outChannels: co, scratch: scratch, residual: res.base,
                                  reduce: producer.reduction(rp.baseAddress!), input: pending, outputGradient: outputGradient)
              }
            }
          }
          return [y.array, y2.array, sums.map(Float.init), dx.array, dw.array, dg.array, db.array, red.map(Float.init)]
        }
        let off = run(prefetch: false), on = run(prefetch: true)
        let names = ["y", "y (inference)", "statistics", "dx", "dw", "dgamma", "dbeta", "reductions"]
        for (i, name) in names.enumerated() {
          XCTAssertEqual(on[i].map(\.bitPattern), off[i].map(\.bitPattern), "\(isa) \(m)x\(ci)x\(co) \(name)")
        }
        XCTAssertFalse(off[4].allSatisfy { $0 == 0 }, "the weight gradient was computed")
      }
    }
  }
}
