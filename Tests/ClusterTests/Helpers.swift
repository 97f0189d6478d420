import Cluster
import Collective
import Foundation
import XCTest

/// The directory holding the built `launch` and `worker` (the test bundle's products directory).
func productsDirectory(file: StaticString = #filePath, line: UInt = #line) throws -> URL {
  let candidates = [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
                    Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent()]
    + Bundle.allBundles.map { $0.bundleURL.deletingLastPathComponent() }
  for dir in candidates where FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent("launch").path)
    && FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent("worker").path) {
    return dir
  }
  XCTFail("launch/worker not found next to the tests (build with --build-tests): looked in \(candidates.map(\.path))",
          file: file, line: line)
  throw CocoaError(.fileNoSuchFile)
}

/// Polls `condition` every 20 ms until it holds or `timeout` seconds have passed; its last value.
func waitFor(_ timeout: Double, _ condition: () -> Bool) -> Bool {
  let deadline = Date(timeIntervalSinceNow: timeout)
  while Date() < deadline { if condition() { return true }; usleep(20_000) }
  return condition()
}

/// The repository root (for the shipped rank tables).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

struct RunResult {
  var status: Int32
  var output: String
  var seconds: Double
}

/// A started process whose output is collected.
final class Child: @unchecked Sendable {
  let process = Process()
  private let pipe = Pipe()
  private let lock = NSLock()
  private var data = Data()
  private let start = Date()

  init(_ executable: URL, _ arguments: [String], environment: [String: String] = [:]) throws {
    process.executableURL = executable
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    for k in ContractKey.allCases { env[k.rawValue] = nil }  // never leak a surrounding job's contract
    env.merge(environment) { $1 }
    process.environment = env
    process.standardOutput = pipe
    process.standardError = pipe
    pipe.fileHandleForReading.readabilityHandler = { [weak self] h in
      let d = h.availableData
      guard let self else { return }
      self.lock.lock(); self.data.append(d); self.lock.unlock()
    }
    try process.run()
  }

  var output: String { lock.lock(); defer { lock.unlock() }; return String(decoding: data, as: UTF8.self) }

  /// Waits up to `timeout` seconds; kills the process on timeout (and fails the test).
  func wait(timeout: Double, file: StaticString = #filePath, line: UInt = #line) -> RunResult {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while process.isRunning && Date() < deadline { usleep(20_000) }
    if process.isRunning {
      XCTFail("process did not finish within \(timeout) s: \(process.arguments ?? [])", file: file, line: line)
      kill(process.processIdentifier, SIGKILL)
      process.waitUntilExit()
    }
    process.waitUntilExit()
    usleep(50_000)
    pipe.fileHandleForReading.readabilityHandler = nil
    let rest = pipe.fileHandleForReading.readDataToEndOfFile()
    lock.lock(); data.append(rest); lock.unlock()
    return RunResult(status: process.terminationStatus, output: output, seconds: Date().timeIntervalSince(start))
  }
}

func runProcess(_ executable: URL, _ arguments: [String], environment: [String: String] = [:], timeout: Double = 60,
         file: StaticString = #filePath, line: UInt = #line) throws -> RunResult {
  try Child(executable, arguments, environment: environment).wait(timeout: timeout, file: file, line: line)
}

/// A fresh temporary directory for one test.
func temporaryDirectory(_ name: String) throws -> URL {
  let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("mnv2-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
  try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  return dir
}

/// Writes a seed-schema table for `servers` (id, device addresses) on free ports; returns its path.
func writeTable(_ dir: URL, servers: [(String, [String])], file: StaticString = #filePath, line: UInt = #line) throws -> String {
  let hosts = Array(Set(servers.flatMap(\.1)))
  let total = servers.reduce(0) { $0 + $1.1.count }
  let base = try XCTUnwrap(LoopbackPorts.findFree(count: total, hosts: hosts), "no free ports", file: file, line: line)
  var next = base
  let json = RankTable.seedSchemaJSON(servers: servers.map { id, addresses in
    defer { next += addresses.count }
    return (id, addresses, Array(next..<(next + addresses.count)))
  }, podName: "test")
  let path = dir.appendingPathComponent("table.json").path
  try json.write(toFile: path, atomically: true, encoding: .utf8)
  return path
}

/// Writes a fresh 0600 secret file.
func writeSecret(_ dir: URL) throws -> String {
  let path = dir.appendingPathComponent("job.secret").path
  try JobSecret.generate().write(file: path)
  return path
}

/// Worker pids found in logs or output ("worker pid N ...").
func workerPIDs(in text: String) -> [Int32] {
  text.split(separator: "\n").compactMap { line -> Int32? in
    guard let r = line.range(of: "worker pid ") else { return nil }
    return Int32(line[r.upperBound...].prefix { $0.isNumber })
  }
}

func allLogs(_ dir: URL) -> String {
  var text = ""
  for case let p as String in FileManager.default.enumerator(atPath: dir.path)! where p.hasSuffix(".log") {
    text += (try? String(contentsOfFile: dir.appendingPathComponent(p).path, encoding: .utf8)) ?? ""
  }
  return text
}

/// Asserts that none of `pids` is still alive.
func assertNoneAlive(_ pids: [Int32], file: StaticString = #filePath, line: UInt = #line) {
  XCTAssertFalse(pids.isEmpty, "no worker pids found", file: file, line: line)
  for pid in pids {
    let alive = kill(pid, 0) == 0
    XCTAssertFalse(alive, "worker \(pid) is still running", file: file, line: line)
    if alive { kill(pid, SIGKILL) }
  }
}
