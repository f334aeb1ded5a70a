import FlareCore
import Foundation
import Testing
import _FlareTestSupport

/// Every tool on every decoder family beyond Llama, as a user runs them, on the tiny models of
/// `Fixtures/families` (their arithmetic is checked against transformers, PEFT and llama.cpp in
/// `FamilyTests`; here: every subcommand accepts them and agrees with itself).
@Suite("The tools on Qwen2, Qwen3, Gemma 2 and Gemma 3")
struct FamilyToolTests {
  static let families = ["qwen2", "qwen3", "gemma2", "gemma3"]

  static func run(_ tool: String, _ arguments: [String]) throws -> JSONValue {
    let result = try runTool(tool, arguments)
    #expect(result.status == 0, "\(tool) \(arguments.joined(separator: " ")): \(result.stderr)")
    guard result.status == 0, arguments.contains("--json") else { return .null }
    return try JSONParser.parse(Array(result.stdout.utf8))
  }

  @Test("flare-eval logits, generate, perplexity, bench and compare", arguments: families)
  func eval(_ family: String) throws {
    let model = fixturePath("families/tiny-\(family)")
    let adapter = fixturePath("families/tiny-\(family)-lora")
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let gguf = "\(scratch)/model.gguf"
    _ = try Self.run("flare-convert", [model, gguf, "--outtype", "q8_0", "-q"])
    for path in [model, gguf] {
      _ = try Self.run(
        "flare-eval", ["logits", "--model", path, "--prompt", "Once upon", "--json"])
      let generated = try Self.run(
        "flare-eval",
        ["generate", "--model", path, "--prompt", "Once upon", "--max-tokens", "6", "--json"])
      #expect(generated["generated_ids"]?.arrayValue?.count == 6)
      let perplexity = try Self.run(
        "flare-eval",
        [
          "perplexity", "--model", path, "--file", fixturePath("llama/prompts.txt"), "--context",
          "32", "--json",
        ])
      let value = try #require(perplexity["perplexity"]?.doubleValue)
      // A random model over 288 tokens: above 1 and finite (it is in the hundreds).
      #expect(value > 1 && value.isFinite, "\(family) \(path): perplexity \(value)")
      _ = try Self.run(
        "flare-eval",
        ["bench", "--model", path, "--prompt-tokens", "16", "--gen-tokens", "4", "--json"])
    }
    // compare: the merged folder against the base with the adapter unmerged.
    let merged = "\(scratch)/merged"
    _ = try Self.run(
      "flare-merge", ["--base", model, "--adapter", adapter, "--output", merged, "--verify", "-q"])
    let comparison = try Self.run(
      "flare-eval",
      [
        "compare", "--model", merged, "--model", model, "--adapter", adapter, "--file",
        fixturePath("llama/prompts.txt"), "--compute", "f32", "--json",
      ])
    let worst = try #require(comparison["max_abs_diff"]?.doubleValue)
    #expect(comparison["top1_agreement"]?.doubleValue == 1)
    #expect(worst < 1e-4, "\(family): merged vs unmerged \(worst)")
  }

  @Test(
    "flare-train lora (causal LM and classification) and flare-eval classify", arguments: families)
  func train(_ family: String) throws {
    let model = fixturePath("families/tiny-\(family)")
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let data = fixturePath("training/encoder-run/train.jsonl")
    _ = try Self.run(
      "flare-train",
      [
        "lora", "--model", model, "--data", fixturePath("training/llama-run/train.jsonl"),
        "--output", "\(scratch)/causal", "--max-steps", "3", "--target-modules", "all-linear",
        "--max-length", "32", "--quiet",
      ])
    #expect(FileManager.default.fileExists(atPath: "\(scratch)/causal/adapter_model.safetensors"))
    _ = try Self.run(
      "flare-train",
      [
        "lora", "--model", model, "--task", "classification", "--data", data, "--output",
        "\(scratch)/classifier", "--max-steps", "2", "--batch-size", "4", "--max-length", "32",
        "--quiet",
      ])
    let report = try Self.run(
      "flare-eval",
      [
        "classify", "--model", model, "--adapter", "\(scratch)/classifier", "--data", data,
        "--json",
      ])
    #expect(report["examples"]?.intValue == 30)
    #expect(report["labels"]?.arrayValue?.count == 3)
  }
}
