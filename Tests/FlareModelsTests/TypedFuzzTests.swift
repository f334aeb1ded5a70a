import FlareAdapters
import FlareArchitectures
import FlareConvert
import FlareCore
import FlareGGUF
import FlareMerge
import FlareModels
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// A seeded generator (64-bit LCG, high bits), so every run mutates the same way.
struct SeededGenerator {
  var state: UInt64

  mutating func next() -> UInt64 {
    state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    return state >> 33
  }

  /// A number in `0..<n` (`n > 0`).
  mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }

  mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// Typed mutations of model configurations: values of the wrong type, zero, −1, huge
/// (UINT32/INT64/UINT64 maxima, 2³¹, 2⁶³), non-divisors and other small counts, NaN and
/// infinities for floats, dropped keys. Unlike byte flips, each mutation leaves a file that
/// parses, so it reaches the semantic checks.
enum TypedMutation {
  /// A new value for an integer GGUF key (`nil`: drop it).
  static func ggufInteger(_ original: Int, _ random: inout SeededGenerator) -> GGUFValue? {
    switch random.below(16) {
    case 0: return nil
    case 1: return .string(String(original))
    case 2: return .bool(true)
    case 3: return .float32(Float(original) + 0.5)
    case 4: return .uint32(0)
    case 5: return .int32(-1)
    case 6: return .uint32(.max)
    case 7: return .uint64(.max)
    case 8: return .int64(.max)
    case 9: return .int64(Int64(Int32.max) + 1)
    case 10: return .array(.uint32, [.uint32(UInt32(clamping: original))])
    case 11: return .uint32(UInt32(clamping: original * 2))
    case 12: return .int32(Int32(clamping: original - 1))
    case 13: return .float64(.nan)
    default: return .uint32(UInt32(1 + random.below(130)))
    }
  }

  /// A new value for a float GGUF key (`nil`: drop it).
  static func ggufFloat(_ original: Float, _ random: inout SeededGenerator) -> GGUFValue? {
    switch random.below(13) {
    case 0: return nil
    case 1: return .float32(.nan)
    case 2: return .float32(.infinity)
    case 3: return .float32(-original)
    case 4: return .float32(0)
    case 5: return .float64(1e-50)
    case 6: return .float64(1e300)
    case 7: return .string("\(original)")
    case 8: return .uint32(UInt32(random.below(100_000)))
    case 9: return .float32(.leastNonzeroMagnitude)
    case 10: return .int32(-5)
    default: return .float32(Float(random.below(1_000_000) + 1) * 1e-3)
    }
  }

  /// A new value for a JSON field (`nil`: drop it).
  static func json(_ original: JSONValue, _ random: inout SeededGenerator) -> JSONValue? {
    let int = original.intValue ?? 1
    switch random.below(18) {
    case 0: return nil
    case 1: return .null
    case 2: return .string("x")
    case 3: return .string(JSONWriter.compact(original))
    case 4: return .bool(true)
    case 5: return .number("1.5")
    case 6: return .integer(0)
    case 7: return .integer(-1)
    case 8: return .integer(2_147_483_648)
    case 9: return .integer(4_294_967_296)
    case 10: return .number("9223372036854775808")
    case 11: return .number("1e400")
    case 12: return .array([original])
    case 13: return .object([("value", original)])
    case 14: return .integer(int &* 2)
    case 15: return .integer(int &+ 1)
    case 16: return .number("1e-50")
    default: return .integer(1 + random.below(130))
    }
  }
}

/// Counts of what a fuzz campaign did, and checks on every verdict.
struct FuzzTally {
  var accepted = 0
  var refused = 0
  var codes: Set<String> = []

  /// Records a consumer's verdict; a non-FlareError (or an error naming no file, or neither key
  /// nor tensor) is a failure.
  mutating func record(
    _ consumer: String, _ body: () throws -> Void, file: String, context: String
  ) -> Verdict {
    var named = true
    do {
      try body()
      accepted += 1
      return .ok
    } catch let error as FlareError {
      refused += 1
      codes.insert(error.code.name)
      named = error.path?.hasPrefix(file) == true && (error.key != nil || error.tensor != nil)
      #expect(named, "\(consumer) did not name the file and key or tensor: \(error) [\(context)]")
      return .refused(code: error.code.name, key: error.key, tensor: error.tensor)
    } catch {
      Issue.record("\(consumer) threw a non-FlareError \(error) [\(context)]")
      return .foreign("\(error)")
    }
  }
}

