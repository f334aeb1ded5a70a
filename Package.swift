// swift-tools-version:6.3
import PackageDescription

let package = Package(
  name: "Flare",
  products: [
    .executable(name: "flare-inspect", targets: ["flare-inspect"]),
    .executable(name: "flare-convert", targets: ["flare-convert"]),
    .executable(name: "flare-merge", targets: ["flare-merge"]),
    .executable(name: "flare-eval", targets: ["flare-eval"]),
    .executable(name: "flare-train", targets: ["flare-train"]),
    .library(name: "FlareCore", targets: ["FlareCore"]),
    .library(name: "FlareSafetensors", targets: ["FlareSafetensors"]),
    .library(name: "FlareGGUF", targets: ["FlareGGUF"]),
    .library(name: "FlareArchitectures", targets: ["FlareArchitectures"]),
    .library(name: "FlareTensor", targets: ["FlareTensor"]),
  ],
  targets: [
    // MARK: - C system libraries
    .systemLibrary(
      name: "CFlareOpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
    .systemLibrary(name: "CFlareZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
    // Flare's own C: the quantized dot kernels (AVX2 / AVX-512 chosen at run time), optimized
    // in every build so that debug test runs do not crawl.
    .target(name: "CFlareKernels", cSettings: [.unsafeFlags(["-O2", "-ffp-contract=off"])]),

    // MARK: - Libraries
    .target(name: "FlareCore", dependencies: ["CFlareZlib"]),
    .target(name: "FlareSafetensors", dependencies: ["FlareCore"]),
    .target(name: "FlareGGUF", dependencies: ["FlareCore"]),
    // The model families (configuration fields, tensor names, GGUF name maps), above the file
    // formats: FlareSafetensors and FlareGGUF know files, not architectures.
    .target(name: "FlareArchitectures", dependencies: ["FlareCore", "FlareGGUF"]),
    .target(name: "FlareTensor", dependencies: ["FlareCore", "CFlareOpenBLAS", "CFlareKernels"]),
    .target(name: "FlareAdapters", dependencies: ["FlareCore", "FlareSafetensors", "FlareGGUF"]),
    .target(name: "FlareCLI", dependencies: ["FlareCore"]),
    .target(
      name: "FlareMerge",
      dependencies: [
        "FlareCore", "FlareSafetensors", "FlareGGUF", "FlareArchitectures", "FlareAdapters",
        "FlareTensor", "FlareCLI", "FlareModels", "FlareTokenizers",
      ]),
    .target(name: "FlareTokenizers", dependencies: ["FlareCore", "FlareGGUF"]),
    .target(
      name: "FlareModels",
      dependencies: [
        "FlareCore", "FlareSafetensors", "FlareGGUF", "FlareArchitectures", "FlareTensor",
        "FlareAdapters", "FlareTokenizers",
      ]),
    .target(
      name: "FlareEval",
      dependencies: [
        "FlareCore", "FlareGGUF", "FlareArchitectures", "FlareTensor", "FlareTokenizers",
        "FlareModels", "FlareCLI", "FlareTrain",
      ]),
    .target(
      name: "FlareTrain",
      dependencies: [
        "FlareCore", "FlareSafetensors", "FlareArchitectures", "FlareAdapters", "FlareModels",
        "FlareTokenizers", "FlareTensor", "FlareCLI",
      ]),
    .target(
      name: "FlareConvert",
      dependencies: [
        "FlareCore", "FlareSafetensors", "FlareGGUF", "FlareArchitectures", "FlareCLI",
      ]),
    .target(
      name: "FlareInspect",
      dependencies: [
        "FlareCore", "FlareSafetensors", "FlareGGUF", "FlareArchitectures", "FlareAdapters",
        "FlareCLI",
      ]),

    .target(
      name: "FlareFuzz",
      dependencies: [
        "FlareCore", "FlareCLI", "FlareSafetensors", "FlareGGUF", "FlareArchitectures",
        "FlareAdapters", "FlareInspect", "FlareModels", "FlareTokenizers", "FlareTrain",
        "FlareConvert",
      ]),

    // MARK: - Executables
    .executableTarget(name: "flare-inspect", dependencies: ["FlareInspect", "FlareCLI"]),
    .executableTarget(name: "flare-convert", dependencies: ["FlareConvert", "FlareCLI"]),
    .executableTarget(
      name: "flare-eval", dependencies: ["FlareEval", "FlareCLI", "FlareTensor"]),
    .executableTarget(
      name: "flare-merge", dependencies: ["FlareMerge", "FlareCLI", "FlareTensor"]),
    .executableTarget(
      name: "flare-train", dependencies: ["FlareTrain", "FlareCLI", "FlareTensor"]),
    // The fuzz targets' driver (a developer tool, not a product): `make fuzz` builds it with
    // libFuzzer, every other build replays corpora with it.
    .executableTarget(name: "flare-fuzz", dependencies: ["FlareFuzz", "FlareCore", "FlareCLI"]),

    // MARK: - Tests
    .target(
      name: "_FlareTestSupport", dependencies: ["FlareCore", "FlareSafetensors", "FlareGGUF"],
      path: "Tests/_FlareTestSupport"),
    .testTarget(name: "FlareCoreTests", dependencies: ["FlareCore", "_FlareTestSupport"]),
    .testTarget(
      name: "FlareSafetensorsTests", dependencies: ["FlareSafetensors", "_FlareTestSupport"]),
    .testTarget(
      name: "FlareGGUFTests",
      dependencies: ["FlareGGUF", "FlareArchitectures", "_FlareTestSupport"]),
    .testTarget(
      name: "FlareAdaptersTests",
      dependencies: ["FlareAdapters", "FlareSafetensors", "_FlareTestSupport"]),
    .testTarget(
      name: "FlareTensorTests", dependencies: ["FlareTensor", "FlareGGUF", "_FlareTestSupport"]),
    .testTarget(
      name: "FlareTokenizersTests",
      dependencies: ["FlareTokenizers", "FlareGGUF", "_FlareTestSupport", "flare-convert"]),
    .testTarget(
      name: "FlareModelsTests",
      dependencies: [
        "FlareModels", "FlareTokenizers", "FlareGGUF", "FlareArchitectures", "FlareAdapters",
        "FlareConvert", "FlareMerge", "_FlareTestSupport", "flare-convert", "flare-merge",
      ]),
    .testTarget(
      name: "FlareTrainTests",
      dependencies: [
        "FlareTrain", "FlareModels", "FlareAdapters", "FlareTokenizers", "FlareCLI",
        "_FlareTestSupport", "flare-train", "flare-eval", "flare-merge",
      ]),
    .testTarget(
      name: "FlareCLITests",
      dependencies: [
        "FlareCLI", "FlareInspect", "FlareConvert", "FlareModels", "FlareArchitectures",
        "FlareTokenizers", "_FlareTestSupport", "flare-inspect", "flare-convert", "flare-merge",
        "flare-eval",
        "flare-train",
      ]),
    .testTarget(
      name: "FlareFuzzTests", dependencies: ["FlareFuzz", "_FlareTestSupport", "flare-fuzz"]),
  ],
  swiftLanguageModes: [.v6]
)
