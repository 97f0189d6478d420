// Direct reads of the neighbour's buffer (PeerMemory.swift). Ranks are threads of this process,
// which can always read its own memory, so the probe enables the path; each result is compared
// bit for bit with the same allreduce over the socket path (same order of additions) and with a
// naive sum.

import Collective
import CollectiveCheck
import XCTest

final class PeerMemoryTests: XCTestCase {
  /// In-process groups that read directly from the first byte (or never).
  func groups(_ n: Int, direct: Bool, segmentBytes: Int, maxSegmentBytes: Int) -> (InProcessFabric, GroupOptions) {
    var (fabric, options) = inProcessGroups(n, segmentBytes: segmentBytes, maxSegmentBytes: maxSegmentBytes)
    options.peerMemory = direct
    options.peerMemoryMinBytes = 0
    return (fabric, options)
  }

  /// Element i of rank r: distinct, not integers, so a wrong order of additions shows in the bits.
  static func value(_ r: Int, _ i: Int) -> Float { Float(sin(Double(i) * 0.37 + Double(r) * 1.3)) * 0.25 }

  func averages(n: Int, count: Int, direct: Bool, segmentBytes: Int, maxSegmentBytes: Int) -> ([Error?], [[Float]], [Bool]) {
    let (fabric, options) = groups(n, direct: direct, segmentBytes: segmentBytes, maxSegmentBytes: maxSegmentBytes)
    let outputs = OutputBox(n)
    let reads = OutputBox(n)
    let errors = runRanks(n) { r in
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
      reads.set(r, [g.readsPeerMemory ? 1 : 0])
      var buf = (0..<count).map { Self.value(r, $0) }
      try g.allreduceAverage(&buf, count: count)
      try g.allreduceSum(&buf, count: count)  // a second op on the same buffer: the token pass left it alone
      outputs.set(r, buf)
    }
    return (errors, outputs.all, reads.all.map { $0 == [1] })
  }

