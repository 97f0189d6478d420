// Ranks as threads of one process, for tests (gloo's in-process store + pairs): each rank has a
// mailbox the previous rank appends to. Same wire header as the socket transport, so tag and
// ordering checks are exercised by the thread tests too.

import Foundation

/// The shared medium of an in-process group: one mailbox per rank.
public final class InProcessFabric: @unchecked Sendable {
  public let size: Int
  fileprivate let boxes: [Mailbox]

  public init(size: Int) {
    precondition(size >= 1)
    self.size = size
    boxes = (0..<size).map { _ in Mailbox() }
  }

  /// The transport of rank `rank`; create each once.
  public func transport(rank: Int) -> RingTransport { InProcessTransport(fabric: self, rank: rank) }
}

fileprivate final class Mailbox {
  let cond = NSCondition()
  var messages: [[UInt8]] = []
  var head = 0
  var closedBySender = false
}

final class InProcessTransport: RingTransport {
  let rank: Int
  let size: Int
  private let fabric: InProcessFabric
  private var sent: UInt64 = 0
  private var received: UInt64 = 0
  private var timeout = 60.0
  private var phase = "collective"
  private var failed = false

  fileprivate init(fabric: InProcessFabric, rank: Int) {
    self.fabric = fabric
    self.rank = rank
    self.size = fabric.size
  }

  func describe(rank: Int) -> String { "rank \(rank) (in-process)" }
  func setTimeout(_ seconds: Double, phase: String) { timeout = seconds; self.phase = phase }

  private var next: Mailbox { fabric.boxes[(rank + 1) % size] }
  private var mine: Mailbox { fabric.boxes[rank] }
  private var previous: Int { (rank + size - 1) % size }

  private func post(_ kind: WireKind, tag: UInt32, byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) {
    var message = [UInt8](repeating: 0, count: WireHeader.byteCount + byteCount)
    message.withUnsafeMutableBytes { raw in
      WireHeader(kind: kind.rawValue, tag: tag, index: sent).write(to: raw.baseAddress!)
      fill(UnsafeMutableRawBufferPointer(rebasing: raw[WireHeader.byteCount...]))
    }
    sent += 1
    let box = next
    box.cond.lock()
    box.messages.append(message)
    box.cond.signal()
    box.cond.unlock()
  }

  func send(tag: UInt32, byteCount: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) throws {
    post(.data, tag: tag, byteCount: byteCount, fill)
  }

  func send(tag: UInt32, referencing bytes: UnsafeRawBufferPointer) throws {
    post(.data, tag: tag, byteCount: bytes.count) { dst in dst.copyMemory(from: bytes) }  // a copy: nothing to flush
  }

  func flush() throws {}

  func receive(tag: UInt32, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws {
    let box = mine
    let deadline = Date(timeIntervalSinceNow: timeout)
    box.cond.lock()
    while box.head == box.messages.count {
      if box.closedBySender {
        box.cond.unlock()
        throw CollectiveError.peerLost(peer: describe(rank: previous), detail: "closed")
      }
      if !box.cond.wait(until: deadline) && box.head == box.messages.count {
        box.cond.unlock()
        throw CollectiveError.peerSilent(peer: describe(rank: previous), seconds: timeout, phase: phase)
      }
    }
    let message = box.messages[box.head]
    box.messages[box.head] = []
    box.head += 1
    if box.head > 64 && box.head * 2 > box.messages.count {  // compact now and then
      box.messages.removeFirst(box.head)
      box.head = 0
    }
    box.cond.unlock()
    try message.withUnsafeBytes { raw in
      let header = WireHeader.read(raw)
      try validate(header, expectedTag: tag, expectedIndex: received, from: describe(rank: previous))
      received += 1
      let payload = UnsafeRawBufferPointer(rebasing: raw[WireHeader.byteCount...])
      if header!.kind == WireKind.abort.rawValue {
        let reason = String(decoding: payload, as: UTF8.self)
        forwardAbort(reason)
        throw CollectiveError.aborted(reason: reason)
      }
      try consume(payload)
    }
  }

  private func forwardAbort(_ reason: String) {
    guard !failed else { return }
    failed = true
    if (rank + 1) % size != rank {
      let bytes = Array(reason.utf8)
      post(.abort, tag: 0, byteCount: bytes.count) { dst in dst.copyBytes(from: bytes) }
    }
  }

  func abort(_ reason: String) { forwardAbort(reason) }

  func close() {
    let box = next
    box.cond.lock()
    box.closedBySender = true
    box.cond.broadcast()
    box.cond.unlock()
  }
}