/// Oracle: the consumers themselves must agree. Every consumer of a mutated configuration either
/// accepts it or throws a FlareError naming the file and the key (or tensor); none traps. Every
/// consumer that needs the whole model gives the verdict of the reference (`DecoderConfig` with
/// `checkTensors(complete: true)`), because they all read the configuration through it: the same
/// refusal (code, key, tensor), or, when the reference accepts, a model that loads and runs,
/// converts and merges. Each campaign is seeded and bounded, and must both accept and refuse.
@Suite("typed fuzzing of model configurations", .serialized)
struct TypedFuzzTests {
  static let integerKeys = [
    "llama.block_count", "llama.context_length", "llama.embedding_length",
    "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length",
    "llama.vocab_size", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
  ]
  static let floatKeys = ["llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"]

  /// One or two typed mutations of llama GGUF metadata.
  static func mutate(
    _ metadata: [GGUFKeyValue], _ random: inout SeededGenerator, tokenTypes: Bool = true
  ) -> ([GGUFKeyValue], String) {
    var out = metadata
    var notes: [String] = []
    for _ in 0..<(random.below(10) < 7 ? 1 : 2) {
      let keys =
        integerKeys + floatKeys + ["general.architecture"]
        + (tokenTypes ? ["tokenizer.ggml.token_type"] : [])
      let key = random.pick(keys)
      let current = out.first { $0.key == key }?.value
      var value: GGUFValue?
      switch key {
      case "general.architecture":
        value = random.pick([GGUFValue.string("gpt2"), .string(""), .uint32(1), nil])
      case "tokenizer.ggml.token_type":
        guard case .array(_, let types) = current else { continue }
        let wide = types.map { GGUFValue.int64(Int64($0.integerValue ?? 1)) }
        value = random.pick([
          GGUFValue.array(.int64, wide),
          .array(.int64, [.int64(1 << 40)] + wide.dropFirst()),
          .array(.float32, types.map { _ in .float32(1) }),
        ])
      case _ where floatKeys.contains(key):
        let original: Float =
          switch current {
          case .float32(let v): v
          default: 1e-5
          }
        value = TypedMutation.ggufFloat(original, &random)
      default:
        value = TypedMutation.ggufInteger(current?.integerValue ?? 16, &random)
      }
      out = editedMetadata(
        out, set: value.map { [(key, $0)] } ?? [], drop: value == nil ? [key] : [])
      notes.append("\(key)=\(value.map { "\($0)" } ?? "dropped")")
    }
    return (out, notes.joined(separator: ", "))
  }

  @Test("tiny-llama.gguf: mutated llama keys reach eval, convert and merge as the config says")
  func ggufCampaign() throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let source = try GGUFFile(path: fixturePath("gguf/tiny-llama.gguf"))
    let base = editedMetadata(
      source.metadata, set: SemanticCase.baseEdits("gguf/malformed/semantic.json"), drop: [])
    try writeTinyLlamaLoRA(folder: "\(work)/adapter", hidden: 64, qRows: 64, kRows: 32)
    let adapter = try PEFTAdapter(folder: "\(work)/adapter")
    var random = SeededGenerator(state: 0x7E9E_D0F1_A2E0_0003)  // seed
    var tally = FuzzTally()
    let path = "\(work)/case.gguf"
    for round in 0..<80 {
      let (metadata, context) = round == 0 ? (base, "unchanged") : Self.mutate(base, &random)
      try writeGGUF(copying: source, metadata: metadata, to: path)
      let converted = "\(work)/converted"
      let merged = "\(work)/merged.gguf"
      removeTree(converted)
      removeTree(merged)
      let reference = tally.record(
        "config+tensors",
        {
          let file = try GGUFFile(path: path)
          let config = try DecoderConfig(gguf: file)
          try config.checkTensors(config.hfShapes(of: file), complete: true)
        }, file: path, context: context)
      let eval = tally.record(
        "eval",
        {
          let model = try LlamaModel(path: path)
          _ = try model.forward(tokens: [[0, 1]], cache: model.makeCache(batch: 1, capacity: 2))
        }, file: path, context: context)
      let convert = tally.record(
        "convert",
        {
          _ = try Converter.ggufToHF(
            try GGUFFile(path: path), folder: converted, outtype: .f32, overwrite: false)
        }, file: path, context: context)
      let merge = tally.record(
        "merge",
        {
          let base = try Merger.openBase(path)
          let adapters = [WeightedAdapter(adapter: adapter)]
          let plan = try Merger.plan(base: base, adapters: adapters, outtype: nil)
          _ = try Merger.merge(
            base: base, basePath: path, adapters: adapters, plan: plan, output: merged,
            outtype: nil, overwrite: false, threads: 1)
        }, file: path, context: context)
      #expect(eval == reference, "eval [\(context)]")
      let tokenizerMutated = context.contains("tokenizer.ggml.token_type")
      if reference == .ok {
        #expect(tokenizerMutated || convert == .ok, "convert \(convert) [\(context)]")
        if case .refused(_, let key, _) = convert {
          #expect(key == "tokenizer.ggml.token_type", "[\(context)]")
        }
        #expect(merge == .ok, "merge \(merge) [\(context)]")
      } else {
        #expect(convert == reference, "convert [\(context)]")
        #expect(folderContents(converted).isEmpty, "[\(context)]")
      }
      if merge != .ok { #expect(!fileExists(merged), "[\(context)]") }
    }
    #expect(tally.accepted > 20 && tally.refused > 20, "\(tally)")
    #expect(tally.codes.isSuperset(of: ["invalidArgument", "unsupported"]), "\(tally.codes)")
  }

