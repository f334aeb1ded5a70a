import FlareAdapters
import FlareArchitectures
import FlareCore
import FlareGGUF
import FlareSafetensors
import FlareTokenizers
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareModels

/// The decoder families beyond Llama (``ModelFamily``) in every tool, on tiny models made by
/// transformers from a config with seeded random weights (`Fixtures/families/make_fixtures.py`).
///
/// Oracles, from `Fixtures/families/golden.json`: transformers 5.25 (float32, eager attention)
/// for the logits of the HF folder; PEFT 0.21 for the adapter applied unmerged and for
/// `merge_and_unload` (`tiny-<family>-merged.safetensors`); llama-cpp-python 0.3.36 (F32 KV
/// cache) for the logits of the GGUF flare-convert writes, whose CRC-32 the golden records so
/// the check is on the same bytes; the `tokenizers` library for the token ids.
/// Tolerances: logits within 1e-4 absolute (they are a few units; llama.cpp and transformers
/// agree to 3e-6); merged F32 weights within 1e-6 (rank-4 products of values below 1).
@Suite("Qwen2, Qwen3, Gemma 2 and Gemma 3 against transformers, PEFT and llama.cpp")
struct FamilyTests {
  static let golden: JSONValue = (try? loadFixtureJSON("families/golden.json")) ?? .null
  static let families = ["qwen2", "qwen3", "gemma2", "gemma3"]

  /// How far llama.cpp's logits may be from Flare's: 1e-4, but 5e-3 for Gemma, where ggml
  /// computes GELU from a table of F16 values (its GGML_GELU_FP16), which moves its logits by up
  /// to 3e-3 from transformers' (the golden's own comparison), while Flare's stay within 1e-4 of
  /// transformers'.
  static func llamaCppTolerance(_ family: String) -> Float {
    family.hasPrefix("gemma") ? 5e-3 : 1e-4
  }

  struct Case {
    var text: String
    var ids: [Int]
    var positions: [Int]
    var rows: [String: [[Float]]]
  }

