// Arithmetic work of the network, counted from the layers this model builds (so a change of
// architecture or width changes the count), for the benchmarks' GFLOP/s and roofline figures.
//
// Conventions (those of the published MobileNetV2 MAC counts, e.g. 300 M for 1.0/224):
//   conv K×K      outSize² · outC · K² · inC      (the stem; inC = 3)
//   depthwise K×K outSize² · C · K²
//   pointwise     outSize² · outC · inC
//   logits        featureDepth · numClasses
// Batch norm, ReLU6, residual adds, pooling, the loss and the optimizer are not counted: they are
// memory passes, a few percent of the arithmetic.
//
// A training step is estimated as 3 × the forward FLOPs (2 FLOPs per MAC): the backward pass does
// two products per forward one (input gradient and weight gradient). The stem's input gradient is
// not needed but is counted, as the usual estimate does (under 1 % of 1.0/224's total).

public extension MobileNetV2 {
  /// FLOPs per multiply-accumulate.
  static let flopsPerMAC = 2
  /// Forward + backward ≈ 3 × forward.
  static let trainStepPassesPerForward = 3

  /// Multiply-accumulates of one image's forward pass (see the conventions above).
  var forwardMACsPerImage: Int {
    var macs = 0
    for l in layers {
      let pixels = l.outSize * l.outSize
      switch l.op {
      case .conv(let k): macs += pixels * l.outChannels * k * k * l.inChannels
      case .depthwise(let k): macs += pixels * l.outChannels * k * k
      case .pointwise: macs += pixels * l.outChannels * l.inChannels
      }
    }
    return macs + featureDepth * config.numClasses
  }

  /// Estimated FLOPs of one training step per image: forward MACs × 2 × 3.
  var trainStepFLOPsPerImage: Int {
    forwardMACsPerImage * Self.flopsPerMAC * Self.trainStepPassesPerForward
  }
}
