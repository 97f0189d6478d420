// Timeline: only the window of steps is recorded, the file is a Chrome trace, merge keeps every
// rank's events on one clock.
import Foundation
import Telemetry
import XCTest

final class TimelineTests: XCTestCase {
  var dir: String!
  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "timeline-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

  /// Steps `first..<last` of a fake loop: forward and backward on the loop, one bucket on the
  /// communication track.
  func run(_ t: Timeline, steps: Range<Int>) throws {
    t.start(atStep: steps.lowerBound)
    for s in steps {
      try t.beginStep(s)
      t.measure(Timeline.Name.forward) { usleep(200) }
      let b = t.begin()
      usleep(200)
      if t.isRecording { t.record(Timeline.Name.allreduce, track: .communication, start: b!, end: Timeline.now(), args: ["step": s, "bucket": 0]) }
      t.end(Timeline.Name.backward, since: b)
    }
    try t.close()
  }

  func spans(_ events: [[String: Any]]) -> [[String: Any]] { events.filter { $0["ph"] as? String == "X" } }

  func testOnlyTheWindowIsRecordedAndWrittenWhenItEnds() throws {
    let path = "\(dir!)/r0.json"
    let t = Timeline(rank: 0, path: path, warmupSteps: 2, steps: 3)
    t.start(atStep: 10)
    for s in 10..<15 { try t.beginStep(s); t.measure(Timeline.Name.forward) {} }
    XCTAssertFalse(FileManager.default.fileExists(atPath: path))
    try t.beginStep(15)  // the window 12..<15 is over: written now, not at the end of the run
    XCTAssertTrue(FileManager.default.fileExists(atPath: path))
    t.measure(Timeline.Name.forward) {}
    try t.close()
    let events = try Timeline.events(inFile: path)
    XCTAssertEqual(spans(events).map { ($0["args"] as! [String: Any])["step"] as! Int }, [12, 13, 14])
    XCTAssertTrue(events.contains { $0["ph"] as? String == "M" && ($0["args"] as? [String: Any])?["name"] as? String == "rank 0" })
    for e in spans(events) {
      XCTAssertEqual(e["name"] as? String, "forward")
      XCTAssertNotNil(e["ts"] as? NSNumber)
      XCTAssertNotNil(e["dur"] as? NSNumber)
      XCTAssertEqual(e["pid"] as? Int, 0)
    }
  }

  func testMergeKeepsEveryRankOnOneClock() throws {
    let a = Timeline(rank: 0, path: "\(dir!)/0.json", warmupSteps: 1, steps: 2)
    let b = Timeline(rank: 1, path: "\(dir!)/1.json", warmupSteps: 1, steps: 2)
    try run(a, steps: 0..<4)
    try run(b, steps: 0..<4)
    let n = try Timeline.merge(["\(dir!)/0.json", "\(dir!)/1.json"], into: "\(dir!)/all.json")
    let events = try Timeline.events(inFile: "\(dir!)/all.json")
    let s = spans(events)
    XCTAssertEqual(n, 12)  // 2 ranks × 2 steps × (forward, backward, allreduce)
    XCTAssertEqual(Set(s.map { $0["pid"] as! Int }), [0, 1])
    XCTAssertEqual(s.map { ($0["ts"] as! NSNumber).int64Value }.min(), 0, "shifted to start at 0")
    // Rank 1 ran after rank 0: its spans start after rank 0's last one ended.
    let end0 = s.filter { $0["pid"] as! Int == 0 }.map { ($0["ts"] as! NSNumber).int64Value + ($0["dur"] as! NSNumber).int64Value }.max()!
    let start1 = s.filter { $0["pid"] as! Int == 1 }.map { ($0["ts"] as! NSNumber).int64Value }.min()!
    XCTAssertGreaterThanOrEqual(start1, end0)
    XCTAssertEqual(s.filter { $0["tid"] as! Int == Timeline.Track.communication.rawValue }.count, 4)
  }
}
