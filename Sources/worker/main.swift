// `worker`: one rank of a job. Reads its place from the contract `launch` wrote (or --rank and
// --rank-table) and joins the group (no sockets when alone). Three subcommands:
//   worker [train] …   trains with the seed's flags (the default: `launch … -- <training flags>`)
//   worker self-test … checks the collectives over the real ring (and keeps looping, for fault tests)
//   worker bench …     measures allreduce bandwidth (`make bench-allreduce`)
// Every error is one line, "error: …", which launch shows as the rank's root cause.

import ArgumentParser
import Cluster
import Collective
import CollectiveCheck
import Foundation
import Jobs

struct Worker: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "One rank of a data-parallel job (started by launch, or alone for debugging).",
    subcommands: [Train.self, SelfTest.self, Bench.self],
    defaultSubcommand: Train.self)
}

/// Where this rank sits in the job and how its group behaves: every subcommand has these.
struct Placement: ParsableArguments {
  @Option(help: "This worker's rank (default: RANK_ID from launch, else SLURM_PROCID, OMPI_COMM_WORLD_RANK or RANK; see docs/clusters.md).")
  var rank: Int?
  @Option(name: [.customLong("rank-table"), .customLong("rank_table")], help: "Rank table (default: RANK_TABLE_FILE). Without one, a Slurm, Open MPI or torchrun-style environment places the worker (docs/clusters.md); without that it runs alone, without sockets.")
  var rankTable: String?
  @Option(help: "Seconds to wait for the ring to form (default \(Int(GroupOptions.defaultConnectTimeout)), or MNV2_CONNECT_TIMEOUT).")
  var connectTimeout: Double?
  @Option(help: "Seconds a collective waits for a neighbour (default \(Int(GroupOptions.defaultRunningTimeout)), or MNV2_RUNNING_TIMEOUT).")
  var runningTimeout: Double?
  @Option(help: "Smallest ring segment in bytes (default \(GroupOptions.defaultSegmentBytes); tuning).")
  var segmentBytes: Int?
  @Option(help: "Largest ring segment in bytes (default \(GroupOptions.defaultMaxSegmentBytes); tuning).")
  var maxSegmentBytes: Int?

  func validate() throws {
    if let r = rank { try checkRange(r >= 0, "rank", r, "≥ 0") }
    if let b = segmentBytes { try checkRange(b >= 4, "segment-bytes", b, "≥ 4") }
    if let b = maxSegmentBytes { try checkRange(b >= max(4, segmentBytes ?? 4), "max-segment-bytes", b, "≥ --segment-bytes") }
    if let t = connectTimeout { try checkRange(t > 0 && t.isFinite, "connect-timeout", t, "> 0 seconds") }
    if let t = runningTimeout { try checkRange(t > 0 && t.isFinite, "running-timeout", t, "> 0 seconds") }
  }

  /// Start-up shared by the subcommands: the launcher binding, process tuning, the context and
  /// the group options with this command line's overrides.
  func start() -> (WorkerContext, GroupOptions) {
    WorkerLifetime.bindToLauncher()
    ProcessTuning.apply()
    let ctx: WorkerContext
    do {
      ctx = try WorkerContext.fromEnvironment(overrideRank: rank, rankTablePath: rankTable)
    } catch {
      fail("\(error)", code: 1)
    }
    if let placed = ctx.scheduler { say(placed.summary) }
    say("worker pid \(getpid()) rank \(ctx.rank)/\(ctx.worldSize) device \(ctx.deviceID) local \(ctx.localRank)/\(ctx.localWorldSize) "
        + "threads \(ctx.threads) job \(ctx.jobID) restart \(ctx.restartCount)")
    if ctx.worldSize == 1, let r = rank, r != 0 { say("note: no rank table, so running alone as rank 0 of 1 (--rank \(r) ignored)") }
    var options = ctx.groupOptions
    if let t = connectTimeout { options.connectTimeout = t }
    if let t = runningTimeout { options.runningTimeout = t }
    if let b = segmentBytes { options.segmentBytes = b }
    if let b = maxSegmentBytes { options.maxSegmentBytes = b }
    return (ctx, options)
  }
}

/// Test hooks, kept apart from the real flags: a rank kills, stops or fails itself on cue.
struct FaultInjection: ParsableArguments {
  static let kinds = ["kill", "stop", "fail"]
  @Option(help: "Fault injection for tests: kill (SIGKILL self), stop (SIGSTOP self) or fail (exit 1).")
  var fault: String?
  @Option(help: "Rank that injects the fault.")
  var faultRank = 0
  @Option(help: "Seconds after the self-test (or after the start of training) at which the fault happens.")
  var faultAfter = 1.0
  @Option(help: "Inject the fault only in this launch restart (MNV2_RESTART_COUNT).")
  var faultRestart = 0

