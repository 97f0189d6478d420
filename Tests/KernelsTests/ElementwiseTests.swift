// ReLU6, residual add, global average pool, dropout.
import Kernels
import XCTest

final class ElementwiseTests: XCTestCase {
  func testRelu6ForwardAndTensorFlowGradient() {
    let x = FloatBuffer(count: 6)
    x.copy(from: [-1, 0, 0.5, 5.9, 6, 7])
    let y = FloatBuffer(count: 6), dx = FloatBuffer(count: 6), dy = FloatBuffer(count: 6)
    dy.copy(from: [1, 1, 1, 1, 1, 1])
    relu6Forward(y: y.base, x: x.base, count: 6)
    XCTAssertEqual(y.array, [0, 0, 0.5, 5.9, 6, 6])
    relu6Backward(dx: dx.base, dy: dy.base, y: y.base, count: 6)
    XCTAssertEqual(dx.array, [0, 0, 1, 1, 0, 0])  // Relu6Grad: 0 < x < 6
  }

  func testRelu6FiniteDifferences() {
    // Values kept away from 0 and 6 so ±h never crosses a kink.
    let x = FloatBuffer(count: 20)
    for i in 0..<20 { x[i] = Float(i) * 0.45 - 1.7 }
    let r = randomBuffer(20, seed: 1)
    let y = FloatBuffer(count: 20), dx = FloatBuffer(count: 20)
    relu6Forward(y: y.base, x: x.base, count: 20)
    relu6Backward(dx: dx.base, dy: r.base, y: y.base, count: 20)
    checkGradient(x, analytic: dx, h: 1e-3, "relu6") { relu6Forward(y: y.base, x: x.base, count: 20); return dot(r, y.base) }
  }

  func testResidualAdd() {
    let a = randomBuffer(100_001, seed: 2), b = randomBuffer(100_001, seed: 3), out = FloatBuffer(count: 100_001)
    Compute.setThreads(2)
    defer { Compute.setThreads(1) }
    addForward(out: out.base, a.base, b.base, count: 100_001)
    for i in stride(from: 0, to: 100_001, by: 997) { XCTAssertEqual(out[i], a[i] + b[i]) }
    XCTAssertEqual(out[100_000], a[100_000] + b[100_000])
    addInPlace(a.base, b.base, count: 100_001)
    XCTAssertEqual(a.array, out.array)
  }

  func testGlobalAveragePool() {
    let (n, p, c) = (2, 9, 5)
    let x = randomBuffer(n * p * c, seed: 4), r = randomBuffer(n * c, seed: 5)
    let y = FloatBuffer(count: n * c), dx = FloatBuffer(count: n * p * c)
    globalAvgPoolForward(y: y.base, x: x.base, batch: n, pixels: p, channels: c)
    var s: Float = 0
    for q in 0..<p { s += x[(1 * p + q) * c + 3] }
    XCTAssertEqual(y[1 * c + 3], s / Float(p), accuracy: 1e-6)
    globalAvgPoolBackward(dx: dx.base, dy: r.base, batch: n, pixels: p, channels: c)
    checkGradient(x, analytic: dx, "pool") {
      globalAvgPoolForward(y: y.base, x: x.base, batch: n, pixels: p, channels: c); return dot(r, y.base)
    }
  }

  func testDropoutKeepsFractionScalesAndMasksGradient() {
    let count = 200_000
    let x = FloatBuffer(count: count)
    for i in 0..<count { x[i] = 1 }
    let y = FloatBuffer(count: count), mask = FloatBuffer(count: count)
    var rng = RandomState(seed: 6)
    dropoutForward(y: y.base, mask: mask.base, x: x.base, count: count, keep: 0.8, rng: &rng)
    var kept = 0
    for i in 0..<count {
      if y[i] != 0 { kept += 1; XCTAssertEqual(y[i], 1 / 0.8, accuracy: 1e-6) }
    }
    // Binomial(200000, 0.8): std ≈ 179, so ±1% is over 10 standard deviations.
    XCTAssertEqual(Double(kept) / Double(count), 0.8, accuracy: 0.01)
    let dy = randomBuffer(count, seed: 7), dx = FloatBuffer(count: count)
    dropoutBackward(dx: dx.base, dy: dy.base, mask: mask.base, count: count)
    for i in stride(from: 0, to: count, by: 101) { XCTAssertEqual(dx[i], y[i] == 0 ? 0 : dy[i] / 0.8, accuracy: 1e-6) }
    // Same seed, same mask.
    var rng2 = RandomState(seed: 6)
    let y2 = FloatBuffer(count: count), mask2 = FloatBuffer(count: count)
    dropoutForward(y: y2.base, mask: mask2.base, x: x.base, count: count, keep: 0.8, rng: &rng2)
    XCTAssertEqual(y.array, y2.array)
  }
}
