// `bench`: throughput benchmarks printed beside their baselines (see docs/performance.md).
import ArgumentParser
import Dispatch
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
