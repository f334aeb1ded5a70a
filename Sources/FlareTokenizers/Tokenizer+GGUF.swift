import FlareCore
import FlareGGUF

// Vocabularies checked against llama.cpp's own test vectors (`ggml-vocab-*.gguf.inp/.out`),
// every case exact: llama-spm, phi-3 (`llama`); gpt-2, mpt, llama-bpe, qwen2, qwen35,
// starcoder, refact, command-r, falcon, deepseek-coder, deepseek-llm (`gpt2`); gemma-4
// (`gemma4`); bert-bge (`bert`). The `t5` Unigram path (nomic-bert-moe, no vectors) is checked
// against HF's XLM-R ids. Refused: other tokenizer models (`rwkv`, `plamo2`, …) and `gpt2`
// vocabularies whose `tokenizer.ggml.pre` is missing (aquila, gpt-neox: llama.cpp guesses) or
// not in `PreTokenizer.supportedNames`.

extension Tokenizer {
  /// Reads the tokenizer stored in a GGUF file's `tokenizer.ggml.*` keys.
  ///
  /// Supports `tokenizer.ggml.model` `gpt2` (byte-level BPE with the pre-tokenizer named by
  /// `tokenizer.ggml.pre`), `llama` (SentencePiece BPE), `gemma4` (BPE merges over
  /// SentencePiece pieces, reported as ``Tokenizer/Kind/sentencePieceBPE``), `t5`
  /// (SentencePiece Unigram, with `tokenizer.ggml.precompiled_charsmap`) and `bert` (WordPiece,
  /// llama.cpp's "▁"-prefixed spelling). Defaults for missing keys follow llama.cpp
  /// (`llama_vocab::impl::load`); special token ids outside the vocabulary are errors, where
  /// llama.cpp only warns.
  /// - Parameter gguf: An open GGUF file (a vocabulary-only file is fine).
  /// - Returns: The tokenizer.
  /// - Throws: ``FlareError`` naming the file and key: `.missingKey`, `.invalidValue`,
  ///   `.tokenOutOfRange`, `.invalidMerge`, or `.unsupported` for tokenizer models and
  ///   pre-tokenizers Flare does not implement.
  public static func load(gguf: GGUFFile) throws -> Tokenizer {
    try GGUFVocabularyReader(gguf).tokenizer()
  }
}

/// Reads and validates the `tokenizer.ggml.*` keys of one file.
private struct GGUFVocabularyReader {
  let file: GGUFFile
  var path: String { file.path }

  init(_ file: GGUFFile) { self.file = file }

  func fail(_ code: FlareError.Code, _ message: String, key: String) -> FlareError {
    FlareError.tokenizer(code, message, path: path, key: key)
  }

  func string(_ key: String) throws -> String? {
    guard let value = file.value(key) else { return nil }
    guard let text = value.stringValue else {
      throw fail(.invalidValue, "must be a string, not \(value.type.name)", key: key)
    }
    return text
  }

  func bool(_ key: String) throws -> Bool? {
    guard let value = file.value(key) else { return nil }
    guard case .bool(let flag) = value else {
      throw fail(.invalidValue, "must be a bool, not \(value.type.name)", key: key)
    }
    return flag
  }

  func array(_ key: String) throws -> (GGUFValueType, [GGUFValue])? {
    guard let value = file.value(key) else { return nil }
    guard case .array(let type, let elements) = value else {
      throw fail(.invalidValue, "must be an array, not \(value.type.name)", key: key)
    }
    return (type, elements)
  }

  func strings(_ key: String) throws -> [String]? {
    guard let (type, elements) = try array(key) else { return nil }
    guard type == .string else {
      throw fail(.invalidValue, "must be an array of strings, not of \(type.name)", key: key)
    }
    return elements.map { $0.stringValue ?? "" }
  }

  /// A token id key, checked against the vocabulary size.
  func tokenID(_ key: String, count: Int) throws -> Int? {
    guard let value = file.value(key) else { return nil }
    guard let id = value.integerValue else {
      throw fail(.invalidValue, "must be an integer, not \(value.type.name)", key: key)
    }
    guard id >= 0 && id < count else {
      throw fail(.tokenOutOfRange, "token id \(id) is outside the vocabulary of \(count)", key: key)
    }
    return id
  }

