import FlareArchitectures
import FlareCore
import FlareGGUF
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// `flare-convert` on a small synthetic HF folder, for the paths the real model does not take:
/// sharded input, F16 weights copied losslessly (rows permuted as bytes), a tied `lm_head` left
/// out, string-form merges and the plain `gpt-2` pre-tokenizer.
///
/// Oracle: the RoPE permutation written out from its definition (GGUF row `2i + j` of a head is
/// HF row `j·d/2 + i`), and the input itself. Tolerance: none.
@Suite("flare-convert on a synthetic sharded F16 folder")
struct ConvertSyntheticTests {
  static let heads = 4
  static let kvHeads = 2
  static let hidden = 32
  static let headDim = 8

  /// Deterministic F16 bytes for a tensor: element `k` of tensor `t` is `(t·1000 + k) mod 2048 / 64`.
  static func f16Bytes(_ tensorIndex: Int, count: Int) -> [UInt8] {
    var bytes: [UInt8] = []
    for k in 0..<count {
      let value = Float((tensorIndex * 1000 + k) % 2048) / 64
      withUnsafeBytes(of: HalfPrecision.floatToF16(value).littleEndian) { bytes += $0 }
    }
    return bytes
  }

  func makeFolder(_ folder: String) throws -> [String: [UInt8]] {
    let config = """
      {"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":32,"intermediate_size":64,
      "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-06,
      "rope_theta":10000.0,"max_position_embeddings":128,"vocab_size":8,"tie_word_embeddings":true,
      "bos_token_id":0,"eos_token_id":1,"torch_dtype":"float16"}
      """
    writeBytes(Array(config.utf8), to: "\(folder)/config.json")
    let tokenizer = """
      {"version":"1.0","added_tokens":[{"id":0,"content":"<s>","special":true},{"id":1,"content":"</s>","special":true}],
      "normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
      "post_processor":null,"decoder":{"type":"ByteLevel"},
      "model":{"type":"BPE","vocab":{"<s>":0,"</s>":1,"a":2,"b":3,"ab":4,"Ġ":5,"Ġa":6},"merges":["a b","Ġ a"]}}
      """
    writeBytes(Array(tokenizer.utf8), to: "\(folder)/tokenizer.json")
    writeBytes(
      Array(#"{"bos_token":"<s>","eos_token":"</s>","add_bos_token":true}"#.utf8),
      to: "\(folder)/tokenizer_config.json")
    let shapes: [(String, [Int])] = [
      ("model.embed_tokens.weight", [8, 32]), ("model.layers.0.input_layernorm.weight", [32]),
      ("model.layers.0.self_attn.q_proj.weight", [32, 32]),
      ("model.layers.0.self_attn.k_proj.weight", [16, 32]),
      ("model.layers.0.self_attn.v_proj.weight", [16, 32]),
      ("model.layers.0.self_attn.o_proj.weight", [32, 32]),
      ("model.layers.0.post_attention_layernorm.weight", [32]),
      ("model.layers.0.mlp.gate_proj.weight", [64, 32]),
      ("model.layers.0.mlp.up_proj.weight", [64, 32]),
      ("model.layers.0.mlp.down_proj.weight", [32, 64]),
      ("model.norm.weight", [32]), ("lm_head.weight", [8, 32]),
    ]
    var data: [String: [UInt8]] = [:]
    for (i, (name, shape)) in shapes.enumerated() {
      data[name] = Self.f16Bytes(i, count: shape.reduce(1, *))
    }
    let specs = shapes.map { TensorSpec(name: $0.0, dtype: .f16, shape: $0.1) }
    try SafetensorsWriter.writeSharded(folder: folder, tensors: specs, maxShardBytes: 4096) {
      sink in
      try sink.write(data[sink.spec.name] ?? [])
    }
    return data
  }

  @Test("sharded F16 folder → GGUF: names, F16 kept, norms F32, Q/K rows permuted, tokenizer keys")
  func convert() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let hf = "\(folder)/tiny-hf"
    try FileManager.default.createDirectory(atPath: hf, withIntermediateDirectories: true)
    let data = try makeFolder(hf)
    #expect(folderContents(hf).contains("model.safetensors.index.json"))
    let out = "\(folder)/tiny.gguf"
    let result = try runTool("flare-convert", [hf, out])
    #expect(result.status == 0, "\(result.stderr)")
    let file = try GGUFFile(path: out)
    #expect(file.tensor("output.weight") == nil, "a tied lm_head is left out")
    #expect(file.tensors.count == 11)
    #expect(file.value("general.file_type") == .uint32(1))
    #expect(file.value("tokenizer.ggml.pre") == .string("gpt-2"))
    #expect(
      file.value("tokenizer.ggml.merges") == .array(.string, [.string("a b"), .string("Ġ a")]))
    #expect(
      file.value("tokenizer.ggml.token_type")
        == .array(.int32, [3, 3, 1, 1, 1, 1, 1, 5].map { .int32($0) }))
    #expect(file.value("tokenizer.ggml.bos_token_id") == .uint32(0))
    #expect(file.value("tokenizer.ggml.add_bos_token") == .bool(true))
    #expect(file.value("llama.attention.layer_norm_rms_epsilon") == .float32(1e-6))
    for (name, bytes) in data where name != "lm_head.weight" {
      let gguf = try #require(ModelFamily.llama.ggufName(hf: name))
      let tensor = try #require(file.tensor(gguf), "\(gguf)")
      let stored = Array(file.bytes(of: tensor))
      if tensor.dims.count == 1 {
        #expect(tensor.type == .f32)
        let values = stride(from: 0, to: bytes.count, by: 2).map {
          HalfPrecision.f16ToFloat(UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8)
        }
        #expect(try file.floats(tensor) == values, "\(gguf) widened exactly")
        continue
      }
      #expect(tensor.type == .f16)
      let heads =
        gguf.contains("attn_q") ? Self.heads : gguf.contains("attn_k") ? Self.kvHeads : nil
      guard heads != nil else {
        #expect(stored == bytes, "\(gguf) copied")
        continue
      }
      let rowBytes = Self.hidden * 2
      for ggufRow in 0..<(bytes.count / rowBytes) {
        let head = ggufRow / Self.headDim
        let i = (ggufRow % Self.headDim) / 2
        let j = ggufRow % 2
        let hfRow = head * Self.headDim + j * (Self.headDim / 2) + i
        #expect(
          stored[(ggufRow * rowBytes)..<((ggufRow + 1) * rowBytes)]
            == bytes[(hfRow * rowBytes)..<((hfRow + 1) * rowBytes)],
          "\(gguf) row \(ggufRow)")
      }
    }
    // And back: the HF folder written from it holds the original values (as F32), rows restored.
    let back = "\(folder)/back-hf"
    #expect(try runTool("flare-convert", [out, back, "--outtype", "f16", "-q"]).status == 0)
    let model = try SafetensorsModel.open(back)
    for (name, bytes) in data where name != "lm_head.weight" {
      #expect(Array(try #require(model.view(name)).rawBytes) == bytes, "\(name)")
    }
  }
}
