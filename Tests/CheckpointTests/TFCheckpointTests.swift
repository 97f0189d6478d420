// TensorFlow V2 checkpoints: the fixture TensorFlow wrote (names, shapes, global step, and logits
// equal to TensorFlow's own), our writer read back by our reader, the path resolver, the train
// directory with both formats, config inference for metadata-free files, and one-line errors for
// every kind of bad input.
import Checkpoint
import Foundation
import Common
import Kernels
import MobileNet
import XCTest

final class TFCheckpointTests: XCTestCase {
  var dir: String!
  static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
  static let tfDir = "\(fixtures)/tf_mnv2_035"
  static let tfPrefix = "\(tfDir)/model.ckpt-1002"
  /// Float32 through ~55 layers in another summation order: TensorFlow's and our logits agree to
  /// this relative tolerance (the test prints the measured difference).
  static let logitsTolerance: Float = 1e-4

  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "tfckpt-test-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

  func config(_ name: String = "mobilenet_v2_035", classes: Int = 10, size: Int = 32) throws -> ModelConfig {
    try ModelConfig(modelName: name, numClasses: classes, imageSize: size)
  }

  /// A copy of the fixture checkpoint in the temporary directory (to corrupt).
  func fixtureCopy() throws -> String {
    for f in ["model.ckpt-1002.index", "model.ckpt-1002.data-00000-of-00001"] {
      try FileManager.default.copyItem(atPath: "\(Self.tfDir)/\(f)", toPath: "\(dir!)/\(f)")
    }
    return "\(dir!)/model.ckpt-1002"
  }