  func validate() throws {
    if let f = fault { try checkRange(Self.kinds.contains(f), "fault", f, "one of " + Self.kinds.joined(separator: ", ")) }
    try checkRange(faultRank >= 0, "fault-rank", faultRank, "≥ 0")
    try checkRange(faultAfter >= 0 && faultAfter.isFinite, "fault-after", faultAfter, "≥ 0 seconds")
    try checkRange(faultRestart >= 0, "fault-restart", faultRestart, "≥ 0")
  }

  /// Arms the fault if this rank and restart are the chosen ones.
  func arm(_ ctx: WorkerContext) {
    guard let kind = fault, ctx.rank == faultRank, ctx.restartCount == faultRestart else { return }
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

struct Train: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Train (the default subcommand): the seed's flags, each also in snake_case.")
  @OptionGroup var placement: Placement
  @OptionGroup(title: "Fault injection (tests only)") var faults: FaultInjection
  @OptionGroup(title: "Training (the seed's flags; each also in snake_case)") var train: TrainFlags

  func run() throws {
    let (ctx, options) = placement.start()
    faults.arm(ctx)
    runRank(ctx) { try TrainJob.run(flags: train, context: ctx, groupOptions: options) }
  }
}

struct SelfTest: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "self-test", abstract: "Check the collectives over the real ring.")
  @OptionGroup var placement: Placement
  @OptionGroup(title: "Fault injection (tests only)") var faults: FaultInjection
  @Option(help: "Self-test element counts.")
  var counts = "0,1,7,1000,1000000"
  @Option(help: "Run allreduces of this many floats for --loop-seconds after the self-test.")
  var loopCount = 100_000
  @Option(help: "Seconds of repeated allreduces after the self-test (for fault-injection tests).")
  var loopSeconds = 0.0
  @Option(help: "Extra text in the model signature (tests: a mismatching model).")
  var signatureSalt = ""

  func validate() throws {
    try checkRange(loopCount >= 0, "loop-count", loopCount, "≥ 0")
    try checkRange(loopSeconds >= 0 && loopSeconds.isFinite, "loop-seconds", loopSeconds, "≥ 0")
  }

  func run() throws {
    let (ctx, options) = placement.start()
    let counts = self.counts.split(separator: ",").compactMap { Int($0) }
    runRank(ctx) {
      let group = try ProcessGroup.join(ctx, modelSignature: [("selftest/buffer\(signatureSalt)", counts.max() ?? 0)], options: options)
      defer { group.close() }
      try CollectiveSelfTest.run(group, counts: counts, log: say)
      // Faults start once the group runs, so that they hit the allreduce loop.
      faults.arm(ctx)
      if loopSeconds > 0 { try CollectiveSelfTest.loop(group, count: loopCount, seconds: loopSeconds, log: say) }
    }
  }
}

struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Allreduce bandwidth over the ring (make bench-allreduce).")
  @OptionGroup var placement: Placement
  @Option(help: "Benchmark sizes in bytes (K/M binary units).")
  var sizes = "64K,1M,4M,16M,64M"
  @Flag(help: "Benchmark with fp16 wire compression.")
  var fp16 = false

  func validate() throws {
    let parsed = sizes.split(separator: ",").map { CollectiveSelfTest.parseBytes(String($0)) }
    try checkRange(!parsed.isEmpty && parsed.allSatisfy { $0 != nil }, "sizes", sizes, "a comma-separated list like 64K,1M")
  }

  func run() throws {
    let (ctx, options) = placement.start()
    let sizes = self.sizes.split(separator: ",").compactMap { CollectiveSelfTest.parseBytes(String($0)) }
    runRank(ctx) {
      let group = try ProcessGroup.join(ctx, modelSignature: [("selftest/buffer", sizes.max() ?? 0)], options: options)
      defer { group.close() }
      try CollectiveSelfTest.benchmark(group, sizes: sizes, fp16: fp16) { if group.rank == 0 { say($0) } }
    }
  }
}

/// Runs a rank's work; a failure is one line naming the rank, with the exit status launch reads
/// (a failure caused by another rank is not this rank's root cause).
func runRank(_ ctx: WorkerContext, _ body: () throws -> Void) {
  do { try body() } catch let e as CollectiveError {
    fail("rank \(ctx.rank): \(e)", code: e.isCausedByPeer ? peerFailureExitCode : 1)
  } catch {
    fail("rank \(ctx.rank): \(error)", code: 1)
  }
}

func checkRange(_ ok: Bool, _ flag: String, _ value: Any, _ range: String) throws {
  if !ok { throw ValidationError("--\(flag) \(value) is out of range: must be \(range)") }
}

func say(_ line: String) {
  print(line)
  fflush(stdout)
}

func fail(_ message: String, code: Int32) -> Never {
  say("error: \(message)")
  exit(code)
}

// Flag errors are one line too (launch shows a rank's last lines); --help prints the usual help.
do {
  var command = try Worker.parseAsRoot(Arguments.joiningNegativeNumbers(Array(CommandLine.arguments.dropFirst())))
  try command.run()
} catch {
  if Worker.exitCode(for: error) == .success { Worker.exit(withError: error) }
  fail(Worker.message(for: error), code: 1)
}
