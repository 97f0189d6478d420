// `export`: a checkpoint (any format `evaluate` reads) as a deployment model.
import ArgumentParser
import Checkpoint
import Export
import Foundation
import Telemetry
import Training

public enum ExportFormat: String, ExpressibleByArgument, CaseIterable, Sendable { case onnx }

public struct ExportFlags: ParsableArguments {
  public init() {}
  @Option(name: .seed("checkpoint-path"), help: "A checkpoint file, TensorFlow prefix or directory (as evaluate).")
  public var checkpointPath: String
  @Option(name: .seed("format"), help: "onnx (opset 13; input NHWC float32 in [-1, 1], outputs logits and probabilities).")
  public var format = ExportFormat.onnx
  @Option(name: .seed("output"), help: "File to write (default: model.onnx).")
  public var output = "model.onnx"
  @Option(name: .seed("model-name"), help: "Default: the checkpoint's metadata, else inferred from the tensor shapes.")
  public var modelName: String?
  @Option(name: .seed("num-classes"), help: "Default: the checkpoint's metadata, else the logits' shape.")
  public var numClasses: Int?
  @Option(name: .seed("image-size"), help: "Input height and width of the exported graph (default: the metadata, else 224).")
  public var imageSize: Int?
  @Flag(name: .customLong("use-moving-average"), inversion: .prefixedNo, help: "Export the moving-average weights (default: when present).")
  public var useMovingAverage: Bool?
}

public enum ExportJob {
  public static func run(_ f: ExportFlags, log: TrainLog = PrintLog()) throws {
    // Progress over the three stages (quiet when they take under a second, as they usually do).
    let progress = ProgressReporter("export", total: 3, unit: .items("stages"))
    let path = try CheckpointDirectory.resolve(f.checkpointPath)[0]
    let (model, _, ema) = try EvaluateJob.loadModel(path, modelName: f.modelName, numClasses: f.numClasses,
                                                    imageSize: f.imageSize, useMovingAverage: f.useMovingAverage, log: log)
    progress.advance(detail: "checkpoint loaded")
    switch f.format {
    case .onnx:
      let bytes = [UInt8](try ONNXExport.model(model).serializedData())
      progress.advance(detail: "graph built, \(bytes.count) bytes")
      try ONNXExport.write(bytes, to: f.output)
    }
    progress.finish(detail: "written")
    let c = model.config
    log.info("wrote \(f.output): \(c.modelName), input images [N, \(c.imageSize), \(c.imageSize), 3] NHWC float32 in [-1, 1], outputs logits and probabilities [N, \(c.numClasses)]\(ema ? ", moving-average weights" : "")")
  }
}
