// 1×1 convolution through cblas_sgemm (all three products) and the logits layer.
import Kernels
import XCTest

final class PointwiseTests: XCTestCase {
  /// Rows split over 1, 2 and 3 threads (our threads, each a single-threaded BLAS call; dw summed
  /// from per-thread partials) must match the naive loops, including uneven splits.
  func testGemmMatchesNaive() {
    for threads in [1, 2, 3] {
      Compute.setThreads(threads)
      defer { Compute.setThreads(1) }
      checkGemmShapes("threads \(threads)")
    }
  }

  func checkGemmShapes(_ label: String) {
    // One scratch for all shapes, full of NaN first: partial sums must never read stale contents.
    let scratch = Scratch()
    scratch.uninitialized(1 << 20).update(repeating: .nan, count: 1 << 20)
    for (m, ci, co) in [(1, 1, 1), (37, 16, 96), (200, 24, 8), (5, 320, 64), (1001, 24, 144), (130, 96, 16)] {
      let x = randomBuffer(m * ci, seed: 1), w = randomBuffer(ci * co, seed: 2), dy = randomBuffer(m * co, seed: 3)
      let y = FloatBuffer(count: m * co), yRef = FloatBuffer(count: m * co)
      pointwiseForward(y: y.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
      pointwiseForwardNaive(y: yRef.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
      assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, "1x1 forward \(m)x\(ci)x\(co) \(label)")
      let dx = FloatBuffer(count: m * ci), dxRef = FloatBuffer(count: m * ci)
      let dw = randomBuffer(ci * co, seed: 4), dwRef = FloatBuffer(count: ci * co)
      dwRef.copy(from: dw.array)
      pointwiseBackward(dx: dx.base, dw: dw.base, dy: dy.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                        scratch: scratch)
      pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co)
      assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, "1x1 dx \(m)x\(ci)x\(co) \(label)")
      assertClose(dw, dwRef, atol: 1e-3, rtol: 1e-4, "1x1 dw \(m)x\(ci)x\(co) \(label)")
    }
  }

  func testGradientsByFiniteDifferences() {
    let (m, ci, co) = (12, 6, 5)
    let x = randomBuffer(m * ci, seed: 8), w = randomBuffer(ci * co, seed: 9), r = randomBuffer(m * co, seed: 10)
    let dx = FloatBuffer(count: m * ci), dw = FloatBuffer(count: ci * co)
    pointwiseBackward(dx: dx.base, dw: dw.base, dy: r.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co,
                      scratch: Scratch())
    let y = FloatBuffer(count: m * co)
    let f = { () -> Double in
      pointwiseForward(y: y.base, x: x.base, w: w.base, rows: m, inChannels: ci, outChannels: co); return dot(r, y.base)
    }
    checkGradient(x, analytic: dx, "1x1 dx", f: f)
    checkGradient(w, analytic: dw, "1x1 dw", f: f)
  }

  func testLogitsLayerWithBias() {
    let (n, c, k) = (4, 7, 3)
    let x = randomBuffer(n * c, seed: 11), w = randomBuffer(c * k, seed: 12), b = randomBuffer(k, seed: 13)
    let r = randomBuffer(n * k, seed: 14)
    let y = FloatBuffer(count: n * k)
    denseForward(y: y.base, x: x.base, w: w.base, b: b.base, rows: n, inChannels: c, outChannels: k)
    for i in 0..<n { for j in 0..<k {
      var s = Double(b[j])
      for q in 0..<c { s += Double(x[i * c + q]) * Double(w[q * k + j]) }
      XCTAssertEqual(Double(y[i * k + j]), s, accuracy: 1e-4)
    } }
    let dx = FloatBuffer(count: n * c), dw = FloatBuffer(count: c * k), db = FloatBuffer(count: k)
    denseBackward(dx: dx.base, dw: dw.base, db: db.base, dy: r.base, x: x.base, w: w.base, rows: n, inChannels: c, outChannels: k,
                  scratch: Scratch())
    let f = { () -> Double in
      denseForward(y: y.base, x: x.base, w: w.base, b: b.base, rows: n, inChannels: c, outChannels: k); return dot(r, y.base)
    }
    checkGradient(x, analytic: dx, "logits dx", f: f)
    checkGradient(w, analytic: dw, "logits dw", f: f)
    checkGradient(b, analytic: db, "logits db", f: f)
  }

  /// The logits layer's products split by columns over 1–3 threads (slices on 16-column boundaries,
  /// some empty for narrow layers) against the naive loops: y with its bias, dx overwritten, dw and db
  /// accumulated.
  func testLogitsLayerSplitByColumnsMatchesNaive() {
    defer { Compute.setThreads(1) }
    for threads in [1, 2, 3] {
      Compute.setThreads(threads)
      for (n, c, k) in [(32, 1280, 1001), (3, 400, 130), (2, 20, 7), (4, 300, 1000), (32, 1280, 10), (64, 1280, 10)] {
        let what = "threads \(threads) \(n)x\(c)x\(k)"
        let x = randomBuffer(n * c, seed: 21), w = randomBuffer(c * k, seed: 22), b = randomBuffer(k, seed: 23)
        let dy = randomBuffer(n * k, seed: 24)
        let y = FloatBuffer(count: n * k), yRef = FloatBuffer(count: n * k)
        denseForward(y: y.base, x: x.base, w: w.base, b: b.base, rows: n, inChannels: c, outChannels: k)
        pointwiseForwardNaive(y: yRef.base, x: x.base, w: w.base, rows: n, inChannels: c, outChannels: k)
        for i in 0..<(n * k) { yRef[i] += b[i % k] }
        assertClose(y, yRef, atol: 1e-4, rtol: 1e-4, what + " y")
        let dx = FloatBuffer(count: n * c), dxRef = FloatBuffer(count: n * c)
        dx.base.update(repeating: .nan, count: n * c)
        let dw = randomBuffer(c * k, seed: 25), dwRef = FloatBuffer(count: c * k)
        dwRef.copy(from: dw.array)
        let db = randomBuffer(k, seed: 26), dbRef = FloatBuffer(count: k)
        dbRef.copy(from: db.array)
        denseBackward(dx: dx.base, dw: dw.base, db: db.base, dy: dy.base, x: x.base, w: w.base, rows: n, inChannels: c,
                      outChannels: k, scratch: Scratch())
        pointwiseBackwardNaive(dx: dxRef.base, dw: dwRef.base, dy: dy.base, x: x.base, w: w.base, rows: n, inChannels: c,
                               outChannels: k)
        for i in 0..<(n * k) { dbRef[i % k] += dy[i] }
        assertClose(dx, dxRef, atol: 1e-4, rtol: 1e-4, what + " dx")
        assertClose(dw, dwRef, atol: 1e-4, rtol: 1e-4, what + " dw")
        assertClose(db, dbRef, atol: 1e-5, rtol: 1e-5, what + " db")
      }
    }
  }
}
