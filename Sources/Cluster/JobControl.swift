// One job across servers: the launches of a multi-server table agree, over the authenticated
// control channel (Collective.ControlChannel), on one root cause and one restart budget.
//
// The first server's launch is the coordinator. A launch whose workers fail reports its local
// root cause (rank, kind, description); the coordinator collects the reports of a short window
// (and notices a server whose launch went silent: stopped, hung or its host down), picks the job's
// root cause — a rank that failed for its own reasons, else a silent server, else a stopped rank,
// else the rank the peers blame — and sends every launch the same decision: restart (job restart
// k of the coordinator's --max-restarts) or give up. Every launch prints the same cause line.
// Messages are tab-separated text; every one carries the job attempt it is about.

import Collective
import Foundation

/// What a launch found locally when its workers failed.
public struct LocalCause: Equatable, Sendable {
  public enum Kind: String, Sendable { case own, silent, stopped, peer }
  public var kind: Kind
  public var rank: Int
  public var how: String
  public init(kind: Kind, rank: Int, how: String) { self.kind = kind; self.rank = rank; self.how = how }
}

/// The coordinator's decision, identical on every launch.
public struct JobDecision: Equatable, Sendable {
  public var attempt: Int
  /// True: every launch restarts its workers as job attempt `attempt + 1`.
  public var restart: Bool
  /// The root cause, one line (same text on every server).
  public var cause: String
}

public final class JobControl {
  /// Seconds of silence after which a joined launch (and so its server) is declared lost.
  public static let defaultHeartbeatTimeout = 10.0
  /// A failure report is awaited this long from the servers that did not report yet.
  static let reportWindow = 5.0
  /// A server silent this long while others report is probably stopped: wait for the heartbeat
  /// timeout to decide instead of closing the window without it.
  static let suspiciousSilence = 2.0

  public let server: String
  public let servers: [String]
  public let coordinator: String
  public var isCoordinator: Bool { server == coordinator }
  let table: RankTable
  let channel: ControlChannel
  let heartbeatTimeout: Double
  /// How long a server may take to show up at all (launches start minutes apart).
  let joinTimeout: Double
  let maxRestarts: Int
  private let started = Date()
  private let say: (String) -> Void
  /// Reports received per attempt: server → cause.
  private var reports: [Int: [String: LocalCause]] = [:]
  private var done: [Int: Set<String>] = [:]
  private var decisions: [Int: JobDecision] = [:]
  private var finished: Set<Int> = []
  private var warnedRestarts: Set<String> = []
  private var announcedJoin = false

  /// The control endpoint: the coordinator server's address, port `port`.
  public static func endpoint(table: RankTable, serverAddresses: [String: String], port: Int) throws -> Endpoint {
    let first = table.serverIDs[0]
    guard let host = serverAddresses[first] ?? table.address(ofServer: first) else {
      throw RankTableError("server_id \"\(first)\" (the first server, which coordinates the launches) is not an IPv4 address: "
                           + "pass --server-address \(first)=ADDRESS to every launch")
    }
    return Endpoint(host: host, port: port)
  }

  /// The default control port: one above the highest port of the table.
  public static func defaultPort(table: RankTable) -> Int { (table.devices.map(\.port).max() ?? RankTable.defaultBasePort) + 1 }

  public init(table: RankTable, server: String, endpoint: Endpoint, localHost: String, secret: JobSecret, maxRestarts: Int,
              heartbeatTimeout: Double = JobControl.defaultHeartbeatTimeout, joinTimeout: Double, say: @escaping (String) -> Void) throws {
    self.table = table
    self.server = server
    self.servers = table.serverIDs
    self.coordinator = table.serverIDs[0]
    self.heartbeatTimeout = heartbeatTimeout
    self.joinTimeout = joinTimeout
    self.maxRestarts = maxRestarts
    self.say = say
    if server == table.serverIDs[0] {
      guard LocalAddress.isLocal(endpoint.host) else {
        throw RankTableError("the control channel address \(endpoint.host) of server \(server) is not an address of this host")
      }
      channel = try ControlChannel(coordinatorAt: endpoint, secret: secret)
    } else {
      channel = try ControlChannel(member: server, from: localHost, coordinator: endpoint, secret: secret)
      channel.send("hello\t\(maxRestarts)")
    }
  }

  public func close() { channel.close() }

  // MARK: Liveness

