// No orphans: a worker started by launch dies with it. The kernel's parent-death signal does it
// at once; a watchdog thread covers the window before prctl and systems without it.

import Foundation

public enum WorkerLifetime {
  /// How often the watchdog checks that launch is still the parent.
  static let watchdogInterval = 0.5
  /// prctl(2) option number of PR_SET_PDEATHSIG (linux/prctl.h).
  static let prSetPdeathsig: Int32 = 1

  /// Ties this process's life to launch's, when launched (MNV2_LAUNCHER_PID set).
  public static func bindToLauncher(environment: [String: String] = ProcessInfo.processInfo.environment) {
    guard let s = environment[ContractKey.launcherPID.rawValue], let launcher = Int32(s) else { return }
    #if os(Linux)
    // prctl is variadic in C and so not imported; its first two arguments are plain integers.
    typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
    if let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prctl") {
      _ = unsafeBitCast(sym, to: Prctl.self)(prSetPdeathsig, UInt(SIGKILL), 0, 0, 0)
    }
    #endif
    if getppid() != launcher { exit(peerFailureExitCode) }  // launch died before prctl
    let t = Thread {
      while true {
        Thread.sleep(forTimeInterval: watchdogInterval)
        if getppid() != launcher { exit(peerFailureExitCode) }
      }
    }
    t.name = "launcher-watchdog"
    t.start()
  }
}
