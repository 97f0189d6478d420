// Optional wall-clock accounting per layer type, for `bench train --profile` and docs/performance.md.
// Off by default; when off a timed section costs one branch.
import Dispatch

public enum Profile {
  public enum Section: String, CaseIterable {
    case stemConv = "stem conv", pointwise = "1x1 conv (GEMM)", depthwise = "depthwise 3x3",
         batchNorm = "batch norm + ReLU6", head = "pool/dropout/logits/loss", residual = "residual add",
         optimizer = "optimizer + weight decay"
  }
  public static var enabled = false
  public private(set) static var forward: [Section: Double] = [:]
  public private(set) static var backward: [Section: Double] = [:]
  /// Seconds per network layer (by the model's layer index), forward and backward: where a section's
  /// time goes, layer by layer (`bench train-one --profile`).
  public private(set) static var layerForward: [Int: Double] = [:]
  public private(set) static var layerBackward: [Int: Double] = [:]

  public static func reset() { forward = [:]; backward = [:]; layerForward = [:]; layerBackward = [:] }

  @inline(__always)
  public static func time<T>(_ s: Section, backward isBackward: Bool = false, _ body: () throws -> T) rethrows -> T {
    guard enabled else { return try body() }
    let (r, dt) = try timed(body)
    if isBackward { backward[s, default: 0] += dt } else { forward[s, default: 0] += dt }
    return r
  }

  /// The whole of layer `layer`'s forward or backward (its sections are timed inside it as well).
  @inline(__always)
  public static func time<T>(layer: Int, backward isBackward: Bool = false, _ body: () throws -> T) rethrows -> T {
    guard enabled else { return try body() }
    let (r, dt) = try timed(body)
    if isBackward { layerBackward[layer, default: 0] += dt } else { layerForward[layer, default: 0] += dt }
    return r
  }

  /// body's result and its wall-clock seconds.
  @inline(__always)
  private static func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let t0 = DispatchTime.now().uptimeNanoseconds
    let r = try body()
    return (r, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
  }
}
