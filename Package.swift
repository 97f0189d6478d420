// swift-tools-version:6.0
// MobileNetV2 data-parallel trainer for CPUs. See README.md and docs/architecture.md.
import PackageDescription
import Foundation

// Release builds drop bounds checks in the numerical kernels (they are tested against naive
// references instead) and target a deliberate CPU baseline. haswell = AVX2 + FMA (2013,
// and every AMD Zen): a binary built for a newer CPU than the user's dies with SIGILL, so the default
// is conservative. Override with MNV2_TARGET_CPU=native (or znver4, ...) for a local build.
// The hot row kernels are built a second time for AVX-512 (KernelsAVX512) and chosen at start-up
// from the CPU's flags (Kernels/ISA.swift), so the default build runs AVX-512 where the CPU has it.
let targetCPU = ProcessInfo.processInfo.environment["MNV2_TARGET_CPU"] ?? "haswell"
let optimize: SwiftSetting = .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))
var fastFlags: [SwiftSetting] = [optimize]
/// AVX-512 F/CD/BW/DQ/VL (Skylake-SP and later, AMD Zen 4): what KernelsAVX512 may use.
var avx512Flags: [SwiftSetting] = [optimize, .define("KERNELS_AVX512")]
#if arch(x86_64)
fastFlags.append(.unsafeFlags(["-target-cpu", targetCPU]))
avx512Flags.append(.unsafeFlags(["-target-cpu", "skylake-avx512"]))
#endif

// Targets are grouped by concern, each group in its own array so that work on one concern
// does not touch the lines of another.

