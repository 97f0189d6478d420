// The handshake when the ring forms: every rank sends its identity to the next one, which checks
// it, then all ranks exchange their verdicts, so a mismatch anywhere is a clear error everywhere
// (not a hang, not a wrong sum).

import Foundation

/// What a rank claims about itself.
struct Hello: Codable, Equatable {
  /// Bumped when the wire protocol changes.
  static let protocolVersion = 1
  var protocolVersion = Hello.protocolVersion
  var jobID: String
  var worldSize: Int
  var rank: Int
  var address: String
  /// Parameter names and element counts, in slab order.
  var signature: [String]
  var counts: [Int]
}

enum Handshake {
  /// Checks `got` (from the previous rank) against what this rank expects; nil when they agree.
  static func check(_ got: Hello, expected mine: Hello, previousRank: Int) -> String? {
    let who = "rank \(got.rank) (\(got.address))"
    if got.protocolVersion != mine.protocolVersion {
      return "\(who) speaks protocol \(got.protocolVersion), rank \(mine.rank) speaks \(mine.protocolVersion): rebuild both from one commit"
    }
    if got.jobID != mine.jobID {
      return "\(who) belongs to job '\(got.jobID)', rank \(mine.rank) (\(mine.address)) to job '\(mine.jobID)'"
    }
    if got.worldSize != mine.worldSize {
      return "\(who) has world size \(got.worldSize), rank \(mine.rank) (\(mine.address)) has \(mine.worldSize): the rank tables differ"
    }
    if got.rank != previousRank {
      return "rank \(mine.rank) (\(mine.address)) expected rank \(previousRank) before it in the ring, but \(who) connected: the rank tables differ"
    }
    if got.signature != mine.signature || got.counts != mine.counts {
      let total = { (c: [Int]) in c.reduce(0, +) }
      var detail = "\(who) has \(got.signature.count) tensors / \(total(got.counts)) parameters, rank \(mine.rank) has "
        + "\(mine.signature.count) / \(total(mine.counts))"
      for i in 0..<min(got.signature.count, mine.signature.count)
      where got.signature[i] != mine.signature[i] || got.counts[i] != mine.counts[i] {
        detail += "; first difference at tensor \(i): \(got.signature[i]) [\(got.counts[i])] vs \(mine.signature[i]) [\(mine.counts[i])]"
        break
      }
      return "model signature differs: \(detail) (same --model-name, --num-classes and width on every rank?)"
    }
    return nil
  }

  /// Runs the handshake; throws `.handshakeMismatch` on every rank if any rank disagreed.
  static func run(_ ring: Ring, hello: Hello, tag: (OpKind) -> UInt32) throws {
    let n = ring.size
    let encoded = try JSONEncoder().encode(hello)
    try ring.transport.send(tag: tag(.hello), byteCount: encoded.count) { $0.copyBytes(from: encoded) }
    var verdict = ""
    try ring.transport.receive(tag: tag(.hello)) { payload in
      guard let got = try? JSONDecoder().decode(Hello.self, from: Data(payload)) else {
        verdict = "rank \(hello.rank) received an unreadable handshake from the previous rank"
        return
      }
      verdict = check(got, expected: hello, previousRank: (hello.rank + n - 1) % n) ?? ""
    }
    let verdicts = try ring.allgather(Array(verdict.utf8), tag: tag(.hello))
    if let bad = verdicts.first(where: { !$0.isEmpty }) {
      throw CollectiveError.handshakeMismatch(String(decoding: bad, as: UTF8.self))
    }
  }
}
