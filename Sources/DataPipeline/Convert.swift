// Writing TF-slim TFRecord datasets: from an image folder (JPEG bytes copied, not re-encoded)
// and from IDX files (gray replicated to RGB, optionally resized, encoded as JPEG).
import Foundation
import Telemetry

public enum Convert {
  /// Fashion-MNIST's class names, in label order.
  public static let fashionMNISTClasses = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                           "Shirt", "Sneaker", "Bag", "Ankle boot"]

  /// Converts one split of an image folder. Returns the number of examples written.
  @discardableResult
  public static func imageFolder(_ input: String, split: String, to output: String, shards: Int,
                                 backgroundClass: Bool = false) throws -> Int {
    let source = try DatasetSource.detect(directory: input, split: split, backgroundClass: backgroundClass)
    let writer = try ShardWriter(directory: output, split: split, shards: shards)
    let codec = JPEGCodec()
    let progress = ProgressReporter("convert \(split)", total: source.files.count, unit: .items("images"))
    defer { progress.finish() }
    // Shuffle-free but class-interleaved order: round-robin shards then hold every class.
    for (f, label) in zip(source.files, source.imageLabels) {
      progress.advance()
      let bytes = try Data(contentsOf: URL(fileURLWithPath: f.path))
      let header: JPEGHeader
      do { header = try bytes.withUnsafeBytes { try codec.header($0) } } catch {
        warn("skipping \(f.path): \(error)")
        continue
      }
      let cls = source.classNames[label - (backgroundClass ? 1 : 0)]
      try writer.write(ImageExample(encoded: bytes, label: Int64(label), height: header.height, width: header.width,
                                    text: cls, filename: (f.path as NSString).lastPathComponent))
    }
    try writer.close()
    try writeLabels(source.classNames, firstLabel: backgroundClass ? 1 : 0, to: output)
    return writer.written
  }

  /// Converts IDX images + labels (N×H×W gray, N labels) to JPEG TFRecords.
  @discardableResult
  public static func idx(images: String, labels: String, split: String, to output: String, shards: Int,
                         resize: Int? = nil, quality: Int = 95, classNames: [String]? = nil) throws -> Int {
    let img = try IDXArray(path: images), lab = try IDXArray(path: labels)
    guard img.dimensions.count == 3, lab.dimensions.count == 1, img.dimensions[0] == lab.dimensions[0] else {
      throw DataPipelineError.io(path: images, reason: "IDX shapes \(img.dimensions) and \(lab.dimensions) do not form an image set")
    }
    let (n, h, w) = (img.dimensions[0], img.dimensions[1], img.dimensions[2])
    let side = resize ?? 0
    let (ow, oh) = side > 0 ? (side, side) : (w, h)
    let writer = try ShardWriter(directory: output, split: split, shards: shards)
    let codec = JPEGCodec()
    var rgb = [UInt8](repeating: 0, count: w * h * 3)
    var scaled = [Float](repeating: 0, count: ow * oh * 3)
    var out = [UInt8](repeating: 0, count: ow * oh * 3)
    let progress = ProgressReporter("convert \(split)", total: n, unit: .items("images"))
    defer { progress.finish() }
    for i in 0..<n {
      progress.advance()
      for p in 0..<(w * h) {
        let v = img.data[i * w * h + p]
        rgb[3 * p] = v; rgb[3 * p + 1] = v; rgb[3 * p + 2] = v
      }
      var pixels = rgb
      if side > 0 {
        rgb.withUnsafeBufferPointer {
          resampleNormalize(src: $0.baseAddress!, srcWidth: w, srcHeight: h,
                            region: Region(x: 0, y: 0, width: Double(w), height: Double(h)),
                            dst: &scaled, outWidth: ow, outHeight: oh, flip: false, color: nil)
        }
        for k in 0..<out.count { out[k] = UInt8(max(0, min(255, ((scaled[k] + 1) * 127.5).rounded()))) }
        pixels = out
      }
      let jpeg = try pixels.withUnsafeBytes { try codec.compress($0, width: ow, height: oh, input: .rgb, quality: quality) }
      let label = Int(lab.data[i])
      try writer.write(ImageExample(encoded: jpeg, label: Int64(label), height: oh, width: ow,
                                    text: classNames.map { label < $0.count ? $0[label] : "" } ?? "",
                                    filename: "\(split)-\(i).jpg"))
    }
    try writer.close()
    if let names = classNames { try writeLabels(names, firstLabel: 0, to: output) }
    return n
  }

  /// slim's `labels.txt`: one `label:name` line per class.
  public static func writeLabels(_ names: [String], firstLabel: Int, to directory: String) throws {
    let text = names.enumerated().map { "\($0.offset + firstLabel):\($0.element)" }.joined(separator: "\n") + "\n"
    try text.write(toFile: (directory as NSString).appendingPathComponent("labels.txt"), atomically: true, encoding: .utf8)
  }
}