  func tokenizer() throws -> Tokenizer {
    let modelKey = "tokenizer.ggml.model"
    guard let model = try string(modelKey) else {
      throw fail(.missingKey, "the file has no tokenizer (key is missing)", key: modelKey)
    }
    let supportedModels = ["gpt2", "llama", "t5", "bert", "gemma4"]
    guard supportedModels.contains(model) else {
      throw fail(
        .unsupported,
        "tokenizer model '\(model)' is not supported; supported: \(supportedModels.joined(separator: ", "))",
        key: modelKey)
    }
    let tokensKey = "tokenizer.ggml.tokens"
    guard var pieces = try strings(tokensKey) else {
      throw fail(.missingKey, "the vocabulary is missing", key: tokensKey)
    }
    guard !pieces.isEmpty, pieces.count < Int(Int32.max) else {
      throw fail(.invalidValue, "the vocabulary has \(pieces.count) tokens", key: tokensKey)
    }
    let count = pieces.count
    // llama.cpp renames empty pieces so that every piece is unique text.
    for i in pieces.indices where pieces[i].isEmpty { pieces[i] = "[EMPTY_\(i)]" }

    var attributes = [TokenAttributes](repeating: .normal, count: count)
    let typeKey = "tokenizer.ggml.token_type"
    if let (type, values) = try array(typeKey) {
      guard type == .int32 else {
        throw fail(.invalidValue, "must be an array of INT32, not of \(type.name)", key: typeKey)
      }
      guard values.count >= count else {
        throw fail(.invalidValue, "has \(values.count) entries for \(count) tokens", key: typeKey)
      }
      for i in 0..<count { attributes[i] = .gguf(type: values[i].integerValue ?? 0) }
    }

    var scores = [Float](repeating: 0, count: count)
    let scoresKey = "tokenizer.ggml.scores"
    if let (type, values) = try array(scoresKey) {
      guard values.count >= count else {
        throw fail(.invalidValue, "has \(values.count) entries for \(count) tokens", key: scoresKey)
      }
      for i in 0..<count {
        switch values[i] {
        case .float32(let score): scores[i] = score
        case .int32(let score): scores[i] = Float(score)
        default:
          throw fail(
            .invalidValue, "must be an array of FLOAT32 or INT32, not of \(type.name)",
            key: scoresKey)
        }
      }
    }

    var pieceIDs: [String: Int32] = [:]
    pieceIDs.reserveCapacity(count)
    for (i, piece) in pieces.enumerated() { pieceIDs[piece] = Int32(i) }

    // llama.cpp's per-model defaults, kept only when inside the vocabulary.
    func inRange(_ id: Int?) -> Int? { id.flatMap { $0 >= 0 && $0 < count ? $0 : nil } }
    var bos: Int?
    var eos: Int?
    var unknown: Int?
    var pad: Int?
    var separator: Int?
    var addBOS = false
    var addEOS = false
    let pre = try string("tokenizer.ggml.pre")
    switch model {
    case "llama":
      (bos, eos, unknown) = (inRange(1), inRange(2), inRange(0))
      addBOS = true
    case "bert":
      (bos, unknown, separator, pad) = (inRange(101), inRange(100), inRange(102), inRange(0))
      addBOS = true
    case "t5":
      (eos, unknown, pad) = (inRange(1), inRange(2), inRange(0))
      addEOS = true
    case "gemma4":
      addBOS = true
    default:
      (bos, eos) = (inRange(11), inRange(11))
      if let pre, ["llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"].contains(pre) {
        addBOS = true
      }
    }
    bos = try tokenID("tokenizer.ggml.bos_token_id", count: count) ?? bos
    if model == "bert" { bos = try tokenID("tokenizer.ggml.cls_token_id", count: count) ?? bos }
    eos = try tokenID("tokenizer.ggml.eos_token_id", count: count) ?? eos
    unknown = try tokenID("tokenizer.ggml.unknown_token_id", count: count) ?? unknown
    pad = try tokenID("tokenizer.ggml.padding_token_id", count: count) ?? pad
    separator = try tokenID("tokenizer.ggml.seperator_token_id", count: count) ?? separator
    addBOS = try bool("tokenizer.ggml.add_bos_token") ?? addBOS
    addEOS = try bool("tokenizer.ggml.add_eos_token") ?? addEOS
    if model == "gemma4" { addBOS = true }  // llama.cpp overrides it for Gemma 4

    // llama.cpp marks Phi-3's special tokens to swallow the whitespace after them.
    let name = (try string("general.name") ?? "").lowercased()
    if model == "llama" && (name.contains("phi-3") || name.contains("phi3")) {
      for i in 0..<count
      where !attributes[i].isDisjoint(with: [.control, .userDefined, .unknown])
        || pieces[i] == "</s>"
      {
        attributes[i].insert(.rstrip)
      }
      for special in ["<unk>", "<s>", "<|endoftext|>"] {
        if let id = pieceIDs[special] { attributes[Int(id)].remove(.rstrip) }
      }
    }
    let architecture = try string("general.architecture") ?? ""
    if ["nomic-bert-moe", "jina-bert-v3"].contains(architecture), let mask = pieceIDs["<mask>"] {
      attributes[Int(mask)].insert(.lstrip)
    }

    var splitterEntries: [SpecialTokenSplitter.Entry] = []
    for i in 0..<count where !attributes[i].isDisjoint(with: [.control, .userDefined, .unknown]) {
      splitterEntries.append(
        SpecialTokenSplitter.Entry(
          id: i, bytes: Array(pieces[i].utf8),
          control: !attributes[i].isDisjoint(with: [.control, .unknown]),
          lstrip: attributes[i].contains(.lstrip), rstrip: attributes[i].contains(.rstrip)))
    }
    let splitter = SpecialTokenSplitter(order: .longestFirst, entries: splitterEntries)

    var prefix: [Int] = []
    var suffix: [Int] = []
    let kind: Tokenizer.Kind
    let engine: Engine
    switch model {
    case "gpt2":
      kind = .byteLevelBPE
      engine = .bytePair(try bytePairEngine(pre: pre, pieces: pieces, pieceIDs: pieceIDs))
      if addBOS, let bos { prefix = [bos] }
      if addEOS, let eos { suffix = [eos] }
    case "gemma4":
      kind = .sentencePieceBPE
      engine = .pieceMerges(try pieceMergeEngine(pieces: pieces, pieceIDs: pieceIDs))
      if addBOS, let bos { prefix = [bos] }
      if addEOS, let eos { suffix = [eos] }
    case "llama":
      kind = .sentencePieceBPE
      let byteTokens = (0..<256).map { byte -> Int32 in
        let name = byteTokenName(byte)
        if let id = pieceIDs[name] { return id }
        if byte < 0x80, let id = pieceIDs[String(Unicode.Scalar(UInt8(byte)))] { return id }
        return -1
      }
      engine = .sentencePiece(
        SentencePieceEngine(
          model: SentencePieceBPE(scores: scores),
          pieces: ByteTrie(pieces.enumerated().map { (Array($1.utf8), Int32($0)) }),
          addSpacePrefix: try bool("tokenizer.ggml.add_space_prefix") ?? true,
          byteTokens: byteTokens, unknownID: unknown.map { Int32($0) }))
      if addBOS, let bos { prefix = [bos] }
      if addEOS, let eos { suffix = [eos] }
    case "t5":
      kind = .unigram
      engine = .unigram(
        try unigramEngine(pieces: pieces, attributes: attributes, scores: scores, unknown: unknown))
      if addBOS, let bos { prefix = [bos] }
      if addEOS, let eos { suffix = [eos] }
    default:
      kind = .wordPiece
      engine = .wordPiece(
        try wordPieceEngine(pieces: pieces, attributes: attributes, unknown: unknown))
      if let bos { prefix = [bos] }
      if let separator { suffix = [separator] }
    }
    return Tokenizer(
      kind: kind, pieces: pieces, attributes: attributes, engine: engine, splitter: splitter,
      prefix: prefix, suffix: suffix, bos: bos, eos: model == "bert" ? (eos ?? separator) : eos,
      pad: pad, unknown: unknown)
  }

