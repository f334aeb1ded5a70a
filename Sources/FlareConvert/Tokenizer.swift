import FlareCore
import FlareGGUF

/// A byte-level BPE tokenizer as both GGUF (`tokenizer.ggml.*`) and HF (`tokenizer.json`,
/// `tokenizer_config.json`) describe it.
public struct BPETokenizer: Sendable {
  /// GGUF token types.
  public enum TokenType: Int32, Sendable {
    case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
  }

  public var tokens: [String]
  public var types: [TokenType]
  /// Merges as `"left right"`.
  public var merges: [String]
  /// llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`): `gpt-2`, `smollm`, `llama-bpe`, `qwen2`.
  /// Always one of ``supportedPre``, the spelling llama.cpp's vocabulary loader accepts.
  public var pre: String
  public var bosID: Int?
  public var eosID: Int?
  public var unknownID: Int?
  public var paddingID: Int?
  public var addBOS: Bool?
  public var addSpacePrefix: Bool?
  public var chatTemplate: String?

  /// The pre-tokenizers Flare converts, by the names llama.cpp's vocabulary loader knows (its
  /// `tokenizer_pre == "…"` list); only these are ever written.
  static let supportedPre = ["gpt-2", "smollm", "llama-bpe", "qwen2"]

  /// Other spellings read (and given on the command line) for a supported pre-tokenizer:
  /// `gpt2` is what earlier Flare versions wrote; llama.cpp refuses it.
  static let preAliases = ["gpt2": "gpt-2"]

  /// The name to write for a name read or given, or `nil` if Flare does not convert it.
  static func canonicalPre(_ name: String) -> String? {
    let name = preAliases[name] ?? name
    return supportedPre.contains(name) ? name : nil
  }

  /// The Llama 3 pre-tokenizer regex, which `llama-bpe` names.
  static let llama3Pattern =
    #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

  /// Qwen2's pre-tokenizer regex (Llama 3's with single digits), which `qwen2` names.
  static let qwen2Pattern =
    #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

  // MARK: GGUF

  /// Reads `tokenizer.ggml.*` from a GGUF file.
  /// - Throws: ``FlareError`` if the model is not byte-level BPE (`gpt2`) or keys are missing.
  public init(gguf file: GGUFFile) throws {
    func fail(_ message: String) -> FlareError {
      FlareError("convert", .unsupported, message, path: file.path)
    }
    guard file.value("tokenizer.ggml.model")?.stringValue == "gpt2" else {
      throw fail(
        "tokenizer model '\(file.value("tokenizer.ggml.model")?.stringValue ?? "none")' is not supported; flare-convert handles byte-level BPE ('gpt2')"
      )
    }
    guard case .array(.string, let tokenValues) = file.value("tokenizer.ggml.tokens") else {
      throw fail("tokenizer.ggml.tokens is missing")
    }
    tokens = tokenValues.compactMap(\.stringValue)
    if case .array(_, let typeValues) = file.value("tokenizer.ggml.token_type") {
      types = try typeValues.map { value in
        // Unknown types read as normal tokens, as llama.cpp's converter does; a value that is
        // not a 32-bit integer is an error.
        guard let type = value.integerValue.flatMap({ Int32(exactly: $0) }) else {
          let text = ConfigValue(gguf: value, offset: nil).text
          throw ConfigFields(gguf: file).error(
            "tokenizer.ggml.token_type", "holds \(value.type.name) \(text), not an INT32 token type"
          )
        }
        return TokenType(rawValue: type) ?? .normal
      }
    } else {
      types = Array(repeating: .normal, count: tokens.count)
    }
    guard types.count == tokens.count else { throw fail("token_type and tokens differ in length") }
    if case .array(.string, let mergeValues) = file.value("tokenizer.ggml.merges") {
      merges = mergeValues.compactMap(\.stringValue)
    } else {
      merges = []
    }
    let preRead = file.value("tokenizer.ggml.pre")?.stringValue ?? "gpt-2"
    guard let pre = Self.canonicalPre(preRead) else {
      throw fail(
        "tokenizer.ggml.pre '\(preRead)' is not supported; supported: \(Self.supportedPre.joined(separator: ", "))"
      )
    }
    self.pre = pre
    bosID = file.value("tokenizer.ggml.bos_token_id")?.integerValue
    eosID = file.value("tokenizer.ggml.eos_token_id")?.integerValue
    unknownID = file.value("tokenizer.ggml.unknown_token_id")?.integerValue
    paddingID = file.value("tokenizer.ggml.padding_token_id")?.integerValue
    if case .bool(let flag) = file.value("tokenizer.ggml.add_bos_token") { addBOS = flag }
    if case .bool(let flag) = file.value("tokenizer.ggml.add_space_prefix") {
      addSpacePrefix = flag
    }
    chatTemplate = file.value("tokenizer.chat_template")?.stringValue
  }

