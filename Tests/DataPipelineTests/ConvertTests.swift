import Foundation
import XCTest
import DataPipeline

final class ConvertTests: XCTestCase {
  /// Image folder → TFRecords → read back: the same JPEG bytes, labels, class texts, sizes.
  func testImageFolderConvertReadsBackIdentically() throws {
    let input = try temporaryDirectory(self, "in"), output = try temporaryDirectory(self, "out")
    var originals = [String: (Data, Int)]()
    for (k, cls) in ["bird", "ant", "cow"].enumerated() {
      let d = "\(input)/train/\(cls)"
      try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
      for i in 0..<(k + 2) {
        let data = try jpeg(pixels(width: 10 + i, height: 7) { x, y in (UInt8(x * 20), UInt8(y * 30), UInt8(k * 80)) },
                            width: 10 + i, height: 7)
        try data.write(to: URL(fileURLWithPath: "\(d)/\(cls)\(i).jpg"))
        originals["\(cls)\(i).jpg"] = (data, ["ant", "bird", "cow"].firstIndex(of: cls)!)
      }
    }
    XCTAssertEqual(try Convert.imageFolder(input, split: "train", to: output, shards: 2), 9)
    let source = try DatasetSource.detect(directory: output, split: "train")
    XCTAssertEqual(source.files.map { ($0.path as NSString).lastPathComponent }, ["train-00000-of-00002", "train-00001-of-00002"])
    var seen = 0
    for f in source.files {
      for payload in try TFRecord.readAll(path: f.path) {
        let e = try ImageExample(serialized: payload)
        let (data, label) = try XCTUnwrap(originals[e.filename])
        XCTAssertEqual(e.encoded, data)
        XCTAssertEqual(Int(e.label), label)
        XCTAssertEqual(e.text, ["ant", "bird", "cow"][label])
        XCTAssertEqual(e.height, 7)
        XCTAssertEqual(e.width, 10 + Int(e.filename.dropFirst(e.text.count).prefix(1))!)
        XCTAssertEqual(e.format, "JPEG")
        seen += 1
      }
    }
    XCTAssertEqual(seen, 9)
    XCTAssertEqual(try String(contentsOfFile: output + "/labels.txt", encoding: .utf8), "0:ant\n1:bird\n2:cow\n")
  }

  /// IDX (gzip or raw) → JPEG TFRecords: gray becomes RGB, resize works, labels kept.
  func testIDXConvert() throws {
    let dir = try temporaryDirectory(self)
    let n = 5, side = 28
    var images: [UInt8] = [0, 0, 8, 3, 0, 0, 0, UInt8(n), 0, 0, 0, UInt8(side), 0, 0, 0, UInt8(side)]
    for i in 0..<n { for p in 0..<(side * side) { images.append(UInt8((p % side) * 9 % 256 / (i + 1))) } }
    let labels: [UInt8] = [0, 0, 8, 1, 0, 0, 0, UInt8(n), 3, 1, 4, 1, 5]
    try Data(images).write(to: URL(fileURLWithPath: dir + "/img-idx3-ubyte"))
    try Data(labels).write(to: URL(fileURLWithPath: dir + "/lab-idx1-ubyte"))
    let gz = Process()
    gz.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    gz.arguments = ["gzip", "-k", dir + "/img-idx3-ubyte"]
    try gz.run(); gz.waitUntilExit()
    XCTAssertEqual(try IDXArray(path: dir + "/img-idx3-ubyte.gz").dimensions, [n, side, side])
    XCTAssertEqual(try IDXArray(path: dir + "/img-idx3-ubyte.gz").data, Array(images[16...]))
    XCTAssertThrowsError(try IDXArray(bytes: Array(images.dropLast())))
    XCTAssertThrowsError(try IDXArray(bytes: [1, 2, 3, 4]))

    try Convert.idx(images: dir + "/img-idx3-ubyte.gz", labels: dir + "/lab-idx1-ubyte", split: "validation",
                    to: dir + "/out", shards: 1, resize: 32, classNames: Convert.fashionMNISTClasses)
    let records = try TFRecord.readAll(path: dir + "/out/validation-00000-of-00001")
    XCTAssertEqual(records.count, n)
    let codec = JPEGCodec()
    for (i, r) in records.enumerated() {
      let e = try ImageExample(serialized: r)
      XCTAssertEqual(e.label, Int64(labels[8 + i]))
      XCTAssertEqual(e.text, Convert.fashionMNISTClasses[Int(labels[8 + i])])
      let h = try e.encoded.withUnsafeBytes { try codec.header($0) }
      XCTAssertEqual([h.width, h.height], [32, 32])
      try e.encoded.withUnsafeBytes { _ = try codec.decode($0, header: h) }
      for p in 0..<(32 * 32) {
        XCTAssertLessThanOrEqual(abs(Int(codec.pixels[3 * p]) - Int(codec.pixels[3 * p + 1])), 2)
        XCTAssertLessThanOrEqual(abs(Int(codec.pixels[3 * p]) - Int(codec.pixels[3 * p + 2])), 2)
      }
    }
  }

  func testSyntheticIsDeterministicAndClassDependent() throws {
    var o = SyntheticOptions()
    o.classes = 4; o.width = 24; o.height = 24
    XCTAssertEqual(Synthetic.image(index: 5, options: o).pixels, Synthetic.image(index: 5, options: o).pixels)
    XCTAssertEqual(Synthetic.image(index: 6, options: o).label, 2)
    // The brightest colour of an image belongs to its class: class hues differ.
    func dominant(_ i: Int) -> [Int] {
      let p = Synthetic.image(index: i, options: o).pixels
      var best = [0, 0, 0], bestSum = -1
      for k in stride(from: 0, to: p.count, by: 3) where Int(p[k]) + Int(p[k + 1]) + Int(p[k + 2]) > bestSum {
        bestSum = Int(p[k]) + Int(p[k + 1]) + Int(p[k + 2]); best = [Int(p[k]), Int(p[k + 1]), Int(p[k + 2])]
      }
      return best.map { $0 / 64 }
    }
    XCTAssertNotEqual(dominant(0), dominant(2))
    let dir = try temporaryDirectory(self)
    o.examples = 12
    try Synthetic.write(to: dir, split: "train", shards: 3, options: o)
    let loader = try DataLoader({
      var c = LoaderConfig(datasetDir: dir, split: "train", batchSize: 4, imageSize: 16, training: true)
      c.numClasses = 4; c.decodeThreads = 1
      return c
    }())
    XCTAssertEqual(loader.examplesInSplit, 12)
    XCTAssertEqual(loader.batchesPerEpoch, 3)
  }

  func testInspectReportsCountsLabelsAndCRCErrors() throws {
    let dir = try temporaryDirectory(self)
    try writeIdentifiableShards(dir, split: "train", count: 7, shards: 1, classes: 3)
    let path = dir + "/train-00000-of-00001"
    var r = Inspect.file(path)
    XCTAssertEqual(r.records, 7)
    XCTAssertNil(r.problem)
    XCTAssertEqual(r.labels, [0: 3, 1: 2, 2: 2])
    var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    let second = try TFRecord.index(path: path).records[1].offset
    bytes[second + 30] ^= 1
    try bytes.write(to: URL(fileURLWithPath: path))
    r = Inspect.file(path)
    XCTAssertEqual(r.records, 7)
    XCTAssertEqual(r.problem, "record 1: TFRecord data CRC mismatch in \(path) at byte offset \(second)")
  }
}
