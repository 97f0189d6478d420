// What a logged step tells the user: the seed's console line, one JSON object per line in
// metrics.jsonl, and observers (TensorBoard event files) on rank 0.
import Common
import Foundation

/// One logged step: the seed's console line and one JSON object per line in metrics.jsonl.
public struct StepRecord: Codable, Sendable, Equatable {
  public var step: Int
  public var epoch: Double
  public var ips: Double
  public var loss: Double
  public var totalLoss: Double
  public var lr: Double
  public var trainAccuracy: Double

  enum CodingKeys: String, CodingKey {
    case step, epoch, ips, loss, lr
    case totalLoss = "total_loss"
    case trainAccuracy = "train_accuracy"
  }

  public init(step: Int, epoch: Double, ips: Double, loss: Double, totalLoss: Double, lr: Double, trainAccuracy: Double) {
    self.step = step; self.epoch = epoch; self.ips = ips; self.loss = loss; self.totalLoss = totalLoss
    self.lr = lr; self.trainAccuracy = trainAccuracy
  }

  /// The seed's values: loss, total_loss, lr and train_accuracy are float32 tensors there (printed
  /// as Python floats), epoch and ips Python floats. Rounding ours the same way gives the same
  /// digits (`3.094825029373169`, not `3.0948250293731689...` or `3.094825`).
  public static func seedRounded(step: Int, epoch: Double, ips: Double, loss: Double, totalLoss: Double,
                                 lr: Double, trainAccuracy: Double) -> StepRecord {
    func f32(_ x: Double) -> Double { Double(Float(x)) }
    return StepRecord(step: step, epoch: epoch, ips: ips, loss: f32(loss), totalLoss: f32(totalLoss), lr: f32(lr),
                      trainAccuracy: f32(trainAccuracy))
  }

  /// The seed's line, separators as its print statement has them:
  /// `step:73750  epoch:117.89251518342262 ips:11012.314306960132 loss:2.76953125  total_loss:3.094825029373169  lr:0.5281736254692078, train_accuracy:0.5798249840736389`
  /// Numbers are Python's repr: the shortest digits that round-trip (Swift's `description`).
  public var logLine: String {
    "step:\(step)  epoch:\(epoch.description) ips:\(ips.description) loss:\(loss.description)  "
      + "total_loss:\(totalLoss.description)  lr:\(lr.description), train_accuracy:\(trainAccuracy.description)"
  }
}

/// Told about the run on rank 0 (TensorBoard event files, in Jobs).
public protocol TrainObserver: AnyObject {
  /// The loop starts at `step`; `resumed` when it continues from a checkpoint (later steps replay).
  func started(atStep step: Int, resumed: Bool) throws
  /// A logged step, after its line was printed and written to metrics.jsonl.
  func logged(_ record: StepRecord) throws
}

/// metrics.jsonl: appended one whole line per write(2) on an O_APPEND descriptor, so a crash
/// leaves at most a missing last line, never a torn one in the middle; `resume` drops what a
/// resumed run will log again.
public final class MetricsWriter {
  public var path: String { file.path }
  private let file: AppendOnlyFile
  private let encoder: JSONEncoder

  public init(path: String) throws {
    file = try AppendOnlyFile(path: path)
    encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
  }

  public func append(_ r: StepRecord) throws {
    var line = try encoder.encode(r)
    line.append(0x0A)
    try file.append(line)
  }

  /// Keeps the rows a run resumed at `step` will not log again (step ≤ `step`) and drops a torn
  /// or unreadable line an old crash left; rewritten atomically (temporary file + rename).
  /// Returns the number of rows dropped.
  @discardableResult
  public static func resume(path: String, atStep step: Int) throws -> Int {
    guard let data = FileManager.default.contents(atPath: path) else { return 0 }
    var kept = Data(), dropped = 0
    var lines = data.split(separator: 0x0A, omittingEmptySubsequences: false)
    // The piece after the last newline is a torn line (or empty).
    let tail = lines.removeLast()
    if !tail.isEmpty { dropped += 1 }
    for line in lines where !line.isEmpty {
      guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
            let s = object["step"] as? Int, s <= step else { dropped += 1; continue }
      kept.append(contentsOf: line)
      kept.append(0x0A)
    }
    if dropped == 0 { return 0 }
    try AtomicFile.write(kept, to: path)
    return dropped
  }
}
