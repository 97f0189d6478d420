// Collective algorithms over a RingTransport (gloo's algorithms layer).
//
// Chunks vs segments: the buffer is cut into `size` chunks (chunk c = elements
// [c·count/size, (c+1)·count/size)), one per rank; each chunk travels as segments of
// `segmentLength(count:)` elements, so that a rank reduces segment k while segment k+1 is on the wire.
//
// Ring allreduce = reduce-scatter then all-gather. In reduce-scatter step s, rank r sends chunk
// r−s and receives (and adds into) chunk r−s−1; the chunk it just reduced is the one it sends in
// step s+1, so every segment is forwarded as soon as it is summed: the ring streams. After n−1
// steps rank r holds the full sum of chunk r+1, scales it (average) and starts the all-gather,
// which passes the finished chunks around n−1 more times. Each rank sends 2(n−1)/n of the buffer.

struct Ring {
  let transport: RingTransport
  /// Smallest and largest elements per message (see `segmentLength(count:)`).
  let minSegmentElements: Int
  let maxSegmentElements: Int
  /// Which edges read segments straight from the sender's memory (PeerMemory.swift).
  let peer: PeerMemory
  /// Segments per chunk the ring aims for: enough to keep both neighbours busy while a segment
  /// is summed, few enough that per-message costs (syscalls, allocation) stay small.
  static let segmentsPerChunk = 32

  var rank: Int { transport.rank }
  var size: Int { transport.size }

  /// Element range of chunk `c` of a `count`-element buffer.
  func chunk(_ c: Int, of count: Int) -> Range<Int> {
    let c = ((c % size) + size) % size
    return (c * count / size)..<((c + 1) * count / size)
  }

  /// Elements per message for a `count`-element collective: a chunk cut into about
  /// `segmentsPerChunk` pieces, within [min, max]. Small buffers keep small segments (the ring
  /// streams sooner); large ones get larger messages (measured at 64 MiB on 2 ranks: 1 MiB
  /// segments 0.98–1.05 GB/s busbw, 256 KiB 0.78–0.90). A function of count and size only, so
  /// every rank cuts the same segments.
  func segmentLength(count: Int) -> Int {
    let wanted = count / size / Self.segmentsPerChunk
    return max(minSegmentElements, min(max(minSegmentElements, maxSegmentElements), wanted))
  }

  /// Calls `body` with each segment of `range`, segments of `length` elements.
  func forEachSegment(_ range: Range<Int>, length: Int, _ body: (Range<Int>) throws -> Void) rethrows {
    var start = range.lowerBound
    while start < range.upperBound {
      let end = min(range.upperBound, start + length)
      try body(start..<end)
      start = end
    }
  }

  /// Native elements go zero-copy (the schedule never rewrites a segment before the ring has
  /// consumed it, and every collective flushes before returning); fp16 is encoded into a copy.
  private func sendSegment<T: RingElement>(_ p: UnsafeMutablePointer<T>, _ seg: Range<Int>, wire: FloatWire, tag: UInt32) throws {
    if wire == .float32 || T.self != Float.self {
      try transport.send(tag: tag, referencing: UnsafeRawBufferPointer(start: p + seg.lowerBound,
                                                                       count: seg.count * MemoryLayout<T>.stride))
      return
    }
    try transport.send(tag: tag, byteCount: seg.count * wire.bytesPerElement(for: T.self)) { dst in
      encode(p + seg.lowerBound, count: seg.count, wire: wire, into: dst.baseAddress!)
    }
  }

  private func receiveSegment(_ seg: Range<Int>, bytes: Int, tag: UInt32, _ body: (UnsafeRawPointer) -> Void) throws {
    try transport.receive(tag: tag) { payload in
      guard payload.count == bytes else {
        throw CollectiveError.protocolViolation(
          "a segment of \(payload.count) bytes arrived where \(bytes) were expected: ranks passed different buffer sizes")
      }
      if bytes > 0 { body(payload.baseAddress!) }
    }
  }

