// safetensors checkpoints: round trip, TF-slim names, atomic writes, clear errors, Python interop.
import Checkpoint
import Foundation
import Kernels
import MobileNet
import XCTest

final class CheckpointTests: XCTestCase {
  var dir: String!

  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "ckpt-test-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

  func model(classes: Int = 10, seed: UInt64 = 1) throws -> MobileNetV2 {
    MobileNetV2(config: try ModelConfig(modelName: "mobilenet_v2_035", numClasses: classes, imageSize: 96), seed: seed)
  }

  func testRoundTripWithSlotsStepAndMetadata() throws {
    let a = try model(seed: 1)
    for i in 0..<a.stateValues.count { a.stateValues[i] = Float(i % 7) * 0.5 }
    let momentum = FloatBuffer(count: a.parameterCount)
    for i in 0..<momentum.count { momentum[i] = Float(i % 13) }
    let path = "\(dir!)/model.ckpt-42.safetensors"
    try ModelCheckpoint.save(model: a, slots: [NamedSlab(layout: a.trainable, buffer: momentum, suffix: "Momentum")],
                             globalStep: 42, to: path)
    let file = try SafeTensorsFile(path: path)
    XCTAssertEqual(try ModelCheckpoint.globalStep(of: file), 42)
    XCTAssertEqual(try ModelCheckpoint.config(of: file), a.config)
    XCTAssertEqual(file.tensors["MobilenetV2/Conv/weights"]?.shape, [3, 3, 3, 16])
    XCTAssertEqual(file.tensors["MobilenetV2/Conv/weights/Momentum"]?.shape, [3, 3, 3, 16])
    XCTAssertEqual(file.tensors["global_step"]?.dtype, .i64)
    XCTAssertEqual(file.tensors["global_step"]?.shape, [])

    let b = try model(seed: 2)
    XCTAssertNotEqual(a.parameters.array, b.parameters.array)
    let m2 = FloatBuffer(count: b.parameterCount)
    let report = try ModelCheckpoint.load(b.checkpointSlabs + [NamedSlab(layout: b.trainable, buffer: m2, suffix: "Momentum")], from: file)
    XCTAssertEqual(a.parameters.array, b.parameters.array)
    XCTAssertEqual(a.stateValues.array, b.stateValues.array)
    XCTAssertEqual(momentum.array, m2.array)
    XCTAssertEqual(report.unused, ["global_step"])
    XCTAssertTrue(report.notRestored.isEmpty)
    // No temporary file is left behind.
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["model.ckpt-42.safetensors"])
  }

  func testHeaderIsEightByteAlignedLittleEndian() throws {
    let a = try model()
    let path = "\(dir!)/m.safetensors"
    try ModelCheckpoint.save(model: a, globalStep: 7, to: path)
    let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
    var n = 0
    for i in 0..<8 { n |= Int(bytes[i]) << (8 * i) }
    XCTAssertEqual((8 + n) % 8, 0)
    XCTAssertEqual(bytes[8], UInt8(ascii: "{"))
    let expectedData = (a.parameterCount + a.stateValues.count) * 4 + 8
    XCTAssertEqual(bytes.count, 8 + n + expectedData)
  }

  func testShapeMismatchNamesTheTensorAndExcludeSkipsIt() throws {
    let a = try model(classes: 1001)
    let path = "\(dir!)/imagenet.safetensors"
    try ModelCheckpoint.save(model: a, globalStep: 1, to: path)
    let file = try SafeTensorsFile(path: path)
    let b = try model(classes: 10)
    XCTAssertThrowsError(try ModelCheckpoint.load(b.checkpointSlabs, from: file)) { e in
      XCTAssertTrue("\(e)".contains("MobilenetV2/Logits/Conv2d_1c_1x1/weights"), "\(e)")
      XCTAssertTrue("\(e)".contains("[1, 1, 1280, 1001]"), "\(e)")
    }
    let r = try ModelCheckpoint.load(b.checkpointSlabs, from: file, exclude: ["MobilenetV2/Logits/"])
    XCTAssertEqual(r.notRestored.sorted(), ["MobilenetV2/Logits/Conv2d_1c_1x1/biases", "MobilenetV2/Logits/Conv2d_1c_1x1/weights"])
    // Slab offsets differ between the two (logits come first), so compare through each model's spec.
    let stemA = try XCTUnwrap(a.trainable.spec(named: "MobilenetV2/Conv/weights"))
    let stemB = try XCTUnwrap(b.trainable.spec(named: "MobilenetV2/Conv/weights"))
    XCTAssertEqual(b.parameters[stemB.offset + 5], a.parameters[stemA.offset + 5])
  }

  func testMissingTensorAndCorruptFilesAreClearErrors() throws {
    let a = try model()
    let path = "\(dir!)/m.safetensors"
    // A file holding only some tensors.
    let spec = a.trainable.specs[0]
    try SafeTensors.write([TensorSource(name: spec.name, dtype: .f32, shape: spec.shape,
                                        data: UnsafeRawPointer(a.parameters.base + spec.offset))],
                          metadata: ModelCheckpoint.metadata(for: a.config), to: path)
    XCTAssertThrowsError(try ModelCheckpoint.load(a.checkpointSlabs, from: SafeTensorsFile(path: path))) { e in
      XCTAssertTrue("\(e)".contains("missing tensor"), "\(e)")
    }
    // Truncated file.
    try ModelCheckpoint.save(model: a, globalStep: 1, to: path)
    let full = try Data(contentsOf: URL(fileURLWithPath: path))
    for cut in [0, 5, 100, full.count - 1] {
      let bad = "\(dir!)/cut-\(cut).safetensors"
      try full.prefix(cut).write(to: URL(fileURLWithPath: bad))
      XCTAssertThrowsError(try SafeTensorsFile(path: bad)) { e in XCTAssertTrue("\(e)".contains(bad), "\(e)") }
    }
    XCTAssertThrowsError(try SafeTensorsFile(path: "\(dir!)/nope.safetensors")) { e in
      XCTAssertTrue("\(e)".contains("does not exist"), "\(e)")
    }
  }

  func testOverwriteIsAtomicRename() throws {
    let a = try model()
    let path = "\(dir!)/m.safetensors"
    try ModelCheckpoint.save(model: a, globalStep: 1, to: path)
    let inodeBefore = try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? Int
    try ModelCheckpoint.save(model: a, globalStep: 2, to: path)
    let inodeAfter = try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? Int
    XCTAssertNotEqual(inodeBefore, inodeAfter, "the file must be replaced by rename, not rewritten in place")
    XCTAssertEqual(try ModelCheckpoint.globalStep(of: SafeTensorsFile(path: path)), 2)
  }

  /// Python reads our file with numpy alone (an independent parser) and with `safetensors` when it is
  /// installed (`make deps` installs it); names, shapes and values must match.
  func testReadableFromPython() throws {
    let a = try model()
    let path = "\(dir!)/py.safetensors"
    try ModelCheckpoint.save(model: a, globalStep: 9, to: path)
    let script = """
      import json, struct, sys
      import numpy as np
      p = sys.argv[1]
      raw = open(p, 'rb').read()
      (n,) = struct.unpack('<Q', raw[:8])
      hdr = json.loads(raw[8:8 + n])
      data = raw[8 + n:]
      meta = hdr.pop('__metadata__')
      w = hdr['MobilenetV2/Conv/weights']
      b, e = w['data_offsets']
      arr = np.frombuffer(data[b:e], dtype='<f4').reshape(w['shape'])
      print('numpy', meta['model_name'], list(arr.shape), '%.6f' % float(arr[1, 2, 0, 3]), len(hdr))
      try:
          from safetensors.numpy import load_file
      except ImportError:
          print('safetensors-missing')
          sys.exit(0)
      t = load_file(p)
      print('safetensors', list(t['MobilenetV2/expanded_conv/depthwise/depthwise_weights'].shape),
            list(t['MobilenetV2/Logits/Conv2d_1c_1x1/biases'].shape), int(t['global_step']),
            '%.6f' % float(t['MobilenetV2/Conv/weights'][1, 2, 0, 3]))
      """
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", script, path]
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    XCTAssertEqual(p.terminationStatus, 0, out)
    let stem = a.trainable.spec(named: "MobilenetV2/Conv/weights")!
    // HWIO index [1, 2, 0, 3] = ((1·3 + 2)·3 + 0)·16 + 3
    let v = String(format: "%.6f", a.parameters[stem.offset + ((1 * 3 + 2) * 3 + 0) * 16 + 3])
    XCTAssertTrue(out.contains("numpy mobilenet_v2_035 [3, 3, 3, 16] \(v) \(a.parameterCount > 0 ? a.trainable.specs.count + a.state.specs.count + 1 : 0)"), out)
    XCTAssertFalse(out.contains("safetensors-missing"), "Python's safetensors is not installed: run `make deps`")
    XCTAssertTrue(out.contains("safetensors [3, 3, 16, 1] [10] 9 \(v)"), out)
  }
}
