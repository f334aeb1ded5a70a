import FlareArchitectures
import FlareCore
import FlareGGUF

/// The GGUF vocabulary llama.cpp's converter writes from an HF folder's SentencePiece
/// `tokenizer.model` (`tokenizer.ggml.model = "llama"`), with its special tokens as gguf-py's
/// `SpecialVocab` finds them in `tokenizer.json`, `tokenizer_config.json` and `config.json`:
///
/// - ids below `vocab_size` start as `[PAD<id>]`, score -10000, unused; the model's pieces fill
///   them with their text and score, typed unknown, control, unused or byte as the model says
///   and normal otherwise (a user-defined piece of the model stays normal);
/// - `added_tokens.json` entries become user-defined with score -1000; `tokenizer_config.json`'s
///   `added_tokens_decoder` entries become control (`special`, or a name that looks special:
///   `<pad>`, `<mask>`, `<|…|>`, `<unused…>`) or user-defined with "▁" written as a space,
///   score -1000; ids at or beyond `vocab_size` are left out (a note says so);
/// - special ids: `tokenizer_config.json`'s `bos_token`, `eos_token`, … looked up among
///   `tokenizer.json`'s added tokens, then `config.json`'s `*_token_id`; `add_bos_token`,
///   `add_eos_token` and `add_sep_token` from `tokenizer.json`'s post-processor template, then
///   `tokenizer_config.json`; the chat template.
struct SentencePieceVocabulary {
  var tokens: [String]
  var scores: [Float]
  var types: [BPETokenizer.TokenType]
  /// `(GGUF key suffix, id)` in the order they were found.
  var specialIDs: [(String, Int)] = []
  /// `(bos|eos|sep, flag)` in the order they were found.
  var addFlags: [(String, Bool)] = []
  var addSpacePrefix: Bool?
  var chatTemplate: String?
  /// What was left out, for the conversion report.
  var notes: [String] = []

