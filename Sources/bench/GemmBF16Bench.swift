// `bench gemm-bf16`: the generated vdpbf16ps GEMM (KernelsJIT) against cblas_sgemm on the 1×1
// shapes of mobilenet_v2 1.0/224 batch 32, threads splitting the rows as Pointwise.swift does.
// Three timings per shape: sgemm (fp32 `pointwiseForward`), the JIT GEMM on A already in bf16, and
// the JIT 1×1 as the model runs it (`pointwiseForwardBF16`: each block of x converted to bf16 first).
// Minimum over repetitions (the figure least disturbed by other processes on a shared machine).
import ArgumentParser
import Dispatch
import Foundation
import Kernels

struct GemmBF16Bench: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "gemm-bf16",
    abstract: "JIT bf16 GEMM vs cblas_sgemm on the 1x1 shapes of 1.0/224 b32 (GFLOP/s, minimum over repetitions).")
  @Option(help: "Compute threads (1-64).") var threads = 2
  @Option(help: "Repetitions per measurement (1-1000).") var reps = 5
  @Option(help: "Batch (1-256).") var batch = 32

  func validate() throws { try validateKernelBench(threads: threads, reps: reps, batch: batch) }

  func minTime(_ body: () -> Void) -> Double { minimumSeconds(reps: reps, body) }

  func run() throws {
    guard BF16JIT.isAvailable else {
      throw ValidationError("this CPU lacks \(BF16JIT.requiredFlags.joined(separator: "/")): no JIT bf16 GEMM to time")
    }
    Compute.setThreads(threads)
    print("threads=\(threads) batch=\(batch) reps=\(reps) (minimum); GFLOP/s = 2·rows·K·N / time")
    func pad(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
    print("rows x K x N".padding(toLength: 24, withPad: " ", startingAt: 0) + pad("sgemm", 9) + pad("jit-gemm", 10)
          + pad("jit-1x1", 10) + pad("gemm/sg", 9) + pad("1x1/sg", 9) + "   | backward: sgemm dx+dw, jit dx+dw, ratio")
    // (spatial side, K, N): the 1×1 layers of 1.0/224 (expand, project, last conv).
    let shapes = [(112, 32, 16), (112, 16, 96), (56, 24, 144), (56, 144, 24), (28, 192, 32), (14, 384, 64),
                  (7, 960, 320), (7, 320, 1280)]
    var rng = RandomState(seed: 5)
    var totals = (sgemm: 0.0, gemm: 0.0, conv: 0.0, sgemmBack: 0.0, jitBack: 0.0)
    for (hw, k, n) in shapes {
      let rows = batch * hw * hw
      let x = FloatBuffer(count: rows * k), w = FloatBuffer(count: k * n), y = FloatBuffer(count: rows * n)
      for b in [x, w] { for i in 0..<b.count { b[i] = rng.uniform() - 0.5 } }
      let packed = BF16PackedMatrix(k: k, n: n)
      packBF16B(packed, w.base, transposed: false)
      let lda = 2 * packed.kPairs
      let a = UnsafeMutablePointer<UInt16>.allocate(capacity: rows * lda)
      defer { a.deallocate() }
      convertRowsToBF16(a, stride: lda, x.base, stride: k, rows: rows, columns: k)
      let workspace = BF16Workspace(), scratch = Scratch()
      let tS = minTime { pointwiseForward(y: y.base, x: x.base, w: w.base, rows: rows, inChannels: k, outChannels: n) }
      let tG = minTime {
        parallelChunks(rows, minPerChunk: 64) { _, r in
          bf16Gemm(c: y.base + r.lowerBound * n, ldc: n, a: a + r.lowerBound * lda, lda: lda, b: packed, rows: r.count,
                   accumulate: false)
        }
      }
      let tC = minTime { pointwiseForwardBF16(y: y.base, x: x.base, w: packed, rows: rows, scratch: scratch, workspace: workspace) }
      // Backward of the same layer (dy = y): dw += xᵀ·dy and dx = dy·wᵀ, without the fused reductions.
      let dx = FloatBuffer(count: rows * k), dw = FloatBuffer(count: k * n)
      let wT = BF16PackedMatrix(k: n, n: k)
      packBF16B(wT, w.base, transposed: true)
      let tSB = minTime {
        pointwiseBackward(dx: dx.base, dw: dw.base, dy: y.base, x: x.base, w: w.base, rows: rows, inChannels: k,
                          outChannels: n, scratch: scratch)
      }
      let tJB = minTime {
        pointwiseBackwardBF16(dx: dx.base, dw: dw.base, dy: y.base, x: x.base, wT: wT, rows: rows, scratch: scratch,
                              workspace: workspace)
      }
      let flop = 2.0 * Double(rows * k * n)
      let tJW = minTime {
        pointwiseBackwardBF16(dx: nil, dw: dw.base, dy: y.base, x: x.base, wT: wT, rows: rows, scratch: scratch,
                              workspace: workspace)
      }
      let tSW = minTime {
        pointwiseBackward(dx: nil, dw: dw.base, dy: y.base, x: x.base, w: w.base, rows: rows, inChannels: k,
                          outChannels: n, scratch: scratch)
      }
      print(String(format: "   dw only: sgemm %.2f ms, jit %.2f ms; dx only: sgemm %.2f ms, jit %.2f ms", tSW * 1e3, tJW * 1e3, (tSB - tSW) * 1e3, (tJB - tJW) * 1e3))
      totals.sgemm += tS; totals.gemm += tG; totals.conv += tC; totals.sgemmBack += tSB; totals.jitBack += tJB
      print("\(rows)x\(k)x\(n)".padding(toLength: 24, withPad: " ", startingAt: 0)
            + String(format: "%9.1f %9.1f %9.1f %8.2fx %8.2fx   | %7.1f %7.1f %6.2fx", flop / tS / 1e9, flop / tG / 1e9,
                     flop / tC / 1e9, tS / tG, tS / tC, 2 * flop / tSB / 1e9, 2 * flop / tJB / 1e9, tSB / tJB))
    }
    print(String(format: "all shapes, time: sgemm %.2f ms, jit-gemm %.2f ms (%.2fx), jit-1x1 %.2f ms (%.2fx)",
                 totals.sgemm * 1e3, totals.gemm * 1e3, totals.sgemm / totals.gemm, totals.conv * 1e3, totals.sgemm / totals.conv))
    print(String(format: "all shapes, backward (dx + dw) time: sgemm %.2f ms, jit %.2f ms (%.2fx)",
                 totals.sgemmBack * 1e3, totals.jitBack * 1e3, totals.sgemmBack / totals.jitBack))
  }
}
