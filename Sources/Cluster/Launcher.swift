// Supervision of the workers of one server (the logic behind `launch`): start one worker per
// device with the contract in its environment, route its output to its log file (and the
// console), and on the first failure stop everyone within seconds, name the root cause with its
// last log lines, and either restart the whole group or exit non-zero. No orphans: each worker
// leads its own process group, which is what gets signalled, and workers die with launch.

import Collective
import Foundation

public struct LaunchPlan {
  public var table: RankTable
  /// Absolute path, passed to workers as RANK_TABLE_FILE.
  public var tablePath: String
  public var serverID: String
  public var workerExecutable: String
  public var workerArguments: [String]
  /// Logs go to <logDir>/<rank>/worker.log.
  public var logDir: String
  public var maxRestarts = 0
  public var jobID: String
  public var secret: JobSecret
  public var basePort = RankTable.defaultBasePort
  /// Compute threads per worker; nil = cores ÷ local workers.
  public var threads: Int?
  /// More contract variables (timeouts, security), by key.
  public var extraEnvironment: [ContractKey: String] = [:]
  /// Seconds between SIGTERM and SIGKILL when stopping workers.
  public var gracePeriod = Launcher.defaultGracePeriod
  /// Observability (issue 13): each worker writes its timeline to timelinePath(rank:).
  public var timeline = false
  public var timelineSteps: Int?
  /// Multi-server jobs (issue 11): the control channel to the other servers' launches, which
  /// makes the restart budget and the root cause job-wide. nil for a one-server job.
  public var control: JobControl?

  public init(table: RankTable, tablePath: String, serverID: String, workerExecutable: String,
              workerArguments: [String], logDir: String, jobID: String, secret: JobSecret) {
    self.table = table; self.tablePath = tablePath; self.serverID = serverID
    self.workerExecutable = workerExecutable; self.workerArguments = workerArguments
    self.logDir = logDir; self.jobID = jobID; self.secret = secret
  }
}

extension LaunchPlan {
  /// Where rank `rank` writes its part of `launch --timeline` (merged by launch at the end).
  public func timelinePath(rank: Int) -> String { "\(logDir)/\(rank)/timeline.json" }
  /// The ranks this launch starts.
  public var localRanks: [Int] { table.devices(onServer: serverID).map(\.rank) }
}

/// The signal launch received (SIGINT/SIGTERM), set by the handler, read by the loop.
nonisolated(unsafe) private var receivedSignal: Int32 = 0

public final class Launcher {
  /// Seconds a worker gets to exit after SIGTERM before SIGKILL.
  public static let defaultGracePeriod = 5.0
  /// Supervision tick: how often exits are checked while no output arrives.
  static let tickMilliseconds: Int32 = 100
  /// Seconds of failures collected after the first one, to find the root cause among them.
  static let rootCauseWindow = 0.5
  /// While every failure so far is caused by a peer, launch waits up to this long (from the first
  /// failure) for the other ranks to report too before stopping them: their error lines name the
  /// rank that hung or vanished, which is the root cause, and belong in their logs.
  static let peerFailureWindow = 5.0
  /// Lines of a failed rank's log printed as the root cause.
  public static let tailLines = 20
  /// Console forwarding: other ranks' lines containing one of these (case-insensitive).
  static let forwardedWords = ["warning", "error"]

  private let plan: LaunchPlan
  private let console: (String) -> Void

  public init(plan: LaunchPlan, console: @escaping (String) -> Void = { print($0); fflush(stdout) }) {
    self.plan = plan
    self.console = console
  }

