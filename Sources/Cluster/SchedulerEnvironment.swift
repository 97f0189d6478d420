// Placement from a cluster engine's environment (issue 11): a worker started by srun, mpirun or a
// torchrun-style launcher finds its rank, the world size, its local rank and every rank's address
// without a hand-written rank table. docs/clusters.md lists the variables and the precedence.
//
// Every engine here places ranks node-major ("block"): node i runs a consecutive run of ranks, and
// rank r binds <address of its node>:<base port + its local rank>. Addresses are the nodes' names
// resolved with getaddrinfo (IPv4), never the wildcard; the worker still refuses, before any socket
// exists, an address that is not on its own host (ProcessGroup.join).

import Foundation

/// Which engine's variables placed this rank.
public enum SchedulerEngine: String, CaseIterable, Sendable {
  case torchrun, openMPI = "openmpi", slurm
  public var displayName: String {
    switch self {
    case .torchrun: return "torchrun-style (RANK/WORLD_SIZE)"
    case .openMPI: return "Open MPI"
    case .slurm: return "Slurm"
    }
  }
}

public struct SchedulerPlacement: Equatable, Sendable {
  public var engine: SchedulerEngine
  public var rank: Int
  public var worldSize: Int
  public var localRank: Int
  /// Ranks on this rank's node.
  public var localWorldSize: Int
  /// Host name (or address) of every node, in node order.
  public var nodes: [String]
  /// Ranks on each node (same order); they sum to `worldSize`.
  public var ranksPerNode: [Int]
  /// Rank r binds base + its local rank on its node.
  public var basePort: Int
  /// How `basePort` was found, for the start-up line ("MASTER_PORT 29500 + 1").
  public var portRule: String
  /// The job's id as the engine names it (same on every rank), if it names one.
  public var jobID: String?

  /// Node index of every rank (block placement).
  public var nodeOfRank: [Int] { ranksPerNode.enumerated().flatMap { i, n in Array(repeating: i, count: n) } }
}

public enum SchedulerEnvironment {
  /// MNV2_SCHEDULER: `none` ignores every engine's variables; an engine's name uses only that one.
  public static let selectVariable = "MNV2_SCHEDULER"
  /// Hosts of a multi-node torchrun-style or Open MPI job (they publish no host list), in node order,
  /// in Slurm's host-list syntax (`node[01-04]`).
  public static let nodeListVariable = "MNV2_NODE_LIST"
  /// Derived ports: slot (job key mod slots) of `portSlotWidth` ports from `portRangeStart`. The range
  /// sits below Linux's ephemeral ports (32768+), so outgoing connections never take them; any
  /// `portSlots` consecutive Slurm job ids get disjoint slots.
  public static let portRangeStart = 20000
  public static let portSlotWidth = 64
  public static let portSlots = 187  // 20000 + 187 × 64 = 31968 < 32768

  /// The placement the environment describes, or nil when no engine's variables are set. Errors
  /// are one line naming the variable.
  public static func detect(_ env: [String: String]) throws -> SchedulerPlacement? {
    func has(_ k: String) -> Bool { !(env[k] ?? "").isEmpty }
    let choice = env[selectVariable].flatMap { $0.isEmpty ? nil : $0.lowercased() }
    if choice == "none" { return nil }
    if let c = choice, SchedulerEngine(rawValue: c) == nil {
      throw RankTableError("\(selectVariable)=\(c): expected none, " + SchedulerEngine.allCases.map(\.rawValue).joined(separator: ", "))
    }
    let present: [SchedulerEngine: Bool] = [
      .torchrun: has("RANK") && has("WORLD_SIZE"),
      .openMPI: has("OMPI_COMM_WORLD_RANK"),
      .slurm: has("SLURM_PROCID"),
    ]
    // torchrun or mpirun inside a Slurm allocation: the launcher nearest the process wins.
    let order: [SchedulerEngine] = choice.flatMap(SchedulerEngine.init(rawValue:)).map { [$0] } ?? SchedulerEngine.allCases
    guard let engine = order.first(where: { present[$0] == true }) else {
      if let c = choice { throw RankTableError("\(selectVariable)=\(c) but its variables are not set (\(requiredVariables(SchedulerEngine(rawValue: c)!)))") }
      return nil
    }
    switch engine {
    case .torchrun: return try torchrun(env)
    case .openMPI: return try openMPI(env)
    case .slurm: return try slurm(env)
    }
  }

