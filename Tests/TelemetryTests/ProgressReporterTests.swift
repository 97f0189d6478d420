// ProgressReporter: plain lines every ~10 % off a terminal, a redrawn bar with rate and ETA on one,
// silence for work that ends within the quiet period.
import Foundation
import Telemetry
import XCTest

final class ProgressReporterTests: XCTestCase {
  /// A clock the test moves by hand, and everything written.
  final class Fake {
    var now = 0.0
    var out = ""
  }

  func make(_ fake: Fake, total: Int?, interactive: Bool, unit: ProgressReporter.Unit = .items("images")) -> ProgressReporter {
    ProgressReporter("convert train", total: total, unit: unit, interactive: interactive,
             write: { fake.out += $0 }, clock: { fake.now })
  }

  func testPlainLinesEveryTenthWithRateAndETA() throws {
    let fake = Fake()
    let p = make(fake, total: 1000, interactive: false)
    for i in 0..<1000 { fake.now = Double(i + 1) / 100; p.advance() }  // 100 images/s for 10 s
    p.finish()
    let lines = fake.out.split(separator: "\n").map(String.init)
    // Quiet for the first second (10 %), then one line per tenth up to 90 %, then the final line.
    XCTAssertEqual(lines.count, 10, fake.out)
    XCTAssertFalse(fake.out.contains("\r"))
    let pattern = try NSRegularExpression(pattern: #"^convert train: (\d+)% (\d+)/1000 images, ([0-9.]+) images/s, (ETA|)\s?(\d+:\d\d)$"#)
    for l in lines {
      XCTAssertNotNil(pattern.firstMatch(in: l, range: NSRange(l.startIndex..., in: l)), l)
    }
    XCTAssertTrue(lines[0].hasPrefix("convert train: 10% 100/1000 images, 100 images/s, ETA 0:09"), lines[0])
    XCTAssertTrue(lines[4].hasPrefix("convert train: 50% 500/1000"), lines[4])
    XCTAssertEqual(lines.last, "convert train: 100% 1000/1000 images, 100 images/s, 0:10")
  }

  func testTerminalBarRedrawsInPlace() {
    let fake = Fake()
    let p = make(fake, total: 200, interactive: true, unit: .bytes)
    for i in 0..<200 { fake.now = Double(i + 1) / 20; p.advance(by: 1) }
    p.finish()
    XCTAssertTrue(fake.out.hasPrefix("\rconvert train: ["), fake.out)
    XCTAssertTrue(fake.out.contains("ETA"))
    XCTAssertTrue(fake.out.contains("B/s"))
    XCTAssertTrue(fake.out.hasSuffix("\n"))
    XCTAssertEqual(fake.out.filter { $0 == "\n" }.count, 1, "one line, redrawn")
    // At most one redraw per 0.2 s of a 10 s job, after the first second.
    let draws = fake.out.filter { $0 == "\r" }.count
    XCTAssertGreaterThan(draws, 20)
    XCTAssertLessThanOrEqual(draws, 47)
    XCTAssertTrue(fake.out.contains("[" + String(repeating: "#", count: 30) + "]"), "full bar at the end")
  }

  func testShortWorkPrintsNothing() {
    let fake = Fake()
    let p = make(fake, total: 50, interactive: false)
    for i in 0..<50 { fake.now = Double(i + 1) / 100; p.advance() }
    p.finish()
    XCTAssertEqual(fake.out, "")
  }

  func testUnknownTotalPrintsCountsAndRate() {
    let fake = Fake()
    let p = make(fake, total: nil, interactive: false)
    for i in 0..<300 { fake.now = Double(i + 1) / 10; p.advance() }
    p.finish()
    let lines = fake.out.split(separator: "\n")
    XCTAssertGreaterThanOrEqual(lines.count, 3, fake.out)
    XCTAssertTrue(lines.allSatisfy { $0.contains(" images, 10.0 images/s") }, fake.out)
  }
}
