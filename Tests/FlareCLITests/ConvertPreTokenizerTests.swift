import FlareCore
import FlareGGUF
import Foundation
import Testing
import _FlareTestSupport

/// The pre-tokenizer names `flare-convert` writes to `tokenizer.ggml.pre` are names llama.cpp's
/// vocabulary loader accepts.
///
/// Oracle: llama.cpp's own loader source, `src/llama-vocab.cpp` of the llama-cpp-python sdist that
/// `scripts/fetch-tokenizer-tests.sh` extracts; the accepted names are its `tokenizer_pre == "…"`
/// comparisons (an unknown name makes llama.cpp refuse the file: "unknown pre-tokenizer type").
/// Tolerance: none (string equality).
/// llama.cpp's loader source is not in the cache.
struct MissingOracle: Error, CustomStringConvertible {
  var description: String
}

@Suite("flare-convert writes pre-tokenizer names llama.cpp knows")
struct ConvertPreTokenizerTests {
  /// The names llama.cpp's vocabulary loader compares `tokenizer.ggml.pre` with.
  static func llamaCppNames() throws -> Set<String>? {
    let path = "\(modelCache)/tokenizer-tests/llama-vocab.cpp"
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
      if offline { return nil }
      throw MissingOracle(
        description: "\(path) is missing: run scripts/fetch-tokenizer-tests.sh (or make models)")
    }
    var names: Set<String> = []
    let marker = "tokenizer_pre == \""
    var rest = Substring(text)
    while let start = rest.range(of: marker) {
      rest = rest[start.upperBound...]
      guard let end = rest.firstIndex(of: "\"") else { break }
      names.insert(String(rest[..<end]))
      rest = rest[end...]
    }
    return names
  }

  /// The HF `pre_tokenizer` of each structure the converter recognises, with the name llama.cpp
  /// gives it.
  static let structures: [(pre: String, json: String)] = [
    (
      "gpt-2",
      #"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"#
    ),
    (
      "smollm",
      #"{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},"#
        + #"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]}"#
    ),
    (
      "llama-bpe",
      #"{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"#
        + #""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"#
        + #""behavior":"Isolated","invert":false},"#
        + #"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]}"#
    ),
  ]

  /// A one-layer F32 Llama folder whose `tokenizer.json` has the given pre-tokenizer.
  static func makeFolder(_ folder: String, preTokenizer: String) throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let config = """
      {"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":8,"intermediate_size":16,
      "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"rms_norm_eps":1e-05,
      "rope_theta":10000.0,"max_position_embeddings":64,"vocab_size":6,"tie_word_embeddings":true,
      "bos_token_id":0,"eos_token_id":1,"torch_dtype":"float32"}
      """
    writeBytes(Array(config.utf8), to: "\(folder)/config.json")
    let tokenizer = """
      {"version":"1.0","added_tokens":[{"id":0,"content":"<s>","special":true},{"id":1,"content":"</s>","special":true}],
      "normalizer":null,"pre_tokenizer":\(preTokenizer),"post_processor":null,"decoder":{"type":"ByteLevel"},
      "model":{"type":"BPE","vocab":{"<s>":0,"</s>":1,"a":2,"b":3,"ab":4,"Ġ":5},"merges":["a b"]}}
      """
    writeBytes(Array(tokenizer.utf8), to: "\(folder)/tokenizer.json")
    let shapes: [(String, [Int])] = [
      ("model.embed_tokens.weight", [6, 8]), ("model.layers.0.input_layernorm.weight", [8]),
      ("model.layers.0.self_attn.q_proj.weight", [8, 8]),
      ("model.layers.0.self_attn.k_proj.weight", [4, 8]),
      ("model.layers.0.self_attn.v_proj.weight", [4, 8]),
      ("model.layers.0.self_attn.o_proj.weight", [8, 8]),
      ("model.layers.0.post_attention_layernorm.weight", [8]),
      ("model.layers.0.mlp.gate_proj.weight", [16, 8]),
      ("model.layers.0.mlp.up_proj.weight", [16, 8]),
      ("model.layers.0.mlp.down_proj.weight", [8, 16]), ("model.norm.weight", [8]),
    ]
    var header = "{"
    var data: [UInt8] = []
    for (i, (name, shape)) in shapes.enumerated() {
      let count = shape.reduce(1, *)
      let start = data.count
      for k in 0..<count {
        withUnsafeBytes(of: (Float((i * 7 + k) % 13) / 16).bitPattern.littleEndian) { data += $0 }
      }
      header += "\(i == 0 ? "" : ",")\"\(name)\":{\"dtype\":\"F32\",\"shape\":\(shape),"
      header += "\"data_offsets\":[\(start),\(data.count)]}"
    }
    header += "}"
    var bytes: [UInt8] = []
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes += $0 }
    writeBytes(bytes + Array(header.utf8) + data, to: "\(folder)/model.safetensors")
  }

  @Test("every recognised HF pre-tokenizer is written under a name llama.cpp accepts")
  func namesLlamaCppKnows() throws {
    guard let accepted = try Self.llamaCppNames() else { return }
    #expect(accepted.count > 20, "the loader's list was read (\(accepted.count) names)")
    #expect(!accepted.contains("gpt2"), "llama.cpp refuses 'gpt2': the old name must not pass")
    let root = makeTemporaryFolder()
    defer { removeTree(root) }
    for (expected, json) in Self.structures {
      let hf = "\(root)/\(expected)-hf"
      try Self.makeFolder(hf, preTokenizer: json)
      let out = "\(root)/\(expected).gguf"
      let result = try runTool("flare-convert", [hf, out, "-q"])
      #expect(result.status == 0, "\(expected): \(result.stderr)")
      let written = try GGUFFile(path: out).value("tokenizer.ggml.pre")?.stringValue
      #expect(written == expected, "\(expected): wrote \(written ?? "nothing")")
      #expect(accepted.contains(written ?? ""), "llama.cpp does not know '\(written ?? "")'")
    }
  }

  @Test("'gpt2' (the old spelling) is read and given as gpt-2, and re-quantization rewrites it")
  func oldSpelling() throws {
    guard let accepted = try Self.llamaCppNames() else { return }
    let root = makeTemporaryFolder()
    defer { removeTree(root) }
    let hf = "\(root)/hf"
    try Self.makeFolder(hf, preTokenizer: Self.structures[0].json)
    // --tokenizer-pre gpt2 is accepted and written as gpt-2.
    let given = try runTool("flare-convert", [hf, "\(root)/given.gguf", "--tokenizer-pre", "gpt2"])
    #expect(given.status == 0, "\(given.stderr)")
    #expect(
      try GGUFFile(path: "\(root)/given.gguf").value("tokenizer.ggml.pre") == .string("gpt-2"))
    // A GGUF as earlier versions wrote it: the same file with the key set to 'gpt2'.
    let file = try GGUFFile(path: "\(root)/given.gguf")
    var metadata = file.metadata
    let index = try #require(metadata.firstIndex { $0.key == "tokenizer.ggml.pre" })
    metadata[index].value = .string("gpt2")
    let old = "\(root)/old.gguf"
    try GGUFWriter.write(
      to: old, metadata: metadata,
      tensors: file.tensors.map { GGUFTensorSpec(name: $0.name, dims: $0.dims, type: $0.type) },
      alignment: file.alignment, overwrite: false
    ) { sink in
      if let tensor = file.tensor(sink.spec.name) { try sink.write(file.bytes(of: tensor)) }
    }
    #expect(try GGUFFile(path: old).value("tokenizer.ggml.pre") == .string("gpt2"))
    // GGUF -> HF reads it; GGUF -> GGUF writes the name llama.cpp knows.
    let back = try runTool("flare-convert", [old, "\(root)/back-hf", "-q"])
    #expect(back.status == 0, "\(back.stderr)")
    let requant = try runTool("flare-convert", [old, "\(root)/requant.gguf", "--outtype", "f16"])
    #expect(requant.status == 0, "\(requant.stderr)")
    let rewritten = try GGUFFile(path: "\(root)/requant.gguf").value("tokenizer.ggml.pre")
    #expect(rewritten == .string("gpt-2"))
    #expect(accepted.contains(rewritten?.stringValue ?? ""))
  }
}
