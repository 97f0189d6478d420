// One job across two simulated servers (issue 11): "server" 127.0.1.1 runs ranks 0-1 on
// 127.0.1.11-12, "server" 127.0.2.1 ranks 2-3 on 127.0.2.11-12 (all loopback), one launch each,
// sharing only the table and a secret file. The launches agree over their control channel on
// one root cause and one restart budget: a killed worker on server 2 ends both launches with the
// same cause; with --max-restarts 1 the job restarts and ends with the uninterrupted run's
// weights; a stopped server (launch and workers) is named within 15 s.

import Cluster
import Collective
import Foundation
import XCTest

final class TwoServerTests: XCTestCase {
  var dir: URL!
  var bin: URL!
  override func setUpWithError() throws {
    dir = try temporaryDirectory(name.filter { $0.isLetter || $0.isNumber })
    bin = try productsDirectory()
  }
  override func tearDown() { if let dir { try? FileManager.default.removeItem(at: dir) } }

  private var launch: URL { bin.appendingPathComponent("launch") }
  static let servers = [("127.0.1.1", ["127.0.1.11", "127.0.1.12"]), ("127.0.2.1", ["127.0.2.11", "127.0.2.12"])]

  /// Both launches of one job; `flags` go before `--`, `worker` after it.
  func startJob(_ name: String, flags: [String], worker: [String]) throws -> (Child, Child, logs: String) {
    let sub = dir.appendingPathComponent(name)
    try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)
    let table = try writeTable(sub, servers: Self.servers)
    let secret = try writeSecret(sub)
    let control = try XCTUnwrap(LoopbackPorts.findFree(count: 1, hosts: ["127.0.1.1"]))
    let logs = sub.appendingPathComponent("logs").path
    func one(_ server: String) throws -> Child {
      try Child(launch, ["--rank-table", table, "--server-id", server, "--secret-file", secret, "--log-dir", logs,
                         "--control-port", "\(control)", "--grace-period", "1"] + flags + ["--"] + worker)
    }
    return (try one("127.0.1.1"), try one("127.0.2.1"), logs)
  }

  func log(_ logs: String, rank: Int) -> String {
    (try? String(contentsOfFile: "\(logs)/\(rank)/worker.log", encoding: .utf8)) ?? ""
  }

  /// Waits until both launches said the control channel is complete: before that, a failure on
  /// server 2 cannot reach the coordinator (CI once stopped server 2 before it had joined).
  func assertJoined(_ a: Child, _ b: Child, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertTrue(waitFor(30) { a.output.contains("launch: all 2 servers joined the job's control channel") }, a.output,
                  file: file, line: line)
    XCTAssertTrue(waitFor(30) { b.output.contains("launch: joined the job's control channel (coordinating launch: server 127.0.1.1)") },
                  b.output, file: file, line: line)
  }

  /// The job's root-cause line of a launch's output.
  func jobCause(_ output: String) -> String? {
    output.split(separator: "\n").first { $0.hasPrefix("launch: job: ") }.map(String.init)
  }

  /// (a) SIGKILL of rank 3 (server 2): both launches end with rc 1 within seconds, naming the same cause.
  func testKilledWorkerOnServerTwoEndsBothLaunchesWithTheSameRootCause() throws {
    let (a, b, logs) = try startJob("kill", flags: ["--connect-timeout", "60"],
                                    worker: ["self-test", "--counts", "1000", "--loop-seconds", "120"])
    XCTAssertTrue(waitFor(60) { self.log(logs, rank: 3).contains("self-test passed") }, log(logs, rank: 3))
    assertJoined(a, b)
    let pid = try XCTUnwrap(workerPIDs(in: log(logs, rank: 3)).first)
    XCTAssertEqual(kill(pid, SIGKILL), 0)
    let killed = Date()
    let ra = a.wait(timeout: 40), rb = b.wait(timeout: 40)
    let seconds = Date().timeIntervalSince(killed)
    XCTAssertEqual(ra.status, 1, ra.output)
    XCTAssertEqual(rb.status, 1, rb.output)
    XCTAssertLessThan(seconds, 15, "both launches must stop within seconds")
    let causeA = try XCTUnwrap(jobCause(ra.output), ra.output), causeB = try XCTUnwrap(jobCause(rb.output), rb.output)
    XCTAssertEqual(causeA, causeB, "every server names the same root cause")
    XCTAssertTrue(causeA.contains("rank 3 (server 127.0.2.1, device 1, 127.0.2.12:") && causeA.contains("was killed by signal 9"), causeA)
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }

  /// (c) SIGSTOP of server 2 (its launch and both workers): server 1's launch names the server
  /// within 15 s (default timeouts: nothing shortened), and stops.
  func testStoppedServerIsDetectedAndNamedWithinFifteenSeconds() throws {
    let (a, b, logs) = try startJob("stop", flags: [], worker: ["self-test", "--counts", "1000", "--loop-seconds", "120"])
    XCTAssertTrue(waitFor(60) { self.log(logs, rank: 3).contains("self-test passed") && self.log(logs, rank: 0).contains("self-test passed") })
    // Stopped before its launch joined the control channel, server 2 could neither be named as a
    // silent server nor receive the decision (the coordinator sends only to servers it heard).
    assertJoined(a, b)
    let stopped = [b.process.processIdentifier] + [2, 3].flatMap { workerPIDs(in: log(logs, rank: $0)) }
    XCTAssertEqual(stopped.count, 3)
    for p in stopped { kill(p, SIGSTOP) }
    let start = Date()
    XCTAssertTrue(waitFor(20) { self.jobCause(a.output) != nil }, a.output)
    let detected = Date().timeIntervalSince(start)
    XCTAssertLessThan(detected, 15, "a stopped server must be detected within 15 s")
    let cause = jobCause(a.output) ?? ""
    XCTAssertTrue(cause.contains("server 127.0.2.1 (ranks 2,3) stopped answering"), cause)
    let ra = a.wait(timeout: 20)
    XCTAssertEqual(ra.status, 1, ra.output)
    // Resumed, server 2's launch learns the decision (queued for it) and stops its workers.
    for p in stopped { kill(p, SIGCONT) }
    let rb = b.wait(timeout: 30)
    XCTAssertEqual(rb.status, 1, rb.output)
    XCTAssertEqual(jobCause(rb.output), cause, rb.output)
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
    print("stopped server named after \(String(format: "%.1f", detected)) s")
  }

  /// (b) With --max-restarts 1 on both launches, SIGKILL of rank 3 mid-training restarts the job
  /// on both servers; it resumes from the newest checkpoint and ends with the weights (and the
  /// checkpoint bytes) of an uninterrupted run.
  func testJobRestartsOnBothServersAndEndsWithTheUninterruptedWeights() throws {
    let data = dir.appendingPathComponent("data").path
    let synth = try runProcess(bin.appendingPathComponent("dataset"),
                               ["synth", "--output", data, "--classes", "3", "--train-examples", "128", "--validation-examples", "0",
                                "--image-size", "32", "--shards", "4"], timeout: 60)
    XCTAssertEqual(synth.status, 0, synth.output)
    let steps = 160
    func train(_ name: String) -> [String] {
      ["--dataset-dir", data, "--model-name", "mobilenet_v2_035", "--num-classes", "3", "--image-size", "32", "--batch-size", "4",
       "--max-train-steps", "\(steps)", "--learning-rate", "0.01", "--learning-rate-decay-type", "fixed", "--batch-norm-decay", "0.9",
       "--train-dir", dir.appendingPathComponent("\(name)-train").path, "--save-checkpoints-steps", "10", "--log-every-n-steps", "10",
       "--decode-threads", "1", "--seed", "7"]
    }
    func checksum(_ text: String) -> String? {
      guard let r = text.range(of: "weights identical on all 4 ranks (checksum ") else { return nil }
      return String(text[r.upperBound...].prefix { $0 != ")" })
    }
    let timeouts = ["--connect-timeout", "60", "--running-timeout", "20"]
    let (ra, rb, _) = try startJob("reference", flags: timeouts, worker: train("reference"))
    let refA = ra.wait(timeout: 300), refB = rb.wait(timeout: 60)
    XCTAssertEqual(refA.status, 0, refA.output)
    XCTAssertEqual(refB.status, 0, refB.output)
    let expected = try XCTUnwrap(checksum(refA.output), refA.output)

    let (a, b, logs) = try startJob("restart", flags: timeouts + ["--max-restarts", "1"], worker: train("restart"))
    XCTAssertTrue(waitFor(240) { self.log(logs, rank: 0).contains("model.ckpt-50.safetensors") }, log(logs, rank: 0))
    let pid = try XCTUnwrap(workerPIDs(in: log(logs, rank: 3)).first)
    XCTAssertEqual(kill(pid, SIGKILL), 0)
    let resA = a.wait(timeout: 300), resB = b.wait(timeout: 60)
    XCTAssertEqual(resA.status, 0, resA.output)
    XCTAssertEqual(resB.status, 0, resB.output)
    let causeA = jobCause(resA.output), causeB = jobCause(resB.output)
    XCTAssertNotNil(causeA, resA.output)
    XCTAssertEqual(causeA, causeB)
    XCTAssertTrue(causeA?.contains("rank 3 (server 127.0.2.1") == true && causeA?.contains("killed by signal 9") == true, causeA ?? "")
    for out in [resA.output, resB.output] {
      XCTAssertTrue(out.contains("launch: restarting the job on every server (restart 1 of 1)"), out)
    }
    XCTAssertTrue(resA.output.contains("resumed from"), resA.output)
    XCTAssertEqual(checksum(resA.output), expected, "the restarted job ends with other weights than the uninterrupted one")
    let last = "model.ckpt-\(steps).safetensors"
    let refBytes = FileManager.default.contents(atPath: dir.appendingPathComponent("reference-train/\(last)").path)
    let resBytes = FileManager.default.contents(atPath: dir.appendingPathComponent("restart-train/\(last)").path)
    XCTAssertNotNil(refBytes, "no \(last) in the reference run")
    XCTAssertEqual(refBytes, resBytes, "final checkpoints differ byte for byte")
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }
}
