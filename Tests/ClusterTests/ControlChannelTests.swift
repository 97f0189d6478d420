// The launches' control channel: messages both ways with the job secret, heartbeats, and a
// process without the secret is never heard (CURVE, checked by the ZAP handler).
import Cluster
import Collective
import Foundation
import XCTest

final class ControlChannelTests: XCTestCase {
  func testMessagesFlowBothWaysAndStrangersAreNeverHeard() throws {
    let port = try XCTUnwrap(LoopbackPorts.findFree(count: 1, hosts: ["127.0.1.1"]))
    let secret = JobSecret.generate()
    let endpoint = Endpoint(host: "127.0.1.1", port: port)
    let coordinator = try ControlChannel(coordinatorAt: endpoint, secret: secret)
    let member = try ControlChannel(member: "127.0.2.1", from: "127.0.2.1", coordinator: endpoint, secret: secret)
    let stranger = try ControlChannel(member: "127.0.3.1", from: "127.0.3.1", coordinator: endpoint, secret: JobSecret.generate())
    defer { member.close(); stranger.close(); coordinator.close() }
    member.send("failed\t0\town\t3\twas killed by signal 9")
    stranger.send("decide\t0\trestart\tforged")
    var got: [(from: String, text: String)] = []
    XCTAssertTrue(waitFor(10) { got += coordinator.receive(); return !got.isEmpty })
    XCTAssertEqual(got.first?.from, "127.0.2.1")
    XCTAssertEqual(got.first?.text, "failed\t0\town\t3\twas killed by signal 9")
    coordinator.send("decide\t0\tgiveup\tcause")
    var back: [(from: String, text: String)] = []
    XCTAssertTrue(waitFor(10) { back += member.receive(); return !back.isEmpty })
    XCTAssertEqual(back.first?.text, "decide\t0\tgiveup\tcause")
    // Heartbeats keep both sides' silence short; the stranger was never heard, nor heard anything.
    usleep(1_500_000)
    XCTAssertLessThan(try XCTUnwrap(member.silence(of: ControlChannel.coordinatorName)), 1.5)
    XCTAssertLessThan(try XCTUnwrap(coordinator.silence(of: "127.0.2.1")), 1.5)
    XCTAssertEqual(coordinator.peers, ["127.0.2.1"])
    XCTAssertNil(stranger.silence(of: ControlChannel.coordinatorName))
    XCTAssertTrue(coordinator.receive().allSatisfy { !$0.text.contains("forged") })
  }
}
