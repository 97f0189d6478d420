// Training-step throughput (forward + backward + momentum update, synthetic input) beside
// ../shared/baselines/torch_train_step.py --channels-last with the same settings.
import ArgumentParser
import Cluster
import Foundation
import Kernels
import MobileNet
import Training

extension Precision: ExpressibleByArgument {}

struct TrainBench: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "train",
    abstract: "Images/s of one training step, ours vs PyTorch channels-last.")

  @Option(help: "Configurations as model:imageSize:batch:classes, comma separated.")
  var configs = "mobilenet_v2:224:32:1001,mobilenet_v2_035:96:64:10"
  @Option(help: "Compute threads (ours: kernels + BLAS; PyTorch: torch.set_num_threads).")
  var threads = 2
  @Option(help: "Timed steps (the median is reported).")
  var steps = 6
  @Option(help: "Untimed warm-up steps.")
  var warmup = 2
  @Option(help: "Rounds, each one run of ours then one of PyTorch (the machine's noise hits both alike); medians.")
  var rounds = 3
  @Option(help: "Python with torch + torchvision for the baseline; empty to skip it.")
  var python = "\(NSHomeDirectory())/bench-venv/bin/python"
  @Option(help: "The baseline script.")
  var baseline = "../shared/baselines/torch_train_step.py"
  @Option(help: "Our precisions, comma separated (fp32, bf16); each round runs them in this order, then PyTorch.")
  var precisions = "fp32"

  func run() throws {
    Compute.setThreads(threads)
    let list = try BenchConfig.parseList(configs)  // bad input fails before any output
    let precisionList = try precisions.split(separator: ",").map { p -> Precision in
      guard let v = Precision(rawValue: String(p)) else { throw ValidationError("--precisions \(precisions): \(p) is not fp32 or bf16") }
      return v
    }
    guard !precisionList.isEmpty else { throw ValidationError("--precisions is empty") }
    print("threads=\(threads) steps=\(steps) (median) warmup=\(warmup) rounds=\(rounds) (ours then PyTorch; medians over rounds)")
    print("config                          ours img/s   ours RSS MiB   torch img/s   torch RSS MiB   ratio   per-round ratios")
    for c in list {
      let (size, batch, classes) = (c.size, c.batch, c.classes)
      let config = try ModelConfig(modelName: c.model, numClasses: classes, imageSize: size)
      var oursRuns = [[Measure]](repeating: [], count: precisionList.count), torchRuns: [Measure] = []
      for _ in 0..<max(1, rounds) {
        for (pi, p) in precisionList.enumerated() {
          oursRuns[pi].append(try runChild(["bench", "train-one", "--model", c.model, "--size", "\(size)", "--batch", "\(batch)",
                                            "--classes", "\(classes)", "--threads", "\(threads)", "--steps", "\(steps)",
                                            "--warmup", "\(warmup)", "--precision", p.rawValue]))
        }
        if let t = try runBaseline(config: config, batch: batch) { torchRuns.append(t) }
      }
      let torch = torchRuns.count == rounds ? Measure.median(torchRuns) : nil
      for (pi, p) in precisionList.enumerated() {
        let ours = Measure.median(oursRuns[pi])
        let tag = p == .fp32 ? "" : " \(p.rawValue)"
        let name = "\(c.model) \(size)² b\(batch) k\(classes)\(tag)"
        let label = name.count >= 30 ? name + " " : name.padding(toLength: 30, withPad: " ", startingAt: 0)
        let ratio = torch.map { String(format: "%.2fx", ours.ips / $0.ips) } ?? "n/a"
        let perRound = torch == nil ? "" : zip(oursRuns[pi], torchRuns).map { String(format: "%.2f", $0.ips / $1.ips) }
          .joined(separator: " ")
        let tIps = torch.map { String(format: "%11.1f", $0.ips) } ?? "    skipped"
        let tRss = torch.map { String(format: "%15.0f", $0.rssMiB) } ?? "        skipped"
        print("\(label)  \(String(format: "%11.1f", ours.ips))   \(String(format: "%12.0f", ours.rssMiB))   \(tIps)   \(tRss)   \(ratio)   \(perRound)")
      }
      if precisionList.count > 1 {
        // Same-round ratios against the first precision: the fairest comparison under a noisy machine.
        for pi in 1..<precisionList.count {
          let r = zip(oursRuns[pi], oursRuns[0]).map { $0.ips / $1.ips }
          print("  \(precisionList[pi].rawValue)/\(precisionList[0].rawValue) per round: \(r.map { String(format: "%.3f", $0) }.joined(separator: " ")), median \(String(format: "%.3f", r.sorted()[r.count / 2]))")
        }
      }
    }
  }

  struct Measure {
    var ips: Double
    var rssMiB: Double
    /// Median images/s and median peak RSS of several runs.
    static func median(_ runs: [Measure]) -> Measure {
      func mid(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
      return Measure(ips: mid(runs.map(\.ips)), rssMiB: mid(runs.map(\.rssMiB)))
    }
  }

  /// Runs ourselves in a child process so each configuration's peak RSS is measured alone.
  func runChild(_ args: [String]) throws -> Measure {
    let out = try runProcess(CommandLine.arguments[0], Array(args.dropFirst()))
    guard let line = out.split(separator: "\n").last(where: { $0.hasPrefix("images_per_s") }),
          let ips = Double(line.split(separator: " ")[1]) else {
      throw ValidationError("benchmark child printed no result:\n\(out)")
    }
    return Measure(ips: ips, rssMiB: peakRSS(out))
  }

  func runBaseline(config: ModelConfig, batch: Int) throws -> Measure? {
    guard !python.isEmpty, FileManager.default.isExecutableFile(atPath: python),
          FileManager.default.fileExists(atPath: baseline) else {
      print("note: baseline skipped (needs \(python) with torch and \(baseline); see ../shared/baselines/README.md)")
      return nil
    }
    let out = try runProcess("/usr/bin/env", ["python3", "-c", Self.rssWrapper, python, baseline,
      "--width", "\(config.depthMultiplier)", "--res", "\(config.imageSize)", "--batch", "\(batch)",
      "--classes", "\(config.numClasses)", "--threads", "\(threads)", "--steps", "\(steps)",
      "--warmup", "\(warmup)", "--channels-last"])
    guard let line = out.split(separator: "\n").last(where: { $0.hasPrefix("images_per_s") }),
          let ips = Double(line.split(separator: " ")[1]) else {
      print("note: baseline failed:\n\(out)")
      return nil
    }
    return Measure(ips: ips, rssMiB: peakRSS(out))
  }

  /// Runs a command and reports the child's peak RSS (ru_maxrss of the waited child) as `peak_rss_kib N`.
  static let rssWrapper = """
    import resource, subprocess, sys
    r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    sys.stdout.write(r.stdout); sys.stdout.write(r.stderr)
    print("peak_rss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """

  func peakRSS(_ out: String) -> Double {
    guard let line = out.split(separator: "\n").last(where: { $0.hasPrefix("peak_rss_kib") }),
          let kib = Double(line.split(separator: " ")[1]) else { return .nan }
    return kib / 1024
  }

  func runProcess(_ exe: String, _ args: [String]) throws -> String {
    let p = Process()
    if exe.contains("/") { p.executableURL = URL(fileURLWithPath: exe) } else {
      p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    }
    p.arguments = exe.contains("/") ? args : [exe] + args
    // As launch does for workers (the libraries read these when they load).
    var env = ProcessInfo.processInfo.environment
    for (k, v) in computeLibraryDefaults where env[k] == nil { env[k] = v }
    p.environment = env
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
  }
}

