import FlareCore
import FlareGGUF

/// The hyperparameters of a decoder of one of the families in ``ModelFamily`` (Llama, Qwen2,
/// Qwen3), as both `config.json` and GGUF keys hold them, checked so that every consumer
/// (conversion, merging, inference) can use them as they are.
///
/// Both initialisers read every field through ``ConfigFields`` and then check that the values
/// make sense together:
/// - every count is an integer from 1 to 2³¹−1 (token ids from 0 to `vocabSize − 1`);
/// - the key/value heads divide the query heads; the head size is even (RoPE rotates pairs)
///   and, unless given explicitly, the heads divide the hidden size;
/// - the widths and tensor sizes they imply (`heads × headDim`, `vocab × hidden`, …) do not
///   overflow;
/// - the RoPE base and the RMSNorm epsilon are finite and positive as 32-bit floats;
/// - every tensor of the family's layout present has the shape the configuration implies, and no tensor belongs
///   to a layer past `blockCount` (for GGUF files, checked at once; for HF folders, with
///   ``checkTensors(_:complete:)``).
///
/// Errors name the file, the key (``FlareError/key``) and, for GGUF, the key's byte offset; an
/// error about a tensor's shape names the tensor and the keys that imply its shape. Nothing a
/// file holds makes reading it trap.
public struct DecoderConfig: Equatable, Sendable {
  /// The architecture, which says how it differs from Llama.
  public let family: ModelFamily
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
  /// Sliding-window attention (Gemma): which layers attend only to the last `slidingWindow`
  /// slots (the query's own included), `transformers`' `q − k < window`.
  public private(set) var slidingLayers: [Bool]
  public private(set) var slidingWindow: Int?
  /// The RoPE base of the sliding layers when it differs from ``ropeFreqBase`` (Gemma 3).
  public private(set) var ropeLocalFreqBase: Float?
  /// Attention scores are `q·k / √queryScalar`: `query_pre_attn_scalar` for Gemma, the head
  /// size otherwise.
  public private(set) var queryScalar: Float
  /// `1/√queryScalar`.
  public var attentionScale: Float { 1 / queryScalar.squareRoot() }
  /// `cap · tanh(x / cap)` on the attention scores and on the final logits (Gemma 2), or `nil`.
  public private(set) var attentionSoftcap: Float?
  public private(set) var finalSoftcap: Float?
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
  public static func == (lhs: DecoderConfig, rhs: DecoderConfig) -> Bool {
    lhs.family == rhs.family && lhs.blockCount == rhs.blockCount
      && lhs.contextLength == rhs.contextLength
      && lhs.embeddingLength == rhs.embeddingLength
      && lhs.feedForwardLength == rhs.feedForwardLength && lhs.headCount == rhs.headCount
      && lhs.headCountKV == rhs.headCountKV && lhs.headDim == rhs.headDim
      && lhs.ropeFreqBase == rhs.ropeFreqBase && lhs.rmsNormEpsilon == rhs.rmsNormEpsilon
      && lhs.vocabSize == rhs.vocabSize && lhs.tieWordEmbeddings == rhs.tieWordEmbeddings
      && lhs.bosTokenID == rhs.bosTokenID && lhs.eosTokenID == rhs.eosTokenID
      && lhs.padTokenID == rhs.padTokenID && lhs.slidingLayers == rhs.slidingLayers
      && lhs.slidingWindow == rhs.slidingWindow && lhs.ropeLocalFreqBase == rhs.ropeLocalFreqBase
      && lhs.queryScalar == rhs.queryScalar && lhs.attentionSoftcap == rhs.attentionSoftcap
      && lhs.finalSoftcap == rhs.finalSoftcap
  }

