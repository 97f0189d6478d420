// Rank tables as Ascend tools write them: the seed's schema ("group_list" of instances, ranks in
// order of appearance), its HCCL variant (group "device_num"/"server_num", each instance with its
// "rank_id"), and HCCL 1.0 ("server_list" with explicit "rank_id"). Values are strings in all.
// Validation errors are one line naming the field (a JSON path) and what is wrong with it.
//
// Placement (`placed`): on an Ascend server `device_ip` is the NPU's own address, never the
// host's. A device whose device_ip is an address of this host binds there; any other device is
// simulated on its server's address (server_id, or --server-address for a server named by a
// name), port base + rank. A non-local device_ip is never dialled, bound or probed: the check
// reads the interface list (getifaddrs) only.

import Foundation

/// One device = one rank.
public struct Device: Equatable, Sendable {
  public var rank: Int
  public var deviceID: Int
  /// The address this rank binds to and is dialled at (an IPv4 literal): the table's device_ip
  /// as parsed; after `placed`, its server's address when the device is simulated.
  public var address: String
  public var port: Int
  /// device_ip exactly as the table gives it.
  public var deviceIP: String = ""
  /// True after `placed` when device_ip is not on this host and the device runs on its server's address.
  public var simulated = false
  /// The server (host) the device belongs to, as the table names it.
  public var serverID: String
  public var podName: String?
  /// Where the table lists it, e.g. `group_list[0].instance_list[1].devices[0]` (for errors).
  public var path: String = ""
}

public struct RankTableError: Error, CustomStringConvertible, Equatable {
  public let message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

public struct RankTable: Equatable, Sendable {
  /// Port of rank r when the table gives no `device_port`: basePort + r.
  public static let defaultBasePort = 29500

  public enum Schema: String, Sendable {
    case groupList = "group_list"
    /// group_list with "device_num"/"server_num" and a "rank_id" per instance (older HCCL tools).
    case groupListRanked = "group_list with rank_id (HCCL)"
    case serverList = "server_list (HCCL 1.0)"
  }

  public let schema: Schema
  /// Devices in rank order.
  public let devices: [Device]
  /// Port of rank r is basePort + r unless the table gives device_port (simulated devices always).
  public var basePort = RankTable.defaultBasePort
  public var worldSize: Int { devices.count }

  /// Server ids in order of first appearance.
  public var serverIDs: [String] {
    var seen = Set<String>(), out: [String] = []
    for d in devices where seen.insert(d.serverID).inserted { out.append(d.serverID) }
    return out
  }

  public func devices(onServer id: String) -> [Device] { devices.filter { $0.serverID == id } }

  public static func load(path: String, basePort: Int = defaultBasePort) throws -> RankTable {
    guard let data = FileManager.default.contents(atPath: path) else {
      throw RankTableError("\(path): cannot read the rank table")
    }
    do {
      return try parse(data, basePort: basePort)
    } catch let e as RankTableError {
      throw RankTableError("\(path): \(e.message)")
    }
  }

  public static func parse(_ data: Data, basePort: Int = defaultBasePort) throws -> RankTable {
    let root: [String: Any]
    do {
      guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
        throw RankTableError("the top level must be a JSON object")
      }
      root = object
    } catch let e as RankTableError {
      throw e
    } catch {
      throw RankTableError("not valid JSON: \(jsonErrorLocation(error, in: data))")
    }
    let status = try string(root, "status", at: "")
    guard status == "completed" else { throw RankTableError("status: expected \"completed\", got \"\(status)\"") }
    var devices: [Device]
    var schema: Schema
    if root["server_list"] != nil {
      schema = .serverList
      devices = try parseServerList(root, basePort: basePort)
    } else if root["group_list"] != nil {
      var ranked = false
      devices = try parseGroupList(root, basePort: basePort, ranked: &ranked)
      schema = ranked ? .groupListRanked : .groupList
    } else {
      throw RankTableError("missing field: group_list (seed schema) or server_list (HCCL 1.0 schema)")
    }
    guard !devices.isEmpty else { throw RankTableError("the table lists no devices") }
    devices.sort { $0.rank < $1.rank }
    var perServerDevice = [String: Int]()
    for d in devices {
      let dev = "\(d.serverID)/\(d.deviceID)"
      if let other = perServerDevice[dev] {
        throw RankTableError("ranks \(other) and \(d.rank) both use device_id \(d.deviceID) on server \(d.serverID)")
      }
      perServerDevice[dev] = d.rank
    }
    try checkDistinctEndpoints(devices)
    return RankTable(schema: schema, devices: devices, basePort: basePort)
  }