  func bytePairEngine(pre: String?, pieces: [String], pieceIDs: [String: Int32]) throws
    -> BytePairEngine
  {
    let preKey = "tokenizer.ggml.pre"
    guard let pre else {
      throw fail(
        .missingKey,
        "the byte-level BPE pre-tokenizer is not named; flare does not guess it (supported: \(PreTokenizer.supportedNames.joined(separator: ", ")))",
        key: preKey)
    }
    guard let preTokenizer = PreTokenizer.named(pre) else {
      throw fail(
        .unsupported,
        "pre-tokenizer '\(pre)' is not supported; supported: \(PreTokenizer.supportedNames.joined(separator: ", "))",
        key: preKey)
    }
    // Byte-level pieces are GPT-2 byte characters, none of them canonically equivalent to
    // another, so `String` keys are exact here.
    let rules = try merges(lookup: { pieceIDs[$0] })
    let byteTokens = ByteMap.byteToScalar.map { pieceIDs[String($0)] ?? -1 }
    let ignoreMerges = ["llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"].contains(pre)
    return BytePairEngine(
      preTokenizer: preTokenizer, merger: BytePairMerger(rules: rules),
      ignoreMerges: ignoreMerges, byteTokens: byteTokens, pieceIDs: pieceIDs, unknownID: nil,
      normalizers: [], addPrefixSpace: false)
  }