  /// Reads an HF `config.json` of a family in ``ModelFamily`` (`LlamaForCausalLM`,
  /// `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, or their `model_type`).
  /// - Throws: ``FlareError`` naming the file and the missing or invalid field, or an
  ///   unsupported architecture, activation, RoPE scaling or bias.
  public init(hfConfig json: JSONValue, path: String) throws(FlareError) {
    let fields = ConfigFields(json: json, path: path)
    guard json.objectMembers != nil else {
      throw FlareError("config", .invalidArgument, "config is not a JSON object", path: path)
    }
    let architectures = json["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
    let modelType = try fields.string("model_type")
    guard let family = ModelFamily.hf(architectures: architectures, modelType: modelType) else {
      throw FlareError(
        "config", .unsupported,
        "architecture \(architectures.first ?? modelType ?? "unknown") is not supported; Flare handles \(ModelFamily.hfNames)",
        path: path)
    }
    self.family = family
    if let scaling = json["rope_scaling"], scaling != .null {
      throw fields.error(
        "rope_scaling", "\(JSONWriter.compact(scaling)) is not supported", code: .unsupported)
    }
    // Qwen2's q/k/v biases are part of the family, not a setting; any other bias is refused.
    for key in ["attention_bias", "mlp_bias"] where try fields.bool(key, default: false) {
      throw fields.error(key, "is true; biases are not supported", code: .unsupported)
    }
    if try fields.bool("use_sliding_window", default: false) {
      throw fields.error(
        "use_sliding_window", "is true; sliding-window attention is not supported",
        code: .unsupported)
    }
    if try fields.bool("use_bidirectional_attention", default: false) {
      throw fields.error(
        "use_bidirectional_attention", "is true; Flare runs causal decoders",
        code: .unsupported)
    }
    let activationKey = family.hfActivationKey
    let expected = family.activation == .silu ? "silu" : "gelu_pytorch_tanh"
    if let activation = try fields.string(activationKey), activation != expected {
      throw fields.error(
        activationKey,
        "\(ConfigValue.quoted(activation)) is not supported; \(family.hfArchitecture) uses \(expected)",
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
    } else if let fixed = family.hfDefaultHeadDim {
      keys.headDim = "head_dim (\(family.hfArchitecture)'s default)"
      headDim = fixed
    } else {
      keys.headDim = "hidden_size / num_attention_heads"
      headDim = try Self.derivedHeadDim(embeddingLength, headCount, keys: keys, fields: fields)
    }
    contextLength = try fields.count("max_position_embeddings", default: 2048)
    vocabSize = try fields.count(keys.vocabSize)
    rmsNormEpsilon = try fields.positiveNumber("rms_norm_eps", default: 1e-6)
    var theta = try fields.positiveNumber("rope_theta", default: 10000)
    var localTheta: Float? =
      family == .gemma3 ? try fields.positiveNumber("rope_local_base_freq", default: 10000) : nil
    // transformers 5 writes RoPE settings as rope_parameters {rope_type, rope_theta, …}, or,
    // for Gemma 3, one such object per layer type.
    if let parameters = json["rope_parameters"], parameters != .null {
      guard parameters.objectMembers != nil else {
        throw fields.error("rope_parameters", "is not an object")
      }
      let perType = parameters["full_attention"] != nil || parameters["sliding_attention"] != nil
      for prefix in perType
        ? ["rope_parameters.full_attention", "rope_parameters.sliding_attention"]
        : ["rope_parameters"]
      {
        let type = try fields.string("\(prefix).rope_type") ?? "default"
        guard type == "default" else {
          throw fields.error(
            "\(prefix).rope_type", "\(ConfigValue.quoted(type)) is not supported",
            code: .unsupported)
        }
      }
      if perType {
        theta = try fields.positiveNumber(
          "rope_parameters.full_attention.rope_theta", default: Double(theta))
        localTheta = try fields.positiveNumber(
          "rope_parameters.sliding_attention.rope_theta", default: Double(localTheta ?? theta))
      } else {
        theta = try fields.positiveNumber("rope_parameters.rope_theta", default: Double(theta))
      }
    }
    ropeFreqBase = theta
    ropeLocalFreqBase = localTheta
    tieWordEmbeddings = try fields.bool(
      "tie_word_embeddings", default: family.slidingPattern != nil)
    // Sliding windows: Gemma's layer_types (or its fixed pattern); other families have none.
    var sliding = [Bool](repeating: false, count: blockCount)
    if family.slidingPattern != nil {
      slidingWindow = try fields.count("sliding_window", default: 4096)
      sliding = (0..<blockCount).map { family.isSliding(layer: $0) }
    } else {
      slidingWindow = nil
    }
    if case .array(let types)? = json["layer_types"] {
      guard types.count == blockCount else {
        throw fields.error(
          "layer_types", "holds \(types.count) entries for \(blockCount) layers")
      }
      for (layer, type) in types.enumerated() {
        switch type.stringValue {
        case "full_attention": sliding[layer] = false
        case "sliding_attention" where family.slidingPattern != nil: sliding[layer] = true
        default:
          throw fields.error(
            "layer_types",
            "holds \(JSONWriter.compact(type)) for layer \(layer); \(family.hfArchitecture) supports \(family.slidingPattern != nil ? "full_attention and sliding_attention" : "full_attention only")",
            code: .unsupported)
        }
      }
    }
    slidingLayers = sliding
    queryScalar =
      family.slidingPattern != nil
      ? try fields.positiveNumber("query_pre_attn_scalar", default: 256) : Float(headDim)
    attentionSoftcap =
      family == .gemma2 ? try Self.softcap("attn_logit_softcapping", 50, json, fields) : nil
    finalSoftcap =
      family == .gemma2 ? try Self.softcap("final_logit_softcapping", 30, json, fields) : nil
    self.fields = fields
    self.keys = keys
    ggufNames = false
    bosTokenID = try Self.tokenID("bos_token_id", vocabSize, fields)
    eosTokenID = try Self.tokenID("eos_token_id", vocabSize, fields)
    padTokenID = try Self.tokenID("pad_token_id", vocabSize, fields)
    try checkCounts()
  }

  /// Reads the keys of a GGUF file (`llama.*`, `qwen2.*`, … after `general.architecture`) and
  /// checks the shapes of the family's tensors it holds against them
  /// (``checkTensors(_:complete:)`` with `complete: false`).
  /// - Throws: ``FlareError`` naming the file, the key and its byte offset if the architecture is
  ///   not in ``ModelFamily`` or a key is missing or invalid, or the tensor whose shape disagrees.
  public init(gguf file: GGUFFile) throws(FlareError) {
    try self.init(
      ggufMetadata: file.metadata, tensors: file.tensors.map { ($0.name, $0.dims) },
      path: file.path)
  }

  /// Reads the family's keys from a GGUF header's metadata and tensor list (names and GGUF-order
  /// dimensions), as ``init(gguf:)`` does for a file.
  /// - Throws: ``FlareError`` as ``init(gguf:)``.
  public init(
    ggufMetadata metadata: [GGUFKeyValue], tensors: [(name: String, dims: [Int])], path: String
  ) throws(FlareError) {
    let fields = ConfigFields(ggufMetadata: metadata, path: path)
    let architecture = try fields.string("general.architecture")
    guard let family = architecture.flatMap(ModelFamily.gguf) else {
      throw fields.error(
        "general.architecture",
        "\(architecture.map(ConfigValue.quoted) ?? "(none)") is not supported; Flare handles \(ModelFamily.ggufNames)",
        code: .unsupported)
    }
    self.family = family
    let p = family.name
    var keys = Keys(
      blockCount: "\(p).block_count", embeddingLength: "\(p).embedding_length",
      feedForwardLength: "\(p).feed_forward_length", headCount: "\(p).attention.head_count",
      headCountKV: "\(p).attention.head_count_kv", headDim: "\(p).attention.key_length",
      vocabSize: "\(p).vocab_size")
    blockCount = try fields.count(keys.blockCount)
    contextLength = try fields.count("\(p).context_length")
    embeddingLength = try fields.count(keys.embeddingLength)
    feedForwardLength = try fields.count(keys.feedForwardLength)
    headCount = try fields.count(keys.headCount)
    headCountKV = try fields.count(keys.headCountKV, default: headCount)
    let keyLength = try fields.optionalCount("\(p).attention.key_length")
    let valueLength = try fields.optionalCount("\(p).attention.value_length")
    let ropeDimensions = try fields.optionalCount("\(p).rope.dimension_count")
    if let keyLength {
      headDim = keyLength
    } else if let ropeDimensions {
      keys.headDim = "\(p).rope.dimension_count"
      headDim = ropeDimensions
    } else {
      keys.headDim = "\(p).embedding_length / \(p).attention.head_count"
      headDim = try Self.derivedHeadDim(embeddingLength, headCount, keys: keys, fields: fields)
    }
    if let valueLength, valueLength != headDim {
      throw fields.error(
        "\(p).attention.value_length",
        "is \(valueLength), but the key length is \(headDim); Flare needs them equal",
        code: .unsupported)
    }
    if let ropeDimensions, ropeDimensions != headDim {
      throw fields.error(
        "\(p).rope.dimension_count",
        "is \(ropeDimensions), but the head size is \(headDim); partial RoPE is not supported",
        code: .unsupported)
    }
    ropeFreqBase = try fields.positiveNumber("\(p).rope.freq_base", default: 10000)
    rmsNormEpsilon = try fields.positiveNumber(
      "\(p).attention.layer_norm_rms_epsilon", default: 1e-6)
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
    // Gemma: what llama.cpp reads or fixes for the family (its sliding-layer pattern, Gemma 3's
    // local RoPE base of 10000, the query scale 1/√head_dim except for the 27B models, whose
    // layer counts it recognises, 1/√(hidden/heads) there; soft-caps 50 and 30 by default).
    let gemma = family.slidingPattern != nil
    slidingWindow = gemma ? try fields.count("\(p).attention.sliding_window", default: 4096) : nil
    slidingLayers = (0..<blockCount).map { family.isSliding(layer: $0) }
    ropeLocalFreqBase =
      family == .gemma3 ? try fields.positiveNumber("\(p).rope.freq_base_swa", default: 10000) : nil
    queryScalar = Float(
      Self.isGemma27B(family, blockCount) ? embeddingLength / headCount : headDim)
    attentionSoftcap =
      family == .gemma2
      ? try fields.positiveNumber("\(p).attn_logit_softcapping", default: 50) : nil
    finalSoftcap =
      family == .gemma2
      ? try fields.positiveNumber("\(p).final_logit_softcapping", default: 30) : nil
    self.fields = fields
    self.keys = keys
    ggufNames = true
    bosTokenID = try Self.tokenID("tokenizer.ggml.bos_token_id", vocabSize, fields)
    eosTokenID = try Self.tokenID("tokenizer.ggml.eos_token_id", vocabSize, fields)
    padTokenID = try Self.tokenID("tokenizer.ggml.padding_token_id", vocabSize, fields)
    try checkCounts()
    try checkTensors(hfShapes(of: tensors), complete: false)
  }

  /// The family's tensors of a GGUF file under their HF names, with HF (outermost-first) shapes.
  public func hfShapes(of file: GGUFFile) -> [(name: String, shape: [Int])] {
    hfShapes(of: file.tensors.map { ($0.name, $0.dims) })
  }

  func hfShapes(of tensors: [(name: String, dims: [Int])]) -> [(name: String, shape: [Int])] {
    tensors.compactMap { tensor in
      family.hfName(gguf: tensor.name).map { ($0, Array(tensor.dims.reversed())) }
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

  /// Whether llama.cpp takes a Gemma model for its 27B size (by the layer count), for which it
  /// scales queries by `1/√(hidden/heads)` instead of `1/√head_dim`.
  static func isGemma27B(_ family: ModelFamily, _ blocks: Int) -> Bool {
    (family == .gemma2 && blocks == 46) || (family == .gemma3 && blocks == 62)
  }

  /// A soft-capping value: `fallback` when the key is absent from an HF config that never
  /// names it, `nil` when it is `null`.
  private static func softcap(
    _ key: String, _ fallback: Double, _ json: JSONValue, _ fields: ConfigFields
  ) throws(FlareError) -> Float? {
    if json[key] == .null { return nil }
    return try fields.positiveNumber(key, default: fallback)
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

extension DecoderConfig {
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
    let module = String(rest[rest.index(after: dot)...])
    guard family.blockParts.contains(where: { $0.hf == module }) else { return nil }
    let dims: [Dimension]
    switch module {
    case "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
      "post_feedforward_layernorm":
      dims = shape(hidden, nil)
    case "self_attn.q_norm", "self_attn.k_norm":
      dims = shape(
        Dimension(size: headDim, key: keys.headDim, why: "\(keys.headDim) \(headDim)"), nil)
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
    ggufNames ? family.ggufName(hf: hf) ?? hf : hf
  }

  /// Checks the shapes of a model's tensors (HF names, outermost-first shapes; other names are
  /// ignored) against the configuration: each tensor of the family's layout has the shape it
  /// implies and belongs to a layer below `blockCount`; with `complete`, every tensor the model
  /// needs is present (the output head unless the embeddings are tied, the q/k/v biases of a
  /// family that has them).
  /// - Throws: ``FlareError`` naming the configuration's file, the tensor and the key that sets
  ///   the disagreeing dimension.
  public func checkTensors(_ tensors: [(name: String, shape: [Int])], complete: Bool)
    throws(FlareError)
  {
    // In model order (embedding, blocks in order, each as the forward pass uses it, final
    // norm, head), so the first error is the first tensor the model would use wrongly.
    let parts = family.blockParts.map(\.hf)
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
    let biases =
      family.queryKeyValueBias ? ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] : []
    for layer in 0..<blockCount {
      let needed = parts.map { "\($0).weight" } + biases.map { "\($0).bias" }
      for part in needed where !present.contains("model.layers.\(layer).\(part)") {
        throw fields.error(
          keys.blockCount, "is missing (\(keys.blockCount) is \(blockCount))",
          code: .tensorNotFound, tensor: fileName("model.layers.\(layer).\(part)"))
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

extension DecoderConfig {
  /// `config.json` for transformers' class of the family (`LlamaForCausalLM`, …), keys sorted.
  public func hfConfig(dtype: String) -> JSONValue {
    var members: [(String, JSONValue)] = [
      ("architectures", .array([.string(family.hfArchitecture)])),
      ("attention_dropout", .integer(0)),
      ("hidden_size", .integer(embeddingLength)),
      ("initializer_range", .number("0.02")),
      ("intermediate_size", .integer(feedForwardLength)),
      ("max_position_embeddings", .integer(contextLength)),
      ("model_type", .string(family.hfModelType)),
      ("num_attention_heads", .integer(headCount)),
      ("num_hidden_layers", .integer(blockCount)),
      ("num_key_value_heads", .integer(headCountKV)),
      // Float's description is the shortest text that reads back to the same Float.
      ("rms_norm_eps", .number("\(rmsNormEpsilon)")),
      ("tie_word_embeddings", .bool(tieWordEmbeddings)),
      ("torch_dtype", .string(dtype)),
      ("use_cache", .bool(true)),
      ("vocab_size", .integer(vocabSize)),
      ("head_dim", .integer(headDim)),
    ]
    if let bosTokenID { members.append(("bos_token_id", .integer(bosTokenID))) }
    if let eosTokenID { members.append(("eos_token_id", .integer(eosTokenID))) }
    if let padTokenID { members.append(("pad_token_id", .integer(padTokenID))) }
    if !family.queryKeyValueBias { members.append(("attention_bias", .bool(false))) }
    members.append(
      (family.hfActivationKey, .string(family.activation == .silu ? "silu" : "gelu_pytorch_tanh")))
    func rope(_ theta: Float) -> JSONValue {
      .object([("rope_theta", .number("\(theta)")), ("rope_type", .string("default"))])
    }
    if family.slidingPattern != nil {
      let types = slidingLayers.map {
        JSONValue.string($0 ? "sliding_attention" : "full_attention")
      }
      func cap(_ value: Float?) -> JSONValue { value.map { .number("\($0)") } ?? .null }
      members += [
        ("attn_logit_softcapping", cap(attentionSoftcap)),
        ("final_logit_softcapping", cap(finalSoftcap)),
        ("layer_types", .array(types)),
        // transformers declares it an integer; it is one in every Gemma checkpoint.
        (
          "query_pre_attn_scalar",
          Int(exactly: queryScalar).map { .integer($0) } ?? .number("\(queryScalar)")
        ),
        ("sliding_window", slidingWindow.map { .integer($0) } ?? .null),
        ("use_bidirectional_attention", .bool(false)),
        (
          "rope_parameters",
          ropeLocalFreqBase.map {
            .object([
              ("full_attention", rope(ropeFreqBase)), ("sliding_attention", rope($0)),
            ])
          } ?? rope(ropeFreqBase)
        ),
      ]
    } else {
      members += [("rope_scaling", .null), ("rope_theta", .number("\(ropeFreqBase)"))]
    }
    if family == .llama {
      members += [("mlp_bias", .bool(false)), ("pretraining_tp", .integer(1))]
    } else if family.slidingPattern == nil {
      members += [
        ("max_window_layers", .integer(blockCount)), ("sliding_window", .null),
        ("use_sliding_window", .bool(false)),
      ]
    }
    return .object(members.sorted { $0.0 < $1.0 })
  }

  /// The family's GGUF keys (`llama.*`, `qwen2.*`, …), in the order llama.cpp's converter
  /// writes them: the vocabulary size and RoPE dimensions for Llama only, the key and value
  /// lengths when the head size is not the hidden size over the heads.
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
    let p = family.name
    var before = [
      try uint32("\(p).block_count", blockCount),
      try uint32("\(p).context_length", contextLength),
      try uint32("\(p).embedding_length", embeddingLength),
      try uint32("\(p).feed_forward_length", feedForwardLength),
      try uint32("\(p).attention.head_count", headCount),
      try uint32("\(p).attention.head_count_kv", headCountKV),
      GGUFKeyValue(key: "\(p).rope.freq_base", value: .float32(ropeFreqBase)),
      GGUFKeyValue(key: "\(p).attention.layer_norm_rms_epsilon", value: .float32(rmsNormEpsilon)),
    ]
    if family.slidingPattern != nil {
      // Gemma: llama.cpp's converter writes the head sizes always, then the window and, for
      // Gemma 2, the soft-caps. What llama.cpp fixes instead of reading must be what it fixes.
      let derived = Float(
        Self.isGemma27B(family, blockCount) ? embeddingLength / headCount : headDim)
      guard queryScalar == derived else {
        throw FlareError(
          "config", .unsupported,
          "query_pre_attn_scalar is \(queryScalar), but llama.cpp derives \(derived) for this \(family) model and a GGUF cannot say otherwise",
          path: fields.path, key: "query_pre_attn_scalar")
      }
      if let local = ropeLocalFreqBase, local != 10000 {
        throw FlareError(
          "config", .unsupported,
          "the sliding layers' RoPE base is \(local), but llama.cpp fixes 10000 for \(family) and a GGUF cannot say otherwise",
          path: fields.path, key: "rope_parameters.sliding_attention.rope_theta")
      }
      before += [
        try uint32("\(p).attention.key_length", headDim),
        try uint32("\(p).attention.value_length", headDim),
      ]
      var after: [GGUFKeyValue] = []
      if let softcap = attentionSoftcap {
        after.append(GGUFKeyValue(key: "\(p).attn_logit_softcapping", value: .float32(softcap)))
      }
      if let softcap = finalSoftcap {
        after.append(GGUFKeyValue(key: "\(p).final_logit_softcapping", value: .float32(softcap)))
      }
      if let window = slidingWindow {
        after.append(try uint32("\(p).attention.sliding_window", window))
      }
      return (before, after)
    }
    var after: [GGUFKeyValue] = []
    if family == .llama {
      after += [
        try uint32("\(p).vocab_size", vocabSize),
        try uint32("\(p).rope.dimension_count", headDim),
      ]
    }
    if headDim * headCount != embeddingLength {
      // llama.cpp derives the head size from embedding_length / head_count unless told.
      after.append(try uint32("\(p).attention.key_length", headDim))
      after.append(try uint32("\(p).attention.value_length", headDim))
    }
    return (before, after)
  }
}
