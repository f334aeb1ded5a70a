import FlareAdapters
import FlareCore
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// `flare-merge --combine cat`: one adapter equal to the weighted sum of several.
///
/// Oracle: PEFT's `add_weighted_adapter(combination_type="cat")` followed by `merge_and_unload`
/// (`Fixtures/peft/merged-f32/lora-mixed-weighted.safetensors`, weights 0.75 and −0.5), and
/// Flare's own exact weighted-sum merge. Tolerance: 1e-6 absolute (float rounding).
@Suite("combining adapters")
struct MergeCombineTests {
  @Test("cat writes one adapter whose merge equals PEFT's cat merge and the direct weighted sum")
  func cat() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let base = fixturePath("peft/base-llama")
    let first = fixturePath("peft/lora-plain") + ":0.75"
    let second = fixturePath("peft/lora-plain-2") + ":-0.5"
    let combined = "\(folder)/combined"
    let result = try runTool(
      "flare-merge",
      [
        "--base", base, "--adapter", first, "--adapter", second, "--combine", "cat", "--output",
        combined,
      ])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("rank = the sum of the adapters' ranks"))
    let adapter = try PEFTAdapter(folder: combined)
    #expect(adapter.modules.count == 4)
    #expect(adapter.modules.allSatisfy { $0.rank == 6 && $0.scaling == 1 })

    let viaCat = "\(folder)/via-cat"
    #expect(
      try runTool("flare-merge", ["--base", base, "--adapter", combined, "--output", viaCat, "-q"])
        .status == 0)
    let direct = "\(folder)/direct"
    #expect(
      try runTool(
        "flare-merge",
        ["--base", base, "--adapter", first, "--adapter", second, "--output", direct, "-q"]
      ).status == 0)
    let peft = try SafetensorsFile(
      path: fixturePath("peft/merged-f32/lora-mixed-weighted.safetensors"))
    let a = try SafetensorsModel.open(viaCat)
    let b = try SafetensorsModel.open(direct)
    for expected in peft.views {
      let want = expected.floats()
      for model in [a, b] {
        let got = try #require(model.view(expected.name)).floats()
        let worst = zip(got, want).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        #expect(worst <= 1e-6, "\(expected.name): \(worst)")
      }
    }
    // DoRA cannot be concatenated into a plain LoRA: refused, nothing written.
    let refused = try runTool(
      "flare-merge",
      [
        "--base", base, "--adapter", fixturePath("peft/lora-dora"), "--combine", "cat", "--output",
        "\(folder)/dora",
      ])
    #expect(refused.status == 1)
    #expect(refused.stderr.contains("--combine cat cannot express DoRA"))
    #expect(!fileExists("\(folder)/dora"))
  }

  /// Oracle: PEFT's exact merge (`lora-mixed-weighted`) and the Eckart–Young theorem: the best
  /// rank-K approximation's squared Frobenius error is the discarded `Σ_{i>K} Sᵢ²`, so
  /// `‖ΔW_K − ΔW‖² / ‖ΔW‖²` measured on the merged weights must equal the reported discarded
  /// energy. Tolerance: 1e-4 absolute on the energy; at full rank (6) the merge equals PEFT's
  /// within 2e-6.
  @Test("svd at full rank is exact; at lower rank it reports the energy it discards")
  func svd() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let base = fixturePath("peft/base-llama")
    let adapters = [
      "--adapter", fixturePath("peft/lora-plain") + ":0.75", "--adapter",
      fixturePath("peft/lora-plain-2") + ":-0.5",
    ]
    let peft = try SafetensorsFile(
      path: fixturePath("peft/merged-f32/lora-mixed-weighted.safetensors"))
    let source = try SafetensorsModel.open(base)
    for rank in [6, 2] {
      let adapter = "\(folder)/svd\(rank)"
      let made = try runTool(
        "flare-merge",
        ["--base", base] + adapters + [
          "--combine", "svd", "--rank", String(rank), "--output", adapter, "--json",
        ])
      #expect(made.status == 0, "\(made.stderr)")
      let report = try JSONParser.parse(Array(made.stdout.utf8))
      let energies = try #require(report["discarded_energy"]?.objectMembers)
      #expect(energies.count == 4)
      #expect(
        try PEFTAdapter(folder: adapter).modules.allSatisfy { $0.rank == rank && $0.scaling == 1 })
      let merged = "\(folder)/merged\(rank)"
      #expect(
        try runTool(
          "flare-merge", ["--base", base, "--adapter", adapter, "--output", merged, "-q"]
        ).status == 0)
      let model = try SafetensorsModel.open(merged)
      for (module, energy) in energies {
        let name = module + ".weight"
        let got = try #require(model.view(name)).floats()
        let exact = try peft.view(name).floats()
        let original = try #require(source.view(name)).floats()
        var error = 0.0
        var norm = 0.0
        for i in 0..<exact.count {
          let d = Double(exact[i]) - Double(original[i])
          let e = Double(got[i]) - Double(exact[i])
          norm += d * d
          error += e * e
        }
        let reported = try #require(energy.doubleValue)
        #expect(
          abs(error / norm - reported) <= 1e-4,
          "\(module) rank \(rank): measured \(error / norm), reported \(reported)")
        if rank == 6 {
          #expect(reported < 1e-9)
          let worst = zip(got, exact).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
          #expect(worst <= 2e-6, "\(module): \(worst)")
        } else {
          #expect(reported > 1e-3, "rank 2 of a rank-6 delta must discard something")
        }
      }
    }
    let usage = try runTool(
      "flare-merge", ["--base", base] + adapters + ["--combine", "svd", "--output", "\(folder)/x"])
    #expect(usage.status == 64)
    #expect(usage.stderr.contains("'--combine svd' needs '--rank <k>'"))
  }
}