  static let llamaFields = [
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size", "rms_norm_eps",
    "rope_theta", "rope_parameters", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id", "attention_bias", "hidden_act", "model_type",
  ]

  /// One or two typed mutations of a JSON config's fields.
  static func mutate(_ config: JSONValue, fields: [String], _ random: inout SeededGenerator)
    -> (JSONValue, String)
  {
    var out = config
    var notes: [String] = []
    for _ in 0..<(random.below(10) < 7 ? 1 : 2) {
      let key = random.pick(fields)
      var value = TypedMutation.json(out[key] ?? .integer(8), &random)
      if key == "rope_parameters", let theta = value {
        // Mutate the nested theta (or the object's type).
        value =
          random.below(2) == 0
          ? .object([("rope_type", .string("default")), ("rope_theta", theta)]) : theta
      }
      out = editedJSON(out, set: value.map { [(key, $0)] } ?? [], drop: value == nil ? [key] : [])
      notes.append("\(key)=\(value.map(JSONWriter.compact) ?? "dropped")")
    }
    return (out, notes.joined(separator: ", "))
  }

  @Test("base-llama config.json: mutated fields reach eval and convert as the config says")
  func llamaConfigCampaign() throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let base = try loadFixtureJSON("peft/base-llama/config.json")
    var random = SeededGenerator(state: 0xC0F1_6000_0000_0011)  // seed
    var tally = FuzzTally()
    let folder = "\(work)/model"
    for round in 0..<80 {
      let (config, context) =
        round == 0 ? (base, "unchanged") : Self.mutate(base, fields: Self.llamaFields, &random)
      try makeLlamaFolder(folder, config: config, base: "peft/base-llama")
      let output = "\(work)/converted.gguf"
      removeTree(output)
      let reference = tally.record(
        "config+tensors",
        {
          let path = "\(folder)/config.json"
          let config = try DecoderConfig(
            hfConfig: try JSONParser.parse(file: path, domain: "config"), path: path)
          let model = try SafetensorsModel.open(folder)
          try config.checkTensors(model.tensors.map { ($0.name, $0.shape) }, complete: true)
        }, file: folder, context: context)
      let eval = tally.record(
        "eval",
        {
          let model = try LlamaModel(path: folder)
          _ = try model.forward(tokens: [[0, 1]], cache: model.makeCache(batch: 1, capacity: 2))
        }, file: folder, context: context)
      let convert = tally.record(
        "convert",
        {
          _ = try Converter.hfToGGUF(
            folder: folder, output: output, outtype: .auto, tokenizerPre: nil, overwrite: false)
        }, file: folder, context: context)
      #expect(eval == reference, "eval [\(context)]")
      #expect(convert == reference, "convert [\(context)]")
      if convert != .ok { #expect(!fileExists(output), "[\(context)]") }
    }
    // Three consumers a round: at least two mutated rounds besides the unchanged one.
    #expect(tally.accepted >= 9 && tally.refused > 20, "\(tally)")
  }

