import Foundation
import XCTest
import DataPipeline

final class LoaderTests: XCTestCase {
  static let size = 8

  /// Decodes every batch of one epoch; returns (example ids by red channel, labels, raw floats).
  func epoch(_ loader: DataLoader, _ e: Int, skip: Int = 0) throws -> (ids: [[Int]], labels: [[Int32]], floats: [[Float]]) {
    let b = loader.config.batchSize, n = loader.config.imageSize * loader.config.imageSize * 3
    var images = [Float](repeating: 0, count: b * n), labels = [Int32](repeating: -1, count: b)
    var out: (ids: [[Int]], labels: [[Int32]], floats: [[Float]]) = ([], [], [])
    loader.start(epoch: e, skipBatches: skip)
    while true {
      let got = try loader.next(images: &images, labels: &labels)
      if got == 0 { break }
      // Red channel of the centre pixel back to 0...255, then to the example id (red = 5·i).
      out.ids.append((0..<got).map { k in
        let red = (images[k * n + (n / 2 / 3) * 3] + 1) * 127.5
        return Int((red / 5).rounded())
      })
      out.labels.append(Array(labels[0..<got]))
      out.floats.append(Array(images[0..<(got * n)]))
    }
    return out
  }

  func config(_ dir: String, training: Bool, batch: Int = 4, rank: Int = 0, world: Int = 1, threads: Int = 2) -> LoaderConfig {
    var c = LoaderConfig(datasetDir: dir, split: training ? "train" : "validation", batchSize: batch,
                         imageSize: LoaderTests.size, training: training)
    c.rank = rank; c.worldSize = world; c.decodeThreads = threads; c.numClasses = 10; c.seed = 42
    c.colorDistortion = false  // keeps the red channel usable as an id
    return c
  }

  /// Evaluation over 1...4 ranks visits every example exactly once; labels match.
  func testEvalVisitsEveryExampleOnceAcrossRanks() throws {
    let dir = try temporaryDirectory(self)
    try writeIdentifiableShards(dir, split: "validation", count: 23, shards: 3)
    for world in 1...4 {
      var seen = [Int](repeating: 0, count: 23)
      for rank in 0..<world {
        let loader = try DataLoader(config(dir, training: false, batch: 4, rank: rank, world: world))
        XCTAssertEqual(loader.examplesInSplit, 23)
        let r = try epoch(loader, 0)
        XCTAssertEqual(r.ids.count, loader.batchesPerEpoch)
        for (ids, labels) in zip(r.ids, r.labels) {
          for (id, label) in zip(ids, labels) {
            seen[id] += 1
            XCTAssertEqual(Int(label), id % 10)
          }
        }
        XCTAssertEqual(r.ids.dropLast().allSatisfy { $0.count == 4 }, true, "only the last batch may be short")
      }
      XCTAssertEqual(seen, [Int](repeating: 1, count: 23), "world \(world)")
    }
  }

  /// Training: full batches, the same count on every rank, disjoint ranks, deterministic
  /// shuffles that change with the epoch.
  func testTrainingShardsShufflesAndDropsRemainder() throws {
    let dir = try temporaryDirectory(self)
    try writeIdentifiableShards(dir, split: "train", count: 40, shards: 4)
    var union = Set<Int>()
    for rank in 0..<2 {
      let loader = try DataLoader(config(dir, training: true, batch: 3, rank: rank, world: 2))
      XCTAssertEqual(loader.batchesPerEpoch, 40 / (3 * 2))
      let e0 = try epoch(loader, 0), e1 = try epoch(loader, 1)
      XCTAssertEqual(e0.ids.count, 6); XCTAssertTrue(e0.ids.allSatisfy { $0.count == 3 })
      XCTAssertNotEqual(e0.ids, e1.ids, "epochs are shuffled differently")
      XCTAssertEqual(e0.ids, try epoch(loader, 0).ids, "same epoch, same order")
      let mine = Set(e0.ids.joined())
      XCTAssertEqual(mine.count, 18, "no repeats within an epoch")
      XCTAssertTrue(union.isDisjoint(with: mine), "ranks overlap")
      union.formUnion(mine)
    }
  }

  /// The same batches, bit for bit, with 1 or 4 decode threads and after resuming mid-epoch.
  func testDeterministicAcrossThreadCountsAndResume() throws {
    let dir = try temporaryDirectory(self)
    try writeIdentifiableShards(dir, split: "train", count: 30, shards: 2)
    var c1 = config(dir, training: true, batch: 4, threads: 1)
    c1.colorDistortion = true
    var c4 = c1
    c4.decodeThreads = 4
    c4.prefetchBatches = 3
    let one = try epoch(try DataLoader(c1), 2)
    let four = try DataLoader(c4)
    XCTAssertEqual(try epoch(four, 2).floats, one.floats)
    let resumed = try epoch(four, 2, skip: 3)
    XCTAssertEqual(resumed.floats, Array(one.floats[3...]))
    XCTAssertEqual(resumed.labels, Array(one.labels[3...]))
    // Restarting while decode threads are busy ahead discards their work cleanly.
    var images = [Float](repeating: 0, count: 4 * 8 * 8 * 3), labels = [Int32](repeating: 0, count: 4)
    four.start(epoch: 5)
    XCTAssertEqual(try four.next(images: &images, labels: &labels), 4)
    XCTAssertEqual(try epoch(four, 2, skip: 1).floats, Array(one.floats[1...]))
    // Skipping past the end gives an empty epoch.
    XCTAssertTrue(try epoch(four, 2, skip: 99).floats.isEmpty)
  }

