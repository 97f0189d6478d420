// Memory that the kernels work on: one aligned, owned block of float32.
//
// Every tensor in this project is a view (pointer + element count) into such a block: the model's
// parameters, gradients and optimizer slots are parallel slabs, and all activations live in one arena
// that is allocated once per (batch, image size) and reused every step.

import Foundation
import Glibc

/// Large blocks (the activation arena, the parameter slabs, the scratch) are 2 MiB aligned and
/// advised to the kernel as transparent huge pages (madvise MADV_HUGEPAGE: in THP mode "madvise", as
/// on the machines measured, only advised regions get them; in mode "always" every large region may,
/// and the advice still asks for compaction when the pages are first touched under the default
/// defrag setting). A step streams ~5 GB through tensors of up to 154 MB: with 4 KiB pages every 64
/// lines is a new page, a dTLB miss and a page walk, and the hardware prefetchers stop at each page
/// boundary. Measured on Zen 5 (1.0/224 b32, 2 threads, six alternating pairs): step median 0.280 →
/// 0.268 s. MNV2_HUGEPAGES=0 turns it off; where the kernel has THP disabled the advice is ignored and
/// nothing else changes. Contents and results are the same.
public enum HugePages {
  public static let environmentVariable = "MNV2_HUGEPAGES"
  /// On unless MNV2_HUGEPAGES=0 (as MNV2_STREAM and MNV2_PREFETCH).
  public static var enabled = ProcessInfo.processInfo.environment[environmentVariable] != "0"
  /// The x86-64 transparent huge page: blocks of at least this size are advised, rounded up to it.
  public static let pageBytes = 2 << 20
  static func rounded(_ bytes: Int) -> Int { (bytes + pageBytes - 1) / pageBytes * pageBytes }
  /// KiB of this process's memory on transparent huge pages (AnonHugePages of /proc/self/smaps_rollup),
  /// nil where the kernel does not report it.
  public static var residentKiB: Int? {
    guard let text = try? String(contentsOfFile: "/proc/self/smaps_rollup", encoding: .utf8) else { return nil }
    return anonHugePagesKiB(smaps: text)
  }
  /// The AnonHugePages figure (KiB) of an smaps text, nil without that line.
  public static func anonHugePagesKiB(smaps text: String) -> Int? {
    let line = text.split(separator: "\n").first { $0.hasPrefix("AnonHugePages:") }
    return line.flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") }
  }
}

/// A 64-byte aligned, zero-initialised block of `Float` that frees itself.
/// Cache-line alignment keeps SIMD loads at the start of every slab from straddling lines.
public final class FloatBuffer {
  public static let alignment = 64
  public let count: Int
  public let base: UnsafeMutablePointer<Float>
  /// Whether the kernel was asked to back this block with transparent huge pages (`HugePages`).
  public let hugePagesAdvised: Bool
  /// Bytes reserved for the block: count floats, rounded up to whole huge pages when advised.
  public let reservedBytes: Int

  public init(count: Int) {
    precondition(count >= 0, "negative buffer size")
    self.count = count
    let bytes = max(count, 1) * MemoryLayout<Float>.stride
    let huge = HugePages.enabled && bytes >= HugePages.pageBytes
    let reserved = huge ? HugePages.rounded(bytes) : bytes
    let raw = UnsafeMutableRawPointer.allocate(byteCount: reserved, alignment: huge ? HugePages.pageBytes : FloatBuffer.alignment)
    hugePagesAdvised = huge && madvise(raw, reserved, MADV_HUGEPAGE) == 0
    reservedBytes = reserved
    base = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    base.initialize(repeating: 0, count: max(count, 1))
  }

  deinit { UnsafeMutableRawPointer(base).deallocate() }

  public func zero() { base.update(repeating: 0, count: count) }

  public subscript(i: Int) -> Float {
    get { base[i] }
    set { base[i] = newValue }
  }

  public var array: [Float] { Array(UnsafeBufferPointer(start: base, count: count)) }

  public func copy(from values: [Float]) {
    precondition(values.count == count, "copy of \(values.count) values into a buffer of \(count)")
    values.withUnsafeBufferPointer { base.update(from: $0.baseAddress!, count: count) }
  }
}

/// A reusable scratch block: per-thread partial sums of the backward reductions, and the stem's
/// im2col patches (27 floats per output pixel, the largest user: 43 MB at 1.0/224 batch 32).
/// It grows on demand and is kept, so a training step makes no allocation once warm.
public final class Scratch {
  private var buffer = FloatBuffer(count: 0)
  private var doubles = UnsafeMutablePointer<Double>.allocate(capacity: 1)
  private var doubleCount = 0
  public init() {}
  deinit { doubles.deallocate() }

  /// A zeroed region of at least `count` doubles, valid until the next call.
  public func zeroedDoubles(_ count: Int) -> UnsafeMutablePointer<Double> {
    if doubleCount < count {
      doubles.deallocate()
      doubles = UnsafeMutablePointer<Double>.allocate(capacity: count)
      doubleCount = count
    }
    doubles.update(repeating: 0, count: count)
    return doubles
  }

  /// A zeroed region of at least `count` floats, valid until the next call.
  public func zeroed(_ count: Int) -> UnsafeMutablePointer<Float> {
    let p = uninitialized(count)
    p.update(repeating: 0, count: count)
    return p
  }

  /// A region of at least `count` floats with stale contents (for callers that write all of it),
  /// valid until the next call.
  public func uninitialized(_ count: Int) -> UnsafeMutablePointer<Float> {
    if buffer.count < count { buffer = FloatBuffer(count: count) }
    return buffer.base
  }

  /// A third region (stale contents, valid until its next call), independent of the two above: the
  /// per-thread blocks of activated input rows of a 1×1 convolution whose input BN is pending.
  public func inputRows(_ count: Int) -> UnsafeMutablePointer<Float> {
    if rowBuffer.count < count { rowBuffer = FloatBuffer(count: count) }
    return rowBuffer.base
  }
  private var rowBuffer = FloatBuffer(count: 0)
}