  @Test("tiny-bert-cls config.json: mutated fields load and embed, or are refused by name")
  func encoderCampaign() throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let base = try loadFixtureJSON("encoders/tiny-bert-cls/config.json")
    try FileManager.default.createSymbolicLink(
      atPath: "\(work)/model.safetensors",
      withDestinationPath: fixturePath("encoders/tiny-bert-cls/model.safetensors"))
    let fields = [
      "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
      "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
      "pad_token_id", "hidden_act", "is_decoder", "id2label", "model_type",
    ]
    var random = SeededGenerator(state: 0xBE27_0000_0000_0005)  // seed
    var tally = FuzzTally()
    for round in 0..<60 {
      let (config, context) =
        round == 0 ? (base, "unchanged") : Self.mutate(base, fields: fields, &random)
      writeJSON(config, to: "\(work)/config.json")
      _ = tally.record(
        "encoder",
        {
          let model = try BERTModel.load(path: work)
          _ = try model.embed(tokens: [[2, 3, 4]], pooling: .mean, normalize: true)
        }, file: work, context: context)
    }
    #expect(tally.accepted >= 3 && tally.refused > 20, "\(tally)")
  }

  @Test("flare_config.json: mutated fields are read or refused by name")
  func flareConfigCampaign() throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let base = JSONValue.object([
      ("flare_version", .integer(1)), ("fusion", .string("cross-attention")),
      ("fused_modules", .array([.string("q_proj")])),
      (
        "source",
        .object([("normalize", .bool(false)), ("max_length", .integer(128))])
      ),
      ("cross_attention", .object([("heads", .integer(2)), ("dropout", .number("0.1"))])),
    ])
    var random = SeededGenerator(state: 0xF1A2_E000_0000_0007)  // seed
    var tally = FuzzTally()
    let path = "\(work)/flare_config.json"
    for round in 0..<60 {
      var config = base
      var context = "unchanged"
      if round > 0 {
        // Mutate a top-level field or one inside source / cross_attention.
        let section = random.pick(["", "source", "cross_attention"])
        if section.isEmpty {
          (config, context) = Self.mutate(
            base, fields: ["flare_version", "fusion", "fused_modules"], &random)
        } else {
          let inner = base[section] ?? .object([])
          let keys = inner.objectMembers?.map(\.0) ?? []
          let (edited, note) = Self.mutate(inner, fields: keys + ["unknown"], &random)
          config = editedJSON(base, set: [(section, edited)], drop: [])
          context = "\(section): \(note)"
        }
      }
      writeJSON(config, to: path)
      _ = tally.record(
        "flare", { _ = try FLAREConfig(path: path) }, file: path,
        context: context)
    }
    #expect(tally.accepted >= 3 && tally.refused > 20, "\(tally)")
  }

  @Test("the SmolLM2 GGUF header (if cached): mutated llama keys are read or refused by name")
  func smolLM2HeaderCampaign() throws {
    guard fileExists(smolLM2GGUF) else { return }  // the tiny campaigns above still ran
    let file = try GGUFFile(path: smolLM2GGUF)
    let tensors = file.tensors.map { ($0.name, $0.dims) }
    let metadata = file.metadata
    var random = SeededGenerator(state: 0x5301_1200_0000_0013)  // seed
    var tally = FuzzTally()
    for round in 0..<150 {
      // The token types matter to the converter only, which needs the tensors' data.
      let (mutated, context) =
        round == 0 ? (metadata, "unchanged") : Self.mutate(metadata, &random, tokenTypes: false)
      let verdict = tally.record(
        "config",
        {
          let config = try DecoderConfig(
            ggufMetadata: mutated, tensors: tensors, path: smolLM2GGUF)
          try config.checkTensors(
            tensors.compactMap { name, dims in
              ModelFamily.llama.hfName(gguf: name).map { ($0, Array(dims.reversed())) }
            }, complete: true)
        }, file: smolLM2GGUF, context: context)
      if round == 0 { #expect(verdict == .ok, "the real header must be accepted") }
    }
    #expect(tally.accepted > 15 && tally.refused > 50, "\(tally)")
  }
}
