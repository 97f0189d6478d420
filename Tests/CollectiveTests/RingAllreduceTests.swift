// Threads as ranks over the in-process transport (gloo's test pattern): every rank fills its
// buffer with its rank and every element must equal n(n−1)/2, over a grid of sizes.

import Collective
import CollectiveCheck
import XCTest

final class RingAllreduceTests: XCTestCase {
  static let worldSizes = 1...8
  static let counts = [0, 1, 7, 1000, 1_000_000]

  func testSumGridEveryElementEqualsTriangularNumber() {
    for n in Self.worldSizes {
      for count in Self.counts {
        let (fabric, options) = inProcessGroups(n, segmentBytes: count > 10_000 ? 64 << 10 : 12)
        let wrong = ResultBox(n)
        let errors = runRanks(n) { r in
          let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
          var buf = [Float](repeating: Float(r), count: count)
          try g.allreduceSum(&buf, count: count)
          let want = Float(n * (n - 1) / 2)
          if let i = buf.firstIndex(where: { $0 != want }) {
            wrong.set(r, CollectiveSelfTest.Failure(description: "n=\(n) count=\(count) rank \(r): element \(i) = \(buf[i]), want \(want)"))
          }
        }
        XCTAssertEqual(errors.compactMap { $0 }.map(message), [String](), "n=\(n) count=\(count)")
        XCTAssertEqual(wrong.all.compactMap { $0 }.map(message), [String]())
      }
    }
  }

  func testAverageOfDistinctValuesWithCountsNotDivisibleByRanks() {
    for n in [2, 3, 5, 7] {
      for count in [2, 13, 1001, 4099] {
        let (fabric, options) = inProcessGroups(n, segmentBytes: 20)
        let results = ResultBox(n)
        let errors = runRanks(n) { r in
          let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
          // Element i of rank r is r·4 + (i mod 4): distinct per rank and position, exact in float.
          var buf = (0..<count).map { Float(r * 4 + $0 % 4) }
          try g.allreduceAverage(&buf, count: count)
          for i in 0..<count {
            let want = Float(n - 1) * 2 + Float(i % 4)  // mean over r of r·4 + i mod 4
            if abs(buf[i] - want) > 1e-5 * want + 1e-6 {
              results.set(r, CollectiveSelfTest.Failure(description: "n=\(n) count=\(count) rank \(r) [\(i)] = \(buf[i]) want \(want)"))
              return
            }
          }
        }
        XCTAssertEqual((errors + results.all).compactMap { $0 }.map(message), [String]())
      }
    }
  }

  func testResultsAreBitIdenticalOnEveryRank() {
    let n = 5, count = 10_007
    for fp16 in [false, true] {
      let (fabric, options) = inProcessGroups(n, segmentBytes: 1000)
      let outputs = OutputBox(n)
      let errors = runRanks(n) { r in
        let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
        var buf = (0..<count).map { Float(sin(Double($0 * (r + 3)))) * 0.1 }
        try g.allreduceAverage(&buf, count: count, fp16: fp16)
        outputs.set(r, buf)
      }
      XCTAssertEqual(errors.compactMap { $0 }.map(message), [String](), "fp16 \(fp16)")
      XCTAssertEqual(outputs.all[0].count, count)
      for r in 1..<n { XCTAssertEqual(outputs.all[r], outputs.all[0], "fp16 \(fp16): rank \(r) differs from rank 0") }
    }
  }

  func testFp16WireWithinTolerance() {
    for n in [2, 3, 8] {
      let count = 100_003
      let (fabric, options) = inProcessGroups(n, segmentBytes: 32 << 10)
      let failures = ResultBox(n)
      let errors = runRanks(n) { r in
        let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
        let values = { (rank: Int, i: Int) in Float(sin(Double(i) * 0.01 + Double(rank))) * 0.05 }
        var buf = (0..<count).map { values(r, $0) }
        try g.allreduceAverage(&buf, count: count, fp16: true)
        var worst: Float = 0
        for i in 0..<count {
          let exact = (0..<n).map { values($0, i) }.reduce(0, +) / Float(n)
          worst = max(worst, abs(buf[i] - exact))
        }
        // Half precision keeps 11 significant bits; each of the n−1 hops rounds once.
        if worst > 2e-4 { failures.set(r, CollectiveSelfTest.Failure(description: "n=\(n) rank \(r): max error \(worst)")) }
        if worst == 0 { failures.set(r, CollectiveSelfTest.Failure(description: "n=\(n): fp16 path not taken (exact result)")) }
      }
      XCTAssertEqual((errors + failures.all).compactMap { $0 }.map(message), [String]())
    }
  }

