// Which precision a run gets: `--precision bf16` runs bf16 on a CPU with AVX512-BF16, and falls back
// to fp32 with one line elsewhere. MNV2_BF16 (read here and nowhere else) overrides the check:
// `off` forces the fp32 fallback, `emulate` forces the bf16 arithmetic on any CPU (the tests use
// both). The bf16 arithmetic itself needs no special instruction today (Kernels/BF16.swift); the
// check keeps the contract of the issue, so a vdpbf16ps kernel can land without changing it.
import Foundation
import Common
import Kernels

public enum PrecisionPolicy {
  /// The environment variable that overrides the hardware check.
  public static let overrideVariable = "MNV2_BF16"
  public enum Override: String, CaseIterable, Sendable {
    /// Use bf16 when the CPU has AVX512-BF16 (the default).
    case auto
    /// Always fall back to fp32.
    case off
    /// Run the bf16 arithmetic even without AVX512-BF16.
    case emulate
  }
  /// The Linux /proc/cpuinfo flag of AVX512-BF16 (CPUID.(EAX=7,ECX=1):EAX[bit 5]).
  public static let cpuFlag = "avx512_bf16"

  /// Whether a /proc/cpuinfo text lists AVX512-BF16 on its `flags` line.
  public static func cpuHasBF16(cpuinfo: String) -> Bool { CPUFlags.parse(cpuinfo: cpuinfo).contains(cpuFlag) }

  /// This machine's answer (false where /proc/cpuinfo cannot be read).
  public static var hardwareBF16: Bool { CPUFlags.host.contains(cpuFlag) }

  /// The precision to run for `requested`, and the one line to log when it differs or is emulated.
  /// Throws a one-line error for an MNV2_BF16 value other than auto, off or emulate.
  public static func resolve(_ requested: Precision, hardwareBF16: Bool,
                             environment: [String: String]) throws -> (precision: Precision, note: String?) {
    let raw = environment[overrideVariable] ?? Override.auto.rawValue
    guard let override = Override(rawValue: raw.isEmpty ? Override.auto.rawValue : raw) else {
      throw PrecisionError("\(overrideVariable)=\(raw) is not valid: use \(Override.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    guard requested == .bf16 else { return (.fp32, nil) }
    switch override {
    case .off:
      return (.fp32, "precision: bf16 requested, \(overrideVariable)=off: running fp32")
    case .emulate:
      return (.bf16, "precision: bf16 (\(overrideVariable)=emulate: bf16 arithmetic without checking for AVX512-BF16)")
    case .auto:
      if hardwareBF16 { return (.bf16, nil) }
      return (.fp32, "precision: bf16 requested but this CPU has no AVX512-BF16 (\(cpuFlag)): running fp32 (\(overrideVariable)=emulate forces bf16)")
    }
  }

  /// `resolve` on this machine and process environment.
  public static func resolve(_ requested: Precision) throws -> (precision: Precision, note: String?) {
    try resolve(requested, hardwareBF16: hardwareBF16, environment: ProcessInfo.processInfo.environment)
  }
}

public struct PrecisionError: Error, CustomStringConvertible {
  public let description: String
  init(_ description: String) { self.description = description }
}