  /// The `tokenizer.*` GGUF keys, in the order llama.cpp's converter writes them.
  /// - Throws: ``FlareError`` naming the key for a special token id outside the vocabulary.
  func ggufKeys() throws -> [GGUFKeyValue] {
    var keys: [GGUFKeyValue] = []
    if let addSpacePrefix {
      keys.append(
        GGUFKeyValue(key: "tokenizer.ggml.add_space_prefix", value: .bool(addSpacePrefix)))
    }
    if let addBOS {
      keys.append(GGUFKeyValue(key: "tokenizer.ggml.add_bos_token", value: .bool(addBOS)))
    }
    keys += [
      GGUFKeyValue(key: "tokenizer.ggml.model", value: .string("gpt2")),
      GGUFKeyValue(key: "tokenizer.ggml.pre", value: .string(pre)),
      GGUFKeyValue(
        key: "tokenizer.ggml.tokens", value: .array(.string, tokens.map { .string($0) })),
      GGUFKeyValue(
        key: "tokenizer.ggml.token_type", value: .array(.int32, types.map { .int32($0.rawValue) })),
      GGUFKeyValue(
        key: "tokenizer.ggml.merges", value: .array(.string, merges.map { .string($0) })),
    ]
    for (key, id) in [
      ("bos_token_id", bosID), ("eos_token_id", eosID), ("unknown_token_id", unknownID),
      ("padding_token_id", paddingID),
    ] {
      guard let id else { continue }
      guard id < tokens.count, let exact = UInt32(exactly: id) else {
        throw FlareError(
          "convert", .invalidArgument,
          "is \(id), outside the vocabulary (0 to \(tokens.count - 1))",
          key: "tokenizer.ggml.\(key)")
      }
      keys.append(GGUFKeyValue(key: "tokenizer.ggml.\(key)", value: .uint32(exact)))
    }
    if let chatTemplate {
      keys.append(GGUFKeyValue(key: "tokenizer.chat_template", value: .string(chatTemplate)))
    }
    return keys
  }

  // MARK: HF

