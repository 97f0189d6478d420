// `bench fused`: the fused kernels of issue 12 against the unfused sequence of passes they replace,
// on layer shapes of mobilenet_v2 1.0/224 batch 32, on the instruction set chosen at start-up (set
// MNV2_ISA=avx2 to time the AVX2 kernels). Minimum over repetitions: on a shared machine the minimum
// is the figure least disturbed by other processes.
import ArgumentParser
import Dispatch
import Foundation
import Kernels

struct FusedBench: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "fused",
    abstract: "Fused vs unfused kernel passes on 1.0/224 layer shapes (ms, minimum over repetitions).")
  @Option(help: "Compute threads (1-64).") var threads = 2
  @Option(help: "Repetitions per measurement (1-1000).") var reps = 7
  @Option(help: "Batch (1-256).") var batch = 32

  func validate() throws { try validateKernelBench(threads: threads, reps: reps, batch: batch) }

  /// Milliseconds of the fastest repetition.
  func minTime(_ body: () -> Void) -> Double { minimumSeconds(reps: reps, body) * 1e3 }

  func report(_ name: String, fused: Double, unfused: Double) {
    print(String(format: "%-52@ fused %8.2f ms   unfused %8.2f ms   %.2fx", name as NSString, fused, unfused, unfused / fused))
  }

  func run() throws {
    Compute.setThreads(threads)
    print(KernelISA.summary)
    print("threads=\(threads) batch=\(batch) reps=\(reps) (minimum)")
    let scratch = Scratch()
    // Block 3 of 1.0/224 (56², 24 → 144 → 24): expand, depthwise, project.
    let (hw, cIn, cMid) = (56, 24, 144)
    let rows = batch * hw * hw
    let x = FloatBuffer(count: rows * cIn), wE = FloatBuffer(count: cIn * cMid), wP = FloatBuffer(count: cMid * cIn)
    var rng = RandomState(seed: 3)
    for b in [x, wE, wP] { for i in 0..<b.count { b[i] = rng.uniform() - 0.5 } }
    let zE = FloatBuffer(count: rows * cMid), aE = FloatBuffer(count: rows * cMid), zD = FloatBuffer(count: rows * cMid)
    let shift = FloatBuffer(count: cMid), ss = FloatBuffer(count: 2 * cMid), gamma = FloatBuffer(count: cMid)
    let mean = FloatBuffer(count: cMid), inv = FloatBuffer(count: cMid), mm = FloatBuffer(count: cMid), mv = FloatBuffer(count: cMid)
    for c in 0..<cMid { gamma[c] = 1; mv[c] = 1 }
    var sums = [Double](repeating: 0, count: 2 * cMid)

    // Expand 1×1 with its BN statistics.
    report("expand 1x1 \(rows)x\(cIn)x\(cMid) + BN statistics", fused: minTime {
      pointwiseForward(y: zE.base, x: x.base, w: wE.base, rows: rows, inChannels: cIn, outChannels: cMid,
                       statisticsShift: shift.base, sums: &sums, scratch: scratch)
    }, unfused: minTime {
      pointwiseForward(y: zE.base, x: x.base, w: wE.base, rows: rows, inChannels: cIn, outChannels: cMid)
      batchNormStatistics(z: zE.base, rows: rows, channels: cMid, shift: shift.base, sums: &sums, scratch: scratch)
    })
    batchNormForward(fromSums: sums, shift: shift.base, a: aE.base, z: zE.base, gamma: gamma.base, beta: FloatBuffer(count: cMid).base,
                     mean: mean.base, invStd: inv.base, movingMean: mm.base, movingVariance: mv.base, rows: rows,
                     channels: cMid, training: true, relu6: true, scaleShift: ss.base)
    // Depthwise reading the expand's z (its BN + ReLU6 applied as read) with its own statistics,
    // against: BN apply of the expand, depthwise, statistics pass.
    let ds = DepthwiseShape(batch: batch, height: hw, width: hw, channels: cMid, stride: 1)
    let wD = FloatBuffer(count: ds.weightCount)
    for i in 0..<wD.count { wD[i] = rng.uniform() - 0.5 }
    let pending = PendingBatchNorm(scale: ss.base, shift: ss.base + cMid, relu6: true)
    var sumsD = [Double](repeating: 0, count: 2 * cMid)
    let shiftD = FloatBuffer(count: cMid)
    report("expand BN+ReLU6 → depthwise 3x3 56²x144 + BN statistics", fused: minTime {
      depthwiseForward(y: zD.base, x: zE.base, w: wD.base, ds, statisticsShift: shiftD.base, sums: &sumsD,
                       scratch: scratch, input: pending)
    }, unfused: minTime {
      batchNormForward(fromSums: sums, shift: shift.base, a: aE.base, z: zE.base, gamma: gamma.base,
                       beta: FloatBuffer(count: cMid).base, mean: mean.base, invStd: inv.base, movingMean: mm.base,
                       movingVariance: mv.base, rows: rows, channels: cMid, training: true, relu6: true)
      depthwiseForward(y: zD.base, x: aE.base, w: wD.base, ds)
      batchNormStatistics(z: zD.base, rows: rows, channels: cMid, shift: shiftD.base, sums: &sumsD, scratch: scratch)
    })
    // Project backward: dx (the depthwise output's gradient) with the depthwise BN's reductions.
    let dyP = FloatBuffer(count: rows * cIn), dxP = FloatBuffer(count: rows * cMid), dwP = FloatBuffer(count: cMid * cIn)
    for i in 0..<dyP.count { dyP[i] = rng.uniform() - 0.5 }
    var red = [Double](repeating: 0, count: 2 * cMid)
    red.withUnsafeMutableBufferPointer { rp in
      let r = BatchNormReduction(z: zD.base, scale: ss.base, shift: ss.base + cMid, mean: mean.base, invStd: inv.base,
                                 relu6: true, sums: rp.baseAddress!)
      report("project 1x1 backward + depthwise BN reductions", fused: minTime {
        pointwiseBackward(dx: dxP.base, dw: dwP.base, dy: dyP.base, x: aE.base, w: wP.base, rows: rows, inChannels: cMid,
                          outChannels: cIn, scratch: scratch, residual: nil, reduce: r)
      }, unfused: minTime {
        pointwiseBackward(dx: dxP.base, dw: dwP.base, dy: dyP.base, x: aE.base, w: wP.base, rows: rows, inChannels: cMid,
                          outChannels: cIn, scratch: scratch)
        batchNormReduce(da: dxP.base, residual: nil, rows: rows, channels: cMid, r, scratch: scratch)
      })
      // Depthwise backward: dx with the expand BN's reductions, dw from the expand's z.
      let rE = BatchNormReduction(z: zE.base, scale: ss.base, shift: ss.base + cMid, mean: mean.base, invStd: inv.base,
                                  relu6: true, sums: rp.baseAddress!)
      let dxD = FloatBuffer(count: rows * cMid), dwD = FloatBuffer(count: ds.weightCount)
      report("depthwise backward + expand BN reductions (x from z)", fused: minTime {
        depthwiseBackward(dx: dxD.base, dw: dwD.base, dy: dxP.base, x: zE.base, w: wD.base, ds, scratch: scratch,
                          reduce: rE, input: pending)
      }, unfused: minTime {
        depthwiseBackward(dx: dxD.base, dw: dwD.base, dy: dxP.base, x: aE.base, w: wD.base, ds, scratch: scratch)
        batchNormReduce(da: dxD.base, residual: nil, rows: rows, channels: cMid, rE, scratch: scratch)
      })
    }
    scaledExpandBackward(scratch: scratch, rng: &rng)
  }

  /// Layer 3 of 1.0/224 (112², 16 → 96, the expanded tensor 154 MB at batch 32): the expand backward
  /// from P = k·mask(dA) and x (`pointwiseBackwardScaled`, z not read) against the direct one, which
  /// makes dz from dA and z block by block. Both with the block input's BN reductions.
  func scaledExpandBackward(scratch: Scratch, rng: inout RandomState) {
    let (hw, m, n) = (112, 16, 96)
    let rows = batch * hw * hw
    let x = FloatBuffer(count: rows * m), z = FloatBuffer(count: rows * n), da = FloatBuffer(count: rows * n)
    let w = FloatBuffer(count: m * n), dw = FloatBuffer(count: m * n), dx = FloatBuffer(count: rows * m)
    for b in [x, da, w] { for i in 0..<b.count { b[i] = rng.uniform() - 0.5 } }
    pointwiseForward(y: z.base, x: x.base, w: w.base, rows: rows, inChannels: m, outChannels: n)
    // BN parameters: scale, shift, mean, 1/σ of z (any values in range time the same), and of x's producer.
    let bn = benchBatchNorm(channels: n, shift: 0.1), bnIn = benchBatchNorm(channels: m, shift: 0.1)
    var sums = [Double](repeating: 1, count: 2 * n), sumsIn = [Double](repeating: 0, count: 2 * m)
    let (dGamma, dBeta) = (FloatBuffer(count: n), FloatBuffer(count: n))
    sums.withUnsafeMutableBufferPointer { sp in
      sumsIn.withUnsafeMutableBufferPointer { ip in
        let red = benchReduction(z: z.base, bn, channels: n, relu6: true, sums: sp.baseAddress!)
        let redIn = benchReduction(z: x.base, bnIn, channels: m, relu6: false, sums: ip.baseAddress!)
        func backward(scaled: Bool) {
          withBatchNormBackward(fromSums: sp.baseAddress!, da: da.base, red, dGamma: dGamma.base, dBeta: dBeta.base,
                                rows: rows, channels: n, training: true) { pending in
            if scaled {
              pointwiseBackwardScaled(dx: dx.base, dw: dw.base, outputGradient: pending, x: x.base, w: w.base, rows: rows,
                                      inChannels: m, outChannels: n, scratch: scratch, residual: nil, reduce: redIn)
            } else {
              pointwiseBackward(dx: dx.base, dw: dw.base, dy: da.base, x: x.base, w: w.base, rows: rows, inChannels: m,
                                outChannels: n, scratch: scratch, residual: nil, reduce: redIn, outputGradient: pending)
            }
          }
        }
        report("expand 1x1 backward \(rows)x\(m)x\(n) from P and x (z not read)", fused: minTime { backward(scaled: true) },
               unfused: minTime { backward(scaled: false) })
      }
    }
  }
}