  /// --allreduce-dtype bf16: 8 significant bits, so each rounding of a partial sum (≤ n·0.05 here)
  /// costs ≤ 2^-9 of it; n−1 hops plus the final rounding of the mean give ≤ n·0.05·2^-9 ≈ 1e-4·n
  /// on the mean. The results are bf16 values and bit-identical on every rank.
  func testBF16WireWithinToleranceAndIdenticalOnEveryRank() {
    for n in [2, 3, 8] {
      let count = 100_003
      let (fabric, options) = inProcessGroups(n, segmentBytes: 32 << 10)
      let failures = ResultBox(n)
      let outputs = OutputBox(n)
      let errors = runRanks(n) { r in
        let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
        let values = { (rank: Int, i: Int) in Float(sin(Double(i) * 0.01 + Double(rank))) * 0.05 }
        var buf = (0..<count).map { values(r, $0) }
        try g.allreduceAverage(&buf, count: count, wire: .bf16)
        var worst: Float = 0, notBF16 = 0
        for i in 0..<count {
          let exact = (0..<n).map { values($0, i) }.reduce(0, +) / Float(n)
          worst = max(worst, abs(buf[i] - exact))
          if buf[i].bitPattern & 0xFFFF != 0 { notBF16 += 1 }
        }
        if worst > 1e-4 * Float(n) { failures.set(r, CollectiveSelfTest.Failure(description: "n=\(n) rank \(r): max error \(worst)")) }
        if worst < 1e-5 { failures.set(r, CollectiveSelfTest.Failure(description: "n=\(n): bf16 path not taken (error \(worst))")) }
        if notBF16 > 0 { failures.set(r, CollectiveSelfTest.Failure(description: "n=\(n): \(notBF16) results are not bf16 values")) }
        outputs.set(r, buf)
      }
      XCTAssertEqual((errors + failures.all).compactMap { $0 }.map(message), [String]())
      for r in 1..<n { XCTAssertEqual(outputs.all[r], outputs.all[0], "n=\(n): rank \(r) differs from rank 0") }
    }
  }

  /// Segments grow with the buffer (about 32 per chunk) between the smallest and largest size,
  /// and every rank cuts the same ones: observed as the payload sizes rank 0 sends.
  func testSegmentsGrowWithBufferBetweenMinAndMax() {
    let n = 2
    // (count, expected largest payload): 100 → floor (4 floats); 3,000 → 3000/2/32 = 46 floats;
    // 50,000 → 781 floats, capped at 100 floats (400 bytes).
    for (count, expectedBytes) in [(100, 16), (3_000, 46 * 4), (50_000, 400)] {
      let (fabric, options) = inProcessGroups(n, segmentBytes: 16, maxSegmentBytes: 400)
      let payloads = PayloadLog()
      let wrong = ResultBox(n)
      let errors = runRanks(n) { r in
        let inner = fabric.transport(rank: r)
        let transport: RingTransport = r == 0 ? RecordingTransport(inner, log: payloads) : inner
        let g = try ProcessGroup.join(transport: transport, jobID: "t", modelSignature: testSignature, options: options)
        if r == 0 { payloads.reset() }  // forget the handshake's messages
        var buf = [Float](repeating: Float(r + 1), count: count)
        try g.allreduceSum(&buf, count: count)
        if let i = buf.firstIndex(where: { $0 != 3 }) {
          wrong.set(r, CollectiveSelfTest.Failure(description: "count=\(count) rank \(r): element \(i) = \(buf[i])"))
        }
      }
      XCTAssertEqual((errors + wrong.all).compactMap { $0 }.map(message), [String](), "count=\(count)")
      XCTAssertEqual(payloads.sizes.max(), expectedBytes, "count=\(count): largest segment")
      XCTAssertEqual(payloads.sizes.reduce(0, +), count * 4, "count=\(count): rank 0 sends both chunks once in a 2-rank ring \(payloads.sizes)")
    }
  }

