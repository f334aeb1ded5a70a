import FlareAdapters
import FlareCore
import Testing

/// Oracle: PEFT's `LoraConfig` semantics (`scaling = lora_alpha / r`, or `lora_alpha / sqrt(r)`
/// with `use_rslora`; defaults r = 8, lora_alpha = 8). Tolerance: exact (powers of two).
@Suite("PEFT adapter_config.json")
struct PEFTConfigTests {
  func parse(_ text: String) throws -> PEFTConfig {
    try PEFTConfig(json: Array(text.utf8), path: "adapter_config.json")
  }

  @Test("scaling follows lora_alpha/r, or lora_alpha/sqrt(r) with rsLoRA")
  func scaling() throws {
    let plain = try parse(
      #"{"peft_type":"LORA","r":16,"lora_alpha":32,"target_modules":["q_proj"]}"#)
    #expect(plain.scaling == 2)
    #expect(plain.scalingRule == "lora_alpha/r")
    let rs = try parse(#"{"r":16,"lora_alpha":32,"use_rslora":true,"target_modules":"^.*q_proj$"}"#)
    #expect(rs.scaling == 8)
    #expect(rs.targetModules == .regex("^.*q_proj$"))
    let defaults = try parse("{}")
    #expect(defaults.r == 8 && defaults.loraAlpha == 8 && defaults.scaling == 1)
    let patterns = try parse(
      #"{"r":8,"lora_alpha":16,"rank_pattern":{"a":2},"alpha_pattern":{"b":4.5}}"#)
    #expect(patterns.rankPattern.map(\.rank) == [2])
    #expect(patterns.alphaPattern.map(\.alpha) == [4.5])
  }

  static let invalid = [
    #"{"r":0}"#, #"{"r":"8"}"#, #"{"lora_alpha":"x"}"#, #"{"use_rslora":1}"#, #"{"r":8,"r":4}"#,
    #"{"target_modules":5}"#, #"{"rank_pattern":{"a":-1}}"#, "[1]", "{", #"{"use_dora":"yes"}"#,
  ]

  @Test("malformed configs are rejected with the field named", arguments: invalid)
  func rejects(text: String) {
    #expect(throws: FlareError("adapter", .invalidAdapterConfig, "")) { try parse(text) }
  }
}