  static func cases(_ family: String) throws -> [Case] {
    try #require(golden["families"]?[family]?["cases"]?.arrayValue).map { item in
      var rows: [String: [[Float]]] = [:]
      for key in ["logits", "lora_logits", "llamacpp_logits"] {
        rows[key] = try #require(item[key]?.arrayValue).map {
          try #require($0.arrayValue).map { Float(try #require($0.doubleValue)) }
        }
      }
      return Case(
        text: try #require(item["text"]?.stringValue),
        ids: try #require(item["ids"]?.arrayValue).compactMap(\.intValue),
        positions: try #require(item["positions"]?.arrayValue).compactMap(\.intValue), rows: rows)
    }
  }

  static func folder(_ family: String) -> String { fixturePath("families/tiny-\(family)") }

  /// Every position's logits of `ids`, then the rows at `positions`.
  static func logits(_ model: LlamaModel, _ c: Case) throws -> [[Float]] {
    let cache = model.makeCache(batch: 1, capacity: c.ids.count)
    let all = try model.forward(tokens: [c.ids], cache: cache, logits: .all)
    let vocab = model.config.vocabSize
    return c.positions.map { Array(all[($0 * vocab)..<(($0 + 1) * vocab)]) }
  }

  static func expectClose(
    _ got: [[Float]], _ want: [[Float]]?, _ what: String, tolerance: Float = 1e-4
  ) {
    guard let want, got.count == want.count else {
      Issue.record("\(what): \(got.count) rows, golden \(want?.count ?? 0)")
      return
    }
    var worst: Float = 0
    for (row, (g, w)) in zip(got, want).enumerated() {
      #expect(g.count == w.count, "\(what) row \(row)")
      worst = max(worst, maxAbsDifference(g, w))
      #expect(worst <= tolerance, "\(what) row \(row): max |Δ| \(worst)")
    }
    print("\(what): max |Δ| \(worst)")
  }

  /// Converts the fixture folder to an F32 GGUF in `scratch` with flare-convert.
  static func convert(_ family: String, into scratch: String) throws -> String {
    let gguf = "\(scratch)/tiny-\(family).gguf"
    let result = try runTool(
      "flare-convert", [folder(family), gguf, "--outtype", "f32", "--quiet"])
    #expect(result.status == 0, "\(result.stderr)")
    return gguf
  }

  @Test("the family is read from config.json", arguments: families)
  func family(_ name: String) throws {
    let model = try LlamaModel(path: Self.folder(name))
    #expect(model.config.family.name == name)
    #expect(model.ropeStyle == .halves)
    let block = try #require(model.blocks.first)
    #expect((block.q.bias != nil) == (name == "qwen2"))
    #expect((block.queryNorm != nil) == (name == "qwen3" || name == "gemma3"))
    #expect((block.attentionOutputNorm != nil) == name.hasPrefix("gemma"))
    #expect(model.config.tieWordEmbeddings == (name != "qwen3"))
    let sliding: [Bool] =
      switch name {
      case "gemma2": [true, false]
      case "gemma3": [true, true, true, true, true, false]
      default: [false, false]
      }
    #expect(model.config.slidingLayers == sliding)
    #expect(model.config.slidingWindow == (name.hasPrefix("gemma") ? 4 : nil))
    #expect(model.config.attentionSoftcap == (name == "gemma2" ? 5 : nil))
    #expect(model.config.finalSoftcap == (name == "gemma2" ? 3 : nil))
    #expect(model.config.ropeLocalFreqBase == (name == "gemma3" ? 10000 : nil))
  }

  @Test("HF folder logits equal transformers'", arguments: families)
  func folderLogits(_ family: String) throws {
    let model = try LlamaModel(path: Self.folder(family))
    for c in try Self.cases(family) {
      Self.expectClose(try Self.logits(model, c), c.rows["logits"], "\(family) '\(c.text)'")
    }
  }

  @Test("the tokenizer gives the tokenizers library's ids", arguments: families)
  func tokenizer(_ family: String) throws {
    let tokenizer = try Tokenizer.load(folder: Self.folder(family))
    for c in try Self.cases(family) {
      #expect(tokenizer.encode(c.text, addSpecial: false) == c.ids, "\(c.text)")
    }
  }

  /// Oracle: `tokenizers` 0.23.3 on the two SentencePiece-style BPE tokenizer.json files
  /// (byte fallback, no pre-tokenizer; Gemma's normalizer, and Llama 2's with "▁" prepended),
  /// hf-golden.json's 31 multilingual strings: every id and every decoded character.
  @Test("SentencePiece-style BPE tokenizer.json gives the tokenizers library's ids and text")
  func sentencePieceBPE() throws {
    let spec = try #require(Self.golden["spm_tokenizers"])
    let strings = try #require(spec["strings"]?.arrayValue).compactMap(\.stringValue)
    for style in ["gemma", "llama2"] {
      let tokenizer = try Tokenizer.load(
        tokenizerJSON: fixturePath("families/spm-\(style)-tokenizer.json"))
      #expect(tokenizer.kind == .sentencePieceBPE)
      let cases = try #require(spec["cases"]?[style]?.arrayValue)
      #expect(cases.count == strings.count && cases.count == 31)
      for (text, expected) in zip(strings, cases) {
        let ids = tokenizer.encode(text, addSpecial: false, parseSpecial: true)
        #expect(
          ids == expected["ids"]?.arrayValue?.compactMap(\.intValue),
          "\(style): \(text.debugDescription)")
        #expect(
          tokenizer.decode(ids) == expected["decoded"]?.stringValue,
          "\(style): decoding \(text.debugDescription)")
      }
    }
  }

  @Test(
    "flare-convert writes the GGUF llama.cpp was checked on; its logits equal llama.cpp's",
    arguments: families)
  func ggufLogits(_ family: String) throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let gguf = try Self.convert(family, into: scratch)
    let crc = UInt64(CRC32.checksum(fileBytes(gguf)))
    #expect(crc == Self.golden["families"]?[family]?["gguf_crc32"]?.uint64Value)
    let file = try GGUFFile(path: gguf)
    #expect(file.value("general.architecture")?.stringValue == family)
    #expect(file.value("tokenizer.ggml.pre")?.stringValue == "qwen2")
    let model = try LlamaModel(path: gguf)
    #expect(model.config.family.name == family)
    #expect(model.ropeStyle == .halves)
    let tokenizer = try Tokenizer.load(gguf: file)
    for c in try Self.cases(family) {
      #expect(tokenizer.encode(c.text, addSpecial: false) == c.ids, "\(c.text)")
      let got = try Self.logits(model, c)
      Self.expectClose(
        got, c.rows["llamacpp_logits"], "\(family) GGUF vs llama.cpp '\(c.text)'",
        tolerance: Self.llamaCppTolerance(family))
      Self.expectClose(got, c.rows["logits"], "\(family) GGUF vs transformers '\(c.text)'")
    }
  }

  @Test("GGUF back to HF: the same tensors and configuration", arguments: families)
  func roundTrip(_ family: String) throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let gguf = try Self.convert(family, into: scratch)
    let back = "\(scratch)/back"
    let result = try runTool("flare-convert", [gguf, back, "--quiet"])
    #expect(result.status == 0, "\(result.stderr)")
    let original = try SafetensorsModel.open(Self.folder(family))
    let converted = try SafetensorsModel.open(back)
    #expect(Set(converted.tensors.map(\.name)) == Set(original.tensors.map(\.name)))
    let shifted = try #require(ModelFamily.named(family))
    for view in original.tensors {
      let other = try #require(converted.view(view.name), "\(view.name)")
      #expect(other.shape == view.shape, "\(view.name)")
      if shifted.shiftsNorm(hf: view.name) {
        // Gemma's norms went through 1 + w and back: within half an ulp of 1 + w.
        let worst = maxAbsDifference(other.floats(), view.floats())
        #expect(worst <= 0x1p-23, "\(view.name): \(worst)")
      } else {
        #expect(other.floats() == view.floats(), "\(view.name)")
      }
    }
    let configs = try [Self.folder(family), back].map { folder in
      try DecoderConfig(
        hfConfig: try Self.loadJSON("\(folder)/config.json"), path: "\(folder)/config.json")
    }
    // Everything but the padding id, which the GGUF holds from tokenizer_config.json's
    // pad_token (as llama.cpp's converter writes it) and config.json then names (Qwen's
    // config.json has none).
    let (a, b) = (configs[0], configs[1])
    #expect(a.family == b.family && a.blockCount == b.blockCount && a.headDim == b.headDim)
    #expect(a.headCount == b.headCount && a.headCountKV == b.headCountKV)
    #expect(a.embeddingLength == b.embeddingLength && a.feedForwardLength == b.feedForwardLength)
    #expect(a.ropeFreqBase == b.ropeFreqBase && a.rmsNormEpsilon == b.rmsNormEpsilon)
    #expect(a.vocabSize == b.vocabSize && a.tieWordEmbeddings == b.tieWordEmbeddings)
    #expect(a.contextLength == b.contextLength && a.eosTokenID == b.eosTokenID)
    #expect(b.padTokenID == 0 && (a.padTokenID ?? 0) == 0)
    let model = try LlamaModel(path: back)
    for c in try Self.cases(family) {
      Self.expectClose(try Self.logits(model, c), c.rows["logits"], "\(family) round trip")
    }
  }

  @Test("a PEFT LoRA applied unmerged gives PEFT's logits (folder and GGUF)", arguments: families)
  func unmergedLoRA(_ family: String) throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let adapter = try PEFTAdapter(folder: fixturePath("families/tiny-\(family)-lora"))
    for path in [Self.folder(family), try Self.convert(family, into: scratch)] {
      let model = try LlamaModel(path: path)
      try model.attach(adapters: [(adapter, 1)])
      for c in try Self.cases(family) {
        Self.expectClose(
          try Self.logits(model, c), c.rows["lora_logits"], "\(family) \(path) + LoRA")
      }
    }
  }

  @Test("flare-merge equals PEFT's merge_and_unload; the merged GGUF too", arguments: families)
  func merge(_ family: String) throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let adapter = fixturePath("families/tiny-\(family)-lora")
    var result = try runTool(
      "flare-merge",
      ["--base", Self.folder(family), "--adapter", adapter, "--output", "\(scratch)/merged", "-q"])
    #expect(result.status == 0, "\(result.stderr)")
    let merged = try SafetensorsModel.open("\(scratch)/merged")
    let peft = try SafetensorsFile(path: fixturePath("families/tiny-\(family)-merged.safetensors"))
    // Seven linear layers a block (and Qwen2's q/k/v biases, which a merge keeps).
    let blocks = try LlamaModel(path: Self.folder(family)).config.blockCount
    #expect(peft.views.count == 7 * blocks + (family == "qwen2" ? 6 : 0))
    for expected in peft.views {
      let got = try #require(merged.view(expected.name), "\(expected.name)")
      let worst = maxAbsDifference(got.floats(), expected.floats())
      #expect(worst <= 1e-6, "\(expected.name): max |Δ| \(worst)")
    }
    // Onto the GGUF base: the GGUF name maps; the merged file runs like PEFT's model.
    let gguf = try Self.convert(family, into: scratch)
    result = try runTool(
      "flare-merge",
      ["--base", gguf, "--adapter", adapter, "--output", "\(scratch)/merged.gguf", "-q"])
    #expect(result.status == 0, "\(result.stderr)")
    for path in ["\(scratch)/merged", "\(scratch)/merged.gguf"] {
      let model = try LlamaModel(path: path)
      for c in try Self.cases(family) {
        Self.expectClose(try Self.logits(model, c), c.rows["lora_logits"], "\(path) merged")
      }
    }
  }

  /// The committed adapter of `family` as trainable LoRA layers (every linear layer of every
  /// block), at `scale`.
  static func loras(_ family: String, model: LlamaModel, scale: Float) throws -> [String:
    TrainableLoRA]
  {
    let adapter = try WeightSource(
      path: fixturePath("families/tiny-\(family)-lora/adapter_model.safetensors"))
    var loras: [String: TrainableLoRA] = [:]
    for layer in 0..<model.config.blockCount {
      for part in [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
      ] {
        let module = "model.layers.\(layer).\(part)"
        func tensor(_ suffix: String) throws -> TrainableTensor {
          let w = try adapter.weight("base_model.model.\(module).\(suffix).weight")
          return TrainableTensor(
            name: "\(module).\(suffix)", shape: [w.rows, w.cols], values: Array(w.values))
        }
        loras[module] = TrainableLoRA(
          module: module, a: try tensor("lora_A"), b: try tensor("lora_B"), scale: scale,
          dropout: 0)
      }
    }
    return loras
  }

  /// Runs one training pass of `state` and checks it against the golden `spec` and PEFT's
  /// gradients in `grads`: the loss within 1e-5 relative, every LoRA gradient within 1e-4
  /// relative Frobenius.
  static func checkStep(
    _ what: String, model: LlamaModel, batch: TrainingBatch, state: TrainingState,
    spec: JSONValue, grads: String
  ) throws {
    let peft = try WeightSource(path: fixturePath("families/\(grads)"))
    let count = try #require(spec["label_count"]?.intValue)
    let expectedLoss = try #require(spec["loss"]?.doubleValue)
    let result = try model.trainingPass(
      batch: batch, state: state, gradientScale: 1 / Float(count))
    #expect(result.count == count)
    let loss = result.lossSum / Double(result.count)
    #expect(abs(loss - expectedLoss) / expectedLoss < 1e-5, "\(what): loss \(loss)")
    let got = gradients(state)
    #expect(got.count == 14 * model.config.blockCount)
    var worst = 0.0
    for (name, values) in got {
      let error = relativeFrobenius(values, Array(try peft.weight(name).values))
      worst = max(worst, error)
      #expect(error < 1e-4, "\(what): \(name) \(error)")
    }
    print(
      "\(what): loss relative \(abs(loss - expectedLoss) / expectedLoss), worst gradient \(worst)")
  }

  /// Oracle: PEFT's float32 `loss.backward()` for the adapter as saved, on the prompts as a
  /// right-padded batch (`tiny-<family>-grads.safetensors`), with and without gradient
  /// checkpointing. Tolerances as ``checkStep``: the Llama bounds, on models whose float32
  /// rounding is far smaller.
  @Test("one LoRA training step gives PEFT's loss and gradients", arguments: families)
  func training(_ family: String) throws {
    let spec = try #require(Self.golden["families"]?[family]?["training"])
    let batch = TrainingBatch(
      tokens: try intRows(spec["input_ids"]),
      mask: try intRows(spec["attention_mask"]).map { $0.map { $0 != 0 } },
      targets: .tokens(try intRows(spec["labels"])))
    for checkpointing in [false, true] {
      let model = try LlamaModel(path: Self.folder(family))
      model.gradientCheckpointing = checkpointing
      let scale = Float(try #require(spec["scale"]?.doubleValue))
      let state = TrainingState(loras: try Self.loras(family, model: model, scale: scale))
      try Self.checkStep(
        "\(family) training step (checkpointing \(checkpointing))", model: model, batch: batch,
        state: state, spec: spec, grads: "tiny-\(family)-grads.safetensors")
    }
  }

  /// Oracle: the same adapter made a FLARE adapter in PyTorch (`flare_step` of the fixture
  /// script): q_proj and v_proj fused with add_relu, the source states the base model's
  /// `hidden_states` on the parallel text (for Gemma, block 0's input is the scaled
  /// embeddings, as the reference takes it). Tolerances as ``checkStep``.
  @Test("one FLARE step gives PyTorch's loss and gradients", arguments: families)
  func flare(_ family: String) throws {
    let spec = try #require(Self.golden["families"]?[family]?["flare"])
    let target = try #require(spec["target_ids"]?.arrayValue).compactMap(\.intValue)
    let source = try #require(spec["source_ids"]?.arrayValue).compactMap(\.intValue)
    let batch = TrainingBatch(
      tokens: [target], mask: [target.map { _ in true }], targets: .tokens([target]),
      source: [source], sourceMask: [source.map { _ in true }])
    let model = try LlamaModel(path: Self.folder(family))
    model.trainingThreads = 2
    let scale = Float(try #require(spec["scale"]?.doubleValue))
    let loras = try Self.loras(family, model: model, scale: scale)
    let fused = Set(loras.keys.filter { $0.hasSuffix(".q_proj") || $0.hasSuffix(".v_proj") })
    let state = TrainingState(
      loras: loras,
      fusion: TrainingFusion(fusion: .addReLU, fusedModules: fused, causal: false))
    try Self.checkStep(
      "\(family) FLARE step", model: model, batch: batch, state: state, spec: spec,
      grads: "tiny-\(family)-flare-grads.safetensors")
  }

  @Test("configurations the families do not support are refused by key")
  func refusals() throws {
    let base = try Self.loadJSON("\(Self.folder("qwen2"))/config.json")
    func refused(_ key: String, _ value: JSONValue) -> FlareError? {
      guard case .object(var members) = base else { return nil }
      members.removeAll { $0.0 == key }
      members.append((key, value))
      do throws(FlareError) {
        _ = try DecoderConfig(hfConfig: .object(members), path: "config.json")
        return nil
      } catch {
        return error
      }
    }
    #expect(refused("use_sliding_window", .bool(true))?.key == "use_sliding_window")
    #expect(
      refused("layer_types", .array([.string("sliding_attention"), .string("full_attention")]))?
        .key == "layer_types")
    #expect(refused("hidden_act", .string("gelu"))?.key == "hidden_act")
    let other = refused("architectures", .array([.string("MistralForCausalLM")]))
    #expect(other == nil)  // model_type qwen2 still names the family

    // Gemma: its activation key, and what a GGUF could not hold.
    let gemma = try Self.loadJSON("\(Self.folder("gemma2"))/config.json")
    guard case .object(var members) = gemma else { return }
    members.removeAll { $0.0 == "hidden_activation" }
    members.append(("hidden_activation", .string("gelu")))
    #expect(throws: FlareError.self) {
      _ = try DecoderConfig(hfConfig: .object(members), path: "config.json")
    }
    members.removeAll { $0.0 == "hidden_activation" || $0.0 == "query_pre_attn_scalar" }
    members.append(("query_pre_attn_scalar", .integer(64)))
    let config = try DecoderConfig(hfConfig: .object(members), path: "config.json")
    #expect(config.attentionScale == 0.125)
    do {
      _ = try config.ggufKeys(fileType: 0)
      Issue.record("a query_pre_attn_scalar llama.cpp would not derive was written to a GGUF")
    } catch {
      #expect(error.key == "query_pre_attn_scalar")
    }
  }

  static func loadJSON(_ path: String) throws -> JSONValue {
    try JSONParser.parse(try readSmallFile(path))
  }
}