  private static func checkDistinctEndpoints(_ devices: [Device]) throws {
    var endpoints = [String: Int]()
    for d in devices {
      let key = "\(d.address):\(d.port)"
      if let other = endpoints[key] {
        throw RankTableError("ranks \(other) and \(d.rank) both use address:port \(key) (set distinct device_ip or device_port)")
      }
      endpoints[key] = d.rank
    }
  }

  // MARK: Placement on this host

  /// The table as this host runs it: a device whose device_ip is local (any 127.x, or an address of
  /// an interface) keeps it; every other device is simulated on its server's address — the
  /// server_id when it is an IPv4 address, else `serverAddresses[server_id]` (`--server-address`) —
  /// with port basePort + rank. `interfaces` comes from getifaddrs: nothing is dialled or probed.
  public func placed(interfaces: Set<String>, serverAddresses: [String: String] = [:]) throws -> RankTable {
    var out: [Device] = []
    for var d in devices {
      // A device_ip that is this host's, or its server's own address (a table of hosts, such as
      // the one launch --ranks-per-node writes), is where the device really runs, on every host alike.
      if LocalAddress.isLocal(d.deviceIP, interfaces: interfaces) || Self.serverAddress(d.serverID, given: serverAddresses) == d.deviceIP {
        out.append(d)
        continue
      }
      guard let server = Self.serverAddress(d.serverID, given: serverAddresses) else {
        throw RankTableError("\(d.path).device_ip: \"\(d.deviceIP)\" (rank \(d.rank)) is not on this host, so the device is simulated "
                             + "on its server's address, but \(Self.serverPath(of: d)).server_id \"\(d.serverID)\" is not a usable IPv4 address: "
                             + "pass --server-address \(d.serverID)=ADDRESS (e.g. 127.0.0.1)")
      }
      d.address = server
      d.port = basePort + d.rank
      guard (1...65535).contains(d.port) else { throw RankTableError("\(d.path): simulated port \(d.port) is outside 1...65535") }
      d.simulated = true
      out.append(d)
    }
    do {
      try Self.checkDistinctEndpoints(out)
    } catch let e as RankTableError {
      throw RankTableError("after simulating devices on their servers' addresses: \(e.message)")
    }
    return RankTable(schema: schema, devices: out, basePort: basePort)
  }

  /// The address of a server: given (--server-address), else its server_id if that is a usable IPv4 address.
  static func serverAddress(_ id: String, given: [String: String]) -> String? {
    if let a = given[id] { return a }
    return isIPv4(id) && unusableAddress(id) == nil ? id : nil
  }

  /// "group_list[0].instance_list[3]" for "group_list[0].instance_list[3].devices[0]".
  static func serverPath(of d: Device) -> String {
    guard let dot = d.path.range(of: ".", options: .backwards) else { return d.path }
    return String(d.path[..<dot.lowerBound])
  }

  /// One line per simulated device of `server` (or of all servers): what runs where instead.
  public func simulationNotes(server: String? = nil) -> [String] {
    devices.filter { $0.simulated && (server == nil || $0.serverID == server) }.map {
      "device_ip \($0.deviceIP) is not on this host: rank \($0.rank) simulated on \($0.address):\($0.port)"
    }
  }

  /// The server of `id` as the table's devices give it (nil if no device is on it).
  public func address(ofServer id: String) -> String? {
    devices(onServer: id).first(where: \.simulated)?.address ?? Self.serverAddress(id, given: [:])
  }

