// Test support shared by the test targets: ranks as real threads (a rank blocked in a collective
// must not starve the others, as it could on a small dispatch pool), with a hang reported as a
// test failure instead of a stuck run.
import Foundation
import XCTest

/// Runs `body(rank)` on `n` threads and returns each rank's error, if any. Fails the test if a
/// rank does not return within `timeout` seconds.
public func runRanks(_ n: Int, timeout: Double = 60, file: StaticString = #filePath, line: UInt = #line,
                     _ body: @escaping @Sendable (Int) throws -> Void) -> [Error?] {
  let results = ResultBox(n)
  let group = DispatchGroup()
  for r in 0..<n {
    group.enter()
    let t = Thread {
      do { try body(r) } catch { results.set(r, error) }
      group.leave()
    }
    t.stackSize = 1 << 22
    t.start()
  }
  if group.wait(timeout: .now() + timeout) == .timedOut {
    XCTFail("ranks did not finish within \(timeout) s (a hang)", file: file, line: line)
  }
  return results.all
}

/// Each rank's error, written from the rank threads.
public final class ResultBox: @unchecked Sendable {
  private let lock = NSLock()
  private var errors: [Error?]
  public init(_ n: Int) { errors = Array(repeating: nil, count: n) }
  public func set(_ r: Int, _ e: Error) { lock.lock(); errors[r] = e; lock.unlock() }
  public var all: [Error?] { lock.lock(); defer { lock.unlock() }; return errors }
}