  static func requiredVariables(_ e: SchedulerEngine) -> String {
    switch e {
    case .torchrun: return "RANK, WORLD_SIZE"
    case .openMPI: return "OMPI_COMM_WORLD_RANK"
    case .slurm: return "SLURM_PROCID"
    }
  }

  // MARK: Engines

  /// RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun, or any
  /// launcher that writes them). One node: every rank on MASTER_ADDR. Several: MNV2_NODE_LIST.
  static func torchrun(_ env: [String: String]) throws -> SchedulerPlacement {
    let v = Reader(env)
    let world = try v.int("WORLD_SIZE", atLeast: 1)!
    let rank = try v.int("RANK", atLeast: 0)!
    try v.below(rank, "RANK", world, "WORLD_SIZE")
    let localWorld = try v.int("LOCAL_WORLD_SIZE", atLeast: 1) ?? world
    var localRank = rank
    if let l = try v.int("LOCAL_RANK", atLeast: 0) {
      localRank = l
    } else if localWorld != world {
      throw RankTableError("LOCAL_RANK is not set (needed when LOCAL_WORLD_SIZE \(localWorld) < WORLD_SIZE \(world))")
    }
    try v.below(localRank, "LOCAL_RANK", localWorld, "LOCAL_WORLD_SIZE")
    guard let master = v.string("MASTER_ADDR") else { throw RankTableError("MASTER_ADDR is not set (the host of rank 0; RANK and WORLD_SIZE are)") }
    let nodes = try uniformNodes(v, world: world, localWorld: localWorld, single: master, engine: "WORLD_SIZE/LOCAL_WORLD_SIZE")
    try checkBlock(rank: rank, localRank: localRank, localWorld: localWorld, rankVar: "RANK", localVar: "LOCAL_RANK")
    if let group = try v.int("GROUP_RANK", atLeast: 0) ?? v.int("NODE_RANK", atLeast: 0), group != rank / localWorld {
      throw RankTableError("GROUP_RANK/NODE_RANK=\(group) but RANK \(rank) / LOCAL_WORLD_SIZE \(localWorld) is node \(rank / localWorld)")
    }
    let (port, rule) = try basePort(v, localWorld: localWorld, jobKey: v.string("TORCHELASTIC_RUN_ID"), jobKeyName: "TORCHELASTIC_RUN_ID")
    return SchedulerPlacement(engine: .torchrun, rank: rank, worldSize: world, localRank: localRank, localWorldSize: localWorld,
                              nodes: nodes, ranksPerNode: Array(repeating: localWorld, count: nodes.count), basePort: port,
                              portRule: rule, jobID: v.string("TORCHELASTIC_RUN_ID").map { "torchrun-\($0)" })
  }

