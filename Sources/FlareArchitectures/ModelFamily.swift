/// A decoder family Flare runs, described by how it differs from Llama: the one place an
/// architecture is added (with `formats/models.md`). Every consumer (configuration reading,
/// conversion, merging, the model) reads the differences from here.
///
/// | family | HF class | GGUF | differences from Llama |
/// |---|---|---|---|
/// | `llama` | `LlamaForCausalLM` | `llama` | none; llama.cpp permutes Q/K rows for adjacent-pair RoPE |
/// | `qwen2` | `Qwen2ForCausalLM` | `qwen2` | biases on q, k, v; rotate-half RoPE in GGUF too |
/// | `qwen3` | `Qwen3ForCausalLM` | `qwen3` | RMSNorm of each query and key head before RoPE; rotate-half RoPE |
/// | `gemma2` | `Gemma2ForCausalLM` | `gemma2` | GeGLU (tanh GELU), RMSNorm as `1 + w`, norms after attention and MLP too, embeddings × √hidden, attention and final logit soft-capping, sliding window on every other layer, query scale from `query_pre_attn_scalar`, tied head |
/// | `gemma3` | `Gemma3ForCausalLM` | `gemma3` | Gemma 2 without soft-capping, plus q/k RMSNorm, five sliding layers to one global, a RoPE base of its own for the sliding layers |
public struct ModelFamily: Sendable, Equatable, CustomStringConvertible {
  /// The MLP's gate activation.
  public enum Activation: String, Sendable {
    /// SwiGLU: `silu(gate) · up`.
    case silu
    /// GeGLU: `gelu_tanh(gate) · up` (PyTorch's `gelu(approximate="tanh")`).
    case geluTanh
  }

  /// GGUF's `general.architecture`, also the prefix of its keys (`qwen2.block_count`).
  public let name: String
  /// The `architectures` entry of an HF `config.json`.
  public let hfArchitecture: String
  /// `model_type` in `config.json`.
  public let hfModelType: String
  /// The query, key and value projections carry biases (the output projection does not).
  public var queryKeyValueBias = false
  /// Each query and key head is RMS-normalised (weight of `head_dim`) before RoPE.
  public var queryKeyNorm = false
  /// llama.cpp's converter permutes the Q/K rows of each head so that RoPE rotates adjacent
  /// pairs (``LlamaLayout``); otherwise GGUF keeps HF's order and RoPE rotates halves.
  public var ggufPermutesQueryKey = false
  /// `tokenizer.ggml.pre` llama.cpp's converter writes for this family's byte-level BPE, when
  /// the family fixes it (Llama's depends on the checkpoint).
  public var ggufPreTokenizer: String?
  /// The head size transformers uses when `config.json` gives none (otherwise hidden / heads).
  public var hfDefaultHeadDim: Int?
  /// The MLP's activation, and the `config.json` key that names it.
  public var activation = Activation.silu
  public var hfActivationKey = "hidden_act"
  /// RMSNorm weights are applied as `1 + w` (Gemma). HF checkpoints store `w`; llama.cpp's
  /// converter stores `1 + w` in the GGUF, so a GGUF's norms are used as they are.
  public var normAddsOne = false
  /// Token embeddings are multiplied by √hidden (rounded to F32) before the first block.
  public var scalesEmbedding = false
  /// The HF module of the norm before the MLP (`post_attention_layernorm` in Llama).
  public var mlpNorm = "post_attention_layernorm"
  /// The HF modules of the norms applied to the attention and MLP outputs before they join the
  /// residual (Gemma), if any.
  public var outputNorms: (attention: String, mlp: String)?
  /// Sliding-window attention: every `n`-th layer (counting from 1) attends globally, the
  /// others within the window (Gemma 2: 2, Gemma 3: 6), as llama.cpp fixes it for the family;
  /// `nil`: no sliding layers.
  public var slidingPattern: Int?
  /// A SentencePiece vocabulary in this family's GGUF ranks its merges by file order, not by
  /// score, and spells its tokens of spaces with spaces (Gemma); what transformers' GGUF reader
  /// corrects for, and so does the GGUF → HF conversion.
  public var sentencePieceInFileOrder = false
  /// What llama.cpp's converter writes as `tokenizer.ggml.add_space_prefix` with a SentencePiece
  /// vocabulary.
  public var ggufSpacePrefix = SpacePrefixKey.none
  /// The block's tensors (HF module path below `model.layers.N.` and GGUF name below `blk.N.`),
  /// in the order the forward pass uses them.
  public var blockParts: [(hf: String, gguf: String)]

