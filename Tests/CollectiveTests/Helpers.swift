import Collective
import Foundation
import XCTest

/// Runs `body(rank)` on `n` threads (real threads: a blocking rank must not starve the others)
/// and returns each rank's error, if any. Fails the test if a rank does not return in `timeout`.
func runRanks(_ n: Int, timeout: Double = 60, file: StaticString = #filePath, line: UInt = #line,
              _ body: @escaping @Sendable (Int) throws -> Void) -> [Error?] {
  let results = ResultBox(n)
  let group = DispatchGroup()
  for r in 0..<n {
    group.enter()
    let t = Thread {
      do { try body(r) } catch { results.set(r, error) }
      group.leave()
    }
    t.stackSize = 1 << 22
    t.start()
  }
  if group.wait(timeout: .now() + timeout) == .timedOut {
    XCTFail("ranks did not finish within \(timeout) s (a hang)", file: file, line: line)
  }
  return results.all
}

final class ResultBox: @unchecked Sendable {
  private let lock = NSLock()
  private var errors: [Error?]
  init(_ n: Int) { errors = Array(repeating: nil, count: n) }
  func set(_ r: Int, _ e: Error) { lock.lock(); errors[r] = e; lock.unlock() }
  var all: [Error?] { lock.lock(); defer { lock.unlock() }; return errors }
}

/// In-process groups of `n` ranks; `segmentBytes` small to exercise the segment paths. Segments
/// are exactly that size (the tests choose how many) unless `maxSegmentBytes` lets them grow.
func inProcessGroups(_ n: Int, segmentBytes: Int = 4096, maxSegmentBytes: Int? = nil,
                     timeout: Double = 20) -> (InProcessFabric, GroupOptions) {
  var options = GroupOptions()
  options.segmentBytes = segmentBytes
  options.maxSegmentBytes = maxSegmentBytes ?? segmentBytes
  options.connectTimeout = timeout
  options.runningTimeout = timeout
  return (InProcessFabric(size: n), options)
}

let testSignature: ModelSignature = [("w", 10), ("b", 2)]

/// Loopback endpoints on free ports.
func loopbackEndpoints(_ n: Int, file: StaticString = #filePath, line: UInt = #line) throws -> [Endpoint] {
  let base = try XCTUnwrap(LoopbackPorts.findFree(count: n), "no free ports", file: file, line: line)
  return (0..<n).map { Endpoint(host: "127.0.0.1", port: base + $0) }
}

func zmqOptions(_ security: SecurityMode = .plain, timeout: Double = 10) -> GroupOptions {
  var o = GroupOptions()
  o.security = security
  o.connectTimeout = timeout
  o.runningTimeout = timeout
  o.segmentBytes = 64 << 10
  o.log = { _ in }
  return o
}

func message(_ e: Error?) -> String { e.map { "\($0)" } ?? "no error" }