  /// Chooses the server this launch runs: the requested one, or the only server whose devices
  /// all run on this host. `table` is placed (`RankTable.placed`): simulated devices carry their
  /// server's address.
  public static func selectServer(table: RankTable, requested: String?,
                                  interfaces: Set<String> = LocalAddress.interfaceAddresses()) throws -> String {
    func notHere(_ d: Device) -> String {
      d.simulated
        ? "\(RankTable.serverPath(of: d)).server_id: \"\(d.address)\" (where rank \(d.rank), device_ip \(d.deviceIP), is simulated) is not an address of this host"
        : "\(d.path).device_ip: \"\(d.address)\" (rank \(d.rank), server_id \(d.serverID)) is not an address of this host"
    }
    if let id = requested {
      guard table.serverIDs.contains(id) else {
        throw RankTableError("--server-id \(id) is not in the rank table (servers: \(table.serverIDs.joined(separator: ", ")))")
      }
      if let d = table.devices(onServer: id).first(where: { !LocalAddress.isLocal($0.address, interfaces: interfaces) }) {
        throw RankTableError(notHere(d) + " (server \(id))")
      }
      return id
    }
    let local = table.serverIDs.filter { id in
      table.devices(onServer: id).allSatisfy { LocalAddress.isLocal($0.address, interfaces: interfaces) }
    }
    switch local.count {
    case 1: return local[0]
    case 0:
      // Name the first address that is not local, with its place in the table.
      let d = table.devices.first { !LocalAddress.isLocal($0.address, interfaces: interfaces) }!
      throw RankTableError("no server of the rank table runs on this host: \(notHere(d)); fix the table or pass --server-id")
    default:
      throw RankTableError("servers \(local.joined(separator: ", ")) all have local addresses (a loopback simulation?); "
                           + "start one launch per server with --server-id")
    }
  }

  /// Runs the job (with restarts); returns launch's exit status.
  public func run() -> Int32 {
    receivedSignal = 0
    signal(SIGINT) { receivedSignal = $0 }
    signal(SIGTERM) { receivedSignal = $0 }
    signal(SIGPIPE, SIG_IGN)
    defer { signal(SIGINT, SIG_DFL); signal(SIGTERM, SIG_DFL) }
    var attempt = 0
    while true {
      let outcome = runGroup(restartCount: attempt)
      if case let .interrupted(sig) = outcome {
        say("stopped all workers on signal \(sig)")
        plan.control?.close()
        return 128 + sig
      }
      if let job = plan.control {
        // One job across servers: the coordinator's decision, the same on every launch.
        let decision: JobDecision?
        switch outcome {
        case .succeeded: decision = job.finish(attempt: attempt, wait: pause)
        case let .failed(cause): decision = job.decide(attempt: attempt, local: cause, wait: pause)
        case .mustDecide: decision = job.decide(attempt: attempt, local: nil, wait: pause)
        case let .decided(d): decision = d
        case .interrupted: decision = nil
        }
        guard let d = decision else {
          say("all \(localDevices.count) workers finished (job of \(job.servers.count) servers finished)")
          job.close()
          return 0
        }
        say("job: \(d.cause)")
        if d.restart {
          attempt = d.attempt + 1
          say("restarting the job on every server (restart \(attempt) of \(job.maxRestarts))")
          continue
        }
        say(job.maxRestarts > 0 && d.attempt >= job.maxRestarts ? "giving up after \(job.maxRestarts) restarts (job-wide)" : "giving up")
        job.close()
        return 1
      }
      switch outcome {
      case .succeeded:
        say("all \(localDevices.count) workers finished")
        return 0
      case .failed, .mustDecide, .decided, .interrupted:
        if attempt < plan.maxRestarts {
          attempt += 1
          say("restarting the group (restart \(attempt) of \(plan.maxRestarts))")
          continue
        }
        say(plan.maxRestarts > 0 ? "giving up after \(plan.maxRestarts) restarts" : "giving up")
        return 1
      }
    }
  }

  /// Waits while the control channel settles (launch's own loop is single-threaded).
  private func pause(_ seconds: Double) { usleep(UInt32(seconds * 1e6)) }

  // MARK: One run of the group

  private enum Outcome {
    case succeeded, interrupted(Int32)
    /// This server's workers failed; the local root cause.
    case failed(LocalCause?)
    /// Multi-server: the coordinator decided (another server failed), or must decide now.
    case decided(JobDecision), mustDecide
  }

