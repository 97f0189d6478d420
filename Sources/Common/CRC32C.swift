// CRC-32C (Castagnoli), the checksum of TFRecord framing and of TensorFlow checkpoints (tensor-bundle
// tables and tensor data), and TensorFlow's "masked" form. Lives in Common so that DataPipeline and
// Checkpoint share one implementation without depending on each other.
import Foundation

/// CRC-32C with the reflected polynomial 0x82F63B78, computed slice-by-8 (eight table lookups
/// per 8 input bytes): fast enough that verifying every record costs far less than decoding it.
public enum CRC32C {
  static let polynomial: UInt32 = 0x82F6_3B78

  /// tables[k][b]: CRC of byte b followed by k zero bytes.
  static let tables: [[UInt32]] = {
    var t = [[UInt32]](repeating: [UInt32](repeating: 0, count: 256), count: 8)
    for b in 0..<256 {
      var c = UInt32(b)
      for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ polynomial : c >> 1 }
      t[0][b] = c
    }
    for b in 0..<256 {
      for k in 1..<8 { t[k][b] = (t[k - 1][b] >> 8) ^ t[0][Int(t[k - 1][b] & 0xFF)] }
    }
    return t
  }()

  /// Flat copy of `tables` so the hot loop indexes one contiguous array.
  static let flat: [UInt32] = tables.flatMap { $0 }

  public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    let n = bytes.count
    guard n > 0, let base = bytes.baseAddress else { return 0 }
    var i = 0
    flat.withUnsafeBufferPointer { t in
      while i + 8 <= n {
        let lo = base.loadUnaligned(fromByteOffset: i, as: UInt32.self).littleEndian ^ crc
        let hi = base.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self).littleEndian
        crc = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
          ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
          ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
          ^ t[1 * 256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
        i += 8
      }
      while i < n {
        crc = t[Int((crc ^ UInt32(base.load(fromByteOffset: i, as: UInt8.self))) & 0xFF)] ^ (crc >> 8)
        i += 1
      }
    }
    return ~crc
  }

  public static func checksum<C: ContiguousBytes>(_ bytes: C) -> UInt32 {
    bytes.withUnsafeBytes { checksum($0) }
  }

  /// TFRecords and checkpoints store `masked(crc)`: rotated and offset so that a CRC of data that itself
  /// contains CRCs does not degenerate (TensorFlow's lib/hash/crc32c.h).
  public static func masked(_ crc: UInt32) -> UInt32 {
    ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
  }
}
