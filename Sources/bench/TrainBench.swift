// Training-step throughput (forward + backward + momentum update, synthetic input) of our fp32 and
// bf16 steps beside ../shared/baselines/torch_train_step.py's eager, torch.compile and bf16
// variants (channels-last) with the same settings, in one alternating run; each row of ours gets
// its ratio to the fastest PyTorch variant of its precision and its fraction of the GEMM peak.
import ArgumentParser
import BenchReport
import Cluster
import Foundation
import Kernels
import MobileNet
import Training

extension Precision: ExpressibleByArgument {}

struct TrainBench: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "train",
    abstract: "Images/s of one training step, ours (fp32, bf16) vs PyTorch eager, compiled and bf16, in one alternating run.")

  @Option(help: "Configurations as model:imageSize:batch:classes, comma separated.")
  var configs = "mobilenet_v2:224:32:1001,mobilenet_v2_035:96:64:10"
  @Option(help: "Compute threads (ours: kernels + BLAS; PyTorch: torch.set_num_threads; the GEMM peak).")
  var threads = 2
  @Option(help: "Timed steps (the median is reported).")
  var steps = 6
  @Option(help: "Untimed warm-up steps.")
  var warmup = 2
  @Option(name: [.customLong("compile-warmup"), .customLong("compile_warmup")],
          help: "Untimed warm-up steps of the torch.compile variants (the first steps compile for minutes).")
  var compileWarmup = 3
  /// 5: with 3, one slow round of either side decided a median (round 20's 0.35/96 fp32 ratios 2.97,
  /// 1.68, 1.98 against torch.compile, whose own steps ranged 0.09–0.29 s within one run).
  @Option(help: "Rounds; each runs every row once, ours first, so the machine's noise hits all rows alike; medians.")
  var rounds = 5
  @Option(help: "Our precisions, comma separated (fp32, bf16); a row the step cannot run is reported as absent.")
  var precisions = "fp32,bf16"
  @Option(name: [.customLong("torch-variants"), .customLong("torch_variants")],
          help: "PyTorch variants, comma separated: \(TorchVariant.allCases.map(\.rawValue).joined(separator: ", ")).")
  var torchVariants = TorchVariant.allCases.map(\.rawValue).joined(separator: ",")
  @Option(name: [.customLong("gemm-size"), .customLong("gemm_size")],
          help: "Side of the square sgemm that measures the fp32 peak.")
  var gemmSize = 2048
  @Option(help: "Python with torch + torchvision for the baseline; empty to skip it.")
  var python = "\(NSHomeDirectory())/bench-venv/bin/python"
  @Option(help: "The baseline script.")
  var baseline = "../shared/baselines/torch_train_step.py"

  func validate() throws {
    func check(_ ok: Bool, _ flag: String, _ value: Any, _ range: String) throws {
      if !ok { throw ValidationError("--\(flag) \(value): must be \(range)") }
    }
    try check(threads >= 1, "threads", threads, "≥ 1")
    try check(steps >= 1, "steps", steps, "≥ 1")
    try check(warmup >= 0, "warmup", warmup, "≥ 0")
    try check(compileWarmup >= 1, "compile-warmup", compileWarmup, "≥ 1 (compilation must stay out of the timed steps)")
    try check(rounds >= 1, "rounds", rounds, "≥ 1")
    try check((64...8192).contains(gemmSize), "gemm-size", gemmSize, "in 64...8192")
    _ = try precisionList()
    _ = try variantList()
  }

  func precisionList() throws -> [PrecisionClass] {
    let list = try precisions.split(separator: ",").map { p -> PrecisionClass in
      guard let v = PrecisionClass(rawValue: String(p)) else { throw ValidationError("--precisions \(precisions): '\(p)' is not fp32 or bf16") }
      return v
    }
    guard !list.isEmpty else { throw ValidationError("--precisions is empty") }
    return list
  }

  func variantList() throws -> [TorchVariant] {
    try torchVariants.split(separator: ",").map { v in
      guard let t = TorchVariant(rawValue: String(v)) else {
        throw ValidationError("--torch-variants \(torchVariants): '\(v)' is not one of \(TorchVariant.allCases.map(\.rawValue).joined(separator: ", "))")
      }
      return t
    }
  }

  func run() throws {
    Compute.setThreads(threads)
    let list = try BenchConfig.parseList(configs)  // bad input fails before any output
    let ours = try precisionList(), variants = try variantList()
    let cpu = CPUDescription(cpuinfo: (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "")
    print("cpu: \(cpu.model); flags: \(cpu.flags.joined(separator: " "))")
    print("\(KernelISA.summary); \(GemmChoice.summary)")
    print("threads=\(threads) steps=\(steps) (median) warmup=\(warmup) compile-warmup=\(compileWarmup) rounds=\(rounds): "
          + "each round runs every row once (ours, then PyTorch, then the GEMM peak); figures are medians over rounds, "
          + "the GEMM peak the best round")
    let torchReady = !python.isEmpty && FileManager.default.isExecutableFile(atPath: python) && FileManager.default.fileExists(atPath: baseline)
    if !torchReady && !variants.isEmpty {
      print("note: PyTorch rows skipped (needs \(python) with torch and \(baseline); see ../shared/baselines/README.md)")
    }
    // The bf16 row needs a step with --precision (issue 12 item 1); asked once, answered in the table.
    let bf16Absent: String? = ours.contains(.bf16) && !childSupportsPrecision()
      ? "absent: this build's `bench train-one` has no --precision option (no bf16 step yet)" : nil

    for c in list {
      let config = try ModelConfig(modelName: c.model, numClasses: c.classes, imageSize: c.size)
      let net = MobileNetV2(config: config, seed: 1)
      let flopsPerImage = net.trainStepFLOPsPerImage
      print("\n== \(c.model) \(c.size)² batch \(c.batch) classes \(c.classes): "
            + String(format: "%.2f GFLOP per image per training step (forward %.1f MMAC × 2 FLOP/MAC × 3 for forward + backward)",
                     Double(flopsPerImage) / 1e9, Double(net.forwardMACsPerImage) / 1e6))
      var oursRuns = [PrecisionClass: [Measure]](), torchRuns = [TorchVariant: [Measure]]()
      var notes = [String: String](), peaks: [Double] = []
      for round in 0..<rounds {
        for p in ours {
          if p == .bf16, let absent = bf16Absent { notes["ours bf16"] = absent; continue }
          let extra = p == .fp32 ? [] : ["--precision", p.rawValue]  // fp32 is the step's default
          let out = try runProcess(CommandLine.arguments[0], ["train-one", "--model", c.model, "--size", "\(c.size)",
            "--batch", "\(c.batch)", "--classes", "\(c.classes)", "--threads", "\(threads)", "--steps", "\(steps)",
            "--warmup", "\(warmup)"] + extra)
          guard let ips = BenchMath.value("images_per_s", in: out) else { throw ValidationError("bench train-one printed no result:\n\(out)") }
          // A bf16 request on a CPU without AVX512-BF16 runs fp32 and says so: report it, never as bf16.
          if p == .bf16, out.contains("precision fp32") {
            notes["ours bf16"] = "fell back to fp32: " + (out.split(separator: "\n").first { $0.hasPrefix("note:") }.map(String.init) ?? "")
            continue
          }
          oursRuns[p, default: []].append(Measure(ips: ips, rssMiB: peakRSS(out)))
        }
        if torchReady {
          for v in variants where round == 0 || torchRuns[v] != nil {  // a variant that failed once is not retried
            switch try runBaseline(config: config, batch: c.batch, variant: v) {
            case .success(let m): torchRuns[v, default: []].append(m)
            case .failure(let why): notes["torch \(v.rawValue)"] = "failed: \(why)"; torchRuns[v] = nil
            }
          }
        }
        peaks.append(sgemmPeak())
      }
      report(flopsPerImage: flopsPerImage, ours: ours, oursRuns: oursRuns, variants: variants, torchRuns: torchRuns,
             notes: notes, peaks: peaks)
    }
  }

  struct Measure {
    var ips: Double
    var rssMiB: Double
  }

  /// The table of one configuration: PyTorch rows, then ours with the ratio, roofline and RSS.
  func report(flopsPerImage: Int, ours: [PrecisionClass], oursRuns: [PrecisionClass: [Measure]], variants: [TorchVariant],
              torchRuns: [TorchVariant: [Measure]], notes: [String: String], peaks: [Double]) {
    func perRound(_ v: [Double]) -> String { v.map { String(format: "%.1f", $0) }.joined(separator: " ") }
    let fp32Peak = BenchMath.peak(ofRounds: peaks)
    print(String(format: "  fp32 GEMM peak: %.1f GFLOP/s (the fastest of OpenBLAS sgemm and our kernel on %d² and %dx%dx%d, %d threads as the kernels split it; rounds: %@)",
                 fp32Peak, gemmSize, Self.lateRows, Self.lateK, Self.lateN, threads, perRound(peaks) as NSString))
    var torchMedian = [TorchVariant: Double](), torchRSS = [TorchVariant: Double]()
    for v in variants {
      let name = "torch \(v.rawValue)"
      guard let runs = torchRuns[v], !runs.isEmpty else {
        print("  \(name.padding(toLength: 20, withPad: " ", startingAt: 0)) \(notes[name] ?? "not run")")
        continue
      }
      torchMedian[v] = BenchMath.median(runs.map(\.ips))
      torchRSS[v] = BenchMath.median(runs.map(\.rssMiB))
      print("  \(name.padding(toLength: 20, withPad: " ", startingAt: 0)) "
            + String(format: "%8.1f img/s  peak_rss=%.0fMiB  rounds: %@", torchMedian[v]!, torchRSS[v]!, perRound(runs.map(\.ips)) as NSString))
    }
    for p in ours {
      let name = "ours \(p.rawValue)"
      let label = name.padding(toLength: 20, withPad: " ", startingAt: 0)
      guard let runs = oursRuns[p], !runs.isEmpty else { print("  \(label) \(notes[name] ?? "not run")"); continue }
      let ips = BenchMath.median(runs.map(\.ips)), rss = BenchMath.median(runs.map(\.rssMiB))
      let gflops = BenchMath.gflops(flopsPerImage: flopsPerImage, imagesPerSecond: ips)
      let peak = p == .fp32 ? fp32Peak : fp32Peak * BenchMath.bf16PeakOverFP32
      let peakSource = p == .fp32 ? "measured sgemm peak" : "2 × the measured sgemm peak, theoretical AVX512-BF16"
      var line = "  \(label) " + String(format: "%8.1f img/s  peak_rss=%.0fMiB  rounds: %@  %.1f GFLOP/s", ips, rss,
                                         perRound(runs.map(\.ips)) as NSString, gflops)
      if let best = BenchMath.best(of: torchMedian, for: p) {
        let ratio = BenchMath.ratio(ours: ips, baseline: best.imagesPerSecond)
        let roundRatios = zip(runs, torchRuns[best.variant] ?? []).map { String(format: "%.2f", $0.ips / $1.ips) }.joined(separator: " ")
        line += String(format: "  ratio_vs_best_torch=%.2f (vs %@; rounds: %@)", ratio, best.variant.rawValue as NSString, roundRatios as NSString)
        line += String(format: "  rss_vs_torch=%.0f/%.0fMiB", rss, torchRSS[best.variant] ?? .nan)
      } else {
        line += "  ratio_vs_best_torch=n/a (no PyTorch \(p.rawValue) variant ran)"
      }
      line += String(format: "  roofline=%.0f%% (of %.0f GFLOP/s, %@)", BenchMath.rooflinePercent(gflops: gflops, peakGflops: peak), peak,
                     peakSource as NSString)
      print(line)
    }
  }

  /// Whether `bench train-one` of this build takes --precision.
  func childSupportsPrecision() -> Bool {
    ((try? runProcess(CommandLine.arguments[0], ["train-one", "--help"])) ?? "").contains("--precision")
  }

  /// The fp32 GEMM peak, as our kernels run GEMMs: rows split over `threads`, one single-threaded
  /// OpenBLAS sgemm or our kernel per slice (pointwiseForward); the best of a few repetitions of each,
  /// on a large square and on a late-layer product whose weights stay in cache (our kernel does not
  /// block K, so the square understates it: on Zen 5 it reaches 2× OpenBLAS's Haswell kernel there).
  func sgemmPeak() -> Double {
    var best = 0.0
    defer { GemmChoice.forced = nil }
    for (m, k, n) in [(gemmSize, gemmSize, gemmSize), (Self.lateRows, Self.lateK, Self.lateN)] {
      let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k), b = UnsafeMutablePointer<Float>.allocate(capacity: k * n)
      let c = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
      defer { a.deallocate(); b.deallocate(); c.deallocate() }
      var rng = RandomState(seed: 3)
      for i in 0..<(m * k) { a[i] = rng.uniform() - 0.5 }
      for i in 0..<(k * n) { b[i] = rng.uniform() - 0.5 }
      for _ in 0..<Self.gemmRepetitions {
        for impl in GemmImplementation.allCases {
          GemmChoice.forced = impl
          let t0 = DispatchTime.now().uptimeNanoseconds
          pointwiseForward(y: c, x: a, w: b, rows: m, inChannels: k, outChannels: n)
          let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
          best = max(best, BenchMath.gemmFLOPs(m: m, n: n, k: k) / dt / 1e9)
        }
      }
    }
    return best
  }
  static let (lateRows, lateK, lateN) = (4096, 384, 320)
  static let gemmRepetitions = 5

  enum BaselineResult { case success(Measure), failure(String) }

  func runBaseline(config: ModelConfig, batch: Int, variant: TorchVariant) throws -> BaselineResult {
    let out = try runProcess("/usr/bin/env", ["python3", "-c", Self.rssWrapper, python, baseline,
      "--width", "\(config.depthMultiplier)", "--res", "\(config.imageSize)", "--batch", "\(batch)",
      "--classes", "\(config.numClasses)", "--threads", "\(threads)", "--steps", "\(steps)",
      "--warmup", "\(variant.compiles ? compileWarmup : warmup)"] + variant.flags)
    guard let ips = BenchMath.value("images_per_s", in: out) else {
      let lines = out.split(separator: "\n").filter { !$0.hasPrefix("peak_rss_kib") }
      return .failure(lines.last { $0.contains("Error") }.map(String.init) ?? lines.last.map(String.init) ?? "no output")
    }
    return .success(Measure(ips: ips, rssMiB: peakRSS(out)))
  }

  /// Runs a command and reports the child's peak RSS (ru_maxrss of the waited child) as `peak_rss_kib N`.
  static let rssWrapper = """
    import resource, subprocess, sys
    r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    sys.stdout.write(r.stdout); sys.stdout.write(r.stderr)
    print("peak_rss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """

  func peakRSS(_ out: String) -> Double {
    BenchMath.value("peak_rss_kib", in: out).map { $0 / 1024 } ?? .nan
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
  @Option(help: ArgumentHelp("Compare a kernel switch off (A) and on (B) in this one process: the timed steps alternate A, B, B, A, … and each side's step and per-layer medians are printed. One of \(KernelSwitch.names).",
                             valueName: "switch"))
  var alternate: KernelSwitch?

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
    if resolved.precision == .bf16, !net.float32LayersInBF16.isEmpty {
      print("bf16: float32 kept for \(net.float32LayersInBF16.count) memory-bound layers (\(BF16Float32Expands.environmentVariable)=0 rounds them too)")
    }
    print(GemmChoice.summary)
    var rng = RandomState(seed: 7)
    let input = net.inputBuffer(batch: batch)
    for i in 0..<(batch * size * size * 3) { input[i] = rng.uniform() * 2 - 1 }
    let labels = net.labelBuffer(batch: batch)
    for i in 0..<batch { labels[i] = Int32(i % classes) }
    if let alternate { return try runAlternating(trainStep, net: net, rng: &rng, switch: alternate) }
    var times: [Double] = []
    for i in 0..<(warmup + steps) {
      if i == warmup { Profile.reset(); Profile.enabled = profile }
      let t0 = DispatchTime.now().uptimeNanoseconds
      try trainStep.run(batch: batch, lr: 0.01, step: i, rng: &rng)
      let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
      if i >= warmup { times.append(dt) }
    }
    // Every timed step in order, so a slow first step (page faults, first-use set-up) shows.
    print("step_s each=" + times.map { String(format: "%.3f", $0) }.joined(separator: ","))
    times.sort()
    if profile {
      let total = times.reduce(0, +)
      print("per-layer profile over \(steps) steps (seconds per step, share of step time):")
      for s in Profile.Section.allCases {
        let f = (Profile.forward[s] ?? 0) / Double(steps), b = (Profile.backward[s] ?? 0) / Double(steps)
        if f + b == 0 { continue }
        print(String(format: "  %-26@ fwd %.4f  bwd %.4f  (%4.1f%%)", s.rawValue as NSString, f, b, 100 * (f + b) * Double(steps) / total))
      }
      print("per layer (milliseconds per step; the layer's conv, BN and the fused passes inside them):")
      for (i, l) in net.layerSummaries.enumerated() {
        let f = (Profile.layerForward[i] ?? 0) * 1000 / Double(steps), b = (Profile.layerBackward[i] ?? 0) * 1000 / Double(steps)
        let name = l.scope.replacingOccurrences(of: MobileNetV2.scopePrefix + "/", with: "")
        // (Foundation on Linux ignores the width of %@: pad in Swift.)
        let label = name.padding(toLength: 28, withPad: " ", startingAt: 0) + " " + l.kind.padding(toLength: 9, withPad: " ", startingAt: 0)
        print(String(format: "  %2d %@ %4d -> %4d  %3d² s%d  fwd %6.2f  bwd %6.2f", i, label as NSString,
                     l.inChannels, l.outChannels, l.inSize, l.stride, f, b))
      }
    }
    let med = times[times.count / 2]
    print(String(format: "step_s median=%.4f min=%.4f max=%.4f", med, times.first!, times.last!))
    print(String(format: "images_per_s %.2f", Double(batch) / med))
    printMemory()
  }

  /// `--alternate`: the warm-up steps with the switch on, then `steps` timed steps per side in the
  /// order A B B A A B …, where A has the switch off; one binary and one process, so code layout, memory
  /// placement and the machine's slow drifts are the same for both sides. Prints each side's step
  /// times and median, and the per-layer medians (milliseconds) of both sides with B − A.
  func runAlternating(_ trainStep: TrainStep, net: MobileNetV2, rng: inout RandomState, switch sw: KernelSwitch) throws {
    let saved = sw.isOn
    defer { sw.set(saved) }
    var step = 0
    func timedStep() throws -> Double {
      let t0 = DispatchTime.now().uptimeNanoseconds
      try trainStep.run(batch: batch, lr: 0.01, step: step, rng: &rng)
      step += 1
      return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }
    sw.set(true)
    for _ in 0..<warmup { _ = try timedStep() }
    Profile.enabled = true
    let layers = net.layerSummaries.count
    var times: [[Double]] = [[], []], forward = [[[Double]]](repeating: [], count: 2), backward = forward
    for i in 0..<(2 * steps) {
      let side = (i % 4 == 0 || i % 4 == 3) ? 0 : 1
      sw.set(side == 1)
      Profile.reset()
      times[side].append(try timedStep())
      forward[side].append((0..<layers).map { (Profile.layerForward[$0] ?? 0) * 1000 })
      backward[side].append((0..<layers).map { (Profile.layerBackward[$0] ?? 0) * 1000 })
    }
    Profile.enabled = false
    print("alternate \(sw.rawValue): A = off, B = on, \(steps) steps each in the order A B B A …")
    for (side, name) in ["A", "B"].enumerated() {
      print("step_s \(name) each=" + times[side].map { String(format: "%.3f", $0) }.joined(separator: ","))
    }
    let (a, b) = (BenchMath.median(times[0]), BenchMath.median(times[1]))
    print(String(format: "step_s median A=%.4f B=%.4f (B/A %.3f)", a, b, b / a))
    print("per layer (milliseconds, median over each side's steps): fwd A B (B−A)  bwd A B (B−A)")
    var sums = [Double](repeating: 0, count: 4)
    for (i, l) in net.layerSummaries.enumerated() {
      let v = [BenchMath.median(forward[0].map { $0[i] }), BenchMath.median(forward[1].map { $0[i] }),
               BenchMath.median(backward[0].map { $0[i] }), BenchMath.median(backward[1].map { $0[i] })]
      for j in 0..<4 { sums[j] += v[j] }
      let name = l.scope.replacingOccurrences(of: MobileNetV2.scopePrefix + "/", with: "").padding(toLength: 28, withPad: " ", startingAt: 0)
      print(String(format: "  %2d %@ fwd %6.2f %6.2f (%+.2f)  bwd %6.2f %6.2f (%+.2f)", i, name as NSString,
                   v[0], v[1], v[1] - v[0], v[2], v[3], v[3] - v[2]))
    }
    print(String(format: "  sums                            fwd %6.2f %6.2f (%+.2f)  bwd %6.2f %6.2f (%+.2f)",
                 sums[0], sums[1], sums[1] - sums[0], sums[2], sums[3], sums[3] - sums[2]))
    printMemory()
  }

  func printMemory() {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    print("peak_rss_kib \(usage.ru_maxrss)")
    if let huge = HugePages.residentKiB { print("huge_pages_kib \(huge)") }
  }
}

