// A read-only description of the network's inference graph — conv+BN layers in forward order with
// their shapes and tensor names, and how blocks wire them — for exporters (ONNX) that rebuild the
// same computation outside this project.
public struct LayerDescription: Sendable {
  public enum Kind: Sendable, Equatable { case conv(kernel: Int), pointwise, depthwise(kernel: Int) }
  public let scope: String
  public let kind: Kind
  public let inChannels, outChannels, stride, inSize, outSize: Int
  public let relu6: Bool
  /// Checkpoint names of the weights and the BN tensors (gamma, beta, moving_mean, moving_variance).
  public let weightName: String
  public var kernel: Int {
    switch kind { case .conv(let k), .depthwise(let k): return k; case .pointwise: return 1 }
  }
  public func batchNorm(_ tensor: String) -> String { "\(scope)/BatchNorm/\(tensor)" }
}

public struct BlockDescription: Sendable {
  /// Indices into `MobileNetV2.graph.layers`.
  public let expand: Int?
  public let depthwise: Int
  public let project: Int
  public let residual: Bool
}

public struct GraphDescription: Sendable {
  public let layers: [LayerDescription]
  public let stem: Int
  public let blocks: [BlockDescription]
  public let lastConv: Int
  public let logitsWeights: String
  public let logitsBiases: String
}

public extension MobileNetV2 {
  var graph: GraphDescription {
    let ls = layers.map { l -> LayerDescription in
      let kind: LayerDescription.Kind
      switch l.op {
      case .conv(let k): kind = .conv(kernel: k)
      case .pointwise: kind = .pointwise
      case .depthwise(let k): kind = .depthwise(kernel: k)
      }
      return LayerDescription(scope: l.scope, kind: kind, inChannels: l.inChannels, outChannels: l.outChannels,
                              stride: l.stride, inSize: l.inSize, outSize: l.outSize, relu6: l.relu6, weightName: l.weightName)
    }
    let logits = "\(MobileNetV2.scopePrefix)/Logits/Conv2d_1c_1x1"
    return GraphDescription(layers: ls, stem: stemIndex,
                            blocks: blocks.map { BlockDescription(expand: $0.expand, depthwise: $0.depthwise, project: $0.project, residual: $0.residual) },
                            lastConv: lastConvIndex, logitsWeights: "\(logits)/weights", logitsBiases: "\(logits)/biases")
  }

  /// A tensor's current values (trainable weights or BN statistics) by checkpoint name.
  func tensor(named name: String) -> [Float]? {
    if let s = trainable.spec(named: name) { return Array(UnsafeBufferPointer(start: parameters.base + s.offset, count: s.count)) }
    if let s = state.spec(named: name) { return Array(UnsafeBufferPointer(start: stateValues.base + s.offset, count: s.count)) }
    return nil
  }
}
