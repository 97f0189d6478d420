// Parameters as named views into contiguous slabs (llm.c style): the trainable values, their
// gradients and every optimizer slot share one layout, so the optimizer is one flat loop, a
// checkpoint is one write per slab and an allreduce sees one buffer.
//
// The trainable slab is laid out in the order backward produces gradients (logits first, stem last),
// so gradient buckets for an overlapped allreduce are contiguous ranges that complete front to back.
import Kernels

/// What a tensor is, which decides its initialisation, weight decay and checkpoint name.
public enum TensorRole: String, Sendable {
  case convWeights        // regular and 1×1 convs: truncated normal, weight decay
  case depthwiseWeights   // truncated normal, no weight decay (slim: separable_conv2d regularizer None)
  case logitsWeights      // truncated normal, weight decay
  case biases             // zeros, no decay
  case gamma              // ones
  case beta               // zeros
  case movingMean         // zeros, not trainable
  case movingVariance     // ones, not trainable

  public var isTrainable: Bool { self != .movingMean && self != .movingVariance }
  /// slim's training_scope puts l2_regularizer(weight_decay) on slim.conv2d weights only.
  public var hasWeightDecay: Bool { self == .convWeights || self == .logitsWeights }
}

public struct TensorSpec: Equatable, Sendable {
  public let name: String
  public let shape: [Int]
  public let role: TensorRole
  /// Offset in its slab (trainable or state), in floats.
  public let offset: Int
  public var count: Int { shape.reduce(1, *) }
}

/// A set of named tensors laid out back to back in one slab.
public struct SlabLayout: Sendable {
  public private(set) var specs: [TensorSpec] = []
  public private(set) var count = 0
  private var index: [String: Int] = [:]

  @discardableResult
  mutating func add(_ name: String, _ shape: [Int], _ role: TensorRole) -> Int {
    precondition(index[name] == nil, "duplicate tensor \(name)")
    let spec = TensorSpec(name: name, shape: shape, role: role, offset: count)
    index[name] = specs.count
    specs.append(spec)
    count += spec.count
    return spec.offset
  }

  public func spec(named name: String) -> TensorSpec? { index[name].map { specs[$0] } }
}