  public var description: String { name }

  public static func == (lhs: ModelFamily, rhs: ModelFamily) -> Bool { lhs.name == rhs.name }

  /// Every family, in the order of the table above.
  /// Where `tokenizer.ggml.add_space_prefix` comes from in an HF → GGUF conversion.
  public enum SpacePrefixKey: Sendable {
    /// Not written.
    case none
    /// `tokenizer_config.json`'s `add_prefix_space`, when it has one (Llama).
    case tokenizerConfig
    /// `false` (Gemma's SentencePiece model adds no dummy prefix).
    case off
  }

  public static let all: [ModelFamily] = [.llama, .qwen2, .qwen3, .gemma2, .gemma3]

  private static let attentionParts: [(hf: String, gguf: String)] = [
    ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
  ]
  private static let queryKeyNormParts: [(hf: String, gguf: String)] = [
    ("self_attn.q_norm", "attn_q_norm"), ("self_attn.k_norm", "attn_k_norm"),
  ]
  private static let mlpParts: [(hf: String, gguf: String)] = [
    ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
  ]
  /// Gemma's: the post-attention norm is its own tensor, the MLP norm is `pre_feedforward_…`.
  private static let gemmaMLPParts: [(hf: String, gguf: String)] = [
    ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "post_attention_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
    ("post_feedforward_layernorm", "post_ffw_norm"),
  ]
  private static let globalParts: [(hf: String, gguf: String)] = [
    ("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output"),
  ]

  private init(
    name: String, hfArchitecture: String, hfModelType: String,
    blockParts: [(hf: String, gguf: String)], _ differences: (inout ModelFamily) -> Void = { _ in }
  ) {
    self.name = name
    self.hfArchitecture = hfArchitecture
    self.hfModelType = hfModelType
    self.blockParts = blockParts
    differences(&self)
  }

  public static let llama = ModelFamily(
    name: "llama", hfArchitecture: "LlamaForCausalLM", hfModelType: "llama",
    blockParts: attentionParts + mlpParts
  ) {
    $0.ggufPermutesQueryKey = true
    $0.ggufSpacePrefix = .tokenizerConfig
  }
  public static let qwen2 = ModelFamily(
    name: "qwen2", hfArchitecture: "Qwen2ForCausalLM", hfModelType: "qwen2",
    blockParts: attentionParts + mlpParts
  ) {
    $0.queryKeyValueBias = true
    $0.ggufPreTokenizer = "qwen2"
  }
  public static let qwen3 = ModelFamily(
    name: "qwen3", hfArchitecture: "Qwen3ForCausalLM", hfModelType: "qwen3",
    blockParts: attentionParts + queryKeyNormParts + mlpParts
  ) {
    $0.queryKeyNorm = true
    $0.ggufPreTokenizer = "qwen2"
    $0.hfDefaultHeadDim = 128
  }
  public static let gemma2 = ModelFamily(
    name: "gemma2", hfArchitecture: "Gemma2ForCausalLM", hfModelType: "gemma2",
    blockParts: attentionParts + gemmaMLPParts
  ) {
    gemma(&$0, slidingPattern: 2)
  }
  public static let gemma3 = ModelFamily(
    name: "gemma3", hfArchitecture: "Gemma3ForCausalLM", hfModelType: "gemma3_text",
    blockParts: attentionParts + queryKeyNormParts + gemmaMLPParts
  ) {
    gemma(&$0, slidingPattern: 6)
    $0.queryKeyNorm = true
  }

  /// What Gemma 2 and 3 share.
  private static func gemma(_ family: inout ModelFamily, slidingPattern: Int) {
    family.hfDefaultHeadDim = 256
    family.activation = .geluTanh
    family.hfActivationKey = "hidden_activation"
    family.normAddsOne = true
    family.scalesEmbedding = true
    family.mlpNorm = "pre_feedforward_layernorm"
    family.outputNorms = ("post_attention_layernorm", "post_feedforward_layernorm")
    family.slidingPattern = slidingPattern
    family.sentencePieceInFileOrder = true
    family.ggufSpacePrefix = .off
  }

  /// Whether layer `layer` attends within the sliding window (by ``slidingPattern``).
  public func isSliding(layer: Int) -> Bool {
    guard let n = slidingPattern else { return false }
    return (layer + 1) % n != 0
  }

