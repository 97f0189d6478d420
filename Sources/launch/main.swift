// `launch`: starts one worker per device of this server with the contract in its environment,
// supervises them (see Cluster/Launcher.swift) and exits with the job's status.

import ArgumentParser
import Cluster
import Collective
import Foundation
import Telemetry

struct Launch: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run the workers of one server of a data-parallel job.",
    discussion: "Example: launch --rank-table rank_table/8p.json -- self-test flags… (see docs/distributed.md)")

  @Option(name: [.customLong("rank-table"), .customLong("rank_table")], help: "Rank table (seed or HCCL 1.0 schema).")
  var rankTable: String?
  @Option(help: "Instead of a table: N ranks on 127.0.0.1, ports --base-port + rank (a generated table is written to the log dir).")
  var localRanks: Int?
  @Option(name: [.customLong("ranks-per-node"), .customLong("ranks_per_node")], help: "Instead of a table: N ranks on every node of a Slurm or Open MPI job that runs one launch per node (docs/clusters.md).")
  var ranksPerNode: Int?
  @Option(help: "Server of the table to run (default: the one whose devices are on this host).")
  var serverID: String?
  @Option(name: [.customLong("server-address"), .customLong("server_address")],
          help: "SERVER_ID=ADDRESS (repeatable), or ADDRESS for this launch's server: where a server named by a name runs; devices whose device_ip is not on this host are simulated on their server's address.")
  var serverAddress: [String] = []
  @Option(name: [.customLong("control-port"), .customLong("control_port")],
          help: "Several servers: port of the launches' control channel, on the first server's address (default: the table's highest port + 1).")
  var controlPort: Int?
  @Option(help: "Restart the whole group up to N times after a failure (workers see MNV2_RESTART_COUNT).")
  var maxRestarts = 0
  @Option(help: "Log directory (default result/<N>p); rank r logs to <dir>/<r>/worker.log.")
  var logDir: String?
  @Option(help: "Port of rank r when the table has no device_port: base + r (with --local-ranks, 0 = free ports).")
  var basePort = RankTable.defaultBasePort
  @Option(help: "The worker executable (default: `worker` next to launch's resolved executable, else on PATH).")
  var worker: String?
  @Option(help: "Job id (default: JOB_ID, else derived from the secret).")
  var jobID: String?
  @Option(help: "File (mode 0600, 64 hex digits) with the job secret; required when the job spans several servers, and the same file on each.")
  var secretFile: String?
  @Option(help: "Compute threads per worker (default: cores ÷ local workers).")
  var threads: Int?
  @Option(help: "Seconds to wait for the ring to form (default \(Int(GroupOptions.defaultConnectTimeout))).")
  var connectTimeout: Double?
  @Option(help: "Seconds a collective waits for a neighbour once running (default \(Int(GroupOptions.defaultRunningTimeout))).")
  var runningTimeout: Double?
  @Option(help: "curve (encrypted) or plain (password only); default: plain if every device address is loopback, else curve.")
  var security: String?
  @Option(help: "Seconds between SIGTERM and SIGKILL when stopping workers.")
  var gracePeriod = Launcher.defaultGracePeriod
  // Observability (issue 13)
  @Option(help: "Write one Chrome trace (Perfetto, chrome://tracing) of all ranks' steps to FILE: data wait, forward, backward, bucket allreduces, optimizer, checkpoint.")
  var timeline: String?
  @Option(help: "Steps in the timeline, after \(Timeline.defaultWarmupSteps) warm-up steps (default \(Timeline.defaultSteps)).")
  var timelineSteps: Int?
  @Argument(parsing: .postTerminator, help: "Worker flags, after --.")
  var workerArguments: [String] = []

  func validate() throws {
    if [rankTable != nil, localRanks != nil, ranksPerNode != nil].filter({ $0 }).count != 1 {
      throw ValidationError("give exactly one of --rank-table, --local-ranks and --ranks-per-node")
    }
    if let s = security, SecurityMode(rawValue: s) == nil { throw ValidationError("--security \(s): must be curve or plain") }
    if let n = timelineSteps, n < 1 { throw ValidationError("--timeline-steps \(n) is out of range: must be ≥ 1") }
    if timelineSteps != nil && timeline == nil { throw ValidationError("--timeline-steps needs --timeline FILE") }
    try checkRanges()
  }

  /// Every numeric flag against its range: one line naming the flag and the value.
  func checkRanges() throws {
    func check(_ ok: Bool, _ flag: String, _ value: Any, _ range: String) throws {
      if !ok { throw ValidationError("--\(flag) \(value) is out of range: must be \(range)") }
    }
    if let n = localRanks { try check(n >= 1, "local-ranks", n, "≥ 1") }
    if let n = ranksPerNode { try check((1...SchedulerEnvironment.portSlotWidth).contains(n), "ranks-per-node", n, "in 1...\(SchedulerEnvironment.portSlotWidth)") }
    try check(maxRestarts >= 0, "max-restarts", maxRestarts, "≥ 0")
    let maxPort = 65535 - max(0, (localRanks ?? 1) - 1)
    try check((0...maxPort).contains(basePort), "base-port", basePort, "in 0...\(maxPort) (0: free ports, with --local-ranks)")
    if let t = threads { try check(t >= 1, "threads", t, "≥ 1") }
    if let p = controlPort { try check((1...65535).contains(p), "control-port", p, "in 1...65535") }
    if let t = connectTimeout { try check(t > 0 && t.isFinite, "connect-timeout", t, "> 0 seconds") }
    if let t = runningTimeout { try check(t > 0 && t.isFinite, "running-timeout", t, "> 0 seconds") }
    try check(gracePeriod >= 0 && gracePeriod.isFinite, "grace-period", gracePeriod, "≥ 0 seconds")
  }

  func run() throws {
    let environment = ProcessInfo.processInfo.environment
    var tablePath: String
    let table: RankTable
    var schedulerServer: String? = nil, schedulerJobID: String? = nil
    if let n = localRanks {
      var basePort = self.basePort
      if basePort == 0 {
        guard let free = LoopbackPorts.findFree(count: n) else { throw ValidationError("no \(n) free consecutive ports on 127.0.0.1") }
        basePort = free
      }
      let dir = logDir ?? defaultResultDir(worldSize: n)
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      tablePath = "\(dir)/rank_table.json"
      let json = RankTable.seedSchemaJSON(servers: [("127.0.0.1", Array(repeating: "127.0.0.1", count: n),
                                                     (0..<n).map { basePort + $0 })], podName: "local\(n)p")
      try json.write(toFile: tablePath, atomically: true, encoding: .utf8)
    } else if let n = ranksPerNode {
      // Issue 11: the table from the engine's node list; this node is the engine's node index.
      let placed: SchedulerPlacement
      do {
        placed = try SchedulerEnvironment.perNodeLaunch(environment, ranksPerNode: n)
        let json = try placed.rankTableJSON()
        let dir = logDir ?? defaultResultDir(worldSize: placed.worldSize)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        tablePath = "\(dir)/rank_table.json"
        try json.write(toFile: tablePath, atomically: true, encoding: .utf8)
      } catch { throw ValidationError("\(error)") }
      schedulerServer = placed.nodes[placed.rank / n]
      schedulerJobID = placed.jobID
      print("launch: \(placed.engine.displayName) environment: node \(placed.rank / n) (\(placed.nodes[placed.rank / n])) of \(placed.nodes.count) "
            + "runs ranks \(placed.rank)…\(placed.rank + n - 1) of \(placed.worldSize), ports \(placed.basePort)…\(placed.basePort + n - 1) (\(placed.portRule) + local rank); table \(tablePath)")
    } else {
      tablePath = rankTable!
    }
    tablePath = URL(fileURLWithPath: tablePath).standardizedFileURL.path
    let serverAddresses: [String: String]
    do {
      let parsed = try RankTable.load(path: tablePath, basePort: basePort)
      var given = try RankTable.parseServerAddresses(serverAddress, defaultServer: serverID, table: parsed)
      if schedulerServer != nil {
        // The engine's nodes are named servers whose devices are the nodes' own resolved addresses.
        for d in parsed.devices where given[d.serverID] == nil { given[d.serverID] = d.deviceIP }
      }
      serverAddresses = given
      table = try parsed.placed(interfaces: LocalAddress.interfaceAddresses(), serverAddresses: serverAddresses)
    } catch {
      throw ValidationError("\(error)")
    }
    let server = try Launcher.selectServer(table: table, requested: serverID ?? schedulerServer)
    // Once per device of this server: a real table's NPU addresses are not this host's.
    for note in table.simulationNotes(server: server) { print("launch: \(note)") }

    let secret: JobSecret
    if let file = secretFile ?? environment[ContractKey.jobSecretFile.rawValue] {
      secret = try JobSecret.read(file: file)
    } else if table.serverIDs.count > 1 {
      throw ValidationError("the table spans \(table.serverIDs.count) servers: every launch needs the same --secret-file "
                            + "(e.g. umask 077; openssl rand -hex 32 > job.secret)")
    } else {
      secret = JobSecret.generate()
    }
    let executable: String
    do {
      executable = try WorkerExecutable.locate(explicit: worker)
    } catch {
      throw ValidationError("\(error)")
    }
    var plan = LaunchPlan(table: table, tablePath: tablePath, serverID: server, workerExecutable: executable,
                          workerArguments: workerArguments, logDir: logDir ?? defaultResultDir(worldSize: table.worldSize),
                          jobID: jobID ?? environment[ContractKey.jobID.rawValue] ?? schedulerJobID ?? "job-\(secret.fingerprint)", secret: secret)
    plan.maxRestarts = maxRestarts
    plan.basePort = basePort
    plan.threads = threads
    plan.gracePeriod = gracePeriod
    if let t = connectTimeout { plan.extraEnvironment[.connectTimeout] = String(t) }
    if let t = runningTimeout { plan.extraEnvironment[.runningTimeout] = String(t) }
    if let s = security { plan.extraEnvironment[.security] = s }
    if !serverAddresses.isEmpty { plan.extraEnvironment[.serverAddresses] = RankTable.encodeServerAddresses(serverAddresses) }
    plan.timeline = timeline != nil
    plan.timelineSteps = timelineSteps
    if table.serverIDs.count > 1 {
      // One job across servers: the launches agree on restarts and the root cause (JobControl).
      do {
        let port = controlPort ?? JobControl.defaultPort(table: table)
        guard (1...65535).contains(port) else { throw RankTableError("control port \(port) is outside 1...65535: pass --control-port") }
        let endpoint = try JobControl.endpoint(table: table, serverAddresses: serverAddresses, port: port)
        let own = serverAddresses[server] ?? table.address(ofServer: server) ?? table.devices(onServer: server)[0].address
        plan.control = try JobControl(table: table, server: server, endpoint: endpoint, localHost: own, secret: secret,
                                      maxRestarts: maxRestarts, joinTimeout: connectTimeout ?? GroupOptions.defaultConnectTimeout,
                                      say: { print("launch: \($0)"); fflush(stdout) })
      } catch {
        throw ValidationError("\(error)")
      }
    }
    let parts = plan.localRanks.map { plan.timelinePath(rank: $0) }
    if timeline != nil { for p in parts { try? FileManager.default.removeItem(atPath: p) } }
    let status = Launcher(plan: plan).run()
    if let out = timeline {
      // Whatever the ranks wrote, also after a failure: the timeline is most wanted then.
      let present = parts.filter { FileManager.default.fileExists(atPath: $0) }
      if present.isEmpty {
        print("launch: no rank wrote a timeline (\(parts.first ?? "")…); was it a training run?")
      } else {
        do {
          let spans = try Timeline.merge(present, into: out)
          print("launch: timeline of \(present.count) ranks (\(spans) spans) in \(out)")
        } catch {
          print("launch: cannot merge the timeline into \(out): \(error)")
          if status == 0 { throw ExitCode(1) }
        }
      }
    }
    if status != 0 { throw ExitCode(status) }
  }
}

Launch.main(Arguments.joiningNegativeNumbers(Array(CommandLine.arguments.dropFirst()), stopAtTerminator: true))