  /// Parses `--server-address` values: "NAME=ADDRESS", or a bare "ADDRESS" for `defaultServer`.
  public static func parseServerAddresses(_ values: [String], defaultServer: String?, table: RankTable) throws -> [String: String] {
    var out: [String: String] = [:]
    for v in values {
      let name: String, address: String
      if let eq = v.firstIndex(of: "=") {
        name = String(v[..<eq]); address = String(v[v.index(after: eq)...])
      } else if let only = defaultServer ?? (table.serverIDs.count == 1 ? table.serverIDs[0] : nil) {
        name = only; address = v
      } else {
        throw RankTableError("--server-address \(v): the table has \(table.serverIDs.count) servers: write SERVER_ID=ADDRESS (or pass --server-id)")
      }
      guard table.serverIDs.contains(name) else {
        throw RankTableError("--server-address \(v): \(name) is not a server_id of the table (servers: \(table.serverIDs.joined(separator: ", ")))")
      }
      if let problem = unusableAddress(address) { throw RankTableError("--server-address \(v): \"\(address)\" \(problem)") }
      out[name] = address
    }
    return out
  }

  /// The contract form of server addresses (MNV2_SERVER_ADDRESSES): "name=address,…".
  public static func encodeServerAddresses(_ m: [String: String]) -> String {
    m.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
  }

  public static func decodeServerAddresses(_ s: String) throws -> [String: String] {
    var out: [String: String] = [:]
    for item in s.split(separator: ",") where !item.isEmpty {
      guard let eq = item.lastIndex(of: "="), isIPv4(String(item[item.index(after: eq)...])) else {
        throw RankTableError("MNV2_SERVER_ADDRESSES=\(s): expected name=IPv4,…")
      }
      out[String(item[..<eq])] = String(item[item.index(after: eq)...])
    }
    return out
  }

  // MARK: Schemas

  /// {"group_count","group_list":[{"group_name","device_count","instance_count",
  ///   "instance_list":[{"devices":[{"device_id","device_ip"}],"pod_name","server_id"}]}],"status"}
  /// or the HCCL variant: the group counts "device_num" and "server_num", and each instance (one
  /// device) carries its "rank_id" (a device may carry its own "rank_id" too). Ranks are the
  /// rank_ids when given (all or none), else the order of appearance.
  private static func parseGroupList(_ root: [String: Any], basePort: Int, ranked: inout Bool) throws -> [Device] {
    let groups = try array(root, "group_list", at: "")
    let groupCount = try number(root, "group_count", at: "")
    guard groupCount == groups.count else {
      throw RankTableError("group_count: says \(groupCount) but group_list has \(groups.count) groups")
    }
    guard groups.count == 1 else {
      throw RankTableError("group_list: exactly one group (the world group) is supported, found \(groups.count)")
    }
    let g = groups[0], gp = "group_list[0]"
    _ = try string(g, "group_name", at: gp)
    let instances = try array(g, "instance_list", at: gp)
    let instanceCount = try number(g, "instance_count", at: gp)
    guard instanceCount == instances.count else {
      throw RankTableError("\(gp).instance_count: says \(instanceCount) but instance_list has \(instances.count) instances")
    }
    // First pass: every device with its explicit rank_id, if any.
    var listed: [(dev: [String: Any], path: String, server: String, pod: String?, rank: Int?, rankPath: String)] = []
    for (i, inst) in instances.enumerated() {
      let ip = "\(gp).instance_list[\(i)]"
      let server = try string(inst, "server_id", at: ip)
      let pod = inst["pod_name"] as? String
      let devs = try array(inst, "devices", at: ip)
      let instanceRank = inst["rank_id"] != nil ? try number(inst, "rank_id", at: ip) : nil
      if instanceRank != nil && devs.count != 1 {
        throw RankTableError("\(ip).rank_id: an instance with \(devs.count) devices cannot have one rank_id; give each device its rank_id")
      }
      for (j, dev) in devs.enumerated() {
        let dp = "\(ip).devices[\(j)]"
        let own = dev["rank_id"] != nil ? try number(dev, "rank_id", at: dp) : nil
        listed.append((dev, dp, server, pod, own ?? instanceRank, own != nil ? "\(dp).rank_id" : "\(ip).rank_id"))
      }
    }
    ranked = listed.contains { $0.rank != nil }
    if ranked, let missing = listed.first(where: { $0.rank == nil }) {
      throw RankTableError("\(missing.path): no rank_id, but other devices of the table have one (give all or none)")
    }
    var devices: [Device] = []
    var rankOwner = [Int: String]()
    for (k, item) in listed.enumerated() {
      let rank = item.rank ?? k
      if let other = rankOwner[rank] { throw RankTableError("\(item.rankPath): rank \(rank) is also given by \(other)") }
      rankOwner[rank] = item.rankPath
      devices.append(try device(item.dev, at: item.path, rank: rank, server: item.server, pod: item.pod, basePort: basePort))
    }
    for r in 0..<devices.count where rankOwner[r] == nil {
      throw RankTableError("rank_id: ranks must be 0..<\(devices.count), rank \(r) is missing")
    }
    // The seed says device_count, the HCCL variant device_num (and server_num): whichever is given must agree.
    var counted = false
    for key in ["device_count", "device_num"] where g[key] != nil {
      counted = true
      let n = try number(g, key, at: gp)
      guard n == devices.count else {
        throw RankTableError("\(gp).\(key): says \(n) but the instances list \(devices.count) devices")
      }
    }
    if !counted { throw RankTableError("\(gp).device_count: missing field (or device_num)") }
    if g["server_num"] != nil {
      let n = try number(g, "server_num", at: gp)
      let servers = Set(listed.map(\.server)).count
      guard n == servers else { throw RankTableError("\(gp).server_num: says \(n) but the instances name \(servers) server_ids") }
    }
    return devices
  }