  /// The merge table; `lookup` finds a piece's id by its exact bytes.
  func merges(lookup: (String) -> Int32?) throws -> [UInt64: UInt64] {
    let mergesKey = "tokenizer.ggml.merges"
    guard let merges = try strings(mergesKey) else {
      throw fail(.missingKey, "a BPE vocabulary needs merges", key: mergesKey)
    }
    return try MergeTable.build(
      merges.lazy.map { merge -> (String, String)? in
        // llama.cpp splits at the first space after the first byte.
        let bytes = Array(merge.utf8)
        guard bytes.count > 1, let space = bytes[1...].firstIndex(of: 0x20) else { return nil }
        return (
          String(decoding: bytes[..<space], as: UTF8.self),
          String(decoding: bytes[(space + 1)...], as: UTF8.self)
        )
      }, lookup: lookup, path: path, key: mergesKey)
  }

  func pieceMergeEngine(pieces: [String], pieceIDs: [String: Int32]) throws -> PieceMergeEngine {
    let byteTokens = (0..<256).map { byte -> Int32 in
      pieceIDs[byteTokenName(byte)] ?? -1
    }
    let trie = ByteTrie(pieces.enumerated().map { (Array($1.utf8), Int32($0)) })
    return PieceMergeEngine(
      merger: BytePairMerger(rules: try merges(lookup: { trie.value(of: $0.utf8) })),
      pieces: trie, byteTokens: byteTokens)
  }

  func unigramEngine(
    pieces: [String], attributes: [TokenAttributes], scores: [Float], unknown: Int?
  ) throws -> UnigramEngine {
    guard let unknown else {
      throw fail(
        .missingKey, "a Unigram vocabulary needs an unknown token",
        key: "tokenizer.ggml.unknown_token_id")
    }
    var entries: [(key: [UInt8], value: Int32)] = []
    var userDefined: [(key: [UInt8], value: Int32)] = []
    var modelScores = [Double](repeating: 0, count: pieces.count)
    var minScore = Float.greatestFiniteMagnitude
    for (i, piece) in pieces.enumerated() {
      let attribute = attributes[i]
      if attribute.contains(.normal) { minScore = min(minScore, scores[i]) }
      if !attribute.isDisjoint(with: [.normal, .userDefined, .unused]) {
        entries.append((Array(piece.utf8), Int32(i)))
      }
      if attribute.contains(.userDefined) {
        userDefined.append((Array(piece.utf8), Int32(i)))
      } else {
        modelScores[i] = Double(scores[i])
      }
    }
    let charsmapKey = "tokenizer.ggml.precompiled_charsmap"
    var charsmap: PrecompiledCharsmap?
    if let (type, values) = try array(charsmapKey) {
      guard type == .uint8 || type == .int8 else {
        throw fail(
          .invalidValue, "must be an array of UINT8 or INT8, not of \(type.name)", key: charsmapKey)
      }
      let blob = values.map { value -> UInt8 in
        switch value {
        case .uint8(let byte): byte
        case .int8(let byte): UInt8(bitPattern: byte)
        default: 0
        }
      }
      charsmap = try PrecompiledCharsmap(blob, path: path, key: charsmapKey)
    }
    let normalizer = LlamaUnigramNormalizer(
      charsmap: charsmap, userDefined: userDefined.isEmpty ? nil : ByteTrie(userDefined),
      addSpacePrefix: try bool("tokenizer.ggml.add_space_prefix") ?? false,
      removeExtraWhitespaces: try bool("tokenizer.ggml.remove_extra_whitespaces") ?? false)
    let model = UnigramModel(
      trie: ByteTrie(entries), scores: modelScores, unknownID: Int32(unknown),
      unknownScore: Double(minScore) - 10, byteTokens: nil)
    return UnigramEngine(model: model, normalization: .llama(normalizer))
  }

