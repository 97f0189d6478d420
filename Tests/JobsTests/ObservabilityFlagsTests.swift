// The observability flags (issue 13): timeline file and window, summaries on by default.
import ArgumentParser
import Jobs
import Telemetry
import XCTest

final class ObservabilityFlagsTests: XCTestCase {
  func testTimelineAndSummaryFlags() throws {
    let d = try TrainFlags.parse(["--dataset-dir", "/d", "--max-epoch", "3"])
    XCTAssertNil(d.timeline)
    XCTAssertEqual(d.timelineSteps, Timeline.defaultSteps)
    XCTAssertFalse(d.noSummaries)
    let f = try TrainFlags.parse(["--dataset-dir", "/d", "--max-epoch", "3", "--timeline_steps", "7", "--timeline", "/t.json", "--no-summaries"])
    XCTAssertNoThrow(try f.checkForTraining())
    XCTAssertEqual(f.timeline, "/t.json")
    XCTAssertEqual(f.timelineSteps, 7)
    XCTAssertTrue(f.noSummaries)
    // Parsing runs validate(), which is checkForTraining().
    XCTAssertThrowsError(try TrainFlags.parse(["--dataset-dir", "/d", "--max-epoch", "3", "--timeline-steps", "0"])) {
      XCTAssertTrue(TrainFlags.message(for: $0).contains("--timeline-steps"), TrainFlags.message(for: $0))
    }
  }
}