  private final class Worker {
    let device: Device
    let localRank: Int
    var pid: pid_t = 0
    var output: Int32 = -1
    var log: FileHandle?
    var partial: [UInt8] = []
    var tail: [String] = []
    var status: Int32?
    init(device: Device, localRank: Int) { self.device = device; self.localRank = localRank }
  }

  private var localDevices: [Device] { plan.table.devices(onServer: plan.serverID) }

  private func say(_ line: String) { console("launch: \(line)") }

  private func runGroup(restartCount: Int) -> Outcome {
    let workers = localDevices.enumerated().map { Worker(device: $0.element, localRank: $0.offset) }
    for w in workers {
      do {
        try spawn(w, restartCount: restartCount, localWorldSize: workers.count)
      } catch {
        say("cannot start rank \(w.device.rank): \(error)")
        stop(workers, reason: nil)
        return .failed(LocalCause(kind: .own, rank: w.device.rank, how: "launch cannot start it: \(error)"))
      }
    }
    say("started \(workers.count) workers (ranks \(workers.map { String($0.device.rank) }.joined(separator: ","))) of "
        + "\(plan.table.worldSize) on server \(plan.serverID); logs in \(plan.logDir)/<rank>/")
    var failures: [Worker] = []
    while workers.contains(where: { $0.status == nil }) {
      pump(workers, milliseconds: Self.tickMilliseconds)
      reap(workers)
      if receivedSignal != 0 {
        let sig = receivedSignal
        stop(workers, reason: "signal \(sig)")
        return .interrupted(sig)
      }
      if let job = plan.control {
        // Another server failed (or went silent): stop ours at once, the job decides.
        switch job.poll(attempt: restartCount) {
        case .none: break
        case let .decided(d):
          stop(workers, reason: "job decision")
          closeLogs(workers)
          return .decided(d)
        case .mustDecide:
          stop(workers, reason: "another server failed")
          closeLogs(workers)
          return .mustDecide
        }
      }
      if workers.contains(where: { $0.status.map { $0 != 0 } ?? false }) {
        // A dead rank's neighbours notice its closed sockets while the kernel is still tearing
        // it down, so they may exit first: collect the failures of a short window before
        // naming the root cause (and before stopping anyone).
        let settle = Date(timeIntervalSinceNow: Self.rootCauseWindow)
        let peerDeadline = Date(timeIntervalSinceNow: Self.peerFailureWindow)
        while workers.contains(where: { $0.status == nil }) && Date() < peerDeadline {
          if Date() >= settle && !waitingForPeerReports(workers) { break }
          pump(workers, milliseconds: 20)
          reap(workers)
        }
        failures = workers.filter { $0.status.map { $0 != 0 } ?? false }
        break
      }
    }
    if failures.isEmpty {
      pump(workers, milliseconds: 0)
      closeLogs(workers)
      return .succeeded
    }
    // Decided before stopping: a stopped (hung) rank is still in state T now.
    let cause = rootCause(failures, workers: workers)
    stop(workers, reason: "rank failure")
    report(cause)
    closeLogs(workers)
    return .failed(LocalCause(kind: cause.kind, rank: cause.rank, how: cause.how))
  }

  private func isPeerFailure(_ w: Worker) -> Bool {
    guard let st = w.status else { return false }
    return exited(st) && exitCode(st) == peerFailureExitCode
  }

  /// The rank a peer-caused failure names in its last error line.
  private func blamed(_ w: Worker) -> Int? {
    w.tail.last { $0.contains("error:") }.flatMap(blamedRank(inErrorLine:))
  }

