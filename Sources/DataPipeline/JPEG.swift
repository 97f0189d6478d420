// JPEG through the TurboJPEG API: header, decode to RGB at a DCT scale, and (for tools and
// tests) compression. One `JPEGCodec` per thread: a tjhandle must not be shared.
import CTurboJPEG
import Foundation

/// A DCT scaling factor num/denom supported by the decoder (1/8 ... 2/1).
public struct ScalingFactor: Equatable, CustomStringConvertible, Sendable {
  public var num: Int
  public var denom: Int
  public init(num: Int, denom: Int) { self.num = num; self.denom = denom }
  public var value: Double { Double(num) / Double(denom) }
  /// TJSCALED: the decoded size of a dimension.
  public func scaled(_ d: Int) -> Int { (d * num + denom - 1) / denom }
  public var description: String { "\(num)/\(denom)" }
  public static let one = ScalingFactor(num: 1, denom: 1)

  /// Factors ≤ 1 that libjpeg-turbo offers, smallest first.
  public static let available: [ScalingFactor] = {
    var n: Int32 = 0
    guard let list = tjGetScalingFactors(&n) else { return [.one] }
    let all = (0..<Int(n)).map { ScalingFactor(num: Int(list[$0].num), denom: Int(list[$0].denom)) }
    return all.filter { $0.num <= $0.denom }.sorted { $0.value < $1.value }
  }()

  /// The smallest factor at which a `cropWidth`×`cropHeight` region still has at least
  /// `outWidth`×`outHeight` pixels, so downscaling never has to invent detail. Upscaling crops
  /// (crop smaller than the output) decode at full size.
  public static func smallest(covering cropWidth: Int, _ cropHeight: Int,
                              output outWidth: Int, _ outHeight: Int) -> ScalingFactor {
    for f in available where Double(cropWidth) * f.value >= Double(outWidth)
      && Double(cropHeight) * f.value >= Double(outHeight) {
      return f
    }
    return .one
  }
}

public struct JPEGHeader: Equatable {
  public var width: Int
  public var height: Int
  public var colorspace: Int32  // TJCS_*
}

/// Pixel layouts the compressor accepts in tools and tests.
public enum JPEGInput {
  case rgb, gray, cmyk
  var pixelFormat: Int32 {
    switch self {
    case .rgb: return Int32(TJPF_RGB.rawValue)
    case .gray: return Int32(TJPF_GRAY.rawValue)
    case .cmyk: return Int32(TJPF_CMYK.rawValue)
    }
  }
  var channels: Int { self == .rgb ? 3 : self == .gray ? 1 : 4 }
}

public final class JPEGCodec {
  private var decoder: tjhandle?
  private var encoder: tjhandle?
  /// Decoded RGB pixels of the last `decode`, row stride = width × 3. Reused across calls.
  public private(set) var pixels: [UInt8] = []
  private var cmyk: [UInt8] = []

  public init() {}

  deinit {
    if let d = decoder { tjDestroy(d) }
    if let e = encoder { tjDestroy(e) }
  }

  private func decompressor() throws -> tjhandle {
    if let d = decoder { return d }
    guard let d = tjInitDecompress() else { throw DataPipelineError.badJPEG("tjInitDecompress failed") }
    decoder = d
    return d
  }

  private func message(_ h: tjhandle?) -> String {
    guard let s = tjGetErrorStr2(h) else { return "unknown error" }
    return String(cString: s)
  }

  /// The error message, and a fresh handle: after a failed decode TurboJPEG 2.1 can leave the
  /// handle in a state where the next header read reports a 0×0 image.
  private func failure() -> DataPipelineError {
    let text = message(decoder)
    if let d = decoder { tjDestroy(d); decoder = nil }
    return DataPipelineError.badJPEG(text)
  }

  public func header(_ jpeg: UnsafeRawBufferPointer) throws -> JPEGHeader {
    let d = try decompressor()
    var w: Int32 = 0, h: Int32 = 0, sub: Int32 = 0, cs: Int32 = 0
    guard jpeg.count > 0,
          tjDecompressHeader3(d, jpeg.bindMemory(to: UInt8.self).baseAddress, UInt(jpeg.count), &w, &h, &sub, &cs) == 0
    else { throw failure() }
    if w <= 0 || h <= 0 { throw DataPipelineError.badJPEG("empty image") }
    return JPEGHeader(width: Int(w), height: Int(h), colorspace: cs)
  }

