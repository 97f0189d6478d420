// The launches' job control in one process: each launch says when the control channel is
// complete (the coordinator once it heard every server, a member once it heard the coordinator),
// and not before: a server that has not joined can neither report nor receive the decision.
import Cluster
import Collective
import Foundation
import XCTest

final class JobControlTests: XCTestCase {
  final class Lines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func add(_ s: String) { lock.lock(); lines.append(s); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
  }

  func testEachLaunchSaysOnceWhenTheControlChannelIsComplete() throws {
    let ports = try XCTUnwrap(LoopbackPorts.findFree(count: 3, hosts: ["127.0.1.1", "127.0.2.1"]))
    let json = RankTable.seedSchemaJSON(servers: [("127.0.1.1", ["127.0.1.1"], [ports]), ("127.0.2.1", ["127.0.2.1"], [ports + 1])],
                                        podName: "test")
    let table = try RankTable.parse(Data(json.utf8))
    let secret = JobSecret.generate()
    let endpoint = Endpoint(host: "127.0.1.1", port: ports + 2)
    let said = (coordinator: Lines(), member: Lines())
    let coordinator = try JobControl(table: table, server: "127.0.1.1", endpoint: endpoint, localHost: "127.0.1.1", secret: secret,
                                     maxRestarts: 0, joinTimeout: 60, say: said.coordinator.add)
    defer { coordinator.close() }
    // Alone for a while: nothing to announce (nor a lost server: the join timeout has not passed).
    for _ in 0..<20 {
      guard case .none = coordinator.poll(attempt: 0) else { return XCTFail("the coordinator must not decide while alone") }
      usleep(50_000)
    }
    XCTAssertEqual(said.coordinator.all, [])
    let member = try JobControl(table: table, server: "127.0.2.1", endpoint: endpoint, localHost: "127.0.2.1", secret: secret,
                                maxRestarts: 0, joinTimeout: 60, say: said.member.add)
    defer { member.close() }
    XCTAssertTrue(waitFor(20) {
      _ = coordinator.poll(attempt: 0); _ = member.poll(attempt: 0)
      return !said.coordinator.all.isEmpty && !said.member.all.isEmpty
    }, "coordinator said \(said.coordinator.all), member said \(said.member.all)")
    for _ in 0..<5 { _ = coordinator.poll(attempt: 0); _ = member.poll(attempt: 0); usleep(50_000) }
    XCTAssertEqual(said.coordinator.all, ["all 2 servers joined the job's control channel"])
    XCTAssertEqual(said.member.all, ["joined the job's control channel (coordinating launch: server 127.0.1.1)"])
  }
}
