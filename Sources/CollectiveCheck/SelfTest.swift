// What `worker self-test` and `worker bench` run: a correctness check of every collective
// (including the gradient reducer) over the real ring, and the allreduce benchmark of
// `make bench-allreduce`. A library of its own, so the Collective library ships no test harness.

import Collective
import Foundation

public enum CollectiveSelfTest {
  public struct Failure: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
  }

  /// Checks broadcast, allreduce (sum, average, fp16, double), allgather, barrier and the
  /// gradient reducer for each element count; every rank verifies every element.
  public static func run(_ g: ProcessGroup, counts: [Int], log: (String) -> Void) throws {
    let n = g.size, r = g.rank
    let maxCount = counts.max() ?? 0
    let buf = UnsafeMutablePointer<Float>.allocate(capacity: max(1, maxCount))
    defer { buf.deallocate() }
    func expect(_ ok: Bool, _ what: @autoclosure () -> String) throws {
      if !ok { throw Failure(description: "self-test failed on rank \(r): \(what())") }
    }
    for count in counts {
      for root in (n > 1 ? [0, n - 1] : [0]) {  // same order on every rank (a Set's order is per process)
        for i in 0..<count { buf[i] = r == root ? Float(i % 1000) * 0.5 : -1 }
        try g.broadcast(buf, count: count, root: root)
        for i in 0..<count { try expect(buf[i] == Float(i % 1000) * 0.5, "broadcast from \(root), \(count) elements, element \(i) = \(buf[i])") }
      }
      for i in 0..<count { buf[i] = Float(r) }
      try g.allreduceSum(buf, count: count)
      let sum = Float(n * (n - 1) / 2)
      for i in 0..<count { try expect(buf[i] == sum, "allreduce sum of \(count): element \(i) = \(buf[i]), expected \(sum)") }
      for i in 0..<count { buf[i] = Float(r) + 0.25 }
      try g.allreduceAverage(buf, count: count, fp16: true)
      let mean = Float(n - 1) / 2 + 0.25
      for i in 0..<count { try expect(abs(buf[i] - mean) <= 1e-3 * max(1, mean), "fp16 average of \(count): element \(i) = \(buf[i])") }
      let reducer = GradientReducer(group: g, buffer: buf, count: count, bucketBytes: 64 << 10, overlap: true, fp16: false)
      for _ in 0..<2 {  // two steps: the reducer rearms
        for i in 0..<count { buf[i] = Float(r) }
        var from = 0
        while from < count { let to = min(count, from + 10_000); reducer.ready(from..<to); from = to }
        try reducer.finish()
        for i in 0..<count { try expect(buf[i] == Float(n - 1) / 2, "gradient reducer of \(count): element \(i) = \(buf[i])") }
      }
    }
    var metrics: [Double] = [Double(r), 1]
    try g.allreduceSum(&metrics, count: 2)
    try expect(metrics == [Double(n * (n - 1) / 2), Double(n)], "double allreduce: \(metrics)")
    let gathered = try g.allgather(Array("rank \(r)".utf8))
    try expect(gathered.map { String(decoding: $0, as: UTF8.self) } == (0..<n).map { "rank \($0)" }, "allgather: \(gathered)")
    try g.barrier()
    log("rank \(r): self-test passed (\(n) ranks; counts \(counts.map(String.init).joined(separator: ",")))")
  }

  /// Allreduces `count` floats repeatedly for `seconds`, checking each result (a long-running
  /// job for fault-injection tests).
  public static func loop(_ g: ProcessGroup, count: Int, seconds: Double, log: (String) -> Void) throws {
    let buf = UnsafeMutablePointer<Float>.allocate(capacity: max(1, count))
    defer { buf.deallocate() }
    let end = Date(timeIntervalSinceNow: seconds)
    var iterations = 0
    repeat {
      for i in 0..<count { buf[i] = Float(g.rank) }
      try g.allreduceSum(buf, count: count)
      let want = Float(g.size * (g.size - 1) / 2)
      guard (0..<count).allSatisfy({ buf[$0] == want }) else {
        throw Failure(description: "rank \(g.rank): wrong allreduce result in iteration \(iterations)")
      }
      iterations += 1
      var go: [Double] = [Date() < end ? 1 : 0]
      try g.allreduceSum(&go, count: 1)  // all ranks stop together
      if go[0] < Double(g.size) { break }
    } while true
    log("rank \(g.rank): \(iterations) allreduces of \(count) floats")
  }

  /// Per size: median time of an in-place float32 SUM allreduce (time of the slowest rank, each
  /// op after a barrier), algbw = bytes/time and busbw = algbw·2(n−1)/n, as nccl-tests and
  /// ../shared/baselines/gloo_allreduce.py define them. Printed by rank 0.
  public static func benchmark(_ g: ProcessGroup, sizes: [Int], fp16: Bool = false, warmup: Int = 3,
                               minIterations: Int = 5, maxIterations: Int = 200, budgetSeconds: Double = 2,
                               log: (String) -> Void) throws {
    let n = g.size
    let maxElements = (sizes.max() ?? 0) / 4
    let buf = UnsafeMutablePointer<Float>.allocate(capacity: max(1, maxElements))
    defer { buf.deallocate() }
    buf.initialize(repeating: 0, count: max(1, maxElements))  // fault the pages in once
    // cpu_ms: CPU time (user + system, every thread, barriers included) per op summed over ranks:
    // with more ranks than cores the CPU, not the wire, bounds the ring, and this column is what a
    // change saves even when a shared machine makes the wall-clock columns noisy.
    log(row(["backend", "size", "iters", "median_us", "min_us", "algbw_GB/s", "busbw_GB/s", "cpu_ms"]))
    for size in sizes {
      let count = size / 4
      func op() throws {
        if fp16 { try g.allreduceAverage(buf, count: count, fp16: true) } else { try g.allreduceSum(buf, count: count) }
      }
      var last = 0.0
      for i in 0..<warmup {
        for j in 0..<count { buf[j] = Float(g.rank + 1) }
        try g.barrier()
        let t = DispatchTime.now().uptimeNanoseconds
        try op()
        last = Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9
        if i == 0 && !fp16 {
          let want = Float(n * (n + 1) / 2)
          guard (0..<count).allSatisfy({ buf[$0] == want }) else {
            throw Failure(description: "rank \(g.rank): wrong allreduce result at \(size) bytes")
          }
        }
      }
      let slowest = try maxOverRanks(g, [last])[0]
      let iterations = max(minIterations, min(maxIterations, Int(budgetSeconds / max(slowest, 1e-9))))
      var times = [Double](repeating: 0, count: iterations)
      let cpuBefore = processCPUSeconds()
      for i in 0..<iterations {
        try g.barrier()
        let t = DispatchTime.now().uptimeNanoseconds
        try op()
        times[i] = Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9
      }
      let cpu = try sumOverRanks(g, (processCPUSeconds() - cpuBefore) / Double(iterations))
      times = try maxOverRanks(g, times)
      let median = times.sorted()[iterations / 2]
      let algbw = Double(size) / median / 1e9
      let busbw = algbw * 2 * Double(n - 1) / Double(n)
      log(row([fp16 ? "ours-fp16" : "ours", formatBytes(size), String(iterations), String(format: "%.1f", median * 1e6),
               String(format: "%.1f", times.min()! * 1e6), String(format: "%.3f", algbw), String(format: "%.3f", busbw),
               String(format: "%.1f", cpu * 1e3)]))
    }
  }

  /// Columns laid out like the Gloo baseline's table.
  private static func row(_ cells: [String]) -> String {
    let widths = [-9, 7, 5, 11, 11, 10, 10, 8]
    return zip(cells, widths).map { cell, w in
      let pad = String(repeating: " ", count: max(0, abs(w) - cell.count))
      return w < 0 ? cell + pad : pad + cell
    }.joined(separator: " ")
  }

  /// User + system seconds of this process so far (all threads, libzmq's I/O thread included).
  private static func processCPUSeconds() -> Double {
    var u = rusage()
    #if os(Linux)
    getrusage(RUSAGE_SELF.rawValue, &u)
    #else
    getrusage(RUSAGE_SELF, &u)
    #endif
    func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return seconds(u.ru_utime) + seconds(u.ru_stime)
  }

  private static func sumOverRanks(_ g: ProcessGroup, _ value: Double) throws -> Double {
    var v = [value]
    try g.allreduceSum(&v, count: 1)
    return v[0]
  }

  private static func maxOverRanks(_ g: ProcessGroup, _ values: [Double]) throws -> [Double] {
    let all = try g.allgather(values.withUnsafeBytes { Array($0) })
    var out = values
    for bytes in all {
      bytes.withUnsafeBytes { raw in
        for i in out.indices { out[i] = max(out[i], raw.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
      }
    }
    return out
  }

  public static func formatBytes(_ b: Int) -> String {
    for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] where b >= scale && b % scale == 0 {
      return "\(b / scale)\(unit)"
    }
    return "\(b)B"
  }

  /// "64K" → 65536 (binary units).
  public static func parseBytes(_ s: String) -> Int? {
    var t = s.uppercased().trimmingCharacters(in: .whitespaces)
    for suffix in ["IB", "B"] where t.hasSuffix(suffix) { t.removeLast(suffix.count) }
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let last = t.last, let scale = units[last] { return Int(t.dropLast()).map { $0 * scale } }
    return Int(t)
  }
}
