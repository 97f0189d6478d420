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
}