  /// Ranks whose settings differ (one rank with direct reads off, thresholds that differ) still
  /// agree on every op's path: the probe gathers both, so no message sequence drifts apart.
  func testRanksWithDifferentSettingsAgreeOnThePath() {
    let n = 4, count = 70_001
    let (fabric, options) = inProcessGroups(n, segmentBytes: 4096, maxSegmentBytes: 65536)
    let outputs = OutputBox(n), reads = OutputBox(n)
    let errors = runRanks(n) { r in
      var mine = options
      mine.peerMemory = r != 2  // rank 2 never reads its neighbour (MNV2_PEER_MEMORY=0 there)
      mine.peerMemoryMinBytes = r == 1 ? 1 << 20 : 0  // rank 1 wants direct reads only from 1 MiB
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: mine)
      reads.set(r, [g.readsPeerMemory ? 1 : 0])
      var small = (0..<count).map { Self.value(r, $0) }  // 280 KB: below rank 1's threshold, so socket everywhere
      try g.allreduceSum(&small, count: count)
      var large = (0..<(count * 4)).map { Self.value(r, $0) }  // 1.1 MB: direct on the edges that can
      try g.allreduceSum(&large, count: large.count)
      outputs.set(r, small + large)
    }
    XCTAssertEqual(errors.compactMap { $0 }.map(message), [String]())
    XCTAssertEqual(reads.all, [[Float]](repeating: [1], count: n), "edges other than rank 2's still read directly")
    let all = outputs.all
    guard all.count == n, all[0].count == 5 * count else { return XCTFail("missing outputs") }
    var worst: Float = 0
    for i in 0..<(5 * count) {
      let j = i < count ? i : i - count
      let sum = (0..<n).map { Self.value($0, j) }.reduce(0, +)
      for r in 0..<n { worst = max(worst, abs(all[r][i] - sum)) }
    }
    XCTAssertLessThan(worst, 1e-5)
  }

  func testDirectReadsGiveTheSocketPathsBitsOnEveryRank() {
    // (count, smallest, largest segment bytes): tiny segments; segments (1 MiB) of several
    // scratch pieces (256 KiB) with a remainder; counts not divisible by the ranks.
    let cases = [(1, 4, 4), (7, 8, 8), (1000, 16, 400), (70_001, 4096, 65536), (600_001, 1 << 20, 1 << 20)]
    for n in [2, 3, 8] {
      for (count, minSegment, maxSegment) in cases {
        let (directErrors, direct, directFlags) = averages(n: n, count: count, direct: true, segmentBytes: minSegment, maxSegmentBytes: maxSegment)
        let (socketErrors, socket, socketFlags) = averages(n: n, count: count, direct: false, segmentBytes: minSegment, maxSegmentBytes: maxSegment)
        let label = "n=\(n) count=\(count)"
        XCTAssertEqual((directErrors + socketErrors).compactMap { $0 }.map(message), [String](), label)
        XCTAssertEqual(directFlags, [Bool](repeating: true, count: n), "\(label): the probe did not enable direct reads")
        XCTAssertEqual(socketFlags, [Bool](repeating: false, count: n), label)
        guard direct.count == n, socket.count == n, direct[0].count == count else { XCTFail(label); continue }
        for r in 0..<n {
          XCTAssertTrue(direct[r] == socket[0], "\(label): rank \(r) over direct reads differs from the socket path")
        }
        // Naive reference: mean over ranks, then times n (the second op sums the identical means).
        var worst: Float = 0
        for i in 0..<count {
          let mean = (0..<n).map { Self.value($0, i) }.reduce(0, +) / Float(n)
          worst = max(worst, abs(direct[0][i] - mean * Float(n)))
        }
        XCTAssertLessThan(worst, 1e-5, label)
      }
    }
  }

  /// Doubles (8-byte elements, the metrics path) over direct reads stay exact for integers.
  func testDoubleSumOverDirectReadsIsExact() {
    let n = 5, count = 100_003
    let (fabric, options) = groups(n, direct: true, segmentBytes: 4096, maxSegmentBytes: 1 << 20)
    let wrong = ResultBox(n)
    let errors = runRanks(n) { r in
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
      var buf = (0..<count).map { Double(r) * 1e9 + Double($0) }
      try g.allreduceSum(&buf, count: count)
      if let i = (0..<count).first(where: { buf[$0] != 10e9 + Double(n * $0) }) {
        wrong.set(r, CollectiveSelfTest.Failure(description: "rank \(r): [\(i)] = \(buf[i])"))
      }
    }
    XCTAssertEqual((errors + wrong.all).compactMap { $0 }.map(message), [String]())
  }

  /// Ranks that pass different counts get an error naming the cause, never a sum of descriptors.
  func testDifferentCountsFailOverDirectReads() {
    let n = 3
    let (fabric, options) = groups(n, direct: true, segmentBytes: 64, maxSegmentBytes: 4096)
    let errors = runRanks(n) { r in
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
      var buf = [Float](repeating: 1, count: r == 1 ? 3000 : 2000)
      try g.allreduceSum(&buf, count: buf.count)
    }
    for (r, e) in errors.enumerated() { XCTAssertNotNil(e, "rank \(r) should fail") }
    XCTAssertTrue(errors.contains { message($0).contains("different buffer sizes") }, errors.map(message).joined(separator: "; "))
  }

  /// Below peerMemoryMinBytes the socket carries the bytes: observed as the payload sizes rank 0
  /// sends (descriptors are 24 bytes whatever the segment).
  func testSmallAllreducesUseTheSocketAndLargeOnesDescriptors() {
    let n = 2
    let (fabric, socketOptions) = inProcessGroups(n, segmentBytes: 400, maxSegmentBytes: 400)
    let options: GroupOptions = { var o = socketOptions; o.peerMemoryMinBytes = 40_000; return o }()
    let payloads = PayloadLog()
    let reads = OutputBox(n)
    let errors = runRanks(n) { r in
      let inner = fabric.transport(rank: r)
      let transport: RingTransport = r == 0 ? RecordingTransport(inner, log: payloads) : inner
      let g = try ProcessGroup.join(transport: transport, jobID: "t", modelSignature: testSignature, options: options)
      reads.set(r, [g.readsPeerMemory ? 1 : 0])
      for count in [9_999, 10_000] {  // 39,996 bytes: socket; 40,000: direct
        if r == 0 { try g.barrier(); payloads.reset() }
        else { try g.barrier() }
        var buf = [Float](repeating: Float(r + 1), count: count)
        try g.allreduceSum(&buf, count: count)
        if r == 0 { reads.set(0, reads.all[0] + [Float(payloads.sizes.max() ?? -1)]) }
        if buf.contains(where: { $0 != 3 }) { throw CollectiveSelfTest.Failure(description: "count \(count): wrong sum") }
        try g.barrier()
      }
    }
    XCTAssertEqual(errors.compactMap { $0 }.map(message), [String]())
    XCTAssertEqual(reads.all[1], [1])
    // Rank 0: the probe verdict, then the largest payload it sent in each op (token payloads are empty).
    XCTAssertEqual(reads.all[0], [1, 400, Float(descriptorBytes)])
  }
}

