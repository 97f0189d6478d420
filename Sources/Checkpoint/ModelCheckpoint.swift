// MobileNetV2 checkpoints: safetensors files whose tensor names and layouts are TF-slim's
// (`MobilenetV2/Conv/weights` [3,3,3,32] HWIO, depthwise [3,3,C,1], 1×1 [1,1,in,out], BatchNorm
// gamma/beta/moving_mean/moving_variance), optimizer and averaging slots as `<name>/Momentum` and
// `<name>/ExponentialMovingAverage`, `global_step` as an int64 scalar, and the model settings in
// `__metadata__` — or the same tensors as a TensorFlow V2 checkpoint (TFBundle.swift). Files without
// our metadata (TensorFlow's, foreign safetensors) get their model settings from the tensor shapes
// (ConfigInference.swift). See docs/checkpoint-format.md.
import Kernels
import MobileNet

/// A slab of named tensors saved or restored under optional name suffix (`Momentum`, ...).
public struct NamedSlab {
  public var layout: SlabLayout
  public var buffer: FloatBuffer
  public var suffix: String?
  public init(layout: SlabLayout, buffer: FloatBuffer, suffix: String? = nil) {
    self.layout = layout; self.buffer = buffer; self.suffix = suffix
  }
  func name(_ spec: TensorSpec) -> String { suffix.map { "\(spec.name)/\($0)" } ?? spec.name }
}

public extension MobileNetV2 {
  /// The model's own tensors: trainable weights and the BN moving statistics.
  var checkpointSlabs: [NamedSlab] {
    [NamedSlab(layout: trainable, buffer: parameters), NamedSlab(layout: state, buffer: stateValues)]
  }
}

public struct LoadReport: Sendable {
  public var restored: [String] = []
  /// Model tensors not restored because they match an excluded prefix (or are missing, when allowed).
  public var notRestored: [String] = []
  /// Tensors in the file that nothing asked for.
  public var unused: [String] = []
}

public enum ModelCheckpoint {
  public static let format = "mobilenet-v2-trainer"
  public static let formatVersion = "1"
  public static let globalStepName = "global_step"
  public static let momentumSuffix = "Momentum"
  public static let movingAverageSuffix = "ExponentialMovingAverage"
  public static let fileExtension = "safetensors"

  public static func metadata(for c: ModelConfig) -> [String: String] {
    ["format": format, "format_version": formatVersion, "model_name": c.modelName,
     "depth_multiplier": String(c.depthMultiplier), "num_classes": String(c.numClasses),
     "image_size": String(c.imageSize), "layout": "NHWC/HWIO (TensorFlow)"]
  }

  /// Whether `file` carries this project's metadata (else its settings are inferred from shapes).
  public static func hasMetadata(_ file: TensorFile) -> Bool { file.metadata["format"] == format }

  /// The model settings a checkpoint was written with (from its metadata).
  public static func config(of file: TensorFile) throws -> ModelConfig {
    let m = file.metadata
    guard m["format"] == format else {
      throw CheckpointError("\(file.path): not a \(format) checkpoint (metadata format=\(m["format"] ?? "none"))")
    }
    guard m["format_version"] == formatVersion else {
      throw CheckpointError("\(file.path): checkpoint format version \(m["format_version"] ?? "none"), this build reads \(formatVersion); convert it with a matching build")
    }
    guard let name = m["model_name"], let k = m["num_classes"].flatMap(Int.init), let s = m["image_size"].flatMap(Int.init) else {
      throw CheckpointError("\(file.path): metadata lacks model_name/num_classes/image_size")
    }
    do { return try ModelConfig(modelName: name, numClasses: k, imageSize: s) } catch {
      throw CheckpointError("\(file.path): \(error)")
    }
  }

  /// Writes the model (and any extra slabs/tensors) atomically to the safetensors file `path`.
  public static func save(model: MobileNetV2, slots: [NamedSlab] = [], globalStep: Int64,
                          extraTensors: [TensorSource] = [], extraMetadata: [String: String] = [:],
                          to path: String) throws {
    try withTensorSources(model: model, slots: slots, globalStep: globalStep, extraTensors: extraTensors) { sources in
      var meta = metadata(for: model.config)
      meta.merge(extraMetadata) { a, _ in a }
      try SafeTensors.write(sources, metadata: meta, to: path)
    }
  }

  /// Writes the same tensors as the TensorFlow V2 checkpoint `prefix` (.index + .data shards).
  /// TensorFlow checkpoints have no place for metadata: readers infer the model from the shapes.
  public static func saveTF(model: MobileNetV2, slots: [NamedSlab] = [], globalStep: Int64,
                            extraTensors: [TensorSource] = [], prefix: String, shards: Int = 1) throws {
    try withTensorSources(model: model, slots: slots, globalStep: globalStep, extraTensors: extraTensors) { sources in
      try TFCheckpoint.write(sources, prefix: prefix, shards: shards)
    }
  }

  /// Every tensor of a checkpoint, in slab order, then global_step and the extras.
  static func withTensorSources(model: MobileNetV2, slots: [NamedSlab], globalStep: Int64, extraTensors: [TensorSource],
                                _ body: ([TensorSource]) throws -> Void) throws {
    var step = globalStep.littleEndian
    try withUnsafeBytes(of: &step) { stepBytes in
      var sources: [TensorSource] = []
      for slab in model.checkpointSlabs + slots {
        for spec in slab.layout.specs {
          sources.append(TensorSource(name: slab.name(spec), dtype: .f32, shape: spec.shape,
                                      data: UnsafeRawPointer(slab.buffer.base + spec.offset)))
        }
      }
      sources.append(TensorSource(name: globalStepName, dtype: .i64, shape: [], data: stepBytes.baseAddress!))
      sources += extraTensors
      try body(sources)
    }
  }

  /// Restores every tensor of `slabs` from `file`, except those whose name starts with one of
  /// `exclude`. A missing tensor (unless `allowMissing`), a shape or dtype mismatch is an error
  /// naming the first offending tensor.
  @discardableResult
  public static func load(_ slabs: [NamedSlab], from file: TensorFile, exclude: [String] = [],
                          allowMissing: Bool = false) throws -> LoadReport {
    var report = LoadReport()
    var wanted = Set<String>()
    for slab in slabs {
      for spec in slab.layout.specs {
        let name = slab.name(spec)
        wanted.insert(name)
        if exclude.contains(where: { !$0.isEmpty && name.hasPrefix($0) }) { report.notRestored.append(name); continue }
        guard let info = file.entry(name) else {
          if allowMissing { report.notRestored.append(name); continue }
          throw CheckpointError("\(file.path): missing tensor \(name) (expected shape \(spec.shape)); wrong model, or exclude it with --restore-exclude")
        }
        guard info.dtype == .f32 else {
          throw CheckpointError("\(file.path): tensor \(name) has dtype \(info.dtypeName), expected float32")
        }
        guard info.shape == spec.shape else {
          throw CheckpointError("\(file.path): tensor \(name) has shape \(info.shape) but the model expects \(spec.shape)")
        }
        try file.read(name, into: UnsafeMutableRawPointer(slab.buffer.base + spec.offset))
        report.restored.append(name)
      }
    }
    report.unused = file.names.filter { !wanted.contains($0) }
    return report
  }

  /// The global step stored in a checkpoint (0 if absent).
  public static func globalStep(of file: TensorFile) throws -> Int64 { try file.readInt64(globalStepName) ?? 0 }
}