// Core: kernels, model, checkpoints, training step, benchmarks.
let coreTargets: [Target] = [
  // System libraries, found through pkg-config (installed by `make deps`).
  .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                 providers: [.apt(["libopenblas-dev"])]),
  // Helpers several libraries share (FNV-1a, stderr lines): one definition each, no dependencies.
  .target(name: "Common", swiftSettings: fastFlags),
  // Numerical kernels: NHWC float32 forward/backward pairs, each with a naive reference.
  // Per-instruction-set row kernels: one source (KernelsAVX2), compiled twice (KernelsAVX512 holds
  // symlinks); KernelRows is their protocol. Kernels picks one at start-up.
  .target(name: "KernelRows", swiftSettings: fastFlags),
  .systemLibrary(name: "CStreaming", path: "Sources/CStreaming"),
  .target(name: "KernelsAVX2", dependencies: ["KernelRows", "CStreaming"], swiftSettings: fastFlags),
  .target(name: "KernelsAVX512", dependencies: ["KernelRows", "CStreaming"], swiftSettings: avx512Flags),
  // The bf16 GEMM by run-time code generation: an x86-64 encoder, W^X executable memory, the
  // vdpbf16ps microkernels and their driver (used by Kernels' bf16 mode where the CPU has AVX512-BF16).
  .target(name: "KernelsJIT", dependencies: ["Common"], swiftSettings: fastFlags),
  .testTarget(name: "KernelsJITTests", dependencies: ["KernelsJIT", "Common"], swiftSettings: fastFlags),
  .target(name: "Kernels", dependencies: ["CBLAS", "CStreaming", "Common", "KernelRows", "KernelsAVX2", "KernelsAVX512", "KernelsJIT"],
          swiftSettings: fastFlags),
  // MobileNetV2 exactly as TF-slim defines it: architecture, parameters, forward/backward.
  .target(name: "MobileNet", dependencies: ["Kernels", "Common"], swiftSettings: fastFlags),
  // Checkpoints with TF-slim variable names: safetensors and TensorFlow's V2 tensor bundles
  // (generated protobuf code committed; .proto in Proto/), one path resolver, config inference.
  .target(name: "Checkpoint", dependencies: [
    "MobileNet", "Kernels", "Common", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
  ], exclude: ["Proto"], swiftSettings: fastFlags),
  // Optimizer, learning-rate schedules, weight averaging, the training loop and evaluation.
  .target(name: "Training", dependencies: ["MobileNet", "Kernels", "Checkpoint", "Common", "Telemetry"], swiftSettings: fastFlags),
  // The arithmetic of the benchmark reports (medians, ratios, roofline, CPU flags); Foundation only.
  .target(name: "BenchReport", swiftSettings: fastFlags),
  .testTarget(name: "BenchReportTests", dependencies: ["BenchReport"], swiftSettings: fastFlags),
  .executableTarget(name: "bench", dependencies: [
    "Training", "MobileNet", "Kernels", "Cluster", "DataPipeline", "BenchReport",
    .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  // The jobs behind the executables: flags, wiring of data, process group and training loop.
  .target(name: "Jobs", dependencies: [
    "Training", "Checkpoint", "MobileNet", "Kernels", "DataPipeline", "Collective", "Cluster", "Common",
    "Telemetry", "Observability", "Export",
    .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  .executableTarget(name: "evaluate", dependencies: [
    "Jobs", .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  .executableTarget(name: "predict", dependencies: [
    "Jobs", .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  // Test support shared by test targets (ranks as threads); not part of any product.
  .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: fastFlags),
  .testTarget(name: "CommonTests", dependencies: ["Common"], swiftSettings: fastFlags),
  .testTarget(name: "KernelsTests", dependencies: ["Kernels", "KernelRows", "Common"], swiftSettings: fastFlags),
  // Reference/ holds the PyTorch reference fixture and the script that writes it.
  .testTarget(name: "MobileNetTests", dependencies: ["MobileNet", "Kernels", "Checkpoint", "Common"],
              exclude: ["Reference"], swiftSettings: fastFlags),
  .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint", "MobileNet", "Kernels", "Common"],
              resources: [.copy("Fixtures")], swiftSettings: fastFlags),
  // Ranks as threads over the real ProcessGroup (in-process transport) behind Jobs' GroupCommunicator.
  .testTarget(name: "TrainingTests", dependencies: ["Training", "MobileNet", "Kernels", "Collective", "Jobs", "TestSupport"],
              swiftSettings: fastFlags),
  // Runs the built executables (launch, worker, evaluate) end to end.
  .testTarget(name: "EndToEndTests", dependencies: ["DataPipeline", "Collective", "Observability"], swiftSettings: fastFlags),
  .testTarget(name: "JobsTests", dependencies: [
    "Jobs", "Training", "Telemetry", .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
]

// Data pipeline: TFRecords, tf.train.Example, JPEG decoding, preprocessing, loader, `dataset` tool.
let dataTargets: [Target] = [
  .systemLibrary(name: "CTurboJPEG", path: "Sources/CTurboJPEG", pkgConfig: "libturbojpeg",
                 providers: [.apt(["libturbojpeg0-dev"])]),
  // TFRecords, tf.train.Example (generated code committed; .proto in Proto/), decoding,
  // preprocessing, sharding and the prefetching loader.
  .target(name: "DataPipeline", dependencies: [
    "CTurboJPEG", "Common", "Telemetry", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
  ], exclude: ["Proto"], swiftSettings: fastFlags),
  .executableTarget(name: "dataset", dependencies: [
    "DataPipeline", .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  .testTarget(name: "DataPipelineTests", dependencies: ["DataPipeline", "CTurboJPEG", "Kernels"], swiftSettings: fastFlags),
]

// Interop (issue 10): deployment export (ONNX via swift-protobuf, generated code committed) and the
// `export` executable. Checkpoint formats themselves live in Checkpoint.
let interopTargets: [Target] = [
  .target(name: "Export", dependencies: [
    "Checkpoint", "MobileNet", "Kernels", "Common", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
  ], exclude: ["Proto"], swiftSettings: fastFlags),
  .executableTarget(name: "export", dependencies: [
    "Jobs", .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  .testTarget(name: "ExportTests", dependencies: [
    "Export", "Checkpoint", "MobileNet", "Kernels", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
  ], swiftSettings: fastFlags),
]

// Distributed runtime: rank tables, transports, collectives, `launch` and `worker`.
let distributedTargets: [Target] = [
  // libzmq through pkg-config (installed by `make deps`).
  .systemLibrary(name: "CZMQ", path: "Sources/CZMQ", pkgConfig: "libzmq",
                 providers: [.apt(["libzmq3-dev"])]),
  // Transports (ZeroMQ, in-process), the group context and the collective algorithms.
  // Every executable linking Collective exports its accept4, so that libzmq's accept resolves to it
  // and the source address of a stray connection is recorded before libzmq closes it (AcceptLog.swift).
  .target(name: "Collective", dependencies: ["CZMQ", "Common", "Telemetry"], swiftSettings: fastFlags,
          linkerSettings: [.unsafeFlags(["-Xlinker", "--export-dynamic-symbol=accept4"])]),
  // Rank tables, the launcher/worker environment contract, local-address checks, supervision.
  .target(name: "Cluster", dependencies: ["Collective"], swiftSettings: fastFlags),
  .executableTarget(name: "launch", dependencies: [
    "Cluster", "Telemetry", .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  // The collective self-test and allreduce benchmark that `worker self-test` / `worker bench` run.
  .target(name: "CollectiveCheck", dependencies: ["Collective"], swiftSettings: fastFlags),
  .executableTarget(name: "worker", dependencies: [
    "Cluster", "Collective", "CollectiveCheck", "Jobs", .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  .testTarget(name: "CollectiveTests", dependencies: ["Collective", "CollectiveCheck", "CZMQ", "TestSupport"], swiftSettings: fastFlags),
  .testTarget(name: "ClusterTests", dependencies: ["Cluster", "Collective"], exclude: ["Fixtures"], swiftSettings: fastFlags),
]

// What users look at besides the log line: progress and the timeline (Telemetry, below every
// library that does long work), TensorBoard event files and curves (Observability), `report`.
let observabilityTargets: [Target] = [
  // Progress bars/lines and the Chrome-trace timeline; Foundation only.
  .target(name: "Telemetry", dependencies: ["Common"], swiftSettings: fastFlags),
  // TensorBoard event files (Event/Summary protos, generated code committed; .proto in Proto/,
  // TFRecord framing from DataPipeline) and the SVG curves of metrics.jsonl.
  .target(name: "Observability", dependencies: [
    "DataPipeline", "Common", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
  ], exclude: ["Proto"], swiftSettings: fastFlags),
  .executableTarget(name: "report", dependencies: [
    "Observability", .product(name: "ArgumentParser", package: "swift-argument-parser"),
  ], swiftSettings: fastFlags),
  .testTarget(name: "TelemetryTests", dependencies: ["Telemetry"], swiftSettings: fastFlags),
  .testTarget(name: "ObservabilityTests", dependencies: ["Observability", "DataPipeline"], swiftSettings: fastFlags),
]

let package = Package(
  name: "MobileNetV2Trainer",
  platforms: [.macOS(.v13)],
  products: ["Common", "Kernels", "MobileNet", "Checkpoint", "Training", "DataPipeline", "Collective", "CollectiveCheck", "Cluster", "Jobs",
             "Telemetry", "Observability", "Export"]
    .map { .library(name: $0, targets: [$0]) },
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
  ],
  targets: coreTargets + dataTargets + distributedTargets + observabilityTargets + interopTargets,
  swiftLanguageModes: [.v5]
)
