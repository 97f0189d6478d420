// The seed's own rank table (Tests/ClusterTests/Fixtures/seed-8p.json: server_id 127.0.0.1, device
// addresses that are an Ascend server's NPUs, not this host's), so every device is simulated on
// 127.0.0.1. Every test that reads it runs, whole, inside a private network namespace
// (`unshare --net`, only `lo` up: the test binary re-executes itself there for that one test), so
// even a bug could not send a packet off the machine. The training test also reads the workers'
// sockets (/proc/<pid>/net/tcp, udp) while the job runs and fails on any non-loopback address.

import Cluster
import Foundation
import XCTest

/// The fixture (never shipped in rank_table/).
let seedTablePath = repositoryRoot.appendingPathComponent("Tests/ClusterTests/Fixtures/seed-8p.json").path

/// `argv` run inside a fresh network namespace with only the loopback interface up. Fails the
/// test (and throws) when the namespace cannot be made: no silent skip.
func inPrivateNetwork(_ executable: URL, _ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> Child {
  let unshare = URL(fileURLWithPath: "/usr/bin/unshare")
  guard FileManager.default.isExecutableFile(atPath: unshare.path) else {
    XCTFail("/usr/bin/unshare is missing (util-linux): tests of the seed rank table must run in a private network namespace",
            file: file, line: line)
    throw CocoaError(.fileNoSuchFile)
  }
  let probe = try runProcess(unshare, ["--net", "--", "/bin/sh", "-c", "PATH=$PATH:/usr/sbin:/sbin; ip link set lo up"], timeout: 20)
  guard probe.status == 0 else {
    XCTFail("cannot create a private network namespace (unshare --net; needs root and `ip`): \(probe.output)", file: file, line: line)
    throw CocoaError(.featureUnsupported)
  }
  return try Child(unshare, ["--net", "--", "/bin/sh", "-c", #"PATH=$PATH:/usr/sbin:/sbin; ip link set lo up && exec "$0" "$@""#, executable.path] + arguments)
}

/// Set (to the outer test's network namespace) in a test process re-executed inside a private one.
let privateNetworkMarker = "MNV2_TEST_PRIVATE_NETWORK"

/// Every test that reads the seed fixture starts with `guard try runsInPrivateNetwork(#function)
/// else { return }`. Outside a private namespace this re-executes this test binary for that one test
/// under `unshare --net` (only `lo` up), asserts that it passed, and returns false. Inside it checks
/// that `lo` is the only interface and returns true: the body runs there.
func runsInPrivateNetwork(_ test: String, file: StaticString = #filePath, line: UInt = #line) throws -> Bool {
  if ProcessInfo.processInfo.environment[privateNetworkMarker] != nil {
    let dev = try String(contentsOfFile: "/proc/net/dev", encoding: .utf8)
    let interfaces = dev.split(separator: "\n").dropFirst(2).compactMap { $0.split(separator: ":").first?.trimmingCharacters(in: .whitespaces) }
    guard interfaces == ["lo"] else {
      XCTFail("expected a private network namespace with only lo, found \(interfaces)", file: file, line: line)
      throw CocoaError(.featureUnsupported)
    }
    return true
  }
  let ours = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")) ?? "?"
  let binary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
  let name = "ClusterTests.SeedTableTests/" + test.replacingOccurrences(of: "()", with: "")
  let child = try inPrivateNetwork(URL(fileURLWithPath: "/usr/bin/env"), ["\(privateNetworkMarker)=\(ours)", binary, name],
                                   file: file, line: line)
  let r = child.wait(timeout: 900)
  XCTAssertEqual(r.status, 0, "\(name) inside the private network namespace:\n\(r.output)", file: file, line: line)
  XCTAssertTrue(r.output.contains("Executed 1 test, with 0 failures"), "\(name) did not run inside the namespace:\n\(r.output)",
                file: file, line: line)
  return false
}

/// One socket of /proc/<pid>/net/{tcp,udp}: IPv4 address:port, the address as a dotted quad.
struct SocketEntry: Hashable { var local: String; var remote: String; var proto: String }

/// Parses /proc/net/tcp-style text ("sl local_address rem_address st …", addresses as
/// little-endian hex "0100007F:7530").
func socketEntries(_ text: String, proto: String) -> [SocketEntry] {
  func quad(_ field: Substring) -> String {
    let parts = field.split(separator: ":").map(String.init)
    guard parts.count == 2, let v = UInt32(parts[0], radix: 16), let port = UInt16(parts[1], radix: 16) else { return "?" + field }
    return [0, 8, 16, 24].map { String((v >> UInt32($0)) & 0xff) }.joined(separator: ".") + ":\(port)"
  }
  return text.split(separator: "\n").dropFirst().compactMap { line in
    let f = line.split(separator: " ", omittingEmptySubsequences: true)
    guard f.count > 3 else { return nil }
    return SocketEntry(local: quad(f[1]), remote: quad(f[2]), proto: proto)
  }
}

final class SeedTableTests: XCTestCase {
  func testSeedTableParsesAndEveryDeviceIsSimulated() throws {
    guard try runsInPrivateNetwork(#function) else { return }
    let t = try RankTable.load(path: seedTablePath)
    XCTAssertEqual(t.worldSize, 8)
    XCTAssertEqual(t.serverIDs, ["127.0.0.1"])
    XCTAssertTrue(t.devices.allSatisfy { !LocalAddress.isLoopback($0.deviceIP) }, "the fixture's device_ips are the NPUs', not loopback")
    // Placement reads the interface list only: with just loopback, every device is simulated on its server.
    let placed = try t.placed(interfaces: ["127.0.0.1"])
    XCTAssertEqual(placed.devices.map(\.address), Array(repeating: "127.0.0.1", count: 8))
    XCTAssertEqual(placed.devices.map(\.port), (0..<8).map { RankTable.defaultBasePort + $0 })
    XCTAssertTrue(placed.devices.allSatisfy(\.simulated))
    XCTAssertEqual(placed.simulationNotes().first, "device_ip \(t.devices[0].deviceIP) is not on this host: rank 0 simulated on 127.0.0.1:29500")
    XCTAssertEqual(try Launcher.selectServer(table: placed, requested: nil, interfaces: ["127.0.0.1"]), "127.0.0.1")
  }

  /// The done-when of issue 11: the seed's 8p.json trains through launch with 8 simulated devices
  /// on 127.0.0.1, inside a private network namespace, and no socket of the job leaves loopback.
  func testSeedTableTrainsInAPrivateNetworkNamespaceOnLoopbackOnly() throws {
    guard try runsInPrivateNetwork(#function) else { return }
    let outer = ProcessInfo.processInfo.environment[privateNetworkMarker] ?? "?"
    let table = try RankTable.load(path: seedTablePath)
    let bin = try productsDirectory()
    let dir = try temporaryDirectory("seed8p")
    defer { try? FileManager.default.removeItem(at: dir) }
    let data = dir.appendingPathComponent("data").path, logs = dir.appendingPathComponent("logs").path
    let synth = try runProcess(bin.appendingPathComponent("dataset"),
                               ["synth", "--output", data, "--classes", "3", "--train-examples", "64", "--validation-examples", "0",
                                "--image-size", "32", "--shards", "2"], timeout: 60)
    XCTAssertEqual(synth.status, 0, synth.output)
    // The fixture's ports are 29500 + rank; the namespace is private, so they are free whatever runs outside.
    // TCP between the ranks (MNV2_LOCAL_SOCKETS=0; by default loopback neighbours use Unix-domain
    // sockets), so that the check below sees the ring's own connections and their addresses.
    let job = try Child(URL(fileURLWithPath: "/usr/bin/env"), [
      "MNV2_LOCAL_SOCKETS=0", bin.appendingPathComponent("launch").path, "--rank-table", seedTablePath, "--log-dir", logs, "--connect-timeout", "120", "--running-timeout", "60", "--grace-period", "2", "--",
      "--dataset-dir", data, "--model-name", "mobilenet_v2_035", "--num-classes", "3", "--image-size", "32", "--batch-size", "4", "--learning-rate", "0.01", "--batch-norm-decay", "0.9",
      "--max-train-steps", "4", "--learning-rate-decay-type", "fixed", "--train-dir", dir.appendingPathComponent("train").path,
      "--log-every-n-steps", "1", "--decode-threads", "1"])
    var sockets = Set<SocketEntry>(), namespaces = Set<String>()
    let ours = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")) ?? "?"
    while job.process.isRunning {
      for pid in Set(workerPIDs(in: allLogs(dir))) {
        if let ns = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/net") { namespaces.insert(ns) }
        for proto in ["tcp", "udp", "tcp6", "udp6"] {
          guard let text = try? String(contentsOfFile: "/proc/\(pid)/net/\(proto)", encoding: .utf8) else { continue }
          if proto.hasSuffix("6") {
            XCTAssertEqual(text.split(separator: "\n").count, 1, "an IPv6 socket in the job: \(text)")
          } else {
            sockets.formUnion(socketEntries(text, proto: proto))
          }
        }
      }
      usleep(100_000)
    }
    let r = job.wait(timeout: 600)
    XCTAssertEqual(r.status, 0, r.output)
    for rank in 0..<8 {
      XCTAssertTrue(r.output.contains("launch: device_ip \(table.devices[rank].deviceIP) is not on this host: rank \(rank) simulated on 127.0.0.1:\(29500 + rank)"),
                    r.output)
    }
    XCTAssertTrue(r.output.contains("weights identical on all 8 ranks"), r.output)
    XCTAssertFalse(namespaces.isEmpty, "no worker was seen running")
    XCTAssertEqual(namespaces, [ours], "the workers ran outside this test's private network namespace")
    XCTAssertNotEqual(ours, outer, "the test ran in the namespace it was started from")
    XCTAssertGreaterThan(sockets.filter { $0.proto == "tcp" }.count, 8, "the ring's connections were never seen: \(sockets)")
    for s in sockets {
      XCTAssertTrue(s.local.hasPrefix("127."), "a socket bound off loopback: \(s)")
      XCTAssertTrue(s.remote.hasPrefix("127.") || s.remote == "0.0.0.0:0", "a socket talking off loopback: \(s)")
    }
  }
}
