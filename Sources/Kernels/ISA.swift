// Which instruction set the hot row kernels run with (issue 12, item 2): AVX-512 where the CPU has
// it, AVX2 elsewhere, from one build. The row kernels are one source compiled twice
// (Sources/KernelsAVX2, Sources/KernelsAVX512 — see Sources/KernelRows); this file chooses once,
// at first use, from the CPU's feature flags. The choice is reported by `KernelISA.summary`
// (the worker log and the bench header print it).
import Foundation
import Common
@_exported import KernelRows  // BatchNormReduction, ChannelStatistics: part of the Kernels API
import KernelsAVX2
import KernelsAVX512

public enum InstructionSet: String, CaseIterable, Sendable {
  case avx512 = "avx512", avx2 = "avx2"
  var kernels: any RowKernelSet.Type {
    switch self {
    case .avx512: return KernelsAVX512.RowKernels.self
    case .avx2: return KernelsAVX2.RowKernels.self
    }
  }
  public var displayName: String { kernels.name }
}

public enum KernelISA {
  /// The one override: MNV2_ISA=avx2 forces the AVX2 kernels on an AVX-512 CPU (to compare or
  /// to test them). avx512 on a CPU without it is refused (it would die with SIGILL).
  public static let environmentVariable = "MNV2_ISA"
  /// CPU flags the AVX-512 build (-target-cpu skylake-avx512) may use.
  static let avx512Flags = ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"]

  /// True if this CPU (and kernel) run the AVX-512 kernels.
  public static let hostHasAVX512: Bool = CPUFlags.hostHas(avx512Flags)

  /// Instruction sets this machine can run, fastest first.
  public static var available: [InstructionSet] { hostHasAVX512 ? [.avx512, .avx2] : [.avx2] }

  /// Why `current` is what it is, or the override's problem.
  public private(set) static var reason = ""

  /// The instruction set the kernels use now.
  public private(set) static var current: InstructionSet = choose()

  static func choose() -> InstructionSet {
    let best: InstructionSet = hostHasAVX512 ? .avx512 : .avx2
    guard let raw = ProcessInfo.processInfo.environment[environmentVariable], !raw.isEmpty else {
      reason = hostHasAVX512 ? "cpu has \(avx512Flags.joined(separator: "/"))" : "cpu lacks AVX-512"
      return best
    }
    guard let asked = InstructionSet(rawValue: raw.lowercased()) else {
      reason = "\(environmentVariable)=\(raw) is not avx512 or avx2; using the cpu's best"
      return best
    }
    guard available.contains(asked) else {
      reason = "\(environmentVariable)=\(raw) but the cpu lacks AVX-512; using avx2"
      return .avx2
    }
    reason = "forced by \(environmentVariable)=\(raw)"
    return asked
  }

  /// Switches the kernels (tests run every available set against the naive references).
  public static func use(_ isa: InstructionSet) {
    precondition(available.contains(isa), "\(isa.displayName) kernels need a CPU with \(avx512Flags)")
    current = isa
  }

  /// One line for logs: "kernels: AVX-512 (cpu has avx512f/…)".
  public static var summary: String { "kernels: \(current.displayName) (\(reason))" }

  /// The row kernels of the chosen instruction set (tests call them directly).
  @inline(__always) public static var rows: any RowKernelSet.Type { current.kernels }
}