  /// The special-token kinds gguf-py looks for, with the GGUF key each is written to (`cls` has
  /// none: gguf-py skips it).
  static let specialKeys: [(kind: String, key: String?)] = [
    ("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
    ("sep", "seperator_token_id"), ("pad", "padding_token_id"), ("cls", nil),
    ("mask", "mask_token_id"), ("eot", "eot_token_id"), ("eom", "eom_token_id"),
  ]

  init(folder: String, vocabSize: Int?, family: ModelFamily, modelConfig: JSONValue) throws {
    let modelPath = "\(folder)/tokenizer.model"
    let model = try SentencePieceModelFile(path: modelPath)
    let count = vocabSize ?? model.pieces.count
    tokens = (0..<count).map { "[PAD\($0)]" }
    scores = Array(repeating: -10000, count: count)
    types = Array(repeating: .unused, count: count)
    for (id, piece) in model.pieces.enumerated() {
      guard id < count else {
        notes.append(
          "tokenizer.model: pieces from id \(id) on (\(model.pieces.count - id) of them) are beyond vocab_size \(count), left out as llama.cpp's converter leaves them"
        )
        break
      }
      tokens[id] = piece.text
      scores[id] = piece.score
      types[id] = [.unknown, .control, .unused, .byte].contains(piece.type) ? piece.type : .normal
    }
    let addedPath = "\(folder)/added_tokens.json"
    if fileExists(addedPath) {
      guard let members = try Converter.readJSON(addedPath).objectMembers else {
        throw FlareError("convert", .invalidArgument, "is not a JSON object", path: addedPath)
      }
      for (token, value) in members {
        guard let id = value.intValue, id >= 0 else {
          throw FlareError(
            "convert", .invalidArgument,
            "holds '\(token.escapedForMessage)' with an id that is not a non-negative integer",
            path: addedPath, key: token)
        }
        guard id < count else {
          notes.append(
            "added_tokens.json: '\(token)' has id \(id), beyond vocab_size \(count): left out")
          continue
        }
        (tokens[id], scores[id], types[id]) = (token, -1000, .userDefined)
      }
    }
    let configPath = "\(folder)/tokenizer_config.json"
    let tokenizerConfig = fileExists(configPath) ? try Converter.readJSON(configPath) : nil
    for (key, entry) in tokenizerConfig?["added_tokens_decoder"]?.objectMembers ?? [] {
      guard let id = Int(key), id >= 0, var content = entry["content"]?.stringValue else {
        throw FlareError(
          "convert", .invalidArgument,
          "holds an entry whose key is not a token id or which has no content",
          path: configPath, key: "added_tokens_decoder.\(key)")
      }
      guard id < count else {
        notes.append(
          "tokenizer_config.json: added token '\(content)' has id \(id), beyond vocab_size \(count): left out"
        )
        continue
      }
      if entry["special"]?.boolValue == true || Self.looksSpecial(content) {
        types[id] = .control
      } else {
        content = content.replacingScalars("\u{2581}", with: " ")
        types[id] = .userDefined
      }
      scores[id] = -1000
      tokens[id] = content
    }
    switch family.ggufSpacePrefix {
    case .none: break
    case .off: addSpacePrefix = false
    case .tokenizerConfig: addSpacePrefix = tokenizerConfig?["add_prefix_space"]?.boolValue
    }
    let tokenizerPath = "\(folder)/tokenizer.json"
    let tokenizerJSON = fileExists(tokenizerPath) ? try Converter.readJSON(tokenizerPath) : nil
    try findSpecialTokens(
      tokenizerJSON: tokenizerJSON, tokenizerConfig: tokenizerConfig, modelConfig: modelConfig,
      folder: folder)
  }

  /// gguf-py's `does_token_look_special`.
  static func looksSpecial(_ token: String) -> Bool {
    let scalars = Array(token.unicodeScalars)
    func starts(_ prefix: String) -> Bool { scalars.starts(with: prefix.unicodeScalars) }
    func ends(_ suffix: String) -> Bool {
      scalars.reversed().starts(with: suffix.unicodeScalars.reversed())
    }
    return ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains { $0.sameScalars(token) }
      || (starts("<|") && ends("|>")) || (starts("<\u{FF5C}") && ends("\u{FF5C}>"))
      || (starts("<unused") && ends(">"))
  }

  /// gguf-py's `SpecialVocab._try_load_from_tokenizer_json` and `_try_load_from_config_json`.
  private mutating func findSpecialTokens(
    tokenizerJSON: JSONValue?, tokenizerConfig: JSONValue?, modelConfig: JSONValue, folder: String
  ) throws {
    var kinds = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
    // tokenizer_config.json's token entries as gguf-py edits them (its own copy).
    var configTokens: [String: JSONValue] = [:]
    for kind in ["bos", "cls", "eos", "sep"] {
      if let value = tokenizerConfig?["\(kind)_token"] { configTokens[kind] = value }
    }
    let hasConfig = tokenizerConfig?.objectMembers.map { !$0.isEmpty } ?? false
    var added: [JSONValue] = []
    if let tokenizerJSON {
      added = tokenizerJSON["added_tokens"]?.arrayValue ?? []
      func truthy(_ kind: String) -> Bool { Self.truthy(configTokens[kind]) }
      func text(_ kind: String) -> String? { configTokens[kind]?.stringValue }
      if !truthy("bos") && truthy("cls") && hasConfig { configTokens["bos"] = configTokens["cls"] }
      if !truthy("eos") && truthy("sep") && hasConfig { configTokens["eos"] = configTokens["sep"] }
      let processor = tokenizerJSON["post_processor"] ?? .null
      let processors =
        processor["processors"]?.arrayValue ?? (processor == .null ? [] : [processor])
      for processor in processors {
        switch processor["type"]?.stringValue {
        case "ByteLevel":
          setFlag("bos", false, override: false)
          setFlag("eos", false, override: false)
        case "RobertaProcessing":
          for kind in ["bos", "eos", "sep"] { setFlag(kind, true, override: true) }
          if !truthy("cls") && hasConfig {
            configTokens["cls"] = processor["cls"]?.arrayValue?.first ?? configTokens["bos"]
          }
          if !truthy("sep") && hasConfig {
            configTokens["sep"] = processor["sep"]?.arrayValue?.first ?? configTokens["eos"]
          }
        case "TemplateProcessing":
          let single = processor["single"]?.arrayValue ?? []
          let pair = processor["pair"]?.arrayValue ?? []
          func special(_ item: JSONValue?) -> String? {
            item?["SpecialToken"]?["id"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
          }
          func same(_ a: String?, _ kind: String) -> Bool {
            guard let a, let b = text(kind) else { return false }
            return a.sameScalars(b)
          }
          var first: String?
          var last: String?
          if single.count > 1 {
            first = special(single.first)
            if let first {
              if !hasConfig {
                configTokens["bos"] = .string(first)
              } else if !same(first, "bos") && !same(first, "cls") {
                if !truthy("bos") { configTokens["bos"] = .string(first) }
                if !truthy("cls") { configTokens["cls"] = .string(first) }
              }
              setFlag("bos", same(first, "bos") || same(first, "cls"), override: true)
            }
            last = special(single.last)
            if let last {
              if !hasConfig {
                configTokens["eos"] = .string(last)
              } else if !same(last, "eos") {
                for extra in ["eot", "eom"] where !kinds.contains(extra) {
                  kinds.append(extra)
                  configTokens[extra] = configTokens["eos"]
                  break
                }
                configTokens["eos"] = .string(last)
              }
              setFlag("eos", same(last, "eos"), override: true)
            }
          }
          guard !pair.isEmpty else { continue }
          let start =
            first != nil && special(pair.first).map { $0.sameScalars(first ?? "") } == true ? 1 : 0
          let stop =
            last != nil && special(pair.last).map { $0.sameScalars(last ?? "") } == true
            ? pair.count - 1 : pair.count
          guard start < stop else { continue }
          let middle = Array(pair[start..<stop])
          guard middle.count > 2, middle.first?["Sequence"]?["id"]?.stringValue == "A",
            middle.last?["Sequence"]?["id"]?.stringValue == "B"
          else { continue }
          let between = Array(middle[1..<(middle.count - 1)])
          var addSep = false
          if let entry = special(between.first), (same(entry, "sep") || same(entry, "eos")),
            last == nil
          {
            addSep = true
          }
          if between.count == 2, let entry = special(between[1]),
            same(entry, "sep") || same(entry, "eos")
          {
            addSep = true
          }
          setFlag("sep", addSep, override: true)
          if addSep && !truthy("sep") && hasConfig { configTokens["sep"] = configTokens["eos"] }
        default: break
        }
      }
    }
    if let tokenizerConfig, hasConfig {
      if let template = tokenizerConfig["chat_template"]?.stringValue {
        chatTemplate = template
      } else if tokenizerConfig["chat_template"] == nil {
        let jinja = "\(folder)/chat_template.jinja"
        if fileExists(jinja) {
          chatTemplate = String(decoding: try readSmallFile(jinja), as: UTF8.self)
        }
      }
      for kind in kinds {
        if let flag = tokenizerConfig["add_\(kind)_token"]?.boolValue {
          setFlag(kind, flag, override: false)
        }
        let entry = configTokens[kind] ?? tokenizerConfig["\(kind)_token"]
        guard let content = entry?.stringValue ?? entry?["content"]?.stringValue else { continue }
        let id = added.first { $0["content"]?.stringValue?.sameScalars(content) == true }?["id"]
        try setSpecial(kind, id)
      }
    }
    for kind in kinds {
      try setSpecial(
        kind, modelConfig["\(kind)_token_id"] ?? modelConfig["text_config"]?["\(kind)_token_id"])
    }
    // gguf-py writes add flags only for the kinds its writer knows.
    addFlags = addFlags.filter { ["bos", "eos", "sep"].contains($0.0) }
  }

  private static func truthy(_ value: JSONValue?) -> Bool {
    switch value {
    case nil, .null?, .bool(false)?: false
    case .string(let text)?: !text.isEmpty
    case .object(let members)?: !members.isEmpty
    case .array(let items)?: !items.isEmpty
    default: true
    }
  }

  private mutating func setFlag(_ kind: String, _ flag: Bool, override: Bool) {
    if let index = addFlags.firstIndex(where: { $0.0 == kind }) {
      if override { addFlags[index].1 = flag }
    } else {
      addFlags.append((kind, flag))
    }
  }

  /// gguf-py's `_set_special_token`: integers only, the first one found wins, ids beyond the
  /// vocabulary are skipped.
  private mutating func setSpecial(_ kind: String, _ value: JSONValue?) throws {
    guard let value, case .number = value, let id = value.intValue else { return }
    guard id >= 0 else {
      throw FlareError(
        "convert", .invalidArgument, "is \(id), not a token id", key: "\(kind)_token_id")
    }
    guard id < tokens.count else {
      notes.append(
        "\(kind) token id \(id) is beyond the vocabulary (\(tokens.count) tokens): left out")
      return
    }
    guard let key = Self.specialKeys.first(where: { $0.kind == kind })?.key,
      !specialIDs.contains(where: { $0.0 == key })
    else { return }
    specialIDs.append((key, id))
  }

  /// The tokenizer keys, in the order llama.cpp's converter writes them.
  func ggufKeys() -> [GGUFKeyValue] {
    var keys: [GGUFKeyValue] = [
      GGUFKeyValue(key: "tokenizer.ggml.model", value: .string("llama")),
      GGUFKeyValue(key: "tokenizer.ggml.pre", value: .string("default")),
      GGUFKeyValue(
        key: "tokenizer.ggml.tokens", value: .array(.string, tokens.map { .string($0) })),
      GGUFKeyValue(
        key: "tokenizer.ggml.scores", value: .array(.float32, scores.map { .float32($0) })),
      GGUFKeyValue(
        key: "tokenizer.ggml.token_type", value: .array(.int32, types.map { .int32($0.rawValue) })),
    ]
    for (key, id) in specialIDs {
      keys.append(GGUFKeyValue(key: "tokenizer.ggml.\(key)", value: .uint32(UInt32(id))))
    }
    for (kind, flag) in addFlags {
      keys.append(GGUFKeyValue(key: "tokenizer.ggml.add_\(kind)_token", value: .bool(flag)))
    }
    if let chatTemplate {
      keys.append(GGUFKeyValue(key: "tokenizer.chat_template", value: .string(chatTemplate)))
    }
    if let addSpacePrefix {
      keys.append(
        GGUFKeyValue(key: "tokenizer.ggml.add_space_prefix", value: .bool(addSpacePrefix)))
    }
    return keys
  }
}

extension String {
  /// Equal code point for code point (Swift's `==` equates canonically equivalent strings).
  func sameScalars(_ other: String) -> Bool {
    unicodeScalars.elementsEqual(other.unicodeScalars)
  }

  /// Every `scalar` replaced by `replacement`.
  func replacingScalars(_ scalar: Unicode.Scalar, with replacement: String) -> String {
    var out = String.UnicodeScalarView()
    for s in unicodeScalars {
      if s == scalar { out.append(contentsOf: replacement.unicodeScalars) } else { out.append(s) }
    }
    return String(out)
  }
}
