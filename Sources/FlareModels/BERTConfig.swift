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
  /// - Parameters:
  ///   - json: The parsed file.
  ///   - path: The file's path, for error messages.
  /// - Throws: ``FlareError`` naming the file and field for another architecture, an activation
  ///   other than exact GELU, relative position embeddings, a decoder configuration, or a
  ///   missing or invalid size.
  public init(hfConfig json: JSONValue, path: String) throws {
    func bad(_ message: String) -> FlareError {
      FlareError("config", .invalidArgument, message, path: path)
    }
    func unsupported(_ message: String) -> FlareError {
      FlareError("config", .unsupported, message, path: path)
    }
    func int(_ key: String, default value: Int? = nil, minimum: Int = 1) throws -> Int {
      if let number = json[key], number != .null {
        guard let int = number.intValue, int >= minimum else {
          throw bad("'\(key)' is not an integer of at least \(minimum)")
        }
        return int
      }
      guard let value else { throw bad("'\(key)' is missing") }
      return value
    }
    guard json.objectMembers != nil else { throw bad("config is not a JSON object") }
    let modelType = json["model_type"]?.stringValue
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
        throw unsupported(
          "architecture \(architectures.first ?? "unknown") is not supported; Flare's encoder handles bert, roberta and xlm-roberta"
        )
      }
    case let other?:
      throw unsupported(
        "model_type '\(other.escapedForMessage)' is not supported; Flare's encoder handles bert, roberta and xlm-roberta"
      )
    }
    let activation = json["hidden_act"]?.stringValue ?? "gelu"
    guard activation == "gelu" else {
      throw unsupported(
        "hidden_act '\(activation.escapedForMessage)' is not supported; Flare's encoder computes exact (erf) gelu"
      )
    }
    if let positions = json["position_embedding_type"]?.stringValue, positions != "absolute" {
      throw unsupported(
        "position_embedding_type '\(positions.escapedForMessage)' is not supported; only absolute")
    }
    if json["is_decoder"]?.boolValue == true || json["add_cross_attention"]?.boolValue == true {
      throw unsupported(
        "decoder configurations (is_decoder, add_cross_attention) are not supported")
    }
    hidden = try int("hidden_size")
    layers = try int("num_hidden_layers")
    heads = try int("num_attention_heads")
    guard hidden % heads == 0 else {
      throw bad("hidden_size \(hidden) does not split into \(heads) heads")
    }
    intermediate = try int("intermediate_size")
    vocab = try int("vocab_size")
    maxPositions = try int("max_position_embeddings", default: 512)
    typeVocab = try int("type_vocab_size", default: 2)
    padTokenID = try int("pad_token_id", default: kind == .bert ? 0 : 1, minimum: 0)
    guard padTokenID < vocab else {
      throw bad("pad_token_id \(padTokenID) is outside the vocabulary of \(vocab)")
    }
    if let value = json["layer_norm_eps"], value != .null {
      guard let eps = value.doubleValue, eps.isFinite, eps > 0 else {
        throw bad("'layer_norm_eps' is not a positive number")
      }
      self.eps = Float(eps)
    } else {
      eps = 1e-12
    }
    if kind == .xlmRoberta && maxPositions < padTokenID + 2 {
      throw bad(
        "max_position_embeddings \(maxPositions) leaves no position after the padding index \(padTokenID)"
      )
    }
    var labels: [String] = []
    if let members = json["id2label"]?.objectMembers {
      var byIndex: [Int: String] = [:]
      for (key, value) in members {
        guard let index = Int(key), index >= 0, index < members.count,
          let name = value.stringValue, byIndex[index] == nil
        else {
          throw bad("'id2label' is not a map from 0..<\(members.count) to names")
        }
        byIndex[index] = name
      }
      labels = (0..<members.count).map { byIndex[$0] ?? "" }
    }
    self.labels = labels
  }
}
