import Cluster
import Foundation
import XCTest

final class RankTableTests: XCTestCase {
  func testShippedTablesParseWithLoopbackAddressesOnly() throws {
    for (name, ranks, servers) in [("1p", 1, 1), ("2p", 2, 1), ("8p", 8, 1), ("2x2p", 4, 2)] {
      let t = try RankTable.load(path: repositoryRoot.appendingPathComponent("rank_table/\(name).json").path)
      XCTAssertEqual(t.worldSize, ranks, name)
      XCTAssertEqual(t.serverIDs.count, servers, name)
      XCTAssertEqual(t.schema, .groupList)
      XCTAssertEqual(t.devices.map(\.rank), Array(0..<ranks))
      for d in t.devices { XCTAssertTrue(LocalAddress.isLoopback(d.address), "\(name): \(d.address)") }
      XCTAssertEqual(t.devices.map(\.port), (0..<ranks).map { RankTable.defaultBasePort + $0 })
    }
    let t8 = try RankTable.load(path: repositoryRoot.appendingPathComponent("rank_table/8p.json").path)
    XCTAssertEqual(t8.devices[0].podName, "ascend8p")
  }

  func testHCCLSchemaRanksByRankID() throws {
    let json = """
    {"version": "1.0", "server_count": "2", "status": "completed", "server_list": [
      {"server_id": "127.0.1.1", "device": [
        {"device_id": "0", "device_ip": "127.0.1.11", "rank_id": "2"},
        {"device_id": "1", "device_ip": "127.0.1.12", "rank_id": "3", "device_port": "31000"}]},
      {"server_id": "127.0.2.1", "device": [
        {"device_id": "0", "device_ip": "127.0.2.11", "rank_id": "0"},
        {"device_id": "1", "device_ip": "127.0.2.12", "rank_id": "1"}]}]}
    """
    let t = try RankTable.parse(Data(json.utf8), basePort: 40000)
    XCTAssertEqual(t.schema, .serverList)
    XCTAssertEqual(t.devices.map(\.address), ["127.0.2.11", "127.0.2.12", "127.0.1.11", "127.0.1.12"])
    XCTAssertEqual(t.devices.map(\.port), [40000, 40001, 40002, 31000])
    XCTAssertEqual(t.serverIDs, ["127.0.2.1", "127.0.1.1"])
    XCTAssertEqual(t.devices(onServer: "127.0.1.1").map(\.rank), [2, 3])
  }

