// `worker`: one rank of a job. Reads its place from the contract `launch` wrote (or --rank and
// --rank-table), joins the group (no sockets when alone) and trains (the flags after `launch ... --`),
// or with --self-test / --bench runs the collective self-test or the allreduce benchmark.

import ArgumentParser
import Cluster
import Collective
import Foundation
import Jobs

struct Worker: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "One rank of a data-parallel job (started by launch, or alone for debugging).")

  @Option(help: "This worker's rank (default: RANK_ID from launch).")
  var rank: Int?
  @Option(name: [.customLong("rank-table"), .customLong("rank_table")], help: "Rank table (default: RANK_TABLE_FILE). Without one the worker runs alone, without sockets.")
  var rankTable: String?
  @Option(help: "Self-test element counts.")
  var counts = "0,1,7,1000,1000000"
  @Option(help: "Run allreduces of this many floats for --loop-seconds after the self-test.")
  var loopCount = 100_000
  @Option(help: "Seconds of repeated allreduces after the self-test (for fault-injection tests).")
  var loopSeconds = 0.0
  @Flag(help: "Run the collective self-test instead of training.")
  var selfTest = false
  @Flag(help: "Run the allreduce benchmark instead of training.")
  var bench = false
  @Option(help: "Benchmark sizes in bytes (K/M binary units).")
  var sizes = "64K,1M,4M,16M,64M"
  @Flag(help: "Benchmark with fp16 wire compression.")
  var fp16 = false
  @Option(help: "Smallest ring segment in bytes (default \(GroupOptions.defaultSegmentBytes); tuning).")
  var segmentBytes: Int?
  @Option(help: "Largest ring segment in bytes (default \(GroupOptions.defaultMaxSegmentBytes); tuning).")
  var maxSegmentBytes: Int?
  @Option(help: "Extra text in the model signature (tests: a mismatching model).")
  var signatureSalt = ""
  @Option(help: "Seconds to wait for the ring to form (default \(Int(GroupOptions.defaultConnectTimeout)), or MNV2_CONNECT_TIMEOUT).")
  var connectTimeout: Double?
  @Option(help: "Seconds a collective waits for a neighbour (default \(Int(GroupOptions.defaultRunningTimeout)), or MNV2_RUNNING_TIMEOUT).")
  var runningTimeout: Double?
  @Option(help: "Fault injection for tests: kill (SIGKILL self), stop (SIGSTOP self) or fail (exit 1).")
  var fault: String?
  @Option(help: "Rank that injects the fault.")
  var faultRank = 0
  @Option(help: "Seconds after the self-test (or after the start of training) at which the fault happens.")
  var faultAfter = 1.0
  @Option(help: "Inject the fault only in this launch restart (MNV2_RESTART_COUNT).")
  var faultRestart = 0
  @OptionGroup(title: "Training (the seed's flags; each also in snake_case)")
  var train: TrainFlags

  static let faults = ["kill", "stop", "fail"]

  /// The worker's own numeric flags against their ranges (training flags: TrainFlags.checkRanges).
  func checkRanges() throws {
    func check(_ ok: Bool, _ flag: String, _ value: Any, _ range: String) throws {
      if !ok { throw ValidationError("--\(flag) \(value) is out of range: must be \(range)") }
    }
    if let r = rank { try check(r >= 0, "rank", r, "≥ 0") }
    try check(loopCount >= 0, "loop-count", loopCount, "≥ 0")
    try check(loopSeconds >= 0 && loopSeconds.isFinite, "loop-seconds", loopSeconds, "≥ 0")
    if let b = segmentBytes { try check(b >= 4, "segment-bytes", b, "≥ 4") }
    if let b = maxSegmentBytes { try check(b >= max(4, segmentBytes ?? 4), "max-segment-bytes", b, "≥ --segment-bytes") }
    if let t = connectTimeout { try check(t > 0 && t.isFinite, "connect-timeout", t, "> 0 seconds") }
    if let t = runningTimeout { try check(t > 0 && t.isFinite, "running-timeout", t, "> 0 seconds") }
    if let f = fault { try check(Self.faults.contains(f), "fault", f, "one of " + Self.faults.joined(separator: ", ")) }
    try check(faultRank >= 0, "fault-rank", faultRank, "≥ 0")
    try check(faultAfter >= 0 && faultAfter.isFinite, "fault-after", faultAfter, "≥ 0 seconds")
    try check(faultRestart >= 0, "fault-restart", faultRestart, "≥ 0")
  }

  func run() throws {
    WorkerLifetime.bindToLauncher()
    do { try checkRanges() } catch { fail("\(error)", code: 1) }
    let ctx: WorkerContext
    do {
      ctx = try WorkerContext.fromEnvironment(overrideRank: rank, rankTablePath: rankTable)
    } catch {
      fail("\(error)", code: 1)
    }
    say("worker pid \(getpid()) rank \(ctx.rank)/\(ctx.worldSize) device \(ctx.deviceID) local \(ctx.localRank)/\(ctx.localWorldSize) "
        + "threads \(ctx.threads) job \(ctx.jobID) restart \(ctx.restartCount)")
    if ctx.worldSize == 1, let r = rank, r != 0 { say("note: no rank table, so running alone as rank 0 of 1 (--rank \(r) ignored)") }

    var options = ctx.groupOptions
    if let t = connectTimeout { options.connectTimeout = t }
    if let t = runningTimeout { options.runningTimeout = t }
    if let b = segmentBytes { options.segmentBytes = b }
    if let b = maxSegmentBytes { options.maxSegmentBytes = b }
    if !selfTest && !bench {
      if let fault, ctx.rank == faultRank, ctx.restartCount == faultRestart { scheduleFault(fault) }
      do {
        try TrainJob.run(flags: train, context: ctx, groupOptions: options)
      } catch let e as CollectiveError {
        fail("rank \(ctx.rank): \(e)", code: e.isCausedByPeer ? peerFailureExitCode : 1)
      } catch {
        fail("rank \(ctx.rank): \(error)", code: 1)
      }
      return
    }
    let counts = self.counts.split(separator: ",").compactMap { Int($0) }
    let signature: ModelSignature = [("selftest/buffer\(signatureSalt)", counts.max() ?? 0)]
    do {
      let group = try ProcessGroup.join(ctx, modelSignature: signature, options: options)
      defer { group.close() }
      if bench {
        let sizes = self.sizes.split(separator: ",").compactMap { CollectiveSelfTest.parseBytes(String($0)) }
        try CollectiveSelfTest.benchmark(group, sizes: sizes, fp16: fp16) { if group.rank == 0 { say($0) } }
      } else {
        try CollectiveSelfTest.run(group, counts: counts, log: say)
        // Faults start once the group runs, so that they hit the allreduce loop.
        if let fault, ctx.rank == faultRank, ctx.restartCount == faultRestart { scheduleFault(fault) }
        if loopSeconds > 0 { try CollectiveSelfTest.loop(group, count: loopCount, seconds: loopSeconds, log: say) }
      }
    } catch let e as CollectiveError {
      fail("rank \(ctx.rank): \(e)", code: e.isCausedByPeer ? peerFailureExitCode : 1)
    } catch {
      fail("rank \(ctx.rank): \(error)", code: 1)
    }
  }

  private func scheduleFault(_ kind: String) {
    let delay = faultAfter
    Thread.detachNewThread {
      Thread.sleep(forTimeInterval: delay)
      say("injecting fault '\(kind)'")
      switch kind {
      case "kill": kill(getpid(), SIGKILL)
      case "stop": kill(getpid(), SIGSTOP)
      default: fail("injected failure", code: 1)
      }
    }
  }
}

func say(_ line: String) {
  print(line)
  fflush(stdout)
}

func fail(_ message: String, code: Int32) -> Never {
  say("error: \(message)")
  exit(code)
}

Worker.main(Arguments.joiningNegativeNumbers(Array(CommandLine.arguments.dropFirst())))