  /// OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE (mpirun). One node: loopback, or MASTER_ADDR
  /// when set. Several: MNV2_NODE_LIST, the same number of ranks on each (`--map-by ppr:N:node`).
  static func openMPI(_ env: [String: String]) throws -> SchedulerPlacement {
    let v = Reader(env)
    guard let world = try v.int("OMPI_COMM_WORLD_SIZE", atLeast: 1) else {
      throw RankTableError("OMPI_COMM_WORLD_SIZE is not set (OMPI_COMM_WORLD_RANK is)")
    }
    let rank = try v.int("OMPI_COMM_WORLD_RANK", atLeast: 0)!
    try v.below(rank, "OMPI_COMM_WORLD_RANK", world, "OMPI_COMM_WORLD_SIZE")
    let localWorld = try v.int("OMPI_COMM_WORLD_LOCAL_SIZE", atLeast: 1) ?? world
    guard let localRank = try v.int("OMPI_COMM_WORLD_LOCAL_RANK", atLeast: 0) else {
      throw RankTableError("OMPI_COMM_WORLD_LOCAL_RANK is not set (OMPI_COMM_WORLD_RANK is)")
    }
    try v.below(localRank, "OMPI_COMM_WORLD_LOCAL_RANK", localWorld, "OMPI_COMM_WORLD_LOCAL_SIZE")
    let nodes = try uniformNodes(v, world: world, localWorld: localWorld, single: v.string("MASTER_ADDR") ?? "127.0.0.1",
                                 engine: "OMPI_COMM_WORLD_SIZE/OMPI_COMM_WORLD_LOCAL_SIZE")
    try checkBlock(rank: rank, localRank: localRank, localWorld: localWorld, rankVar: "OMPI_COMM_WORLD_RANK", localVar: "OMPI_COMM_WORLD_LOCAL_RANK")
    let jobKeyName = ["OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE"].first { v.string($0) != nil }
    let jobKey = jobKeyName.flatMap { v.string($0) }
    let (port, rule) = try basePort(v, localWorld: localWorld, jobKey: jobKey, jobKeyName: jobKeyName ?? "OMPI_MCA_ess_base_jobid or PMIX_NAMESPACE")
    return SchedulerPlacement(engine: .openMPI, rank: rank, worldSize: world, localRank: localRank, localWorldSize: localWorld,
                              nodes: nodes, ranksPerNode: Array(repeating: localWorld, count: nodes.count), basePort: port,
                              portRule: rule, jobID: jobKey.map { "ompi-\($0)" })
  }

