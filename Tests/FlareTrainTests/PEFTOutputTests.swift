import FlareAdapters
import FlareCore
import FlareModels
import FlareTrain
import Foundation
import Testing
import _FlareTestSupport

/// What Flare writes for PEFT, against PEFT itself (`Fixtures/training/check_peft_loads.py`).
@Suite("PEFT folders and targets")
struct PEFTOutputTests {
  static let targets: JSONValue? = try? loadFixtureJSON("training/peft-targets.json")

  /// The settings of each golden: Flare's config for the same LoRA PEFT configured.
  static func config(_ name: String) throws -> PEFTLoRAConfig {
    let entry = try #require(targets?[name == "causal" ? "base-llama" : "tiny-bert-cls"])
    let modules = (entry["linear_modules"]?.arrayValue ?? []).compactMap(\.stringValue)
    if name == "causal" {
      return PEFTLoRAConfig(
        r: 8, loraAlpha: 16, useRslora: true, targetModules: ["q_proj", "v_proj"],
        loraDropout: 0.05, taskType: "CAUSAL_LM", baseModel: "Fixtures/peft/base-llama")
    }
    let resolved = try LoRATargets(
      targets: ["all-linear"], modules: modules, modulesToSave: ["classifier", "score"],
      classification: true)
    return PEFTLoRAConfig(
      r: 4, loraAlpha: 8, targetModules: resolved.recorded, taskType: "SEQ_CLS",
      modulesToSave: ["classifier", "score"], baseModel: "Fixtures/encoders/tiny-bert-cls")
  }

  /// Two JSON values equal as PEFT reads them: numbers by value, `target_modules` and
  /// `modules_to_save` as sets (PEFT writes Python sets in hash order).
  static func same(_ key: String, _ a: JSONValue, _ b: JSONValue) -> Bool {
    if let x = a.doubleValue, let y = b.doubleValue { return x == y }
    if ["target_modules", "modules_to_save"].contains(key), let x = a.arrayValue,
      let y = b.arrayValue
    {
      return Set(x.compactMap(\.stringValue)) == Set(y.compactMap(\.stringValue))
    }
    return a == b
  }