/// The kernel switches `bench train-one --alternate` can flip between steps (each also set at start-up
/// by its environment variable).
enum KernelSwitch: String, ExpressibleByArgument, CaseIterable {
  case tileInput = "MNV2_TILE_INPUT", fusedExpand = "MNV2_FUSED_EXPAND", scaledExpand = "MNV2_SCALED_EXPAND"
  case prefetch = "MNV2_PREFETCH", stream = "MNV2_STREAM", balance = "MNV2_BALANCE", streamAhead = "MNV2_STREAM_AHEAD"
  case bf16Float32Expand = "MNV2_BF16_FP32_EXPAND", transposedWeightGradient = "MNV2_DW_TRANSPOSED"
  case fusedScaledExpand = "MNV2_FUSED_SCALED_EXPAND"
  static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }
  var isOn: Bool {
    switch self {
    case .tileInput: ActivatedInputTiles.enabled
    case .fusedExpand: FusedExpandForward.enabled
    case .scaledExpand: ScaledExpandBackward.enabled
    case .prefetch: NextBlockPrefetch.enabled
    case .stream: StreamingStores.enabled
    case .balance: BalancedChunks.enabled
    case .streamAhead: StreamAhead.enabled
    case .bf16Float32Expand: BF16Float32Expands.enabled
    case .transposedWeightGradient: TransposedWeightGradient.enabled
    case .fusedScaledExpand: FusedScaledExpandBackward.enabled
    }
  }
  func set(_ on: Bool) {
    switch self {
    case .tileInput: ActivatedInputTiles.enabled = on
    case .fusedExpand: FusedExpandForward.enabled = on
    case .scaledExpand: ScaledExpandBackward.enabled = on
    case .prefetch: NextBlockPrefetch.enabled = on
    case .stream: StreamingStores.enabled = on
    case .balance: BalancedChunks.enabled = on
    case .streamAhead: StreamAhead.enabled = on
    case .bf16Float32Expand: BF16Float32Expands.enabled = on
    case .transposedWeightGradient: TransposedWeightGradient.enabled = on
    case .fusedScaledExpand: FusedScaledExpandBackward.enabled = on
    }
  }
}
