// `dataset bench`: images/s of our train and eval preprocessing (JPEG bytes in memory →
// 224×224×3 float32 in [−1, 1]) with 1 thread and all threads, beside the Pillow baseline
// (../shared/baselines/jpeg_pipeline.py) on the same files, as a ratio per thread.
import ArgumentParser
import DataPipeline
import Dispatch
import Foundation

struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench", abstract: "Input-pipeline throughput beside Pillow (make bench-data).")

  @Option(help: "Folder of JPEGs (made by jpeg_pipeline.py --save-dir); generated here if missing.")
  var dir = "/tmp/mnv2-bench-jpegs"
  @Option(help: "Timed passes over all images (the median is reported).") var passes = 5
  @Option(help: "Threads for the all-threads figure (default: all cores).") var threads: Int?
  @Option(help: "Output side.") var size = 224
  @Option(help: "Python with Pillow for the baseline.") var python: String?
  @Option(help: "Path of jpeg_pipeline.py.") var baseline = "../shared/baselines/jpeg_pipeline.py"
  @Flag(help: "Training without colour distortion (what Pillow's train pipeline does).") var noColor = false
  @Flag(help: "Decode at full size always (no DCT scaling).") var noDctScaling = false

  @Option(help: "Instead: time one training epoch of the DataLoader over this dataset directory.")
  var loaderDir: String?
  @Option(help: "With --loader-dir: batch size.") var batchSize = 64

  mutating func run() throws {
    if let d = loaderDir { return try benchLoader(d) }
    let images = try loadOrMake()
    let all = threads ?? ProcessInfo.processInfo.activeProcessorCount
    let meanKiB = Double(images.reduce(0) { $0 + $1.count }) / Double(images.count) / 1024
    print("input: \(images.count) JPEGs from \(dir), mean \(String(format: "%.1f", meanKiB)) KiB; output \(size)×\(size)×3 float32")
    let pillowReady = baselineAvailable()
    if pillowReady {
      print("\(passes) rounds, each one pass of ours (1 thread) then one pass of Pillow (1 thread), so both see the same machine load; medians")
    } else {
      print("\(passes) passes; medians")
    }
    var ours1 = [String: [Double]](), pillow = [String: [Double]]()
    var scales = [String: Int]()
    for _ in 0..<passes {
      for (name, training) in [("train", true), ("eval", false)] {
        let (rates, s) = measure(images, training: training, threads: 1, passes: 1)
        ours1[name, default: []] += rates
        if training { for (k, v) in s { scales[k, default: 0] += v } }
      }
      if pillowReady, let r = runPillow() { for (k, v) in r { pillow[k, default: []].append(v) } }
    }
    func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
    func list(_ v: [Double]) -> String { v.map { String(format: "%.0f", $0) }.joined(separator: " ") }
    var oursAll = [String: Double]()
    for (name, training) in [("train", true), ("eval", false)] {
      print(String(format: "ours   %-11@ 1 thread   %7.1f img/s   passes: %@", name, median(ours1[name]!), list(ours1[name]!)))
      if all > 1 {
        let rates = measure(images, training: training, threads: all, passes: passes).0
        oursAll[name] = median(rates)
        print(String(format: "ours   %-11@ %d threads  %7.1f img/s (%.1f per thread)   passes: %@", name, all, median(rates),
                     median(rates) / Double(all), list(rates)))
      }
    }
    print("ours train DCT scales: " + scales.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
    guard pillowReady, !pillow.isEmpty else {
      print("Pillow baseline skipped: need --python (with Pillow and numpy) and \(baseline); see ../shared/baselines/README.md")
      return
    }
    for key in ["decode", "train", "train_draft", "eval"] where pillow[key] != nil {
      print(String(format: "pillow %-11@ 1 thread   %7.1f img/s   passes: %@", key, median(pillow[key]!), list(pillow[key]!)))
    }
    // Pillow on all cores: as many single-threaded processes at once (what a PyTorch DataLoader
    // with that many workers does); the fair partner of our all-threads figure.
    var pillowAll = [String: [Double]]()
    if all > 1 {
      for _ in 0..<passes {
        for (k, v) in runPillow(processes: all) { pillowAll[k, default: []].append(v) }
      }
      for key in ["train", "train_draft", "eval"] where pillowAll[key] != nil {
        print(String(format: "pillow %-11@ %d processes %6.1f img/s (%.1f per process)   passes: %@", key, all,
                     median(pillowAll[key]!), median(pillowAll[key]!) / Double(all), list(pillowAll[key]!)))
      }
    }
    print("per-thread ratios, ours ÷ Pillow (target ≥ 1.5):")
    for (name, key) in [("train", "train"), ("train", "train_draft"), ("eval", "eval")] {
      guard let base = pillow[key].map(median), base > 0 else { continue }
      // Each round's ours/Pillow pair ran back to back under the same load: the median of
      // the per-round ratios is the steadiest figure on a shared machine.
      let paired = zip(ours1[name]!, pillow[key]!).map { $0 / $1 }
      var line = String(format: "  %-5@ vs Pillow %-11@: 1 thread %.2f× (median of per-round ratios %.2f×)", name, key,
                        median(ours1[name]!) / base, median(paired))
      if let m = oursAll[name] {
        line += String(format: "; %d threads %.2f× Pillow's 1 thread", all, m / Double(all) / base)
        if let both = pillowAll[key].map(median), both > 0 {
          line += String(format: ", %.2f× Pillow's %d processes", m / both, all)
        }
      }
      print(line)
    }
  }

  /// Images/s of the whole loader (read, parse, decode, preprocess, batch) for one epoch.
  func benchLoader(_ directory: String) throws {
    var c = LoaderConfig(datasetDir: directory, split: "train", batchSize: batchSize, imageSize: size, training: true)
    c.decodeThreads = threads
    c.numClasses = Int(Int32.max)
    let loader = try DataLoader(c)
    let images = UnsafeMutablePointer<Float>.allocate(capacity: batchSize * size * size * 3)
    let labels = UnsafeMutablePointer<Int32>.allocate(capacity: batchSize)
    defer { images.deallocate(); labels.deallocate() }
    loader.start(epoch: 0)
    let start = DispatchTime.now().uptimeNanoseconds
    var n = 0
    while true {
      let got = try loader.next(images: images, labels: labels)
      if got == 0 { break }
      n += got
    }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    print(String(format: "loader: %d examples in %.2f s = %.1f img/s with %d decode threads (%@ sharding, %dx%d output)",
                 n, seconds, Double(n) / seconds, loader.decodeThreads, loader.shardingMode.rawValue, size, size))
  }

  func baselineAvailable() -> Bool {
    guard let py = python, FileManager.default.isExecutableFile(atPath: py),
          FileManager.default.fileExists(atPath: baseline) else { return false }
    let check = Process()
    check.executableURL = URL(fileURLWithPath: py)
    check.arguments = ["-c", "import PIL, numpy"]
    check.standardError = FileHandle.nullDevice
    guard (try? check.run()) != nil else { return false }
    check.waitUntilExit()
    return check.terminationStatus == 0
  }

  /// One pass of each Pillow pipeline: its `images_per_s` line as a dictionary.
  func runPillow() -> [String: Double]? {
    let result = runPillow(processes: 1)
    return result.isEmpty ? nil : result
  }

  /// `processes` Pillow runs started together; per pipeline the sum of their images/s (empty if any failed).
  func runPillow(processes: Int) -> [String: Double] {
    let runs = (0..<processes).map { _ in pillowProcess() }
    let started = runs.filter { (try? $0.process.run()) != nil }
    // Read one after another: each prints a few lines, far below a pipe's buffer, so none blocks.
    let outputs = started.map { String(decoding: $0.output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }
    started.forEach { $0.process.waitUntilExit() }
    let parsed = outputs.compactMap(parsePillow)
    guard parsed.count == processes else { return [:] }
    var total = [String: Double]()
    for r in parsed { for (k, v) in r { total[k, default: 0] += v } }
    return total
  }

  private func pillowProcess() -> (process: Process, output: Pipe) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python!)
    p.arguments = [baseline, "--dir", dir, "--passes", "1", "--warmup", "10"]
    let out = Pipe()
    p.standardOutput = out
    return (p, out)
  }

  private func parsePillow(_ text: String) -> [String: Double]? {
    var result = [String: Double]()
    for line in text.split(separator: "\n") {
      let words = line.split(separator: " ").map(String.init)
      if words.first == "decode", words.count > 1 { result["decode"] = Double(words[1]) }
      if words.first == "images_per_s" {
        for i in stride(from: 1, to: words.count - 1, by: 2) { result[words[i]] = Double(words[i + 1]) }
      }
    }
    return result.isEmpty ? nil : result
  }

  /// Images/s per pass, and the DCT scales used (training, first pass).
  func measure(_ images: [Data], training: Bool, threads: Int, passes: Int) -> ([Double], [String: Int]) {
    var options = PreprocessOptions(width: size, height: size, training: training)
    options.colorDistortion = !noColor
    options.dctScaling = !noDctScaling
    let workers = (0..<threads).map { _ in Preprocessor(options: options) }
    let floats = size * size * 3
    let outputs = (0..<threads).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: floats) }
    defer { outputs.forEach { $0.deallocate() } }
    func pass(_ p: Int, _ list: ArraySlice<Data>) {
      DispatchQueue.concurrentPerform(iterations: threads) { t in
        var i = list.startIndex + t
        while i < list.endIndex {
          var rng = ExampleRandom(seed: 0, epoch: p, stream: .augment, index: i)
          _ = try? list[i].withUnsafeBytes { try workers[t].process(jpeg: $0, rng: &rng, into: outputs[t]) }
          i += threads
        }
      }
    }
    pass(-1, images.prefix(20 * threads))  // warm-up
    var rates = [Double]()
    for p in 0..<passes {
      let start = DispatchTime.now().uptimeNanoseconds
      pass(p, images[...])
      rates.append(Double(images.count) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9))
    }
    var scales = [String: Int]()
    for w in workers { for (k, v) in w.scaleCounts { scales[k, default: 0] += v } }
    return (rates, scales)
  }

  /// The JPEGs in `dir`, or (when there are none) a generated set of 200 smooth 500×375 images.
  func loadOrMake() throws -> [Data] {
    let fm = FileManager.default
    let names = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).sorted()
      .filter { ["jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }
    if !names.isEmpty {
      return try names.map { try Data(contentsOf: URL(fileURLWithPath: (dir as NSString).appendingPathComponent($0))) }
    }
    print("note: no JPEGs in \(dir); writing 200 smooth synthetic 500×375 JPEGs there (photos from jpeg_pipeline.py --save-dir are more realistic)")
    try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var o = SyntheticOptions()
    o.width = 500; o.height = 375; o.quality = 90
    let codec = JPEGCodec()
    return try (0..<200).map { i in
      let px = Synthetic.image(index: i, options: o).pixels
      let data = try px.withUnsafeBytes { try codec.compress($0, width: 500, height: 375, input: .rgb, quality: 90,
                                                             subsampling: 2 /* TJSAMP_420 */) }
      try data.write(to: URL(fileURLWithPath: (dir as NSString).appendingPathComponent(String(format: "img%04d.jpg", i))))
      return data
    }
  }
}
