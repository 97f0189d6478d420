// Workers placed by a torchrun-style environment (issue 11), through the real executable: two
// `worker` processes with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR=127.0.0.1/MASTER_PORT and no rank
// table train together with gradient accumulation, then one worker alone resumes the checkpoint and
// keeps its global batch. Loopback only.
import Collective
import DataPipeline
import Foundation
import XCTest

final class SchedulerLaunchTests: XCTestCase {
  var dir: String!

  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "sched-e2e-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

  /// Starts `worker` with `args` and exactly `extra` on top of this process's environment minus
  /// any engine's variables (a test run under srun or mpirun must not leak them in).
  func start(_ args: [String], _ extra: [String: String], log name: String, executable: String = "worker") throws -> (Process, String) {
    let p = Process()
    p.executableURL = SmokeTrainingTests.products.appendingPathComponent(executable)
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: dir)
    var env = ProcessInfo.processInfo.environment.filter { k, _ in
      !(k.hasPrefix("SLURM_") || k.hasPrefix("OMPI_") || k.hasPrefix("PMIX_") || k.hasPrefix("MNV2_")
        || ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK_TABLE_FILE", "RANK_ID", "JOB_ID"].contains(k))
    }
    env.merge(extra) { $1 }
    p.environment = env
    let out = "\(dir!)/\(name).log"
    FileManager.default.createFile(atPath: out, contents: nil)
    let h = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    p.standardOutput = h
    p.standardError = h
    try p.run()
    return (p, out)
  }

  func wait(_ p: Process, timeout: TimeInterval = 240) {
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
    if p.isRunning { p.terminate(); p.waitUntilExit(); XCTFail("worker timed out") }
    p.waitUntilExit()
  }

  func testTwoRanksFromATorchrunEnvironmentThenResumeAloneKeepingTheGlobalBatch() throws {
    var synth = SyntheticOptions()
    synth.classes = 4
    synth.examples = 128
    synth.width = 32
    synth.height = 32
    try Synthetic.write(to: "\(dir!)/data", split: "train", shards: 2, options: synth)
    let secret = "\(dir!)/job.secret"
    XCTAssertTrue(FileManager.default.createFile(atPath: secret, contents: Data(JobSecret.generate().hex.utf8),
                                                 attributes: [.posixPermissions: 0o600]))
    let ports = try XCTUnwrap(LoopbackPorts.findFree(count: 3), "no free loopback ports")
    let training = ["--dataset-dir", "\(dir!)/data", "--model-name", "mobilenet_v2_035", "--num-classes", "4",
                    "--image-size", "32", "--batch-size", "8", "--learning-rate", "0.01", "--log-every-n-steps", "1",
                    "--train-dir", "\(dir!)/train", "--checkpoint-format", "safetensors", "--no-summaries",
                    "--decode-threads", "1", "--save-checkpoints-steps", "2"]
    // Global batch 2 ranks × 8 × 2 = 32: 4 steps per epoch over 128 examples.
    var workers: [(Process, String)] = []
    for r in 0..<2 {
      workers.append(try start(training + ["--max-train-steps", "2", "--gradient_accumulation_steps", "2"], [
        "RANK": "\(r)", "WORLD_SIZE": "2", "LOCAL_RANK": "\(r)", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "\(ports)", "TORCHELASTIC_RUN_ID": "e2e",
        "MNV2_JOB_SECRET_FILE": secret, "MNV2_THREADS": "1", "MNV2_CONNECT_TIMEOUT": "60", "MNV2_RUNNING_TIMEOUT": "60",
      ], log: "rank\(r)"))
    }
    for (p, _) in workers { wait(p) }
    for (r, (p, log)) in workers.enumerated() {
      let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
      XCTAssertEqual(p.terminationStatus, 0, "rank \(r):\n\(text.suffix(1500))")
      XCTAssertTrue(text.contains("placement from the torchrun-style (RANK/WORLD_SIZE) environment: rank \(r)/2, local \(r)/2"), text)
      XCTAssertTrue(text.contains("port \(ports + 1 + r) (MASTER_PORT \(ports) + 1 + local rank)"), text)
      XCTAssertTrue(text.contains("done: global step 2"), text)
    }
    let rank0 = (try? String(contentsOfFile: workers[0].1, encoding: .utf8)) ?? ""
    XCTAssertTrue(rank0.contains("batch 8 per rank × 2 accumulated micro-batches (global 32)"), rank0)
    XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir!)/train/model.ckpt-2.safetensors"))

    // One worker alone (no engine variables: one process, no sockets) resumes with K = 4.
    let (alone, log) = try start(training + ["--max-train-steps", "3"], ["MNV2_THREADS": "1"], log: "alone")
    wait(alone)
    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    XCTAssertEqual(alone.terminationStatus, 0, String(text.suffix(1500)))
    XCTAssertTrue(text.contains("keeping the checkpoint's global batch 32 on 1 rank × batch 8: gradient accumulation over 4 micro-batches per step"), text)
    XCTAssertTrue(text.contains("resumed from") && text.contains("done: global step 3"), text)
    XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir!)/train/model.ckpt-3.safetensors"))
  }

  /// `srun --ntasks-per-node=1 launch --ranks-per-node 2`: launch builds the table from Slurm's node
  /// list (here one node, localhost) and supervises its 2 workers as with a rank table.
  func testLaunchRanksPerNodeFromASlurmEnvironment() throws {
    var synth = SyntheticOptions()
    synth.classes = 4
    synth.examples = 64
    synth.width = 32
    synth.height = 32
    try Synthetic.write(to: "\(dir!)/data", split: "train", shards: 2, options: synth)
    let ports = try XCTUnwrap(LoopbackPorts.findFree(count: 2), "no free loopback ports")
    let (p, log) = try start(["--ranks-per-node", "2", "--log-dir", "\(dir!)/logs", "--threads", "1", "--",
                              "--dataset-dir", "\(dir!)/data", "--model-name", "mobilenet_v2_035", "--num-classes", "4",
                              "--image-size", "32", "--batch-size", "8", "--max-train-steps", "2", "--train-dir", "\(dir!)/train",
                              "--checkpoint-format", "safetensors", "--no-summaries", "--decode-threads", "1"],
                             ["SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                              "SLURM_JOB_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0",
                              "MNV2_BASE_PORT": "\(ports)"],
                             log: "launch", executable: "launch")
    wait(p)
    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    XCTAssertEqual(p.terminationStatus, 0, String(text.suffix(2000)))
    XCTAssertTrue(text.contains("launch: Slurm environment: node 0 (localhost) of 1 runs ranks 0…1 of 2, ports \(ports)…\(ports + 1)"), text)
    let rank1 = (try? String(contentsOfFile: "\(dir!)/logs/1/worker.log", encoding: .utf8)) ?? ""
    XCTAssertTrue(rank1.contains("done: global step 2"), rank1)
    XCTAssertTrue(rank1.contains("job slurm-4242"), rank1)
    XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir!)/train/model.ckpt-2.safetensors"))
  }
}
