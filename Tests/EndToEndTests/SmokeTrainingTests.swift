// The user's main job through the real executables: `launch` two workers on loopback that train on
// a synthetic TFRecord dataset, then resume, then `evaluate`. What CI's 2-rank smoke run checks.
import Collective
import DataPipeline
import Foundation
import XCTest

final class SmokeTrainingTests: XCTestCase {
  var dir: String!

  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "smoke-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

  /// The built executables live next to the test bundle.
  static var products: URL {
    var url = URL(fileURLWithPath: CommandLine.arguments.first { $0.hasSuffix(".xctest") } ?? CommandLine.arguments[0])
    while url.pathExtension == "xctest" || url.lastPathComponent == "Contents" { url.deleteLastPathComponent() }
    if !FileManager.default.fileExists(atPath: url.appendingPathComponent("launch").path) {
      url = Bundle(for: SmokeTrainingTests.self).bundleURL.deletingLastPathComponent()
    }
    return url
  }

  /// The repository root (for rank_table/).
  static var root: String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
  }

  @discardableResult
  func run(_ exe: String, _ args: [String], timeout: TimeInterval = 300) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = Self.products.appendingPathComponent(exe)
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: dir)
    let out = URL(fileURLWithPath: "\(dir!)/\(exe)-\(UUID().uuidString.prefix(6)).out")
    FileManager.default.createFile(atPath: out.path, contents: nil)
    let h = try FileHandle(forWritingTo: out)
    p.standardOutput = h
    p.standardError = h
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
    if p.isRunning { p.terminate(); p.waitUntilExit(); XCTFail("\(exe) timed out") }
    p.waitUntilExit()
    try h.close()
    return (p.terminationStatus, (try? String(contentsOf: out, encoding: .utf8)) ?? "")
  }

  /// A learnable synthetic `train` split in 2 TFRecord shards under `dir/data`; returns its options.
  @discardableResult
  func writeSyntheticTrainSplit(classes: Int, examples: Int, side: Int) throws -> SyntheticOptions {
    var synth = SyntheticOptions()
    synth.classes = classes
    synth.examples = examples
    synth.width = side
    synth.height = side
    try Synthetic.write(to: "\(dir!)/data", split: "train", shards: 2, options: synth)
    return synth
  }

  func testTwoRankTrainingResumeAndEvaluate() throws {
    var synth = try writeSyntheticTrainSplit(classes: 4, examples: 512, side: 40)
    synth.examples = 48
    synth.seed = 99
    try Synthetic.write(to: "\(dir!)/data", split: "validation", shards: 1, options: synth)

    let port = try XCTUnwrap(LoopbackPorts.findFree(count: 2), "no free loopback ports")
    func train(steps: Int) throws -> (Int32, String) {
      try run("launch", ["--rank-table", "\(Self.root)/rank_table/2p.json", "--base-port", "\(port)",
                         "--log-dir", "\(dir!)/logs", "--connect-timeout", "60", "--running-timeout", "60", "--",
                         "--dataset-dir", "\(dir!)/data", "--model_name", "mobilenet_v2_035", "--num_classes", "4",
                         "--image-size", "32", "--batch-size", "16", "--max-train-steps", "\(steps)",
                         "--learning-rate", "0.01", "--learning-rate-decay-type", "fixed", "--batch-norm-decay", "0.9",
                         "--train-dir", "\(dir!)/train", "--save-checkpoints-steps", "15", "--log-every-n-steps", "10",
                         "--decode-threads", "1", "--iterations_per_loop", "10"])
    }
    let (status, out) = try train(steps: 30)
    XCTAssertEqual(status, 0, out)
    XCTAssertTrue(out.contains("step:"), "rank 0's log lines reach the console:\n\(out)")
    XCTAssertTrue(out.contains("iterations_per_loop is accepted"), out)

    // Both ranks finished and agree on the weights; only rank 0 saved.
    let log0 = try String(contentsOfFile: "\(dir!)/logs/0/worker.log", encoding: .utf8)
    let log1 = try String(contentsOfFile: "\(dir!)/logs/1/worker.log", encoding: .utf8)
    for log in [log0, log1] { XCTAssertTrue(log.contains("weights identical on all 2 ranks"), log) }
    XCTAssertTrue(log0.contains("saved checkpoint"))
    XCTAssertFalse(log1.contains("saved checkpoint"))
    let ckpts = try FileManager.default.contentsOfDirectory(atPath: "\(dir!)/train").filter { $0.hasSuffix(".safetensors") }.sorted()
    XCTAssertEqual(ckpts, ["model.ckpt-15.safetensors", "model.ckpt-30.safetensors"])

    // Loss falls: the first logged window against the last.
    let metrics = try String(contentsOfFile: "\(dir!)/train/metrics.jsonl", encoding: .utf8)
      .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    let losses = metrics.map { $0["loss"] as! Double }
    XCTAssertEqual(metrics.count, 3)
    XCTAssertLessThan(losses.last!, losses.first!, "loss did not fall: \(losses)")

    // Resume from step 30 to 40.
    let (status2, out2) = try train(steps: 40)
    XCTAssertEqual(status2, 0, out2)
    XCTAssertTrue(out2.contains("resumed from") && out2.contains("model.ckpt-30.safetensors"), out2)
    XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir!)/train/model.ckpt-40.safetensors"))

    // Evaluate reads the result: settings from the checkpoint's metadata.
    let (status3, out3) = try run("evaluate", ["--checkpoint-path", "\(dir!)/train", "--dataset-dir", "\(dir!)/data",
                                               "--batch-size", "16", "--threads", "1"])
    XCTAssertEqual(status3, 0, out3)
    XCTAssertTrue(out3.contains("model.ckpt-40.safetensors step=40 top1="), out3)
    XCTAssertTrue(out3.contains("images=48"), out3)

    // predict: top classes of JPEG files, with class names from labels.txt beside the checkpoint.
    try "0:circle\n1:square\n2:stripes\n3:ring\n".write(toFile: "\(dir!)/train/labels.txt", atomically: true, encoding: .utf8)
    var paths: [String] = []
    for i in 0..<2 {
      let (pixels, _) = Synthetic.image(index: i, options: synth)
      let jpeg = try pixels.withUnsafeBytes { try JPEGCodec().compress($0, width: synth.width, height: synth.height, input: .rgb) }
      let p = "\(dir!)/img\(i).jpg"
      try jpeg.write(to: URL(fileURLWithPath: p))
      paths.append(p)
    }
    let (status4, out4) = try run("predict", ["--checkpoint-path", "\(dir!)/train", "--top-k", "3"] + paths)
    XCTAssertEqual(status4, 0, out4)
    XCTAssertTrue(out4.contains("img0.jpg:") && out4.contains("img1.jpg:"), out4)
    let probLines = out4.split(separator: "\n").filter { $0.contains("%") }
    XCTAssertEqual(probLines.count, 6, out4)
    XCTAssertTrue(probLines.allSatisfy { l in ["circle", "square", "stripes", "ring"].contains { l.hasSuffix($0) } }, out4)
    // A file that is not a JPEG is a one-line error naming it.
    try Data("not a jpeg".utf8).write(to: URL(fileURLWithPath: "\(dir!)/bad.jpg"))
    let (status5, out5) = try run("predict", ["--checkpoint-path", "\(dir!)/train", "\(dir!)/bad.jpg"])
    XCTAssertNotEqual(status5, 0)
    XCTAssertTrue(out5.contains("bad.jpg") && out5.contains("error"), out5)
  }

  /// launch --max-restarts: a worker killed mid-run restarts the whole group, which resumes from the
  /// newest checkpoint and finishes.
  func testKilledWorkerRestartsTheGroupWhichResumes() throws {
    try writeSyntheticTrainSplit(classes: 3, examples: 256, side: 32)
    let port = try XCTUnwrap(LoopbackPorts.findFree(count: 2), "no free loopback ports")
    let (status, out) = try run("launch", [
      "--rank-table", "\(Self.root)/rank_table/2p.json", "--base-port", "\(port)", "--log-dir", "\(dir!)/logs",
      "--max-restarts", "1", "--connect-timeout", "60", "--running-timeout", "10", "--",
      "--dataset-dir", "\(dir!)/data", "--model-name", "mobilenet_v2_035", "--num-classes", "3", "--image-size", "32",
      "--batch-size", "8", "--max-train-steps", "600", "--learning-rate", "0.01", "--save-checkpoints-steps", "20",
      "--train-dir", "\(dir!)/train", "--log-every-n-steps", "50", "--decode-threads", "1",
      "--fault", "kill", "--fault-rank", "1", "--fault-after", "1.5", "--fault-restart", "0",
    ])
    XCTAssertEqual(status, 0, out)
    XCTAssertTrue(out.contains("restarting the group (restart 1 of 1)"), out)
    XCTAssertTrue(out.contains("rank 1") && out.contains("killed by signal 9"), out)
    let log0 = try String(contentsOfFile: "\(dir!)/logs/0/worker.log", encoding: .utf8)
    XCTAssertTrue(log0.contains("resumed from"), log0)
    XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir!)/train/model.ckpt-600.safetensors"))
  }
}
