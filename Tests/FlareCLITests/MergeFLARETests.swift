import FlareCore
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// FLARE adapters in `flare-merge` (`formats/flare-adapter.md`): a PEFT LoRA folder plus
/// `flare_config.json`.
///
/// Oracle: the plain merge of the same LoRA weights (`Fixtures/peft/lora-plain`, itself checked
/// against PEFT). What can be folded (non-fused modules, the target path of `add`) must equal it
/// byte for byte; non-linear fusions must be refused unless `--flare-target-only`.
@Suite("FLARE adapters in flare-merge")
struct MergeFLARETests {
  func flareAdapter(_ folder: String, config: String) throws -> String {
    let adapter = "\(folder)/flare-adapter"
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
      writeBytes(fileBytes(fixturePath("peft/lora-plain/\(name)")), to: "\(adapter)/\(name)")
    }
    writeBytes(Array(config.utf8), to: "\(adapter)/flare_config.json")
    return adapter
  }

  func merge(_ adapter: String, into output: String, extra: [String] = []) throws -> ToolResult {
    try runTool(
      "flare-merge",
      ["--base", fixturePath("peft/base-llama"), "--adapter", adapter, "--output", output] + extra)
  }

  @Test(
    "'add' folds the target path exactly and says the source term is left out; non-linear fusions are refused"
  )
  func rules() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let plain = "\(folder)/plain"
    #expect(try merge(fixturePath("peft/lora-plain"), into: plain, extra: ["-q"]).status == 0)
    let plainBytes = fileBytes("\(plain)/model.safetensors")

    let add = try flareAdapter(
      folder, config: #"{"flare_version":1,"fusion":"add","fused_modules":["q_proj","v_proj"]}"#)
    let added = try merge(add, into: "\(folder)/add")
    #expect(added.status == 0, "\(added.stderr)")
    #expect(added.stdout.contains("the source term s*B*A*x_s is left out"))
    #expect(fileBytes("\(folder)/add/model.safetensors") == plainBytes)

    removeTree(add)
    let relu = try flareAdapter(
      folder,
      config:
        #"{"flare_version":1,"fusion":"add_relu","fused_modules":["q_proj","v_proj"],"source":{"padding_side":"left","max_length":128}}"#
    )
    let refused = try merge(relu, into: "\(folder)/relu")
    #expect(refused.status == 1)
    #expect(refused.stderr.contains("FLARE fusion 'add_relu' on 4 modules"))
    #expect(refused.stderr.contains("--flare-target-only"))
    #expect(!fileExists("\(folder)/relu"))
    let fallback = try merge(relu, into: "\(folder)/relu", extra: ["--flare-target-only"])
    #expect(fallback.status == 0)
    #expect(
      fallback.stdout.contains(
        "warning: --flare-target-only folds the plain-LoRA fallback of 4 modules"))
    #expect(fileBytes("\(folder)/relu/model.safetensors") == plainBytes)

    // Only some modules fused: the others are plain LoRA and fold without a word about FLARE.
    removeTree(relu)
    let partial = try flareAdapter(
      folder, config: #"{"flare_version":1,"fusion":"mul","fused_modules":["k_proj"]}"#)
    let folded = try merge(partial, into: "\(folder)/partial")
    #expect(folded.status == 0, "\(folded.stderr)")
    #expect(!folded.stdout.contains("FLARE"))
  }

  static let badConfigs = [
    #"{"flare_version":2,"fusion":"add","fused_modules":["q_proj"]}"#,
    #"{"flare_version":1,"fusion":"sum","fused_modules":["q_proj"]}"#,
    #"{"flare_version":1,"fusion":"add","fused_modules":[]}"#,
    #"{"flare_version":1,"fusion":"add","fused_modules":["q_proj"],"extra":1}"#,
    #"{"flare_version":1,"fusion":"add","fused_modules":["q_proj"],"source":{"state":"last_layer"}}"#,
    // Not JSON: named with the file and the byte offset (was "Failure(message:…, offset:…)").
    #"{"flare_version":1,"#,
    // Unknown, wrong-typed and out-of-range fields under cross_attention (were accepted).
    #"{"flare_version":1,"fusion":"cross-attention","fused_modules":["q_proj"],"cross_attention":{"heads":2,"bogus":1}}"#,
    #"{"flare_version":1,"fusion":"cross-attention","fused_modules":["q_proj"],"cross_attention":{"heads":"2"}}"#,
    #"{"flare_version":1,"fusion":"cross-attention","fused_modules":["q_proj"],"cross_attention":{"heads":0}}"#,
    #"{"flare_version":1,"fusion":"cross-attention","fused_modules":["q_proj"],"cross_attention":{"dropout":1.5}}"#,
    // Heads that do not divide the adapter's rank (4).
    #"{"flare_version":1,"fusion":"cross-attention","fused_modules":["q_proj"],"cross_attention":{"heads":3}}"#,
  ]

  @Test("malformed flare_config.json is refused with the field named", arguments: badConfigs)
  func badConfig(config: String) throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let adapter = try flareAdapter(folder, config: config)
    let result = try merge(adapter, into: "\(folder)/out")
    #expect(result.status == 1)
    #expect(result.stderr.contains("flare_config.json: adapter error: "), "\(result.stderr)")
    #expect(!result.stderr.contains("Failure("), "\(result.stderr)")
    #expect(!fileExists("\(folder)/out"))
  }
}