  /// The pre-tokenizer `tokenizer.json` uses for llama.cpp's pre-tokenizer `name`.
  static func hfPreTokenizer(_ name: String) -> JSONValue {
    let byteLevel = { (regex: Bool, trimOffsets: Bool) -> JSONValue in
      .object([
        ("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)),
        ("trim_offsets", .bool(trimOffsets)),
        ("use_regex", .bool(regex)),
      ])
    }
    /// A regex split isolating its matches, then bytes to characters (Llama 3, Qwen2).
    let split = { (pattern: String, trimOffsets: Bool) -> JSONValue in
      .object([
        ("type", .string("Sequence")),
        (
          "pretokenizers",
          .array([
            .object([
              ("type", .string("Split")), ("pattern", .object([("Regex", .string(pattern))])),
              ("behavior", .string("Isolated")), ("invert", .bool(false)),
            ]),
            byteLevel(false, trimOffsets),
          ])
        ),
      ])
    }
    switch name {
    case "smollm":
      return .object([
        ("type", .string("Sequence")),
        (
          "pretokenizers",
          .array([
            .object([("type", .string("Digits")), ("individual_digits", .bool(true))]),
            byteLevel(true, true),
          ])
        ),
      ])
    case "llama-bpe": return split(llama3Pattern, true)
    case "qwen2": return split(qwen2Pattern, false)
    default: return byteLevel(true, true)
    }
  }

  /// llama.cpp's pre-tokenizer name for an HF `pre_tokenizer`, or `nil` if unrecognised.
  static func preName(hf preTokenizer: JSONValue?) -> String? {
    guard let preTokenizer else { return nil }
    for name in supportedPre where structurallyEqual(hfPreTokenizer(name), preTokenizer) {
      return name
    }
    return nil
  }

  /// Equality of the fields that define behaviour (object members compared by key).
  static func structurallyEqual(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case (.object(let x), .object(let y)):
      let keys = Set(x.map(\.0)).union(y.map(\.0))
      return keys.allSatisfy { key in
        let left = a[key] ?? .null
        let right = b[key] ?? .null
        return structurallyEqual(left, right)
      }
    case (.array(let x), .array(let y)):
      return x.count == y.count && zip(x, y).allSatisfy { structurallyEqual($0, $1) }
    default:
      return a == b
    }
  }

  /// `tokenizer.json` for the HF `tokenizers` library: a byte-level BPE model with the
  /// pre-tokenizer `pre` names, control and user-defined tokens as added tokens.
  public func hfTokenizerJSON() -> JSONValue {
    let added = hfAddedTokens(tokens, types) { $0 != .control }
    let byteLevel = { (prefix: Bool, trim: Bool) -> JSONValue in
      .object([
        ("type", .string("ByteLevel")), ("add_prefix_space", .bool(prefix)),
        ("trim_offsets", .bool(trim)),
        ("use_regex", .bool(true)),
      ])
    }
    var vocab: [(String, JSONValue)] = []
    vocab.reserveCapacity(tokens.count)
    var seen = Set<String>()
    for (id, token) in tokens.enumerated() where seen.insert(token).inserted {
      vocab.append((token, .integer(id)))
    }
    let model = JSONValue.object([
      ("type", .string("BPE")), ("dropout", .null), ("unk_token", .null),
      ("continuing_subword_prefix", .null),
      ("end_of_word_suffix", .null), ("fuse_unk", .bool(false)), ("byte_fallback", .bool(false)),
      ("ignore_merges", .bool(pre == "llama-bpe")), ("vocab", .object(vocab)),
      (
        "merges",
        .array(
          merges.map { merge in
            .array(merge.split(separator: " ", maxSplits: 1).map { .string(String($0)) })
          })
      ),
    ])
    return .object([
      ("version", .string("1.0")), ("truncation", .null), ("padding", .null),
      ("added_tokens", .array(added)),
      ("normalizer", .null), ("pre_tokenizer", Self.hfPreTokenizer(pre)),
      ("post_processor", byteLevel(true, false)),
      ("decoder", byteLevel(true, true)), ("model", model),
    ])
  }

  /// `tokenizer_config.json`.
  public func hfTokenizerConfig(contextLength: Int) -> JSONValue {
    var members: [(String, JSONValue)] = []
    if let addBOS { members.append(("add_bos_token", .bool(addBOS))) }
    members.append(("add_prefix_space", .bool(addSpacePrefix ?? false)))
    for (key, id) in [
      ("bos_token", bosID), ("eos_token", eosID), ("pad_token", paddingID),
      ("unk_token", unknownID),
    ] {
      if let id, id >= 0, id < tokens.count { members.append((key, .string(tokens[id]))) }
    }
    if let chatTemplate { members.append(("chat_template", .string(chatTemplate))) }
    members += [
      ("clean_up_tokenization_spaces", .bool(false)), ("model_max_length", .integer(contextLength)),
      ("tokenizer_class", .string("GPT2Tokenizer")),
    ]
    return .object(members)
  }

