// One job per train directory. Rank 0 holds an exclusive flock(2) on `<train dir>/train.lock`,
// which names the holder (pid, host, start time); other ranks never touch the directory. The
// kernel releases a flock when its process dies however it dies, so a lock file left behind by a
// killed job is recognised as stale (the file exists, nobody holds the lock) and taken over with
// a note. A clean exit (and SIGINT/SIGTERM) removes the file.
import Foundation

public final class TrainDirLock {
  public static let fileName = "train.lock"

  public let path: String
  /// Set when a stale lock was taken over: one line naming the previous holder.
  public let note: String?
  private var fd: Int32

  private init(path: String, fd: Int32, note: String?) { self.path = path; self.fd = fd; self.note = note }

  /// Locks `dir` (creating it) for this process; throws a one-line error naming the directory and
  /// the holder when another live job has it.
  public static func acquire(dir: String, host: String = hostName(), now: Date = Date()) throws -> TrainDirLock {
    do {
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    } catch {
      throw CheckpointError("cannot create the train dir \(dir): \((error as NSError).localizedDescription)")
    }
    let path = "\(dir)/\(fileName)"
    for _ in 0..<3 {  // retried only when the file was replaced between open and flock
      let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
      guard fd >= 0 else { throw CheckpointError("cannot create the lock file \(path): \(String(cString: strerror(errno)))") }
      let previous = readHolder(fd)
      if flock(fd, LOCK_EX | LOCK_NB) != 0 {
        let code = errno
        close(fd)
        if code == EWOULDBLOCK {
          throw CheckpointError("train dir \(dir) is in use by another job: \(previous.map(describe) ?? "a process that has not written its name yet") "
                                + "(lock file \(path)); wait for it to finish or give another --train-dir")
        }
        throw CheckpointError("cannot lock \(path): \(String(cString: strerror(code))) (a file system without flock?)")
      }
      // The holder we waited behind may have removed the file: then lock the new one instead.
      var mine = stat(), current = stat()
      guard fstat(fd, &mine) == 0, stat(path, &current) == 0, mine.st_ino == current.st_ino, mine.st_dev == current.st_dev else {
        close(fd)
        continue
      }
      let record = "pid \(getpid()) host \(host) since \(ISO8601DateFormatter().string(from: now))\n"
      let bytes = Array(record.utf8)
      guard ftruncate(fd, 0) == 0, pwrite(fd, bytes, bytes.count, 0) == bytes.count else {
        let message = String(cString: strerror(errno))
        close(fd)
        throw CheckpointError("cannot write the lock file \(path): \(message)")
      }
      let note = previous.map {
        "note: took over the stale lock of train dir \(dir): \(describe($0)) no longer holds it (it was killed or its host crashed)"
      }
      let lock = TrainDirLock(path: path, fd: fd, note: note)
      lock.removeOnTerminationSignals()
      return lock
    }
    throw CheckpointError("cannot lock \(path): it keeps being replaced by another process")
  }

  /// Removes the lock file and releases the lock (also on deinit).
  public func release() {
    guard fd >= 0 else { return }
    if activeLockPath != nil { free(activeLockPath); activeLockPath = nil }
    unlink(path)  // while still holding the lock, so nobody locks a file about to vanish
    close(fd)
    fd = -1
  }

  deinit { release() }

  /// "pid 12 host h since …" from an existing lock file; nil when empty.
  private static func readHolder(_ fd: Int32) -> String? {
    var buffer = [UInt8](repeating: 0, count: 512)
    let n = pread(fd, &buffer, buffer.count, 0)
    guard n > 0 else { return nil }
    let text = String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    return text.isEmpty ? nil : text
  }

  /// "pid 12 host h since t" → "pid 12 on host h (since t)".
  private static func describe(_ record: String) -> String {
    let words = record.split(separator: " ").map(String.init)
    guard words.count >= 6, words[0] == "pid", words[2] == "host", words[4] == "since" else { return "\"\(record)\"" }
    return "pid \(words[1]) on host \(words[3]) (since \(words[5]))"
  }

  /// SIGINT/SIGTERM (launch stopping the job) remove the file before the default action.
  private func removeOnTerminationSignals() {
    if activeLockPath != nil { free(activeLockPath) }
    activeLockPath = strdup(path)
    for sig in [SIGINT, SIGTERM] {
      signal(sig) { sig in
        if let p = activeLockPath { unlink(p) }
        signal(sig, SIG_DFL)
        raise(sig)
      }
    }
  }

  public static func hostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    return gethostname(&buffer, buffer.count) == 0 ? String(cString: buffer) : "unknown-host"
  }
}

/// The lock file the signal handler removes (a C string: the handler must not allocate).
nonisolated(unsafe) private var activeLockPath: UnsafeMutablePointer<CChar>?
