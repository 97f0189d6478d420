// `bench depthwise`: the training depthwise passes as a step runs them (forward reading the expand's
// z with its BN + ReLU6 pending and making its own statistics; backward making dz from its pending
// BN backward, the weight gradient from z, the input gradient with the expand BN's reductions) on the
// depthwise shapes of a model, in ns per output element and per input element. Minimum over
// repetitions (the figure least disturbed by other processes on a shared machine).
import ArgumentParser
import Foundation
import Kernels

struct DepthwiseBench: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "depthwise",
    abstract: "The training depthwise forward and backward per shape (ms and ns per element, minimum over repetitions).")
  @Option(help: "Compute threads (1-64).") var threads = 2
  @Option(help: "Repetitions per measurement (1-1000).") var reps = 15
  @Option(help: "Shapes, comma-separated BATCHxSIZExCHANNELS[s2] (default: the 0.35/96 b64 depthwise layers).")
  var shapes = "64x48x16,64x48x48s2,64x24x48,64x24x48s2,64x12x96,64x12x96s2,64x6x144,64x6x192,64x6x192s2,64x3x336"

  func validate() throws { try validateKernelBench(threads: threads, reps: reps, batch: 1) }

  func run() throws {
    Compute.setThreads(threads)
    print(KernelISA.summary)
    print("threads=\(threads) reps=\(reps) (minimum)")
    let scratch = Scratch()
    for spec in shapes.split(separator: ",") {
      let strided = spec.hasSuffix("s2")
      let dims = spec.dropLast(strided ? 2 : 0).split(separator: "x").compactMap { Int($0) }
      guard dims.count == 3, dims.allSatisfy({ $0 > 0 }) else {
        throw ValidationError("--shapes: '\(spec)' is not BATCHxSIZExCHANNELS[s2]")
      }
      time(DepthwiseShape(batch: dims[0], height: dims[1], width: dims[1], channels: dims[2], stride: strided ? 2 : 1),
           name: String(spec), scratch: scratch)
    }
  }

  func time(_ s: DepthwiseShape, name: String, scratch: Scratch) {
    let C = s.channels, inRows = s.batch * s.height * s.width, outRows = s.batch * s.outHeight * s.outWidth
    var rng = RandomState(seed: 5)
    let z = FloatBuffer(count: s.inputCount), y = FloatBuffer(count: s.outputCount), w = FloatBuffer(count: s.weightCount)
    let da = FloatBuffer(count: s.outputCount), dx = FloatBuffer(count: s.inputCount), dw = FloatBuffer(count: s.weightCount)
    for b in [z, w, da] { for i in 0..<b.count { b[i] = rng.uniform() - 0.5 } }
    // BN parameters of the input's producer and of the depthwise itself: scale, shift, mean, 1/σ.
    let bnIn = benchBatchNorm(channels: C, shift: 0.2), bn = benchBatchNorm(channels: C, shift: 0.2)
    let pending = PendingBatchNorm(scale: bnIn.base, shift: bnIn.base + C, relu6: true)
    let shift = FloatBuffer(count: C)
    var sums = [Double](repeating: 0, count: 2 * C), sumsIn = [Double](repeating: 0, count: 2 * C)
    let forward = minimumSeconds(reps: reps) {
      depthwiseForward(y: y.base, x: z.base, w: w.base, s, statisticsShift: shift.base, sums: &sums, scratch: scratch,
                       input: pending)
    }
    let (dGamma, dBeta) = (FloatBuffer(count: C), FloatBuffer(count: C))
    let backward = sums.withUnsafeMutableBufferPointer { sp in
      sumsIn.withUnsafeMutableBufferPointer { ip in
        let red = benchReduction(z: y.base, bn, channels: C, relu6: true, sums: sp.baseAddress!)
        let redIn = benchReduction(z: z.base, bnIn, channels: C, relu6: true, sums: ip.baseAddress!)
        return minimumSeconds(reps: reps) {
          withBatchNormBackward(fromSums: sp.baseAddress!, da: da.base, red, dGamma: dGamma.base, dBeta: dBeta.base,
                                rows: outRows, channels: C, training: true) { og in
            depthwiseBackward(dx: dx.base, dw: dw.base, dy: da.base, x: z.base, w: w.base, s, scratch: scratch,
                              reduce: redIn, input: pending, outputGradient: og)
          }
        }
      }
    }
    print(String(format: "%-14@ fwd %7.3f ms %6.3f ns/out  bwd %7.3f ms %6.3f ns/in", name as NSString,
                 forward * 1e3, forward * 1e9 / Double(outRows * C), backward * 1e3, backward * 1e9 / Double(inRows * C)))
  }
}
