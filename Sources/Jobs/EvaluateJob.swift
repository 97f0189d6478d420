// `evaluate` and `predict`: score checkpoints on a split, or classify single JPEGs.
import ArgumentParser
import Checkpoint
import DataPipeline
import Foundation
import Kernels
import MobileNet
import Observability
import Telemetry
import Training

public struct EvalFlags: ParsableArguments {
  public init() {}
  @Option(name: .seed("checkpoint-path"), help: "A checkpoint: .safetensors file, TensorFlow prefix (model.ckpt-N) or its .index/.data file, or a directory (its `checkpoint` state file, else its newest; all with --all).")
  public var checkpointPath: String
  @Option(name: .seed("dataset-dir"), help: "TF-slim TFRecords or an image folder.")
  public var datasetDir: String
  @Option(name: .seed("split"), help: "Split to score (file-name prefix or subfolder).")
  public var split = "validation"
  @Option(name: .seed("model-name"), help: "Default: the checkpoint's metadata, else inferred from the tensor shapes.")
  public var modelName: String?
  @Option(name: .seed("num-classes"), help: "Default: the checkpoint's metadata, else the logits' shape.")
  public var numClasses: Int?
  @Option(name: .seed("image-size"), help: "Default: the checkpoint's metadata, else 224.")
  public var imageSize: Int?
  @Option(name: .seed("central-fraction"), help: "Central crop before resizing (1.0: none).")
  public var centralFraction = 0.875
  @Option(name: .seed("batch-size"), help: "Images per forward pass.")
  public var batchSize = 100
  @Option(name: .seed("labels-offset"), help: "Subtracted from every label.")
  public var labelsOffset = 0
  @Flag(name: .customLong("all"), help: "Score every checkpoint of the directory, oldest first.")
  public var all = false
  @Flag(name: .customLong("use-moving-average"), inversion: .prefixedNo,
        help: "Use the ExponentialMovingAverage weights (default: when the checkpoint has them).")
  public var useMovingAverage: Bool?
  @Option(name: .seed("threads"), help: "Compute threads (default: all cores).")
  public var threads: Int?
  @Option(name: .seed("decode-threads"), help: "JPEG decode threads (default: all cores).")
  public var decodeThreads: Int?
  @Option(name: .seed("precision"), help: "fp32, or bf16 operands for the convolutions and GEMMs (fp32 with a note on a CPU without AVX512-BF16).")
  public var precision = Precision.fp32

  // Observability (issue 13)
  @Flag(name: .customLong("no-summaries"), help: "Do not write eval/top1, eval/top5, eval/loss to <checkpoint dir>/eval/ (TensorBoard, metrics.jsonl).")
  public var noSummaries = false

  public func validate() throws { try checkRanges() }
}

public struct CheckpointScore: Sendable {
  public var path: String
  public var step: Int64
  public var movingAverage: Bool
  public var result: EvalResult
  public var summaryLine: String {
    String(format: "%@ step=%lld top1=%.4f top5=%.4f images=%d loss=%.4f%@",
           (path as NSString).lastPathComponent, step, result.top1Accuracy, result.top5Accuracy, result.examples,
           result.meanLoss, movingAverage ? " (moving average weights)" : "")
  }
}

public enum EvaluateJob {
  /// Opens a resolved checkpoint and builds the model it holds (settings from the metadata or the
  /// shapes, flags first), loaded with the moving-average shadows when `useMovingAverage` (default:
  /// when present). Shared by evaluate, predict and export.
  public static func loadModel(_ path: String, modelName: String?, numClasses: Int?, imageSize: Int?,
                               useMovingAverage: Bool?, log: TrainLog? = nil) throws
    -> (model: MobileNetV2, file: TensorFile, movingAverage: Bool)
  {
    let file = try CheckpointDirectory.open(path)
    let (config, source) = try ConfigInference.config(of: file, modelName: modelName, numClasses: numClasses, imageSize: imageSize)
    if source != .metadata {
      log?.info("\((path as NSString).lastPathComponent): \(config.modelName), \(config.numClasses) classes (\(source.rawValue)), image size \(config.imageSize)\(imageSize == nil ? " (default; --image-size to change)" : "")")
    }
    let model = MobileNetV2(config: config)
    let ema = useMovingAverage ?? Evaluator.hasMovingAverage(file)
    try Evaluator.load(file, into: model, useMovingAverage: ema)
    return (model, file, ema)
  }

