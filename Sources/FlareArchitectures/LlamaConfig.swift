import FlareCore
import FlareGGUF

/// The hyperparameters of a Llama-family model, as both `config.json` and GGUF keys hold them,
/// checked so that every consumer (conversion, merging, inference) can use them as they are.
///
/// Both initialisers read every field through ``ConfigFields`` and then check that the values
/// make sense together:
/// - every count is an integer from 1 to 2³¹−1 (token ids from 0 to `vocabSize − 1`);
/// - the key/value heads divide the query heads; the head size is even (RoPE rotates pairs)
///   and, unless given explicitly, the heads divide the hidden size;
/// - the widths and tensor sizes they imply (`heads × headDim`, `vocab × hidden`, …) do not
///   overflow;
/// - the RoPE base and the RMSNorm epsilon are finite and positive as 32-bit floats;
/// - every Llama tensor present has the shape the configuration implies, and no tensor belongs
///   to a layer past `blockCount` (for GGUF files, checked at once; for HF folders, with
///   ``checkTensors(_:complete:)``).
///
/// Errors name the file, the key (``FlareError/key``) and, for GGUF, the key's byte offset; an
/// error about a tensor's shape names the tensor and the keys that imply its shape. Nothing a
/// file holds makes reading it trap.
public struct LlamaConfig: Equatable, Sendable {
  public private(set) var blockCount: Int
  public private(set) var contextLength: Int
  public private(set) var embeddingLength: Int
  public private(set) var feedForwardLength: Int
  public private(set) var headCount: Int
  public private(set) var headCountKV: Int
  public private(set) var headDim: Int
  public private(set) var ropeFreqBase: Float
  public private(set) var rmsNormEpsilon: Float
  public private(set) var vocabSize: Int
  public private(set) var tieWordEmbeddings: Bool
  public private(set) var bosTokenID: Int?
  public private(set) var eosTokenID: Int?
  public private(set) var padTokenID: Int?
  /// The file the values were read from and the key each count came from, for errors.
  public let fields: ConfigFields
  let keys: Keys
  /// Whether errors name tensors the GGUF way (`blk.0.attn_q.weight`).
  let ggufNames: Bool

  /// The key each count was read from (or how it was derived), in the file's own naming.
  struct Keys: Sendable {
    var blockCount: String
    var embeddingLength: String
    var feedForwardLength: String
    var headCount: String
    var headCountKV: String
    var headDim: String
    var vocabSize: String
  }

  /// Equality of the hyperparameters (not of where they were read from).
  public static func == (lhs: LlamaConfig, rhs: LlamaConfig) -> Bool {
    lhs.blockCount == rhs.blockCount && lhs.contextLength == rhs.contextLength
      && lhs.embeddingLength == rhs.embeddingLength
      && lhs.feedForwardLength == rhs.feedForwardLength && lhs.headCount == rhs.headCount
      && lhs.headCountKV == rhs.headCountKV && lhs.headDim == rhs.headDim
      && lhs.ropeFreqBase == rhs.ropeFreqBase && lhs.rmsNormEpsilon == rhs.rmsNormEpsilon
      && lhs.vocabSize == rhs.vocabSize && lhs.tieWordEmbeddings == rhs.tieWordEmbeddings
      && lhs.bosTokenID == rhs.bosTokenID && lhs.eosTokenID == rhs.eosTokenID
      && lhs.padTokenID == rhs.padTokenID
  }