  func wordPieceEngine(pieces: [String], attributes: [TokenAttributes], unknown: Int?) throws
    -> WordPieceEngine
  {
    guard let unknown else {
      throw fail(
        .missingKey, "a WordPiece vocabulary needs an unknown token",
        key: "tokenizer.ggml.unknown_token_id")
    }
    // llama.cpp spells word starts "▁word" and continuations without "##".
    let marker = Array("\u{2581}".utf8)
    var wordStarts: [(key: [UInt8], value: Int32)] = []
    var continuations: [(key: [UInt8], value: Int32)] = []
    for (i, piece) in pieces.enumerated() {
      let bytes = Array(piece.utf8)
      if bytes.starts(with: marker) {
        wordStarts.append((Array(bytes[marker.count...]), Int32(i)))
      } else if attributes[i].isDisjoint(with: [.control, .unknown]) {
        continuations.append((bytes, Int32(i)))
      }
    }
    let lowercase = try bool("tokenizer.ggml.normalizer.lowercase") ?? true
    let stripAccents = try bool("tokenizer.ggml.normalizer.strip_accents") ?? lowercase
    let model = WordPiece(
      flavor: .llama, lowercase: lowercase, stripAccents: stripAccents, cleanText: true,
      handleCJK: true, wordStarts: ByteTrie(wordStarts), continuations: ByteTrie(continuations),
      unknownID: Int32(unknown), maxInputCharsPerWord: 100)
    return WordPieceEngine(model: model, continuationPrefix: nil, cleanup: true)
  }
}

/// Builds the merge table of a byte-level BPE vocabulary.
enum MergeTable {
  /// Ranks `merges` in order (a repeated pair keeps its first rank).
  /// - Throws: ``FlareError`` `.invalidMerge` for a rule that is not `left right` or names a
  ///   piece, or forms a piece, the vocabulary lacks.
  static func build<S: Sequence>(
    _ merges: S, lookup: (String) -> Int32?, path: String?, key: String
  ) throws -> [UInt64: UInt64] where S.Element == (String, String)? {
    var rules: [UInt64: UInt64] = [:]
    var rank: UInt64 = 0
    for merge in merges {
      defer { rank += 1 }
      guard let (left, right) = merge else {
        throw FlareError.tokenizer(
          .invalidMerge, "merge \(rank) is not two pieces separated by a space", path: path,
          key: key)
      }
      guard let a = lookup(left), let b = lookup(right), let result = lookup(left + right) else {
        let missing = lookup(left) == nil ? left : lookup(right) == nil ? right : left + right
        throw FlareError.tokenizer(
          .invalidMerge,
          "merge \(rank) ('\(left.escapedForMessage) \(right.escapedForMessage)') needs token '\(missing.escapedForMessage)', which is not in the vocabulary",
          path: path, key: key)
      }
      let pair = BytePairMerger.key(a, b)
      if rules[pair] == nil { rules[pair] = rank << 32 | UInt64(UInt32(bitPattern: result)) }
    }
    return rules
  }
}

extension String {
  /// The string with leading zeros up to `width` characters.
  fileprivate func leftPadded(_ width: Int) -> String {
    count >= width ? self : String(repeating: "0", count: width - count) + self
  }
}

/// SentencePiece's spelling of a byte as a token: `<0x41>`.
func byteTokenName(_ byte: Int) -> String {
  "<0x\(String(byte, radix: 16, uppercase: true).leftPadded(2))>"
}
