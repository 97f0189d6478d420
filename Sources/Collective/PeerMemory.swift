// Direct reads of a ring neighbour's buffer (Linux cross-memory attach, process_vm_readv), for
// ranks of one host. A socket message costs every byte two kernel copies (into the socket, out
// into libzmq's message) plus, in the all-gather, a third copy into place; with 8 ranks on 2
// cores the ring is CPU-bound and those copies are its cost. Here the sender posts only a small
// descriptor (address, length) through the ring, and the receiver copies the bytes out of the
// sender's memory once: straight into place in the all-gather, into a cache-sized scratch piece
// that it sums at once in the reduce-scatter.
//
// When may the receiver read? The ring schedule never rewrites a segment before the ring has
// consumed it (see RingAlgorithms.swift): every segment a rank sends in the reduce-scatter comes
// back to it, summed, only after the next rank read it. The all-gather's segments do not come
// back, so an allreduce that reads directly ends with a token pass of n−1 hops: rank r's last
// token started at rank r+1 after its last read, and only then may r's caller touch the buffer.
//
// Which edges? At ring formation each rank sends its neighbour its pid and the address of a random
// nonce; the neighbour reads it with process_vm_readv and compares. That fails across hosts, PID
// namespaces, users, or where ptrace access is denied (seccomp, Yama), and then that edge keeps
// using the socket. The verdicts are gathered, so each sender knows whether its next rank reads.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Per-ring state of direct reads (a class: the Ring value is shared by copies).
final class PeerMemory {
  /// The previous rank's process id, when this rank reads its segments from its memory.
  var leftPID: pid_t?
  /// The next rank reads our segments from our memory: send descriptors, not bytes.
  var rightReads = false
  /// Some edge of the ring reads directly: allreduces end with the token pass.
  var anyEdge = false
  /// Allreduces of fewer bytes use the socket on every edge (see GroupOptions.peerMemoryMinBytes;
  /// the probe makes it the same on every rank).
  var minBytes: Int
  /// Where reduce-scatter segments are read to before being summed (`scratchBytes`, allocated on
  /// first use).
  private var scratch: UnsafeMutableRawPointer?

  /// Bytes read per process_vm_readv call in the reduce-scatter: small enough that the scratch
  /// piece is still in the core's L2 cache (512 KiB–1 MiB on current x86) when the sum reads it,
  /// large enough that the syscall is a few per cent of the copy.
  static let scratchBytes = 256 << 10

  init(minBytes: Int) { self.minBytes = minBytes }

  deinit { scratch?.deallocate() }

  var scratchPiece: UnsafeMutableRawPointer {
    if let s = scratch { return s }
    let s = UnsafeMutableRawPointer.allocate(byteCount: Self.scratchBytes, alignment: 64)
    scratch = s
    return s
  }

  /// glibc's process_vm_readv(pid, local, liovcnt, remote, riovcnt, flags), looked up at run time:
  /// Swift's Glibc module does not declare it (a GNU extension of sys/uio.h).
  typealias ReadV = @convention(c) (pid_t, UnsafePointer<iovec>, UInt, UnsafePointer<iovec>, UInt, UInt) -> Int
  static let processVMReadv: ReadV? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "process_vm_readv")
    .map { unsafeBitCast($0, to: ReadV.self) }

  /// Copies `bytes` bytes at `address` in process `pid` to `dst`; nil, or the errno of the failure.
  static func read(pid: pid_t, address: UInt64, bytes: Int, into dst: UnsafeMutableRawPointer) -> Int32? {
    guard let readv = processVMReadv else { return ENOSYS }
    var done = 0
    while done < bytes {
      var local = iovec(iov_base: dst + done, iov_len: bytes - done)
      var remote = iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(address) + UInt(done)), iov_len: bytes - done)
      let n = readv(pid, &local, 1, &remote, 1, 0)
      if n < 0 {
        if errno == EINTR { continue }
        return errno
      }
      if n == 0 { return EFAULT }
      done += n
    }
    return nil
  }
}

/// What travels instead of a segment's bytes: where they are in the sender's memory.
struct PeerDescriptor {
  /// Marks a descriptor, so that a rank expecting bytes (ranks passed different sizes) reports the
  /// size mismatch rather than summing a descriptor.
  static let magic: UInt64 = 0x5252_4545_5032_4E4D  // "MN2PEERR"
  static let byteCount = 32
  var address: UInt64
  var length: UInt64
  /// Where the segment starts in the sender's buffer (elements). Every rank passes a buffer of the
  /// same size, so the receiver knows which segment it expects: a sender a segment ahead or behind
  /// (equal lengths are the rule) would otherwise go unnoticed and be summed into the wrong place.
  var offset: UInt64

  func write(to p: UnsafeMutableRawPointer) {
    p.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt64.self)
    p.storeBytes(of: address.littleEndian, toByteOffset: 8, as: UInt64.self)
    p.storeBytes(of: length.littleEndian, toByteOffset: 16, as: UInt64.self)
    p.storeBytes(of: offset.littleEndian, toByteOffset: 24, as: UInt64.self)
  }

  static func read(_ p: UnsafeRawBufferPointer) -> PeerDescriptor? {
    guard p.count == byteCount, let base = p.baseAddress,
          UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 0, as: UInt64.self)) == magic else { return nil }
    return PeerDescriptor(address: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                          length: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
                          offset: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 24, as: UInt64.self)))
  }
}

