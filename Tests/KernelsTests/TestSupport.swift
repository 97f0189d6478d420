// Shared helpers: random tensors, tolerant comparisons that report the caller's line, and
// central finite differences of a scalar function of a buffer.
import Kernels
import XCTest

func randomBuffer(_ count: Int, seed: UInt64, scale: Float = 1, offset: Float = 0) -> FloatBuffer {
  var rng = RandomState(seed: seed)
  let b = FloatBuffer(count: count)
  for i in 0..<count { b[i] = Float(rng.normal()) * scale + offset }
  return b
}

/// Asserts |a − b| ≤ atol + rtol·|b| elementwise; prints the worst element.
func assertClose(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int, atol: Float, rtol: Float,
                 _ what: String, file: StaticString = #filePath, line: UInt = #line) {
  var worst = 0, worstExcess: Float = -.infinity
  for i in 0..<count {
    let excess = abs(a[i] - b[i]) - (atol + rtol * abs(b[i]))
    if excess > worstExcess || a[i].isNaN { worstExcess = a[i].isNaN ? .infinity : excess; worst = i }
  }
  XCTAssertLessThanOrEqual(worstExcess, 0,
    "\(what): element \(worst) is \(count > 0 ? a[worst] : 0), expected \(count > 0 ? b[worst] : 0) (atol \(atol), rtol \(rtol))",
    file: file, line: line)
}

func assertClose(_ a: FloatBuffer, _ b: FloatBuffer, atol: Float, rtol: Float, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
  XCTAssertEqual(a.count, b.count, file: file, line: line)
  assertClose(a.base, b.base, count: min(a.count, b.count), atol: atol, rtol: rtol, what, file: file, line: line)
}

/// Checks `analytic[i]` ≈ (f(x + h·eᵢ) − f(x − h·eᵢ)) / 2h for up to `samples` indices of x.
/// f returns a double-precision scalar (usually Σ r·forward(x) for a fixed random r).
func checkGradient(_ x: FloatBuffer, analytic: FloatBuffer, samples: Int = 24, h: Float = 1e-2,
                   atol: Double = 2e-3, rtol: Double = 1e-2, seed: UInt64 = 99, _ what: String,
                   file: StaticString = #filePath, line: UInt = #line, f: () -> Double) {
  var rng = RandomState(seed: seed)
  let indices = x.count <= samples ? Array(0..<x.count) : (0..<samples).map { _ in Int(rng.next() % UInt64(x.count)) }
  for i in indices {
    let saved = x[i]
    x[i] = saved + h
    let up = f()
    x[i] = saved - h
    let down = f()
    x[i] = saved
    let numeric = (up - down) / (2 * Double(h))
    let a = Double(analytic[i])
    XCTAssertLessThanOrEqual(abs(numeric - a), atol + rtol * max(abs(numeric), abs(a)),
                             "\(what)[\(i)]: analytic \(a), finite difference \(numeric)", file: file, line: line)
  }
}

/// Σ r·y in double.
func dot(_ r: FloatBuffer, _ y: UnsafePointer<Float>) -> Double {
  var s = 0.0
  for i in 0..<r.count { s += Double(r[i]) * Double(y[i]) }
  return s
}

/// Runs `body` once per instruction set this CPU runs (AVX-512 and AVX2 on an AVX-512 machine), with
/// the kernels switched to it; restores the start-up choice after.
func forEachInstructionSet(_ body: (InstructionSet) -> Void) {
  let saved = KernelISA.current
  defer { KernelISA.use(saved) }
  for isa in KernelISA.available {
    KernelISA.use(isa)
    body(isa)
  }
}

/// Per-channel mean and biased variance of x[M, C], two-pass in double.
func naiveMoments(_ x: UnsafePointer<Float>, rows M: Int, channels C: Int) -> (mean: [Double], variance: [Double]) {
  var mean = [Double](repeating: 0, count: C), variance = [Double](repeating: 0, count: C)
  for r in 0..<M { for c in 0..<C { mean[c] += Double(x[r * C + c]) } }
  for c in 0..<C { mean[c] /= Double(M) }
  for r in 0..<M { for c in 0..<C { let d = Double(x[r * C + c]) - mean[c]; variance[c] += d * d } }
  for c in 0..<C { variance[c] /= Double(M) }
  return (mean, variance)
}

/// Checks shifted sums (Σ(y − shift), Σ(y − shift)²) against the two-pass moments of y.
func assertStatistics(shift: FloatBuffer, sums: UnsafePointer<Double>, of y: UnsafePointer<Float>, rows M: Int,
                      channels C: Int, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
  let (mean, variance) = naiveMoments(y, rows: M, channels: C)
  for c in 0..<C {
    let ms = sums[c] / Double(M)
    let m = ms + Double(shift[c]), v = sums[C + c] / Double(M) - ms * ms
    XCTAssertEqual(m, mean[c], accuracy: 1e-4 + 1e-5 * abs(mean[c]), "\(what) mean[\(c)]", file: file, line: line)
    XCTAssertEqual(v, variance[c], accuracy: 1e-4 + 1e-4 * variance[c], "\(what) variance[\(c)]", file: file, line: line)
  }
}

/// Per-channel BN backward reductions (Σg, Σg·x̂) against expected ones, each within 1e-3 + 1e-4·|expected|.
func assertSums(_ sums: [Double], _ expected: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
  XCTAssertEqual(sums.count, expected.count, file: file, line: line)
  for i in sums.indices {
    XCTAssertEqual(sums[i], expected[i], accuracy: 1e-3 + 1e-4 * abs(expected[i]), "\(what) sum[\(i)]", file: file, line: line)
  }
}