  /// True while every failure is caused by a peer and a worker that nobody named (and that is not
  /// stopped) still runs: it is about to fail with its own report.
  private func waitingForPeerReports(_ workers: [Worker]) -> Bool {
    let failed = workers.filter { $0.status.map { $0 != 0 } ?? false }
    guard failed.allSatisfy(isPeerFailure) else { return false }
    let named = Set(failed.compactMap(blamed))
    return workers.contains { $0.status == nil && !named.contains($0.device.rank) && !isStopped($0.pid) }
  }

  private struct RootCause {
    var rank: Int
    var worker: Worker?
    var how: String
    /// Failed for its own reasons, stopped, or blamed by peers (the job-wide choice ranks them).
    var kind: LocalCause.Kind = .own
  }

  /// The root cause: a rank that failed for its own reasons (lowest first); else the rank the
  /// peer-caused failures name most (a rank that hung, was stopped or vanished; it may still be
  /// running, or be on another server); else a worker in the stopped state; else the lowest rank.
  private func rootCause(_ failures: [Worker], workers: [Worker]) -> RootCause {
    let own = failures.filter { !isPeerFailure($0) }
    if let w = own.min(by: { $0.device.rank < $1.device.rank }) { return RootCause(rank: w.device.rank, worker: w, how: describeExit(w)) }
    var votes: [Int: [Int]] = [:]
    for w in failures { if let r = blamed(w) { votes[r, default: []].append(w.device.rank) } }
    let stopped = workers.filter { $0.status == nil && isStopped($0.pid) }
    if let (rank, namers) = votes.max(by: { ($0.value.count, -$0.key) < ($1.value.count, -$1.key) }) {
      let by = "named by rank\(namers.count > 1 ? "s" : "") \(namers.sorted().map(String.init).joined(separator: ", "))"
      let w = workers.first { $0.device.rank == rank }
      let how: String
      var kind = LocalCause.Kind.peer
      switch w {
      case nil: how = "lost by its peers (it runs on another server: see that server's launch); \(by)"
      case let w? where w.status == nil:
        kind = isStopped(w.pid) ? .stopped : .silent
        how = (isStopped(w.pid) ? "stopped (SIGSTOP or a debugger: process state T)" : "hung (still running, not answering)") + "; \(by)"
      case let w?: how = "\(describeExit(w)); \(by)"
      }
      return RootCause(rank: rank, worker: w, how: how, kind: kind)
    }
    if let w = stopped.min(by: { $0.device.rank < $1.device.rank }) {
      return RootCause(rank: w.device.rank, worker: w, how: "stopped (SIGSTOP or a debugger: process state T)", kind: .stopped)
    }
    let w = failures.min { $0.device.rank < $1.device.rank }!
    return RootCause(rank: w.device.rank, worker: w, how: describeExit(w), kind: .peer)
  }

  private func describeExit(_ w: Worker) -> String {
    let st = w.status!
    return exited(st) ? "exited with status \(exitCode(st))" + (exitCode(st) == peerFailureExitCode ? " (failed because of another rank)" : "")
                      : "was killed by signal \(termSignal(st))"
  }

  private func report(_ cause: RootCause) {
    let place = plan.table.devices.first { $0.rank == cause.rank }.map { "device \($0.deviceID), \($0.address):\($0.port)" } ?? "?"
    say("rank \(cause.rank) (\(place)) failed first: \(cause.how)")
    if let w = cause.worker, !w.tail.isEmpty {
      say("last \(w.tail.count) lines of \(logPath(w.device.rank)):")
      for line in w.tail { console("  [rank \(w.device.rank)] \(line)") }
    }
    say("stopped the other workers of this server")
  }

  // MARK: Processes

  private func logPath(_ rank: Int) -> String { "\(plan.logDir)/\(rank)/worker.log" }