  /// With no decode threads the consumer decodes every example itself: the same batches, bit for
  /// bit, as decode threads working ahead, in training (with resume) and evaluation.
  func testConsumerDecodesAloneWithoutDecodeThreads() throws {
    let dir = try temporaryDirectory(self)
    try writeIdentifiableShards(dir, split: "train", count: 30, shards: 2)
    try writeIdentifiableShards(dir, split: "validation", count: 11, shards: 2)
    var ahead = config(dir, training: true, batch: 4, threads: 2)
    ahead.colorDistortion = true
    var alone = ahead
    alone.decodeThreads = 0
    let reference = try epoch(try DataLoader(ahead), 1)
    let consumerOnly = try DataLoader(alone)
    XCTAssertEqual(consumerOnly.decodeThreads, 0)
    XCTAssertEqual(try epoch(consumerOnly, 1).floats, reference.floats)
    XCTAssertEqual(try epoch(consumerOnly, 1, skip: 2).labels, Array(reference.labels[2...]))
    let evalAhead = try epoch(try DataLoader(config(dir, training: false, batch: 4, threads: 2)), 0)
    let evalAlone = try epoch(try DataLoader(config(dir, training: false, batch: 4, threads: 0)), 0)
    XCTAssertEqual(evalAlone.floats, evalAhead.floats)
    XCTAssertEqual(evalAlone.ids.joined().sorted(), Array(0..<11))
    var negative = ahead
    negative.decodeThreads = -1
    XCTAssertThrowsError(try DataLoader(negative))
  }

  #if os(Linux)
  /// Decode threads run SCHED_IDLE (only on cores the compute threads leave idle), unless
  /// MNV2_DECODE_SCHED=normal is set for the process.
  func testDecodeThreadsRunAtIdlePriority() throws {
    let dir = try temporaryDirectory(self)
    try writeIdentifiableShards(dir, split: "train", count: 16, shards: 1)
    let loader = try DataLoader(config(dir, training: true, batch: 4, threads: 3))
    _ = try epoch(loader, 0)
    let expected: Int32 = ProcessInfo.processInfo.environment["MNV2_DECODE_SCHED"] == "normal" ? 0 : 5  // SCHED_OTHER, SCHED_IDLE
    // Each thread sets its policy first thing; give a late starter a moment.
    let deadline = Date().addingTimeInterval(10)
    var policies: [Int32] = []
    repeat {
      policies = decodeThreadPolicies()
      if policies.count >= 3 && policies.allSatisfy({ $0 == expected }) { break }
      Thread.sleep(forTimeInterval: 0.05)
    } while Date() < deadline
    XCTAssertGreaterThanOrEqual(policies.count, 3, "decode threads found by name in /proc/self/task")
    XCTAssertEqual(Set(policies), [expected])
    XCTAssertEqual(sched_getscheduler(0), 0, "the calling (consumer) thread keeps SCHED_OTHER")
  }

