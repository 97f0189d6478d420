import Collective
@_exported import TestSupport
import Foundation
import XCTest

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
