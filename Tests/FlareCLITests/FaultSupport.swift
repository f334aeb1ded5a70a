import Foundation
import Testing
import _FlareTestSupport

/// Small real models for the fault tests (KillTests, OutputFaultTests).
enum FaultModels {
  /// Fixtures/encoders/tiny-bert-cls with a word vocabulary from the encoder run's training
  /// sentences: a BERT classifier flare-train trains in about a second (debug build).
  static func tinyBERT(in scratch: String) throws -> String {
    let model = "\(scratch)/tiny-bert"
    try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
    for file in ["config.json", "model.safetensors"] {
      try FileManager.default.copyItem(
        atPath: fixturePath("encoders/tiny-bert-cls/\(file)"), toPath: "\(model)/\(file)")
    }
    let words = [
      "the", "film", "was", "a", "delight", "i", "want", "my", "money", "back", "meeting", "is",
      "for", "at", "what", "wonderful", "this", "soup", "cold", "and", "bland",
    ]
    writeBytes(
      Array((["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words).joined(separator: "\n").utf8),
      to: "\(model)/vocab.txt")
    return model
  }

  /// `flare-train lora` arguments for the tiny BERT on the encoder run's data.
  static func trainArguments(model: String, output: String, steps: Int = 30) -> [String] {
    [
      "lora", "--model", model, "--task", "classification", "--data",
      fixturePath("training/encoder-run/train.jsonl"), "--output", output, "--rank", "4",
      "--alpha", "8", "--batch-size", "4", "--max-steps", String(steps), "--save-every", "1",
      "--seed", "1", "--threads", "1", "--max-length", "24", "--quiet",
    ]
  }

  /// The tiny Llama of Fixtures/peft with the real SmolLM2 byte-level BPE tokenizer cut to its
  /// 64 tokens (Fixtures/fuzz/tokenizer-json/seed-bpe-smollm2-64.json): an HF folder.
  static func tinyLlama(in scratch: String) throws -> String {
    let model = "\(scratch)/tiny-llama"
    try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
    for file in ["config.json", "model.safetensors"] {
      try FileManager.default.copyItem(
        atPath: fixturePath("peft/base-llama/\(file)"), toPath: "\(model)/\(file)")
    }
    try FileManager.default.copyItem(
      atPath: fixturePath("fuzz/tokenizer-json/seed-bpe-smollm2-64.json"),
      toPath: "\(model)/tokenizer.json")
    return model
  }

  /// The tiny Llama as a GGUF.
  static func tinyLlamaGGUF(in scratch: String) throws -> String {
    let gguf = "\(scratch)/tiny-llama.gguf"
    let result = try runTool("flare-convert", [try tinyLlama(in: scratch), gguf, "-q"])
    try #require(result.status == 0, "\(result.stderr)")
    return gguf
  }
}
