// The bf16 1×1 convolutions on the generated GEMM (PointwiseBF16.swift) against the naive float64
// kernels on the bf16-rounded operands, fused epilogues included; and the choice JIT vs emulation.
import Common
import Kernels
import XCTest

final class PointwiseBF16Tests: XCTestCase {
  override func setUp() { Compute.setThreads(2) }
  override func tearDown() { Compute.setThreads(1) }

  func rounded(_ b: FloatBuffer) -> FloatBuffer {
    let r = FloatBuffer(count: b.count)
    for i in 0..<b.count { r[i] = roundedToBF16(b[i]) }
    return r
  }

  /// The JIT only where the CPU has AVX512-BF16 (+F/BW/VL); elsewhere bf16 mode takes the emulation.
  func testArithmeticChoiceFollowsTheCPU() {
    let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
      .split(separator: "\n").first { $0.hasPrefix("flags") }.map { Set($0.split(separator: " ").map(String.init)) } ?? []
    let hasAll = BF16JIT.requiredFlags.allSatisfy(flags.contains)
    XCTAssertEqual(BF16JIT.isAvailable, hasAll)
    XCTAssertEqual(BF16Arithmetic.host, hasAll ? .jit : .emulated)
    if !hasAll { print("PointwiseBF16Tests: CPU lacks \(BF16JIT.requiredFlags): JIT unavailable, bf16 uses the emulation path") }
  }

  let shapes = [(1, 3, 5), (37, 16, 96), (3001, 24, 144), (130, 96, 16), (300, 7, 33), (130, 160, 1001), (1111, 40, 70)]

