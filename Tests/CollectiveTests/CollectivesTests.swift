// Broadcast, allgather, barrier, the gradient reducer, and failure behaviour (no hangs) over the
// in-process transport.

import Collective
import CollectiveCheck
import XCTest

final class CollectivesTests: XCTestCase {
  func testBroadcastFromEveryRoot() {
    for n in [1, 2, 3, 8] {
      let (fabric, options) = inProcessGroups(n, segmentBytes: 40)
      let bad = ResultBox(n)
      let errors = runRanks(n) { r in
        let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
        for root in 0..<n {
          var buf = (0..<1003).map { r == root ? Float($0 + root) : -1 }
          try g.broadcast(&buf, count: buf.count, root: root)
          if buf != (0..<1003).map({ Float($0 + root) }) { bad.set(r, CollectiveSelfTest.Failure(description: "root \(root) rank \(r)")) }
        }
      }
      XCTAssertEqual((errors + bad.all).compactMap { $0 }.map(message), [String](), "n=\(n)")
    }
  }

  func testAllgatherOfDifferentLengthsAndBarrier() {
    let n = 7
    let (fabric, options) = inProcessGroups(n)
    let bad = ResultBox(n)
    let errors = runRanks(n) { r in
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
      let got = try g.allgather([UInt8](repeating: UInt8(r), count: r))
      try g.barrier()
      if got != (0..<n).map({ [UInt8](repeating: UInt8($0), count: $0) }) { bad.set(r, CollectiveSelfTest.Failure(description: "\(got)")) }
    }
    XCTAssertEqual((errors + bad.all).compactMap { $0 }.map(message), [String]())
  }

  func testGradientReducerWithAndWithoutOverlapAndFp16() {
    for (overlap, fp16) in [(true, false), (false, false), (true, true)] {
      let n = 3, count = 50_001
      let (fabric, options) = inProcessGroups(n, segmentBytes: 8 << 10)
      let bad = ResultBox(n)
      let errors = runRanks(n) { r in
        let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { buf.deallocate() }
        let reducer = GradientReducer(group: g, buffer: buf, count: count, bucketBytes: 16 << 10, overlap: overlap, fp16: fp16)
        for step in 0..<3 {
          for i in 0..<count { buf[i] = Float(r + step) }
          // Ranges of uneven sizes, as a model's layers produce them; the last one unreported.
          var from = 0
          var size = 1
          while from + size < count - 100 { reducer.ready(from..<(from + size)); from += size; size = size * 3 + 7 }
          try reducer.finish()
          let want = Float(n - 1) / 2 + Float(step)
          if let i = (0..<count).first(where: { buf[$0] != want }) {
            bad.set(r, CollectiveSelfTest.Failure(description: "overlap=\(overlap) fp16=\(fp16) step \(step) [\(i)] = \(buf[i])"))
          }
        }
      }
      XCTAssertEqual((errors + bad.all).compactMap { $0 }.map(message), [String]())
    }
  }

  func testHandshakeMismatchIsAnErrorOnEveryRank() {
    let n = 4
    let (fabric, options) = inProcessGroups(n, timeout: 5)
    let errors = runRanks(n) { r in
      let signature: ModelSignature = r == 2 ? [("w", 10), ("b", 3)] : testSignature
      _ = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: signature, options: options)
    }
    for (r, e) in errors.enumerated() {
      XCTAssertTrue(message(e).contains("model signature differs"), "rank \(r): \(message(e))")
      XCTAssertTrue(message(e).contains("b [3] vs b [2]") || message(e).contains("b [2] vs b [3]"), "rank \(r): \(message(e))")
    }
  }

  func testJobIDMismatchIsAnErrorOnEveryRank() {
    let n = 3
    let (fabric, options) = inProcessGroups(n, timeout: 5)
    let errors = runRanks(n) { r in
      _ = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: r == 0 ? "job-a" : "job-b",
                                modelSignature: testSignature, options: options)
    }
    for (r, e) in errors.enumerated() { XCTAssertTrue(message(e).contains("belongs to job"), "rank \(r): \(message(e))") }
  }

  /// In-process there is no heartbeat, so only rank 2's right neighbour can name it; the others
  /// must fail within the timeout rather than hang (the ZeroMQ transport's heartbeats let every
  /// rank name rank 2: see ClusterTests' stopped-worker test).
  func testSilentRankMakesEveryOtherRankFailWithinTheTimeout() {
    let n = 4
    let (fabric, options) = inProcessGroups(n, timeout: 1.5)
    let start = Date()
    let errors = runRanks(n, timeout: 20) { r in
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
      if r == 2 { Thread.sleep(forTimeInterval: 4); return }  // rank 2 is alive but stops taking part
      var buf = [Float](repeating: 1, count: 1000)
      try g.allreduceSum(&buf, count: buf.count)
    }
    XCTAssertLessThan(Date().timeIntervalSince(start), 10)
    XCTAssertNil(errors[2])
    for r in [0, 1, 3] { XCTAssertNotNil(errors[r], "rank \(r) should fail") }
    XCTAssertTrue(message(errors[3]).contains("rank 2 (in-process) sent nothing for 1.5 s"), message(errors[3]))
  }

  func testDifferentCollectivesFailInsteadOfMixingData() {
    let (fabric, options) = inProcessGroups(2, timeout: 5)
    let errors = runRanks(2) { r in
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
      var buf = [Float](repeating: 1, count: 100)
      if r == 0 { try g.broadcast(&buf, count: 100, root: 0) } else { try g.allreduceSum(&buf, count: 100) }
      try g.barrier()  // the root of a broadcast does not wait, so it learns at its next collective
    }
    for e in errors { XCTAssertTrue(message(e).contains("same collectives") || message(e).contains("aborted"), message(e)) }
    XCTAssertTrue(errors.contains { message($0).contains("broadcast") && message($0).contains("allreduce") })
  }

  func testFailedGroupKeepsFailing() {
    let timeout = 2.0
    let (fabric, options) = inProcessGroups(2, timeout: timeout)
    let errors = runRanks(2) { r in
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
      if r == 1 { return }
      XCTAssertThrowsError(try g.barrier())
      // No second wait: the first failure is rethrown at once instead of timing out again.
      let start = Date()
      XCTAssertThrowsError(try g.barrier())
      XCTAssertLessThan(Date().timeIntervalSince(start), timeout / 2, "the second collective waited for the timeout again")
    }
    XCTAssertEqual(errors.compactMap { $0 }.count, 0)
  }

  func testWireHelpers() {
    XCTAssertEqual(CollectiveSelfTest.parseBytes("64K"), 65536)
    XCTAssertEqual(CollectiveSelfTest.parseBytes("64MiB"), 64 << 20)
    XCTAssertEqual(CollectiveSelfTest.formatBytes(1 << 20), "1MiB")
    XCTAssertEqual(JobSecret(hex: JobSecret.generate().hex).map { $0.bytes.count }, 32)
    XCTAssertNil(JobSecret(hex: "xyz"))
    let a = JobSecret.generate(), b = JobSecret.generate()
    XCTAssertNotEqual(a, b)
  }
}
