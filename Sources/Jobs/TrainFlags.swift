// The training flags: the seed's (kebab-case, each also in its snake_case spelling) plus ours.
import ArgumentParser
import Checkpoint
import Cluster
import Collective
import Foundation
import Kernels
import MobileNet
import Telemetry
import Training

extension DecayType: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension CheckpointFormat: ExpressibleByArgument {}
extension Precision: ExpressibleByArgument {}
extension GradientWire: ExpressibleByArgument {}

public struct TrainFlags: ParsableArguments {
  public init() {}

  // MARK: The seed's flags
  @Option(name: .seed("dataset-dir"), help: "TF-slim TFRecords (train-*/validation-*) or an image folder.")
  public var datasetDir: String?
  @Option(name: .seed("model-name"), help: "mobilenet_v2, mobilenet_v2_140, _130, _075, _050 or _035.")
  public var modelName = "mobilenet_v2"
  @Option(name: .seed("num-classes"), help: "Classes including slim's background class 0 for ImageNet.")
  public var numClasses = ModelConfig.defaultNumClasses
  @Option(name: .seed("image-size"), help: "Input height and width, a multiple of 32.")
  public var imageSize = ModelConfig.defaultImageSize
  @Option(name: .seed("batch-size"), help: "Examples per rank per step.")
  public var batchSize = TrainerDefaults.batchSize
  @Option(name: .seed("max-epoch"), help: "Train this many epochs (exactly one of --max-epoch / --max-train-steps).")
  public var maxEpoch: Double?
  @Option(name: .seed("max-train-steps"), help: "Train this many global steps.")
  public var maxTrainSteps: Int?
  @Option(name: .seed("learning-rate"), help: "Base learning rate.")
  public var learningRate = TrainerDefaults.learningRate
  @Option(name: .seed("learning-rate-decay-type"), help: "fixed, cosine_annealing, exponential or polynomial.")
  public var learningRateDecayType = TrainerDefaults.decay
  @Option(name: .seed("warmup-epochs"), help: "Linear warm-up length for cosine_annealing (0: none).")
  public var warmupEpochs = TrainerDefaults.warmupEpochs
  @Option(name: .seed("optimizer"), help: "momentum or sgd.")
  public var optimizer = TrainerDefaults.optimizer
  @Option(name: .seed("momentum"), help: "Momentum coefficient.")
  public var momentum: Float = Optimizer.defaultMomentum
  @Option(name: .seed("weight-decay"), help: "L2 weight decay on conv and logits weights (wd·Σw²/2).")
  public var weightDecay = StepHyperparameters.defaultWeightDecay
  @Option(name: .seed("label-smoothing"), help: "Label smoothing ε.")
  public var labelSmoothing = StepHyperparameters.defaultLabelSmoothing
  @Option(name: .seed("moving-average-decay"), help: "Keep exponential moving averages of the weights (the seed's scripts use 0.9999).")
  public var movingAverageDecay: Double?
  @Option(name: .seed("train-dir"), help: "Checkpoints and metrics (default result/<N>p/).")
  public var trainDir: String?
  @Option(name: .seed("save-checkpoints-steps"), help: "Checkpoint interval in steps (default one epoch).")
  public var saveCheckpointsSteps: Int?
  @Option(name: .seed("keep-checkpoint-max"), help: "Newest checkpoints kept.")
  public var keepCheckpointMax = TrainerDefaults.keepCheckpointMax
  @Option(name: .seed("log-every-n-steps"), help: "Log interval in steps.")
  public var logEveryNSteps = TrainerDefaults.logEveryNSteps
  @Option(name: .seed("seed"), help: "Random seed (weights, data order, augmentation, dropout).")
  public var seed: UInt64 = 0
  @Option(name: .seed("restore-path"), help: "Checkpoint to fine-tune from: .safetensors, TensorFlow prefix (model.ckpt-N) or directory.")
  public var restorePath: String?
  @Option(name: .seed("restore-exclude"), help: "Comma-separated name prefixes not restored.")
  public var restoreExclude = TrainerDefaults.restoreExclude.joined(separator: ",")
  @Option(name: .seed("labels-offset"), help: "Subtracted from every label (slim's labels_offset).")
  public var labelsOffset = 0
  @Option(name: .seed("preprocessing-name"), help: "inception_v2 (TF-slim inception preprocessing; also inception, mobilenet_v2).")
  public var preprocessingName = "inception_v2"

