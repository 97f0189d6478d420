// `bench`: throughput benchmarks printed beside their baselines (see docs/performance.md).
import ArgumentParser
import Dispatch
import Kernels
import MobileNet

@main
struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Benchmarks, each printed beside its baseline as a ratio.",
    subcommands: [TrainBench.self, TrainOne.self, ScalingBench.self, FusedBench.self, DepthwiseBench.self, GemmBench.self,
                  GemmBF16Bench.self])
}

/// One benchmark configuration, written model:imageSize:batch:classes.
struct BenchConfig {
  var model: String
  var size: Int
  var batch: Int
  var classes: Int

  /// Parses a comma-separated list; also checks each names a valid model.
  static func parseList(_ list: String) throws -> [BenchConfig] {
    try list.split(separator: ",").map { spec in
      let parts = spec.split(separator: ":").map(String.init)
      guard parts.count == 4, let size = Int(parts[1]), let batch = Int(parts[2]), let classes = Int(parts[3]) else {
        throw ValidationError("bad config '\(spec)', expected model:imageSize:batch:classes")
      }
      _ = try ModelConfig(modelName: parts[0], numClasses: classes, imageSize: size)
      return BenchConfig(model: parts[0], size: size, batch: batch, classes: classes)
    }
  }
}

/// The kernel benches' (fused, gemm-bf16) common flags, checked the same way.
func validateKernelBench(threads: Int, reps: Int, batch: Int) throws {
  guard (1...64).contains(threads) else { throw ValidationError("--threads must be in 1...64, got \(threads)") }
  guard (1...1000).contains(reps) else { throw ValidationError("--reps must be in 1...1000, got \(reps)") }
  guard (1...256).contains(batch) else { throw ValidationError("--batch must be in 1...256, got \(batch)") }
}

/// Seconds of the fastest of `reps` runs of `body`, after one untimed warm-up run.
func minimumSeconds(reps: Int, _ body: () -> Void) -> Double {
  body()
  var best = Double.infinity
  for _ in 0..<reps {
    let t0 = DispatchTime.now().uptimeNanoseconds
    body()
    best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
  }
  return best
}

/// Batch-norm parameters of `channels` channels in one buffer, as the kernel benches lay them out:
/// scale 1.1, `shift`, mean 0, 1/σ 1.2 (any values in range time the same).
func benchBatchNorm(channels C: Int, shift: Float) -> FloatBuffer {
  let b = FloatBuffer(count: 4 * C)
  for c in 0..<C { b[c] = 1.1; b[C + c] = shift; b[2 * C + c] = 0; b[3 * C + c] = 1.2 }
  return b
}

/// The BN backward reductions over z of a layer whose parameters `benchBatchNorm` made.
func benchReduction(z: UnsafePointer<Float>, _ bn: FloatBuffer, channels C: Int, relu6: Bool,
                    sums: UnsafeMutablePointer<Double>) -> BatchNormReduction {
  BatchNormReduction(z: z, scale: bn.base, shift: bn.base + C, mean: bn.base + 2 * C, invStd: bn.base + 3 * C,
                     relu6: relu6, sums: sums)
}
