import Cluster
import Collective
import Foundation
import XCTest

final class WorkerContextTests: XCTestCase {
  func testNoTableMeansAloneWithoutSockets() throws {
    let ctx = try WorkerContext.fromEnvironment(overrideRank: 3, environment: [:])
    XCTAssertEqual(ctx.worldSize, 1)
    XCTAssertEqual(ctx.rank, 0)
    XCTAssertNil(ctx.table)
    XCTAssertGreaterThanOrEqual(ctx.threads, 1)
    let g = try ProcessGroup.join(ctx, modelSignature: [("w", 4)])
    XCTAssertEqual(g.size, 1)
    var x: [Float] = [1, 2]
    try g.allreduceAverage(&x, count: 2)
    XCTAssertEqual(x, [1, 2])
    XCTAssertEqual(try g.allgather([7]), [[7]])
  }

  func testContractFromEnvironment() throws {
    let dir = try temporaryDirectory("ctx")
    defer { try? FileManager.default.removeItem(at: dir) }
    let table = repositoryRoot.appendingPathComponent("rank_table/8p.json").path
    let secret = JobSecret.generate()
    let env = ["RANK_TABLE_FILE": table, "RANK_SIZE": "8", "RANK_ID": "5", "DEVICE_ID": "5", "JOB_ID": "j1",
               "MNV2_THREADS": "3", "MNV2_RESTART_COUNT": "2", "MNV2_JOB_SECRET": secret.hex,
               "MNV2_RUNNING_TIMEOUT": "7", "MNV2_SECURITY": "plain"]
    let ctx = try WorkerContext.fromEnvironment(environment: env)
    XCTAssertEqual([ctx.rank, ctx.worldSize, ctx.localRank, ctx.localWorldSize, ctx.deviceID, ctx.threads, ctx.restartCount],
                   [5, 8, 5, 8, 5, 3, 2])
    XCTAssertEqual(ctx.jobID, "j1")
    XCTAssertEqual(ctx.secret, secret)
    XCTAssertEqual(ctx.groupOptions.runningTimeout, 7)
    XCTAssertEqual(ctx.groupOptions.connectTimeout, GroupOptions.defaultConnectTimeout)
    XCTAssertEqual(ctx.groupOptions.security, .plain)
    XCTAssertEqual(try WorkerContext.fromEnvironment(overrideRank: 1, environment: env).rank, 1)
    // Default threads: cores ÷ local workers, at least 1.
    var noThreads = env
    noThreads["MNV2_THREADS"] = nil
    XCTAssertEqual(try WorkerContext.fromEnvironment(environment: noThreads).threads,
                   max(1, ProcessInfo.processInfo.activeProcessorCount / 8))

    var bad = env
    bad["RANK_SIZE"] = "4"
    XCTAssertThrowsError(try WorkerContext.fromEnvironment(environment: bad)) { XCTAssertTrue("\($0)".contains("RANK_SIZE=4")) }
    bad = env
    bad["RANK_ID"] = "8"
    XCTAssertThrowsError(try WorkerContext.fromEnvironment(environment: bad)) { XCTAssertTrue("\($0)".contains("rank 8 is not in")) }
    bad = env
    bad["MNV2_JOB_SECRET"] = nil
    XCTAssertThrowsError(try WorkerContext.fromEnvironment(environment: bad)) { XCTAssertTrue("\($0)".contains("no job secret")) }
    bad = env
    bad["MNV2_SECURITY"] = "none"
    XCTAssertThrowsError(try WorkerContext.fromEnvironment(environment: bad))
    // Unix-domain sockets between loopback neighbours: on unless MNV2_LOCAL_SOCKETS=0; direct reads
    // of a same-host neighbour's memory: on unless MNV2_PEER_MEMORY=0.
    try assertOnUnlessZero("MNV2_LOCAL_SOCKETS", \.localSockets, base: env, bad: "off")
    try assertOnUnlessZero("MNV2_PEER_MEMORY", \.peerMemory, base: env, bad: "no")
  }