  func testValidationErrorsNameTheField() {
    func seed(status: String = "completed", groupCount: String = "1", deviceCount: String = "2", instanceCount: String = "2",
              devices: [String] = [#"{"device_id": "0", "device_ip": "127.0.0.1"}"#, #"{"device_id": "1", "device_ip": "127.0.0.2"}"#]) -> String {
      let inst = devices.map { #"{"devices": [\#($0)], "pod_name": "p", "server_id": "s"}"# }.joined(separator: ",")
      return #"{"group_count": "\#(groupCount)", "status": "\#(status)", "group_list": [{"group_name": "g", "device_count": "\#(deviceCount)", "instance_count": "\#(instanceCount)", "instance_list": [\#(inst)]}]}"#
    }
    let cases: [(String, String)] = [
      (seed(status: "pending"), #"status: expected "completed", got "pending""#),
      (seed(groupCount: "2"), "group_count: says 2 but group_list has 1"),
      (seed(deviceCount: "3"), "group_list[0].device_count: says 3"),
      (seed(instanceCount: "x"), #"group_list[0].instance_count: "x" is not a non-negative integer"#),
      (seed(devices: [#"{"device_id": "0", "device_ip": "127.0.0.1"}"#, #"{"device_id": "one", "device_ip": "127.0.0.2"}"#]),
       #"group_list[0].instance_list[1].devices[0].device_id: "one" is not a non-negative integer"#),
      (seed(devices: [#"{"device_id": "0", "device_ip": "127.0.0.1"}"#, #"{"device_id": "1"}"#]),
       "group_list[0].instance_list[1].devices[0].device_ip: missing field"),
      (seed(devices: [#"{"device_id": "0", "device_ip": "127.0.0.1", "device_port": "5000"}"#,
                      #"{"device_id": "1", "device_ip": "127.0.0.1", "device_port": "5000"}"#]),
       "ranks 0 and 1 both use address:port 127.0.0.1:5000"),
      (seed(devices: [#"{"device_id": "0", "device_ip": "127.0.0.1"}"#, #"{"device_id": "0", "device_ip": "127.0.0.2"}"#]),
       "ranks 0 and 1 both use device_id 0 on server s"),
      (seed(devices: [#"{"device_id": "0", "device_ip": "127.0.0.1"}"#, #"{"device_id": "1", "device_ip": "localhost"}"#]),
       #"device_ip: "localhost" is not an IPv4 address"#),
      (#"{"status": "completed"}"#, "missing field: group_list (seed schema) or server_list"),
      (#"{"version": "1.0", "server_count": "1", "status": "completed", "server_list": [{"server_id": "a", "device": [{"device_id": "0", "device_ip": "127.0.0.1", "rank_id": "0"}, {"device_id": "1", "device_ip": "127.0.0.2", "rank_id": "0"}]}]}"#,
       "server_list[0].device[1].rank_id: rank 0 is also given by server_list[0].device[0]"),
      (#"{"version": "1.0", "server_count": "1", "status": "completed", "server_list": [{"server_id": "a", "device": [{"device_id": "0", "device_ip": "127.0.0.1", "rank_id": "1"}]}]}"#,
       "rank 0 is missing"),
      (#"{"version": "1.0", "server_count": "2", "status": "completed", "server_list": []}"#,
       "server_count: says 2 but server_list has 0"),
      ("{not json", "not valid JSON: line 1, column 2"),
      ("{\"status\": \"completed\",\n \"group_list\": [,]}", "not valid JSON: line 2, column 17"),
      ("{\"status\": \"completed\"", "not valid JSON: line 1, column 23"),
      (seed(devices: [#"{"device_id": "0", "device_ip": "127.0.0.1"}"#, #"{"device_id": "1", "device_ip": "0.0.0.0"}"#]),
       #"group_list[0].instance_list[1].devices[0].device_ip: "0.0.0.0" is the wildcard"#),
      (seed(devices: [#"{"device_id": "0", "device_ip": "224.0.0.1"}"#, #"{"device_id": "1", "device_ip": "127.0.0.2"}"#]),
       #"group_list[0].instance_list[0].devices[0].device_ip: "224.0.0.1" is a multicast address"#),
    ]
    for (json, expected) in cases {
      XCTAssertThrowsError(try RankTable.parse(Data(json.utf8)), expected) { e in
        XCTAssertTrue("\(e)".contains(expected), "got «\(e)», expected «\(expected)»")
        XCTAssertFalse("\(e)".contains("\n"), "one-line errors")
      }
    }
  }

  func testServerSelection() throws {
    let t = try RankTable.load(path: repositoryRoot.appendingPathComponent("rank_table/2x2p.json").path)
    XCTAssertThrowsError(try Launcher.selectServer(table: t, requested: nil)) { e in
      XCTAssertTrue("\(e)".contains("--server-id"), "\(e)")
    }
    XCTAssertEqual(try Launcher.selectServer(table: t, requested: "127.0.2.1"), "127.0.2.1")
    XCTAssertThrowsError(try Launcher.selectServer(table: t, requested: "nope"))
    let t8 = try RankTable.load(path: repositoryRoot.appendingPathComponent("rank_table/8p.json").path)
    XCTAssertEqual(try Launcher.selectServer(table: t8, requested: nil), "127.0.0.1")
    XCTAssertEqual(t8.devices[3].path, "group_list[0].instance_list[3].devices[0]")
    // 192.0.2.0/24 is TEST-NET-1 (documentation only): never a local address; nothing is dialled.
    let remote = try RankTable.parse(Data(RankTable.seedSchemaJSON(servers: [("s", ["127.0.0.1", "192.0.2.10"], nil)], podName: "p").utf8))
    for requested in [nil, "s"] {
      XCTAssertThrowsError(try Launcher.selectServer(table: remote, requested: requested)) { e in
        XCTAssertTrue("\(e)".contains(#"group_list[0].instance_list[1].devices[0].device_ip"#) && "\(e)".contains("192.0.2.10"), "\(e)")
      }
    }
  }

  /// The HCCL variant of group_list (older Ascend tools, MindSpore's hccl_tools): the group counts
  /// device_num/server_num, each instance carries its rank_id; extra top-level fields are ignored.
  func testHCCLGroupListVariantWithRankIDsAndServerNum() throws {
    func inst(_ rank: Int, _ dev: Int, _ server: String) -> String {
      #"{"devices": [{"device_id": "\#(dev)", "device_ip": "192.0.2.\#(10 + rank)", "device_port": "16666"}], "rank_id": "\#(rank)", "server_id": "\#(server)"}"#
    }
    let json = """
    {"board_id": "0x0000", "chip_info": "910", "deploy_mode": "lab", "group_count": "1",
     "group_list": [{"device_num": "4", "server_num": "2", "group_name": "", "instance_count": "4",
       "instance_list": [\(inst(1, 1, "127.0.1.1")), \(inst(0, 0, "127.0.1.1")), \(inst(3, 1, "127.0.2.1")), \(inst(2, 0, "127.0.2.1"))]}],
     "para_plane_nic_location": "device", "para_plane_nic_name": ["eth0", "eth1"], "para_plane_nic_num": "2", "status": "completed"}
    """
    let t = try RankTable.parse(Data(json.utf8), basePort: 41000)
    XCTAssertEqual(t.schema, .groupListRanked)
    XCTAssertEqual(t.devices.map(\.rank), [0, 1, 2, 3])
    XCTAssertEqual(t.devices.map(\.deviceID), [0, 1, 0, 1])
    XCTAssertEqual(t.devices.map(\.path), ["group_list[0].instance_list[1].devices[0]", "group_list[0].instance_list[0].devices[0]",
                                           "group_list[0].instance_list[3].devices[0]", "group_list[0].instance_list[2].devices[0]"])
    XCTAssertEqual(t.serverIDs, ["127.0.1.1", "127.0.2.1"])
    // TEST-NET-1 device addresses (documentation only) are never this host's: every device is
    // simulated on its server's address with port base + rank (the shared device_port would collide).
    let p = try t.placed(interfaces: ["127.0.0.1"])
    XCTAssertEqual(p.devices.map(\.address), ["127.0.1.1", "127.0.1.1", "127.0.2.1", "127.0.2.1"])
    XCTAssertEqual(p.devices.map(\.port), [41000, 41001, 41002, 41003])
    XCTAssertEqual(p.simulationNotes(server: "127.0.2.1"), ["device_ip 192.0.2.12 is not on this host: rank 2 simulated on 127.0.2.1:41002",
                                                           "device_ip 192.0.2.13 is not on this host: rank 3 simulated on 127.0.2.1:41003"])
    XCTAssertEqual(try Launcher.selectServer(table: p, requested: "127.0.2.1", interfaces: ["127.0.0.1"]), "127.0.2.1")
  }

  /// Several devices per instance (one instance per server, as 8-device servers are written), and
  /// the seed schema's servers named by names: simulated on --server-address.
  func testSeveralDevicesPerInstanceAndNamedServers() throws {
    let json = """
    {"group_count": "1", "status": "completed", "group_list": [{"group_name": "hccl_world_group", "device_count": "4", "instance_count": "2",
      "instance_list": [
        {"devices": [{"device_id": "0", "device_ip": "192.0.2.1"}, {"device_id": "1", "device_ip": "192.0.2.2"}], "pod_name": "a", "server_id": "node-a"},
        {"devices": [{"device_id": "0", "device_ip": "192.0.2.3"}, {"device_id": "1", "device_ip": "192.0.2.4"}], "pod_name": "b", "server_id": "node-b"}]}]}
    """
    let t = try RankTable.parse(Data(json.utf8))
    XCTAssertEqual(t.schema, .groupList)
    XCTAssertEqual(t.devices(onServer: "node-b").map(\.rank), [2, 3])
    XCTAssertThrowsError(try t.placed(interfaces: ["127.0.0.1"])) { e in
      XCTAssertEqual("\(e)", #"group_list[0].instance_list[0].devices[0].device_ip: "192.0.2.1" (rank 0) is not on this host, so the device is simulated on its server's address, but group_list[0].instance_list[0].server_id "node-a" is not a usable IPv4 address: pass --server-address node-a=ADDRESS (e.g. 127.0.0.1)"#)
    }
    let given = try RankTable.parseServerAddresses(["node-a=127.0.1.1", "node-b=127.0.2.1"], defaultServer: nil, table: t)
    let p = try t.placed(interfaces: ["127.0.0.1"], serverAddresses: given)
    XCTAssertEqual(p.devices.map(\.address), ["127.0.1.1", "127.0.1.1", "127.0.2.1", "127.0.2.1"])
    XCTAssertEqual(try RankTable.decodeServerAddresses(RankTable.encodeServerAddresses(given)), given)
    XCTAssertEqual(try RankTable.parseServerAddresses(["127.0.3.1"], defaultServer: "node-b", table: t), ["node-b": "127.0.3.1"])
    let bad: [([String], String)] = [
      (["127.0.3.1"], "--server-address 127.0.3.1: the table has 2 servers: write SERVER_ID=ADDRESS"),
      (["node-c=127.0.3.1"], "--server-address node-c=127.0.3.1: node-c is not a server_id of the table"),
      (["node-a=0.0.0.0"], #"--server-address node-a=0.0.0.0: "0.0.0.0" is the wildcard"#),
      (["node-a=somewhere"], #"--server-address node-a=somewhere: "somewhere" is not an IPv4 address"#),
    ]
    for (values, expected) in bad {
      XCTAssertThrowsError(try RankTable.parseServerAddresses(values, defaultServer: nil, table: t)) { e in
        XCTAssertTrue("\(e)".contains(expected), "got «\(e)», expected «\(expected)»")
      }
    }
    // A simulated device's server address must be this host's to run it; nothing else is checked.
    XCTAssertEqual(try Launcher.selectServer(table: p, requested: "node-a", interfaces: []), "node-a")  // 127.x is always local
    let elsewhere = try t.placed(interfaces: [], serverAddresses: ["node-a": "192.0.2.100", "node-b": "127.0.2.1"])
    XCTAssertThrowsError(try Launcher.selectServer(table: elsewhere, requested: "node-a", interfaces: [])) { e in
      XCTAssertTrue("\(e)".contains(#"group_list[0].instance_list[0].server_id: "192.0.2.100" (where rank 0, device_ip 192.0.2.1, is simulated) is not an address of this host"#), "\(e)")
    }
    XCTAssertEqual(try Launcher.selectServer(table: elsewhere, requested: nil, interfaces: []), "node-b")
  }

  func testGroupListVariantErrorsNameTheField() {
    func table(_ instances: String, deviceNum: String = "2", serverNum: String = "1") -> String {
      #"{"group_count": "1", "status": "completed", "group_list": [{"group_name": "", "device_num": "\#(deviceNum)", "server_num": "\#(serverNum)", "instance_count": "2", "instance_list": [\#(instances)]}]}"#
    }
    func inst(_ rank: String?, _ dev: Int) -> String {
      let r = rank.map { #", "rank_id": "\#($0)""# } ?? ""
      return #"{"devices": [{"device_id": "\#(dev)", "device_ip": "127.0.0.\#(dev + 1)"}]\#(r), "server_id": "127.0.0.1"}"#
    }
    let cases: [(String, String)] = [
      (table(inst("0", 0) + "," + inst(nil, 1)), "group_list[0].instance_list[1].devices[0]: no rank_id, but other devices of the table have one"),
      (table(inst("0", 0) + "," + inst("0", 1)), "group_list[0].instance_list[1].rank_id: rank 0 is also given by group_list[0].instance_list[0].rank_id"),
      (table(inst("0", 0) + "," + inst("2", 1)), "rank_id: ranks must be 0..<2, rank 1 is missing"),
      (table(inst("0", 0) + "," + inst("x", 1)), #"group_list[0].instance_list[1].rank_id: "x" is not a non-negative integer"#),
      (table(inst("0", 0) + "," + inst("1", 1), deviceNum: "8"), "group_list[0].device_num: says 8 but the instances list 2 devices"),
      (table(inst("0", 0) + "," + inst("1", 1), serverNum: "2"), "group_list[0].server_num: says 2 but the instances name 1 server_ids"),
      (table(#"{"devices": [{"device_id": "0", "device_ip": "127.0.0.1"}, {"device_id": "1", "device_ip": "127.0.0.2"}], "rank_id": "0", "server_id": "s"}, "# + inst(nil, 3)),
       "group_list[0].instance_list[0].rank_id: an instance with 2 devices cannot have one rank_id"),
      (#"{"group_count": "1", "status": "completed", "group_list": [{"group_name": "", "instance_count": "1", "instance_list": [\#(inst(nil, 0))]}]}"#,
       "group_list[0].device_count: missing field (or device_num)"),
    ]
    for (json, expected) in cases {
      XCTAssertThrowsError(try RankTable.parse(Data(json.utf8)), expected) { e in
        XCTAssertTrue("\(e)".contains(expected), "got «\(e)», expected «\(expected)»")
        XCTAssertFalse("\(e)".contains("\n"), "one-line errors")
      }
    }
  }
}
