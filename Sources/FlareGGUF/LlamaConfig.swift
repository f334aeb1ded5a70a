import FlareCore

/// The hyperparameters of a Llama-family model, as both `config.json` and GGUF keys hold them.
public struct LlamaConfig: Equatable, Sendable {
  public var blockCount: Int
  public var contextLength: Int
  public var embeddingLength: Int
  public var feedForwardLength: Int
  public var headCount: Int
  public var headCountKV: Int
  public var headDim: Int
  public var ropeFreqBase: Float
  public var rmsNormEpsilon: Float
  public var vocabSize: Int
  public var tieWordEmbeddings: Bool
  public var bosTokenID: Int?
  public var eosTokenID: Int?
  public var padTokenID: Int?

  /// Reads an HF `config.json` (`LlamaForCausalLM` / `model_type` `llama`).
  /// - Throws: ``FlareError`` naming the missing or invalid field, or an unsupported
  ///   architecture or RoPE scaling.
  public init(hfConfig json: JSONValue, path: String) throws {
    func bad(_ message: String) -> FlareError {
      FlareError("config", .invalidArgument, message, path: path)
    }
    func int(_ key: String, default value: Int? = nil) throws -> Int {
      if let number = json[key], number != .null {
        guard let int = number.intValue, int >= 0 else {
          throw bad("'\(key)' is not a non-negative integer")
        }
        return int
      }
      guard let value else { throw bad("'\(key)' is missing") }
      return value
    }
    let architectures = json["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
    let modelType = json["model_type"]?.stringValue
    guard architectures.contains("LlamaForCausalLM") || modelType == "llama" else {
      throw FlareError(
        "config", .unsupported,
        "architecture \(architectures.first ?? modelType ?? "unknown") is not supported; Flare handles LlamaForCausalLM",
        path: path)
    }
    if let scaling = json["rope_scaling"], scaling != .null {
      throw FlareError(
        "config", .unsupported, "rope_scaling \(JSONWriter.compact(scaling)) is not supported",
        path: path)
    }
    if json["attention_bias"]?.boolValue == true || json["mlp_bias"]?.boolValue == true {
      throw FlareError(
        "config", .unsupported, "attention or MLP biases are not supported", path: path)
    }
    embeddingLength = try int("hidden_size")
    feedForwardLength = try int("intermediate_size")
    blockCount = try int("num_hidden_layers")
    headCount = try int("num_attention_heads")
    headCountKV = try int("num_key_value_heads", default: headCount)
    guard headCount > 0, headCountKV > 0, embeddingLength % headCount == 0 else {
      throw bad("hidden_size \(embeddingLength) does not split into \(headCount) heads")
    }
    headDim = try int("head_dim", default: embeddingLength / headCount)
    contextLength = try int("max_position_embeddings", default: 2048)
    vocabSize = try int("vocab_size")
    rmsNormEpsilon = Float(json["rms_norm_eps"]?.doubleValue ?? 1e-6)
    // transformers 5 writes RoPE settings as rope_parameters {rope_type, rope_theta, …}.
    if let parameters = json["rope_parameters"], parameters != .null {
      let type = parameters["rope_type"]?.stringValue ?? "default"
      guard type == "default" else {
        throw FlareError(
          "config", .unsupported, "rope_parameters.rope_type '\(type)' is not supported",
          path: path)
      }
    }
    ropeFreqBase = Float(
      json["rope_parameters"]?["rope_theta"]?.doubleValue ?? json["rope_theta"]?.doubleValue
        ?? 10000)
    tieWordEmbeddings = json["tie_word_embeddings"]?.boolValue ?? false
    bosTokenID = json["bos_token_id"]?.intValue
    eosTokenID = json["eos_token_id"]?.intValue
    padTokenID = json["pad_token_id"]?.intValue
  }

  /// Reads the `llama.*` keys of a GGUF file.
  /// - Throws: ``FlareError`` if the architecture is not `llama` or a key is missing.
  public init(gguf file: GGUFFile) throws {
    guard file.value("general.architecture")?.stringValue == "llama" else {
      throw FlareError(
        "config", .unsupported,
        "architecture '\(file.value("general.architecture")?.stringValue ?? "none")' is not supported; Flare handles llama",
        path: file.path)
    }
    func int(_ key: String) throws -> Int {
      guard let value = file.value(key)?.integerValue else {
        throw FlareError(
          "config", .invalidArgument, "key '\(key)' is missing or not an integer", path: file.path)
      }
      return value
    }
    func float(_ key: String, default value: Float) -> Float {
      switch file.value(key) {
      case .float32(let v): v
      case .float64(let v): Float(v)
      default: value
      }
    }
    blockCount = try int("llama.block_count")
    contextLength = try int("llama.context_length")
    embeddingLength = try int("llama.embedding_length")
    feedForwardLength = try int("llama.feed_forward_length")
    headCount = try int("llama.attention.head_count")
    headCountKV = file.value("llama.attention.head_count_kv")?.integerValue ?? headCount
    guard headCount > 0, headCountKV > 0 else {
      throw FlareError("config", .invalidArgument, "head counts must be positive", path: file.path)
    }
    headDim =
      file.value("llama.attention.key_length")?.integerValue
      ?? file.value("llama.rope.dimension_count")?.integerValue ?? embeddingLength / headCount
    ropeFreqBase = float("llama.rope.freq_base", default: 10000)
    rmsNormEpsilon = float("llama.attention.layer_norm_rms_epsilon", default: 1e-6)
    if let size = file.value("llama.vocab_size")?.integerValue {
      vocabSize = size
    } else if case .array(_, let tokens) = file.value("tokenizer.ggml.tokens") {
      vocabSize = tokens.count
    } else {
      throw FlareError("config", .invalidArgument, "no vocabulary size", path: file.path)
    }
    tieWordEmbeddings = file.tensor("output.weight") == nil
    bosTokenID = file.value("tokenizer.ggml.bos_token_id")?.integerValue
    eosTokenID = file.value("tokenizer.ggml.eos_token_id")?.integerValue
    padTokenID = file.value("tokenizer.ggml.padding_token_id")?.integerValue
  }

  /// `config.json` for transformers' `LlamaForCausalLM`.
  public func hfConfig(dtype: String) -> JSONValue {
    var members: [(String, JSONValue)] = [
      ("architectures", .array([.string("LlamaForCausalLM")])),
      ("attention_bias", .bool(false)),
      ("attention_dropout", .integer(0)),
    ]
    if let bosTokenID { members.append(("bos_token_id", .integer(bosTokenID))) }
    if let eosTokenID { members.append(("eos_token_id", .integer(eosTokenID))) }
    members += [
      ("head_dim", .integer(headDim)),
      ("hidden_act", .string("silu")),
      ("hidden_size", .integer(embeddingLength)),
      ("initializer_range", .number("0.02")),
      ("intermediate_size", .integer(feedForwardLength)),
      ("max_position_embeddings", .integer(contextLength)),
      ("mlp_bias", .bool(false)),
      ("model_type", .string("llama")),
      ("num_attention_heads", .integer(headCount)),
      ("num_hidden_layers", .integer(blockCount)),
      ("num_key_value_heads", .integer(headCountKV)),
    ]
    if let padTokenID { members.append(("pad_token_id", .integer(padTokenID))) }
    members += [
      ("pretraining_tp", .integer(1)),
      // Float's description is the shortest text that reads back to the same Float.
      ("rms_norm_eps", .number("\(rmsNormEpsilon)")),
      ("rope_scaling", .null),
      ("rope_theta", .number("\(ropeFreqBase)")),
      ("tie_word_embeddings", .bool(tieWordEmbeddings)),
      ("torch_dtype", .string(dtype)),
      ("use_cache", .bool(true)),
      ("vocab_size", .integer(vocabSize)),
    ]
    return .object(members)
  }

  /// The `llama.*` GGUF keys, in the order llama.cpp's converter writes them.
  public func ggufKeys(fileType: UInt32) -> (
    beforeFileType: [GGUFKeyValue], afterFileType: [GGUFKeyValue]
  ) {
    let before = [
      GGUFKeyValue(key: "llama.block_count", value: .uint32(UInt32(blockCount))),
      GGUFKeyValue(key: "llama.context_length", value: .uint32(UInt32(contextLength))),
      GGUFKeyValue(key: "llama.embedding_length", value: .uint32(UInt32(embeddingLength))),
      GGUFKeyValue(key: "llama.feed_forward_length", value: .uint32(UInt32(feedForwardLength))),
      GGUFKeyValue(key: "llama.attention.head_count", value: .uint32(UInt32(headCount))),
      GGUFKeyValue(key: "llama.attention.head_count_kv", value: .uint32(UInt32(headCountKV))),
      GGUFKeyValue(key: "llama.rope.freq_base", value: .float32(ropeFreqBase)),
      GGUFKeyValue(key: "llama.attention.layer_norm_rms_epsilon", value: .float32(rmsNormEpsilon)),
    ]
    var after = [
      GGUFKeyValue(key: "llama.vocab_size", value: .uint32(UInt32(vocabSize))),
      GGUFKeyValue(key: "llama.rope.dimension_count", value: .uint32(UInt32(headDim))),
    ]
    if headDim * headCount != embeddingLength {
      // llama.cpp derives the head size from embedding_length / head_count unless told.
      after.append(GGUFKeyValue(key: "llama.attention.key_length", value: .uint32(UInt32(headDim))))
      after.append(
        GGUFKeyValue(key: "llama.attention.value_length", value: .uint32(UInt32(headDim))))
    }
    return (before, after)
  }
}
