// swift-tools-version:6.0
// MobileNetV2 data-parallel trainer for CPUs. See README.md and docs/architecture.md.
import PackageDescription
import Foundation

// Release builds drop bounds checks in the numerical kernels (they are tested against naive
// references instead) and target a deliberate CPU baseline. haswell = AVX2 + FMA (2013,
// and every AMD Zen): a binary built for a newer CPU than the user's dies with SIGILL, so the default
// is conservative. Override with MNV2_TARGET_CPU=native (or znver4, ...) for a local build.
let targetCPU = ProcessInfo.processInfo.environment["MNV2_TARGET_CPU"] ?? "haswell"
var fastFlags: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]
#if arch(x86_64)
fastFlags.append(.unsafeFlags(["-target-cpu", targetCPU]))
#endif

let package = Package(
  name: "MobileNetV2Trainer",
  platforms: [.macOS(.v13)],
  products: [
    .library(name: "Kernels", targets: ["Kernels"]),
    .library(name: "MobileNet", targets: ["MobileNet"]),
    .library(name: "Checkpoint", targets: ["Checkpoint"]),
    .library(name: "Training", targets: ["Training"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
  ],
  targets: [
    // System libraries, found through pkg-config (installed by `make deps`).
    .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                   providers: [.apt(["libopenblas-dev"])]),

    // Numerical kernels: NHWC float32 forward/backward pairs, each with a naive reference.
    .target(name: "Kernels", dependencies: ["CBLAS"], swiftSettings: fastFlags),
    // MobileNetV2 exactly as TF-slim defines it: architecture, parameters, forward/backward.
    .target(name: "MobileNet", dependencies: ["Kernels"], swiftSettings: fastFlags),
    // safetensors files with TF-slim variable names.
    .target(name: "Checkpoint", dependencies: ["MobileNet"], swiftSettings: fastFlags),
    // Optimizer, learning-rate schedules, the training step.
    .target(name: "Training", dependencies: ["MobileNet", "Kernels"], swiftSettings: fastFlags),

    .executableTarget(name: "bench", dependencies: [
      "Training", "MobileNet", "Kernels",
      .product(name: "ArgumentParser", package: "swift-argument-parser"),
    ], swiftSettings: fastFlags),

    .testTarget(name: "KernelsTests", dependencies: ["Kernels"], swiftSettings: fastFlags),
    .testTarget(name: "MobileNetTests", dependencies: ["MobileNet", "Kernels"], swiftSettings: fastFlags),
    .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint", "MobileNet"], swiftSettings: fastFlags),
    .testTarget(name: "TrainingTests", dependencies: ["Training", "MobileNet", "Kernels"], swiftSettings: fastFlags),
  ],
  swiftLanguageModes: [.v5]
)
