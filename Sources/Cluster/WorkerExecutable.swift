// Where `launch` finds `worker`: an explicit --worker, else next to launch's own resolved
// executable (/proc/self/exe, so a symlink to launch on PATH still finds the real build
// directory), else the first executable `worker` on PATH.

import Foundation

public enum WorkerExecutable {
  public static let name = "worker"

  /// The worker to run; throws a one-line error listing where it looked.
  public static func locate(explicit: String?, selfExecutable: String? = resolvedSelf(),
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
    let fm = FileManager.default
    if let path = explicit {
      guard fm.isExecutableFile(atPath: path) else { throw RankTableError("--worker \(path) is not an executable file") }
      return path
    }
    var looked: [String] = []
    if let exe = selfExecutable {
      let beside = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent(name).path
      if fm.isExecutableFile(atPath: beside) { return beside }
      looked.append(beside)
    }
    let dirs = (environment["PATH"] ?? "").split(separator: ":").map(String.init).filter { !$0.isEmpty }
    for dir in dirs {
      let candidate = URL(fileURLWithPath: dir).appendingPathComponent(name).path
      var isDir: ObjCBool = false
      if fm.fileExists(atPath: candidate, isDirectory: &isDir), !isDir.boolValue, fm.isExecutableFile(atPath: candidate) {
        return candidate
      }
    }
    looked.append("PATH")
    throw RankTableError("cannot find the \(name) executable (looked in \(looked.joined(separator: ", "))); pass --worker PATH")
  }

  /// This process's executable with symlinks resolved (/proc/self/exe), nil where unavailable.
  public static func resolvedSelf() -> String? {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
      ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
  }
}