  /// The family whose GGUF `general.architecture` is `name`.
  public static func gguf(_ name: String) -> ModelFamily? { all.first { $0.name == name } }

  /// The family of an HF config's `architectures` entries or `model_type`.
  public static func hf(architectures: [String], modelType: String?) -> ModelFamily? {
    all.first { family in
      architectures.contains(family.hfArchitecture) || family.hfModelType == modelType
    }
  }

  /// The family a GGUF `general.architecture` or a `config.json` `model_type` names.
  public static func named(_ architecture: String) -> ModelFamily? {
    all.first { $0.name == architecture || $0.hfModelType == architecture }
  }

  /// "Llama, Qwen2 and Qwen3", for messages about what a tool runs.
  public static var displayNames: String {
    let names = all.map(\.displayName)
    return names.dropLast().joined(separator: ", ") + " and " + (names.last ?? "")
  }

  /// The family's name as people write it (`Qwen2`).
  public var displayName: String { String(hfArchitecture.dropLast("ForCausalLM".count)) }

  /// The names every family is known by, for errors.
  static var ggufNames: String { all.map(\.name).joined(separator: ", ") }
  static var hfNames: String { all.map(\.hfArchitecture).joined(separator: ", ") }
}

// MARK: - Tensor names

extension ModelFamily {
  /// The GGUF name of an HF tensor name (`model.layers.3.self_attn.q_proj.weight` →
  /// `blk.3.attn_q.weight`), or `nil` if it is not part of this family's layout.
  public func ggufName(hf name: String) -> String? {
    let (stem, suffix) = Self.splitSuffix(name)
    guard let suffix else { return nil }
    if let part = Self.globalParts.first(where: { $0.hf == stem }) {
      return "\(part.gguf).\(suffix)"
    }
    guard let (layer, module) = Self.layer(stem, prefix: "model.layers."),
      let part = blockParts.first(where: { $0.hf == module })
    else { return nil }
    return "blk.\(layer).\(part.gguf).\(suffix)"
  }

  /// The HF name of a GGUF tensor name, or `nil`.
  public func hfName(gguf name: String) -> String? {
    let (stem, suffix) = Self.splitSuffix(name)
    guard let suffix else { return nil }
    if let part = Self.globalParts.first(where: { $0.gguf == stem }) {
      return "\(part.hf).\(suffix)"
    }
    guard let (layer, module) = Self.layer(stem, prefix: "blk."),
      let part = blockParts.first(where: { $0.gguf == module })
    else { return nil }
    return "model.layers.\(layer).\(part.hf).\(suffix)"
  }

  /// Whether a GGUF tensor is a query or key projection (weight or bias) whose rows llama.cpp
  /// permuted for RoPE in this family, and with how many heads.
  public func ropeHeads(gguf name: String, heads: Int, kvHeads: Int) -> Int? {
    guard ggufPermutesQueryKey else { return nil }
    if name.hasSuffix(".attn_q.weight") || name.hasSuffix(".attn_q.bias") { return heads }
    if name.hasSuffix(".attn_k.weight") || name.hasSuffix(".attn_k.bias") { return kvHeads }
    return nil
  }

  /// Whether an HF tensor is a norm weight whose stored value differs between the two formats
  /// (Gemma's `w`, `1 + w` in GGUF), which a conversion shifts by one.
  public func shiftsNorm(hf name: String) -> Bool {
    guard normAddsOne, name.hasSuffix(".weight") else { return false }
    let stem = name.dropLast(".weight".count)
    let isNorm = { (part: String) in part.hasSuffix("layernorm") || part.hasSuffix("_norm") }
    return stem == "model.norm"
      || blockParts.contains { isNorm($0.hf) && stem.hasSuffix(".\($0.hf)") }
  }

  private static func splitSuffix(_ name: String) -> (String, String?) {
    for suffix in ["weight", "bias"] where name.hasSuffix(".\(suffix)") {
      return (String(name.dropLast(suffix.count + 1)), suffix)
    }
    return (name, nil)
  }

  /// `(N, rest)` of `prefix` `N.rest`.
  private static func layer(_ stem: String, prefix: String) -> (Int, String)? {
    guard stem.hasPrefix(prefix) else { return nil }
    let rest = stem.dropFirst(prefix.count)
    guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0 else {
      return nil
    }
    return (layer, String(rest[rest.index(after: dot)...]))
  }
}