/// One configuration, in this process: prints `images_per_s X` and `peak_rss_kib N`.
struct TrainOne: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "train-one",
    abstract: "Time training steps of one configuration (used by `bench train`).")
  @Option var model = "mobilenet_v2"
  @Option var size = 224
  @Option var batch = 32
  @Option var classes = 1001
  @Option var threads = 2
  @Option var steps = 6
  @Option var warmup = 2
  @Option(help: "fp32 or bf16 (falls back to fp32 with a note on a CPU without AVX512-BF16).")
  var precision = Precision.fp32
  @Flag(help: "Print time per layer type (forward/backward) over the timed steps.")
  var profile = false

  func run() throws {
    Compute.setThreads(threads)
    let config = try ModelConfig(modelName: model, numClasses: classes, imageSize: size)
    let net = MobileNetV2(config: config, seed: 1)
    let resolved = try PrecisionPolicy.resolve(precision)
    if let note = resolved.note { print("note: \(note)") }
    // The production step (momentum, weight decay, label smoothing as the trainer's defaults).
    let trainStep = TrainStep(model: net, optimizer: Optimizer(kind: .momentum, parameterCount: net.parameterCount),
                              hyper: StepHyperparameters(), precision: resolved.precision)
    print("precision \(resolved.precision.rawValue)")
    var rng = RandomState(seed: 7)
    let input = net.inputBuffer(batch: batch)
    for i in 0..<(batch * size * size * 3) { input[i] = rng.uniform() * 2 - 1 }
    let labels = net.labelBuffer(batch: batch)
    for i in 0..<batch { labels[i] = Int32(i % classes) }
    var times: [Double] = []
    for i in 0..<(warmup + steps) {
      if i == warmup { Profile.reset(); Profile.enabled = profile }
      let t0 = DispatchTime.now().uptimeNanoseconds
      try trainStep.run(batch: batch, lr: 0.01, step: i, rng: &rng)
      let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
      if i >= warmup { times.append(dt) }
    }
    times.sort()
    if profile {
      let total = times.reduce(0, +)
      print("per-layer profile over \(steps) steps (seconds per step, share of step time):")
      for s in Profile.Section.allCases {
        let f = (Profile.forward[s] ?? 0) / Double(steps), b = (Profile.backward[s] ?? 0) / Double(steps)
        if f + b == 0 { continue }
        print(String(format: "  %-26@ fwd %.4f  bwd %.4f  (%4.1f%%)", s.rawValue as NSString, f, b, 100 * (f + b) * Double(steps) / total))
      }
    }
    let med = times[times.count / 2]
    print(String(format: "step_s median=%.4f min=%.4f max=%.4f", med, times.first!, times.last!))
    print(String(format: "images_per_s %.2f", Double(batch) / med))
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    print("peak_rss_kib \(usage.ru_maxrss)")
  }
}
