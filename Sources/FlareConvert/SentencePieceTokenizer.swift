import FlareCore
import FlareGGUF

/// What the GGUF → HF conversion writes as `tokenizer.json` and `tokenizer_config.json`.
protocol HFTokenizerFiles {
  func hfTokenizerJSON() -> JSONValue
  func hfTokenizerConfig(contextLength: Int) -> JSONValue
  /// Files beside those two (name, bytes), such as SentencePiece's `tokenizer.model`.
  func hfOtherFiles() -> [(name: String, bytes: [UInt8])]
}

extension BPETokenizer: HFTokenizerFiles {
  func hfOtherFiles() -> [(name: String, bytes: [UInt8])] { [] }
}

/// `tokenizer.json`'s `added_tokens`: the control tokens (special) and user-defined ones, with
/// `normalized` as the tokenizer's kind wants it.
func hfAddedTokens(
  _ tokens: [String], _ types: [BPETokenizer.TokenType],
  normalized: (BPETokenizer.TokenType) -> Bool
) -> [JSONValue] {
  zip(tokens, types).enumerated().compactMap { id, entry in
    let (token, type) = entry
    guard type == .control || type == .userDefined else { return nil }
    return .object([
      ("id", .integer(id)), ("content", .string(token)), ("single_word", .bool(false)),
      ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(normalized(type))),
      ("special", .bool(type == .control)),
    ])
  }
}

/// The tokenizer of a GGUF file, for writing an HF folder: byte-level BPE (`gpt2`) or
/// SentencePiece (`llama`, as Gemma's and Llama 2's files hold it).
/// - Throws: ``FlareError`` for other tokenizer models or missing keys.
func hfTokenizerFiles(gguf file: GGUFFile, gemma: Bool) throws -> any HFTokenizerFiles {
  if file.value("tokenizer.ggml.model")?.stringValue == "llama" {
    return try SentencePieceTokenizer(gguf: file, gemma: gemma)
  }
  return try BPETokenizer(gguf: file)
}

/// A SentencePiece BPE vocabulary as a GGUF holds it (`tokenizer.ggml.model = "llama"`: pieces,
/// scores, token types, no merges), written as the HF `tokenizer.json` transformers makes from
/// the same file: a BPE with `byte_fallback` over "▁"-spelled text, whose merges are derived
/// as transformers' GGUF converter derives them (`generate_merges`: every split of a piece into
/// two pieces of the vocabulary, ranked by the whole piece's score, highest first, then by the
/// longer left piece; Gemma's scores are its file order, and its tokens of two or more spaces
/// are spelled with "▁"), so that it tokenizes as transformers does. Pieces are compared as
/// code points, never as Swift strings (which would equate canonically equivalent pieces).
struct SentencePieceTokenizer: HFTokenizerFiles {
  var tokens: [String]
  var scores: [Float]
  /// The scores as the file holds them (``scores`` ranks Gemma's merges by file order).
  var fileScores: [Float]
  var types: [BPETokenizer.TokenType]
  var bosID: Int?
  var eosID: Int?
  var unknownID: Int?
  var paddingID: Int?
  var maskID: Int?
  var separatorID: Int?
  var addBOS: Bool?
  var addEOS: Bool?
  var addSEP: Bool?
  /// SentencePiece's `add_dummy_prefix`: "▁" put before the text (Llama 2), or not (Gemma).
  var addSpacePrefix: Bool
  var chatTemplate: String?

  init(gguf file: GGUFFile, gemma: Bool) throws {
    func fail(_ message: String, _ key: String) -> FlareError {
      FlareError("convert", .invalidArgument, message, path: file.path, key: key)
    }
    guard case .array(.string, let tokenValues) = file.value("tokenizer.ggml.tokens") else {
      throw fail("is missing", "tokenizer.ggml.tokens")
    }
    tokens = tokenValues.compactMap(\.stringValue)
    if gemma {
      // Gemma's files store its tokens of spaces as spaces; its tokenizer spells them "▁".
      tokens = tokens.map { token in
        token.unicodeScalars.count >= 2 && token.unicodeScalars.allSatisfy { $0 == " " }
          ? String(repeating: "\u{2581}", count: token.unicodeScalars.count) : token
      }
    }
    guard case .array(_, let scoreValues) = file.value("tokenizer.ggml.scores") else {
      throw fail(
        "is missing (a SentencePiece vocabulary needs its scores)", "tokenizer.ggml.scores")
    }
    scores = try scoreValues.map { value in
      guard case .float32(let score) = value, score.isFinite else {
        throw fail("holds a value that is not a finite FLOAT32", "tokenizer.ggml.scores")
      }
      return score
    }
    fileScores = scores
    if gemma {
      // Gemma's scores do not follow its merge order; its file order does.
      scores = (0..<tokens.count).map { -Float($0) }
    }
    if case .array(_, let typeValues) = file.value("tokenizer.ggml.token_type") {
      types = typeValues.map { value in
        value.integerValue.flatMap { Int32(exactly: $0) }.flatMap(BPETokenizer.TokenType.init)
          ?? .normal
      }
    } else {
      types = Array(repeating: .normal, count: tokens.count)
    }
    guard scores.count == tokens.count, types.count == tokens.count else {
      throw fail(
        "has \(scores.count) scores and \(types.count) types for \(tokens.count) tokens",
        "tokenizer.ggml.scores")
    }
    let count = tokens.count
    func id(_ key: String) -> Int? {
      file.value("tokenizer.ggml.\(key)")?.integerValue.flatMap {
        (0..<count).contains($0) ? $0 : nil
      }
    }
    bosID = id("bos_token_id")
    eosID = id("eos_token_id")
    unknownID = id("unknown_token_id")
    paddingID = id("padding_token_id")
    maskID = id("mask_token_id")
    separatorID = id("seperator_token_id")  // sic: llama.cpp's spelling
    if case .bool(let flag) = file.value("tokenizer.ggml.add_bos_token") { addBOS = flag }
    if case .bool(let flag) = file.value("tokenizer.ggml.add_eos_token") { addEOS = flag }
    if case .bool(let flag) = file.value("tokenizer.ggml.add_sep_token") { addSEP = flag }
    if case .bool(let flag) = file.value("tokenizer.ggml.add_space_prefix") {
      addSpacePrefix = flag
    } else {
      addSpacePrefix = true  // SentencePiece's default, as llama.cpp reads it
    }
    chatTemplate = file.value("tokenizer.chat_template")?.stringValue
  }