/// Bytes of a direct-read descriptor: magic "MN2PEERR", address, length, segment offset (UInt64 each).
let descriptorBytes = 32

/// Rank 0's transport, rewriting one field (a UInt64 at `field`) of every direct-read descriptor it
/// sends: an address that is not mapped is what its right neighbour sees when rank 0's buffer is
/// gone; a wrong segment offset is a rank whose ring steps are out of step.
final class DescriptorRewritingTransport: RingTransport {
  static let addressField = 8, offsetField = 24
  let inner: RingTransport
  let field: Int, value: UInt64
  init(_ inner: RingTransport, field: Int, value: UInt64) { self.inner = inner; self.field = field; self.value = value }
  var rank: Int { inner.rank }
  var size: Int { inner.size }
  func describe(rank: Int) -> String { inner.describe(rank: rank) }
  func send(tag: UInt32, byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) throws {
    var bytes = [UInt8](repeating: 0, count: byteCount)
    bytes.withUnsafeMutableBytes { fill($0) }
    if byteCount == descriptorBytes && bytes[0..<8].elementsEqual("MN2PEERR".utf8) {
      bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: field, as: UInt64.self) }
    }
    try inner.send(tag: tag, byteCount: byteCount) { $0.copyBytes(from: bytes) }
  }
  func send(tag: UInt32, referencing bytes: UnsafeRawBufferPointer) throws { try inner.send(tag: tag, referencing: bytes) }
  func flush() throws { try inner.flush() }
  func receive(tag: UInt32, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws { try inner.receive(tag: tag, consume) }
  func setTimeout(_ seconds: Double, phase: String) { inner.setTimeout(seconds, phase: phase) }
  func abort(_ reason: String) { inner.abort(reason) }
  func close() { inner.close() }
}

extension PeerMemoryTests {
  /// A descriptor whose memory cannot be read fails the reader as a peer failure naming the
  /// previous rank (launch then blames that rank), and the ring aborts instead of hanging.
  func testUnreadableBufferIsAPeerFailureOfThePreviousRank() {
    let n = 3
    let (fabric, options) = groups(n, direct: true, segmentBytes: 256, maxSegmentBytes: 4096)
    let errors = runRanks(n) { r in
      let inner = fabric.transport(rank: r)
      let unmapped = DescriptorRewritingTransport(inner, field: DescriptorRewritingTransport.addressField, value: 16)
      let g = try ProcessGroup.join(transport: r == 0 ? unmapped : inner, jobID: "t",
                                    modelSignature: testSignature, options: options)
      var buf = [Float](repeating: 1, count: 10_000)
      try g.allreduceSum(&buf, count: buf.count)
    }
    for (r, e) in errors.enumerated() { XCTAssertNotNil(e, "rank \(r) should fail") }
    XCTAssertTrue(message(errors[1]).contains("lost connection to rank 0") && message(errors[1]).contains("could not be read"), message(errors[1]))
    XCTAssertEqual((errors[1] as? CollectiveError)?.isCausedByPeer, true)
  }

  /// A descriptor for another segment than the one expected (same length, readable memory) is a
  /// protocol error at the reader, not a silently wrong sum.
  func testDescriptorOfTheWrongSegmentIsAProtocolError() {
    let n = 3
    let (fabric, options) = groups(n, direct: true, segmentBytes: 256, maxSegmentBytes: 4096)
    let errors = runRanks(n) { r in
      let inner = fabric.transport(rank: r)
      let shifted = DescriptorRewritingTransport(inner, field: DescriptorRewritingTransport.offsetField, value: 1)
      let g = try ProcessGroup.join(transport: r == 0 ? shifted : inner, jobID: "t", modelSignature: testSignature, options: options)
      var buf = [Float](repeating: 1, count: 10_000)
      try g.allreduceSum(&buf, count: buf.count)
    }
    for (r, e) in errors.enumerated() { XCTAssertNotNil(e, "rank \(r) should fail") }
    XCTAssertTrue(message(errors[1]).contains("expected the segment at element") && message(errors[1]).contains("out of step"), message(errors[1]))
  }
}