  private func environment(for w: Worker, restartCount: Int, localWorldSize: Int) -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    env[ContractKey.jobSecretFile.rawValue] = nil
    let threads = plan.threads ?? WorkerContext.defaultThreads(localWorkers: localWorldSize)
    let contract: [ContractKey: String] = [
      .rankTableFile: plan.tablePath, .rankSize: String(plan.table.worldSize), .rankID: String(w.device.rank),
      .deviceID: String(w.device.deviceID), .jobID: plan.jobID, .localRank: String(w.localRank),
      .localWorldSize: String(localWorldSize), .threads: String(threads),
      .logDir: "\(plan.logDir)/\(w.device.rank)", .restartCount: String(restartCount),
      .basePort: String(plan.basePort), .jobSecret: plan.secret.hex, .launcherPID: String(getpid()),
    ]
    if plan.timeline {
      env[ContractKey.timelineFile.rawValue] = plan.timelinePath(rank: w.device.rank)
      if let n = plan.timelineSteps { env[ContractKey.timelineSteps.rawValue] = String(n) }
    }
    for (k, v) in contract.merging(plan.extraEnvironment, uniquingKeysWith: { $1 }) { env[k.rawValue] = v }
    for name in computeThreadVariables { env[name] = String(threads) }
    for (k, v) in computeLibraryDefaults where env[k] == nil { env[k] = v }
    return env
  }

  private func spawn(_ w: Worker, restartCount: Int, localWorldSize: Int) throws {
    let dir = "\(plan.logDir)/\(w.device.rank)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let path = logPath(w.device.rank)
    if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
    w.log = FileHandle(forWritingAtPath: path)
    w.log?.seekToEndOfFile()
    if restartCount > 0 { w.log?.write(Data("=== launch: restart \(restartCount) ===\n".utf8)) }

    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw RankTableError("pipe: \(String(cString: strerror(errno)))") }
    // Close-on-exec, so later workers do not inherit this one's pipe (launch is single-threaded).
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    defer { Foundation.close(fds[1]) }
    w.output = fds[0]
    _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    // Own process group (signalled as a whole; the terminal's Ctrl-C reaches only launch),
    // default signal dispositions and an empty mask whatever launch itself has.
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
    posix_spawnattr_setpgroup(&attr, 0)
    var defaults = sigset_t(), empty = sigset_t()
    sigemptyset(&defaults); sigemptyset(&empty)
    for s in [SIGINT, SIGTERM, SIGPIPE] { sigaddset(&defaults, s) }
    posix_spawnattr_setsigdefault(&attr, &defaults)
    posix_spawnattr_setsigmask(&attr, &empty)

    let argv = ([plan.workerExecutable] + plan.workerArguments).map { strdup($0) } + [nil]
    let envp = environment(for: w, restartCount: restartCount, localWorldSize: localWorldSize)
      .map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { (argv + envp).forEach { free($0) } }
    let rc = posix_spawn(&w.pid, plan.workerExecutable, &actions, &attr, argv, envp)
    guard rc == 0 else {
      throw RankTableError("cannot run \(plan.workerExecutable): \(String(cString: strerror(rc)))")
    }
  }

  /// Moves available output to the logs (and console) for up to `milliseconds`.
  private func pump(_ workers: [Worker], milliseconds: Int32) {
    var items = workers.filter { $0.output >= 0 }.map { pollfd(fd: $0.output, events: Int16(POLLIN), revents: 0) }
    if milliseconds > 0 && !items.isEmpty { _ = poll(&items, nfds_t(items.count), milliseconds) }
    if milliseconds > 0 && items.isEmpty { usleep(UInt32(milliseconds) * 1000) }
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    for w in workers where w.output >= 0 {
      while true {
        let n = read(w.output, &buffer, buffer.count)
        if n > 0 {
          w.log?.write(Data(buffer[0..<n]))
          w.partial.append(contentsOf: buffer[0..<n])
          emitLines(w)
          continue
        }
        if n == 0 {  // EOF: the worker (and everything that inherited its output) is gone
          Foundation.close(w.output); w.output = -1
          if !w.partial.isEmpty { w.partial.append(10); emitLines(w) }
        }
        break
      }
    }
  }

  private func emitLines(_ w: Worker) {
    while let nl = w.partial.firstIndex(of: 10) {
      let line = String(decoding: w.partial[..<nl], as: UTF8.self)
      w.partial.removeSubrange(...nl)
      w.tail.append(line)
      if w.tail.count > Self.tailLines { w.tail.removeFirst() }
      if w.device.rank == 0 {
        console(line)
      } else {
        let lower = line.lowercased()
        if Self.forwardedWords.contains(where: lower.contains) { console("[rank \(w.device.rank)] \(line)") }
      }
    }
  }

  private func reap(_ workers: [Worker]) {
    for w in workers where w.status == nil && w.pid > 0 {
      var st: Int32 = 0
      if waitpid(w.pid, &st, WNOHANG) == w.pid {
        w.status = st
        kill(-w.pid, SIGKILL)  // whatever the worker left behind in its group
      }
    }
  }

  /// SIGTERM to every live worker's process group, SIGKILL after the grace period; waits for all.
  private func stop(_ workers: [Worker], reason: String?) {
    reap(workers)
    let live = workers.filter { $0.status == nil && $0.pid > 0 }
    // SIGCONT after SIGTERM: a stopped worker acts on the SIGTERM at once instead of waiting for SIGKILL.
    for w in live { kill(-w.pid, SIGTERM); kill(-w.pid, SIGCONT) }
    let deadline = Date(timeIntervalSinceNow: plan.gracePeriod)
    while workers.contains(where: { $0.status == nil && $0.pid > 0 }) {
      if Date() > deadline {
        for w in workers where w.status == nil && w.pid > 0 { kill(-w.pid, SIGKILL) }
      }
      pump(workers, milliseconds: 50)
      reap(workers)
    }
    pump(workers, milliseconds: 0)
  }

  private func closeLogs(_ workers: [Worker]) {
    for w in workers {
      if w.output >= 0 { Foundation.close(w.output); w.output = -1 }
      try? w.log?.close()
    }
  }
}

