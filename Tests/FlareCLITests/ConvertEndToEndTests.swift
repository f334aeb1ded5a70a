import FlareCore
import FlareGGUF
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// `flare-convert` end to end on the real SmolLM2-135M-Instruct Q4_1 GGUF.
///
/// Oracle: `Fixtures/golden/gguf-smollm2.json` (gguf-py's dequantization of every tensor, as
/// CRC-32 of the float32 values) and the source file's own metadata. Tolerance: none.
@Suite("flare-convert on the real SmolLM2", .serialized)
struct ConvertEndToEndTests {
  static let source = "\(modelCache)/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

  func available() -> Bool {
    if offline && !fileExists(Self.source) { return false }
    #expect(
      fileExists(Self.source), "run scripts/fetch-models.sh (or make test) to fetch the real model")
    return fileExists(Self.source)
  }

  @Test("GGUF → HF → GGUF reproduces gguf-py's dequantized values and the llama and tokenizer keys")
  func roundTrip() throws {
    guard available() else { return }
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let hf = "\(folder)/smollm2-hf"
    let toHF = try runTool("flare-convert", [Self.source, hf])
    #expect(toHF.status == 0, "\(toHF.stderr)")
    #expect(toHF.stdout.hasPrefix("wrote \(hf): 272 tensors (272 F32)"))
    #expect(
      folderContents(hf) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json",
      ])

    // config.json as transformers' DecoderConfig reads it.
    let config = try JSONParser.parse(fileBytes("\(hf)/config.json"))
    #expect(config["architectures"] == .array([.string("LlamaForCausalLM")]))
    for (key, value) in [
      ("hidden_size", 576), ("intermediate_size", 1536), ("num_hidden_layers", 30),
      ("num_attention_heads", 9),
      ("num_key_value_heads", 3), ("head_dim", 64), ("max_position_embeddings", 8192),
      ("vocab_size", 49152),
      ("bos_token_id", 1), ("eos_token_id", 2),
    ] {
      #expect(config[key]?.intValue == value, "\(key)")
    }
    // The source's own float32 epsilon, written as the shortest decimal that reads back to it.
    let epsilon = try GGUFFile(path: Self.source).value("llama.attention.layer_norm_rms_epsilon")
    #expect(config["rms_norm_eps"]?.doubleValue.map { GGUFValue.float32(Float($0)) } == epsilon)
    #expect(config["rope_theta"]?.doubleValue == 100_000)
    #expect(config["tie_word_embeddings"] == .bool(true))

    // The HF weights: HF names and shapes, no lm_head (tied).
    let model = try SafetensorsModel.open(hf)
    #expect(model.tensors.count == 272)
    #expect(model.view("model.embed_tokens.weight")?.shape == [49152, 576])
    #expect(model.view("model.layers.0.self_attn.k_proj.weight")?.shape == [192, 576])
    #expect(model.view("lm_head.weight") == nil)

    // Query/key rows are back in HF order. Oracle: `Fixtures/golden/convert-permute.json`,
    // numpy's inverse of llama.cpp's converter permutation on gguf-py's dequantization.
    let permuted = try loadFixtureJSON("golden/convert-permute.json")
    for entry in try #require(permuted["tensors"]?.arrayValue) {
      let name = try #require(entry["hf"]?.stringValue)
      let view = try #require(model.view(name))
      #expect(view.shape.map { JSONValue.integer($0) } == entry["shape"]?.arrayValue)
      #expect(UInt64(CRC32.checksum(view.rawBytes)) == entry["hf_crc32"]?.uint64Value, "\(name)")
    }

    // Back to GGUF, lossless F32: every tensor equals gguf-py's dequantization of the original.
    let back = "\(folder)/back.gguf"
    let toGGUF = try runTool("flare-convert", [hf, back, "--outtype", "f32"])
    #expect(toGGUF.status == 0, "\(toGGUF.stderr)")
    let original = try GGUFFile(path: Self.source)
    let converted = try GGUFFile(path: back)
    let golden = try loadFixtureJSON("golden/gguf-smollm2.json")
    var crcs: [String: UInt64] = [:]
    for entry in try #require(golden["tensors"]?.arrayValue) {
      if let name = entry["name"]?.stringValue, let crc = entry["dequant_crc32"]?.uint64Value {
        crcs[name] = crc
      }
    }
    #expect(Set(converted.tensors.map(\.name)) == Set(original.tensors.map(\.name)))
    for tensor in converted.tensors {
      #expect(tensor.type == .f32)
      #expect(tensor.dims == original.tensor(tensor.name)?.dims, "\(tensor.name)")
      #expect(
        UInt64(CRC32.checksum(converted.bytes(of: tensor))) == crcs[tensor.name], "\(tensor.name)")
    }
    // Metadata: the llama and tokenizer keys come back with the same values.
    for entry in original.metadata
    where entry.key.hasPrefix("llama.") || entry.key.hasPrefix("tokenizer.") {
      #expect(converted.value(entry.key) == entry.value, "\(entry.key)")
    }
    #expect(converted.value("general.file_type") == .uint32(0))

    // Q8_0 from the HF folder and from the GGUF directly agree byte for byte, and the
    // original's Q8_0 embedding and F32 norms come back unchanged.
    let q8FromHF = "\(folder)/q8-hf.gguf"
    let q8FromGGUF = "\(folder)/q8-gguf.gguf"
    #expect(try runTool("flare-convert", [hf, q8FromHF, "--outtype", "q8_0", "-q"]).status == 0)
    // llama.cpp's mix for Q4_1 (the tied head at Q6_K, falling back to Q8_0 for 576-wide rows):
    // the converted F32 model quantizes back to the original file's tensors, byte for byte.
    let q41 = "\(folder)/q41.gguf"
    let mixed = try runTool("flare-convert", [hf, q41, "--outtype", "q4_1"])
    #expect(mixed.status == 0)
    #expect(
      mixed.stdout.contains(
        "note: token_embd.weight: row length 576 is not a multiple of 256; written as Q8_0"))
    let rebuilt = try GGUFFile(path: q41)
    for tensor in original.tensors {
      let other = try #require(rebuilt.tensor(tensor.name))
      #expect(other.type == tensor.type, "\(tensor.name)")
      #expect(rebuilt.bytes(of: other).elementsEqual(original.bytes(of: tensor)), "\(tensor.name)")
    }
    #expect(rebuilt.value("general.file_type") == original.value("general.file_type"))
    removeTree(q41)
    #expect(
      try runTool("flare-convert", [Self.source, q8FromGGUF, "--outtype", "q8_0", "-q"]).status == 0
    )
    let a = try GGUFFile(path: q8FromHF)
    let b = try GGUFFile(path: q8FromGGUF)
    for tensor in a.tensors {
      let other = try #require(b.tensor(tensor.name))
      #expect(tensor.type == other.type)
      #expect(a.bytes(of: tensor).elementsEqual(b.bytes(of: other)), "\(tensor.name)")
      if let source = original.tensor(tensor.name), source.type == tensor.type {
        #expect(
          a.bytes(of: tensor).elementsEqual(original.bytes(of: source)), "\(tensor.name) changed")
      }
    }
    #expect(b.value("general.file_type") == .uint32(7))
  }

  @Test("--diff compares a GGUF with an HF folder through the name map and the Q/K un-permutation")
  func crossFormatDiff() throws {
    guard available() else { return }
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let hf = "\(folder)/hf"
    #expect(try runTool("flare-convert", [Self.source, hf, "-q"]).status == 0)
    let same = try runTool("flare-inspect", ["--diff", Self.source, hf, "--quiet"])
    #expect(same.status == 0)
    #expect(same.stdout == "result: identical within tolerance (272 tensors compared)\n")
    // A Q8_0 re-quantization differs from the Q4_1 original, but only by quantization error.
    let q8 = "\(folder)/q8.gguf"
    #expect(try runTool("flare-convert", [hf, q8, "--outtype", "q8_0", "-q"]).status == 0)
    let exact = try runTool("flare-inspect", ["--diff", hf, q8, "--json"])
    #expect(exact.status == 1)
    let loose = try runTool("flare-inspect", ["--diff", hf, q8, "--tolerance", "0.05", "--json"])
    #expect(loose.status == 0, "\(loose.stdout.prefix(300))")
    let document = try JSONParser.parse(Array(loose.stdout.utf8))
    let rows = try #require(document["tensors"]?.arrayValue)
    #expect(rows.count == 272)
    let q = try #require(
      rows.first { $0["name"] == .string("model.layers.0.self_attn.q_proj.weight") })
    #expect((q["rel_frobenius"]?.doubleValue ?? 1) < 0.01)
  }

  @Test("refusals: existing output, unsupported tokenizer, wrong directions and types")
  func refusals() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let tiny = fixturePath("gguf/tiny-llama.gguf")
    let unsupported = try runTool("flare-convert", [tiny, "\(folder)/hf"])
    #expect(unsupported.status == 1)
    #expect(unsupported.stderr.contains("tokenizer.ggml.pre 'default' is not supported"))
    #expect(folderContents(folder).isEmpty, "a failed conversion leaves nothing behind")
    let requant = try runTool("flare-convert", [tiny, "\(folder)/q4.gguf", "--outtype", "q4_0"])
    #expect(requant.status == 0, "\(requant.stderr)")
    let again = try runTool("flare-convert", [tiny, "\(folder)/q4.gguf", "--outtype", "q4_0"])
    #expect(again.status == 1)
    #expect(again.stderr.contains("output already exists (use --force to overwrite)"))
    #expect(
      try runTool(
        "flare-convert", [tiny, "\(folder)/q4.gguf", "--outtype", "q4_0", "--force", "-q"]
      ).status == 0)
    let badType = try runTool("flare-convert", [tiny, "\(folder)/x.gguf", "--outtype", "q3"])
    #expect(badType.status == 64)
    #expect(
      badType.stderr.hasPrefix(
        "flare-convert: error: the value 'q3' is invalid for '--outtype <type>'"))
    let noAuto = try runTool("flare-convert", [tiny, "\(folder)/y.gguf"])
    #expect(noAuto.status == 1)
    #expect(noAuto.stderr.contains("GGUF to GGUF needs an explicit --outtype"))
    let missing = try runTool("flare-convert", ["/nonexistent/model", "\(folder)/z.gguf"])
    #expect(missing.status == 1)
    let help = try runTool("flare-convert", ["--help"])
    #expect(help.status == 0 && help.stdout.hasPrefix("OVERVIEW: "))
    #expect(folderContents(folder) == ["q4.gguf"])
  }

  /// Oracle: `Fixtures/golden/convert-smollm2.json`, made by `make_convert_golden.py` with
  /// gguf-py (`dequantize`, then `quantize` to each type) and transformers/tokenizers for the
  /// tokenizer. Tolerance: none (CRC-32 of every tensor's bytes).
  @Test(
    "the converted F32 model re-quantizes to exactly gguf-py's bytes, and the HF side matches the oracle"
  )
  func requantizeAgainstGGUFPy() throws {
    guard available() else { return }
    let golden = try loadFixtureJSON("golden/convert-smollm2.json")
    let entries = try #require(golden["quantized"]?["tensors"]?.arrayValue)
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let hf = "\(folder)/hf"
    #expect(try runTool("flare-convert", [Self.source, hf, "-q"]).status == 0)

    // Every HF tensor, query/key rows un-permuted, as the oracle lays it out.
    let model = try SafetensorsModel.open(hf)
    for entry in entries {
      let name = try #require(entry["hf_name"]?.stringValue)
      let view = try #require(model.view(name), "\(name) missing")
      #expect(view.shape.map { JSONValue.integer($0) } == entry["hf_shape"]?.arrayValue)
      #expect(
        UInt64(CRC32.checksum(view.rawBytes)) == entry["hf_f32_crc32"]?.uint64Value, "\(name)")
    }

    // tokenizer.json: vocabulary, merges and special tokens as the oracle has them; the
    // pre-tokenizer splits digits first, as llama.cpp's 'smollm' and the upstream file do.
    let tokenizer = try JSONParser.parse(fileBytes("\(hf)/tokenizer.json"))
    let oracle = try #require(golden["tokenizer"])
    let vocab = try #require(tokenizer["model"]?["vocab"]?.objectMembers)
    #expect(vocab.count == oracle["vocab"]?["size"]?.intValue)
    let vocabText = vocab.sorted { ($0.1.intValue ?? 0) < ($1.1.intValue ?? 0) }.map(\.0).joined(
      separator: "\n")
    #expect(UInt64(CRC32.checksum(Array(vocabText.utf8))) == oracle["vocab"]?["crc32"]?.uint64Value)
    let merges = try #require(tokenizer["model"]?["merges"]?.arrayValue)
    #expect(merges.count == oracle["merges"]?["count"]?.intValue)
    let mergeText = merges.map {
      ($0.arrayValue ?? []).compactMap(\.stringValue).joined(separator: " ")
    }
    .joined(separator: "\n")
    #expect(
      UInt64(CRC32.checksum(Array(mergeText.utf8))) == oracle["merges"]?["crc32"]?.uint64Value)
    let added = try #require(tokenizer["added_tokens"]?.arrayValue)
    let expectedAdded = try #require(oracle["added_tokens"]?.arrayValue)
    #expect(added.map { $0["id"] } == expectedAdded.map { $0["id"] })
    #expect(added.map { $0["content"] } == expectedAdded.map { $0["content"] })
    #expect(added.map { $0["special"] } == expectedAdded.map { $0["special"] })
    #expect(tokenizer["pre_tokenizer"] == oracle["smollm_variant"]?["pre_tokenizer"])
    #expect(tokenizer["model"]?["type"] == .string("BPE"))
    #expect(tokenizer["model"]?["byte_fallback"] == .bool(false))
    let tokenizerConfig = try JSONParser.parse(fileBytes("\(hf)/tokenizer_config.json"))
    for key in [
      "bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "add_bos_token",
    ] {
      #expect(tokenizerConfig[key] == golden["tokenizer_config"]?[key], "\(key)")
    }

    // F32 → each type: bit-identical to gguf.quants.quantize; 1-D tensors stay F32.
    for type in ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "f16", "bf16"] {
      let out = "\(folder)/\(type).gguf"
      let result = try runTool("flare-convert", [hf, out, "--outtype", type, "--pure", "-q"])
      #expect(result.status == 0, "\(result.stderr)")
      let file = try GGUFFile(path: out)
      for entry in entries {
        let name = try #require(entry["name"]?.stringValue)
        let tensor = try #require(file.tensor(name))
        let key = tensor.dims.count > 1 ? type.uppercased() : "F32"
        #expect(tensor.type.name == key, "\(name)")
        #expect(
          UInt64(CRC32.checksum(file.bytes(of: tensor)))
            == entry["requant_crc32"]?[key]?.uint64Value, "\(type) \(name)")
      }
      removeTree(out)
    }
  }
}
