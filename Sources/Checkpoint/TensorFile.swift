// What loading needs from any checkpoint container — safetensors or a TensorFlow tensor bundle:
// names, each tensor's dtype and shape, its bytes, and the project metadata (empty for foreign
// files). `CheckpointDirectory.open` picks the container from the path.
import Foundation

/// A tensor's dtype and shape as the file declares them. `dtype` is nil for dtypes this project
/// does not read (`dtypeName` says which), so such tensors only fail when something asks for them.
public struct TensorEntry: Equatable, Sendable {
  public let dtype: DType?
  public let dtypeName: String
  public let shape: [Int]
  public init(dtype: DType?, dtypeName: String, shape: [Int]) {
    self.dtype = dtype; self.dtypeName = dtypeName; self.shape = shape
  }
  public var count: Int { shape.reduce(1, *) }
}

public protocol TensorFile: AnyObject {
  /// The file (safetensors) or prefix (TensorFlow) errors name.
  var path: String { get }
  /// Tensor names, in file order.
  var names: [String] { get }
  /// The project's `__metadata__` (empty for TensorFlow checkpoints and foreign safetensors).
  var metadata: [String: String] { get }
  func entry(_ name: String) -> TensorEntry?
  /// Copies the tensor's little-endian bytes to `dst` (`count · dtype.size` bytes), verifying what
  /// the container can verify (TensorFlow: bounds and CRC-32C of the tensor's data).
  func read(_ name: String, into dst: UnsafeMutableRawPointer) throws
}

public extension TensorFile {
  func readFloats(_ name: String) throws -> [Float]? {
    guard let e = entry(name), e.dtype == .f32 else { return nil }
    var out = [Float](repeating: 0, count: e.count)
    try out.withUnsafeMutableBytes { try read(name, into: $0.baseAddress!) }
    return out
  }

  func readInt64(_ name: String) throws -> Int64? {
    guard let e = entry(name), e.dtype == .i64, e.count == 1 else { return nil }
    var v: Int64 = 0
    try withUnsafeMutableBytes(of: &v) { try read(name, into: $0.baseAddress!) }
    return Int64(littleEndian: v)
  }
}

extension SafeTensorsFile: TensorFile {
  public func entry(_ name: String) -> TensorEntry? {
    tensors[name].map { TensorEntry(dtype: $0.dtype, dtypeName: $0.dtype.rawValue, shape: $0.shape) }
  }
  public func read(_ name: String, into dst: UnsafeMutableRawPointer) throws {
    guard tensors[name] != nil else { throw CheckpointError("\(path): no tensor \(name)") }
    copyBytes(of: name, to: dst)
  }
}