  /// Reads an HF `config.json` (`LlamaForCausalLM` / `model_type` `llama`).
  /// - Throws: ``FlareError`` naming the file and the missing or invalid field, or an
  ///   unsupported architecture, activation, RoPE scaling or bias.
  public init(hfConfig json: JSONValue, path: String) throws(FlareError) {
    let fields = ConfigFields(json: json, path: path)
    guard json.objectMembers != nil else {
      throw FlareError("config", .invalidArgument, "config is not a JSON object", path: path)
    }
    let architectures = json["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
    let modelType = try fields.string("model_type")
    guard architectures.contains("LlamaForCausalLM") || modelType == "llama" else {
      throw FlareError(
        "config", .unsupported,
        "architecture \(architectures.first ?? modelType ?? "unknown") is not supported; Flare handles LlamaForCausalLM",
        path: path)
    }
    if let scaling = json["rope_scaling"], scaling != .null {
      throw fields.error(
        "rope_scaling", "\(JSONWriter.compact(scaling)) is not supported", code: .unsupported)
    }
    for key in ["attention_bias", "mlp_bias"] where try fields.bool(key, default: false) {
      throw fields.error(key, "is true; biases are not supported", code: .unsupported)
    }
    if let activation = try fields.string("hidden_act"), activation != "silu" {
      throw fields.error(
        "hidden_act", "\(ConfigValue.quoted(activation)) is not supported; Llama uses silu",
        code: .unsupported)
    }
    var keys = Keys(
      blockCount: "num_hidden_layers", embeddingLength: "hidden_size",
      feedForwardLength: "intermediate_size", headCount: "num_attention_heads",
      headCountKV: "num_key_value_heads", headDim: "head_dim", vocabSize: "vocab_size")
    embeddingLength = try fields.count(keys.embeddingLength)
    feedForwardLength = try fields.count(keys.feedForwardLength)
    blockCount = try fields.count(keys.blockCount)
    headCount = try fields.count(keys.headCount)
    headCountKV = try fields.count(keys.headCountKV, default: headCount)
    if let given = try fields.optionalCount(keys.headDim) {
      headDim = given
    } else {
      keys.headDim = "hidden_size / num_attention_heads"
      headDim = try Self.derivedHeadDim(embeddingLength, headCount, keys: keys, fields: fields)
    }
    contextLength = try fields.count("max_position_embeddings", default: 2048)
    vocabSize = try fields.count(keys.vocabSize)
    rmsNormEpsilon = try fields.positiveNumber("rms_norm_eps", default: 1e-6)
    // transformers 5 writes RoPE settings as rope_parameters {rope_type, rope_theta, …}.
    if let parameters = json["rope_parameters"], parameters != .null {
      guard parameters.objectMembers != nil else {
        throw fields.error("rope_parameters", "is not an object")
      }
      let type = try fields.string("rope_parameters.rope_type") ?? "default"
      guard type == "default" else {
        throw fields.error(
          "rope_parameters.rope_type", "\(ConfigValue.quoted(type)) is not supported",
          code: .unsupported)
      }
    }
    let theta = try fields.positiveNumber("rope_theta", default: 10000)
    ropeFreqBase = try fields.positiveNumber("rope_parameters.rope_theta", default: Double(theta))
    tieWordEmbeddings = try fields.bool("tie_word_embeddings", default: false)
    self.fields = fields
    self.keys = keys
    ggufNames = false
    bosTokenID = try Self.tokenID("bos_token_id", vocabSize, fields)
    eosTokenID = try Self.tokenID("eos_token_id", vocabSize, fields)
    padTokenID = try Self.tokenID("pad_token_id", vocabSize, fields)
    try checkCounts()
  }

  /// Reads the `llama.*` keys of a GGUF file and checks the shapes of the Llama tensors it holds
  /// against them (``checkTensors(_:complete:)`` with `complete: false`).
  /// - Throws: ``FlareError`` naming the file, the key and its byte offset if the architecture is
  ///   not `llama` or a key is missing or invalid, or the tensor whose shape disagrees.
  public init(gguf file: GGUFFile) throws(FlareError) {
    try self.init(
      ggufMetadata: file.metadata, tensors: file.tensors.map { ($0.name, $0.dims) },
      path: file.path)
  }

  /// Reads `llama.*` keys from a GGUF header's metadata and tensor list (names and GGUF-order
  /// dimensions), as ``init(gguf:)`` does for a file.
  /// - Throws: ``FlareError`` as ``init(gguf:)``.
  public init(
    ggufMetadata metadata: [GGUFKeyValue], tensors: [(name: String, dims: [Int])], path: String
  ) throws(FlareError) {
    let fields = ConfigFields(ggufMetadata: metadata, path: path)
    let architecture = try fields.string("general.architecture")
    guard architecture == "llama" else {
      throw fields.error(
        "general.architecture",
        "\(architecture.map(ConfigValue.quoted) ?? "(none)") is not supported; Flare handles llama",
        code: .unsupported)
    }
    var keys = Keys(
      blockCount: "llama.block_count", embeddingLength: "llama.embedding_length",
      feedForwardLength: "llama.feed_forward_length", headCount: "llama.attention.head_count",
      headCountKV: "llama.attention.head_count_kv", headDim: "llama.attention.key_length",
      vocabSize: "llama.vocab_size")
    blockCount = try fields.count(keys.blockCount)
    contextLength = try fields.count("llama.context_length")
    embeddingLength = try fields.count(keys.embeddingLength)
    feedForwardLength = try fields.count(keys.feedForwardLength)
    headCount = try fields.count(keys.headCount)
    headCountKV = try fields.count(keys.headCountKV, default: headCount)
    let keyLength = try fields.optionalCount("llama.attention.key_length")
    let valueLength = try fields.optionalCount("llama.attention.value_length")
    let ropeDimensions = try fields.optionalCount("llama.rope.dimension_count")
    if let keyLength {
      headDim = keyLength
    } else if let ropeDimensions {
      keys.headDim = "llama.rope.dimension_count"
      headDim = ropeDimensions
    } else {
      keys.headDim = "llama.embedding_length / llama.attention.head_count"
      headDim = try Self.derivedHeadDim(embeddingLength, headCount, keys: keys, fields: fields)
    }
    if let valueLength, valueLength != headDim {
      throw fields.error(
        "llama.attention.value_length",
        "is \(valueLength), but the key length is \(headDim); Flare needs them equal",
        code: .unsupported)
    }
    if let ropeDimensions, ropeDimensions != headDim {
      throw fields.error(
        "llama.rope.dimension_count",
        "is \(ropeDimensions), but the head size is \(headDim); partial RoPE is not supported",
        code: .unsupported)
    }
    ropeFreqBase = try fields.positiveNumber("llama.rope.freq_base", default: 10000)
    rmsNormEpsilon = try fields.positiveNumber(
      "llama.attention.layer_norm_rms_epsilon", default: 1e-6)
    if let size = try fields.optionalCount(keys.vocabSize) {
      vocabSize = size
    } else if case .list(let tokens) = fields.value("tokenizer.ggml.tokens")?.kind {
      keys.vocabSize = "tokenizer.ggml.tokens"
      guard (1...ConfigFields.maximumCount).contains(tokens.count) else {
        throw fields.error(keys.vocabSize, "holds \(tokens.count) tokens")
      }
      vocabSize = tokens.count
    } else {
      throw fields.error(keys.vocabSize, "is missing, and so is tokenizer.ggml.tokens")
    }
    tieWordEmbeddings = !tensors.contains { $0.name == "output.weight" }
    self.fields = fields
    self.keys = keys
    ggufNames = true
    bosTokenID = try Self.tokenID("tokenizer.ggml.bos_token_id", vocabSize, fields)
    eosTokenID = try Self.tokenID("tokenizer.ggml.eos_token_id", vocabSize, fields)
    padTokenID = try Self.tokenID("tokenizer.ggml.padding_token_id", vocabSize, fields)
    try checkCounts()
    try checkTensors(Self.hfShapes(of: tensors), complete: false)
  }

  /// The Llama tensors of a GGUF file under their HF names, with HF (outermost-first) shapes.
  public static func hfShapes(of file: GGUFFile) -> [(name: String, shape: [Int])] {
    hfShapes(of: file.tensors.map { ($0.name, $0.dims) })
  }

  static func hfShapes(of tensors: [(name: String, dims: [Int])]) -> [(
    name: String, shape: [Int]
  )] {
    tensors.compactMap { tensor in
      LlamaLayout.hfName(gguf: tensor.name).map { ($0, Array(tensor.dims.reversed())) }
    }
  }

  private static func derivedHeadDim(
    _ embedding: Int, _ heads: Int, keys: Keys, fields: ConfigFields
  ) throws(FlareError) -> Int {
    guard embedding % heads == 0 else {
      throw fields.error(
        keys.headCount,
        "is \(heads), which does not divide \(keys.embeddingLength) \(embedding) (and no head size is given)"
      )
    }
    return embedding / heads
  }

  /// A token id (0 to `vocabulary − 1`), or `nil` when absent. A list (transformers allows
  /// several end-of-sequence ids) is checked element by element and read as absent.
  private static func tokenID(_ key: String, _ vocabulary: Int, _ fields: ConfigFields)
    throws(FlareError) -> Int?
  {
    if case .list(let items) = fields.value(key)?.kind {
      for item in items {
        guard case .integer(let id) = item.kind, (0..<vocabulary).contains(id) else {
          throw fields.error(
            key, "holds \(item.text), not a token id from 0 to \(vocabulary - 1)")
        }
      }
      return nil
    }
    return try fields.optionalCount(key, minimum: 0, maximum: vocabulary - 1)
  }
}

// MARK: - Checks

extension LlamaConfig {
  /// The counts checked against each other: head grouping, head size, and the sizes they imply.
  private func checkCounts() throws(FlareError) {
    guard headCount % headCountKV == 0 else {
      throw fields.error(
        keys.headCountKV,
        "is \(headCountKV), which does not divide \(keys.headCount) \(headCount) (each key/value head serves a whole group of query heads)"
      )
    }
    guard headDim % 2 == 0 else {
      throw fields.error(
        keys.headDim, "gives a head size of \(headDim), which is odd; RoPE rotates pairs")
    }
    let limit = ConfigFields.maximumCount
    _ = try fields.product(
      [(keys.headCount, headCount), (keys.headDim, headDim)], maximum: limit,
      what: "the query width")
    let floats = Int.max / MemoryLayout<Float>.size
    _ = try fields.product(
      [(keys.vocabSize, vocabSize), (keys.embeddingLength, embeddingLength)], maximum: floats,
      what: "the embedding's size")
    _ = try fields.product(
      [(keys.feedForwardLength, feedForwardLength), (keys.embeddingLength, embeddingLength)],
      maximum: floats, what: "an MLP weight's size")
    _ = try fields.product(
      [
        (keys.headCount, headCount), (keys.headDim, headDim),
        (keys.embeddingLength, embeddingLength),
      ],
      maximum: floats, what: "an attention weight's size")
  }

