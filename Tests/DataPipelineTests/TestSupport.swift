import Foundation
import XCTest
import DataPipeline

/// A fresh temporary directory, removed when the test ends.
func temporaryDirectory(_ test: XCTestCase, _ name: String = #function) throws -> String {
  let dir = (NSTemporaryDirectory() as NSString)
    .appendingPathComponent("dp-\(name.filter(\.isLetter))-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
  try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
  return dir
}

/// RGB pixels from a function of (x, y) → (r, g, b).
func pixels(width: Int, height: Int, _ f: (Int, Int) -> (UInt8, UInt8, UInt8)) -> [UInt8] {
  var p = [UInt8](repeating: 0, count: width * height * 3)
  for y in 0..<height {
    for x in 0..<width {
      let (r, g, b) = f(x, y)
      p[(y * width + x) * 3] = r; p[(y * width + x) * 3 + 1] = g; p[(y * width + x) * 3 + 2] = b
    }
  }
  return p
}

func jpeg(_ pixels: [UInt8], width: Int, height: Int, input: JPEGInput = .rgb, quality: Int = 95) throws -> Data {
  try pixels.withUnsafeBytes { try JPEGCodec().compress($0, width: width, height: height, input: input, quality: quality) }
}

/// A uniform-colour JPEG whose red channel identifies example `i` after decoding (±a few).
func identifiableJPEG(_ i: Int, size: Int = 16) throws -> Data {
  try jpeg(pixels(width: size, height: size) { _, _ in (UInt8(i * 5 % 250), 128, 60) }, width: size, height: size)
}

/// Writes examples whose red channel identifies them, dealt over `shards` shards.
func writeIdentifiableShards(_ dir: String, split: String, count: Int, shards: Int, classes: Int = 10) throws {
  let w = try ShardWriter(directory: dir, split: split, shards: shards)
  for i in 0..<count {
    try w.write(ImageExample(encoded: try identifiableJPEG(i), label: Int64(i % classes)))
  }
  try w.close()
}

func assertClose(_ a: [Float], _ b: [Float], tolerance: Float, _ message: String = "",
                 file: StaticString = #filePath, line: UInt = #line) {
  XCTAssertEqual(a.count, b.count, "sizes differ " + message, file: file, line: line)
  var worst: Float = 0, at = 0
  for i in 0..<min(a.count, b.count) where abs(a[i] - b[i]) > worst { worst = abs(a[i] - b[i]); at = i }
  XCTAssertLessThanOrEqual(worst, tolerance, "max difference \(worst) at \(at) " + message, file: file, line: line)
}
