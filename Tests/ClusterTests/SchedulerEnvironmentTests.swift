// Placement from Slurm, Open MPI and torchrun-style environments (issue 11): each parser, Slurm's
// host-list syntax, the port rules, precedence, and one-line errors naming the variable.
// Only loopback names and addresses appear here.
import Cluster
import Collective
import Foundation
import XCTest

final class SchedulerEnvironmentTests: XCTestCase {
  func expectError(_ env: [String: String], mentions parts: [String], file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try SchedulerEnvironment.detect(env), file: file, line: line) { e in
      let text = "\(e)"
      XCTAssertFalse(text.contains("\n"), "not one line: \(text)", file: file, line: line)
      for p in parts { XCTAssertTrue(text.contains(p), "\"\(text)\" does not mention \(p)", file: file, line: line) }
    }
  }

  // MARK: Host lists

  func testHostListExpansion() throws {
    XCTAssertEqual(try HostList.expand("node[01-03,07]", variable: "X"), ["node01", "node02", "node03", "node07"])
    XCTAssertEqual(try HostList.expand("a,b[1-2],c", variable: "X"), ["a", "b1", "b2", "c"])
    XCTAssertEqual(try HostList.expand("r[1-2]n[08-09]", variable: "X"), ["r1n08", "r1n09", "r2n08", "r2n09"])
    XCTAssertEqual(try HostList.expand("gpu[9-11]", variable: "X"), ["gpu9", "gpu10", "gpu11"])
    XCTAssertEqual(try HostList.expand("localhost", variable: "X"), ["localhost"])
    XCTAssertEqual(try HostList.expand("n[1-2].cluster", variable: "X"), ["n1.cluster", "n2.cluster"])
    for bad in ["node[01-03", "node]1[", "node[3-1]", "node[a-b]", "a,,b", "node[1-2[3]]", "", "node[1-100000000]"] {
      XCTAssertThrowsError(try HostList.expand(bad, variable: "SLURM_JOB_NODELIST"), bad) { e in
        XCTAssertTrue("\(e)".hasPrefix("SLURM_JOB_NODELIST=\(bad): "), "\(e)")
      }
    }
  }

  func testTaskCounts() throws {
    XCTAssertEqual(try HostList.expandCounts("2(x3),1", variable: "T"), [2, 2, 2, 1])
    XCTAssertEqual(try HostList.expandCounts("4", variable: "T"), [4])
    XCTAssertEqual(try HostList.expandCounts("1,3(x2)", variable: "T"), [1, 3, 3])
    for bad in ["", "2(3)", "x", "0", "2(x0)", "2(x3"] {
      XCTAssertThrowsError(try HostList.expandCounts(bad, variable: "SLURM_TASKS_PER_NODE"), bad)
    }
  }

  // MARK: Slurm

  func slurm(rank: Int, local: Int, node: Int, extra: [String: String] = [:]) -> [String: String] {
    ["SLURM_PROCID": "\(rank)", "SLURM_NTASKS": "5", "SLURM_LOCALID": "\(local)", "SLURM_NODEID": "\(node)",
     "SLURM_JOB_NODELIST": "localhost,n[1-2]", "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_NNODES": "3",
     "SLURM_JOB_ID": "190", "SLURM_STEP_ID": "0"].merging(extra) { $1 }
  }

  func testSlurmBlockPlacementAndJobIDPorts() throws {
    let p = try XCTUnwrap(try SchedulerEnvironment.detect(slurm(rank: 3, local: 1, node: 1)))
    XCTAssertEqual(p.engine, .slurm)
    XCTAssertEqual(p.rank, 3)
    XCTAssertEqual(p.worldSize, 5)
    XCTAssertEqual(p.localRank, 1)
    XCTAssertEqual(p.localWorldSize, 2)
    XCTAssertEqual(p.nodes, ["localhost", "n1", "n2"])
    XCTAssertEqual(p.ranksPerNode, [2, 2, 1])
    XCTAssertEqual(p.nodeOfRank, [0, 0, 1, 1, 2])
    // 190 mod 187 = 3: 20000 + 3 × 64. Job 191 gets the next slot: no overlap for neighbours.
    XCTAssertEqual(p.basePort, 20192)
    XCTAssertEqual(try SchedulerEnvironment.detect(slurm(rank: 3, local: 1, node: 1, extra: ["SLURM_JOB_ID": "191"]))?.basePort, 20256)
    XCTAssertEqual(p.jobID, "slurm-190.0")
    // The step's own list and counts win over the job's.
    let step = try XCTUnwrap(try SchedulerEnvironment.detect(slurm(rank: 1, local: 1, node: 0, extra: [
      "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NNODES": "3",
      "SLURM_STEP_NUM_NODES": "1"])))
    XCTAssertEqual(step.nodes, ["localhost"])
    XCTAssertEqual(step.worldSize, 2)
    // Explicit ports win: MNV2_BASE_PORT, then MASTER_PORT + 1.
    XCTAssertEqual(try SchedulerEnvironment.detect(slurm(rank: 0, local: 0, node: 0, extra: ["MASTER_PORT": "29400"]))?.basePort, 29401)
    XCTAssertEqual(try SchedulerEnvironment.detect(slurm(rank: 0, local: 0, node: 0, extra: ["MASTER_PORT": "29400", "MNV2_BASE_PORT": "23000"]))?.basePort, 23000)
  }

  func testSlurmErrorsNameTheVariable() {
    expectError(slurm(rank: 5, local: 0, node: 2), mentions: ["SLURM_PROCID=5", "SLURM_NTASKS=5"])
    expectError(slurm(rank: 2, local: 1, node: 1), mentions: ["SLURM_LOCALID=1"])
    expectError(slurm(rank: 2, local: 0, node: 0), mentions: ["SLURM_NODEID=0"])
    expectError(slurm(rank: 0, local: 0, node: 0, extra: ["SLURM_TASKS_PER_NODE": "2(x4)"]), mentions: ["SLURM_TASKS_PER_NODE=2(x4) gives 4 nodes", "lists 3"])
    expectError(slurm(rank: 0, local: 0, node: 0, extra: ["SLURM_TASKS_PER_NODE": "1(x3)"]), mentions: ["sums to 3", "SLURM_NTASKS=5"])
    expectError(slurm(rank: 0, local: 0, node: 0, extra: ["SLURM_NNODES": "4"]), mentions: ["SLURM_NNODES=4"])
    expectError(slurm(rank: 0, local: 0, node: 0, extra: ["SLURM_DISTRIBUTION": "cyclic"]), mentions: ["SLURM_DISTRIBUTION=cyclic"])
    expectError(slurm(rank: 0, local: 0, node: 0, extra: ["SLURM_JOB_NODELIST": "n[1-"]), mentions: ["SLURM_JOB_NODELIST=n[1-"])
    expectError(slurm(rank: 0, local: 0, node: 0, extra: ["SLURM_NTASKS": "two"]), mentions: ["SLURM_NTASKS=two"])
    expectError(["SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0"], mentions: ["SLURM_JOB_NODELIST"])
    // The batch script's own environment (measured under make slurm-test): no step id.
    var batchStep = slurm(rank: 0, local: 0, node: 0)
    batchStep["SLURM_STEP_ID"] = nil
    expectError(batchStep, mentions: ["SLURM_STEP_ID", "srun"])
    var noJob = slurm(rank: 0, local: 0, node: 0)
    noJob["SLURM_JOB_ID"] = nil
    expectError(noJob, mentions: ["MASTER_PORT", "SLURM_JOB_ID"])
  }

  // MARK: torchrun-style

  func torchrun(rank: Int, world: Int = 2, extra: [String: String] = [:]) -> [String: String] {
    ["RANK": "\(rank)", "WORLD_SIZE": "\(world)", "LOCAL_RANK": "\(rank)", "LOCAL_WORLD_SIZE": "\(world)",
     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"].merging(extra) { $1 }
  }

  func testTorchrunSingleNodeAndMultiNode() throws {
    let p = try XCTUnwrap(try SchedulerEnvironment.detect(torchrun(rank: 1)))
    XCTAssertEqual(p.engine, .torchrun)
    XCTAssertEqual(p.rank, 1)
    XCTAssertEqual(p.nodes, ["127.0.0.1"])
    XCTAssertEqual(p.basePort, 29501, "MASTER_PORT itself is left to torchrun's store")
    let table = try p.rankTable()
    XCTAssertEqual(table.devices.map(\.address), ["127.0.0.1", "127.0.0.1"])
    XCTAssertEqual(table.devices.map(\.port), [29501, 29502])
    // Several nodes: MNV2_NODE_LIST in node order, ranks node by node.
    let multi = try XCTUnwrap(try SchedulerEnvironment.detect(torchrun(rank: 3, world: 4, extra: [
      "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1", "MNV2_NODE_LIST": "127.0.0.[1-2]"])))
    XCTAssertEqual(multi.nodes, ["127.0.0.1", "127.0.0.2"])
    XCTAssertEqual(multi.nodeOfRank, [0, 0, 1, 1])
    XCTAssertEqual(try multi.rankTable().devices.map(\.port), [29501, 29502, 29501, 29502])
    XCTAssertEqual(try multi.rankTable().devices.map(\.address), ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"])
    XCTAssertEqual(try multi.rankTable().serverIDs, ["127.0.0.1", "127.0.0.2"])
  }

  func testTorchrunErrorsNameTheVariable() {
    expectError(torchrun(rank: 2), mentions: ["RANK=2", "WORLD_SIZE=2"])
    var noMaster = torchrun(rank: 0)
    noMaster["MASTER_ADDR"] = nil
    expectError(noMaster, mentions: ["MASTER_ADDR"])
    expectError(torchrun(rank: 0, extra: ["LOCAL_RANK": "3"]), mentions: ["LOCAL_RANK=3"])
    expectError(torchrun(rank: 0, world: 4, extra: ["LOCAL_WORLD_SIZE": "2"]), mentions: ["MNV2_NODE_LIST"])
    expectError(torchrun(rank: 0, world: 4, extra: ["LOCAL_WORLD_SIZE": "2", "MNV2_NODE_LIST": "a[1-3]"]), mentions: ["MNV2_NODE_LIST lists 3"])
    expectError(torchrun(rank: 2, world: 4, extra: ["LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MNV2_NODE_LIST": "a,b"]), mentions: ["LOCAL_RANK=1"])
    expectError(torchrun(rank: 0, extra: ["MASTER_PORT": "65535"]), mentions: ["MASTER_PORT=65535"])
    expectError(torchrun(rank: 0, extra: ["WORLD_SIZE": "0"]), mentions: ["WORLD_SIZE=0"])
    // RANK alone (a common name) is not a torchrun environment.
    XCTAssertNil(try SchedulerEnvironment.detect(["RANK": "3"]))
  }

  // MARK: Open MPI

  func testOpenMPIPlacementAndPorts() throws {
    let env = ["OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
               "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_MCA_ess_base_jobid": "3735617537"]
    let p = try XCTUnwrap(try SchedulerEnvironment.detect(env))
    XCTAssertEqual(p.engine, .openMPI)
    XCTAssertEqual(p.nodes, ["127.0.0.1"], "one node without MASTER_ADDR: loopback")
    let slot = Int(SchedulerEnvironment.fnv1a64("3735617537") % UInt64(SchedulerEnvironment.portSlots))
    XCTAssertEqual(p.basePort, SchedulerEnvironment.portRangeStart + slot * SchedulerEnvironment.portSlotWidth)
    XCTAssertLessThan(p.basePort + SchedulerEnvironment.portSlotWidth, 32768, "below the ephemeral range")
    XCTAssertEqual(p.jobID, "ompi-3735617537")
    var noPort = env
    noPort["OMPI_MCA_ess_base_jobid"] = nil
    expectError(noPort, mentions: ["MASTER_PORT", "MNV2_BASE_PORT"])
    var bad = env
    bad["OMPI_COMM_WORLD_LOCAL_RANK"] = nil
    expectError(bad, mentions: ["OMPI_COMM_WORLD_LOCAL_RANK"])
    bad = env
    bad["OMPI_COMM_WORLD_SIZE"] = "1"
    expectError(bad, mentions: ["OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=1"])
  }

  // MARK: Precedence

  func testPrecedenceBetweenEngines() throws {
    let both = torchrun(rank: 1).merging(["SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0",
                                          "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "5"]) { $1 }
    XCTAssertEqual(try SchedulerEnvironment.detect(both)?.engine, .torchrun, "the launcher nearest the process wins")
    XCTAssertEqual(try SchedulerEnvironment.detect(both.merging(["MNV2_SCHEDULER": "slurm"]) { $1 })?.engine, .slurm)
    XCTAssertNil(try SchedulerEnvironment.detect(both.merging(["MNV2_SCHEDULER": "none"]) { $1 }))
    expectError(both.merging(["MNV2_SCHEDULER": "pbs"]) { $1 }, mentions: ["MNV2_SCHEDULER=pbs"])
    expectError(["MNV2_SCHEDULER": "openmpi"], mentions: ["MNV2_SCHEDULER=openmpi", "OMPI_COMM_WORLD_RANK"])
    XCTAssertNil(try SchedulerEnvironment.detect([:]))
  }

  /// The worker's context: no table → the environment places it; a rank table (flag or
  /// RANK_TABLE_FILE) wins over the environment; --rank wins over the environment's rank.
  func testWorkerContextTakesThePlacementAndTablesWin() throws {
    let dir = NSTemporaryDirectory() + "sched-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let secretFile = "\(dir)/job.secret"
    try JobSecret.generate().write(file: secretFile)
    let env = torchrun(rank: 1, extra: ["MNV2_JOB_SECRET_FILE": secretFile, "TORCHELASTIC_RUN_ID": "abc"])
    let ctx = try WorkerContext.fromEnvironment(environment: env)
    XCTAssertEqual(ctx.rank, 1)
    XCTAssertEqual(ctx.worldSize, 2)
    XCTAssertEqual(ctx.localRank, 1)
    XCTAssertEqual(ctx.localWorldSize, 2)
    XCTAssertEqual(ctx.jobID, "torchrun-abc")
    XCTAssertEqual(ctx.scheduler?.engine, .torchrun)
    XCTAssertEqual(ctx.table?.devices.map(\.port), [29501, 29502])
    XCTAssertEqual(ctx.groupOptions.security, .plain, "loopback only: PLAIN, as with a loopback table")
    XCTAssertEqual(try WorkerContext.fromEnvironment(overrideRank: 0, environment: env).rank, 0)

    let table = "\(dir)/t.json"
    try RankTable.seedSchemaJSON(servers: [("127.0.0.1", ["127.0.0.1", "127.0.0.1", "127.0.0.1"], [24001, 24002, 24003])],
                                 podName: "t").write(toFile: table, atomically: true, encoding: .utf8)
    let fromTable = try WorkerContext.fromEnvironment(overrideRank: 2, rankTablePath: table, environment: env)
    XCTAssertEqual(fromTable.worldSize, 3)
    XCTAssertNil(fromTable.scheduler)
    let fromContract = try WorkerContext.fromEnvironment(environment: env.merging(["RANK_TABLE_FILE": table, "RANK_ID": "0"]) { $1 })
    XCTAssertEqual(fromContract.worldSize, 3)
    // Several ranks without a secret: the usual one-line refusal.
    var noSecret = env
    noSecret["MNV2_JOB_SECRET_FILE"] = nil
    XCTAssertThrowsError(try WorkerContext.fromEnvironment(environment: noSecret)) { XCTAssertTrue("\($0)".contains("no job secret")) }
    // World size 1 from the environment: alone, no sockets.
    XCTAssertEqual(try WorkerContext.fromEnvironment(environment: torchrun(rank: 0, world: 1)).worldSize, 1)
  }

  /// `launch --ranks-per-node N`, one launch per node: N ranks on each node, this node's first rank.
  func testPerNodeLaunchPlacement() throws {
    let env = ["SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
               "SLURM_JOB_NODELIST": "127.0.0.[1-2]", "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"]
    let p = try SchedulerEnvironment.perNodeLaunch(env, ranksPerNode: 3)
    XCTAssertEqual(p.worldSize, 6)
    XCTAssertEqual(p.rank, 3)
    XCTAssertEqual(p.nodeOfRank, [0, 0, 0, 1, 1, 1])
    XCTAssertEqual(p.basePort, 20000 + 7 * 64)
    let table = try RankTable.parse(Data(try p.rankTableJSON().utf8))
    XCTAssertEqual(table.devices.map(\.address), ["127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.2"])
    XCTAssertEqual(table.devices.map(\.port), [20448, 20449, 20450, 20448, 20449, 20450])
    XCTAssertEqual(table.serverIDs, ["127.0.0.1", "127.0.0.2"])
    // Two launches on one node, or torchrun, or nothing: one line each.
    var two = env
    two["SLURM_TASKS_PER_NODE"] = "2"; two["SLURM_JOB_NODELIST"] = "localhost"; two["SLURM_NODEID"] = "0"; two["SLURM_LOCALID"] = "1"
    XCTAssertThrowsError(try SchedulerEnvironment.perNodeLaunch(two, ranksPerNode: 2)) { XCTAssertTrue("\($0)".contains("--ntasks-per-node=1"), "\($0)") }
    XCTAssertThrowsError(try SchedulerEnvironment.perNodeLaunch(torchrun(rank: 0), ranksPerNode: 2)) { XCTAssertTrue("\($0)".contains("torchrun"), "\($0)") }
    XCTAssertThrowsError(try SchedulerEnvironment.perNodeLaunch([:], ranksPerNode: 2)) { XCTAssertTrue("\($0)".contains("--ranks-per-node"), "\($0)") }
  }

  func testResolverUsesGetaddrinfoAndRefusesUnknownHosts() throws {
    XCTAssertEqual(try HostResolver.ipv4("localhost"), "127.0.0.1")
    XCTAssertEqual(try HostResolver.ipv4("127.0.0.2"), "127.0.0.2")
    // .invalid never resolves (RFC 6761), so no query can reach a real host.
    XCTAssertThrowsError(try HostResolver.ipv4("no-such-node.invalid")) { XCTAssertTrue("\($0)".contains("no-such-node.invalid")) }
  }
}