  /// Scheduling policies of this process's threads named decode-N.
  func decodeThreadPolicies() -> [Int32] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { tid -> Int32? in
      guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
            comm.hasPrefix("decode-"), let id = Int32(tid) else { return nil }
      return sched_getscheduler(id)
    }
  }
  #endif

  func testImageFolderLayouts() throws {
    let dir = try temporaryDirectory(self)
    // root/train/<class>/ and root/validation/<class>/, classes sorted by name.
    for (split, n) in [("train", 3), ("validation", 2)] {
      for cls in ["zebra", "apple", "mango"] {
        let d = "\(dir)/\(split)/\(cls)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        for i in 0..<n { try identifiableJPEG(i).write(to: URL(fileURLWithPath: "\(d)/img\(i).JPG")) }
        try Data("not an image".utf8).write(to: URL(fileURLWithPath: "\(d)/notes.txt"))
      }
    }
    let source = try DatasetSource.detect(directory: dir, split: "validation")
    XCTAssertEqual(source.layout, .imageFolder)
    XCTAssertEqual(source.classNames, ["apple", "mango", "zebra"])
    XCTAssertEqual(source.imageLabels, [0, 0, 1, 1, 2, 2])
    XCTAssertEqual(try DatasetSource.detect(directory: dir, split: "validation", backgroundClass: true).imageLabels, [1, 1, 2, 2, 3, 3])
    let loader = try DataLoader(config(dir, training: false, batch: 4))
    XCTAssertEqual(loader.examplesInSplit, 6)
    XCTAssertEqual(try epoch(loader, 0).labels.joined().sorted(), [0, 0, 1, 1, 2, 2])
    // A flat root/<class>/ folder is the train split only.
    let flat = try temporaryDirectory(self, "flat")
    try FileManager.default.createDirectory(atPath: flat + "/cat", withIntermediateDirectories: true)
    try identifiableJPEG(1).write(to: URL(fileURLWithPath: flat + "/cat/a.jpeg"))
    XCTAssertEqual(try DatasetSource.detect(directory: flat, split: "train").files.count, 1)
    XCTAssertThrowsError(try DatasetSource.detect(directory: flat, split: "validation"))
  }

  func testClearErrorsBeforeTraining() throws {
    let dir = try temporaryDirectory(self)
    func message(_ c: LoaderConfig) -> String {
      do { _ = try DataLoader(c); return "no error" } catch { return "\(error)" }
    }
    XCTAssertEqual(message(config(dir + "/nope", training: true)), "dataset directory \(dir)/nope does not exist")
    XCTAssertTrue(message(config(dir, training: true)).contains("holds no TFRecord shards"), message(config(dir, training: true)))
    try writeIdentifiableShards(dir, split: "train", count: 12, shards: 2)
    XCTAssertEqual(message(config(dir, training: false)), "no files for split 'validation' in \(dir)")
    var c = config(dir, training: true)
    c.numClasses = 5  // labels go up to 9
    let m = message(c)
    XCTAssertTrue(m.contains("outside [0, 5)") && m.contains(dir + "/train-0000"), m)
    c.numClasses = 10
    c.labelsOffset = 1  // label 0 becomes −1
    XCTAssertTrue(message(c).contains("label -1"), message(c))
  }

  func testCountIsCachedNextToTheData() throws {
    let dir = try temporaryDirectory(self)
    try writeIdentifiableShards(dir, split: "train", count: 9, shards: 3)
    let source = try DatasetSource.detect(directory: dir, split: "train")
    XCTAssertEqual(try RecordCounts.counts(of: source), [3, 3, 3])
    let cache = RecordCounts.cachePath(directory: dir, split: "train")
    XCTAssertTrue(FileManager.default.fileExists(atPath: cache))
    // A doctored cache for the same files is believed (proving it is used) ...
    var text = try String(contentsOfFile: cache, encoding: .utf8)
    text = text.replacingOccurrences(of: "\"records\":3", with: "\"records\":4")
    try text.write(toFile: cache, atomically: true, encoding: .utf8)
    XCTAssertEqual(try RecordCounts.counts(of: source), [4, 4, 4])
    // ... and ignored once a file changes.
    try writeIdentifiableShards(dir, split: "train", count: 12, shards: 3)
    XCTAssertEqual(try RecordCounts.counts(of: try DatasetSource.detect(directory: dir, split: "train")), [4, 4, 4])
  }

  /// A corrupt JPEG is skipped and counted (eval: one fewer example; training: a substitute
  /// keeps the batch full); a CRC error stops with file and offset unless skipping is asked.
  func testCorruptInputs() throws {
    let dir = try temporaryDirectory(self)
    let w = try ShardWriter(directory: dir, split: "validation", shards: 1)
    for i in 0..<6 {
      var data = try identifiableJPEG(i)
      if i == 2 { data = data.prefix(data.count / 2) }  // truncated JPEG
      try w.write(ImageExample(encoded: data, label: Int64(i)))
    }
    try w.close()
    let loader = try DataLoader(config(dir, training: false, batch: 4))
    let r = try epoch(loader, 0)
    XCTAssertEqual(r.ids.joined().sorted(), [0, 1, 3, 4, 5])
    XCTAssertEqual(loader.skippedCorruptImages, 1)

    try FileManager.default.moveItem(atPath: dir + "/validation-00000-of-00001", toPath: dir + "/train-00000-of-00001")
    let t = try DataLoader(config(dir, training: true, batch: 3))
    let tr = try epoch(t, 0)
    XCTAssertEqual(tr.ids.map(\.count), [3, 3])
    XCTAssertFalse(tr.ids.joined().contains(2))
    XCTAssertGreaterThanOrEqual(t.skippedCorruptImages, 1)

    // Flip one byte inside the 4th record's payload.
    let path = dir + "/train-00000-of-00001"
    let offsets = try TFRecord.index(path: path).records.map(\.offset)
    var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    bytes[offsets[3] + 20] ^= 0xFF
    try bytes.write(to: URL(fileURLWithPath: path))
    // The first scan of the split reads every record, so this stops before training starts.
    XCTAssertThrowsError(try DataLoader(config(dir, training: true, batch: 3))) { e in
      XCTAssertEqual("\(e)", "TFRecord data CRC mismatch in \(path) at byte offset \(offsets[3])")
    }
    var lenient = config(dir, training: true, batch: 3)
    lenient.skipCorruptRecords = true
    let l = try DataLoader(lenient)
    XCTAssertEqual(try epoch(l, 0).ids.map(\.count), [3, 3])
    XCTAssertGreaterThanOrEqual(l.skippedCorruptRecords, 1)
  }
}