  @discardableResult
  public static func run(_ f: EvalFlags, log: TrainLog = PrintLog()) throws -> [CheckpointScore] {
    Compute.setThreads(f.threads ?? ProcessInfo.processInfo.activeProcessorCount)
    let paths = try CheckpointDirectory.resolve(f.checkpointPath, all: f.all)
    let precision = try PrecisionPolicy.resolve(f.precision)
    if let note = precision.note { log.info(note) }
    var scores: [CheckpointScore] = []
    var loader: DataLoader? = nil
    let summaries = EvalSummaries()
    for path in paths {
      let (model, file, ema) = try loadModel(path, modelName: f.modelName, numClasses: f.numClasses,
                                             imageSize: f.imageSize, useMovingAverage: f.useMovingAverage, log: log)
      model.precision = precision.precision
      let config = model.config
      if loader == nil || loader!.config.imageSize != config.imageSize || loader!.config.numClasses != config.numClasses {
        var lc = LoaderConfig(datasetDir: f.datasetDir, split: f.split, batchSize: f.batchSize,
                              imageSize: config.imageSize, training: false)
        lc.centralFraction = f.centralFraction
        lc.labelsOffset = f.labelsOffset
        lc.numClasses = config.numClasses
        lc.decodeThreads = f.decodeThreads
        loader = try DataLoader(lc)
      }
      let progress = ProgressReporter("evaluate \((path as NSString).lastPathComponent)", total: loader!.examplesInSplit,
                                      unit: .items("images"))
      let r = try Evaluator.evaluate(model: model, data: LoaderSource(loader!), batchSize: f.batchSize) { p in
        progress.update(p.examples, detail: String(format: "top1 so far %.4f", p.top1Accuracy))
      }
      progress.finish()
      let score = CheckpointScore(path: path, step: try ModelCheckpoint.globalStep(of: file), movingAverage: ema, result: r)
      log.info(score.summaryLine)
      scores.append(score)
      if !f.noSummaries {
        // A score is worth more than its summary: a read-only checkpoint dir only costs the summary.
        do { try summaries.write(score) } catch { log.warning("\(error) (the score above stands; --no-summaries skips this)") }
      }
    }
    return scores
  }
}

/// Observability (issue 13): each score as TensorBoard scalars at the checkpoint's step, in
/// `<checkpoint dir>/eval/` (one event file per evaluate run and directory, which TensorBoard shows
/// as the run `eval` beside the training scalars), and as a row of `eval/metrics.jsonl` for `report`.
final class EvalSummaries {
  static let directory = "eval"
  static let tags = (top1: "eval/top1", top5: "eval/top5", loss: "eval/loss")
  private var writers: [String: EventFileWriter] = [:]

  func write(_ s: CheckpointScore) throws {
    let dir = ((s.path as NSString).deletingLastPathComponent as NSString).appendingPathComponent(Self.directory)
    let w = try writers[dir] ?? EventFileWriter(directory: dir)
    writers[dir] = w
    try w.addScalars([(Self.tags.top1, s.result.top1Accuracy), (Self.tags.top5, s.result.top5Accuracy),
                      (Self.tags.loss, s.result.meanLoss)], step: Int(s.step))
    try EvalRow(step: Int(s.step), top1: s.result.top1Accuracy, top5: s.result.top5Accuracy, loss: s.result.meanLoss,
                images: s.result.examples, checkpoint: (s.path as NSString).lastPathComponent)
      .append(to: (dir as NSString).appendingPathComponent(EvalRow.file))
  }
}

