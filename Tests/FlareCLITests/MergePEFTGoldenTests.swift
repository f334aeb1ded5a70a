import FlareAdapters
import FlareCore
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// `flare-merge` against PEFT's own `merge_and_unload`.
///
/// Oracle: `Fixtures/golden/peft-merges.json` and `Fixtures/peft/merged-f32/*.safetensors`, made by
/// `Fixtures/peft/make_fixtures.py` with transformers and PEFT on CPU torch, from the tiny models
/// and adapters in `Fixtures/peft/`. Tolerance: F32 merged tensors within 1e-6 absolute of PEFT's
/// (float rounding of the rank-r products; values are below 1); tensors PEFT leaves unchanged are
/// byte-identical (CRC-32); BF16 results equal PEFT's single rounding exactly.
@Suite("flare-merge against PEFT merge_and_unload")
struct MergePEFTGoldenTests {
  static let golden: JSONValue = (try? loadFixtureJSON("golden/peft-merges.json")) ?? .null
  static let cases: [String] = golden["cases"]?.objectMembers?.map(\.0) ?? []

  @Test("each PEFT case merges to PEFT's weights", arguments: cases)
  func merge(name: String) throws {
    let entry = try #require(Self.golden["cases"]?[name])
    let base = packageRoot + "/" + (try #require(entry["base"]?.stringValue))
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    var arguments = ["--base", base, "--output", "\(folder)/merged", "--verify", "-q"]
    for adapter in try #require(entry["adapters"]?.arrayValue) {
      let dir = packageRoot + "/" + (try #require(adapter["dir"]?.stringValue))
      let weight = adapter["weight"]?.doubleValue ?? 1
      arguments += ["--adapter", weight == 1 ? dir : "\(dir):\(weight)"]
    }
    let result = try runTool("flare-merge", arguments)
    #expect(result.status == 0, "\(result.stderr)")
    guard result.status == 0 else { return }
    let merged = try SafetensorsModel.open("\(folder)/merged")
    let source = try SafetensorsModel.open(base)
    let tiedHead = name == "lora-tied-head"

    // Tensors PEFT leaves alone are byte-identical.
    for tensor in try #require(entry["tensors"]?.arrayValue)
    where tensor["max_abs_diff"]?.doubleValue == 0 {
      let tensorName = try #require(tensor["name"]?.stringValue)
      guard let view = merged.view(tensorName) else {
        // PEFT saves the tied head as lm_head.weight; Flare keeps it tied unless it changes.
        #expect(tensorName == "lm_head.weight", "\(tensorName) missing")
        continue
      }
      #expect(
        UInt64(CRC32.checksum(view.rawBytes)) == tensor["crc32"]?.uint64Value, "\(tensorName)")
    }

    // Changed F32 tensors equal PEFT's.
    if let reference = entry["merged_f32"]?.stringValue {
      let peft = try SafetensorsFile(path: packageRoot + "/" + reference)
      for expected in peft.views {
        // A LoRA on a tied head: PEFT adds the delta to the shared matrix (changing the input
        // embedding too); Flare writes the merged matrix as an untied lm_head instead.
        let flareName =
          tiedHead && expected.name == "model.embed_tokens.weight"
          ? "lm_head.weight" : expected.name
        let view = try #require(merged.view(flareName), "\(flareName) missing")
        let got = view.floats()
        let want = expected.floats()
        #expect(got.count == want.count)
        let worst = zip(got, want).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        #expect(worst <= 1e-6, "\(name) \(flareName): max |Flare − PEFT| = \(worst)")
      }
    }
    if tiedHead {
      let embedding = try #require(merged.view("model.embed_tokens.weight"))
      #expect(
        embedding.rawBytes.elementsEqual(
          try #require(source.view("model.embed_tokens.weight")).rawBytes))
      let config = try JSONParser.parse(fileBytes("\(folder)/merged/config.json"))
      #expect(config["tie_word_embeddings"] == .bool(false))
    } else if let tie = entry["merged_tie_word_embeddings"]?.stringValue
      ?? entry["merged_tie_word_embeddings"]?.boolValue.map({ "\($0)" })
    {
      let config = try JSONParser.parse(fileBytes("\(folder)/merged/config.json"))
      let flareTie = config["tie_word_embeddings"]?.boolValue ?? false
      #expect(String(flareTie).lowercased() == tie.lowercased(), "tie_word_embeddings")
    }

    // BF16: one rounding of the F32 sum, which is what PEFT does with an F32 adapter.
    for tensor in entry["bf16"]?["tensors"]?.arrayValue ?? [] {
      let tensorName = try #require(tensor["name"]?.stringValue)
      let view = try #require(merged.view(tensorName))
      #expect(
        UInt64(CRC32.checksum(view.rawBytes)) == tensor["one_rounding_crc32"]?.uint64Value,
        "\(tensorName)")
    }
  }

  /// Oracle: the per-module r, lora_alpha and scaling PEFT set on each LoRA layer.
  @Test(
    "rank and alpha patterns, rsLoRA and scaling resolve per module as PEFT resolves them",
    arguments: cases)
  func scaling(name: String) throws {
    let entry = try #require(Self.golden["cases"]?[name])
    let adapters = try #require(entry["adapters"]?.arrayValue)
    guard adapters.count == 1, let modules = entry["modules"]?.arrayValue else { return }
    let adapter = try PEFTAdapter(
      folder: packageRoot + "/" + (try #require(adapters[0]["dir"]?.stringValue)))
    for module in modules {
      guard let path = module["name"]?.stringValue,
        let found = adapter.modules.first(where: { $0.path == path })
      else {
        continue
      }
      #expect(found.rank == module["r"]?.intValue, "\(path) r")
      #expect(found.alpha == module["lora_alpha"]?.doubleValue, "\(path) alpha")
      #expect(
        abs(found.scaling - (module["scaling"]?.doubleValue ?? .nan)) < 1e-12, "\(path) scaling")
    }
  }

  /// Oracle: PEFT's `get_pattern_key` on the recorded probes.
  @Test("PEFT's first-match pattern rule")
  func patterns() throws {
    for probe in try #require(Self.golden["pattern_probes"]?.arrayValue) {
      let patterns = (probe["patterns"]?.arrayValue ?? []).compactMap(\.stringValue)
      let key = try #require(probe["key"]?.stringValue)
      let values = patterns.enumerated().map { ($1, Double($0)) }
      let match = PEFTAdapter.patternValue(values, module: key).map { patterns[Int($0)] }
      #expect(match == probe["match"]?.stringValue, "\(patterns) on \(key)")
    }
  }
}
