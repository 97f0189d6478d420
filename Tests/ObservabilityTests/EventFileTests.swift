// TensorBoard event files read back with our own reader: TFRecord framing (both CRCs), the
// file_version record first, float32 simple values at their steps.
import DataPipeline
import Foundation
import Observability
import XCTest

final class EventFileTests: XCTestCase {
  var dir: String!
  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "events-\(UUID().uuidString)"
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

  func testScalarsRoundTrip() throws {
    let t = Date(timeIntervalSince1970: 1_796_000_000.25)
    let w = try EventFileWriter(directory: dir, time: t, host: "testhost")
    XCTAssertEqual((w.path as NSString).lastPathComponent, "events.out.tfevents.1796000000.testhost")
    try w.addScalars([("loss", 2.76953125), ("learning_rate", 0.1)], step: 10, wallTime: t)
    try w.addSessionStart(step: 10)
    try w.addScalars([("loss", 1.5), ("learning_rate", 0.05)], step: 20)

    // Records as TFRecords: every CRC checks, and each payload parses as an Event.
    XCTAssertEqual(try TFRecord.readAll(path: w.path).count, 4)
    let events = try EventFileReader.events(path: w.path)
    XCTAssertEqual(events.first?.fileVersion, "brain.Event:2")
    XCTAssertEqual(events.first?.wallTime, t.timeIntervalSince1970)
    XCTAssertEqual(events[2].sessionLog.status, .start)
    XCTAssertEqual(events[2].step, 10)
    let scalars = try EventFileReader.scalars(path: w.path)
    XCTAssertEqual(scalars.map(\.tag), ["loss", "learning_rate", "loss", "learning_rate"])
    XCTAssertEqual(scalars.map(\.step), [10, 10, 20, 20])
    XCTAssertEqual(scalars.map(\.value), [2.76953125, Float(0.1), 1.5, 0.05])
    XCTAssertEqual(EventFileReader.files(in: dir), [w.path])

    // A second writer in the same second does not overwrite the first file.
    let w2 = try EventFileWriter(directory: dir, time: t, host: "testhost")
    XCTAssertNotEqual(w2.path, w.path)
    XCTAssertEqual(try EventFileReader.scalars(path: w.path).count, 4)
  }

  /// Written event by event: the file holds every event the moment addScalars returns (a crash
  /// loses nothing already added).
  func testEveryEventIsOnDiskAtOnce() throws {
    let w = try EventFileWriter(directory: dir)
    for s in 1...3 {
      try w.addScalars([("loss", Double(s))], step: s)
      XCTAssertEqual(try EventFileReader.scalars(path: w.path).map(\.step), Array(1...s))
    }
  }

  func testACorruptEventFileIsAnErrorNamingIt() throws {
    let w = try EventFileWriter(directory: dir)
    try w.addScalars([("loss", 1)], step: 1)
    var bytes = try Data(contentsOf: URL(fileURLWithPath: w.path))
    bytes[bytes.count - 6] ^= 0xFF
    try bytes.write(to: URL(fileURLWithPath: w.path))
    XCTAssertThrowsError(try EventFileReader.scalars(path: w.path)) { e in
      XCTAssertTrue("\(e)".contains(w.path), "\(e)")
    }
  }
}
