// End-to-end scaling: the real trainer (launch → worker → TFRecords → JPEG decode → training step
// → ring allreduce overlapped with backward) on the same global batch, laid out as 1 rank × all
// threads, then as several single-threaded ranks. A rank layout is "ranks×threads"; the first one
// is the reference the others are compared with.
import ArgumentParser
import BenchReport
import DataPipeline
import Foundation
import Training

struct ScalingBench: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "scaling",
    abstract: "Images/s of whole training runs: N ranks × 1 thread vs 1 rank × N threads, same global batch.")

  @Option(help: "Configurations as model:imageSize:globalBatch:classes, comma separated.")
  var configs = "mobilenet_v2_035:96:64:10,mobilenet_v2:224:32:1001"
  @Option(help: "Rank layouts as ranks x threads per rank, comma separated; the first is the reference.")
  var layouts = "1x2,2x1,8x1"
  @Option(help: "Logged windows timed per run (the median window's images/s is reported).")
  var windows = 5
  @Option(help: "Steps per logged window.")
  var windowSteps = 4
  @Option(help: "Untimed windows first (ring set-up, loader start, first-touch page faults).")
  var warmupWindows = 1
  @Option(help: "Rounds; each runs every layout once, in order, so the machine's noise hits all layouts alike; medians.")
  var rounds = 5  // 3 left single slow rounds deciding the median (1.0/224 rounds spread 55–66 img/s on one layout)
  @Option(help: "Synthetic TF-slim TFRecords go here (written once, kept for later runs).")
  var dataDir = "/tmp/mnv2-bench-scaling"
  @Option(help: "Width×height of the synthetic JPEGs (ImageNet's typical size by default).")
  var jpegSize = "500x375"

  func run() throws {
    let sizes = jpegSize.split(separator: "x").compactMap { Int($0) }
    guard sizes.count == 2, sizes.allSatisfy({ $0 > 0 }) else { throw ValidationError("--jpeg-size must be WxH") }
    let plan = try layouts.split(separator: ",").map { spec -> (ranks: Int, threads: Int) in
      let p = spec.split(separator: "x").compactMap { Int($0) }
      guard p.count == 2, p[0] >= 1, p[1] >= 1 else { throw ValidationError("bad layout '\(spec)', expected RANKSxTHREADS") }
      return (p[0], p[1])
    }
    guard !plan.isEmpty else { throw ValidationError("--layouts is empty") }
    guard windows >= 1, windowSteps >= 1, warmupWindows >= 0, rounds >= 1 else {
      throw ValidationError("--windows, --window-steps and --rounds must be at least 1, --warmup-windows at least 0")
    }
    let steps = (warmupWindows + windows) * windowSteps
    let list = try BenchConfig.parseList(configs)  // bad input fails before any output
    let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let launch = bin.appendingPathComponent("launch").path
    guard FileManager.default.isExecutableFile(atPath: launch) else {
      throw ValidationError("\(launch) not found: build the launch and worker products first")
    }
    print("whole runs through launch on 127.0.0.1: \(steps) steps each, images/s = median of \(windows) windows of "
          + "\(windowSteps) steps after \(warmupWindows) warm-up window(s); synthetic \(sizes[0])×\(sizes[1]) JPEG TFRecords; "
          + "median of \(rounds) alternating round(s)")
    print("config                        layout   batch/rank   img/s   vs \(plan[0].ranks)x\(plan[0].threads)   rounds")
    for c in list {
      let (size, batch, classes) = (c.size, c.batch, c.classes)  // batch: the global batch
      // One epoch covers the whole run, so no run pays an epoch restart the others do not.
      let data = try dataset(examples: steps * batch, classes: min(classes, Self.syntheticClasses),
                             width: sizes[0], height: sizes[1])
      for (ranks, _) in plan where batch % ranks != 0 {
        throw ValidationError("global batch \(batch) is not divisible by \(ranks) ranks")
      }
      var perRound = [[Double]](repeating: [], count: plan.count)
      for _ in 0..<rounds {
        for (i, (ranks, threads)) in plan.enumerated() {
          perRound[i].append(try runJob(launch: launch, data: data, model: c.model, size: size, classes: classes,
                                        ranks: ranks, threads: threads, batchPerRank: batch / ranks, steps: steps))
        }
      }
      let medians = perRound.map(BenchMath.median)
      for (i, (ranks, threads)) in plan.enumerated() {
        let label = "\(c.model) \(size)² b\(batch)".padding(toLength: 28, withPad: " ", startingAt: 0)
        print("\(label)  \("\(ranks)x\(threads)".padding(toLength: 6, withPad: " ", startingAt: 0))"
              + "\(String(format: "%11d", batch / ranks))  \(String(format: "%6.1f", medians[i]))   "
              + String(format: "%5.1f%%", 100 * medians[i] / medians[0]) + "   "
              + perRound[i].map { String(format: "%.1f", $0) }.joined(separator: " "))
      }
    }
  }

  /// A directory of synthetic training TFRecords with at least `examples` examples.
  /// Classes of the synthetic images (labels 0…9; fewer when the model has fewer).
  static let syntheticClasses = 10

  func dataset(examples: Int, classes: Int, width: Int, height: Int) throws -> String {
    let dir = "\(dataDir)/\(width)x\(height)-\(examples)-k\(classes)"
    let marker = "\(dir)/.complete"
    if FileManager.default.fileExists(atPath: marker) { return dir }
    try? FileManager.default.removeItem(atPath: dir)
    var o = SyntheticOptions()
    o.examples = examples
    o.classes = classes
    o.width = width
    o.height = height
    o.seed = 1
    print("writing \(examples) synthetic \(width)×\(height) JPEG examples to \(dir)")
    // Eight shards: every layout up to 8 ranks reads whole files of its own.
    try Synthetic.write(to: dir, split: "train", shards: 8, options: o)
    _ = FileManager.default.createFile(atPath: marker, contents: nil)  // without it the data is only made again next time
    return dir
  }

  /// One whole training run; returns the median images/s of the timed windows (rank 0's metrics).
  func runJob(launch: String, data: String, model: String, size: Int, classes: Int, ranks: Int, threads: Int,
              batchPerRank: Int, steps: Int) throws -> Double {
    let work = FileManager.default.temporaryDirectory.appendingPathComponent("mnv2-scaling-\(getpid())-\(ranks)x\(threads)").path
    try? FileManager.default.removeItem(atPath: work)
    defer { try? FileManager.default.removeItem(atPath: work) }
    let args = ["--local-ranks", "\(ranks)", "--base-port", "0", "--threads", "\(threads)", "--log-dir", "\(work)/logs", "--",
                "--dataset-dir", data, "--model-name", model, "--num-classes", "\(classes)", "--image-size", "\(size)",
                "--batch-size", "\(batchPerRank)", "--max-train-steps", "\(steps)", "--log-every-n-steps", "\(windowSteps)",
                "--learning-rate", "0.01", "--save-checkpoints-steps", "\(steps * 10)", "--train-dir", "\(work)/train"]
    let p = Process()
    p.executableURL = URL(fileURLWithPath: launch)
    p.arguments = args
    let sink = Pipe()
    p.standardOutput = sink
    p.standardError = sink
    try p.run()
    let output = sink.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
      let tail = String(decoding: output, as: UTF8.self).split(separator: "\n").suffix(15).joined(separator: "\n")
      throw ValidationError("launch \(ranks)x\(threads) failed (status \(p.terminationStatus)):\n\(tail)")
    }
    let metrics = try String(contentsOfFile: "\(work)/train/\(Trainer.metricsFile)", encoding: .utf8)
    let ips = try metrics.split(separator: "\n").map { line -> Double in
      try JSONDecoder().decode(StepRecord.self, from: Data(line.utf8)).ips
    }
    guard ips.count >= warmupWindows + windows else {
      throw ValidationError("\(ranks)x\(threads): \(ips.count) logged windows, expected \(warmupWindows + windows)")
    }
    let timed = ips.dropFirst(warmupWindows).sorted()
    return timed[timed.count / 2]
  }
}