  /// One dimension a tensor must have, and what sets it.
  private struct Dimension {
    var size: Int
    var key: String
    var why: String
  }

  /// The shape the configuration gives the HF tensor `name` (outermost first), or `nil` if the
  /// name is not part of the Llama layout; `layer` is its block index, if any.
  private func expectedShape(_ name: String) -> (shape: [Dimension], layer: Int?)? {
    let hidden = Dimension(
      size: embeddingLength, key: keys.embeddingLength,
      why: "\(keys.embeddingLength) \(embeddingLength)")
    let vocabulary = Dimension(
      size: vocabSize, key: keys.vocabSize, why: "\(keys.vocabSize) \(vocabSize)")
    let ff = Dimension(
      size: feedForwardLength, key: keys.feedForwardLength,
      why: "\(keys.feedForwardLength) \(feedForwardLength)")
    // The products fit: checkCounts bounds them.
    let q = Dimension(
      size: headCount * headDim, key: keys.headCount,
      why: "\(keys.headCount) \(headCount) × \(keys.headDim) \(headDim)")
    let kv = Dimension(
      size: headCountKV * headDim, key: keys.headCountKV,
      why: "\(keys.headCountKV) \(headCountKV) × \(keys.headDim) \(headDim)")
    let isBias = name.hasSuffix(".bias")
    guard isBias || name.hasSuffix(".weight") else { return nil }
    let stem = String(name.dropLast(isBias ? 5 : 7))
    func shape(_ out: Dimension, _ inputs: Dimension?) -> [Dimension] {
      isBias ? [out] : [out] + (inputs.map { [$0] } ?? [])
    }
    switch stem {
    case "model.embed_tokens": return isBias ? nil : ([vocabulary, hidden], nil)
    case "model.norm": return (shape(hidden, nil), nil)
    case "lm_head": return (shape(vocabulary, hidden), nil)
    default: break
    }
    let prefix = "model.layers."
    guard stem.hasPrefix(prefix) else { return nil }
    let rest = stem.dropFirst(prefix.count)
    guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0 else {
      return nil
    }
    let dims: [Dimension]
    switch rest[rest.index(after: dot)...] {
    case "input_layernorm", "post_attention_layernorm": dims = shape(hidden, nil)
    case "self_attn.q_proj": dims = shape(q, hidden)
    case "self_attn.k_proj", "self_attn.v_proj": dims = shape(kv, hidden)
    case "self_attn.o_proj": dims = shape(hidden, q)
    case "mlp.gate_proj", "mlp.up_proj": dims = shape(ff, hidden)
    case "mlp.down_proj": dims = shape(hidden, ff)
    default: return nil
    }
    return (dims, layer)
  }

