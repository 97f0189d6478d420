// The pure parts of launch: who a peer-caused failure blames, negative numbers on the command
// line, where the worker executable is found.
import Cluster
import Foundation
import XCTest

final class LauncherLogicTests: XCTestCase {
  func testBlamedRankIsTheInnermostNamedRank() {
    XCTAssertEqual(blamedRank(inErrorLine: "error: rank 2: lost connection to rank 1 (127.0.0.1:29501): the connection closed"), 1)
    XCTAssertEqual(blamedRank(inErrorLine: "error: rank 0: job aborted by another rank: rank 2 (127.0.0.1:29502): "
                              + "lost connection to rank 1 (127.0.0.1:29501): the connection closed"), 1)
    XCTAssertEqual(blamedRank(inErrorLine: "error: rank 0: rank 3 (127.0.0.1:29503) sent nothing for 4 s during a collective"), 3)
    XCTAssertEqual(blamedRank(inErrorLine: "error: rank 0: job aborted by another rank: rank 2 (127.0.0.1:29502): "
                              + "rank 1 (127.0.0.1:29501) sent nothing for 120 s during a collective (stopped, hung or unreachable)"), 1)
    XCTAssertNil(blamedRank(inErrorLine: "error: rank 0: injected failure"))
  }

  func testNegativeNumbersAreJoinedToTheirOption() {
    XCTAssertEqual(Arguments.joiningNegativeNumbers(["--learning-rate", "-0.1", "--momentum", "-5", "--x_y", "-1e-3", "--seed", "3"]),
                   ["--learning-rate=-0.1", "--momentum=-5", "--x_y=-1e-3", "--seed", "3"])
    XCTAssertEqual(Arguments.joiningNegativeNumbers(["--flag", "--other", "-x", "--a=-1"]), ["--flag", "--other", "-x", "--a=-1"])
    XCTAssertEqual(Arguments.joiningNegativeNumbers(["--threads", "-2", "--", "--lr", "-1"], stopAtTerminator: true),
                   ["--threads=-2", "--", "--lr", "-1"])
    XCTAssertTrue(Arguments.isNegativeNumber("-inf") && Arguments.isNegativeNumber("-nan") && !Arguments.isNegativeNumber("-"))
  }

  func testWorkerIsFoundBesideTheResolvedLaunchThenOnPATH() throws {
    let dir = try temporaryDirectory("worker-lookup")
    defer { try? FileManager.default.removeItem(at: dir) }
    let a = dir.appendingPathComponent("a").path, b = dir.appendingPathComponent("b").path
    for d in [a, b] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
    for d in [a, b] {
      FileManager.default.createFile(atPath: "\(d)/worker", contents: Data("#!/bin/sh\n".utf8), attributes: [.posixPermissions: 0o755])
    }
    XCTAssertEqual(try WorkerExecutable.locate(explicit: nil, selfExecutable: "\(a)/launch", environment: ["PATH": b]), "\(a)/worker")
    XCTAssertEqual(try WorkerExecutable.locate(explicit: nil, selfExecutable: "\(dir.path)/launch", environment: ["PATH": "/nonexistent:\(b)"]), "\(b)/worker")
    XCTAssertEqual(try WorkerExecutable.locate(explicit: "\(a)/worker", selfExecutable: nil, environment: [:]), "\(a)/worker")
    XCTAssertThrowsError(try WorkerExecutable.locate(explicit: nil, selfExecutable: "\(dir.path)/launch", environment: ["PATH": "/nonexistent"])) { e in
      XCTAssertTrue("\(e)".contains("pass --worker"), "\(e)")
    }
  }
}