  /// A 0/1 contract switch: on by default, off with 0, any other value a one-line error naming it.
  func assertOnUnlessZero(_ name: String, _ option: KeyPath<GroupOptions, Bool>, base env: [String: String], bad: String,
                          file: StaticString = #filePath, line: UInt = #line) throws {
    XCTAssertTrue(try WorkerContext.fromEnvironment(environment: env).groupOptions[keyPath: option], name, file: file, line: line)
    var off = env
    off[name] = "0"
    XCTAssertFalse(try WorkerContext.fromEnvironment(environment: off).groupOptions[keyPath: option], name, file: file, line: line)
    off[name] = bad
    XCTAssertThrowsError(try WorkerContext.fromEnvironment(environment: off), file: file, line: line) {
      XCTAssertTrue("\($0)".contains("\(name)=\(bad): expected 0 or 1"), "\($0)", file: file, line: line)
    }
  }

  /// Observability (issue 13): launch --timeline's per-rank file and step count.
  func testTimelineFromTheContract() throws {
    let ctx = try WorkerContext.fromEnvironment(environment: ["MNV2_TIMELINE_FILE": "/logs/0/timeline.json", "MNV2_TIMELINE_STEPS": "9"])
    XCTAssertEqual(ctx.timelineFile, "/logs/0/timeline.json")
    XCTAssertEqual(ctx.timelineSteps, 9)
    XCTAssertNil(try WorkerContext.fromEnvironment(environment: [:]).timelineFile)
    XCTAssertThrowsError(try WorkerContext.fromEnvironment(environment: ["MNV2_TIMELINE_STEPS": "many"])) { e in
      XCTAssertTrue("\(e)".contains("MNV2_TIMELINE_STEPS"), "\(e)")
    }
  }

  func testSecretFilesMustBePrivate() throws {
    let dir = try temporaryDirectory("secret")
    defer { try? FileManager.default.removeItem(at: dir) }
    let path = try writeSecret(dir)
    XCTAssertNotNil(try JobSecret.read(file: path))
    chmod(path, 0o644)
    XCTAssertThrowsError(try JobSecret.read(file: path)) { XCTAssertTrue("\($0)".contains("chmod 600")) }
  }

  func testLocalAddresses() {
    XCTAssertTrue(LocalAddress.isLocal("127.0.0.1"))
    XCTAssertTrue(LocalAddress.isLocal("127.0.2.11"))  // all of 127/8 is loopback on Linux
    XCTAssertTrue(LocalAddress.interfaceAddresses().contains("127.0.0.1"))
    // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): reserved for documentation, on no host.
    XCTAssertFalse(LocalAddress.isLocal("192.0.2.1"))
    XCTAssertFalse(LocalAddress.isLocal("not an address"))
  }

  /// A rank whose device address is not on this host refuses to start before any socket exists.
  func testForeignDeviceAddressIsRefusedBeforeConnecting() throws {
    let dir = try temporaryDirectory("foreign")
    defer { try? FileManager.default.removeItem(at: dir) }
    let json = RankTable.seedSchemaJSON(servers: [("a", ["127.0.0.1"], [21999]), ("b", ["192.0.2.1"], [21999])], podName: "p")
    let path = dir.appendingPathComponent("t.json").path
    try json.write(toFile: path, atomically: true, encoding: .utf8)
    let env = ["RANK_TABLE_FILE": path, "RANK_ID": "1", "MNV2_JOB_SECRET": JobSecret.generate().hex]
    // 192.0.2.0/24 is TEST-NET-1: never this host's. The device is simulated on its server's
    // address, which a server named "b" does not have: refused before anything is bound or dialled.
    XCTAssertThrowsError(try WorkerContext.fromEnvironment(environment: env)) { e in
      XCTAssertTrue("\(e)".contains(#"group_list[0].instance_list[1].devices[0].device_ip: "192.0.2.1" (rank 1) is not on this host"#)
                    && "\(e)".contains("pass --server-address b=ADDRESS"), "\(e)")
    }
    // With a server address that is not this host's either, join refuses before connecting.
    var withAddress = env
    withAddress["MNV2_JOB_SECRET"] = JobSecret.generate().hex
    withAddress["MNV2_SERVER_ADDRESSES"] = "b=192.0.2.50"
    let ctx = try WorkerContext.fromEnvironment(environment: withAddress)
    XCTAssertEqual(ctx.table?.devices[1].address, "192.0.2.50")
    XCTAssertThrowsError(try ProcessGroup.join(ctx, modelSignature: [("w", 1)])) { e in
      XCTAssertTrue("\(e)".contains(#"group_list[0].instance_list[1].server_id (rank 1 is simulated there): "192.0.2.50" (rank 1, server_id b) is not an address of this host"#), "\(e)")
    }
  }
}
