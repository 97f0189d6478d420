// Softmax cross-entropy with label smoothing, TF semantics (tf.losses.softmax_cross_entropy):
// target = onehot·(1 − ε) + ε/K, loss = mean over the batch of −Σ target·log softmax(logits).
import Foundation

public struct LossResult: Equatable {
  public var loss: Float
  /// Examples whose arg-max logit equals the label (top-1).
  public var correct: Int
}

/// log Σₖ exp(z[k]) of one row of `count` logits, taken around the largest logit so that nothing
/// overflows, and the index of that largest logit (the first one on ties). Shared by the loss, the
/// evaluation loss and `predict`'s probabilities.
public func logSumExp(_ z: UnsafePointer<Float>, count: Int) -> (value: Double, argmax: Int) {
  var maxZ = Double(z[0]), arg = 0
  for k in 1..<max(count, 1) where Double(z[k]) > maxZ { maxZ = Double(z[k]); arg = k }
  var sumExp = 0.0
  for k in 0..<count { sumExp += exp(Double(z[k]) - maxZ) }
  return (log(sumExp) + maxZ, arg)
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
    let (logSum, arg) = logSumExp(z, count: K)
    if arg == label { correct += 1 }
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