extension Ring {
  /// Bytes of the ring-formation probe: pid, nonce address, nonce.
  static let probeNonceBytes = 32

  /// Finds out which edges can read directly (see the top of this file); run once, by every rank,
  /// right after the handshake, also by a rank that turned direct reads off (`enabled` false: it
  /// reads nothing and answers no), so that the ranks' settings need not agree: every rank ends with
  /// the same per-edge verdicts and the same threshold (the largest any rank asked for), which is
  /// what keeps their message sequences in step.
  func probePeerMemory(tag: UInt32, enabled: Bool) throws {
    var generator = SystemRandomNumberGenerator()
    let nonce = (0..<Self.probeNonceBytes).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    try nonce.withUnsafeBytes { mine in
      var message = [UInt8](repeating: 0, count: 16 + Self.probeNonceBytes)
      message.withUnsafeMutableBytes { m in
        m.storeBytes(of: Int64(getpid()).littleEndian, toByteOffset: 0, as: Int64.self)
        m.storeBytes(of: UInt64(UInt(bitPattern: mine.baseAddress!)).littleEndian, toByteOffset: 8, as: UInt64.self)
        m.baseAddress!.advanced(by: 16).copyMemory(from: mine.baseAddress!, byteCount: Self.probeNonceBytes)
      }
      try transport.send(tag: tag, byteCount: message.count) { $0.copyBytes(from: message) }
      var readable = false
      var pid: pid_t = 0
      try transport.receive(tag: tag) { payload in
        guard enabled, payload.count == 16 + Self.probeNonceBytes, let base = payload.baseAddress else { return }
        pid = pid_t(truncatingIfNeeded: Int64(littleEndian: base.loadUnaligned(fromByteOffset: 0, as: Int64.self)))
        let address = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        var seen = [UInt8](repeating: 0, count: Self.probeNonceBytes)
        let failed = seen.withUnsafeMutableBytes { PeerMemory.read(pid: pid, address: address, bytes: Self.probeNonceBytes, into: $0.baseAddress!) }
        readable = failed == nil && seen.elementsEqual(UnsafeRawBufferPointer(rebasing: payload[16...]))
      }
      // Also keeps the nonce alive until the next rank has read it (its verdict is in `verdicts`).
      // Each rank's verdict byte, then its threshold (UInt64, little-endian).
      let mine = [UInt8(readable ? 1 : 0)] + withUnsafeBytes(of: UInt64(peer.minBytes).littleEndian, Array.init)
      let verdicts = try allgather(mine, tag: tag)
      guard verdicts.allSatisfy({ $0.count == mine.count }) else {
        throw CollectiveError.protocolViolation("a peer-memory probe verdict of the wrong size arrived: ranks run different builds?")
      }
      peer.leftPID = readable ? pid : nil
      peer.rightReads = verdicts[(rank + 1) % size][0] == 1
      peer.anyEdge = verdicts.contains { $0[0] == 1 }
      peer.minBytes = verdicts.map { v in Int(UInt64(littleEndian: v[1...].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })) }.max()!
    }
  }

  /// Sends the descriptor of `bytes` (in our memory, segment start `offset` in elements) for the next
  /// rank to read.
  func sendDescriptor(of bytes: UnsafeRawBufferPointer, offset: Int, tag: UInt32) throws {
    try transport.send(tag: tag, byteCount: PeerDescriptor.byteCount) { dst in
      PeerDescriptor(address: UInt64(UInt(bitPattern: bytes.baseAddress)), length: UInt64(bytes.count),
                     offset: UInt64(offset)).write(to: dst.baseAddress!)
    }
  }

  /// Receives the descriptor of the segment at `offset` (elements) of `bytes` bytes and calls `body` with pieces of the previous rank's
  /// memory read to `into(offset)` (nil: the scratch piece), in order: (offset, piece, pieceBytes).
  func receiveDirect(bytes: Int, offset segmentOffset: Int, tag: UInt32, pid: pid_t, into place: UnsafeMutableRawPointer?,
                     _ body: (Int, UnsafeRawPointer, Int) -> Void) throws {
    var descriptor: PeerDescriptor?
    try transport.receive(tag: tag) { payload in descriptor = PeerDescriptor.read(payload) }
    guard let d = descriptor, d.length == UInt64(bytes), d.address <= UInt64.max - d.length else {
      throw CollectiveError.protocolViolation(
        "a segment arrived that is not a direct-read descriptor of \(bytes) bytes: ranks passed different buffer sizes")
    }
    guard d.offset == UInt64(segmentOffset) else {
      throw CollectiveError.protocolViolation(
        "rank \(rank) expected the segment at element \(segmentOffset) and was sent the one at \(d.offset): the ranks' ring steps are out of step")
    }
    let piece = place == nil ? PeerMemory.scratchBytes : max(1, bytes)
    var offset = 0
    while offset < bytes {
      let n = min(piece, bytes - offset)
      let dst = place.map { $0 + offset } ?? peer.scratchPiece
      if let code = PeerMemory.read(pid: pid, address: d.address + UInt64(offset), bytes: n, into: dst) {
        // The previous rank handed us this address, so an unreadable one means its process or
        // buffer is gone (it failed or exited): a peer failure, not this rank's.
        throw CollectiveError.peerLost(peer: transport.describe(rank: (rank + size - 1) % size),
                                       detail: "its buffer could not be read (\(String(cString: strerror(code)))): it failed, aborted or exited")
      }
      body(offset, UnsafeRawPointer(dst), n)
      offset += n
    }
  }
}
