// The liveness bookkeeping of a ring socket, fed the event sequences libzmq's monitor produces
// (ACCEPTED/CONNECTED and DISCONNECTED carry the descriptor, HANDSHAKE_SUCCEEDED does not).
import Collective
import XCTest

final class ConnectionTrackerTests: XCTestCase {
  let stray = "127.0.0.1:40001", neighbour = "127.0.0.1:40002"

  func testStrayWithoutAnyFailureEventIsNotTheNeighbourLeaving() {
    // The bug: HTTP or random bytes end with DISCONNECTED alone (no failure event).
    var t = ConnectionTracker()
    t.opened(fd: 7, address: neighbour)
    t.handshakeSucceeded()
    XCTAssertTrue(t.mayBeAuthenticated)
    t.opened(fd: 9, address: stray)
    XCTAssertEqual(t.closed(fd: 9), [.init(address: stray, reason: ConnectionTracker.malformedGreeting)])
    XCTAssertFalse(t.lost)
    XCTAssertEqual(t.strays, 1)
    XCTAssertEqual(t.closed(fd: 7), [])
    XCTAssertTrue(t.lost, "the authenticated connection closed")
  }

  func testFailureReasonGoesWithTheStray() {
    var t = ConnectionTracker()
    t.opened(fd: 7, address: neighbour)
    t.handshakeSucceeded()
    t.opened(fd: 9, address: stray)
    t.handshakeFailed(reason: "credentials refused")
    XCTAssertEqual(t.closed(fd: 9).map(\.reason), ["credentials refused"])
    XCTAssertFalse(t.lost)
  }

  func testStrayClosingWhileTheNeighboursSuccessIsUnattributedIsSettledByItsFirstMessage() {
    var t = ConnectionTracker()
    t.opened(fd: 9, address: stray)       // half-open, before the neighbour
    t.opened(fd: 7, address: neighbour)
    t.handshakeSucceeded()                // whose? 7 or 9
    XCTAssertTrue(t.mayBeAuthenticated)
    XCTAssertEqual(t.closed(fd: 9), [], "ambiguous until more is known")
    XCTAssertFalse(t.lost, "fd 7 may be the neighbour")
    XCTAssertEqual(t.delivered(fd: 7), [.init(address: stray, reason: ConnectionTracker.malformedGreeting)])
    XCTAssertEqual(t.strays, 1)
    XCTAssertFalse(t.lost)
    _ = t.closed(fd: 7)
    XCTAssertTrue(t.lost)
  }

  func testNeighbourDyingBeforeItsFirstMessageIsLostOnceNoCandidateIsLeft() {
    var t = ConnectionTracker()
    t.opened(fd: 9, address: stray)
    t.opened(fd: 7, address: neighbour)
    t.handshakeSucceeded()
    _ = t.closed(fd: 7)
    XCTAssertFalse(t.lost, "fd 9 could still be the authenticated one")
    _ = t.closed(fd: 9)
    XCTAssertTrue(t.lost)
  }

  func testMessageBeforeItsMonitorEventsIsAbsorbed() {
    var t = ConnectionTracker()
    XCTAssertEqual(t.delivered(fd: 7), [])
    XCTAssertFalse(t.lost)
    t.opened(fd: 7, address: neighbour)   // late events of the same connection
    t.handshakeSucceeded()
    t.opened(fd: 9, address: stray)
    XCTAssertEqual(t.closed(fd: 9).count, 1)
    XCTAssertFalse(t.lost)
    _ = t.closed(fd: 7)
    XCTAssertTrue(t.lost)
  }

  func testMessageBeforeItsSuccessEventIsAbsorbed() {
    // ACCEPTED was read, HANDSHAKE_SUCCEEDED not yet, when the first message arrived.
    var t = ConnectionTracker()
    t.opened(fd: 7, address: neighbour)
    XCTAssertEqual(t.delivered(fd: 7), [])
    t.handshakeSucceeded()
    t.opened(fd: 9, address: stray)
    XCTAssertEqual(t.closed(fd: 9).count, 1, "a stray afterwards is settled at once, not left ambiguous")
    XCTAssertFalse(t.lost)
    _ = t.closed(fd: 7)
    XCTAssertTrue(t.lost)
  }

  func testRefusedByTheNextRankIsNeverLost() {
    // Outbound to a listener of another job: connected, refused, closed, again and again.
    var t = ConnectionTracker()
    for fd: Int32 in [5, 5, 6] {
      t.opened(fd: fd, address: neighbour)
      t.handshakeFailed(reason: "credentials refused")
      XCTAssertEqual(t.closed(fd: fd).count, 1)
    }
    XCTAssertFalse(t.lost, "never authenticated")
    XCTAssertFalse(t.mayBeAuthenticated)
  }

  func testReusedDescriptorNumbers() {
    var t = ConnectionTracker()
    t.opened(fd: 7, address: neighbour)
    t.handshakeSucceeded()
    for _ in 0..<100 {  // a port scanner: the same descriptor number over and over
      t.opened(fd: 9, address: stray)
      XCTAssertEqual(t.closed(fd: 9).count, 1)
    }
    XCTAssertEqual(t.strays, 100)
    XCTAssertFalse(t.lost)
  }

  func testRateLimitedLogSummarizesTheRest() {
    var log = RateLimitedLog(burst: 2, window: 10)
    XCTAssertEqual(log.admit("a", now: 0), ["a"])
    XCTAssertEqual(log.admit("b", now: 1), ["b"])
    XCTAssertEqual(log.admit("c", now: 2), [])
    XCTAssertEqual(log.admit("d", now: 3), [])
    let next = log.admit("e", now: 11)
    XCTAssertEqual(next.count, 2)
    XCTAssertTrue(next[0].hasPrefix("2 more such connections were not logged"), next[0])
    XCTAssertEqual(next[1], "e")
    XCTAssertNil(log.flush())
  }
}
