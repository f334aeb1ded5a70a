import FlareCore
import FlareGGUF
import Foundation
import Testing
import _FlareTestSupport

/// The traps found by reading the code (issue 9, part 3), reproduced as a user meets them: files
/// that parse but hold values that make no sense. Each run must exit 1 with a message naming the
/// file and the key, leave nothing behind, and never trap (a trap exits 132 or 133).
///
/// Oracle: the expected refusals follow from the rules of `formats/models.md` ("Checks").
@Suite("semantic traps, end to end")
struct SemanticInputEndToEndTests {
  /// `Fixtures/gguf/tiny-llama.gguf` (with the `gpt2` pre-tokenizer flare-convert writes) with
  /// some keys changed.
  func tinyGGUF(_ folder: String, _ set: [(key: String, value: GGUFValue)], name: String) throws
    -> String
  {
    let source = try GGUFFile(path: fixturePath("gguf/tiny-llama.gguf"))
    let path = "\(folder)/\(name).gguf"
    let metadata = editedMetadata(
      source.metadata, set: [("tokenizer.ggml.pre", .string("gpt2"))] + set, drop: [])
    try writeGGUF(copying: source, metadata: metadata, to: path)
    return path
  }

  /// `Fixtures/peft/base-llama` with config fields changed, and a small tokenizer.
  func baseLlama(_ folder: String, _ set: [(String, JSONValue)], tokenizer: String? = nil) throws
    -> String
  {
    let path = "\(folder)/model-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(
      atPath: "\(path)/model.safetensors",
      withDestinationPath: fixturePath("peft/base-llama/model.safetensors"))
    let config = try loadFixtureJSON("peft/base-llama/config.json")
    writeJSON(editedJSON(config, set: set, drop: []), to: "\(path)/config.json")
    writeBytes(Array((tokenizer ?? syntheticBPETokenizerJSON()).utf8), to: "\(path)/tokenizer.json")
    return path
  }

  func expectRefusal(
    _ result: ToolResult, file: String, key: String, _ comment: String,
    sourceLocation: SourceLocation = #_sourceLocation
  ) {
    #expect(
      result.status == 1, "\(comment): exit \(result.status) \(result.stderr)",
      sourceLocation: sourceLocation)
    #expect(
      result.stderr.contains("\(file): "), "\(comment): \(result.stderr)",
      sourceLocation: sourceLocation)
    #expect(
      result.stderr.contains(key), "\(comment): \(result.stderr)", sourceLocation: sourceLocation)
    #expect(!result.stderr.contains("Fatal error"), "\(comment)", sourceLocation: sourceLocation)
  }

  @Test("llama.block_count INT32 −1: --check fails naming the key and its offset; generate exits 1")
  func negativeBlockCount() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let path = try tinyGGUF(folder, [("llama.block_count", .int32(-1))], name: "blocks")
    let offset = try #require(
      try GGUFFile(path: path).metadata.first { $0.key == "llama.block_count" }?.offset)
    let check = try runTool("flare-inspect", ["--check", path])
    expectRefusal(check, file: path, key: "key 'llama.block_count' is -1", "inspect --check")
    #expect(check.stdout.hasPrefix("\(path): FAILED: "))
    #expect(check.stdout.contains("(at byte \(offset))"), "\(check.stdout)")
    let json = try runTool("flare-inspect", ["--check", "--json", path])
    let error = try JSONParser.parse(Array(json.stdout.utf8))["error"]
    #expect(error?["key"]?.stringValue == "llama.block_count")
    #expect(error?["offset"]?.intValue == offset)
    let generate = try runTool(
      "flare-eval", ["generate", "--model", path, "--prompt", "hi", "--max-tokens", "2"])
    expectRefusal(generate, file: path, key: "key 'llama.block_count'", "eval generate")
    // The unchanged file passes the same check, with its hyperparameters.
    let valid = try tinyGGUF(folder, [], name: "valid")
    let ok = try runTool("flare-inspect", ["--check", valid])
    #expect(ok.status == 0, "\(ok.stdout)")
    #expect(ok.stdout.contains("llama hyperparameters consistent with the tensors"))
  }

  @Test("flare-convert HF → GGUF: head counts that do not fit the tensors, a huge hidden size")
  func converterRawPath() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    // Before: a precondition trap in LlamaLayout.permuteRows (raw-bytes path), and a UInt32
    // conversion trap writing llama.embedding_length.
    let cases: [(String, JSONValue, String)] = [
      ("num_key_value_heads", .integer(32), "key 'num_key_value_heads' is 32"),
      ("num_key_value_heads", .integer(3), "key 'num_key_value_heads' is 3"),
      ("num_attention_heads", .integer(32), "num_attention_heads 32 × head_dim 8"),
      ("hidden_size", .integer(4_294_967_296), "key 'hidden_size' is 4294967296"),
    ]
    for (field, value, words) in cases {
      let model = try baseLlama(folder, [(field, value)])
      let out = "\(folder)/out.gguf"
      let result = try runTool("flare-convert", [model, out])
      expectRefusal(result, file: "\(model)/config.json", key: words, "\(field) \(value)")
      #expect(!fileExists(out))
    }
  }

  @Test("flare-merge into a GGUF base whose head count is 0 or not a multiple of the KV heads")
  func mergerHeadCount() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let adapter = "\(folder)/adapter"
    try writeTinyLlamaLoRA(folder: adapter, hidden: 64, qRows: 64, kRows: 32)
    // Before: a precondition trap permuting the adapter's B rows.
    for (value, words) in [
      (GGUFValue.uint32(0), "key 'llama.attention.head_count' is 0"),
      (.uint32(3), "key 'llama.attention.head_count_kv' is 2, which does not divide"),
    ] {
      let base = try tinyGGUF(folder, [("llama.attention.head_count", value)], name: "base")
      let out = "\(folder)/merged.gguf"
      let result = try runTool(
        "flare-merge", ["--base", base, "--adapter", adapter, "--output", out])
      expectRefusal(result, file: base, key: words, "head_count \(value)")
      #expect(!fileExists(out))
    }
    // The same adapter merges into the unchanged base.
    let base = try tinyGGUF(folder, [], name: "base")
    let merged = try runTool(
      "flare-merge", ["--base", base, "--adapter", adapter, "--output", "\(folder)/ok.gguf", "-q"])
    #expect(merged.status == 0, "\(merged.stderr)")
  }

  @Test("the converter's tokenizer: an INT64 token type, negative and huge token ids")
  func tokenizerIntegers() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    // GGUF → HF with a token type of 2^40 (before: an Int32 conversion trap).
    let source = try GGUFFile(path: fixturePath("gguf/tiny-llama.gguf"))
    guard case .array(_, let types) = source.value("tokenizer.ggml.token_type") else {
      Issue.record("tiny-llama.gguf has no token types")
      return
    }
    let wide =
      [GGUFValue.int64(1 << 40)] + types.dropFirst().map { .int64(Int64($0.integerValue ?? 1)) }
    let gguf = try tinyGGUF(
      folder, [("tokenizer.ggml.token_type", .array(.int64, wide))], name: "types")
    let back = "\(folder)/back"
    let result = try runTool("flare-convert", [gguf, back])
    expectRefusal(
      result, file: gguf, key: "key 'tokenizer.ggml.token_type' holds INT64 1099511627776",
      "token type")
    #expect(!fileExists("\(back)/config.json"))
    // HF → GGUF with bos_token_id −1 in config.json (before: a UInt32 conversion trap).
    let negative = try baseLlama(folder, [("bos_token_id", .integer(-1))])
    let out = "\(folder)/out.gguf"
    expectRefusal(
      try runTool("flare-convert", [negative, out]), file: "\(negative)/config.json",
      key: "key 'bos_token_id' is -1", "bos -1")
    // Added-token ids −1 and 2^63−1 (before: a token silently dropped, and an overflow trap).
    for id in ["-1", "9223372036854775807"] {
      let tokenizer = syntheticBPETokenizerJSON().replacingOccurrences(
        of: #"{"id":1,"content":"</s>","special":true}"#,
        with: #"{"id":\#(id),"content":"</s>","special":true}"#)
      let model = try baseLlama(folder, [], tokenizer: tokenizer)
      expectRefusal(
        try runTool("flare-convert", [model, out]), file: "\(model)/tokenizer.json",
        key: "key 'added_tokens' holds '</s>' with id \(id)", "added token id \(id)")
      #expect(!fileExists(out))
    }
  }
}