  // Accepted so the seed's command lines run unchanged; they mean nothing on a CPU.
  @Option(name: .customLong("iterations_per_loop"), help: .hidden) public var iterationsPerLoop: String?
  @Option(name: .customLong("over_dump"), help: .hidden) public var overDump: String?
  @Option(name: .customLong("over_dump_path"), help: .hidden) public var overDumpPath: String?

  // MARK: Ours
  @Option(name: .seed("batch-norm-decay"), help: "Decay of the BN moving statistics (slim: 0.997; short runs want less, e.g. 0.9).")
  public var batchNormDecay = BatchNormDefaults.decay
  @Option(name: .seed("split"), help: "Training split (file-name prefix or subfolder).")
  public var split = "train"
  @Option(name: .seed("decode-threads"), help: "JPEG decode threads per rank (default cores ÷ local ranks).")
  public var decodeThreads: Int?
  @Option(name: .seed("threads"), help: "Compute threads (default from launch: cores ÷ local ranks).")
  public var threads: Int?
  @Flag(name: .customLong("no-color-distortion"), help: "Turn off brightness/saturation distortion.")
  public var noColorDistortion = false
  @Option(name: .seed("min-object-covered"), help: "Training crop: smallest fraction of the image a crop covers (slim: 0.1).")
  public var minObjectCovered: Float = 0.1
  @Option(name: .seed("min-crop-area"), help: "Training crop: smallest crop area as a fraction of the image (slim: 0.05).")
  public var minCropArea: Float = 0.05
  @Flag(name: .customLong("no-overlap"), help: "Allreduce after backward instead of overlapping with it.")
  public var noOverlap = false
  @Flag(name: .customLong("fp16-allreduce"), help: "Send gradients as fp16 on the wire.")
  public var fp16Allreduce = false
  @Option(name: .seed("allreduce-dtype"), help: "Gradients on the wire: fp32, fp16 or bf16 (sums and results stay fp32; default fp32, fp16 with --fp16-allreduce).")
  public var allreduceDtype: GradientWire?
  /// What the gradients travel as.
  public var gradientWire: GradientWire { allreduceDtype ?? (fp16Allreduce ? .fp16 : .fp32) }
  // Mixed precision (issue 12)
  @Option(name: .seed("precision"), help: "fp32, or bf16: bf16 operands for the convolutions and GEMMs, fp32 accumulation, master weights, batch norm, loss and optimizer (fp32 with a note on a CPU without AVX512-BF16).")
  public var precision = Precision.fp32
  @Option(name: .seed("fusion-mib"), help: "Gradient fusion bucket size in MiB.")
  public var fusionMiB = 4.0
  @Flag(name: .customLong("skip-corrupt-records"), help: "Skip TFRecords with bad CRCs instead of stopping.")
  public var skipCorruptRecords = false

  // Observability (issue 13)
  @Option(name: .seed("timeline"), help: "Write a Chrome trace (Perfetto, chrome://tracing) of this rank's steps to FILE (launch --timeline merges the ranks).")
  public var timeline: String?
  @Option(name: .seed("timeline-steps"), help: "Steps recorded in the timeline, after \(Timeline.defaultWarmupSteps) warm-up steps.")
  public var timelineSteps = Timeline.defaultSteps
  @Flag(name: .customLong("no-summaries"), help: "Do not write TensorBoard event files in the train dir.")
  public var noSummaries = false

