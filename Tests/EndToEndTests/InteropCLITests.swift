// Interop (issue 10) through the real executables: the TensorFlow-written fixture evaluated by
// prefix and by directory, fine-tuned from with `worker --restore-path`, written back as a TF-only
// train directory that `evaluate` resumes reading, exported to ONNX, and a corrupt copy refused with
// one line naming the file and the tensor.
import DataPipeline
import Foundation
import XCTest

extension SmokeTrainingTests {
  func testTensorFlowCheckpointsThroughTheExecutables() throws {
    var synth = SyntheticOptions()
    synth.classes = 10
    synth.examples = 40
    synth.width = 32
    synth.height = 32
    try Synthetic.write(to: "\(dir!)/data", split: "validation", shards: 1, options: synth)
    // A 4-class task to fine-tune on.
    synth.classes = 4
    synth.examples = 64
    try Synthetic.write(to: "\(dir!)/data4", split: "train", shards: 1, options: synth)
    synth.examples = 20
    try Synthetic.write(to: "\(dir!)/data4", split: "validation", shards: 1, options: synth)
    // A copy of the TensorFlow-written fixture: evaluate writes its summaries beside the checkpoint
    // (eval/), and tests never write into the source tree.
    let fixture = "\(dir!)/tf_mnv2_035"
    try FileManager.default.copyItem(atPath: "\(Self.root)/Tests/CheckpointTests/Fixtures/tf_mnv2_035", toPath: fixture)
    let eval = ["--dataset-dir", "\(dir!)/data", "--image-size", "32", "--central-fraction", "1.0", "--batch-size", "20"]
    func score(_ out: String) -> String? { out.split(separator: "\n").first { $0.contains(" step=") }.map(String.init) }

    let (s1, byPrefix) = try run("evaluate", ["--checkpoint-path", "\(fixture)/model.ckpt-1002"] + eval)
    XCTAssertEqual(s1, 0, byPrefix)
    XCTAssertTrue(byPrefix.contains("model.ckpt-1002 step=1002 top1=") && byPrefix.contains("images=40 ")
                  && byPrefix.contains("(moving average weights)"), byPrefix)
    XCTAssertTrue(byPrefix.contains("mobilenet_v2_035, 10 classes (inferred from tensor shapes)"), byPrefix)
    let (s2, byDir) = try run("evaluate", ["--checkpoint-path", fixture] + eval)
    XCTAssertEqual(s2, 0, byDir)
    XCTAssertEqual(score(byDir), score(byPrefix))

    // Fine-tune from the TF directory into a TF-only train dir; evaluate reads that back.
    let (s3, trained) = try run("worker", ["--dataset-dir", "\(dir!)/data4", "--model-name", "mobilenet_v2_035", "--num-classes", "4",
                                           "--image-size", "32", "--batch-size", "16", "--max-train-steps", "2", "--restore-path", fixture,
                                           "--restore-exclude", "MobilenetV2/Logits/", "--restore-moving-average",
                                           "--checkpoint-format", "tf", "--train-dir", "\(dir!)/ft"])
    XCTAssertEqual(s3, 0, trained)
    XCTAssertTrue(trained.contains("restored 260 tensors from \(fixture)/model.ckpt-1002 (moving-average shadows)"), trained)
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(dir!)/ft").filter { $0.hasPrefix("model.ckpt") || $0 == "checkpoint" }.sorted(),
                   ["checkpoint", "model.ckpt-2.data-00000-of-00001", "model.ckpt-2.index"])
    let (s4, ftEval) = try run("evaluate", ["--checkpoint-path", "\(dir!)/ft", "--dataset-dir", "\(dir!)/data4", "--image-size", "32"])
    XCTAssertEqual(s4, 0, ftEval)
    XCTAssertTrue(ftEval.contains("model.ckpt-2 step=2 top1=") && ftEval.contains("images=20 "), ftEval)
    XCTAssertTrue(ftEval.contains("mobilenet_v2_035, 4 classes (inferred from tensor shapes)"), ftEval)

    // Export to ONNX.
    let (s5, exported) = try run("export", ["--checkpoint-path", fixture, "--image-size", "32", "--output", "\(dir!)/m.onnx"])
    XCTAssertEqual(s5, 0, exported)
    XCTAssertTrue(exported.contains("input images [N, 32, 32, 3] NHWC float32 in [-1, 1]"), exported)
    let size = (try FileManager.default.attributesOfItem(atPath: "\(dir!)/m.onnx")[.size] as? Int) ?? 0
    XCTAssertGreaterThan(size, 1_500_000, "the weights are in the model")

    // A corrupt copy: one line naming the shard and the tensor, non-zero exit.
    try FileManager.default.createDirectory(atPath: "\(dir!)/bad", withIntermediateDirectories: true)
    for f in ["model.ckpt-1002.index", "model.ckpt-1002.data-00000-of-00001"] {
      try FileManager.default.copyItem(atPath: "\(fixture)/\(f)", toPath: "\(dir!)/bad/\(f)")
    }
    let shard = "\(dir!)/bad/model.ckpt-1002.data-00000-of-00001"
    var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: shard)))
    for i in stride(from: 0, to: bytes.count, by: 4096) { bytes[i] ^= 0x10 }
    try Data(bytes).write(to: URL(fileURLWithPath: shard))
    let (s6, refused) = try run("evaluate", ["--checkpoint-path", "\(dir!)/bad/model.ckpt-1002"] + eval)
    XCTAssertNotEqual(s6, 0)
    let errorLines = refused.split(separator: "\n").filter { $0.contains("error") }
    XCTAssertEqual(errorLines.count, 1, refused)
    XCTAssertTrue(errorLines.first?.contains("\(shard): tensor MobilenetV2/") == true && errorLines.first?.contains("CRC-32C") == true, refused)
  }
}