  func testForwardWithStatisticsMatchesNaiveOnRoundedOperands() {
    guard BF16JIT.isAvailable else { testArithmeticChoiceFollowsTheCPU(); return }
    let workspace = BF16Workspace()
    for (m, ci, co) in shapes {
      let x = randomBuffer(m * ci, seed: 150, offset: 1), w = randomBuffer(ci * co, seed: 151)
      let packed = BF16PackedMatrix(k: ci, n: co)
      packBF16B(packed, w.base, transposed: false)
      let y = FloatBuffer(count: m * co), y2 = FloatBuffer(count: m * co), yRef = FloatBuffer(count: m * co)
      let shift = FloatBuffer(count: co)
      var sums = [Double](repeating: .nan, count: 2 * co)
      pointwiseForwardBF16(y: y.base, x: x.base, w: packed, rows: m, statisticsShift: shift.base, sums: &sums,
                           scratch: Scratch(), workspace: workspace)
      pointwiseForwardBF16(y: y2.base, x: x.base, w: packed, rows: m, scratch: Scratch(), workspace: workspace)
      let (xr, wr) = (rounded(x), rounded(w))  // kept alive: .base of a temporary would dangle
      pointwiseForwardNaive(y: yRef.base, x: xr.base, w: wr.base, rows: m, inChannels: ci, outChannels: co)
      let what = "bf16 JIT 1x1 \(m)x\(ci)x\(co)"
      assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, what)
      XCTAssertEqual(y.array, y2.array, what + ": with and without statistics")
      assertStatistics(shift: shift, sums: sums, of: yRef.base, rows: m, channels: co, what)
    }
  }

  func testBackwardWithFusedReductionsAndResidualMatchesNaiveOnRoundedOperands() {
    guard BF16JIT.isAvailable else { testArithmeticChoiceFollowsTheCPU(); return }
    let workspace = BF16Workspace()
    for (m, ci, co) in shapes {
      for withResidual in [false, true] {
        let x = randomBuffer(m * ci, seed: 180), w = randomBuffer(ci * co, seed: 181), dy = randomBuffer(m * co, seed: 182)
        let res = randomBuffer(m * ci, seed: 183)
        let producer = FusedKernelsTests.Layer(rows: m, channels: ci, relu6: !withResidual, seed: 184)
        let wT = BF16PackedMatrix(k: co, n: ci)
        packBF16B(wT, w.base, transposed: true)
        let (xr, wr, dyr) = (rounded(x), rounded(w), rounded(dy))
        let dx = FloatBuffer(count: m * ci), dxRef = FloatBuffer(count: m * ci)
        let dw = randomBuffer(ci * co, seed: 185), dwRef = FloatBuffer(count: ci * co)
        dwRef.copy(from: dw.array)
        var sums = [Double](repeating: .nan, count: 2 * ci)
        sums.withUnsafeMutableBufferPointer { sp in
          pointwiseBackwardBF16(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, wT: wT,
                                rows: m, scratch: Scratch(), workspace: workspace,
                                residual: withResidual ? UnsafePointer(res.base) : nil, reduce: producer.reduction(sp.baseAddress!))
        }
        pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dyr.base, x: xr.base, w: wr.base, rows: m,
                               inChannels: ci, outChannels: co)
        if withResidual { for i in 0..<(m * ci) { dxRef[i] += res[i] } }
        let what = "bf16 JIT 1x1 backward \(m)x\(ci)x\(co) residual=\(withResidual)"
        assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, what + " dx")
        assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, what + " dw")
        let expected = producer.naiveSums(da: dxRef.base)
        for i in sums.indices {
          XCTAssertEqual(sums[i], expected[i], accuracy: 1e-3 + 1e-4 * abs(expected[i]), "\(what) sum[\(i)]")
        }
      }
    }
  }

  func testDenseMatchesNaiveOnRoundedOperands() {
    guard BF16JIT.isAvailable else { testArithmeticChoiceFollowsTheCPU(); return }
    let workspace = BF16Workspace()
    let (n, c, k) = (5, 40, 1001)
    let x = randomBuffer(n * c, seed: 190), w = randomBuffer(c * k, seed: 191), b = randomBuffer(k, seed: 192)
    let dy = randomBuffer(n * k, seed: 193)
    let packed = BF16PackedMatrix(k: c, n: k), packedT = BF16PackedMatrix(k: k, n: c)
    packBF16B(packed, w.base, transposed: false)
    packBF16B(packedT, w.base, transposed: true)
    let y = FloatBuffer(count: n * k), yRef = FloatBuffer(count: n * k)
    denseForwardBF16(y: y.base, x: x.base, w: packed, b: b.base, rows: n, workspace: workspace)
    let (xr, wr, dyr) = (rounded(x), rounded(w), rounded(dy))
    pointwiseForwardNaive(y: yRef.base, x: xr.base, w: wr.base, rows: n, inChannels: c, outChannels: k)
    for i in 0..<(n * k) { yRef[i] += b[i % k] }
    assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, "dense forward")
    let dx = FloatBuffer(count: n * c), dxRef = FloatBuffer(count: n * c)
    let dw = FloatBuffer(count: c * k), dwRef = FloatBuffer(count: c * k)
    let db = FloatBuffer(count: k), dbRef = FloatBuffer(count: k)
    denseBackwardBF16(dx: dx.base, dw: dw.base, db: db.base, dy: dy.base, roundedDY: dyr.base, roundedX: xr.base,
                      wT: packedT, rows: n, scratch: Scratch(), workspace: workspace)
    pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dyr.base, x: xr.base, w: wr.base, rows: n,
                           inChannels: c, outChannels: k)
    for i in 0..<(n * k) { dbRef[i % k] += dyr[i] }
    assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, "dense dx (K = 1001: odd, padded)")
    assertClose(dw, dwRef, atol: 1e-4, rtol: 1e-4, "dense dw")
    assertClose(db, dbRef, atol: 1e-5, rtol: 1e-5, "dense db")
  }

  /// The JIT 1×1 with its input's BN + ReLU6 pending gives exactly the same results as on the stored
  /// activation: both convert the same float32 values to bf16 (forward, and the weight gradient).
  func testPendingBatchNormInputEqualsStoredActivation() {
    guard BF16JIT.isAvailable else { testArithmeticChoiceFollowsTheCPU(); return }
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    let workspace = BF16Workspace()
    for (m, ci, co) in [(1, 3, 5), (700, 96, 24), (3001, 144, 32)] {
      let z = randomBuffer(m * ci, seed: 160, scale: 2, offset: 0.5)
      let ss = randomBuffer(2 * ci, seed: 161, scale: 1, offset: 0.5)
      let pending = PendingBatchNorm(scale: ss.base, shift: ss.base + ci, relu6: true, roundToBF16: true)
      let x = FloatBuffer(count: m * ci)
      for i in 0..<(m * ci) { x[i] = min(max(z[i] * ss[i % ci] + ss[ci + i % ci], 0), 6) }
      let w = randomBuffer(ci * co, seed: 162), dy = randomBuffer(m * co, seed: 163)
      let packed = BF16PackedMatrix(k: ci, n: co), packedT = BF16PackedMatrix(k: co, n: ci)
      packBF16B(packed, w.base, transposed: false)
      packBF16B(packedT, w.base, transposed: true)
      var results: [[Float]] = []
      for useInput in [false, true] {
        let y = FloatBuffer(count: m * co), shift = FloatBuffer(count: co)
        var sums = [Double](repeating: .nan, count: 2 * co)
        let src = useInput ? z : x
        pointwiseForwardBF16(y: y.base, x: src.base, w: packed, rows: m, statisticsShift: shift.base, sums: &sums,
                             scratch: Scratch(), workspace: workspace, input: useInput ? pending : nil)
        let dw = FloatBuffer(count: ci * co), dx = FloatBuffer(count: m * ci)
        pointwiseBackwardBF16(dx: dx.base, dw: dw.base, dy: dy.base, x: src.base, wT: packedT, rows: m,
                              scratch: Scratch(), workspace: workspace, input: useInput ? pending : nil)
        results.append(y.array + shift.array + dw.array + dx.array)
      }
      XCTAssertEqual(results[0], results[1], "bf16 JIT pending-BN 1x1 \(m)x\(ci)x\(co)")
    }
  }

  /// The JIT 1×1 backward making its dz block by block from the pending BN backward gives exactly
  /// what it gives on the stored dz of the BN backward pass (dx with the producer's reductions and a
  /// residual, dw, dγ/dβ), across blocks and threads; da is left as it was.
  func testPendingOutputGradientEqualsStoredGradient() {
    guard BF16JIT.isAvailable else { testArithmeticChoiceFollowsTheCPU(); return }
    let workspace = BF16Workspace()
    for (m, ci, co) in [(1, 3, 5), (3001, 16, 96), (700, 96, 24)] {
      for relu6 in [true, false] {
        let layer = FusedKernelsTests.Layer(rows: m, channels: co, relu6: relu6, seed: 190)
        let producer = FusedKernelsTests.Layer(rows: m, channels: ci, relu6: true, seed: 191)
        let x = randomBuffer(m * ci, seed: 192), w = randomBuffer(ci * co, seed: 193), res = randomBuffer(m * ci, seed: 194)
        let da = randomBuffer(m * co, seed: 195), daCopy = da.array
        let wT = BF16PackedMatrix(k: co, n: ci)
        packBF16B(wT, w.base, transposed: true)
        var gradSums = layer.naiveSums(da: da.base)
        var results: [[Float]] = [], reductions: [[Double]] = []
        for pendingDZ in [false, true] {
          let dx = FloatBuffer(count: m * ci), dw = FloatBuffer(count: ci * co), dz = FloatBuffer(count: m * co)
          let dg = FloatBuffer(count: co), db = FloatBuffer(count: co)
          var red = [Double](repeating: .nan, count: 2 * ci)
          gradSums.withUnsafeMutableBufferPointer { gp in
            red.withUnsafeMutableBufferPointer { rp in
              let g = UnsafePointer(gp.baseAddress!), bn = layer.reduction(gp.baseAddress!), reduce = producer.reduction(rp.baseAddress!)
              if pendingDZ {
                withBatchNormBackward(fromSums: g, da: da.base, bn, dGamma: dg.base, dBeta: db.base, rows: m, channels: co,
                                      training: true) { pending in
                  pointwiseBackwardBF16(dx: dx.base, dw: dw.base, dy: da.base, x: x.base, wT: wT, rows: m, scratch: Scratch(),
                                        workspace: workspace, residual: res.base, reduce: reduce, outputGradient: pending)
                }
              } else {
                batchNormBackward(fromSums: g, dz: dz.base, da: da.base, bn, dGamma: dg.base, dBeta: db.base,
                                  rows: m, channels: co, training: true)
                pointwiseBackwardBF16(dx: dx.base, dw: dw.base, dy: dz.base, x: x.base, wT: wT, rows: m, scratch: Scratch(),
                                      workspace: workspace, residual: res.base, reduce: reduce)
              }
            }
          }
          results.append(dx.array + dw.array + dg.array + db.array)
          reductions.append(red)
        }
        let what = "bf16 JIT 1x1 backward with pending dz \(m)x\(ci)x\(co) relu6=\(relu6)"
        XCTAssertEqual(results[0], results[1], what)
        XCTAssertEqual(reductions[0], reductions[1], what + " reductions")
        XCTAssertEqual(da.array, daCopy, what + ": da must not be overwritten")
      }
    }
  }
}
