// `bench`: throughput benchmarks printed beside their baselines (see docs/performance.md).
import ArgumentParser

@main
struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Benchmarks, each printed beside its baseline as a ratio.",
    subcommands: [TrainBench.self, TrainOne.self, ScalingBench.self])
}
