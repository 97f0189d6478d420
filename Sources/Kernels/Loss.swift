// Softmax cross-entropy with label smoothing, TF semantics (tf.losses.softmax_cross_entropy):
// target = onehot·(1 − ε) + ε/K, loss = mean over the batch of −Σ target·log softmax(logits).
import Foundation

public struct LossResult: Equatable {
  public var loss: Float
  /// Examples whose arg-max logit equals the label (top-1).
  public var correct: Int
}

/// Returns the mean loss and writes dlogits = (softmax − target)/N (the gradient of the mean).
@discardableResult
public func softmaxCrossEntropy(dLogits: UnsafeMutablePointer<Float>?, logits: UnsafePointer<Float>,
                                labels: UnsafePointer<Int32>, batch N: Int, classes K: Int,
                                labelSmoothing eps: Float) -> LossResult {
  let onValue = Double(1 - eps) + Double(eps) / Double(K)
  let offValue = Double(eps) / Double(K)
  var total = 0.0
  var correct = 0
  for n in 0..<N {
    let z = logits + n * K
    let label = Int(labels[n])
    precondition(label >= 0 && label < K, "label \(label) outside [0, \(K))")
    var maxZ = Double(z[0]), arg = 0
    for k in 1..<max(K, 1) where Double(z[k]) > maxZ { maxZ = Double(z[k]); arg = k }
    if arg == label { correct += 1 }
    var sumExp = 0.0
    for k in 0..<K { sumExp += exp(Double(z[k]) - maxZ) }
    let logSum = log(sumExp) + maxZ
    var targetDotZ = 0.0
    for k in 0..<K { targetDotZ += (k == label ? onValue : offValue) * Double(z[k]) }
    total += logSum - targetDotZ  // Σ target = 1
    if let dLogits {
      let d = dLogits + n * K
      for k in 0..<K {
        let p = exp(Double(z[k]) - logSum)
        d[k] = Float((p - (k == label ? onValue : offValue)) / Double(N))
      }
    }
  }
  return LossResult(loss: Float(total / Double(max(N, 1))), correct: correct)
}