  /// transformers' `generate_merges(vocab, vocab_scores)`: for each piece in vocabulary order,
  /// its splits into two pieces of the vocabulary (by code points), sorted by the two pieces'
  /// ids; then all of them by the whole piece's score, highest first, stably.
  func merges() -> [(String, String)] {
    // Python's dict of the vocabulary: the last id of a repeated piece wins.
    let scalars = tokens.map { Array($0.unicodeScalars) }
    var ids: [[Unicode.Scalar]: Int] = [:]
    ids.reserveCapacity(tokens.count)
    for (i, piece) in scalars.enumerated() { ids[piece] = i }
    var found: [(left: Int, right: Int, score: Float, leftLength: Int, order: Int)] = []
    for (i, piece) in scalars.enumerated() where ids[piece] == i && piece.count > 1 {
      var local: [(Int, Int, Int)] = []
      for cut in 1..<piece.count {
        if let l = ids[Array(piece[..<cut])], let r = ids[Array(piece[cut...])] {
          local.append((l, r, cut))
        }
      }
      local.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
      for (l, r, cut) in local { found.append((l, r, scores[i], cut, found.count)) }
    }
    // Best first by (score, left length, right length); the two lengths of one piece's splits
    // differ, so the order is total, as Python's stable reverse sort makes it.
    found.sort {
      if $0.score != $1.score { return $0.score > $1.score }
      if $0.leftLength != $1.leftLength { return $0.leftLength > $1.leftLength }
      return $0.order < $1.order
    }
    return found.map { (tokens[$0.left], tokens[$0.right]) }
  }

