// Learning-rate schedules of the seed's train script and TF-slim's train_image_classifier.py.
import Foundation

public enum DecayType: String, CaseIterable, Sendable {
  case fixed
  case cosineAnnealing = "cosine_annealing"
  case exponential
  case polynomial
}

public struct LearningRateSchedule: Sendable, Equatable {
  public var base: Double
  public var decay: DecayType
  public var stepsPerEpoch: Int
  public var totalSteps: Int
  public var warmupEpochs: Double

  /// slim: learning_rate_decay_factor 0.94 every num_epochs_per_decay = 2 epochs, staircase.
  public static let exponentialFactor = 0.94
  public static let epochsPerDecay = 2.0
  /// slim: end_learning_rate for polynomial decay (power 1, no cycle).
  public static let polynomialEnd = 0.0001

  public init(base: Double, decay: DecayType, stepsPerEpoch: Int, totalSteps: Int, warmupEpochs: Double) {
    self.base = base; self.decay = decay
    self.stepsPerEpoch = max(1, stepsPerEpoch); self.totalSteps = max(1, totalSteps)
    self.warmupEpochs = warmupEpochs
  }

  /// For the start-up log: the base rate, the decay and the warm-up, which only cosine_annealing
  /// applies (as in the seed); a warm-up given with another decay is named as ignored.
  public var summary: String {
    let head = "lr \(base) \(decay.rawValue)"
    guard warmupEpochs > 0 else { return head }
    return decay == .cosineAnnealing ? "\(head) warm-up \(warmupEpochs) epochs"
      : "\(head) (no warm-up: --warmup-epochs \(warmupEpochs) applies to cosine_annealing only)"
  }

  /// The rate used for the update at global step `step` (0-based).
  public func rate(at step: Int) -> Double {
    let s = Double(step)
    switch decay {
    case .fixed:
      return base
    case .cosineAnnealing:
      // The seed: cosine over whole epochs (step floored to an epoch boundary), warmed up linearly,
      // taking the smaller of the two.
      let t = Double(totalSteps)
      let epochStart = Double(step / stepsPerEpoch * stepsPerEpoch)
      let cosine = base * 0.5 * (1 + cos(Double.pi * min(epochStart, t) / t))
      guard warmupEpochs > 0 else { return cosine }
      let warmup = base * s / (Double(stepsPerEpoch) * warmupEpochs)
      return min(warmup, cosine)
    case .exponential:
      let decaySteps = max(1, Int(Double(stepsPerEpoch) * Self.epochsPerDecay))
      return base * pow(Self.exponentialFactor, Double(step / decaySteps))
    case .polynomial:
      let t = Double(totalSteps)
      return (base - Self.polynomialEnd) * (1 - min(s, t) / t) + Self.polynomialEnd
    }
  }
}