  /// The servers this launch hears on the channel: every other one (coordinator), or the coordinator.
  private var heardServers: [String] { isCoordinator ? servers.filter { $0 != server } : [coordinator] }

  /// Seconds since server `id`'s launch was last heard (members know the coordinator by one name); nil if never.
  private func silence(ofServer id: String) -> Double? {
    channel.silence(of: isCoordinator ? id : ControlChannel.coordinatorName)
  }

  /// Servers (other than this one) that joined and then went silent, or never joined in time.
  func lostServers() -> [(id: String, silence: Double?)] {
    heardServers.compactMap { id in
      if let s = silence(ofServer: id) { return s > heartbeatTimeout ? (id, s) : nil }
      return Date().timeIntervalSince(started) > joinTimeout ? (id, nil) : nil
    }
  }

  func describeLost(_ id: String, _ silence: Double?) -> String {
    let ranks = table.devices(onServer: id).map { String($0.rank) }.joined(separator: ",")
    let role = id == coordinator ? " (the coordinating launch)" : ""
    guard let s = silence else {
      return "server \(id)\(role) (ranks \(ranks)): its launch never joined the control channel within \(Int(joinTimeout)) s"
    }
    return "server \(id)\(role) (ranks \(ranks)) stopped answering: its launch sent nothing for \(Int(s.rounded())) s "
      + "(stopped, hung or its host is down)"
  }

  /// Says once that the channel is complete: the coordinator when it has heard every other
  /// server, a member when it first hears the coordinator (which sends only to servers it heard).
  /// Until then a failure on a server that has not joined cannot be reported to, or decided for,
  /// that server: scripts and tests wait for this line before they count on it.
  private func announceJoin() {
    guard !announcedJoin, heardServers.allSatisfy({ silence(ofServer: $0) != nil }) else { return }
    say(isCoordinator ? "all \(servers.count) servers joined the job's control channel"
                      : "joined the job's control channel (coordinating launch: server \(coordinator))")
    announcedJoin = true
  }

  // MARK: Messages

  private func absorb() {
    for (from, text) in channel.receive() {
      let f = text.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
      guard let kind = f.first else { continue }
      switch kind {
      case "hello" where isCoordinator:
        if let n = f.count > 1 ? Int(f[1]) : nil, n != maxRestarts, warnedRestarts.insert(from).inserted {
          say("warning: server \(from) asked for --max-restarts \(n); the job uses \(maxRestarts) (the coordinating launch's, server \(server))")
        }
      case "failed" where isCoordinator && f.count >= 5:
        guard let attempt = Int(f[1]), let rank = Int(f[3]), let k = LocalCause.Kind(rawValue: f[2]) else { continue }
        reports[attempt, default: [:]][from] = LocalCause(kind: k, rank: rank, how: f[4...].joined(separator: "\t"))
      case "done" where isCoordinator && f.count >= 2:
        if let attempt = Int(f[1]) { done[attempt, default: []].insert(from) }
      case "decide" where !isCoordinator && f.count >= 4:
        guard let attempt = Int(f[1]) else { continue }
        decisions[attempt] = JobDecision(attempt: attempt, restart: f[2] == "restart", cause: f[3...].joined(separator: "\t"))
      case "finish" where !isCoordinator && f.count >= 2:
        if let attempt = Int(f[1]) { finished.insert(attempt) }
      default: continue
      }
    }
  }

  /// Called while the workers run: a decision that stops them (member), or true when the
  /// coordinator must decide now (a member reported a failure, or a server went silent).
  public enum Event { case none, decided(JobDecision), mustDecide }

  public func poll(attempt: Int) -> Event {
    absorb()
    announceJoin()
    if isCoordinator {
      if !(reports[attempt] ?? [:]).isEmpty || !lostServers().isEmpty { return .mustDecide }
      return .none
    }
    if let d = decisions[attempt] { return .decided(d) }
    if let lost = lostServers().first {
      return .decided(JobDecision(attempt: attempt, restart: false, cause: describeLost(lost.id, lost.silence)))
    }
    return .none
  }

  // MARK: Failure: report and decide