  /// Oracle: the `adapter_config.json` PEFT 0.21.2 wrote for the same settings
  /// (`peft-config-causal.json`: CAUSAL_LM, q/v, r 8, alpha 16, dropout 0.05, rsLoRA;
  /// `peft-config-seqcls.json`: SEQ_CLS, all-linear on a BERT classifier, r 4, alpha 8).
  /// Exact: the same keys in the same order, equal values.
  @Test("adapter_config.json has PEFT's keys and values", arguments: ["causal", "seqcls"])
  func config(name: String) throws {
    let golden = try loadFixtureJSON("training/peft-config-\(name).json")
    let ours = try Self.config(name).json
    let goldenMembers = try #require(golden.objectMembers)
    let ourMembers = try #require(ours.objectMembers)
    #expect(ourMembers.map(\.0) == goldenMembers.map(\.0))
    for (key, want) in goldenMembers {
      let got = try #require(ours[key])
      #expect(
        Self.same(key, got, want),
        "\(key): \(JSONWriter.compact(got)) vs \(JSONWriter.compact(want))")
    }
  }

  static var modelNames: [String] {
    (targets?.objectMembers ?? []).map(\.0)
  }

  /// Oracle: PEFT's resolution of `all-linear` on three tiny models (`peft-targets.json`):
  /// what it records as `target_modules` (every linear layer but `lm_head` or the classifier
  /// module itself) and which modules get LoRA layers (not those inside `modules_to_save`).
  @Test("all-linear resolves as PEFT resolves it", arguments: modelNames)
  func allLinear(model: String) throws {
    let entry = try #require(Self.targets?[model])
    let modules = (entry["linear_modules"]?.arrayValue ?? []).compactMap(\.stringValue)
    let saved = (entry["modules_to_save"]?.arrayValue ?? []).compactMap(\.stringValue)
    let resolved = try LoRATargets(
      targets: ["all-linear"], modules: modules, modulesToSave: saved,
      classification: !saved.isEmpty)
    let recorded = (entry["all_linear_target_modules"]?.arrayValue ?? []).compactMap(\.stringValue)
    let adapted = (entry["all_linear_adapted"]?.arrayValue ?? []).compactMap(\.stringValue)
    #expect(Set(resolved.recorded) == Set(recorded))
    #expect(resolved.adapted.sorted() == adapted)
  }

  /// Oracle: PEFT's name matching (a module path equal to a name or ending in `.name`), the
  /// issue's scope rule (no LM head or embeddings) and a near-miss suggestion.
  @Test("names match by suffix; LM head, embeddings and unknown names are refused")
  func namedTargets() throws {
    let modules = (Self.targets?["base-llama"]?["linear_modules"]?.arrayValue ?? []).compactMap(
      \.stringValue)
    let qv = try LoRATargets(
      targets: ["q_proj", "v_proj"], modules: modules, classification: false)
    #expect(qv.adapted.count == 4)
    #expect(qv.recorded == ["q_proj", "v_proj"])
    let one = try LoRATargets(
      targets: ["layers.1.self_attn.q_proj"], modules: modules, classification: false)
    #expect(one.adapted == ["model.layers.1.self_attn.q_proj"])
    for refused in ["lm_head", "embed_tokens", "model.embed_tokens"] {
      #expect(throws: FlareError("train", .unsupported, "")) {
        try LoRATargets(targets: [refused], modules: modules, classification: false)
      }
    }
    do {
      _ = try LoRATargets(targets: ["q_prj"], modules: modules, classification: false)
      Issue.record("a misspelt target was accepted")
    } catch let error as FlareError {
      #expect(error.code == .invalidArgument)
      #expect(error.message.contains("did you mean 'q_proj'?"))
    }
  }

  /// Oracle: the head tensors PEFT saves (`modules_to_save`) for `BertForSequenceClassification`,
  /// `XLMRobertaForSequenceClassification` and `LlamaForSequenceClassification` with 3 labels
  /// (`peft-targets.json`): the same names and shapes; weights `N(0, 0.02)` (sample standard
  /// deviation within 10 % over the Llama head's 96 and XLM-R's 256 values), biases zero.
  @Test("classification heads have PEFT's saved names and shapes")
  func heads() throws {
    var random = SplitMix64(seed: 4)
    let built: [(String, [TrainableTensor])] = [
      ("tiny-bert-cls", ClassificationHeads.bert(hidden: 16, classes: 3, random: &random)),
      ("tiny-xlmr-cls", ClassificationHeads.roberta(hidden: 16, classes: 3, random: &random)),
      ("base-llama-seqcls", ClassificationHeads.llama(hidden: 32, classes: 3, random: &random)),
    ]
    for (model, tensors) in built {
      let saved = try #require(Self.targets?[model]?["saved_head_tensors"]?.objectMembers)
      #expect(tensors.map(\.name).sorted() == saved.map(\.0).sorted(), "\(model)")
      for tensor in tensors {
        #expect(tensor.shape == integers(Self.targets?[model]?["saved_head_tensors"]?[tensor.name]))
        if tensor.name.hasSuffix("bias") {
          #expect(tensor.values.allSatisfy { $0 == 0 })
        } else if tensor.count >= 96 {
          let variance =
            tensor.values.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(tensor.count)
          #expect(abs(variance.squareRoot() / 0.02 - 1) < 0.1, "\(tensor.name)")
        }
      }
    }
  }

  /// The folders `check_peft_loads.py` loads with PEFT: deterministic LoRA (and head) values
  /// written by ``PEFTWriter`` for the golden settings.
  static func flareWrittenTensors(_ name: String) throws -> [PEFTTensor] {
    let entry = try #require(targets?[name == "causal" ? "base-llama" : "tiny-bert-cls"])
    let modules = (entry["linear_modules"]?.arrayValue ?? []).compactMap(\.stringValue)
    let config = try Self.config(name)
    let adapted =
      name == "causal"
      ? try LoRATargets(targets: ["q_proj", "v_proj"], modules: modules, classification: false)
        .adapted
      : try LoRATargets(
        targets: ["all-linear"], modules: modules, modulesToSave: ["classifier", "score"],
        classification: true
      ).adapted
    var random = SplitMix64(seed: name == "causal" ? 1 : 2)
    var tensors: [PEFTTensor] = []
    for module in adapted {
      let shape = integers(entry["linear_shapes"]?[module])
      let (out, inputs) = (shape[0], shape[1])
      tensors.append(
        PEFTTensor(
          name: LoRAFactory.key(module, "lora_A"), shape: [config.r, inputs],
          values: (0..<(config.r * inputs)).map { _ in random.normal(std: 0.2) }))
      tensors.append(
        PEFTTensor(
          name: LoRAFactory.key(module, "lora_B"), shape: [out, config.r],
          values: (0..<(out * config.r)).map { _ in random.normal(std: 0.2) }))
    }
    if name == "seqcls" {
      tensors.append(
        PEFTTensor(
          name: "base_model.model.classifier.weight", shape: [3, 16],
          values: (0..<48).map { _ in random.normal(std: 0.3) }))
      tensors.append(
        PEFTTensor(
          name: "base_model.model.classifier.bias", shape: [3],
          values: (0..<3).map { _ in random.normal(std: 0.3) }))
    }
    return tensors
  }

  /// The committed `flare-written/` folders are what ``PEFTWriter`` writes today, byte for
  /// byte, so the PEFT load check (`check_peft_loads.py`, run by hand: PEFT loads them with no
  /// warning, every tensor lands unchanged, merged weights are `W + s·B·A`) covers the current
  /// writer. `FLARE_RECORD=1` rewrites them.
  @Test(
    "the folders PEFT was checked to load are what the writer writes",
    arguments: [
      "causal", "seqcls",
    ])
  func flareWritten(name: String) throws {
    let committed = fixturePath("training/flare-written/\(name)")
    let record = ProcessInfo.processInfo.environment["FLARE_RECORD"] == "1"
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let target = record ? committed : "\(folder)/\(name)"
    try PEFTWriter.write(
      folder: target, config: try Self.config(name), tensors: try Self.flareWrittenTensors(name),
      overwrite: true)
    for file in PEFTWriter.fileNames {
      #expect(fileBytes("\(target)/\(file)") == fileBytes("\(committed)/\(file)"), "\(file)")
    }
    let adapter = try PEFTAdapter(folder: target)
    #expect(adapter.modules.count == (name == "causal" ? 4 : 13))
    #expect(
      adapter.replacements.map(\.name).sorted()
        == (name == "causal" ? [] : ["classifier.bias", "classifier.weight"]))
  }

  /// A second write without `overwrite` is refused and leaves the first intact; a staging
  /// folder never stays behind.
  @Test("the writer refuses to overwrite and leaves no staging folder")
  func atomic() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let config = PEFTLoRAConfig(r: 1, loraAlpha: 1, targetModules: ["q"])
    let tensors = [
      PEFTTensor(name: "base_model.model.q.lora_A.weight", shape: [1, 2], values: [1, 2])
    ]
    try PEFTWriter.write(
      folder: "\(folder)/out", config: config, tensors: tensors, overwrite: false)
    let before = fileBytes("\(folder)/out/adapter_model.safetensors")
    #expect(throws: FlareError("io", .outputExists, "")) {
      try PEFTWriter.write(
        folder: "\(folder)/out", config: config,
        tensors: [
          PEFTTensor(name: "base_model.model.q.lora_A.weight", shape: [1, 2], values: [3, 4])
        ],
        overwrite: false)
    }
    #expect(throws: FlareError("adapter", .invalidArgument, "")) {
      try PEFTWriter.write(
        folder: "\(folder)/bad", config: config,
        tensors: [PEFTTensor(name: "x", shape: [2, 2], values: [1])], overwrite: false)
    }
    #expect(fileBytes("\(folder)/out/adapter_model.safetensors") == before)
    #expect(folderContents(folder) == ["out"])
  }
}