  /// Reads an HF byte-level BPE tokenizer from `tokenizer.json` and `tokenizer_config.json`.
  /// - Throws: ``FlareError`` for other model types or an unrecognised pre-tokenizer (unless
  ///   `pre` is given).
  public init(
    tokenizerJSON: JSONValue, config: JSONValue?, vocabSize: Int, preOverride: String?, path: String
  ) throws {
    func fail(_ message: String) -> FlareError {
      FlareError("convert", .unsupported, message, path: path)
    }
    let model = tokenizerJSON["model"] ?? .null
    guard model["type"]?.stringValue == "BPE", let vocab = model["vocab"]?.objectMembers else {
      throw fail("tokenizer model is not BPE; flare-convert handles byte-level BPE tokenizers")
    }
    if model["byte_fallback"]?.boolValue == true {
      throw fail(
        "this tokenizer.json is SentencePiece-style BPE (byte_fallback, as Gemma's and Llama 2's); writing it to a GGUF needs the SentencePiece scores llama.cpp tokenizes with, which tokenizer.json does not hold: convert from the GGUF instead, or use a byte-level BPE tokenizer"
      )
    }
    var byID: [Int: String] = [:]
    let addedTokens = tokenizerJSON["added_tokens"]?.arrayValue ?? []
    // Ids index the token list, so they must stay below the vocabulary size or the number of
    // entries, whichever is larger: anything beyond is an error, not a huge list of holes.
    let idLimit = max(vocabSize, vocab.count + addedTokens.count)
    func checkedID(_ value: JSONValue?, of token: String, in key: String) throws -> Int {
      guard let id = value?.intValue, (0..<idLimit).contains(id) else {
        throw FlareError(
          "convert", .invalidArgument,
          "holds '\(token.escapedForMessage)' with id \(value.map(JSONWriter.compact) ?? "missing"), not an integer from 0 to \(idLimit - 1)",
          path: path, key: key)
      }
      return id
    }
    for (token, id) in vocab {
      byID[try checkedID(id, of: token, in: "model.vocab")] = token
    }
    var addedTypes: [Int: TokenType] = [:]
    for entry in addedTokens {
      guard let content = entry["content"]?.stringValue else { continue }
      let id = try checkedID(entry["id"], of: content, in: "added_tokens")
      byID[id] = content
      addedTypes[id] = entry["special"]?.boolValue == true ? .control : .userDefined
    }
    let count = max(vocabSize, (byID.keys.max() ?? -1) + 1)
    tokens = (0..<count).map { byID[$0] ?? "[PAD\($0)]" }
    types = (0..<count).map { id in byID[id] == nil ? .unused : (addedTypes[id] ?? .normal) }
    merges = (model["merges"]?.arrayValue ?? []).compactMap { merge in
      if let text = merge.stringValue { return text }
      if let pair = merge.arrayValue?.compactMap(\.stringValue), pair.count == 2 {
        return "\(pair[0]) \(pair[1])"
      }
      return nil
    }
    if let preOverride {
      guard let canonical = Self.canonicalPre(preOverride) else {
        throw fail(
          "--tokenizer-pre '\(preOverride)' is not one of \(Self.supportedPre.joined(separator: ", "))"
        )
      }
      pre = canonical
    } else if let detected = Self.preName(hf: tokenizerJSON["pre_tokenizer"]) {
      pre = detected
    } else {
      throw fail(
        "the pre-tokenizer is not one Flare recognises (\(Self.supportedPre.joined(separator: ", "))); pass --tokenizer-pre to name it"
      )
    }
    let index = Dictionary(
      tokens.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
    func special(_ key: String) -> Int? {
      guard let value = config?[key] else { return nil }
      let text = value.stringValue ?? value["content"]?.stringValue
      return text.flatMap { index[$0] }
    }
    bosID = special("bos_token")
    eosID = special("eos_token")
    unknownID = special("unk_token")
    paddingID = special("pad_token")
    addBOS = config?["add_bos_token"]?.boolValue
    addSpacePrefix = config?["add_prefix_space"]?.boolValue
    chatTemplate = config?["chat_template"]?.stringValue
  }
}
