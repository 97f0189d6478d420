// One job per train dir: the lock names its holder, refuses a second holder, is released on
// exit, and a lock file left by a dead process is taken over with a note.
import Checkpoint
import Foundation
import XCTest

final class TrainDirLockTests: XCTestCase {
  var dir: String!

  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "lock-\(UUID().uuidString.prefix(8))/train"
  }
  override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }

  func testSecondHolderIsRefusedWithTheDirAndTheHolder() throws {
    let first = try TrainDirLock.acquire(dir: dir, host: "hostA")
    XCTAssertNil(first.note)
    let text = try String(contentsOfFile: "\(dir!)/train.lock", encoding: .utf8)
    XCTAssertTrue(text.hasPrefix("pid \(getpid()) host hostA since "), text)
    // flock conflicts between open file descriptions, also within one process.
    XCTAssertThrowsError(try TrainDirLock.acquire(dir: dir, host: "hostB")) { e in
      let m = "\(e)"
      XCTAssertTrue(m.contains("train dir \(dir!) is in use by another job: pid \(getpid()) on host hostA"), m)
      XCTAssertFalse(m.contains("\n"))
    }
    first.release()
    XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir!)/train.lock"), "released on exit")
    let again = try TrainDirLock.acquire(dir: dir)
    XCTAssertNil(again.note, "a cleanly released lock is not stale")
  }

  func testStaleLockOfADeadProcessIsTakenOverWithANote() throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try "pid 4000000 host hostA since 2026-01-01T00:00:00Z\n".write(toFile: "\(dir!)/train.lock", atomically: true, encoding: .utf8)
    let lock = try TrainDirLock.acquire(dir: dir, host: "hostB")
    let note = try XCTUnwrap(lock.note)
    XCTAssertTrue(note.contains("took over the stale lock of train dir \(dir!): pid 4000000 on host hostA (since 2026-01-01T00:00:00Z)"), note)
    XCTAssertTrue(try String(contentsOfFile: "\(dir!)/train.lock", encoding: .utf8).contains("host hostB"))
  }

  func testLockHeldByAnotherProcessIsRefused() throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    FileManager.default.createFile(atPath: "\(dir!)/train.lock", contents: nil)
    let holder = Process()
    holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
    holder.arguments = ["-o", "\(dir!)/train.lock", "sleep", "2"]
    try holder.run()
    defer { holder.terminate(); holder.waitUntilExit() }
    // Wait until util-linux flock holds it (`flock -n` fails), then try once.
    let deadline = Date(timeIntervalSinceNow: 10)
    while Date() < deadline {
      let probe = Process()
      probe.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
      probe.arguments = ["-n", "\(dir!)/train.lock", "true"]
      try probe.run()
      probe.waitUntilExit()
      if probe.terminationStatus != 0 { break }
      usleep(20_000)
    }
    XCTAssertThrowsError(try TrainDirLock.acquire(dir: dir)) { e in
      XCTAssertTrue("\(e)".contains("train dir \(dir!) is in use by another job"), "\(e)")
    }
  }
}