  /// A tensor's name as the configuration's file spells it.
  private func fileName(_ hf: String) -> String {
    ggufNames ? LlamaLayout.ggufName(hf: hf) ?? hf : hf
  }

  /// Checks the shapes of a model's tensors (HF names, outermost-first shapes; other names are
  /// ignored) against the configuration: each Llama tensor has the shape it implies and belongs
  /// to a layer below `blockCount`; with `complete`, every tensor the model needs is present
  /// (the output head unless the embeddings are tied).
  /// - Throws: ``FlareError`` naming the configuration's file, the tensor and the key that sets
  ///   the disagreeing dimension.
  public func checkTensors(_ tensors: [(name: String, shape: [Int])], complete: Bool)
    throws(FlareError)
  {
    // In model order (embedding, blocks in order, each as the forward pass uses it, final
    // norm, head), so the first error is the first tensor the model would use wrongly.
    let parts = [
      "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
      "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
      "mlp.down_proj",
    ]
    let known = tensors.compactMap { tensor -> (String, [Int], [Dimension], Int?)? in
      guard let (expected, layer) = expectedShape(tensor.name) else { return nil }
      return (tensor.name, tensor.shape, expected, layer)
    }
    func order(_ name: String, _ layer: Int?) -> (Int, Int, Int, String) {
      if name.hasPrefix("model.embed_tokens") { return (0, 0, 0, name) }
      guard let layer else { return (2, name.hasPrefix("model.norm") ? 0 : 1, 0, name) }
      let part = parts.firstIndex { name.contains(".\($0).") } ?? parts.count
      return (1, layer, part, name)
    }
    var present = Set<String>()
    for (name, shape, expected, layer) in known.sorted(by: { order($0.0, $0.3) < order($1.0, $1.3) }
    ) {
      present.insert(name)
      if let layer, layer >= blockCount {
        throw fields.error(
          keys.blockCount,
          "is in layer \(layer), but \(keys.blockCount) is \(blockCount)", tensor: fileName(name))
      }
      guard shape != expected.map(\.size) else { continue }
      // The key of the first dimension that differs (of the last one for a wrong rank).
      let culprit = zip(shape, expected).first { $0.0 != $0.1.size }?.1 ?? expected.last
      let reasons = expected.map(\.why).joined(separator: ", ")
      throw fields.error(
        culprit?.key ?? keys.embeddingLength,
        "has shape \(shape), but the config gives \(expected.map(\.size)) (\(reasons))",
        tensor: fileName(name))
    }
    guard complete else { return }
    for name in ["model.embed_tokens.weight", "model.norm.weight"] where !present.contains(name) {
      throw FlareError(
        fields.domain, .tensorNotFound, "is missing", path: fields.path, tensor: fileName(name))
    }
    for layer in 0..<blockCount {
      for part in parts where !present.contains("model.layers.\(layer).\(part).weight") {
        throw fields.error(
          keys.blockCount, "is missing (\(keys.blockCount) is \(blockCount))",
          code: .tensorNotFound, tensor: fileName("model.layers.\(layer).\(part).weight"))
      }
    }
    if !tieWordEmbeddings && !present.contains("lm_head.weight") {
      throw fields.error(
        "tie_word_embeddings", "is missing (tie_word_embeddings is false)", code: .tensorNotFound,
        tensor: fileName("lm_head.weight"))
    }
  }
}

// MARK: - Writing

extension LlamaConfig {
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
  /// - Throws: ``FlareError`` if a count does not fit `UINT32` (the checks at reading make
  ///   that impossible; the conversion is exact all the same).
  public func ggufKeys(fileType: UInt32) throws(FlareError) -> (
    beforeFileType: [GGUFKeyValue], afterFileType: [GGUFKeyValue]
  ) {
    func uint32(_ key: String, _ value: Int) throws(FlareError) -> GGUFKeyValue {
      guard let exact = UInt32(exactly: value) else {
        throw FlareError(
          "config", .invalidArgument, "is \(value), which does not fit UINT32", path: fields.path,
          key: key)
      }
      return GGUFKeyValue(key: key, value: .uint32(exact))
    }
    let before = [
      try uint32("llama.block_count", blockCount),
      try uint32("llama.context_length", contextLength),
      try uint32("llama.embedding_length", embeddingLength),
      try uint32("llama.feed_forward_length", feedForwardLength),
      try uint32("llama.attention.head_count", headCount),
      try uint32("llama.attention.head_count_kv", headCountKV),
      GGUFKeyValue(key: "llama.rope.freq_base", value: .float32(ropeFreqBase)),
      GGUFKeyValue(key: "llama.attention.layer_norm_rms_epsilon", value: .float32(rmsNormEpsilon)),
    ]
    var after = [
      try uint32("llama.vocab_size", vocabSize),
      try uint32("llama.rope.dimension_count", headDim),
    ]
    if headDim * headCount != embeddingLength {
      // llama.cpp derives the head size from embedding_length / head_count unless told.
      after.append(try uint32("llama.attention.key_length", headDim))
      after.append(try uint32("llama.attention.value_length", headDim))
    }
    return (before, after)
  }
}
