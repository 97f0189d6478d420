// The two ways the project writes files, each defined once:
// - `AtomicFile`: a whole file replaced at once (checkpoints, ONNX models, state files, caches,
//   timelines): written to a temporary file beside it, fsynced, renamed over it, directory fsynced,
//   so a crash leaves the old file or the complete new one.
// - `AppendOnlyFile`: logs that grow by whole records (metrics.jsonl, eval rows, TensorBoard events):
//   one write(2) per record on an O_APPEND descriptor, so a crash never tears a record in the middle.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A file operation that failed, naming the file; `code` is errno.
public struct FileError: Error, CustomStringConvertible {
  public let description: String
  public let code: Int32
  public init(_ description: String, code: Int32 = 0) { self.description = description; self.code = code }
}

public enum AtomicFile {
  /// Writes through `body` into a temporary file next to `path`, then fsyncs and renames it over
  /// `path`. The temporary file is `.<name>.tmp-<pid>` (hidden; checkpoint pruning removes leftovers).
  public static func write(to path: String, _ body: (Int32) throws -> Void) throws {
    let url = URL(fileURLWithPath: path)
    let dir = url.deletingLastPathComponent().path
    let tmp = "\(dir)/.\(url.lastPathComponent).tmp-\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw FileError("cannot create \(tmp): \(String(cString: strerror(errno)))", code: errno) }
    do {
      try body(fd)
      guard fsync(fd) == 0 else { throw FileError("fsync \(tmp): \(String(cString: strerror(errno)))", code: errno) }
      close(fd)
    } catch {
      close(fd)
      unlink(tmp)
      throw error
    }
    guard rename(tmp, path) == 0 else {
      let code = errno
      unlink(tmp)
      throw FileError("cannot rename \(tmp) to \(path): \(String(cString: strerror(code)))", code: code)
    }
    let dfd = open(dir, O_RDONLY)
    if dfd >= 0 { fsync(dfd); close(dfd) }
  }

  /// Replaces `path` with `bytes`.
  public static func write<Bytes: ContiguousBytes>(_ bytes: Bytes, to path: String) throws {
    try write(to: path) { fd in try bytes.withUnsafeBytes { try writeAll(fd, $0.baseAddress, $0.count, path) } }
  }

  /// Writes all `n` bytes at `p` to `fd` (retrying short writes and EINTR).
  public static func writeAll(_ fd: Int32, _ p: UnsafeRawPointer?, _ n: Int, _ path: String) throws {
    guard n > 0, let p else { return }
    var done = 0
    while done < n {
      let r = Glibc.write(fd, p + done, n - done)
      if r < 0 {
        if errno == EINTR { continue }
        throw FileError("write to \(path) failed: \(String(cString: strerror(errno)))", code: errno)
      }
      done += r
    }
  }
}

public final class AppendOnlyFile {
  public let path: String
  private let fd: Int32

  /// Opens `path` for appending, creating it; with `exclusive` it must not exist yet (a FileError
  /// with code EEXIST otherwise).
  public init(path: String, exclusive: Bool = false) throws {
    self.path = path
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | (exclusive ? O_EXCL : 0), 0o644)
    if fd < 0 { throw FileError("cannot write \(path): \(String(cString: strerror(errno)))", code: errno) }
  }

  deinit { close(fd) }

  /// Appends one record with a single write(2).
  public func append<Bytes: ContiguousBytes>(_ record: Bytes) throws {
    let (n, count) = record.withUnsafeBytes { (Glibc.write(fd, $0.baseAddress, $0.count), $0.count) }
    if n != count {
      throw FileError("cannot append to \(path): \(n < 0 ? String(cString: strerror(errno)) : "short write")", code: n < 0 ? errno : 0)
    }
  }
}