  /// {"version":"1.0","server_count","server_list":[{"server_id","device":[{"device_id","device_ip","rank_id"}]}],"status"}
  private static func parseServerList(_ root: [String: Any], basePort: Int) throws -> [Device] {
    let servers = try array(root, "server_list", at: "")
    let serverCount = try number(root, "server_count", at: "")
    guard serverCount == servers.count else {
      throw RankTableError("server_count: says \(serverCount) but server_list has \(servers.count) servers")
    }
    var devices: [Device] = []
    var rankOwner = [Int: String]()
    for (i, server) in servers.enumerated() {
      let sp = "server_list[\(i)]"
      let id = try string(server, "server_id", at: sp)
      for (j, dev) in try array(server, "device", at: sp).enumerated() {
        let dp = "\(sp).device[\(j)]"
        let rank = try number(dev, "rank_id", at: dp)
        if let other = rankOwner[rank] { throw RankTableError("\(dp).rank_id: rank \(rank) is also given by \(other)") }
        rankOwner[rank] = dp
        devices.append(try device(dev, at: dp, rank: rank, server: id, pod: nil, basePort: basePort))
      }
    }
    for r in 0..<devices.count where rankOwner[r] == nil {
      throw RankTableError("rank_id: ranks must be 0..<\(devices.count), rank \(r) is missing")
    }
    return devices
  }

  private static func device(_ dev: [String: Any], at path: String, rank: Int, server: String, pod: String?,
                             basePort: Int) throws -> Device {
    let id = try number(dev, "device_id", at: path)
    let ip = try string(dev, "device_ip", at: path)
    guard isIPv4(ip) else { throw RankTableError("\(path).device_ip: \"\(ip)\" is not an IPv4 address") }
    if let problem = unusableAddress(ip) { throw RankTableError("\(path).device_ip: \"\(ip)\" \(problem)") }
    var port = basePort + rank
    if dev["device_port"] != nil { port = try number(dev, "device_port", at: path) }
    guard (1...65535).contains(port) else { throw RankTableError("\(path): port \(port) is outside 1...65535") }
    return Device(rank: rank, deviceID: id, address: ip, port: port, deviceIP: ip, serverID: server, podName: pod, path: path)
  }

  // MARK: Field access with paths in errors

  private static func field(_ o: [String: Any], _ key: String, at path: String) throws -> Any {
    guard let v = o[key] else { throw RankTableError("\(path.isEmpty ? "" : path + ".")\(key): missing field") }
    return v
  }

  private static func string(_ o: [String: Any], _ key: String, at path: String) throws -> String {
    let v = try field(o, key, at: path)
    if let s = v as? String { return s }
    throw RankTableError("\(path.isEmpty ? "" : path + ".")\(key): expected a string, got \(v)")
  }

