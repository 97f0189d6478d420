// Softmax cross-entropy with TF label smoothing.
import Foundation
import Kernels
import XCTest

final class LossTests: XCTestCase {
  func testLabelSmoothingMatchesHandComputation() {
    // Two examples, three classes, ε = 0.1: targets are onehot·0.9 + 0.1/3.
    let logits = FloatBuffer(count: 6)
    logits.copy(from: [1, 2, 3, 0.5, -1, 0])
    var labels: [Int32] = [2, 0]
    let eps = 0.1
    var expected = 0.0
    let rows: [[Double]] = [[1, 2, 3], [0.5, -1, 0]]
    for (row, label) in zip(rows, [2, 0]) {
      let lse = log(row.map { exp($0) }.reduce(0, +))
      for k in 0..<3 {
        let t = (k == label ? 1 - eps : 0) + eps / 3
        expected -= t * (row[k] - lse)
      }
    }
    expected /= 2
    let d = FloatBuffer(count: 6)
    let r = labels.withUnsafeMutableBufferPointer {
      softmaxCrossEntropy(dLogits: d.base, logits: logits.base, labels: $0.baseAddress!, batch: 2, classes: 3, labelSmoothing: 0.1)
    }
    XCTAssertEqual(Double(r.loss), expected, accuracy: 1e-6)
    XCTAssertEqual(r.correct, 2)  // argmax 2 for label 2, argmax 0 for label 0
    // Gradient rows sum to zero (softmax and target both sum to 1).
    XCTAssertEqual(Double(d[0] + d[1] + d[2]), 0, accuracy: 1e-7)
    checkGradient(logits, analytic: d, h: 1e-3, atol: 1e-4, rtol: 1e-3, "loss") {
      Double(labels.withUnsafeMutableBufferPointer {
        softmaxCrossEntropy(dLogits: nil, logits: logits.base, labels: $0.baseAddress!, batch: 2, classes: 3, labelSmoothing: 0.1)
      }.loss)
    }
  }

  func testNoSmoothingIsPlainCrossEntropyAndStableForLargeLogits() {
    let logits = FloatBuffer(count: 4)
    logits.copy(from: [1000, 0, 0, 1000])
    var labels: [Int32] = [0, 0]
    let r = labels.withUnsafeMutableBufferPointer {
      softmaxCrossEntropy(dLogits: nil, logits: logits.base, labels: $0.baseAddress!, batch: 2, classes: 2, labelSmoothing: 0)
    }
    // First example: loss ≈ 0; second: ≈ 1000.
    XCTAssertEqual(Double(r.loss), 500, accuracy: 1e-3)
    XCTAssertTrue(r.loss.isFinite)
  }
}