  /// Member: reports `local` and waits for the coordinator's decision. Coordinator: collects the
  /// reports of the window, decides, tells everyone. Same decision returned on every launch.
  public func decide(attempt: Int, local: LocalCause?, wait: (Double) -> Void) -> JobDecision {
    if !isCoordinator {
      if let c = local { channel.send("failed\t\(attempt)\t\(c.kind.rawValue)\t\(c.rank)\t\(c.how)") }
      // The coordinator decides within its window plus a heartbeat timeout; a coordinator that
      // still beats but never decides (its launch wedged) must not hold this server forever.
      let deadline = Date(timeIntervalSinceNow: Self.reportWindow + 2 * heartbeatTimeout)
      while true {
        absorb()
        if let d = decisions[attempt] { return d }
        if let lost = lostServers().first {
          return JobDecision(attempt: attempt, restart: false, cause: describeLost(lost.id, lost.silence))
        }
        if Date() >= deadline {
          let own = local.map { "\(place($0.rank)) failed first: \($0.how)" } ?? "unknown"
          return JobDecision(attempt: attempt, restart: false,
                             cause: "no decision from the coordinating launch (server \(coordinator)) within \(Int(Self.reportWindow + 2 * heartbeatTimeout)) s; this server saw: \(own)")
        }
        wait(0.05)
      }
    }
    if let c = local { reports[attempt, default: [:]][server] = c }
    let windowEnd = Date(timeIntervalSinceNow: Self.reportWindow)
    while true {
      absorb()
      let got = reports[attempt] ?? [:]
      let lost = Set(lostServers().map(\.id))
      // (This server's own report is `local`: none when a remote failure stopped its workers.)
      let missing = servers.filter { $0 != server && got[$0] == nil && !lost.contains($0) }
      if missing.isEmpty { break }
      if got.values.contains(where: { $0.kind == .own }) && Date() >= windowEnd { break }
      let suspicious = missing.contains { (silence(ofServer: $0) ?? 0) > Self.suspiciousSilence }
      if Date() >= windowEnd && !suspicious { break }
      wait(0.05)
    }
    let cause = rootCause(reports[attempt] ?? [:], lost: lostServers())
    let restart = attempt < maxRestarts
    let d = JobDecision(attempt: attempt, restart: restart, cause: cause)
    channel.send("decide\t\(attempt)\t\(restart ? "restart" : "giveup")\t\(cause)")
    return d
  }

  func place(_ rank: Int) -> String {
    guard let d = table.devices.first(where: { $0.rank == rank }) else { return "rank \(rank)" }
    return "rank \(rank) (server \(d.serverID), device \(d.deviceID), \(d.address):\(d.port))"
  }

  /// The job's root cause from the servers' reports and the silent servers (see the header).
  func rootCause(_ got: [String: LocalCause], lost: [(id: String, silence: Double?)]) -> String {
    let all = got.values
    if let c = all.filter({ $0.kind == .own }).min(by: { $0.rank < $1.rank }) { return "\(place(c.rank)) failed first: \(c.how)" }
    if let l = lost.first { return describeLost(l.id, l.silence) }
    if let c = all.filter({ $0.kind == .stopped || $0.kind == .silent }).min(by: { $0.rank < $1.rank }) {
      return "\(place(c.rank)) failed first: \(c.how)"
    }
    if let c = all.min(by: { $0.rank < $1.rank }) { return "\(place(c.rank)) failed first: \(c.how)" }
    return "a server asked to stop the job without a cause"
  }

  // MARK: Success

  /// After this server's workers all finished: member reports and waits for the coordinator's
  /// confirmation; the coordinator waits until every server finished. A failure elsewhere (or a
  /// silent server) turns into a decision instead.
  public func finish(attempt: Int, wait: (Double) -> Void) -> JobDecision? {
    if !isCoordinator {
      channel.send("done\t\(attempt)")
      while true {
        absorb()
        if finished.contains(attempt) { return nil }
        if let d = decisions[attempt] { return d }
        if let lost = lostServers().first {
          return JobDecision(attempt: attempt, restart: false, cause: describeLost(lost.id, lost.silence))
        }
        wait(0.05)
      }
    }
    while true {
      absorb()
      let finishedServers = (done[attempt] ?? []).union([server])
      if servers.allSatisfy(finishedServers.contains) {
        channel.send("finish\t\(attempt)")
        return nil
      }
      if !(reports[attempt] ?? [:]).isEmpty || !lostServers().isEmpty { return decide(attempt: attempt, local: nil, wait: wait) }
      wait(0.05)
    }
  }
}