public struct PredictFlags: ParsableArguments {
  public init() {}
  @Option(name: .seed("checkpoint-path"), help: "A checkpoint file, TensorFlow prefix or directory (as evaluate).")
  public var checkpointPath: String
  @Option(name: .seed("labels-file"), help: "Class names, one per line or `index:name` (default: labels.txt beside the checkpoint).")
  public var labelsFile: String?
  @Option(name: .seed("central-fraction"), help: "Central crop before resizing.")
  public var centralFraction = 0.875
  @Option(name: .seed("top-k"), help: "Classes to print per image.")
  public var topK = 5
  @Flag(name: .customLong("use-moving-average"), inversion: .prefixedNo, help: "Use the moving-average weights (default: when present).")
  public var useMovingAverage: Bool?
  @Argument(help: "JPEG files.")
  public var images: [String]

  // Interop (issue 10)
  @Option(name: .seed("model-name"), help: "Default: the checkpoint's metadata, else inferred from the tensor shapes.")
  public var modelName: String?
  @Option(name: .seed("num-classes"), help: "Default: the checkpoint's metadata, else the logits' shape.")
  public var numClasses: Int?
  @Option(name: .seed("image-size"), help: "Default: the checkpoint's metadata, else 224.")
  public var imageSize: Int?

  public func validate() throws { try checkRanges() }
}

public enum PredictJob {
  /// Reads `labels.txt` as slim writes it (`index:name`) or one name per line.
  public static func readLabels(_ path: String) -> [Int: String] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
    var out: [Int: String] = [:]
    for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
      if let colon = line.firstIndex(of: ":"), let k = Int(line[..<colon]) {
        out[k] = String(line[line.index(after: colon)...])
      } else {
        out[i] = String(line)
      }
    }
    return out
  }

  /// Returns, per image, the top-k (class, probability) pairs; prints them.
  @discardableResult
  public static func run(_ f: PredictFlags, log: TrainLog = PrintLog()) throws -> [[(Int, Double)]] {
    let path = try CheckpointDirectory.resolve(f.checkpointPath)[0]
    let (model, _, _) = try EvaluateJob.loadModel(path, modelName: f.modelName, numClasses: f.numClasses, imageSize: f.imageSize,
                                                  useMovingAverage: f.useMovingAverage, log: log)
    let config = model.config
    let labelsPath = f.labelsFile ?? ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("labels.txt")
    let names = readLabels(labelsPath)
    var options = PreprocessOptions(width: config.imageSize, height: config.imageSize, training: false)
    options.centralFraction = f.centralFraction
    let pre = Preprocessor(options: options)
    var results: [[(Int, Double)]] = []
    var rng = RandomState(seed: 0)
    for image in f.images {
      guard let data = FileManager.default.contents(atPath: image) else { throw TrainingError("cannot read image \(image)") }
      var exampleRng = ExampleRandom(seed: 0, epoch: 0, stream: .augment)
      do {
        _ = try data.withUnsafeBytes { try pre.process(jpeg: $0, rng: &exampleRng, into: model.inputBuffer(batch: 1)) }
      } catch {
        throw TrainingError("\(image): not a decodable JPEG (\(error))")
      }
      let z = model.forward(batch: 1, mode: .inference, rng: &rng)
      let k = config.numClasses
      let lse = logSumExp(z, count: k).value
      let probabilities = (0..<k).map { exp(Double(z[$0]) - lse) }
      let top = (0..<k).sorted { probabilities[$0] > probabilities[$1] }.prefix(max(1, f.topK)).map { ($0, probabilities[$0]) }
      log.info("\(image):")
      for (c, p) in top { log.info(String(format: "  %6.2f%%  %d %@", p * 100, c, names[c] ?? "")) }
      results.append(top)
    }
    return results
  }
}
