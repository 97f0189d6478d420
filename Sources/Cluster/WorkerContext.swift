// What a worker knows about its place in the job, read once from the contract launch wrote
// (or from flags), and the step that turns it into a process group.

import Collective
import Foundation

public struct WorkerContext: Sendable {
  public var rank: Int
  public var worldSize: Int
  public var localRank: Int
  public var localWorldSize: Int
  public var deviceID: Int
  public var jobID: String
  /// Compute threads for this worker.
  public var threads: Int
  /// This rank's log directory, when launched.
  public var logDir: String?
  public var restartCount: Int
  public var rankTablePath: String?
  /// Every rank's device (nil when running alone).
  public var table: RankTable?
  public var secret: JobSecret?
  /// Group options from the environment (timeouts, security); callers may adjust.
  public var groupOptions: GroupOptions
  /// Observability (issue 13): the timeline launch asked for (file, steps recorded).
  public var timelineFile: String? = nil
  public var timelineSteps: Int? = nil
  /// Issue 11: where a cluster engine's environment placed this rank (nil: launch or flags did).
  public var scheduler: SchedulerPlacement? = nil

  /// A context for one process alone: no table, no sockets.
  public static func single(threads: Int? = nil) -> WorkerContext {
    WorkerContext(rank: 0, worldSize: 1, localRank: 0, localWorldSize: 1, deviceID: 0, jobID: "single",
                  threads: threads ?? defaultThreads(localWorkers: 1), logDir: nil, restartCount: 0,
                  rankTablePath: nil, table: nil, secret: nil, groupOptions: GroupOptions())
  }

  /// Cores ÷ local workers, at least 1.
  public static func defaultThreads(localWorkers: Int) -> Int {
    max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, localWorkers))
  }

  /// Reads the contract. `overrideRank` (a `--rank` flag) wins over RANK_ID; `rankTablePath`
  /// over RANK_TABLE_FILE. Without a table, a cluster engine's environment (Slurm, Open MPI,
  /// torchrun-style; `SchedulerEnvironment`) places the rank; without either the worker runs alone
  /// (world size 1, no sockets).
  /// Removes the job secret from the process environment so that children do not inherit it.
  public static func fromEnvironment(overrideRank: Int? = nil, rankTablePath: String? = nil,
                                     environment: [String: String] = ProcessInfo.processInfo.environment) throws -> WorkerContext {
    func value(_ k: ContractKey) -> String? { environment[k.rawValue].flatMap { $0.isEmpty ? nil : $0 } }
    func int(_ k: ContractKey) throws -> Int? {
      guard let s = value(k) else { return nil }
      guard let n = Int(s), n >= 0 else { throw RankTableError("\(k.rawValue)=\(s) is not a non-negative integer") }
      return n
    }
    func seconds(_ k: ContractKey) throws -> Double? {
      guard let s = value(k) else { return nil }
      guard let t = Double(s), t > 0 else { throw RankTableError("\(k.rawValue)=\(s) is not a positive number of seconds") }
      return t
    }
    var options = GroupOptions()
    options.logMonitorEvents = value(.debugEvents) != nil
    if let t = try seconds(.connectTimeout) { options.connectTimeout = t }
    if let t = try seconds(.runningTimeout) { options.runningTimeout = t }
    if let s = value(.localSockets) {
      guard s == "0" || s == "1" else { throw RankTableError("\(ContractKey.localSockets.rawValue)=\(s): expected 0 or 1") }
      options.localSockets = s == "1"
    }
    if let s = value(.peerMemory) {
      guard s == "0" || s == "1" else { throw RankTableError("\(ContractKey.peerMemory.rawValue)=\(s): expected 0 or 1") }
      options.peerMemory = s == "1"
    }
    if let s = value(.security) {
      guard let mode = SecurityMode(rawValue: s) else {
        throw RankTableError("\(ContractKey.security.rawValue)=\(s): expected one of \(SecurityMode.allCases.map(\.rawValue))")
      }
      options.security = mode
    }
    let secret = try readSecret(environment)

    var scheduled: SchedulerPlacement? = nil
    let table: RankTable
    let path: String
    if let p = rankTablePath ?? value(.rankTableFile) {
      path = p
      // Devices whose device_ip is not on this host run on their server's address, as launch placed them.
      table = try RankTable.load(path: path, basePort: try int(.basePort) ?? RankTable.defaultBasePort)
        .placed(interfaces: LocalAddress.interfaceAddresses(),
                serverAddresses: try value(.serverAddresses).map(RankTable.decodeServerAddresses) ?? [:])
    } else if let placement = try SchedulerEnvironment.detect(environment), placement.worldSize > 1 {
      scheduled = placement
      table = try placement.rankTable()
      path = "(\(placement.engine.displayName) environment)"
    } else {
      var ctx = single(threads: try int(.threads))
      ctx.logDir = value(.logDir)
      ctx.restartCount = try int(.restartCount) ?? 0
      ctx.groupOptions = options
      ctx.timelineFile = value(.timelineFile)
      ctx.timelineSteps = try int(.timelineSteps)
      return ctx
    }
    guard let rank = try overrideRank ?? int(.rankID) ?? scheduled?.rank else {
      throw RankTableError("no rank: pass --rank or set \(ContractKey.rankID.rawValue)")
    }
    guard rank < table.worldSize else {
      throw RankTableError("rank \(rank) is not in the rank table \(path) (\(table.worldSize) ranks)")
    }
    if let size = try int(.rankSize), size != table.worldSize {
      throw RankTableError("\(ContractKey.rankSize.rawValue)=\(size) but \(path) lists \(table.worldSize) devices")
    }
    let me = table.devices[rank]
    let local = table.devices(onServer: me.serverID)
    let localWorldSize = try int(.localWorldSize) ?? local.count
    if value(.security) == nil {
      // Default: PLAIN on loopback (only root could see the traffic, and root can read the secret
      // from any process anyway); CURVE's encryption wherever traffic leaves the host.
      options.security = table.devices.allSatisfy { LocalAddress.isLoopback($0.address) } ? .plain : .curve
    }
    if table.worldSize > 1 && secret == nil {
      throw RankTableError("no job secret: start workers with launch, or set \(ContractKey.jobSecretFile.rawValue) "
                           + "to a 0600 file holding 64 hex digits")
    }
    var ctx = WorkerContext(
      rank: rank, worldSize: table.worldSize,
      localRank: try int(.localRank) ?? local.firstIndex(of: me) ?? 0, localWorldSize: localWorldSize,
      deviceID: me.deviceID,
      jobID: value(.jobID) ?? scheduled?.jobID ?? "job-\(secret?.fingerprint ?? "single")",
      threads: try int(.threads) ?? defaultThreads(localWorkers: localWorldSize),
      logDir: value(.logDir), restartCount: try int(.restartCount) ?? 0,
      rankTablePath: scheduled == nil ? path : nil, table: table, secret: secret, groupOptions: options)
    ctx.scheduler = scheduled
    ctx.timelineFile = value(.timelineFile)
    ctx.timelineSteps = try int(.timelineSteps)
    return ctx
  }

  /// The secret from MNV2_JOB_SECRET (then removed from the environment) or MNV2_JOB_SECRET_FILE.
  static func readSecret(_ environment: [String: String]) throws -> JobSecret? {
    if let hex = environment[ContractKey.jobSecret.rawValue], !hex.isEmpty {
      unsetenv(ContractKey.jobSecret.rawValue)
      guard let s = JobSecret(hex: hex) else {
        throw RankTableError("\(ContractKey.jobSecret.rawValue) must be 64 hex digits")
      }
      return s
    }
    if let path = environment[ContractKey.jobSecretFile.rawValue], !path.isEmpty {
      return try JobSecret.read(file: path)
    }
    return nil
  }
}

