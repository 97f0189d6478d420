// The arithmetic of `make bench`'s report, kept out of the executable so it is unit-tested:
// medians of alternating rounds, the PyTorch variants and which of them a row of ours is compared
// with, GFLOP/s and the roofline fraction, and the CPU flags of the header.

import Foundation

/// Which arithmetic a row runs: rows are compared only within a class.
public enum PrecisionClass: String, CaseIterable, Sendable {
  case fp32, bf16
}

/// The PyTorch variants `../shared/baselines/torch_train_step.py` runs (always channels-last,
/// PyTorch's fast CPU layout).
public enum TorchVariant: String, CaseIterable, Sendable {
  case eager
  case compile
  case bf16
  case bf16Compile = "bf16+compile"

  public var precisionClass: PrecisionClass { self == .eager || self == .compile ? .fp32 : .bf16 }

  /// The script's flags for this variant.
  public var flags: [String] {
    switch self {
    case .eager: return ["--channels-last"]
    case .compile: return ["--channels-last", "--compile"]
    case .bf16: return ["--channels-last", "--bf16"]
    case .bf16Compile: return ["--channels-last", "--bf16", "--compile"]
    }
  }

  /// torch.compile spends minutes in its first step(s): such a variant gets more untimed warm-up.
  public var compiles: Bool { self == .compile || self == .bf16Compile }
}

public enum BenchMath {
  /// The median (the mean of the two middle values for an even count); NaN when empty.
  public static func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return .nan }
    let s = values.sorted(), m = s.count / 2
    return s.count % 2 == 1 ? s[m] : (s[m - 1] + s[m]) / 2
  }

  /// The fastest variant of `precision`'s class among `medians` (images/s), or nil when none ran.
  public static func best(of medians: [TorchVariant: Double], for precision: PrecisionClass) -> (variant: TorchVariant, imagesPerSecond: Double)? {
    medians.filter { $0.key.precisionClass == precision && $0.value.isFinite && $0.value > 0 }
      .max { $0.value < $1.value || ($0.value == $1.value && $0.key.rawValue > $1.key.rawValue) }
      .map { ($0.key, $0.value) }
  }

  /// Ours over the baseline (images/s over images/s).
  public static func ratio(ours: Double, baseline: Double) -> Double { ours / baseline }

  /// Achieved GFLOP/s of a training step: FLOPs per image × images per second.
  public static func gflops(flopsPerImage: Int, imagesPerSecond: Double) -> Double {
    Double(flopsPerImage) * imagesPerSecond / 1e9
  }

  /// FLOPs of one m×k by k×n matrix product.
  public static func gemmFLOPs(m: Int, n: Int, k: Int) -> Double { 2 * Double(m) * Double(n) * Double(k) }

  /// The GEMM peak from its rounds: the best one. Load from other processes only ever lowers a
  /// measured rate, so the best round is the nearest to what the machine can do, and one disturbed
  /// round cannot raise the roofline (round 11's fourth `make bench`: rounds 458, 444, 372 GFLOP/s,
  /// whose median made a 45 % step read 49 %).
  public static func peak(ofRounds rounds: [Double]) -> Double { rounds.max() ?? .nan }

  /// Achieved over peak, in percent.
  public static func rooflinePercent(gflops: Double, peakGflops: Double) -> Double { 100 * gflops / peakGflops }

  /// The bf16 peak when no bf16 GEMM is measured: AVX512-BF16's vdpbf16ps does two bf16 products per
  /// fp32 lane per instruction, at the fp32 FMA's rate, so twice the measured fp32 peak (theoretical).
  public static let bf16PeakOverFP32 = 2.0

  /// The value after `key ` on the last line starting with it ("images_per_s 31.20" → 31.2).
  public static func value(_ key: String, in output: String) -> Double? {
    guard let line = output.split(separator: "\n").last(where: { $0.hasPrefix(key + " ") }) else { return nil }
    return line.split(separator: " ").dropFirst().first.flatMap { Double($0) }
  }
}

/// The CPU a benchmark ran on, from /proc/cpuinfo.
public struct CPUDescription: Equatable, Sendable {
  public var model: String
  /// The flags that decide which kernels run, in `interestingFlags` order, present ones only.
  public var flags: [String]

  public static let interestingFlags = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                        "avx512dq", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"]

  public init(model: String, flags: [String]) { self.model = model; self.flags = flags }

  /// The first processor's `model name` and `flags` lines.
  public init(cpuinfo: String) {
    var model = "unknown CPU", all: Set<Substring> = []
    var sawModel = false, sawFlags = false
    for line in cpuinfo.split(separator: "\n") {
      guard let colon = line.firstIndex(of: ":") else { continue }
      let key = line[..<colon].trimmingCharacters(in: .whitespaces)
      let value = line[line.index(after: colon)...]
      if key == "model name", !sawModel { model = value.trimmingCharacters(in: .whitespaces); sawModel = true }
      if key == "flags", !sawFlags { all = Set(value.split(separator: " ")); sawFlags = true }
    }
    self.init(model: model, flags: Self.interestingFlags.filter { all.contains(Substring($0)) })
  }

  public var hasBF16: Bool { flags.contains("avx512_bf16") }
}
