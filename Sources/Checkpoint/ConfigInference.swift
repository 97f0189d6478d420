// The model settings of a checkpoint. Ours carry them in the safetensors metadata (flags override).
// TensorFlow checkpoints and foreign safetensors (e.g. converted from PyTorch) have none, so they are
// inferred from the tensors, or taken from the flags and checked against the tensors:
//
//   multiplier  the output depth of MobilenetV2/Conv/weights [3,3,3,D] narrows the model names to
//               those whose stem has depth D (0.35 and 0.5 share 16); the one whose every tensor shape
//               matches wins
//   classes     the length of MobilenetV2/Logits/Conv2d_1c_1x1/biases (or the weights' last dim)
//   image size  not in the weights: --image-size, else 224 (slim's default for every multiplier)
//
// A flag that contradicts the shapes is a one-line error naming the tensor. A file without
// MobilenetV2/Conv/weights is not a MobileNetV2 checkpoint.
import MobileNet

public enum ConfigInference {
  public static let stemWeights = "\(MobileNetV2.scopePrefix)/Conv/weights"
  public static let logitsWeights = "\(MobileNetV2.scopePrefix)/Logits/Conv2d_1c_1x1/weights"
  public static let logitsBiases = "\(MobileNetV2.scopePrefix)/Logits/Conv2d_1c_1x1/biases"
  /// Used when neither metadata nor a flag gives the input size: slim's default_image_size.
  public static let defaultImageSize = ModelConfig.defaultImageSize

  /// How the settings were found, for the log.
  public enum Source: String, Sendable { case metadata, inferred = "inferred from tensor shapes", flags = "from flags, checked against tensor shapes" }

  public static func config(of file: TensorFile, modelName: String? = nil, numClasses: Int? = nil,
                            imageSize: Int? = nil) throws -> (config: ModelConfig, source: Source) {
    if ModelCheckpoint.hasMetadata(file) {
      let saved = try ModelCheckpoint.config(of: file)
      do {
        return (try ModelConfig(modelName: modelName ?? saved.modelName, numClasses: numClasses ?? saved.numClasses,
                                imageSize: imageSize ?? saved.imageSize), .metadata)
      } catch { throw CheckpointError("\(file.path): \(error)") }
    }
    guard let stem = file.entry(stemWeights) else {
      let some = file.names.prefix(3).joined(separator: ", ")
      throw CheckpointError("\(file.path): not a MobileNetV2 checkpoint: no tensor \(stemWeights) (\(file.names.count) tensors\(some.isEmpty ? "" : ", e.g. \(some)"))")
    }
    guard stem.dtype == .f32, stem.shape.count == 4, Array(stem.shape[0..<3]) == [3, 3, 3] else {
      throw CheckpointError("\(file.path): tensor \(stemWeights) is \(stem.dtypeName) \(stem.shape), not the float32 [3, 3, 3, depth] of a MobileNetV2 stem")
    }
    let fileClasses = file.entry(logitsBiases).flatMap { $0.shape.count == 1 ? $0.shape[0] : nil }
      ?? file.entry(logitsWeights).flatMap { $0.shape.count == 4 ? $0.shape[3] : nil }
    let classes: Int
    if let n = numClasses {
      if let k = fileClasses, k != n {
        throw CheckpointError("\(file.path): tensor \(logitsBiases) has shape [\(k)] but --num-classes \(n) expects [\(n)]")
      }
      classes = n
    } else {
      guard let k = fileClasses else {
        throw CheckpointError("\(file.path): no tensor \(logitsBiases) to take the class count from; pass --num-classes")
      }
      classes = k
    }
    let size = imageSize ?? defaultImageSize
    func make(_ name: String) throws -> ModelConfig {
      do { return try ModelConfig(modelName: name, numClasses: classes, imageSize: size) } catch {
        throw CheckpointError("\(file.path): \(error)")
      }
    }
    if let name = modelName {
      let c = try make(name)
      if let mismatch = firstMismatch(c, file) { throw CheckpointError("\(file.path): \(mismatch) (--model-name \(name))") }
      return (c, .flags)
    }
    let depth = stem.shape[3]
    let candidates = MobileNetV2Def.modelNames.filter { stemDepth($0.multiplier) == depth }
    guard !candidates.isEmpty else {
      let known = MobileNetV2Def.modelNames.map { "\($0.name): \(stemDepth($0.multiplier))" }.joined(separator: ", ")
      throw CheckpointError("\(file.path): tensor \(stemWeights) has depth \(depth), which no MobileNetV2 multiplier gives (\(known))")
    }
    var firstError: String? = nil
    for cand in candidates {
      let c = try make(cand.name)
      guard let mismatch = firstMismatch(c, file) else { return (c, .inferred) }
      firstError = firstError ?? "\(mismatch) (for \(cand.name), the model whose stem depth is \(depth))"
    }
    throw CheckpointError("\(file.path): \(firstError!)")
  }

  static func stemDepth(_ multiplier: Double) -> Int {
    MobileNetV2Def.makeDivisible(Double(MobileNetV2Def.stemDepth) * multiplier, divisor: MobileNetV2Def.divisor,
                                 minValue: MobileNetV2Def.minDepth)
  }

  /// The first model tensor the file lacks or has in another shape, as a message.
  static func firstMismatch(_ c: ModelConfig, _ file: TensorFile) -> String? {
    let model = MobileNetV2(config: c)
    // The stem first: it is what a wrong multiplier shows in most plainly.
    let specs = model.trainable.specs.filter { $0.name == stemWeights } + model.trainable.specs.filter { $0.name != stemWeights }
      + model.state.specs
    for spec in specs {
      guard let e = file.entry(spec.name) else { return "missing tensor \(spec.name) (expected shape \(spec.shape))" }
      if e.shape != spec.shape { return "tensor \(spec.name) has shape \(e.shape) but the model expects \(spec.shape)" }
    }
    return nil
  }
}