  func hfTokenizerJSON() -> JSONValue {
    let added = hfAddedTokens(tokens, types) { _ in false }
    // One entry a piece, its last id (as Python's dict keeps it); pieces compared as code points.
    var last: [[Unicode.Scalar]: Int] = [:]
    for (id, token) in tokens.enumerated() { last[Array(token.unicodeScalars)] = id }
    var vocab: [(String, JSONValue)] = []
    vocab.reserveCapacity(tokens.count)
    for (id, token) in tokens.enumerated() where last[Array(token.unicodeScalars)] == id {
      vocab.append((token, .integer(id)))
    }
    let space = JSONValue.object([
      ("type", .string("Replace")), ("pattern", .object([("String", .string(" "))])),
      ("content", .string("\u{2581}")),
    ])
    let normalizer: JSONValue =
      addSpacePrefix
      ? .object([
        ("type", .string("Sequence")),
        (
          "normalizers",
          .array([
            .object([("type", .string("Prepend")), ("prepend", .string("\u{2581}"))]), space,
          ])
        ),
      ]) : space
    var decoders: [JSONValue] = [
      .object([
        ("type", .string("Replace")), ("pattern", .object([("String", .string("\u{2581}"))])),
        ("content", .string(" ")),
      ]),
      .object([("type", .string("ByteFallback"))]), .object([("type", .string("Fuse"))]),
    ]
    if addSpacePrefix {
      decoders.append(
        .object([
          ("type", .string("Strip")), ("content", .string(" ")), ("start", .integer(1)),
          ("stop", .integer(0)),
        ]))
    }
    let model = JSONValue.object([
      ("type", .string("BPE")), ("dropout", .null),
      ("unk_token", unknownID.map { .string(tokens[$0]) } ?? .null),
      ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null),
      ("fuse_unk", .bool(true)), ("byte_fallback", .bool(true)), ("ignore_merges", .bool(false)),
      ("vocab", .object(vocab)),
      ("merges", .array(merges().map { .array([.string($0.0), .string($0.1)]) })),
    ])
    return .object([
      ("version", .string("1.0")), ("truncation", .null), ("padding", .null),
      ("added_tokens", .array(added)), ("normalizer", normalizer), ("pre_tokenizer", .null),
      ("post_processor", postProcessor()),
      ("decoder", .object([("type", .string("Sequence")), ("decoders", .array(decoders))])),
      ("model", model),
    ])
  }

  /// The `TemplateProcessing` transformers builds from the same file (its Llama and Gemma
  /// converters): BOS before and EOS after each sequence, as the file's add flags say; `null`
  /// when it adds neither.
  func postProcessor() -> JSONValue {
    var specials: [(String, Int)] = []
    if addBOS == true, let bosID { specials.append((tokens[bosID], bosID)) }
    let bos = specials.first?.0
    var eos: String?
    if addEOS == true, let eosID {
      eos = tokens[eosID]
      if !specials.contains(where: { $0.1 == eosID }) { specials.append((tokens[eosID], eosID)) }
    }
    guard bos != nil || eos != nil else { return .null }
    func special(_ name: String, _ typeID: Int) -> JSONValue {
      .object([("SpecialToken", .object([("id", .string(name)), ("type_id", .integer(typeID))]))])
    }
    func sequence(_ name: String, _ typeID: Int) -> [JSONValue] {
      let body = JSONValue.object([
        ("Sequence", .object([("id", .string(name)), ("type_id", .integer(typeID))]))
      ])
      return (bos.map { [special($0, typeID)] } ?? []) + [body]
        + (eos.map { [special($0, typeID)] } ?? [])
    }
    return .object([
      ("type", .string("TemplateProcessing")), ("single", .array(sequence("A", 0))),
      ("pair", .array(sequence("A", 0) + sequence("B", 1))),
      (
        "special_tokens",
        .object(
          specials.map { name, id in
            (
              name,
              .object([
                ("id", .string(name)), ("ids", .array([.integer(id)])),
                ("tokens", .array([.string(name)])),
              ])
            )
          })
      ),
    ])
  }

  /// `tokenizer_config.json` in the form of Gemma's and Llama 2's: the add flags, every
  /// control and user-defined token in `added_tokens_decoder` (so that llama.cpp's converter
  /// types them as this file does), the special tokens, the chat template.
  func hfTokenizerConfig(contextLength: Int) -> JSONValue {
    var members: [(String, JSONValue)] = []
    if let addBOS { members.append(("add_bos_token", .bool(addBOS))) }
    if let addEOS { members.append(("add_eos_token", .bool(addEOS))) }
    if let addSEP { members.append(("add_sep_token", .bool(addSEP))) }
    let decoder: [(String, JSONValue)] = types.indices.compactMap { id in
      guard types[id] == .control || types[id] == .userDefined else { return nil }
      return (
        String(id),
        .object([
          ("content", .string(tokens[id])), ("lstrip", .bool(false)),
          ("normalized", .bool(false)), ("rstrip", .bool(false)),
          ("single_word", .bool(false)), ("special", .bool(types[id] == .control)),
        ])
      )
    }
    members.append(("added_tokens_decoder", .object(decoder)))
    for (key, id) in [
      ("bos_token", bosID), ("eos_token", eosID), ("pad_token", paddingID),
      ("unk_token", unknownID), ("mask_token", maskID), ("sep_token", separatorID),
    ] {
      if let id { members.append((key, .string(tokens[id]))) }
    }
    if let chatTemplate { members.append(("chat_template", .string(chatTemplate))) }
    members += [
      ("clean_up_tokenization_spaces", .bool(false)), ("model_max_length", .integer(contextLength)),
      ("tokenizer_class", .string("PreTrainedTokenizerFast")),
    ]
    return .object(members)
  }

  /// SentencePiece's `tokenizer.model` for the vocabulary: the pieces with the file's scores
  /// and types (the unknown token typed unknown, as SentencePiece requires), a BPE trainer
  /// spec with byte fallback when there are byte pieces, and an identity normalizer with the
  /// file's dummy prefix. llama.cpp's converter reads it back, with `tokenizer_config.json`'s
  /// `added_tokens_decoder`, into this vocabulary.
  func sentencePieceModel() -> SentencePieceModelFile {
    var model = SentencePieceModelFile(
      pieces: tokens.indices.map { id in
        .init(text: tokens[id], score: fileScores[id], type: id == unknownID ? .unknown : types[id])
      })
    model.modelType = 2
    model.byteFallback = types.contains(.byte)
    model.normalizerName = "identity"
    model.addDummyPrefix = addSpacePrefix
    model.removeExtraWhitespaces = false
    return model
  }

  func hfOtherFiles() -> [(name: String, bytes: [UInt8])] {
    [("tokenizer.model", sentencePieceModel().serialized())]
  }
}