  /// SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_NODELIST (else
  /// SLURM_JOB_NODELIST), SLURM_STEP_TASKS_PER_NODE (else SLURM_TASKS_PER_NODE), SLURM_JOB_ID:
  /// one task per rank (srun), block distribution.
  static func slurm(_ env: [String: String]) throws -> SchedulerPlacement {
    let v = Reader(env)
    let rank = try v.int("SLURM_PROCID", atLeast: 0)!
    let worldVar = ["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"].first { v.string($0) != nil }
    guard let wv = worldVar, let world = try v.int(wv, atLeast: 1) else { throw RankTableError("SLURM_NTASKS is not set (SLURM_PROCID is; run the workers with srun)") }
    try v.below(rank, "SLURM_PROCID", world, wv)
    // The batch script itself also has SLURM_PROCID=0 and SLURM_NTASKS; only srun's steps have a step id.
    if world > 1, v.string("SLURM_STEP_ID") == nil, v.string("SLURM_STEPID") == nil {
      throw RankTableError("SLURM_PROCID is set but SLURM_STEP_ID is not: this is the batch script itself, not one of \(world) tasks; start the workers with srun")
    }
    guard let localRank = try v.int("SLURM_LOCALID", atLeast: 0) else { throw RankTableError("SLURM_LOCALID is not set (SLURM_PROCID is)") }
    let listVar = ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"].first { v.string($0) != nil }
    guard let lv = listVar else { throw RankTableError("SLURM_JOB_NODELIST is not set (SLURM_PROCID is)") }
    let nodes = try HostList.expand(v.string(lv)!, variable: lv)
    let tasksVar = ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"].first { v.string($0) != nil }
    var perNode: [Int]
    if let tv = tasksVar {
      perNode = try HostList.expandCounts(v.string(tv)!, variable: tv)
      guard perNode.count == nodes.count else {
        throw RankTableError("\(tv)=\(v.string(tv)!) gives \(perNode.count) nodes but \(lv) lists \(nodes.count)")
      }
    } else if world % nodes.count == 0 {
      perNode = Array(repeating: world / nodes.count, count: nodes.count)
    } else {
      throw RankTableError("SLURM_TASKS_PER_NODE is not set and \(wv)=\(world) does not split evenly over \(nodes.count) nodes")
    }
    guard perNode.reduce(0, +) == world else {
      throw RankTableError("\(tasksVar ?? "SLURM_TASKS_PER_NODE") sums to \(perNode.reduce(0, +)) tasks but \(wv)=\(world)")
    }
    if let nn = try v.int("SLURM_STEP_NUM_NODES", atLeast: 1) ?? v.int("SLURM_NNODES", atLeast: 1), nn != nodes.count {
      throw RankTableError("SLURM_NNODES=\(nn) but \(lv) lists \(nodes.count) nodes")
    }
    if let d = v.string("SLURM_DISTRIBUTION"), !d.hasPrefix("block") {
      throw RankTableError("SLURM_DISTRIBUTION=\(d): ranks must be placed block-wise (srun --distribution=block, the default)")
    }
    let node = SchedulerPlacement.nodeIndex(rank: rank, ranksPerNode: perNode)
    let first = perNode[..<node].reduce(0, +)
    guard rank - first == localRank else {
      throw RankTableError("SLURM_LOCALID=\(localRank) but block distribution puts SLURM_PROCID \(rank) at local rank \(rank - first) of node \(nodes[node])")
    }
    if let nodeID = try v.int("SLURM_NODEID", atLeast: 0), nodeID != node {
      throw RankTableError("SLURM_NODEID=\(nodeID) but block distribution puts SLURM_PROCID \(rank) on node \(node) (\(nodes[node]))")
    }
    let jobID = v.string("SLURM_JOB_ID") ?? v.string("SLURM_JOBID")
    let (port, rule) = try basePort(v, localWorld: perNode.max()!, jobKey: jobID, jobKeyName: "SLURM_JOB_ID", numericKey: true)
    let step = v.string("SLURM_STEP_ID") ?? v.string("SLURM_STEPID")
    return SchedulerPlacement(engine: .slurm, rank: rank, worldSize: world, localRank: localRank, localWorldSize: perNode[node],
                              nodes: nodes, ranksPerNode: perNode, basePort: port, portRule: rule,
                              jobID: jobID.map { "slurm-\($0)" + (step.map { ".\($0)" } ?? "") })
  }

  // MARK: One launch per node

  /// `launch --ranks-per-node N` under an engine that started one launch per node (srun
  /// --ntasks-per-node=1, mpirun --map-by ppr:1:node): N ranks on every node of the job, this node's
  /// index from the engine. The placement's rank is this node's first rank.
  public static func perNodeLaunch(_ env: [String: String], ranksPerNode n: Int) throws -> SchedulerPlacement {
    guard let one = try detect(env) else {
      throw RankTableError("--ranks-per-node needs a Slurm (SLURM_PROCID) or Open MPI (OMPI_COMM_WORLD_RANK) environment: one launch per node")
    }
    guard one.engine != .torchrun else {
      throw RankTableError("RANK/WORLD_SIZE: a torchrun-style launcher starts the workers itself; run worker under it, not launch")
    }
    guard one.localWorldSize == 1 else {
      throw RankTableError("\(one.engine.displayName) started \(one.localWorldSize) launches on this node: start one per node "
                           + (one.engine == .slurm ? "(srun --ntasks-per-node=1)" : "(mpirun --map-by ppr:1:node)"))
    }
    let node = SchedulerPlacement.nodeIndex(rank: one.rank, ranksPerNode: one.ranksPerNode)
    let v = Reader(env)
    let jobKey = one.engine == .slurm ? (v.string("SLURM_JOB_ID") ?? v.string("SLURM_JOBID"))
                                      : ["OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE"].lazy.compactMap { v.string($0) }.first
    let (port, rule) = try basePort(v, localWorld: n, jobKey: jobKey, jobKeyName: one.engine == .slurm ? "SLURM_JOB_ID" : "OMPI_MCA_ess_base_jobid",
                                    numericKey: one.engine == .slurm)
    return SchedulerPlacement(engine: one.engine, rank: node * n, worldSize: one.nodes.count * n, localRank: 0, localWorldSize: n,
                              nodes: one.nodes, ranksPerNode: Array(repeating: n, count: one.nodes.count), basePort: port,
                              portRule: rule, jobID: one.jobID)
  }

