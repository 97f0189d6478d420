// End to end through the built executables: `launch` starting `worker`s over ZeroMQ on loopback.
// Short timeouts keep failures fast; every test checks that no worker outlives it.

import Cluster
import Collective
import Foundation
import XCTest

final class LaunchTests: XCTestCase {
  /// Timeouts passed to the workers: short, so failure tests finish in seconds.
  static let timeoutFlags = ["--connect-timeout", "20", "--running-timeout", "4", "--grace-period", "2"]
  static let smallCounts = ["--counts", "0,1,7,1000,100000"]

  var dir: URL!
  var bin: URL!

  override func setUpWithError() throws {
    dir = try temporaryDirectory(name.filter { $0.isLetter || $0.isNumber })
    bin = try productsDirectory()
  }

  override func tearDown() {
    if let dir { try? FileManager.default.removeItem(at: dir) }
  }

  private var launch: URL { bin.appendingPathComponent("launch") }
  private var worker: URL { bin.appendingPathComponent("worker") }
  private var logDir: String { dir.appendingPathComponent("logs").path }

  func testTwoRanksRunTheSelfTest() throws {
    let base = try XCTUnwrap(LoopbackPorts.findFree(count: 2))
    let r = try runProcess(launch, ["--local-ranks", "2", "--base-port", "\(base)", "--log-dir", logDir] + Self.timeoutFlags
                    + ["--", "self-test"] + Self.smallCounts, timeout: 60)
    XCTAssertEqual(r.status, 0, r.output)
    XCTAssertTrue(r.output.contains("rank 0: self-test passed (2 ranks"), r.output)
    XCTAssertFalse(r.output.contains("rank 1: self-test passed"), "only rank 0's ordinary lines reach the console")
    let log1 = try String(contentsOfFile: "\(logDir)/1/worker.log", encoding: .utf8)
    XCTAssertTrue(log1.contains("rank 1: self-test passed"), log1)
    XCTAssertTrue(log1.contains("threads 1"), "2 cores ÷ 2 workers: \(log1)")
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }

  func testEightRanksOnDistinctLoopbackAddressesFromARankTable() throws {
    let table = try writeTable(dir, servers: [("127.0.0.1", (1...8).map { "127.0.100.\(100 + $0)" })])
    let r = try runProcess(launch, ["--rank-table", table, "--log-dir", logDir, "--security", "curve"] + Self.timeoutFlags
                    + ["--", "self-test"] + Self.smallCounts, timeout: 120)
    XCTAssertEqual(r.status, 0, r.output)
    XCTAssertTrue(r.output.contains("rank 0: self-test passed (8 ranks"), r.output)
    for rank in 0..<8 {
      let log = try String(contentsOfFile: "\(logDir)/\(rank)/worker.log", encoding: .utf8)
      XCTAssertTrue(log.contains("rank \(rank): self-test passed"), "rank \(rank): \(log)")
    }
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }

  /// `launch` of `ranks` local workers looping allreduces after the self-test, where `faultRank`
  /// injects `fault` (kill, stop or fail) 0.5 s in; returns the base port and launch's result.
  func runFaultyLoop(ranks: Int, fault: String, faultRank: Int, loopSeconds: Int = 60, launchFlags: [String] = [],
                     workerFlags: [String] = [], timeout: Double = 60) throws -> (base: Int, result: RunResult) {
    let base = try XCTUnwrap(LoopbackPorts.findFree(count: ranks))
    let r = try runProcess(launch, ["--local-ranks", "\(ranks)", "--base-port", "\(base)", "--log-dir", logDir] + launchFlags
                    + Self.timeoutFlags + ["--", "self-test", "--counts", "1000", "--loop-seconds", "\(loopSeconds)",
                                           "--fault", fault, "--fault-rank", "\(faultRank)", "--fault-after", "0.5"] + workerFlags,
                    timeout: timeout)
    return (base, r)
  }

  func testKilledRankStopsEveryoneAndIsNamedAsTheRootCause() throws {
    let (base, r) = try runFaultyLoop(ranks: 4, fault: "kill", faultRank: 2)
    XCTAssertNotEqual(r.status, 0)
    XCTAssertLessThan(r.seconds, 15, "launch must stop the job within seconds")
    XCTAssertTrue(r.output.contains("launch: rank 2 (device 2, 127.0.0.1:\(base + 2)) failed first: was killed by signal 9"), r.output)
    // (launch stops the others faster than they notice; testKilledPeerIsNamedByWorkersStartedByHand
    // checks that the workers themselves name the dead rank.)
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }

  /// A stopped (SIGSTOP) rank answers nothing, not even heartbeats: its neighbours drop it and
  /// every rank's error names it; launch kills it (SIGKILL after the grace period).
  func testStoppedRankIsNamedByEveryRank() throws {
    let (base, r) = try runFaultyLoop(ranks: 3, fault: "stop", faultRank: 1)
    XCTAssertNotEqual(r.status, 0)
    XCTAssertLessThan(r.seconds, 20)
    for rank in [0, 2] {
      let log = try String(contentsOfFile: "\(logDir)/\(rank)/worker.log", encoding: .utf8)
      XCTAssertTrue(log.contains("rank 1 (127.0.0.1:\(base + 1))"), "rank \(rank) must name rank 1: \(log)")
    }
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }

  func testMaxRestartsRestartsTheWholeGroup() throws {
    let (base, r) = try runFaultyLoop(ranks: 2, fault: "fail", faultRank: 1, loopSeconds: 3,
                                      launchFlags: ["--max-restarts", "2"], workerFlags: ["--fault-restart", "0"], timeout: 90)
    XCTAssertEqual(r.status, 0, r.output)
    XCTAssertTrue(r.output.contains("launch: rank 1 (device 1, 127.0.0.1:\(base + 1)) failed first: exited with status 1"), r.output)
    XCTAssertTrue(r.output.contains("launch: restarting the group (restart 1 of 2)"), r.output)
    XCTAssertFalse(r.output.contains("restart 2 of 2"), r.output)
    let log1 = try String(contentsOfFile: "\(logDir)/1/worker.log", encoding: .utf8)
    XCTAssertTrue(log1.contains("=== launch: restart 1 ===") && log1.contains("restart 1\n"), log1)
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }

  func testSigtermStopsAllWorkers() throws {
    let base = try XCTUnwrap(LoopbackPorts.findFree(count: 3))
    let child = try Child(launch, ["--local-ranks", "3", "--base-port", "\(base)", "--log-dir", logDir] + Self.timeoutFlags
                          + ["--", "self-test", "--counts", "1000", "--loop-seconds", "60"])
    let deadline = Date(timeIntervalSinceNow: 30)
    while !child.output.contains("self-test passed") && Date() < deadline { usleep(50_000) }
    XCTAssertTrue(child.output.contains("self-test passed"), child.output)
    kill(child.process.processIdentifier, SIGTERM)
    let r = child.wait(timeout: 15)
    XCTAssertEqual(r.status, 128 + SIGTERM, r.output)
    XCTAssertTrue(r.output.contains("launch: stopped all workers on signal \(SIGTERM)"), r.output)
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }

  func testPortInUseIsReportedWithRankAddressAndPort() throws {
    let base = try XCTUnwrap(LoopbackPorts.findFree(count: 2))
    // Occupy rank 1's port with a plain listening socket.
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(base + 1).bigEndian)
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
    let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    XCTAssertEqual(bound, 0)
    listen(fd, 1)
    let r = try runProcess(launch, ["--local-ranks", "2", "--base-port", "\(base)", "--log-dir", logDir] + Self.timeoutFlags
                    + ["--", "self-test"] + Self.smallCounts, timeout: 60)
    XCTAssertNotEqual(r.status, 0)
    XCTAssertTrue(r.output.contains("rank 1 cannot bind 127.0.0.1:\(base + 1): port \(base + 1) is already in use"), r.output)
    XCTAssertTrue(r.output.contains("launch: rank 1 (device 1, 127.0.0.1:\(base + 1)) failed first"), r.output)
    assertNoneAlive(workerPIDs(in: allLogs(dir)))
  }

  /// Workers started by hand (no launch) with different models: both fail with a clear message.
  func testMismatchedModelSignatureAcrossProcesses() throws {
    let table = try writeTable(dir, servers: [("127.0.0.1", ["127.0.0.1", "127.0.0.1"])])
    let env = ["RANK_TABLE_FILE": table, "MNV2_JOB_SECRET_FILE": try writeSecret(dir), "MNV2_CONNECT_TIMEOUT": "20"]
    let a = try Child(worker, ["self-test", "--rank", "0", "--counts", "1000"], environment: env)
    let b = try Child(worker, ["self-test", "--rank", "1", "--counts", "1000", "--signature-salt=-wider"], environment: env)
    for (rank, r) in [(0, a.wait(timeout: 30)), (1, b.wait(timeout: 30))] {
      XCTAssertEqual(r.status, 1, "rank \(rank): \(r.output)")
      XCTAssertTrue(r.output.contains("handshake mismatch: model signature differs"), "rank \(rank): \(r.output)")
    }
  }

  /// Without launch, a killed peer still makes every other rank fail naming it (exit 75).
  func testKilledPeerIsNamedByWorkersStartedByHand() throws {
    let table = try writeTable(dir, servers: [("127.0.0.1", ["127.0.0.1", "127.0.0.1", "127.0.0.1"])])
    let env = ["RANK_TABLE_FILE": table, "MNV2_JOB_SECRET_FILE": try writeSecret(dir), "MNV2_RUNNING_TIMEOUT": "30"]
    let workers = try (0..<3).map { try Child(worker, ["self-test", "--rank", "\($0)", "--counts", "1000", "--loop-seconds", "60"], environment: env) }
    let deadline = Date(timeIntervalSinceNow: 30)
    while !workers[1].output.contains("self-test passed") && Date() < deadline { usleep(50_000) }
    usleep(300_000)
    kill(workers[1].process.processIdentifier, SIGKILL)
    let start = Date()
    for rank in [0, 2] {
      let r = workers[rank].wait(timeout: 20)
      XCTAssertEqual(r.status, peerFailureExitCode, "rank \(rank): \(r.output)")
      XCTAssertTrue(r.output.contains("rank 1 ("), "rank \(rank) must name rank 1: \(r.output)")
    }
    XCTAssertLessThan(Date().timeIntervalSince(start), 10, "well within the 30 s running timeout: the disconnect is seen at once")
    _ = workers[1].wait(timeout: 5)
  }

  /// Two servers simulated on loopback (127.0.1.x and 127.0.2.x), one launch each, one secret file.
  func testTwoServerLoopbackTableWithTwoLaunches() throws {
    let table = try writeTable(dir, servers: [("127.0.1.1", ["127.0.1.11", "127.0.1.12"]), ("127.0.2.1", ["127.0.2.11", "127.0.2.12"])])
    let secret = try writeSecret(dir)
    let a = try Child(launch, ["--rank-table", table, "--server-id", "127.0.1.1", "--secret-file", secret, "--log-dir", logDir]
                      + Self.timeoutFlags + ["--", "self-test"] + Self.smallCounts)
    let b = try Child(launch, ["--rank-table", table, "--server-id", "127.0.2.1", "--secret-file", secret, "--log-dir", logDir]
                      + Self.timeoutFlags + ["--", "self-test"] + Self.smallCounts)
    let ra = a.wait(timeout: 90), rb = b.wait(timeout: 90)
    XCTAssertEqual(ra.status, 0, ra.output)
    XCTAssertEqual(rb.status, 0, rb.output)
    XCTAssertTrue(ra.output.contains("rank 0: self-test passed (4 ranks"), ra.output)
    XCTAssertTrue(rb.output.contains("started 2 workers (ranks 2,3) of 4 on server 127.0.2.1"), rb.output)
    let log3 = try String(contentsOfFile: "\(logDir)/3/worker.log", encoding: .utf8)
    XCTAssertTrue(log3.contains("local 1/2"), log3)
    assertNoneAlive(workerPIDs(in: allLogs(dir)))

    // Without the shared secret the second server's launch refuses to start.
    let c = try runProcess(launch, ["--rank-table", table, "--server-id", "127.0.2.1", "--log-dir", logDir, "--"], timeout: 20)
    XCTAssertNotEqual(c.status, 0)
    XCTAssertTrue(c.output.contains("--secret-file"), c.output)
  }

  func testWorkerAloneNeedsNoTableAndNoSockets() throws {
    let r = try runProcess(worker, ["self-test", "--rank", "3", "--counts", "0,1,1000"], timeout: 30)
    XCTAssertEqual(r.status, 0, r.output)
    XCTAssertTrue(r.output.contains("rank 0/1") && r.output.contains("running alone"), r.output)
    XCTAssertTrue(r.output.contains("self-test passed (1 ranks"), r.output)
  }
}
