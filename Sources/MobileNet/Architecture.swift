// MobileNetV2 exactly as TF-slim's `nets/mobilenet/mobilenet_v2.py` defines it (V2_DEF):
//
//   Conv          3×3 conv, 32, stride 2                      + BatchNorm + ReLU6
//   expanded_conv expansion 1 (no expand layer), 16           depthwise + BN + ReLU6, project + BN
//   expanded_conv_1 … _16, expansion 6:
//       24/2, 24/1, 32/2, 32/1, 32/1, 64/2, 64/1, 64/1, 64/1, 96/1, 96/1, 96/1, 160/2, 160/1, 160/1, 320/1
//       expand 1×1 + BN + ReLU6 → depthwise 3×3 + BN + ReLU6 → project 1×1 + BN (linear bottleneck)
//       residual add iff stride 1 and input depth == output depth
//   Conv_1        1×1 conv, 1280                              + BN + ReLU6
//   Logits        global average pool → dropout (keep 0.8) → Conv2d_1c_1x1 (1×1 conv with bias)
//
// Depths are scaled by the depth multiplier with slim's `_make_divisible(v·m, 8, min 8)`; the expand
// width is `_make_divisible(input_depth · 6, 8)`. For multipliers below 1 the last conv keeps 1280
// (slim's finegrain_classification_mode), above 1 it is scaled (1.4 → 1792).

public enum MobileNetV2Def {
  /// (output depth, stride, expansion) of the 17 inverted-residual blocks, in order.
  public static let blocks: [(depth: Int, stride: Int, expansion: Int)] = [
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
  ]
  public static let stemDepth = 32
  public static let stemStride = 2
  public static let lastConvDepth = 1280
  public static let divisor = 8
  public static let minDepth = 8
  /// Total stride of the network: input sizes must be multiples of this.
  public static let outputStride = 32

  /// slim's `_make_divisible`: round to the nearest multiple of `divisor` (at least `minValue`),
  /// and add one `divisor` if rounding down lost more than 10%.
  public static func makeDivisible(_ v: Double, divisor: Int = divisor, minValue: Int? = nil) -> Int {
    let minV = minValue ?? divisor
    var newV = max(minV, Int(v + Double(divisor) / 2) / divisor * divisor)
    if Double(newV) < 0.9 * v { newV += divisor }
    return newV
  }

  /// The model names slim registers, with their depth multipliers.
  public static let modelNames: [(name: String, multiplier: Double)] = [
    ("mobilenet_v2", 1.0), ("mobilenet_v2_140", 1.4), ("mobilenet_v2_130", 1.3),
    ("mobilenet_v2_075", 0.75), ("mobilenet_v2_050", 0.5), ("mobilenet_v2_035", 0.35),
  ]

  public static func multiplier(forModel name: String) -> Double? {
    modelNames.first { $0.name == name }?.multiplier
  }
}

public struct ModelError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// Everything that fixes the shape of the network.
public struct ModelConfig: Equatable, Sendable {
  public var modelName: String
  public var depthMultiplier: Double
  public var numClasses: Int
  public var imageSize: Int
  /// slim training_scope: dropout_keep_prob = 0.8.
  public var dropoutKeepProb: Float

  public static let defaultNumClasses = 1001  // ImageNet + background class 0, as slim
  public static let defaultImageSize = 224
  public static let defaultDropoutKeepProb: Float = 0.8

  public init(modelName: String = "mobilenet_v2", numClasses: Int = defaultNumClasses,
              imageSize: Int = defaultImageSize, dropoutKeepProb: Float = defaultDropoutKeepProb) throws {
    guard let m = MobileNetV2Def.multiplier(forModel: modelName) else {
      let known = MobileNetV2Def.modelNames.map(\.name).joined(separator: ", ")
      throw ModelError("unknown --model-name '\(modelName)' (known: \(known))")
    }
    guard numClasses >= 2 else { throw ModelError("--num-classes must be at least 2, got \(numClasses)") }
    guard imageSize >= MobileNetV2Def.outputStride, imageSize % MobileNetV2Def.outputStride == 0 else {
      throw ModelError("--image-size must be a multiple of \(MobileNetV2Def.outputStride) and at least \(MobileNetV2Def.outputStride), got \(imageSize)")
    }
    guard dropoutKeepProb > 0, dropoutKeepProb <= 1 else {
      throw ModelError("dropout keep probability must be in (0, 1], got \(dropoutKeepProb)")
    }
    self.modelName = modelName
    self.depthMultiplier = m
    self.numClasses = numClasses
    self.imageSize = imageSize
    self.dropoutKeepProb = dropoutKeepProb
  }

  func depth(_ d: Int) -> Int {
    MobileNetV2Def.makeDivisible(Double(d) * depthMultiplier, divisor: MobileNetV2Def.divisor,
                                 minValue: MobileNetV2Def.minDepth)
  }

  /// Conv_1's depth: finegrain mode keeps 1280 for multipliers < 1.
  var lastConvDepth: Int {
    depthMultiplier < 1 ? MobileNetV2Def.lastConvDepth : depth(MobileNetV2Def.lastConvDepth)
  }
}
