import FlareCore
import FlareGGUF
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// `flare-merge` on the real SmolLM2-135M-Instruct with a PEFT adapter made by
/// `Fixtures/peft/make_fixtures.py` (r=4 on q_proj and v_proj, saved in BF16).
///
/// Oracle: PEFT's `merge_and_unload` on the F32 HF folder (`Fixtures/golden/peft-merges.json`,
/// `smollm2-demo`): the set of changed tensors, their first values and their largest change.
/// Tolerance: first values and largest change within 1e-6 (float rounding of the rank-4
/// products). And Flare against itself across formats: the GGUF merge (Q/K deltas permuted for
/// llama.cpp) must equal the HF merge exactly when both are written as F32.
@Suite("flare-merge on the real SmolLM2", .serialized)
struct MergeRealModelTests {
  static let gguf = "\(modelCache)/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
  static let adapter = fixturePath("peft/smollm2-demo-lora")

  @Test("HF folder and GGUF merges agree with PEFT and with each other")
  func realMerge() throws {
    if offline && !fileExists(Self.gguf) { return }
    #expect(
      fileExists(Self.gguf), "run scripts/fetch-models.sh (or make test) to fetch the real model")
    let golden = try #require(try loadFixtureJSON("golden/peft-merges.json")["smollm2-demo"])
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let hf = "\(folder)/hf"
    #expect(try runTool("flare-convert", [Self.gguf, hf, "-q"]).status == 0)

    let mergedHF = "\(folder)/merged-hf"
    let result = try runTool(
      "flare-merge",
      ["--base", hf, "--adapter", Self.adapter, "--output", mergedHF, "--verify", "--json"])
    #expect(result.status == 0, "\(result.stderr)")
    let report = try JSONParser.parse(Array(result.stdout.utf8))
    #expect(report["verified"] != nil && report["verified"] != .null)
    let changed = try #require(golden["changed"]?.arrayValue)
    let reported = try #require(report["tensors"]?.arrayValue)
    #expect(
      Set(reported.compactMap { $0["name"]?.stringValue })
        == Set(changed.compactMap { $0["name"]?.stringValue }))
    #expect(report["untouched"]?.intValue == golden["unchanged_tensor_count"]?.intValue)
    let model = try SafetensorsModel.open(mergedHF)
    for entry in changed {
      let name = try #require(entry["name"]?.stringValue)
      let view = try #require(model.view(name))
      let first = (entry["first8_f32_bits"]?.arrayValue ?? []).compactMap {
        $0.uint64Value.map { Float(bitPattern: UInt32($0)) }
      }
      let values = view.floats()
      for (x, y) in zip(values.prefix(first.count), first) {
        #expect(abs(x - y) <= 1e-6, "\(name)")
      }
      let change = reported.first { $0["name"] == .string(name) }?["max_change"]?.doubleValue ?? -1
      #expect(abs(change - (entry["max_abs_diff"]?.doubleValue ?? 0)) <= 1e-6, "\(name) max change")
    }
    #expect(fileExists("\(mergedHF)/config.json") && fileExists("\(mergedHF)/tokenizer.json"))

    // The same merge into the GGUF, written as F32, equals the HF merge exactly.
    let mergedGGUF = "\(folder)/merged.gguf"
    let toGGUF = try runTool(
      "flare-merge",
      [
        "--base", Self.gguf, "--adapter", Self.adapter, "--output", mergedGGUF, "--outtype", "f32",
        "--verify", "-q",
      ])
    #expect(toGGUF.status == 0, "\(toGGUF.stderr)")
    let diff = try runTool("flare-inspect", ["--quiet", "--diff", mergedHF, mergedGGUF])
    #expect(diff.status == 0, "\(diff.stdout)")
    #expect(diff.stdout == "result: identical within tolerance (272 tensors compared)\n")

    // Default: merged tensors keep the base's Q4_1 (dequantized, merged, re-quantized), said so.
    let keep = try runTool(
      "flare-merge",
      [
        "--base", Self.gguf, "--adapter", Self.adapter, "--output", "\(folder)/q41.gguf",
        "--verify",
      ])
    #expect(keep.status == 0, "\(keep.stderr)")
    #expect(keep.stdout.contains("re-quantized to their own types"))
    let q41 = try GGUFFile(path: "\(folder)/q41.gguf")
    #expect(q41.tensor("blk.0.attn_q.weight")?.type == .q4_1)
    #expect(q41.tensors.count == 272)
  }
}