  /// Adaptive segments (between 16 and 400 bytes) with ranks that do not divide the count:
  /// sums and broadcasts stay exact.
  func testAdaptiveSegmentsWithUnevenChunks() {
    for n in [3, 5] {
      for count in [1001, 40_009] {
        let (fabric, options) = inProcessGroups(n, segmentBytes: 16, maxSegmentBytes: 400)
        let wrong = ResultBox(n)
        let errors = runRanks(n) { r in
          let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
          var buf = (0..<count).map { Float(r + $0 % 7) }
          try g.allreduceSum(&buf, count: count)
          let sumOfRanks = n * (n - 1) / 2
          if let i = (0..<count).first(where: { buf[$0] != Float(sumOfRanks + n * ($0 % 7)) }) {
            wrong.set(r, CollectiveSelfTest.Failure(description: "n=\(n) count=\(count) rank \(r): sum [\(i)] = \(buf[i])"))
            return
          }
          var b = (0..<count).map { Float(r == 1 ? $0 : -1) }
          try g.broadcast(&b, count: count, root: 1)
          if let i = (0..<count).first(where: { b[$0] != Float($0) }) {
            wrong.set(r, CollectiveSelfTest.Failure(description: "n=\(n) count=\(count) rank \(r): broadcast [\(i)] = \(b[i])"))
          }
        }
        XCTAssertEqual((errors + wrong.all).compactMap { $0 }.map(message), [String](), "n=\(n) count=\(count)")
      }
    }
  }

  func testDoubleSumIsExactForCounts() {
    let n = 6
    let (fabric, options) = inProcessGroups(n)
    let out = ResultBox(n)
    let errors = runRanks(n) { r in
      let g = try ProcessGroup.join(transport: fabric.transport(rank: r), jobID: "t", modelSignature: testSignature, options: options)
      var metrics: [Double] = [Double(r) * 1e9 + 1, 0.5]
      try g.allreduceSum(&metrics, count: 2)
      if metrics != [15e9 + 6, 3] { out.set(r, CollectiveSelfTest.Failure(description: "rank \(r): \(metrics)")) }
    }
    XCTAssertEqual((errors + out.all).compactMap { $0 }.map(message), [String]())
  }
}

final class OutputBox: @unchecked Sendable {
  private let lock = NSLock()
  private var values: [[Float]]
  init(_ n: Int) { values = Array(repeating: [], count: n) }
  func set(_ r: Int, _ v: [Float]) { lock.lock(); values[r] = v; lock.unlock() }
  var all: [[Float]] { lock.lock(); defer { lock.unlock() }; return values }
}

/// Payload sizes a wrapped transport sent.
final class PayloadLog: @unchecked Sendable {
  private let lock = NSLock()
  private var values: [Int] = []
  func add(_ n: Int) { lock.lock(); values.append(n); lock.unlock() }
  func reset() { lock.lock(); values = []; lock.unlock() }
  var sizes: [Int] { lock.lock(); defer { lock.unlock() }; return values }
}

/// Forwards to another transport and records the size of every data payload it sends.
final class RecordingTransport: RingTransport {
  let inner: RingTransport
  let log: PayloadLog
  init(_ inner: RingTransport, log: PayloadLog) { self.inner = inner; self.log = log }
  var rank: Int { inner.rank }
  var size: Int { inner.size }
  func describe(rank: Int) -> String { inner.describe(rank: rank) }
  func send(tag: UInt32, byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) throws {
    log.add(byteCount)
    try inner.send(tag: tag, byteCount: byteCount, fill)
  }
  func send(tag: UInt32, referencing bytes: UnsafeRawBufferPointer) throws {
    log.add(bytes.count)
    try inner.send(tag: tag, referencing: bytes)
  }
  func flush() throws { try inner.flush() }
  func receive(tag: UInt32, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws { try inner.receive(tag: tag, consume) }
  func setTimeout(_ seconds: Double, phase: String) { inner.setTimeout(seconds, phase: phase) }
  func abort(_ reason: String) { inner.abort(reason) }
  func close() { inner.close() }
}