  // MARK: Shared rules

  /// One node (all ranks local) or the nodes of MNV2_NODE_LIST, `localWorld` ranks each.
  static func uniformNodes(_ v: Reader, world: Int, localWorld: Int, single: String, engine: String) throws -> [String] {
    if localWorld == world { return [single] }
    guard world % localWorld == 0 else { throw RankTableError("\(engine) = \(world)/\(localWorld): not the same number of ranks on every node") }
    guard let list = v.string(nodeListVariable) else {
      throw RankTableError("\(engine) = \(world)/\(localWorld) spans \(world / localWorld) nodes: set \(nodeListVariable) to their hosts in node order (e.g. node[01-\(world / localWorld)])")
    }
    let nodes = try HostList.expand(list, variable: nodeListVariable)
    guard nodes.count == world / localWorld else {
      throw RankTableError("\(nodeListVariable) lists \(nodes.count) hosts but \(engine) = \(world)/\(localWorld) is \(world / localWorld) nodes")
    }
    return nodes
  }

  static func checkBlock(rank: Int, localRank: Int, localWorld: Int, rankVar: String, localVar: String) throws {
    guard rank % localWorld == localRank else {
      throw RankTableError("\(localVar)=\(localRank) but \(rankVar) \(rank) with \(localWorld) ranks per node is local rank \(rank % localWorld) (ranks must be placed node by node)")
    }
  }

  /// MNV2_BASE_PORT, else MASTER_PORT + 1 (torchrun's own store may hold MASTER_PORT), else a slot
  /// derived from the job key. `localWorld` ports from the base must fit.
  static func basePort(_ v: Reader, localWorld: Int, jobKey: String?, jobKeyName: String,
                       numericKey: Bool = false) throws -> (Int, String) {
    func fits(_ base: Int, _ name: String) throws {
      guard base >= 1024, base + localWorld - 1 <= 65535 else {
        throw RankTableError("\(name) gives ports \(base)…\(base + localWorld - 1): must lie in 1024…65535")
      }
    }
    if let b = try v.int(ContractKey.basePort.rawValue, atLeast: 0) {
      try fits(b, ContractKey.basePort.rawValue)
      return (b, "\(ContractKey.basePort.rawValue) \(b)")
    }
    if let m = try v.int("MASTER_PORT", atLeast: 0) {
      try fits(m + 1, "MASTER_PORT=\(m)")
      return (m + 1, "MASTER_PORT \(m) + 1")
    }
    guard let key = jobKey else {
      throw RankTableError("no port: set MASTER_PORT or \(ContractKey.basePort.rawValue) (\(jobKeyName) is not set either)")
    }
    guard localWorld <= portSlotWidth else {
      throw RankTableError("\(localWorld) ranks on one node exceed a derived port slot (\(portSlotWidth)): set MASTER_PORT or \(ContractKey.basePort.rawValue)")
    }
    // Slurm's numeric ids are consecutive: mod keeps neighbours apart; other keys are hashed.
    let n = numericKey ? UInt64(key).map { Int($0 % UInt64(portSlots)) } : nil
    let slot = n ?? Int(fnv1a64(key) % UInt64(portSlots))
    let base = portRangeStart + slot * portSlotWidth
    return (base, "\(jobKeyName) \(key) → slot \(slot) of \(portSlots): \(portRangeStart) + \(slot)×\(portSlotWidth)")
  }

  /// FNV-1a of a job key (the derived port slot of engines whose job ids are not numbers).
  public static func fnv1a64(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
    return h
  }