extension JobSecret {
  /// Reads a secret file; refuses one that others can read.
  public static func read(file path: String) throws -> JobSecret {
    var st = stat()
    guard stat(path, &st) == 0, let text = try? String(contentsOfFile: path, encoding: .utf8) else {
      throw RankTableError("cannot read the secret file \(path)")
    }
    guard st.st_mode & 0o077 == 0 else {
      throw RankTableError("the secret file \(path) is readable by others: chmod 600 \(path)")
    }
    guard let s = JobSecret(hex: text) else { throw RankTableError("the secret file \(path) must hold 64 hex digits") }
    return s
  }

  /// Writes a 0600 secret file (created exclusively).
  public func write(file path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
    guard fd >= 0 else { throw RankTableError("cannot create the secret file \(path): \(String(cString: strerror(errno)))") }
    defer { Foundation.close(fd) }
    let text = Array((hex + "\n").utf8)
    guard Foundation.write(fd, text, text.count) == text.count else { throw RankTableError("cannot write \(path)") }
  }
}

extension ProcessGroup {
  /// Joins the job described by `ctx`: world size 1 → no sockets at all. Checks that this rank's
  /// device address is on this host before binding or connecting anything.
  public static func join(_ ctx: WorkerContext, modelSignature: ModelSignature,
                          options: GroupOptions? = nil) throws -> ProcessGroup {
    guard ctx.worldSize > 1, let table = ctx.table, let secret = ctx.secret else { return single() }
    let me = table.devices[ctx.rank]
    guard LocalAddress.isLocal(me.address) else {
      let field = me.simulated ? "\(RankTable.serverPath(of: me)).server_id (rank \(ctx.rank) is simulated there)"
                               : "\(me.path.isEmpty ? "" : me.path + ".")device_ip"
      throw RankTableError("\(field): \"\(me.address)\" (rank \(ctx.rank), server_id \(me.serverID)) "
                           + "is not an address of this host; refusing to start (wrong --server-id or rank table?)")
    }
    let spec = GroupSpec(rank: ctx.rank, endpoints: table.devices.map { Endpoint(host: $0.address, port: $0.port) },
                         jobID: ctx.jobID, secret: secret)
    return try join(spec, modelSignature: modelSignature, options: options ?? ctx.groupOptions)
  }
}