  /// A non-negative integer given as a string ("8"), as both schemas do; JSON numbers are accepted too.
  private static func number(_ o: [String: Any], _ key: String, at path: String) throws -> Int {
    let v = try field(o, key, at: path)
    let name = "\(path.isEmpty ? "" : path + ".")\(key)"
    if let s = v as? String {
      guard let n = Int(s), n >= 0 else { throw RankTableError("\(name): \"\(s)\" is not a non-negative integer") }
      return n
    }
    if let n = v as? Int, n >= 0, !(v is Bool) { return n }
    throw RankTableError("\(name): expected a number in a string, got \(v)")
  }

  private static func array(_ o: [String: Any], _ key: String, at path: String) throws -> [[String: Any]] {
    let v = try field(o, key, at: path)
    guard let a = v as? [[String: Any]] else {
      throw RankTableError("\(path.isEmpty ? "" : path + ".")\(key): expected a list of objects")
    }
    return a
  }

  // MARK: Writing (launch --local-ranks, tests)

  /// A table in the seed's schema: `servers[i]` = (server id, device addresses, ports or nil).
  public static func seedSchemaJSON(servers: [(id: String, addresses: [String], ports: [Int]?)], podName: String) -> String {
    var instances: [String] = []
    var deviceCount = 0
    for server in servers {
      for (i, address) in server.addresses.enumerated() {
        let port = server.ports.map { ", \"device_port\": \"\($0[i])\"" } ?? ""
        instances.append("""
                {"devices": [{"device_id": "\(i)", "device_ip": "\(address)"\(port)}], \
        "pod_name": "\(podName)", "server_id": "\(server.id)"}
        """)
        deviceCount += 1
      }
    }
    return """
    {
      "group_count": "1",
      "group_list": [{
        "group_name": "hccl_world_group",
        "device_count": "\(deviceCount)",
        "instance_count": "\(deviceCount)",
        "instance_list": [
    \(instances.joined(separator: ",\n"))
        ]
      }],
      "status": "completed"
    }

    """
  }
}

func isIPv4(_ s: String) -> Bool {
  var addr = in_addr()
  return inet_pton(AF_INET, s, &addr) == 1
}

/// Why an IPv4 literal cannot be a device's own address, or nil: a rank binds exactly its address.
func unusableAddress(_ ip: String) -> String? {
  var addr = in_addr()
  guard inet_pton(AF_INET, ip, &addr) == 1 else { return "is not an IPv4 address" }
  let first = UInt32(bigEndian: addr.s_addr) >> 24
  if first == 0 { return "is the wildcard (this-network) address: give the device's own address (e.g. 127.0.0.1 on one host)" }
  if first >= 224 && first < 240 { return "is a multicast address: give the device's own address" }
  if first >= 240 { return "is a reserved or broadcast address: give the device's own address" }
  return nil
}

/// "line 3, column 14: …" for a JSONSerialization error (Foundation names a byte offset,
/// "around character N", or the end of the data); falls back to its description.
func jsonErrorLocation(_ error: Error, in data: Data) -> String {
  let debug = ((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String) ?? "\(error)"
  var offset: Int?
  if let r = debug.range(of: "around character ") {
    offset = Int(debug[r.upperBound...].prefix { $0.isNumber })
  } else if debug.lowercased().contains("end of file") {
    offset = data.count
  }
  guard let at = offset, at <= data.count else { return debug }
  let bytes = [UInt8](data)
  var line = 1, lineStart = 0
  for i in 0..<at where bytes[i] == 0x0A { line += 1; lineStart = i + 1 }
  let column = at - lineStart + 1
  let reason = debug.replacingOccurrences(of: #" around character \d+\.?"#, with: "", options: .regularExpression)
    .trimmingCharacters(in: CharacterSet(charactersIn: ". "))
  let lineEnd = bytes[lineStart...].firstIndex(of: 0x0A) ?? bytes.count
  let text = String(decoding: bytes[lineStart..<lineEnd], as: UTF8.self).trimmingCharacters(in: .whitespaces)
  let excerpt = text.count > 60 ? String(text.prefix(60)) + "…" : text
  return "line \(line), column \(column): \(reason.lowercased())" + (excerpt.isEmpty ? "" : " (in «\(excerpt)»)")
}
