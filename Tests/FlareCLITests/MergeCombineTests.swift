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
}