  // Interop (issue 10)
  @Option(name: .seed("checkpoint-format"), help: "Checkpoint files: safetensors, tf (TensorFlow V2: .index + .data, and the `checkpoint` state file) or both.")
  public var checkpointFormat = TrainerDefaults.checkpointFormat
  @Flag(name: .seed("restore-moving-average"), help: "Fine-tuning: restore the weights from the checkpoint's ExponentialMovingAverage shadows.")
  public var restoreMovingAverage = false

  // Issue 11: gradient accumulation (docs/distributed.md)
  @Option(name: .seed("gradient-accumulation-steps"), help: "Micro-batches of --batch-size summed per optimizer step, one allreduce per step (global batch = ranks × batch × K; the LR schedule counts optimizer steps). Default 1, or on resume the K that keeps the checkpoint's global batch.")
  public var gradientAccumulationSteps: Int?

  /// Beyond this a step is one epoch on any realistic shard: a typo rather than a plan.
  public static let maxGradientAccumulationSteps = 65536
  static let preprocessingNames = ["inception_v2", "inception", "inception_v1", "inception_v3", "mobilenet_v2"]

  /// `worker train` parses these flags, so parsing checks them.
  public func validate() throws { try checkForTraining() }

  /// Every flag's range and the cross-flag rules of a training run.
  public func checkForTraining() throws {
    try checkRanges()
    guard datasetDir != nil else { throw ValidationError("--dataset-dir is required") }
    if (maxEpoch == nil) == (maxTrainSteps == nil) {
      throw ValidationError("give exactly one of --max-epoch and --max-train-steps")
    }
    if fp16Allreduce, let d = allreduceDtype, d != .fp16 {
      throw ValidationError("--fp16-allreduce contradicts --allreduce-dtype \(d.rawValue)")
    }
    guard Self.preprocessingNames.contains(preprocessingName) else {
      throw ValidationError("--preprocessing-name \(preprocessingName): only TF-slim inception preprocessing is provided (\(Self.preprocessingNames.joined(separator: ", ")))")
    }
  }

  /// One-line notes for the seed's flags that are accepted and ignored.
  public var ignoredNotes: [String] {
    [("iterations_per_loop", iterationsPerLoop), ("over_dump", overDump), ("over_dump_path", overDumpPath)]
      .compactMap { name, v in v.map { _ in "note: --\(name) is accepted for compatibility with the Ascend scripts and ignored on CPUs" } }
  }

  public func modelConfig() throws -> ModelConfig {
    try ModelConfig(modelName: modelName, numClasses: numClasses, imageSize: imageSize)
  }

  public func trainerOptions(worldSize: Int) throws -> TrainerOptions {
    var o = TrainerOptions(model: try modelConfig())
    o.batchSize = batchSize
    o.maxEpochs = maxEpoch
    o.maxTrainSteps = maxTrainSteps
    o.learningRate = learningRate
    o.decay = learningRateDecayType
    o.warmupEpochs = warmupEpochs
    o.optimizer = optimizer
    o.momentum = momentum
    o.weightDecay = weightDecay
    o.labelSmoothing = labelSmoothing
    o.movingAverageDecay = movingAverageDecay
    o.batchNormDecay = batchNormDecay
    o.trainDir = trainDir ?? defaultResultDir(worldSize: worldSize)
    o.saveCheckpointsSteps = saveCheckpointsSteps
    o.keepCheckpointMax = keepCheckpointMax
    o.logEveryNSteps = logEveryNSteps
    o.seed = seed
    o.restorePath = restorePath
    o.restoreExclude = restoreExclude.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    // Interop (issue 10)
    o.checkpointFormat = checkpointFormat
    o.restoreMovingAverage = restoreMovingAverage
    o.gradientAccumulationSteps = gradientAccumulationSteps
    o.precision = precision  // the request; TrainJob resolves it against the CPU
    return o
  }
}