// Wait-status decoding (the C macros are not imported into Swift).
func exited(_ status: Int32) -> Bool { status & 0x7f == 0 }
func exitCode(_ status: Int32) -> Int32 { (status >> 8) & 0xff }
func termSignal(_ status: Int32) -> Int32 { status & 0x7f }

/// The rank a peer-caused failure blames, from its error line: the innermost
/// `lost connection to rank N (` or `rank N (…) sent nothing for` (an abort notice relayed around
/// the ring quotes the rank that failed first, which quotes the rank it lost).
public func blamedRank(inErrorLine line: String) -> Int? {
  var best: (position: String.Index, rank: Int)?
  func consider(_ position: String.Index, _ rank: Int?) {
    guard let rank else { return }
    if best == nil || position > best!.position { best = (position, rank) }
  }
  func leadingInt(_ s: Substring) -> Int? { Int(s.prefix { $0.isNumber }) }
  var search = line.startIndex..<line.endIndex
  while let r = line.range(of: "lost connection to rank ", range: search) {
    consider(r.lowerBound, leadingInt(line[r.upperBound...]))
    search = r.upperBound..<line.endIndex
  }
  search = line.startIndex..<line.endIndex
  while let r = line.range(of: " sent nothing for ", range: search) {
    // "rank N (address) sent nothing for": the last "rank " before it.
    if let k = line.range(of: "rank ", options: .backwards, range: line.startIndex..<r.lowerBound) {
      consider(k.lowerBound, leadingInt(line[k.upperBound...]))
    }
    search = r.upperBound..<line.endIndex
  }
  return best?.rank
}

/// The state letter of /proc/<pid>/stat (R running, S sleeping, T stopped, Z zombie…), nil if unknown.
func processState(_ pid: pid_t) -> Character? {
  guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")") else { return nil }
  return text[text.index(after: close)...].first { $0 != " " }
}

/// Stopped by a signal (T) or by a debugger (t).
func isStopped(_ pid: pid_t) -> Bool { processState(pid).map { $0 == "T" || $0 == "t" } ?? false }