  /// Decodes to RGB in `pixels` at `scale`; returns the decoded size. Grayscale is replicated
  /// to RGB by libjpeg; CMYK/YCCK is decoded as CMYK and converted here. Any libjpeg error,
  /// including a warning about corrupt data (a truncated file "decodes" as grey), fails.
  @discardableResult
  public func decode(_ jpeg: UnsafeRawBufferPointer, header: JPEGHeader,
                     scale: ScalingFactor = .one) throws -> (width: Int, height: Int) {
    let d = try decompressor()
    let w = scale.scaled(header.width), h = scale.scaled(header.height)
    let src = jpeg.bindMemory(to: UInt8.self).baseAddress
    // TJFLAG_FASTDCT: TensorFlow's decode_jpeg default is also the fast integer IDCT.
    // TJFLAG_STOPONWARNING: corrupt data is an error, never silently gray pixels.
    let flags = Int32(TJFLAG_FASTDCT | TJFLAG_STOPONWARNING)
    let isCMYK = header.colorspace == Int32(TJCS_CMYK.rawValue) || header.colorspace == Int32(TJCS_YCCK.rawValue)
    if isCMYK {
      if cmyk.count < w * h * 4 { cmyk = [UInt8](repeating: 0, count: w * h * 4) }
      if pixels.count < w * h * 3 { pixels = [UInt8](repeating: 0, count: w * h * 3) }
      let rc = cmyk.withUnsafeMutableBufferPointer {
        tjDecompress2(d, src, UInt(jpeg.count), $0.baseAddress, Int32(w), 0, Int32(h), Int32(TJPF_CMYK.rawValue), flags)
      }
      if rc != 0 { throw failure() }
      // TurboJPEG stores CMYK inverted (Adobe convention): R = C·K/255, as its own converter.
      cmyk.withUnsafeBufferPointer { c in
        pixels.withUnsafeMutableBufferPointer { p in
          for i in 0..<(w * h) {
            let k = UInt32(c[4 * i + 3])
            for ch in 0..<3 { p[3 * i + ch] = UInt8((UInt32(c[4 * i + ch]) * k + 127) / 255) }
          }
        }
      }
    } else {
      if pixels.count < w * h * 3 { pixels = [UInt8](repeating: 0, count: w * h * 3) }
      let rc = pixels.withUnsafeMutableBufferPointer {
        tjDecompress2(d, src, UInt(jpeg.count), $0.baseAddress, Int32(w), 0, Int32(h), Int32(TJPF_RGB.rawValue), flags)
      }
      if rc != 0 { throw failure() }
    }
    return (w, h)
  }

  /// Compresses packed pixels (RGB, gray or CMYK) at `quality`, 4:4:4 for colour, 4:0:0 for gray.
  public func compress(_ pixels: UnsafeRawBufferPointer, width: Int, height: Int, input: JPEGInput,
                       quality: Int = 90, subsampling: Int32 = Int32(TJSAMP_444.rawValue)) throws -> Data {
    if encoder == nil { encoder = tjInitCompress() }
    guard let e = encoder else { throw DataPipelineError.badJPEG("tjInitCompress failed") }
    precondition(pixels.count >= width * height * input.channels, "pixel buffer too small")
    var out: UnsafeMutablePointer<UInt8>? = nil
    var size: UInt = 0
    let samp = input == .gray ? Int32(TJSAMP_GRAY.rawValue) : subsampling
    let rc = tjCompress2(e, pixels.bindMemory(to: UInt8.self).baseAddress, Int32(width), 0, Int32(height),
                         input.pixelFormat, &out, &size, samp, Int32(quality), 0)
    defer { if let o = out { tjFree(o) } }
    if rc != 0 { throw DataPipelineError.badJPEG(message(e)) }
    return Data(bytes: out!, count: Int(size))
  }
}
