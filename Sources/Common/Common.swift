// Small helpers that several libraries need and that belong to none of them: one definition each.
import Foundation

/// 64-bit FNV-1a over bytes: per-tensor random streams from names, weight checksums across ranks,
/// non-secret fingerprints in logs. Not cryptographic.
@inlinable
public func fnv1a<Bytes: Sequence>(_ bytes: Bytes) -> UInt64 where Bytes.Element == UInt8 {
  var h: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV offset basis
  for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }  // FNV prime
  return h
}

/// Writes one line to standard error (a newline is added when missing, unless `newline` is false,
/// as for a progress bar redrawn with "\r"), unbuffered, so that a supervising `launch` sees it at
/// once and it lands in the rank's log.
public func writeStderr(_ text: String, newline: Bool = true) {
  FileHandle.standardError.write(Data((!newline || text.hasSuffix("\n") ? text : text + "\n").utf8))
}
