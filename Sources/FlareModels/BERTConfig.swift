import FlareCore

/// The hyperparameters of a BERT or XLM-RoBERTa encoder, read from an HF `config.json`.
///
/// Both are post-LayerNorm transformer encoders with learned absolute positions; they differ in
/// how positions are numbered (see ``Kind``) and in the default padding token.
public struct BERTConfig: Sendable, Equatable {
  /// Which family of encoders, which fixes how position ids are computed.
  public enum Kind: String, Sendable {
    /// BERT (`model_type` `bert`): token `t` of every row has position `t`, padding included.
    case bert
    /// XLM-RoBERTa and RoBERTa (`xlm-roberta`, `roberta`): transformers'
    /// `create_position_ids_from_input_ids`, position = `padTokenID + 1 +` the running count of
    /// non-padding tokens, and `padTokenID` for padding tokens.
    case xlmRoberta
  }

  /// BERT or XLM-R position numbering, from `model_type` (or `architectures`).
  public var kind: Kind
  /// `hidden_size`, the width `C` of every token's state.
  public var hidden: Int
  /// `num_hidden_layers`.
  public var layers: Int
  /// `num_attention_heads`; `hidden` is a multiple of it.
  public var heads: Int
  /// `intermediate_size`, the feed-forward width.
  public var intermediate: Int
  /// `vocab_size`, the rows of the word embedding table.
  public var vocab: Int
  /// `max_position_embeddings`, the rows of the position table.
  public var maxPositions: Int
  /// `type_vocab_size`, the rows of the token-type table.
  public var typeVocab: Int
  /// `layer_norm_eps`.
  public var eps: Float
  /// `pad_token_id` (default 0 for BERT, 1 for XLM-R).
  public var padTokenID: Int
  /// Class names by label index (`id2label`), for sequence-classification checkpoints; empty
  /// when the config has none.
  public var labels: [String]

  /// `hidden / heads`.
  public var headDim: Int { hidden / heads }

  /// Reads an HF `config.json` of a BERT, RoBERTa or XLM-RoBERTa model (`BertModel`,
  /// `BertForSequenceClassification`, `XLMRobertaModel`, … or the matching `model_type`).
  ///
  /// Every field is read through ``ConfigFields``: counts are integers from 1 to 2³¹−1, the
  /// heads divide the hidden size, the sizes they imply do not overflow, `layer_norm_eps` is a
  /// finite positive number, `pad_token_id` is inside the vocabulary, and a field of the wrong
  /// type is an error rather than a default.
  /// - Parameters:
  ///   - json: The parsed file.
  ///   - path: The file's path, for error messages.
  /// - Throws: ``FlareError`` naming the file and key for another architecture, an activation
  ///   other than exact GELU, relative position embeddings, a decoder configuration, or a
  ///   missing or invalid value.
  public init(hfConfig json: JSONValue, path: String) throws {
    let fields = ConfigFields(json: json, path: path)
    guard json.objectMembers != nil else {
      throw FlareError("config", .invalidArgument, "config is not a JSON object", path: path)
    }
    let modelType = try fields.string("model_type")
    let architectures = json["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
    switch modelType {
    case "bert": kind = .bert
    case "xlm-roberta", "roberta": kind = .xlmRoberta
    case nil:
      if architectures.contains(where: { $0.hasPrefix("XLMRoberta") || $0.hasPrefix("Roberta") }) {
        kind = .xlmRoberta
      } else if architectures.contains(where: { $0.hasPrefix("Bert") }) {
        kind = .bert
      } else {
        throw FlareError(
          "config", .unsupported,
          "architecture \(architectures.first ?? "unknown") is not supported; Flare's encoder handles bert, roberta and xlm-roberta",
          path: path)
      }
    case let other?:
      throw fields.error(
        "model_type",
        "\(ConfigValue.quoted(other)) is not supported; Flare's encoder handles bert, roberta and xlm-roberta",
        code: .unsupported)
    }
    let activation = try fields.string("hidden_act") ?? "gelu"
    guard activation == "gelu" else {
      throw fields.error(
        "hidden_act",
        "\(ConfigValue.quoted(activation)) is not supported; Flare's encoder computes exact (erf) gelu",
        code: .unsupported)
    }
    if let positions = try fields.string("position_embedding_type"), positions != "absolute" {
      throw fields.error(
        "position_embedding_type",
        "\(ConfigValue.quoted(positions)) is not supported; only absolute", code: .unsupported)
    }
    for key in ["is_decoder", "add_cross_attention"] where try fields.bool(key, default: false) {
      throw fields.error(
        key, "is true; decoder configurations are not supported", code: .unsupported)
    }
    hidden = try fields.count("hidden_size")
    layers = try fields.count("num_hidden_layers")
    heads = try fields.count("num_attention_heads")
    guard hidden % heads == 0 else {
      throw fields.error(
        "num_attention_heads", "is \(heads), which does not divide hidden_size \(hidden)")
    }
    intermediate = try fields.count("intermediate_size")
    vocab = try fields.count("vocab_size")
    maxPositions = try fields.count("max_position_embeddings", default: 512)
    typeVocab = try fields.count("type_vocab_size", default: 2)
    padTokenID = try fields.count(
      "pad_token_id", default: kind == .bert ? 0 : 1, minimum: 0, maximum: vocab - 1)
    eps = try fields.positiveNumber("layer_norm_eps", default: 1e-12)
    if kind == .xlmRoberta && maxPositions < padTokenID + 2 {
      throw fields.error(
        "max_position_embeddings",
        "is \(maxPositions), which leaves no position after the padding index \(padTokenID)")
    }
    let floats = Int.max / MemoryLayout<Float>.size
    for (key, rows) in [
      ("vocab_size", vocab), ("max_position_embeddings", maxPositions),
      ("intermediate_size", intermediate),
    ] {
      _ = try fields.product(
        [(key, rows), ("hidden_size", hidden)], maximum: floats, what: "a weight's size")
    }
    var labels: [String] = []
    if let value = json["id2label"], value != .null {
      guard let members = value.objectMembers else {
        throw fields.error("id2label", "is not an object")
      }
      var byIndex: [Int: String] = [:]
      for (key, value) in members {
        guard let index = Int(key), index >= 0, index < members.count,
          let name = value.stringValue, byIndex[index] == nil
        else {
          throw fields.error("id2label", "is not a map from 0..<\(members.count) to names")
        }
        byIndex[index] = name
      }
      labels = (0..<members.count).map { byIndex[$0] ?? "" }
    }
    self.labels = labels
  }
}