  /// In-place sum over ranks (times `scale` if given) of `count` elements.
  func allreduce<T: RingElement>(_ p: UnsafeMutablePointer<T>, count: Int, scale: T?, wire: FloatWire, tag: UInt32) throws {
    let n = size, r = rank
    if n == 1 { finalize(p, count: count, scale: scale, wire: .float32); return }  // no wire, no rounding
    let bpe = wire.bytesPerElement(for: T.self)
    let stride = MemoryLayout<T>.stride
    let length = segmentLength(count: count)
    // Direct reads (PeerMemory.swift) for native elements from peer.minBytes up, on the edges the
    // probe found readable; the same decision on every rank (count, wire and the gathered verdicts).
    let direct = (wire == .float32 || T.self != Float.self) && peer.anyEdge && count * stride >= peer.minBytes
    let sendsDescriptors = direct && peer.rightReads
    let readPID = direct ? peer.leftPID : nil
    func send(_ seg: Range<Int>) throws {
      if sendsDescriptors {
        try sendDescriptor(of: UnsafeRawBufferPointer(start: p + seg.lowerBound, count: seg.count * stride), offset: seg.lowerBound, tag: tag)
      } else {
        try sendSegment(p, seg, wire: wire, tag: tag)
      }
    }
    // Step 0 of reduce-scatter: our own chunk r, as it is.
    try forEachSegment(chunk(r, of: count), length: length) { try send($0) }
    for s in 0..<(n - 1) {
      try forEachSegment(chunk(r - s - 1, of: count), length: length) { seg in
        if let pid = readPID {
          try receiveDirect(bytes: seg.count * bpe, offset: seg.lowerBound, tag: tag, pid: pid, into: nil) { offset, src, bytes in
            accumulate(p + seg.lowerBound + offset / stride, count: bytes / stride, wire: wire, from: src)
          }
        } else {
          try receiveSegment(seg, bytes: seg.count * bpe, tag: tag) { src in
            accumulate(p + seg.lowerBound, count: seg.count, wire: wire, from: src)
          }
        }
        if s == n - 2 { finalize(p + seg.lowerBound, count: seg.count, scale: scale, wire: wire) }
        // Reduce-scatter step s+1, or (after the last step) all-gather step 0.
        try send(seg)
      }
    }
    for s in 0..<(n - 1) {
      try forEachSegment(chunk(r - s, of: count), length: length) { seg in
        if let pid = readPID {
          try receiveDirect(bytes: seg.count * bpe, offset: seg.lowerBound, tag: tag, pid: pid, into: UnsafeMutableRawPointer(p + seg.lowerBound)) { _, _, _ in }
        } else {
          try receiveSegment(seg, bytes: seg.count * bpe, tag: tag) { src in
            decode(p + seg.lowerBound, count: seg.count, wire: wire, from: src)
          }
        }
        if s < n - 2 { try send(seg) }
      }
    }
    // The next rank may still be reading our all-gather segments: its token, n−1 hops on, says it
    // is done (PeerMemory.swift).
    if direct { _ = try allgather([], tag: tag) }
    try transport.flush()
  }

  /// Copies root's buffer to every rank, pipelined along the ring (root → root+1 → …).
  func broadcast<T: RingElement>(_ p: UnsafeMutablePointer<T>, count: Int, root: Int, tag: UInt32) throws {
    let n = size
    if n == 1 { return }
    let isLast = (rank + 1) % n == root
    let bpe = MemoryLayout<T>.stride
    try forEachSegment(0..<count, length: segmentLength(count: count)) { seg in
      if rank != root {
        try receiveSegment(seg, bytes: seg.count * bpe, tag: tag) { src in
          decode(p + seg.lowerBound, count: seg.count, wire: .float32, from: src)
        }
      }
      if !isLast { try sendSegment(p, seg, wire: .float32, tag: tag) }
    }
    try transport.flush()
  }

  /// Every rank's bytes, in rank order. Small messages (metadata), one message per block.
  func allgather(_ mine: [UInt8], tag: UInt32) throws -> [[UInt8]] {
    let n = size, r = rank
    var blocks = [[UInt8]](repeating: [], count: n)
    blocks[r] = mine
    for s in 0..<(n - 1) {
      let out = blocks[((r - s) % n + n) % n]
      try transport.send(tag: tag, byteCount: out.count) { dst in dst.copyBytes(from: out) }
      try transport.receive(tag: tag) { payload in blocks[((r - s - 1) % n + n) % n] = Array(payload) }
    }
    return blocks
  }
}

extension FloatWire {
  func bytesPerElement<T>(for type: T.Type) -> Int {
    T.self == Float.self ? bytesPerElement : MemoryLayout<T>.stride
  }
}
