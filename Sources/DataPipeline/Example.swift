// TF-slim's ImageNet record schema on top of the generated tf.train.Example types.
import Foundation
import SwiftProtobuf

/// One image example as TF-slim's `build_imagenet_data.py` writes it.
public struct ImageExample: Equatable {
  public var encoded: Data          // image/encoded: the JPEG bytes
  public var label: Int64           // image/class/label: 1...1000 in slim's ImageNet (0 = background)
  public var format = "JPEG"        // image/format
  public var height = 0             // image/height
  public var width = 0              // image/width
  public var text = ""              // image/class/text
  public var filename = ""          // image/filename

  public init(encoded: Data, label: Int64, format: String = "JPEG", height: Int = 0, width: Int = 0,
              text: String = "", filename: String = "") {
    self.encoded = encoded; self.label = label; self.format = format
    self.height = height; self.width = width; self.text = text; self.filename = filename
  }

  /// Feature keys of the schema.
  public enum Key {
    public static let encoded = "image/encoded"
    public static let format = "image/format"
    public static let label = "image/class/label"
    public static let text = "image/class/text"
    public static let height = "image/height"
    public static let width = "image/width"
    public static let filename = "image/filename"
  }

  public var example: Tensorflow_Example {
    func bytes(_ d: Data) -> Tensorflow_Feature {
      var f = Tensorflow_Feature(); f.bytesList.value = [d]; return f
    }
    func int(_ v: Int64) -> Tensorflow_Feature {
      var f = Tensorflow_Feature(); f.int64List.value = [v]; return f
    }
    var e = Tensorflow_Example()
    e.features.feature = [
      Key.encoded: bytes(encoded),
      Key.format: bytes(Data(format.utf8)),
      Key.label: int(label),
      Key.text: bytes(Data(text.utf8)),
      Key.height: int(Int64(height)),
      Key.width: int(Int64(width)),
      Key.filename: bytes(Data(filename.utf8)),
    ]
    return e
  }

  public func serialized() throws -> Data { try example.serializedData() }

  /// Parses a serialized Example; image/encoded and image/class/label are required, the
  /// other fields are optional (many converters omit them).
  public init<B: SwiftProtobufContiguousBytes>(serialized bytes: B) throws {
    let e = try Tensorflow_Example(serializedBytes: bytes)
    let f = e.features.feature
    guard case .bytesList(let enc)? = f[Key.encoded]?.kind, let jpeg = enc.value.first else {
      throw ExampleError.missing(Key.encoded)
    }
    guard case .int64List(let lab)? = f[Key.label]?.kind, let label = lab.value.first else {
      throw ExampleError.missing(Key.label)
    }
    func string(_ k: String) -> String {
      if case .bytesList(let b)? = f[k]?.kind, let v = b.value.first { return String(decoding: v, as: UTF8.self) }
      return ""
    }
    func int(_ k: String) -> Int {
      if case .int64List(let b)? = f[k]?.kind, let v = b.value.first { return Int(clamping: v) }
      return 0
    }
    self.init(encoded: jpeg, label: label, format: string(Key.format), height: int(Key.height),
              width: int(Key.width), text: string(Key.text), filename: string(Key.filename))
  }
}

public enum ExampleError: Error, CustomStringConvertible {
  case missing(String)
  public var description: String { "feature \(missingKey) missing or of the wrong type" }
  var missingKey: String { if case .missing(let k) = self { return k }; return "" }
}