  func assertOneLineError(_ body: @autoclosure () throws -> Any, contains parts: [String],
                          file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try body(), file: file, line: line) { e in
      let s = "\(e)"
      XCTAssertFalse(s.contains("\n"), "not one line: \(s)", file: file, line: line)
      for p in parts { XCTAssertTrue(s.contains(p), "'\(s)' does not mention '\(p)'", file: file, line: line) }
    }
  }

  // MARK: The TensorFlow-written fixture

  func testReadsTensorFlowWrittenCheckpoint() throws {
    let f = try TFCheckpointFile(prefix: Self.tfPrefix)
    XCTAssertEqual(f.numShards, 1)
    XCTAssertEqual(try f.readInt64("global_step"), 1002)
    XCTAssertEqual(f.entry("global_step"), TensorEntry(dtype: .i64, dtypeName: "DT_INT64", shape: []))
    XCTAssertEqual(f.entry("MobilenetV2/Conv/weights")?.shape, [3, 3, 3, 16])
    XCTAssertEqual(f.entry("MobilenetV2/expanded_conv_16/project/weights")?.shape, [1, 1, 336, 112])
    XCTAssertEqual(f.entry("MobilenetV2/Logits/Conv2d_1c_1x1/weights/Momentum")?.shape, [1, 1, 1280, 10])
    XCTAssertNil(f.entry("MobilenetV2/Conv/weights/Momentum"), "the fixture trains only the logits layer")
    let model = MobileNetV2(config: try config())
    for spec in model.trainable.specs + model.state.specs {
      XCTAssertEqual(f.entry(spec.name)?.shape, spec.shape, spec.name)
      XCTAssertEqual(f.entry("\(spec.name)/ExponentialMovingAverage")?.shape, spec.shape, spec.name)
    }
    // Every name is a model tensor, a slot of one, or global_step.
    let known = Set(model.trainable.specs.map(\.name) + model.state.specs.map(\.name))
    for n in f.names where n != "global_step" {
      let base = n.replacingOccurrences(of: "/ExponentialMovingAverage", with: "").replacingOccurrences(of: "/Momentum", with: "")
      XCTAssertTrue(known.contains(base), n)
    }
    let momentum = try f.readFloats("MobilenetV2/Logits/Conv2d_1c_1x1/biases/Momentum")!
    XCTAssertTrue(momentum.contains { $0 != 0 }, "two Momentum steps leave non-zero slots")
  }

  /// Our forward pass on TensorFlow's weights gives TensorFlow's logits (raw and averaged weights).
  func testLogitsEqualTensorFlowsOnItsCheckpoint() throws {
    let ref = try SafeTensorsFile(path: "\(Self.fixtures)/tf_mnv2_035_logits.safetensors")
    let images = ref.floats("images")!
    let n = ref.tensors["images"]!.shape[0]
    for (ema, key) in [(false, "logits_raw"), (true, "logits_ema")] {
      let file = try CheckpointDirectory.open(try CheckpointDirectory.resolve(Self.tfDir)[0])
      let (c, source) = try ConfigInference.config(of: file, imageSize: 32)
      XCTAssertEqual(c, try config())
      XCTAssertEqual(source, .inferred)
      let model = MobileNetV2(config: c)
      let slabs = ema ? [NamedSlab(layout: model.trainable, buffer: model.parameters, suffix: "ExponentialMovingAverage"),
                         NamedSlab(layout: model.state, buffer: model.stateValues, suffix: "ExponentialMovingAverage")]
        : model.checkpointSlabs
      try ModelCheckpoint.load(slabs, from: file)
      model.inputBuffer(batch: n).update(from: images, count: images.count)
      var rng = RandomState(seed: 0)
      let z = model.forward(batch: n, mode: .inference, rng: &rng)
      let want = ref.floats(key)!
      let scale = want.map(abs).max()!
      var worst: Float = 0
      for i in 0..<want.count { worst = max(worst, abs(z[i] - want[i]) / scale) }
      print("\(key): worst |ours − TensorFlow's| / max|logit| = \(worst) (max |logit| \(scale))")
      XCTAssertLessThan(worst, Self.logitsTolerance, "\(key): worst relative difference \(worst)")
      XCTAssertGreaterThan(scale, 0.1, "logits should not be trivially small")
    }
  }

  // MARK: Writing

  func testWriteThenReadIsExactInOneAndTwoShards() throws {
    let m = MobileNetV2(config: try config(), seed: 3)
    let slot = FloatBuffer(count: m.parameterCount)
    for i in 0..<slot.count { slot[i] = Float(i % 101) - 50 }
    for shards in [1, 2] {
      let prefix = "\(dir!)/s\(shards)/model.ckpt-7"
      try FileManager.default.createDirectory(atPath: "\(dir!)/s\(shards)", withIntermediateDirectories: true)
      try ModelCheckpoint.saveTF(model: m, slots: [NamedSlab(layout: m.trainable, buffer: slot, suffix: "Momentum")],
                                 globalStep: 7, prefix: prefix, shards: shards)
      XCTAssertEqual(TFCheckpoint.files(prefix: prefix).count, 1 + shards)
      let f = try TFCheckpointFile(prefix: prefix)
      XCTAssertEqual(f.numShards, shards)
      XCTAssertEqual(try ModelCheckpoint.globalStep(of: f), 7)
      XCTAssertEqual(f.names, f.names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }, "index keys are sorted")
      let b = MobileNetV2(config: try config(), seed: 9)
      let slot2 = FloatBuffer(count: m.parameterCount)
      try ModelCheckpoint.load(b.checkpointSlabs + [NamedSlab(layout: b.trainable, buffer: slot2, suffix: "Momentum")], from: f)
      XCTAssertEqual(b.parameters.array, m.parameters.array)
      XCTAssertEqual(b.stateValues.array, m.stateValues.array)
      XCTAssertEqual(slot2.array, slot.array)
    }
  }

  /// Re-writing TensorFlow's fixture with our writer gives a checkpoint with the same entries and
  /// bytes (the index is byte-for-byte different only in block boundaries).
  func testRewritingTheFixtureKeepsEveryTensor() throws {
    let src = try TFCheckpointFile(prefix: Self.tfPrefix)
    try withCopies(of: src) { sources in try TFCheckpoint.write(sources, prefix: "\(dir!)/copy") }
    let copy = try TFCheckpointFile(prefix: "\(dir!)/copy")
    XCTAssertEqual(copy.names, src.names)
    for n in src.names {
      let e = src.entry(n)!
      XCTAssertEqual(copy.entry(n), e)
      var a = [UInt8](repeating: 0, count: e.count * e.dtype!.size), b = a
      try a.withUnsafeMutableBytes { try src.read(n, into: $0.baseAddress!) }
      try b.withUnsafeMutableBytes { try copy.read(n, into: $0.baseAddress!) }
      XCTAssertEqual(a, b, n)
    }
  }

  /// Every tensor of `file` copied into one buffer, as sources for a writer.
  func withCopies(of file: TensorFile, _ body: ([TensorSource]) throws -> Void) throws {
    let sizes = file.names.map { file.entry($0)!.count * file.entry($0)!.dtype!.size }
    let buf = UnsafeMutableRawPointer.allocate(byteCount: max(sizes.reduce(0, +), 1), alignment: 16)
    defer { buf.deallocate() }
    var offset = 0
    var sources: [TensorSource] = []
    for (n, size) in zip(file.names, sizes) {
      try file.read(n, into: buf + offset)
      let e = file.entry(n)!
      sources.append(TensorSource(name: n, dtype: e.dtype!, shape: e.shape, data: UnsafeRawPointer(buf + offset)))
      offset += size
    }
    try body(sources)
  }

  // MARK: Paths

  func testResolverAcceptsPrefixDirectoryAndFiles() throws {
    XCTAssertEqual(try CheckpointDirectory.resolve(Self.tfDir), [Self.tfPrefix])           // state file
    XCTAssertEqual(try CheckpointDirectory.resolve(Self.tfPrefix), [Self.tfPrefix])
    XCTAssertEqual(try CheckpointDirectory.resolve("\(Self.tfPrefix).index"), [Self.tfPrefix])
    XCTAssertEqual(try CheckpointDirectory.resolve("\(Self.tfPrefix).data-00000-of-00001"), [Self.tfPrefix])
    XCTAssertTrue(try CheckpointDirectory.open(Self.tfPrefix) is TFCheckpointFile)

    // A directory without a state file: the newest step of either format.
    let m = MobileNetV2(config: try config(), seed: 1)
    try ModelCheckpoint.save(model: m, globalStep: 5, to: "\(dir!)/model.ckpt-5.safetensors")
    try ModelCheckpoint.saveTF(model: m, globalStep: 12, prefix: "\(dir!)/model.ckpt-12")
    XCTAssertEqual(try CheckpointDirectory.resolve(dir), ["\(dir!)/model.ckpt-12"])
    XCTAssertEqual(try CheckpointDirectory.resolve(dir, all: true), ["\(dir!)/model.ckpt-5.safetensors", "\(dir!)/model.ckpt-12"])
    XCTAssertEqual(try CheckpointDirectory.resolve("\(dir!)/model.ckpt-5"), ["\(dir!)/model.ckpt-5.safetensors"])
    // The state file wins over the newest; an absolute path from another machine is found by name.
    try "model_checkpoint_path: \"/elsewhere/train/model.ckpt-5\"\n".write(toFile: "\(dir!)/checkpoint", atomically: true, encoding: .utf8)
    XCTAssertEqual(try CheckpointDirectory.resolve(dir), ["\(dir!)/model.ckpt-5.safetensors"])
    try "model_checkpoint_path: \"model.ckpt-99\"\n".write(toFile: "\(dir!)/checkpoint", atomically: true, encoding: .utf8)
    assertOneLineError(try CheckpointDirectory.resolve(dir), contains: ["\(dir!)/checkpoint", "model.ckpt-99"])
    assertOneLineError(try CheckpointDirectory.resolve("\(dir!)/model.ckpt-3"), contains: ["model.ckpt-3", "does not exist"])
    let empty = "\(dir!)/empty"
    try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
    assertOneLineError(try CheckpointDirectory.resolve(empty), contains: [empty, "no checkpoint"])
  }

  func testTrainDirectoryPrunesEveryFileAndKeepsTheStateFile() throws {
    let d = CheckpointDirectory(dir)
    let m = MobileNetV2(config: try config(), seed: 1)
    for step in Int64(1)...4 {
      try ModelCheckpoint.saveTF(model: m, globalStep: step, prefix: d.prefix(forStep: step))
      try ModelCheckpoint.save(model: m, globalStep: step, to: d.file(forStep: step))
    }
    // Leftovers of interrupted writes: a temporary file and a data shard whose index never came.
    FileManager.default.createFile(atPath: "\(dir!)/.model.ckpt-5.index.tmp-123", contents: Data([1]))
    FileManager.default.createFile(atPath: "\(dir!)/model.ckpt-6.data-00000-of-00001", contents: Data([1]))
    try d.prune(keep: 2)
    let left = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    XCTAssertEqual(left, ["checkpoint", "model.ckpt-3.data-00000-of-00001", "model.ckpt-3.index", "model.ckpt-3.safetensors",
                          "model.ckpt-4.data-00000-of-00001", "model.ckpt-4.index", "model.ckpt-4.safetensors"])
    let state = try String(contentsOfFile: "\(dir!)/checkpoint", encoding: .utf8)
    XCTAssertEqual(state, "model_checkpoint_path: \"model.ckpt-4\"\nall_model_checkpoint_paths: \"model.ckpt-3\"\nall_model_checkpoint_paths: \"model.ckpt-4\"\n")
    XCTAssertEqual(d.checkpoints().map(\.step), [3, 4])
    XCTAssertEqual(d.latest(), d.file(forStep: 4), "with both formats the safetensors file (with metadata) is opened")
  }

  // MARK: Metadata-free files

  func testForeignSafetensorsInfersTheModelAndChecksFlags() throws {
    for (name, classes) in [("mobilenet_v2_035", 10), ("mobilenet_v2_050", 7), ("mobilenet_v2", 1001)] {
      let m = MobileNetV2(config: try config(name, classes: classes), seed: 2)
      let path = "\(dir!)/\(name).safetensors"
      try ModelCheckpoint.save(model: m, globalStep: 1, to: path)
      try stripMetadata(path)
      let f = try SafeTensorsFile(path: path)
      XCTAssertFalse(ModelCheckpoint.hasMetadata(f))
      let (c, source) = try ConfigInference.config(of: f)
      XCTAssertEqual(source, .inferred)
      XCTAssertEqual(c.modelName, name, "0.35 and 0.5 share the stem depth 16; the other shapes decide")
      XCTAssertEqual(c.numClasses, classes)
      XCTAssertEqual(c.imageSize, ConfigInference.defaultImageSize)
      XCTAssertEqual(try ConfigInference.config(of: f, modelName: name, numClasses: classes, imageSize: 64).source, .flags)
    }
    let f = try SafeTensorsFile(path: "\(dir!)/mobilenet_v2_035.safetensors")
    assertOneLineError(try ConfigInference.config(of: f, modelName: "mobilenet_v2"),
                       contains: ["mobilenet_v2_035.safetensors", "MobilenetV2/Conv/weights", "--model-name mobilenet_v2"])
    assertOneLineError(try ConfigInference.config(of: f, numClasses: 1001),
                       contains: ["mobilenet_v2_035.safetensors", "MobilenetV2/Logits/Conv2d_1c_1x1/biases", "--num-classes 1001"])
  }

  /// Rewrites a safetensors file without its `__metadata__`, as a converter from PyTorch would.
  func stripMetadata(_ path: String) throws {
    let f = try SafeTensorsFile(path: path)
    try withCopies(of: f) { try SafeTensors.write($0, metadata: [:], to: path) }
  }

  // MARK: Bad input: one line naming the file and the tensor

  func readAll(_ f: TensorFile) throws {
    for n in f.names {
      let e = f.entry(n)!
      var b = [UInt8](repeating: 0, count: e.count * e.dtype!.size)
      try b.withUnsafeMutableBytes { try f.read(n, into: $0.baseAddress!) }
    }
  }

  func testTruncatedIndexAndData() throws {
    let prefix = try fixtureCopy()
    let data = "\(prefix).data-00000-of-00001"
    let bytes = try Data(contentsOf: URL(fileURLWithPath: data))
    try bytes.prefix(bytes.count - 1000).write(to: URL(fileURLWithPath: data))
    let f = try TFCheckpointFile(prefix: prefix)
    assertOneLineError(try readAll(f), contains: [data, "tensor ", "truncated"])

    let index = "\(prefix).index"
    let ib = try Data(contentsOf: URL(fileURLWithPath: index))
    for cut in [10, ib.count / 2, ib.count - 1] {
      try ib.prefix(cut).write(to: URL(fileURLWithPath: index))
      assertOneLineError(try TFCheckpointFile(prefix: prefix), contains: [index])
    }
  }

  func testCRCMismatchInDataAndIndex() throws {
    let prefix = try fixtureCopy()
    let probe = try TFCheckpointFile(prefix: prefix)
    // Flip one byte inside the first tensor of the data file (the stored order is the index order).
    let data = "\(prefix).data-00000-of-00001"
    var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: data)))
    bytes[100] ^= 0x40
    try Data(bytes).write(to: URL(fileURLWithPath: data))
    XCTAssertThrowsError(try readAll(probe)) { e in
      XCTAssertTrue("\(e)".contains(data) && "\(e)".contains("CRC-32C") && "\(e)".contains("tensor MobilenetV2/"), "\(e)")
      XCTAssertFalse("\(e)".contains("\n"))
    }
    // Flip one byte of a key in the index's first data block.
    let index = "\(prefix).index"
    var ib = [UInt8](try Data(contentsOf: URL(fileURLWithPath: index)))
    ib[40] ^= 0x01
    try Data(ib).write(to: URL(fileURLWithPath: index))
    assertOneLineError(try TFCheckpointFile(prefix: prefix), contains: [index, "CRC-32C mismatch"])
  }

  func testMissingShardNamesTheFileAndATensor() throws {
    let m = MobileNetV2(config: try config(), seed: 1)
    let prefix = "\(dir!)/model.ckpt-3"
    try ModelCheckpoint.saveTF(model: m, globalStep: 3, prefix: prefix, shards: 2)
    let gone = TFCheckpoint.dataPath(prefix: prefix, shard: 1, of: 2)
    try FileManager.default.removeItem(atPath: gone)
    assertOneLineError(try TFCheckpointFile(prefix: prefix), contains: [gone, "missing", "tensor MobilenetV2/"])
  }

  func testDtypeShapeAndNotAMobileNet() throws {
    let m = MobileNetV2(config: try config(), seed: 1)
    var doubles = [Double](repeating: 0.5, count: 3 * 3 * 3 * 16)
    let stem = m.trainable.spec(named: "MobilenetV2/Conv/weights")!
    var sources: [TensorSource] = []
    try doubles.withUnsafeMutableBytes { d in
      for spec in m.trainable.specs + m.state.specs {
        let buf = spec.role.isTrainable ? m.parameters : m.stateValues
        sources.append(spec.name == stem.name ? TensorSource(name: spec.name, dtype: .f64, shape: spec.shape, data: d.baseAddress!)
                       : TensorSource(name: spec.name, dtype: .f32, shape: spec.shape, data: UnsafeRawPointer(buf.base + spec.offset)))
      }
      try TFCheckpoint.write(sources, prefix: "\(dir!)/f64")
    }
    let f64 = try TFCheckpointFile(prefix: "\(dir!)/f64")
    assertOneLineError(try ModelCheckpoint.load(m.checkpointSlabs, from: f64), contains: ["\(dir!)/f64", "MobilenetV2/Conv/weights", "DT_DOUBLE"])

    try ModelCheckpoint.saveTF(model: m, globalStep: 1, prefix: "\(dir!)/small")
    let other = MobileNetV2(config: try config("mobilenet_v2_050"), seed: 1)
    assertOneLineError(try ModelCheckpoint.load(other.checkpointSlabs, from: TFCheckpointFile(prefix: "\(dir!)/small")),
                       contains: ["\(dir!)/small", "tensor MobilenetV2/", "shape"])

    var w = [Float](repeating: 1, count: 12)
    try w.withUnsafeMutableBytes { p in
      try TFCheckpoint.write([TensorSource(name: "dense/kernel", dtype: .f32, shape: [3, 4], data: p.baseAddress!)], prefix: "\(dir!)/dense")
    }
    assertOneLineError(try ConfigInference.config(of: TFCheckpointFile(prefix: "\(dir!)/dense")),
                       contains: ["\(dir!)/dense", "not a MobileNetV2 checkpoint", "MobilenetV2/Conv/weights"])
    _ = doubles.count
  }

  func testCompressedOrForeignIndexIsRefused() throws {
    // A table whose one data block claims snappy compression (with a valid CRC).
    let prefix = try fixtureCopy()
    let index = "\(prefix).index"
    var ib = [UInt8](try Data(contentsOf: URL(fileURLWithPath: index)))
    // The first block starts at 0; find its trailer through the index handle in the footer's index block
    // by brute force: the first data block is followed by the type byte 0 and a CRC over block+type.
    var patched = false
    for end in stride(from: 16, to: ib.count - 53, by: 1) where ib[end] == 0 {
      let stored = (0..<4).reduce(UInt32(0)) { $0 | UInt32(ib[end + 1 + $1]) << (8 * UInt32($1)) }
      if CRC32C.masked(CRC32C.checksum(Array(ib[0...end]))) == stored {
        ib[end] = 1
        let crc = CRC32C.masked(CRC32C.checksum(Array(ib[0...end])))
        for i in 0..<4 { ib[end + 1 + i] = UInt8((crc >> (8 * UInt32(i))) & 0xFF) }
        patched = true
        break
      }
    }
    XCTAssertTrue(patched)
    try Data(ib).write(to: URL(fileURLWithPath: index))
    assertOneLineError(try TFCheckpointFile(prefix: prefix), contains: [index, "snappy"])
    // A safetensors file is not an index.
    let st = "\(dir!)/x.safetensors"
    try ModelCheckpoint.save(model: MobileNetV2(config: try config(), seed: 1), globalStep: 1, to: st)
    try FileManager.default.copyItem(atPath: st, toPath: "\(dir!)/y.index")
    assertOneLineError(try TFCheckpointFile(prefix: "\(dir!)/y"), contains: ["\(dir!)/y.index", "not a TensorFlow checkpoint index"])
  }
}
