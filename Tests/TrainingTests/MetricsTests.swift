// The seed's log line, metrics.jsonl without repeated or torn rows after a restart.
import Foundation
import Training
import XCTest

final class MetricsTests: XCTestCase {
  /// The line the seed's script prints, character for character.
  static let seedLine = "step:73750  epoch:117.89251518342262 ips:11012.314306960132 loss:2.76953125  total_loss:3.094825029373169  lr:0.5281736254692078, train_accuracy:0.5798249840736389"

  func testLogLineIsTheSeedsLine() {
    let r = StepRecord(step: 73750, epoch: 117.89251518342262, ips: 11012.314306960132, loss: 2.76953125,
                       totalLoss: 3.094825029373169, lr: 0.5281736254692078, trainAccuracy: 0.5798249840736389)
    XCTAssertEqual(r.logLine, Self.seedLine)
    // The seed's float32 values come out with the seed's digits when we round ours to float32.
    let rounded = StepRecord.seedRounded(step: 73750, epoch: 117.89251518342262, ips: 11012.314306960132,
                                         loss: 2.7695312, totalLoss: 3.0948250, lr: 0.52817362, trainAccuracy: 0.57982498)
    XCTAssertEqual(rounded.logLine, Self.seedLine)
    // Unpadded: the parsers users have (`step:(\d+)`, `grep -o 'ips:[0-9.]*'`) read every value.
    let small = StepRecord(step: 3, epoch: 0.5, ips: 12.25, loss: 1, totalLoss: 1.5, lr: 0, trainAccuracy: 0.25)
    XCTAssertEqual(small.logLine, "step:3  epoch:0.5 ips:12.25 loss:1.0  total_loss:1.5  lr:0.0, train_accuracy:0.25")
  }

  func testResumeDropsReplayedAndTornRows() throws {
    let dir = NSTemporaryDirectory() + "metrics-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = "\(dir)/metrics.jsonl"
    let w = try MetricsWriter(path: path)
    for s in 1...5 { try w.append(StepRecord(step: s, epoch: 0, ips: 1, loss: 1, totalLoss: 1, lr: 0.1, trainAccuracy: 0)) }
    // A crash in the middle of a line (written by something without our one-write guarantee).
    let h = try XCTUnwrap(FileHandle(forWritingAtPath: path))
    h.seekToEndOfFile(); h.write(Data("{\"epoch\":0,\"ips\":1,\"lo".utf8)); try h.close()
    XCTAssertEqual(try MetricsWriter.resume(path: path, atStep: 3), 3)  // steps 4, 5 and the torn line
    let steps = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
      try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
    }.map { $0["step"] as! Int }
    XCTAssertEqual(steps, [1, 2, 3])
    XCTAssertEqual(try MetricsWriter.resume(path: path, atStep: 3), 0, "nothing more to drop")
    // Appending after the rewrite continues the file.
    try MetricsWriter(path: path).append(StepRecord(step: 4, epoch: 0, ips: 1, loss: 1, totalLoss: 1, lr: 0.1, trainAccuracy: 0))
    XCTAssertTrue(try String(contentsOfFile: path, encoding: .utf8).hasSuffix("\"train_accuracy\":0}\n"))
  }
}
