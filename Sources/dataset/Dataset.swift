// `dataset`: convert image folders and IDX files to TF-slim TFRecords, write a synthetic
// dataset, inspect a split, and benchmark the input pipeline. All logic is in DataPipeline.
import ArgumentParser
import DataPipeline
import Foundation

@main
struct Dataset: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "TF-slim TFRecord datasets: convert, synth, inspect, bench.",
    subcommands: [ConvertCommand.self, SynthCommand.self, InspectCommand.self, BenchCommand.self])
}

struct ConvertCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "convert",
    abstract: "Image folder or IDX (.gz) files → TF-slim TFRecord shards.",
    discussion: """
      Image folder: root/<class>/*.jpg (the train split) or root/train/<class>/…, root/validation/<class>/….
      IDX: a directory holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
      t10k-labels-idx1-ubyte.gz (MNIST, Fashion-MNIST); t10k becomes the validation split.
      """)

  enum Format: String, ExpressibleByArgument { case folder, idx, fashionMnist = "fashion-mnist" }

  @Option(help: "Input: image folder or IDX directory.") var input: String
  @Option(help: "Output directory for the shards.") var output: String
  @Option(help: "Input format: folder, idx, or fashion-mnist (idx with class names).") var format: Format = .folder
  @Option(help: "Shards for the train split.") var trainShards = 8
  @Option(help: "Shards for the validation split.") var validationShards = 2
  @Option(help: "IDX only: resize images to N×N (bilinear).") var resize: Int?
  @Option(help: "IDX only: JPEG quality.") var quality = 95
  @Flag(help: "Image folder only: labels start at 1 (0 = background), as slim's ImageNet.") var backgroundClass = false

  mutating func run() throws {
    let fm = FileManager.default
    switch format {
    case .folder:
      var wrote = false
      for (split, shards) in [("train", trainShards), ("validation", validationShards)] {
        let hasSplitDir = fm.fileExists(atPath: (input as NSString).appendingPathComponent(split))
        if split == "validation" && !hasSplitDir { continue }
        let n = try Convert.imageFolder(input, split: split, to: output, shards: shards, backgroundClass: backgroundClass)
        print("\(split): \(n) examples in \(shards) shards in \(output)")
        wrote = true
      }
      if !wrote { throw ValidationError("nothing converted from \(input)") }
    case .idx, .fashionMnist:
      let names = format == .fashionMnist ? Convert.fashionMNISTClasses : nil
      for (prefix, split, shards) in [("train", "train", trainShards), ("t10k", "validation", validationShards)] {
        func file(_ kind: String) -> String {
          let base = (input as NSString).appendingPathComponent("\(prefix)-\(kind)")
          return fm.fileExists(atPath: base + ".gz") ? base + ".gz" : base
        }
        let n = try Convert.idx(images: file("images-idx3-ubyte"), labels: file("labels-idx1-ubyte"), split: split,
                                to: output, shards: shards, resize: resize, quality: quality, classNames: names)
        print("\(split): \(n) examples in \(shards) shards in \(output)")
      }
    }
  }
}

struct SynthCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "synth", abstract: "A small learnable synthetic JPEG dataset (class-dependent shapes and colours + noise).")

  @Option(help: "Output directory.") var output: String
  @Option(help: "Number of classes.") var classes = 10
  @Option(help: "Training examples.") var trainExamples = 1000
  @Option(help: "Validation examples.") var validationExamples = 200
  @Option(help: "Image side in pixels.") var imageSize = 64
  @Option(help: "Shards per split.") var shards = 2
  @Option(help: "Random seed.") var seed: UInt64 = 0
  @Flag(help: "Labels start at 1 (0 = background), as slim's ImageNet.") var backgroundClass = false

  mutating func run() throws {
    var o = SyntheticOptions()
    o.classes = classes; o.width = imageSize; o.height = imageSize; o.firstLabel = backgroundClass ? 1 : 0
    for (split, n, seedOffset) in [("train", trainExamples, UInt64(0)), ("validation", validationExamples, UInt64(1))] where n > 0 {
      o.examples = n
      o.seed = seed &+ seedOffset
      try Synthetic.write(to: output, split: split, shards: shards, options: o)
      print("\(split): \(n) examples, \(classes) classes, \(imageSize)×\(imageSize), \(shards) shards in \(output)")
    }
    try Convert.writeLabels((0..<classes).map { "class\($0)" }, firstLabel: o.firstLabel, to: output)
  }
}

struct InspectCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "inspect", abstract: "Per-file record counts, CRC status and the label histogram of a split.")

  @Argument(help: "Dataset directory or TFRecord file.") var path: String
  @Option(help: "Split (file-name prefix).") var split = "train"

  mutating func run() throws {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
      throw DataPipelineError.missingDirectory(path)
    }
    let files = isDir.boolValue ? try DatasetSource.detect(directory: path, split: split).files.map(\.path) : [path]
    var histogram = [Int64: Int](), total = 0, bad = 0
    for f in files {
      let r = Inspect.file(f)
      total += r.records
      for (l, c) in r.labels { histogram[l, default: 0] += c }
      if r.problem != nil { bad += 1 }
      print("\((f as NSString).lastPathComponent)  records=\(r.records)  crc=\(r.problem == nil ? "ok" : "ERROR: \(r.problem!)")")
    }
    print("total: \(total) records in \(files.count) files, \(bad) with problems")
    print("labels (\(histogram.count) distinct):")
    for (l, c) in histogram.sorted(by: { $0.key < $1.key }) { print("  \(l): \(c)") }
    if bad > 0 { throw ExitCode(1) }
  }
}
