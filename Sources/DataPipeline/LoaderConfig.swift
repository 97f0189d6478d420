// Everything the loader needs to know, in one value the trainer builds from its flags.
import Foundation

public struct LoaderConfig: Sendable {
  public var datasetDir: String
  /// File-name prefix of the TFRecord shards (`train`, `validation`), or the image subfolder.
  public var split = "train"
  public var rank = 0
  public var worldSize = 1
  /// Examples per batch on this rank.
  public var batchSize = 32
  public var imageSize = 224
  /// Training: random crop/flip/colour, per-epoch shuffle, full batches only (drop_remainder),
  /// the same number of batches on every rank. Evaluation: central crop, every example of the
  /// split exactly once over all ranks, last batch possibly short.
  public var training = true
  public var seed: UInt64 = 0
  /// Subtracted from every stored label (slim's --labels_offset).
  public var labelsOffset = 0
  public var numClasses = 1001
  /// Image folders: labels start at 1 (0 = background), as slim's ImageNet.
  public var backgroundClass = false
  /// Decode threads of this rank; nil = max(1, cores / ranksPerHost); 0 = the consumer decodes
  /// every example itself when it asks for the batch (no work ahead).
  public var decodeThreads: Int?
  /// Ranks sharing this machine (the launcher knows), for the default thread count.
  public var ranksPerHost = 1
  /// Batches decoded ahead of the one being consumed.
  public var prefetchBatches = 2
  public var centralFraction = 0.875
  public var colorDistortion = true
  /// The training crop's sample_distorted_bounding_box parameters (slim's defaults).
  public var crop = DistortedCropOptions()
  /// Skip records whose CRC or Example is bad (counted and warned) instead of stopping.
  public var skipCorruptRecords = false
  /// Training shuffle-buffer size in records (TFRecord layouts; image folders shuffle fully).
  public var shuffleWindow = 16384
  /// Decode at reduced DCT scale when the crop allows it.
  public var dctScaling = true

  public init(datasetDir: String, split: String = "train", batchSize: Int = 32, imageSize: Int = 224,
              training: Bool = true) {
    self.datasetDir = datasetDir; self.split = split; self.batchSize = batchSize
    self.imageSize = imageSize; self.training = training
  }

  public var resolvedDecodeThreads: Int {
    decodeThreads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, ranksPerHost))
  }

  var preprocessOptions: PreprocessOptions {
    var o = PreprocessOptions(width: imageSize, height: imageSize, training: training)
    o.centralFraction = centralFraction
    o.colorDistortion = colorDistortion
    o.crop = crop
    o.dctScaling = dctScaling
    return o
  }

  func validate() throws {
    func fail(_ s: String) -> DataPipelineError { .invalidConfig(s) }
    if worldSize < 1 || rank < 0 || rank >= worldSize { throw fail("rank \(rank) outside world size \(worldSize)") }
    if batchSize < 1 { throw fail("batch size \(batchSize) must be positive") }
    if imageSize < 1 { throw fail("image size \(imageSize) must be positive") }
    if numClasses < 1 { throw fail("num classes \(numClasses) must be positive") }
    if let t = decodeThreads, t < 0 { throw fail("decode threads \(t) must not be negative") }
    if prefetchBatches < 1 { throw fail("prefetch batches \(prefetchBatches) must be at least 1") }
    if !(centralFraction > 0 && centralFraction <= 1) { throw fail("central fraction \(centralFraction) must be in (0, 1]") }
  }
}