  /// Typed reads that name the variable when its value is wrong.
  struct Reader {
    let env: [String: String]
    init(_ env: [String: String]) { self.env = env }
    func string(_ k: String) -> String? { env[k].flatMap { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0.trimmingCharacters(in: .whitespaces) } }
    func int(_ k: String, atLeast low: Int) throws -> Int? {
      guard let s = string(k) else { return nil }
      guard let n = Int(s), n >= low else { throw RankTableError("\(k)=\(s) is not an integer ≥ \(low)") }
      return n
    }
    func below(_ x: Int, _ xName: String, _ limit: Int, _ limitName: String) throws {
      guard x < limit else { throw RankTableError("\(xName)=\(x) is not below \(limitName)=\(limit)") }
    }
  }
}

extension SchedulerPlacement {
  static func nodeIndex(rank: Int, ranksPerNode: [Int]) -> Int {
    var start = 0
    for (i, n) in ranksPerNode.enumerated() {
      if rank < start + n { return i }
      start += n
    }
    return ranksPerNode.count - 1
  }

  /// The rank table this placement describes: node i's ranks on its resolved address, ports
  /// base + local rank. `resolve` maps a host name to an IPv4 address (getaddrinfo by default).
  public func rankTable(resolve: (String) throws -> String = HostResolver.ipv4) throws -> RankTable {
    let json = try rankTableJSON(resolve: resolve)
    do {
      return try RankTable.parse(Data(json.utf8))
    } catch {
      throw RankTableError("the rank table from the \(engine.displayName) environment is invalid: \(error)")
    }
  }

  /// The same table as a seed-schema rank table (what `launch --ranks-per-node` writes to its log dir).
  public func rankTableJSON(resolve: (String) throws -> String = HostResolver.ipv4) throws -> String {
    var servers: [(id: String, addresses: [String], ports: [Int]?)] = []
    for (i, host) in nodes.enumerated() {
      let address = try resolve(host)
      servers.append((host, Array(repeating: address, count: ranksPerNode[i]), (0..<ranksPerNode[i]).map { basePort + $0 }))
    }
    return RankTable.seedSchemaJSON(servers: servers, podName: engine.rawValue)
  }

  /// The start-up line: where this rank is and where its ports come from.
  public var summary: String {
    let node = SchedulerPlacement.nodeIndex(rank: rank, ranksPerNode: ranksPerNode)
    return "placement from the \(engine.displayName) environment: rank \(rank)/\(worldSize), local \(localRank)/\(localWorldSize) "
      + "on node \(node) (\(nodes[node])) of \(nodes.count), port \(basePort + localRank) (\(portRule) + local rank)"
  }
}

/// Host name → IPv4 address with getaddrinfo (a lookup only: nothing is dialled or bound).
public enum HostResolver {
  public static func ipv4(_ host: String) throws -> String {
    if isIPv4(host) { return host }
    var hints = addrinfo()
    hints.ai_family = AF_INET
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var result: UnsafeMutablePointer<addrinfo>?
    let rc = getaddrinfo(host, nil, &hints, &result)
    guard rc == 0, let first = result else {
      throw RankTableError("cannot resolve the host \"\(host)\" to an IPv4 address: \(String(cString: gai_strerror(rc)))")
    }
    defer { freeaddrinfo(result) }
    var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
    first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
      var a = sin.pointee.sin_addr
      _ = inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
    }
    return String(cString: buf)
  }
}

/// Slurm's host-list syntax: `a,b`, `node[01-03,07]` (zero padding kept), several brackets in one
/// name (`r[1-2]n[1-2]` is r1n1 r1n2 r2n1 r2n2), and its task counts `2(x3),1` (2, 2, 2, 1).
public enum HostList {
  /// Hosts beyond this are a typo (`node[1-100000000]`), not a cluster.
  public static let maxHosts = 65536

