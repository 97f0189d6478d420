// Process-wide settings for a training process, applied once at start-up by the executables
// (`worker`, the benchmarks) in one visible call, not as a side effect of opening a socket.
import Foundation

public enum ProcessTuning {
  /// Applies every setting below once; later calls do nothing.
  public static func apply() { _ = appliedOnce }

  private static let appliedOnce: Void = { keepFreedMessageMemory() }()

  /// Every ring message is a heap block of a segment's size (libzmq allocates received ones),
  /// freed on another thread. glibc's defaults hand such blocks back to the kernel and fault them
  /// in again each time (measured: a third of the ring's time); keep them instead.
  static func keepFreedMessageMemory() {
    #if os(Linux)
    // malloc.h is not part of Swift's Glibc module; mallopt(int, int) is looked up instead.
    let mTrimThreshold: Int32 = -1, mMmapThreshold: Int32 = -3  // values from glibc's malloc.h
    typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
    if let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
      let mallopt = unsafeBitCast(sym, to: Mallopt.self)
      _ = mallopt(mMmapThreshold, 32 << 20)   // glibc's maximum: segments come from the heap
      _ = mallopt(mTrimThreshold, 512 << 20)  // do not trim (madvise) below this much free heap
    }
    #endif
  }
}
