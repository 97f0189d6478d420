// `bench gemm`: our GEMM row kernels against cblas_sgemm on the 1×1-convolution shapes of
// mobilenet_v2 1.0/224 batch 32, for the three products of a layer (forward alone, forward with the
// BN statistics as training runs it, dx = dy·wᵀ, dw += xᵀ·dy), both split over the same threads
// (rows per thread, one single-threaded call each). Repetitions alternate ours and OpenBLAS so that
// load from other processes hits both alike; minimum and median per side. The last column is what
// Pointwise.swift's `useOwnGEMM` selects for that product.
import ArgumentParser
import Dispatch
import Foundation
import Kernels

struct GemmBench: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "gemm",
    abstract: "Own GEMM kernels vs cblas_sgemm on the 1x1 shapes of 1.0/224 b32 (GFLOP/s, min and median).")
  @Option(help: "Compute threads (1-64).") var threads = 2
  @Option(help: "Repetitions per measurement and implementation (1-1000).") var reps = 7
  @Option(help: "Other shapes instead, comma-separated MxKxN (rows x Ci x Co; default: the 1.0/224 list).") var shapes = ""

  /// (rows M = N·H·W, Ci, Co) of the 1×1 convolutions of 1.0/224 at batch 32.
  static let shapes = [(401408, 32, 16), (401408, 16, 96), (100352, 96, 24), (100352, 24, 144), (100352, 144, 24),
                       (25088, 144, 32), (25088, 32, 192), (25088, 192, 32), (6272, 384, 64), (1568, 960, 320)]

  func chosenShapes() throws -> [(Int, Int, Int)] {
    guard !shapes.isEmpty else { return Self.shapes }
    return try shapes.split(separator: ",").map { spec in
      let d = spec.split(separator: "x").compactMap { Int($0) }
      guard d.count == 3, d.allSatisfy({ $0 > 0 }), d[0] * max(d[1], d[2]) <= 1 << 28 else {
        throw ValidationError("bad shape '\(spec)', expected MxKxN with M·max(K, N) ≤ 2^28")
      }
      return (d[0], d[1], d[2])
    }
  }

  func validate() throws {
    _ = try chosenShapes()
    guard (1...64).contains(threads) else { throw ValidationError("--threads must be in 1...64, got \(threads)") }
    guard (1...1000).contains(reps) else { throw ValidationError("--reps must be in 1...1000, got \(reps)") }
  }

  /// Times body under each implementation, alternating; returns [own, blas] sorted milliseconds.
  func alternate(_ body: () -> Void) -> [[Double]] {
    var times: [[Double]] = [[], []]
    for impl in GemmImplementation.allCases { GemmChoice.forced = impl; body() }  // warm-up
    for _ in 0..<reps {
      for (i, impl) in GemmImplementation.allCases.enumerated() {
        GemmChoice.forced = impl
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        times[i].append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
      }
    }
    GemmChoice.forced = nil
    return times.map { $0.sorted() }
  }

  func run() throws {
    precondition(GemmImplementation.allCases == [.own, .blas])
    Compute.setThreads(threads)
    print(KernelISA.summary)
    GemmChoice.forced = nil
    print("\(GemmChoice.summary); the selected column is what training runs")
    print("threads=\(threads) reps=\(reps), alternating own/blas; GFLOP/s from the minimum (median) time; ratio = blas/own time (min)")
    print(String(format: "%-20@ %-9@ %16@ %16@ %6@  %@", "M x K x N" as NSString, "product" as NSString,
                 "own" as NSString, "blas" as NSString, "ratio" as NSString, "selected" as NSString))
    let scratch = Scratch()
    var rng = RandomState(seed: 5)
    for (m, ci, co) in try chosenShapes() {
      let x = FloatBuffer(count: m * ci), w = FloatBuffer(count: ci * co), dy = FloatBuffer(count: m * co)
      for b in [x, w, dy] { for i in 0..<b.count { b[i] = rng.uniform() - 0.5 } }
      let y = FloatBuffer(count: m * co), dx = FloatBuffer(count: m * ci), dw = FloatBuffer(count: ci * co)
      let shift = FloatBuffer(count: co)
      var sums = [Double](repeating: 0, count: 2 * co)
      let selection = pointwiseGemmSelection(rows: m, inChannels: ci, outChannels: co)
      let flops = 2.0 * Double(m) * Double(ci) * Double(co)
      func line(_ product: String, _ times: [[Double]], _ selected: GemmImplementation) {
        func rate(_ t: [Double]) -> String { String(format: "%6.1f (%6.1f)", flops / t[0] / 1e9, flops / t[t.count / 2] / 1e9) }
        print(String(format: "%-20@ %-9@ %16@ %16@ %5.2fx  %@", "\(m)x\(ci)x\(co)" as NSString, product as NSString,
                     rate(times[0]) as NSString, rate(times[1]) as NSString, times[1][0] / times[0][0], selected.rawValue as NSString))
      }
      line("fwd", alternate {
        pointwiseForward(y: y.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
      }, selection.forward)
      line("fwd+stats", alternate {
        pointwiseForward(y: y.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                         statisticsShift: shift.base, sums: &sums, scratch: scratch)
      }, selection.forward)
      // As the project layers run it: x is the depthwise's raw z, its BN + ReLU6 applied as read.
      let inScale = FloatBuffer(count: ci), inShift = FloatBuffer(count: ci)
      for c in 0..<ci { inScale[c] = 1 + 0.1 * rng.uniform(); inShift[c] = rng.uniform() - 0.5 }
      let pending = PendingBatchNorm(scale: inScale.base, shift: inShift.base, relu6: true)
      line("fwd+bn-in", alternate {
        pointwiseForward(y: y.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                         statisticsShift: shift.base, sums: &sums, scratch: scratch, input: pending)
      }, selection.forward)
      line("dx", alternate {
        pointwiseInputGradient(dx: dx.base, dy: dy.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
      }, selection.inputGradient)
      line("dw", alternate {
        pointwiseWeightGradient(dw: dw.base, dy: dy.base, x: x.base, rows: m, inChannels: ci, outChannels: co, scratch: scratch)
      }, selection.weightGradient)
    }
  }
}