  public static func expand(_ text: String, variable: String) throws -> [String] {
    func bad(_ why: String) -> RankTableError { RankTableError("\(variable)=\(text): \(why)") }
    var hosts: [String] = []
    for item in try splitTopLevel(text, bad) {
      guard !item.isEmpty else { throw bad("empty host name") }
      var expansions = [""]
      var rest = Substring(item)
      while !rest.isEmpty {
        if let open = rest.firstIndex(of: "[") {
          let prefix = rest[..<open]
          guard let close = rest[open...].firstIndex(of: "]") else { throw bad("unclosed [") }
          let inner = rest[rest.index(after: open)..<close]
          let choices = try ranges(inner, bad)
          var next: [String] = []
          for e in expansions { for c in choices { next.append(e + prefix + c) } }
          expansions = next
          guard expansions.count <= maxHosts else { throw bad("more than \(maxHosts) hosts") }
          rest = rest[rest.index(after: close)...]
        } else {
          guard !rest.contains("]") else { throw bad("] without [") }
          expansions = expansions.map { $0 + rest }
          rest = ""
        }
      }
      hosts += expansions
      guard hosts.count <= maxHosts else { throw bad("more than \(maxHosts) hosts") }
    }
    guard !hosts.isEmpty else { throw bad("no hosts") }
    return hosts
  }

  /// `01-03,07` → ["01", "02", "03", "07"], keeping the width of the lower bound.
  static func ranges(_ inner: Substring, _ bad: (String) -> RankTableError) throws -> [String] {
    var out: [String] = []
    for part in inner.split(separator: ",", omittingEmptySubsequences: false) {
      let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
      guard (1...2).contains(bounds.count), bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
            let lo = Int(bounds[0]), let hi = Int(bounds.last!) else {
        throw bad("[\(inner)]: expected numbers and ranges like 01-03,07")
      }
      guard lo <= hi else { throw bad("[\(inner)]: range \(part) runs backwards") }
      guard hi - lo < maxHosts else { throw bad("more than \(maxHosts) hosts") }
      let width = bounds[0].count
      for n in lo...hi {
        let digits = String(n)
        out.append(String(repeating: "0", count: max(0, width - digits.count)) + digits)
      }
    }
    return out
  }

  /// Commas outside brackets separate hosts.
  static func splitTopLevel(_ text: String, _ bad: (String) -> RankTableError) throws -> [String] {
    var items: [String] = [], current = "", depth = 0
    for ch in text {
      switch ch {
      case "[": depth += 1; guard depth == 1 else { throw bad("nested [") }; current.append(ch)
      case "]": depth -= 1; guard depth == 0 else { throw bad("] without [") }; current.append(ch)
      case "," where depth == 0: items.append(current); current = ""
      default: current.append(ch)
      }
    }
    guard depth == 0 else { throw bad("unclosed [") }
    items.append(current)
    return items.map { $0.trimmingCharacters(in: .whitespaces) }
  }

  /// SLURM_TASKS_PER_NODE: `2(x3),1` → [2, 2, 2, 1].
  public static func expandCounts(_ text: String, variable: String) throws -> [Int] {
    func bad() -> RankTableError { RankTableError("\(variable)=\(text): expected counts like 2(x3),1") }
    var out: [Int] = []
    for part in text.split(separator: ",", omittingEmptySubsequences: false) {
      let p = part.trimmingCharacters(in: .whitespaces)
      if let open = p.firstIndex(of: "(") {
        guard p.hasSuffix(")"), p[p.index(after: open)...].hasPrefix("x"),
              let n = Int(p[..<open]), n >= 1,
              let times = Int(p[p.index(open, offsetBy: 2)..<p.index(before: p.endIndex)]), times >= 1, times <= maxHosts else { throw bad() }
        out += Array(repeating: n, count: times)
      } else {
        guard let n = Int(p), n >= 1 else { throw bad() }
        out.append(n)
      }
      guard out.count <= maxHosts else { throw bad() }
    }
    return out
  }
}
