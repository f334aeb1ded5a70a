import FlareCore
import Foundation

extension Tokenizer {
  /// Reads a Hugging Face tokenizer folder: `tokenizer.json` (with `tokenizer_config.json` for
  /// `add_bos_token`, `add_eos_token` and the names of the special tokens), or a BERT
  /// `vocab.txt` (with `tokenizer_config.json` for `do_lower_case`, `strip_accents` and
  /// `tokenize_chinese_chars`).
  /// - Parameter folder: The folder.
  /// - Returns: The tokenizer.
  /// - Throws: ``FlareError`` naming the file and field, as ``load(tokenizerJSON:)``;
  ///   `.fileNotFound` if the folder has neither file.
  public static func load(folder: String) throws -> Tokenizer {
    let fileManager = FileManager.default
    let configPath = folder + "/tokenizer_config.json"
    let config =
      fileManager.fileExists(atPath: configPath) ? try readJSON(configPath) : nil
    let jsonPath = folder + "/tokenizer.json"
    if fileManager.fileExists(atPath: jsonPath) {
      return try HFTokenizerReader(path: jsonPath, root: try readJSON(jsonPath), config: config)
        .tokenizer()
    }
    let vocabPath = folder + "/vocab.txt"
    if fileManager.fileExists(atPath: vocabPath) {
      return try bertVocabulary(path: vocabPath, config: config)
    }
    throw FlareError.tokenizer(
      .fileNotFound, "no tokenizer.json or vocab.txt in the folder", path: folder)
  }

  /// Reads an HF `tokenizers` file (`tokenizer.json`).
  ///
  /// Supported: `BPE` with a `ByteLevel` pre-tokenizer (alone, after `Digits`, or after a
  /// `Split` with the Llama 3, Qwen2 or GPT-2 pattern), `Unigram` with `Metaspace`, and
  /// `WordPiece` with `BertNormalizer` and `BertPreTokenizer`; normalizers `Precompiled`,
  /// `Replace`, `NFC`/`NFD`/`NFKC`/`NFKD`, `Lowercase`, `Strip`, `Prepend` and `Sequence`;
  /// post-processors `TemplateProcessing`, `BertProcessing`, `RobertaProcessing`, `ByteLevel`
  /// and `Sequence`. Anything else is refused rather than approximated.
  /// - Parameter path: The `tokenizer.json` file.
  /// - Returns: The tokenizer.
  /// - Throws: ``FlareError`` naming the file and field: `.missingKey`, `.invalidValue`,
  ///   `.tokenOutOfRange`, `.invalidMerge` or `.unsupported`.
  public static func load(tokenizerJSON path: String) throws -> Tokenizer {
    try HFTokenizerReader(path: path, root: try readJSON(path), config: nil).tokenizer()
  }

  /// Parses a JSON file, with errors naming the file.
  static func readJSON(_ path: String) throws -> JSONValue {
    let bytes = try readSmallFile(path)
    do {
      return try JSONParser.parse(bytes)
    } catch {
      throw FlareError(
        "tokenizer", .invalidValue, "invalid JSON: \(error.message)", path: path,
        offset: error.offset)
    }
  }

  /// Word-start and continuation tries of a WordPiece vocabulary whose continuations start
  /// with `prefix` (compared byte by byte).
  static func wordPieceTries(_ pieces: [(String, Int32)], prefix: String) -> (ByteTrie, ByteTrie) {
    let marker = Array(prefix.utf8)
    var starts: [(key: [UInt8], value: Int32)] = []
    var continuations: [(key: [UInt8], value: Int32)] = []
    for (piece, id) in pieces {
      let bytes = Array(piece.utf8)
      if !marker.isEmpty && bytes.starts(with: marker) {
        continuations.append((Array(bytes[marker.count...]), id))
      } else {
        starts.append((bytes, id))
      }
    }
    return (ByteTrie(starts), ByteTrie(continuations))
  }

  /// A BERT WordPiece vocabulary from `vocab.txt`, one piece per line.
  static func bertVocabulary(path: String, config: JSONValue?) throws -> Tokenizer {
    let text = String(decoding: try readSmallFile(path), as: UTF8.self)
    // As HF `WordPiece::read_file`: one piece per line, trailing whitespace trimmed.
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
      var scalars = Substring(line).unicodeScalars[...]
      while let last = scalars.last, last.properties.isWhitespace { scalars = scalars.dropLast() }
      return String(String.UnicodeScalarView(scalars))
    }
    if lines.last == "" { lines.removeLast() }
    guard !lines.isEmpty else {
      throw FlareError.tokenizer(.invalidValue, "the vocabulary is empty", path: path)
    }
    var ids: [String: Int32] = [:]
    for (i, line) in lines.enumerated() { ids[line] = Int32(i) }
    func special(_ key: String, _ fallback: String) -> Int? {
      let name = config?[key]?.stringValue ?? config?[key]?["content"]?.stringValue ?? fallback
      return ids[name].map(Int.init)
    }
    guard let unknown = special("unk_token", "[UNK]") else {
      throw FlareError.tokenizer(
        .missingKey, "the vocabulary has no unknown token '[UNK]'", path: path, key: "unk_token")
    }
    let cls = special("cls_token", "[CLS]")
    let sep = special("sep_token", "[SEP]")
    let pad = special("pad_token", "[PAD]")
    let mask = special("mask_token", "[MASK]")
    var attributes = [TokenAttributes](repeating: .normal, count: lines.count)
    var entries: [SpecialTokenSplitter.Entry] = []
    for id in Set([unknown, cls, sep, pad, mask].compactMap { $0 }).sorted() {
      attributes[id] = .control
      entries.append(
        .init(id: id, bytes: Array(lines[id].utf8), control: true, lstrip: false, rstrip: false))
    }
    let (wordStarts, continuations) = wordPieceTries(
      lines.enumerated().map { ($1, Int32($0)) }, prefix: "##")
    let lowercase = config?["do_lower_case"]?.boolValue ?? true
    let model = WordPiece(
      flavor: .huggingFace, lowercase: lowercase,
      stripAccents: config?["strip_accents"]?.boolValue ?? lowercase, cleanText: true,
      handleCJK: config?["tokenize_chinese_chars"]?.boolValue ?? true, wordStarts: wordStarts,
      continuations: continuations, unknownID: Int32(unknown), maxInputCharsPerWord: 100)
    return Tokenizer(
      kind: .wordPiece, pieces: lines, attributes: attributes,
      engine: .wordPiece(WordPieceEngine(model: model, continuationPrefix: "##", cleanup: true)),
      splitter: SpecialTokenSplitter(order: .leftmostLongest, entries: entries),
      prefix: cls.map { [$0] } ?? [], suffix: sep.map { [$0] } ?? [], bos: cls, eos: sep,
      pad: pad, unknown: unknown)
  }
}

/// Reads one `tokenizer.json` (and optionally its `tokenizer_config.json`).
private struct HFTokenizerReader {
  let path: String
  let root: JSONValue
  let config: JSONValue?

  func fail(_ code: FlareError.Code, _ message: String, key: String) -> FlareError {
    FlareError.tokenizer(code, message, path: path, key: key)
  }

  func require(_ value: JSONValue?, _ key: String) throws -> JSONValue {
    guard let value, value != .null else { throw fail(.missingKey, "is missing", key: key) }
    return value
  }

  func type(of value: JSONValue?, _ key: String) throws -> String {
    guard let type = value?["type"]?.stringValue else {
      throw fail(.missingKey, "has no type", key: key)
    }
    return type
  }

  func tokenizer() throws -> Tokenizer {
    let model = try require(root["model"], "model")
    let modelType = try type(of: model, "model")

    // Vocabulary: the model's pieces, then the added tokens (which may extend it).
    var pieces: [String] = []
    var unigramScores: [Double] = []
    switch modelType {
    case "BPE", "WordPiece":
      guard let members = model["vocab"]?.objectMembers else {
        throw fail(.missingKey, "must be an object of piece ids", key: "model.vocab")
      }
      pieces = [String](repeating: "", count: members.count)
      var seen = [Bool](repeating: false, count: members.count)
      for (piece, idValue) in members {
        guard let id = idValue.intValue, id >= 0, id < members.count, !seen[id] else {
          throw fail(
            .tokenOutOfRange,
            "piece '\(piece.escapedForMessage)' has id \(idValue), not a unique id below \(members.count)",
            key: "model.vocab")
        }
        pieces[id] = piece
        seen[id] = true
      }
    case "Unigram":
      guard let entries = model["vocab"]?.arrayValue else {
        throw fail(.missingKey, "must be an array of [piece, score]", key: "model.vocab")
      }
      for (i, entry) in entries.enumerated() {
        guard let pair = entry.arrayValue, pair.count == 2, let piece = pair[0].stringValue,
          let score = pair[1].doubleValue, score.isFinite
        else {
          throw fail(.invalidValue, "entry \(i) is not [piece, score]", key: "model.vocab")
        }
        pieces.append(piece)
        unigramScores.append(score)
      }
    default:
      throw fail(
        .unsupported, "model type '\(modelType)' is not supported (BPE, Unigram, WordPiece)",
        key: "model.type")
    }
    guard !pieces.isEmpty else { throw fail(.invalidValue, "is empty", key: "model.vocab") }
    let modelCount = pieces.count
    var modelIDs: [String: Int32] = [:]
    modelIDs.reserveCapacity(modelCount)
    for (i, piece) in pieces.enumerated() { modelIDs[piece] = Int32(i) }

    var attributes = [TokenAttributes](repeating: .normal, count: modelCount)
    var entries: [SpecialTokenSplitter.Entry] = []
    let added = root["added_tokens"]?.arrayValue ?? []
    for (i, token) in added.enumerated() {
      let key = "added_tokens[\(i)]"
      guard let content = token["content"]?.stringValue, let id = token["id"]?.intValue else {
        throw fail(.invalidValue, "needs a string content and an integer id", key: key)
      }
      guard id >= 0 && id < modelCount + added.count else {
        throw fail(
          .tokenOutOfRange,
          "id \(id) of '\(content.escapedForMessage)' is outside the vocabulary of \(modelCount + added.count)",
          key: key)
      }
      while pieces.count <= id {
        pieces.append("")
        attributes.append([])
      }
      let special = token["special"]?.boolValue ?? false
      let lstrip = token["lstrip"]?.boolValue ?? false
      let rstrip = token["rstrip"]?.boolValue ?? false
      pieces[id] = content
      var attribute: TokenAttributes = special ? .control : .userDefined
      if lstrip { attribute.insert(.lstrip) }
      if rstrip { attribute.insert(.rstrip) }
      attributes[id] = attribute
      entries.append(
        .init(id: id, bytes: Array(content.utf8), control: special, lstrip: lstrip, rstrip: rstrip))
    }
    var allIDs = modelIDs
    for entry in entries { allIDs[String(decoding: entry.bytes, as: UTF8.self)] = Int32(entry.id) }

    let normalizers = try normalizerSteps(root["normalizer"], key: "normalizer")
    let kind: Tokenizer.Kind
    let engine: Engine
    var modelUnknown: Int?
    switch modelType {
    case "BPE"
    where model["byte_fallback"]?.boolValue == true
      && splitsNothing(root["pre_tokenizer"], after: normalizers):
      // SentencePiece-style BPE (Gemma, Llama 2): "▁" pieces, `<0xXX>` byte fallback.
      kind = .sentencePieceBPE
      (engine, modelUnknown) = try pieceMerges(
        model, modelIDs, Array(pieces[..<modelCount]), normalizers)
      for (i, piece) in pieces[..<modelCount].enumerated() where Self.isByteToken(piece) {
        attributes[i] = .byte
      }
      if let modelUnknown, modelUnknown < modelCount { attributes[modelUnknown] = .unknown }
    case "BPE":
      kind = .byteLevelBPE
      (engine, modelUnknown) = try bytePair(model, modelIDs, normalizers)
    case "Unigram":
      kind = .unigram
      (engine, modelUnknown) = try unigram(model, pieces, unigramScores, modelCount, normalizers)
    default:
      kind = .wordPiece
      (engine, modelUnknown) = try wordPiece(model, Array(pieces[..<modelCount]), modelIDs)
    }

    var (prefix, suffix) = try postProcessor(root["post_processor"], ids: allIDs)
    for id in prefix + suffix where !pieces.indices.contains(id) {
      throw fail(
        .tokenOutOfRange, "token id \(id) is outside the vocabulary of \(pieces.count)",
        key: "post_processor")
    }
    func configToken(_ key: String) throws -> Int? {
      guard let value = config?[key], value != .null else { return nil }
      guard let name = value.stringValue ?? value["content"]?.stringValue else { return nil }
      guard let id = allIDs[name] else {
        throw FlareError.tokenizer(
          .tokenOutOfRange, "token '\(name.escapedForMessage)' is not in the vocabulary",
          path: path, key: key)
      }
      return Int(id)
    }
    let bos = try configToken("bos_token") ?? configToken("cls_token") ?? prefix.first
    let eos = try configToken("eos_token") ?? configToken("sep_token") ?? suffix.last
    let unknown = try configToken("unk_token") ?? modelUnknown
    var pad = try configToken("pad_token")
    if pad == nil, let padID = root["padding"]?["pad_id"]?.intValue, pieces.indices.contains(padID)
    {
      pad = padID
    }
    if pad == nil {
      pad = ["<pad>", "[PAD]", "<|pad|>"].lazy.compactMap { allIDs[$0] }.first.map(Int.init)
    }
    if config?["add_bos_token"]?.boolValue == true, let bos, prefix.first != bos {
      prefix.insert(bos, at: 0)
    }
    if config?["add_eos_token"]?.boolValue == true, let eos, suffix.last != eos {
      suffix.append(eos)
    }
    return Tokenizer(
      kind: kind, pieces: pieces, attributes: attributes, engine: engine,
      splitter: SpecialTokenSplitter(order: .leftmostLongest, entries: entries), prefix: prefix,
      suffix: suffix, bos: bos, eos: eos, pad: pad, unknown: unknown)
  }

  // MARK: Models

  /// Whether a pre-tokenizer leaves the normalized text whole: none, or a split at spaces
  /// after a normalizer that replaced every space (Gemma's hub `tokenizer.json`).
  func splitsNothing(_ value: JSONValue?, after normalizers: [TextNormalizer]) -> Bool {
    guard let value, value != .null else { return true }
    let replacesSpaces = normalizers.contains {
      if case .replaceLiteral(" ", let content) = $0 { return !content.contains(" ") }
      return false
    }
    return replacesSpaces && value["type"]?.stringValue == "Split"
      && value["pattern"]?["String"]?.stringValue == " " && value["invert"]?.boolValue != true
  }

  /// Whether `piece` spells a byte as SentencePiece does (`<0x41>`).
  static func isByteToken(_ piece: String) -> Bool {
    let scalars = Array(piece.unicodeScalars)
    return scalars.count == 6 && piece.hasPrefix("<0x") && piece.hasSuffix(">")
      && UInt8(String(String.UnicodeScalarView(scalars[3..<5])), radix: 16) != nil
  }

  /// An HF BPE with `byte_fallback` and no pre-tokenizer, as `tokenizers` runs it: the
  /// normalizers (Gemma: spaces to "▁"; Llama 2: "▁" first too), the whole text one word of
  /// characters merged by rank, a character outside the vocabulary spelled as `<0xXX>` tokens.
  func pieceMerges(
    _ model: JSONValue, _ ids: [String: Int32], _ pieces: [String],
    _ normalizers: [TextNormalizer]
  ) throws -> (Engine, Int?) {
    try refuseAffixes(model, "with SentencePiece-style BPE")
    if let dropout = model["dropout"]?.doubleValue, dropout > 0 {
      throw fail(.unsupported, "is \(dropout); BPE dropout is not supported", key: "model.dropout")
    }
    if model["ignore_merges"]?.boolValue == true {
      throw fail(
        .unsupported, "is not supported with SentencePiece-style BPE", key: "model.ignore_merges")
    }
    // Pieces looked up by their bytes: a [String: …] would take canonically equivalent pieces
    // (two spellings of one Bengali syllable, say) for one.
    let trie = ByteTrie(pieces.enumerated().map { (Array($1.utf8), Int32($0)) })
    let rules = try mergeRules(model) { trie.value(of: Array($0.utf8)) }
    let unknown = try unknownToken(model, ids)
    let byteTokens = (0..<256).map { byte -> Int32 in
      ids[byteTokenName(byte)] ?? unknown ?? -1
    }
    let prepends = normalizers.contains {
      if case .prepend = $0 { return true }
      return false
    }
    let engine = PieceMergeEngine(
      merger: BytePairMerger(rules: rules), pieces: trie,
      byteTokens: byteTokens, normalizers: normalizers, stripsPrependedSpace: prepends)
    return (.pieceMerges(engine), unknown.map(Int.init))
  }

  private func refuseAffixes(_ model: JSONValue, _ what: String) throws {
    for field in ["continuing_subword_prefix", "end_of_word_suffix"] {
      if let value = model[field]?.stringValue, !value.isEmpty {
        throw fail(.unsupported, "is not supported \(what)", key: "model.\(field)")
      }
    }
  }

  /// `model.unk_token`'s id, if given.
  private func unknownToken(_ model: JSONValue, _ ids: [String: Int32]) throws -> Int32? {
    guard let name = model["unk_token"]?.stringValue else { return nil }
    guard let id = ids[name] else {
      throw fail(
        .tokenOutOfRange, "'\(name.escapedForMessage)' is not in the vocabulary",
        key: "model.unk_token")
    }
    return id
  }

  /// `model.merges` (`"a b"` strings or `["a", "b"]` pairs) as merge rules by rank.
  private func mergeRules(_ model: JSONValue, lookup: (String) -> Int32?) throws -> [UInt64:
    UInt64]
  {
    guard let mergeValues = model["merges"]?.arrayValue else {
      throw fail(.missingKey, "must be an array", key: "model.merges")
    }
    let merges = mergeValues.lazy.map { value -> (String, String)? in
      if let pair = value.arrayValue, pair.count == 2, let a = pair[0].stringValue,
        let b = pair[1].stringValue
      {
        return (a, b)
      }
      guard let text = value.stringValue else { return nil }
      let parts = text.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
      return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
    }
    return try MergeTable.build(merges, lookup: lookup, path: path, key: "model.merges")
  }

  func bytePair(_ model: JSONValue, _ ids: [String: Int32], _ normalizers: [TextNormalizer])
    throws -> (Engine, Int?)
  {
    try refuseAffixes(model, "with byte-level BPE")
    let (preTokenizer, addPrefixSpace) = try byteLevelPreTokenizer(root["pre_tokenizer"])
    let rules = try mergeRules(model) { ids[$0] }
    let unknown = try unknownToken(model, ids)
    let engine = BytePairEngine(
      preTokenizer: preTokenizer, merger: BytePairMerger(rules: rules),
      ignoreMerges: model["ignore_merges"]?.boolValue ?? false,
      byteTokens: ByteMap.byteToScalar.map { ids[String($0)] ?? -1 }, pieceIDs: ids,
      unknownID: unknown, normalizers: normalizers, addPrefixSpace: addPrefixSpace)
    return (.bytePair(engine), unknown.map(Int.init))
  }

  /// The pre-tokenizer rules for the byte-level `pre_tokenizer` shapes Flare knows.
  func byteLevelPreTokenizer(_ value: JSONValue?) throws -> (PreTokenizer, Bool) {
    let key = "pre_tokenizer"
    let steps: [JSONValue]
    if try type(of: value, key) == "Sequence" {
      steps = value?["pretokenizers"]?.arrayValue ?? []
    } else {
      steps = value.map { [$0] } ?? []
    }
    guard let last = steps.last, last["type"]?.stringValue == "ByteLevel" else {
      throw fail(
        .unsupported,
        "only byte-level BPE is supported in tokenizer.json; this one has no ByteLevel pre-tokenizer (SentencePiece-style BPE)",
        key: key)
    }
    let useRegex = last["use_regex"]?.boolValue ?? true
    let addPrefixSpace = last["add_prefix_space"]?.boolValue ?? false
    let before = steps.dropLast()
    let llama3 =
      #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    let qwen2 =
      #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    let gpt2 = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    var rules: [PreTokenizer.Rule]?
    if before.isEmpty && useRegex {
      rules = [.gpt2]
    } else if before.count == 1, useRegex, let digits = before.first,
      digits["type"]?.stringValue == "Digits", digits["individual_digits"]?.boolValue == true
    {
      rules = [.isolate(.one(.number)), .gpt2]
    } else if before.count == 1, !useRegex, let split = before.first,
      split["type"]?.stringValue == "Split", split["behavior"]?.stringValue == "Isolated",
      split["invert"]?.boolValue != true, let pattern = split["pattern"]?["Regex"]?.stringValue
    {
      switch pattern {
      case llama3: rules = [.llama(digits: 3, marksAreLetters: false)]
      case qwen2: rules = [.llama(digits: 1, marksAreLetters: false)]
      case gpt2: rules = [.gpt2]
      default: rules = nil
      }
    }
    guard let rules else {
      throw fail(
        .unsupported,
        "this byte-level pre-tokenizer is not supported: \(JSONWriter.compact(value ?? .null).prefix(300))",
        key: key)
    }
    return (PreTokenizer(rules: rules), addPrefixSpace)
  }

  func unigram(
    _ model: JSONValue, _ pieces: [String], _ scores: [Double], _ modelCount: Int,
    _ normalizers: [TextNormalizer]
  ) throws -> (Engine, Int?) {
    guard let unknown = model["unk_id"]?.intValue else {
      throw fail(.missingKey, "a Unigram model needs an unknown token", key: "model.unk_id")
    }
    guard unknown >= 0 && unknown < modelCount else {
      throw fail(
        .tokenOutOfRange, "id \(unknown) is outside the vocabulary of \(modelCount)",
        key: "model.unk_id")
    }
    let pre = root["pre_tokenizer"]
    guard try type(of: pre, "pre_tokenizer") == "Metaspace", let pre else {
      throw fail(
        .unsupported, "a Unigram model needs a Metaspace pre-tokenizer", key: "pre_tokenizer")
    }
    var metaspace = Metaspace()
    if let replacement = pre["replacement"]?.stringValue {
      guard replacement.unicodeScalars.count == 1, let scalar = replacement.unicodeScalars.first
      else {
        throw fail(.unsupported, "must be one character", key: "pre_tokenizer.replacement")
      }
      metaspace.replacement = scalar
    }
    switch pre["prepend_scheme"]?.stringValue {
    case "always": metaspace.prepend = .always
    case "first": metaspace.prepend = .first
    case "never": metaspace.prepend = .never
    case nil: metaspace.prepend = (pre["add_prefix_space"]?.boolValue ?? true) ? .always : .never
    case let other?:
      throw fail(.unsupported, "'\(other)' is not supported", key: "pre_tokenizer.prepend_scheme")
    }
    metaspace.split = pre["split"]?.boolValue ?? true
    var entries: [(key: [UInt8], value: Int32)] = []
    entries.reserveCapacity(modelCount)
    for i in 0..<modelCount { entries.append((Array(pieces[i].utf8), Int32(i))) }
    var byteTokens: [Int32]?
    if model["byte_fallback"]?.boolValue == true {
      var table = [Int32](repeating: -1, count: 256)
      for i in 0..<modelCount {
        if let byte = Engine.byteTokenValue(pieces[i]) { table[Int(byte)] = Int32(i) }
      }
      byteTokens = table
    }
    let minScore = scores.min() ?? 0
    let unigram = UnigramModel(
      trie: ByteTrie(entries), scores: scores, unknownID: Int32(unknown),
      unknownScore: minScore - 10, byteTokens: byteTokens)
    return (
      .unigram(UnigramEngine(model: unigram, normalization: .huggingFace(normalizers, metaspace))),
      unknown
    )
  }

  func wordPiece(_ model: JSONValue, _ pieces: [String], _ ids: [String: Int32]) throws
    -> (Engine, Int?)
  {
    let normalizer = root["normalizer"]
    guard let normalizer, normalizer != .null,
      try type(of: normalizer, "normalizer") == "BertNormalizer"
    else {
      throw fail(.unsupported, "WordPiece is supported with BertNormalizer only", key: "normalizer")
    }
    let pre = root["pre_tokenizer"]
    guard try type(of: pre, "pre_tokenizer") == "BertPreTokenizer" else {
      throw fail(
        .unsupported, "WordPiece is supported with BertPreTokenizer only", key: "pre_tokenizer")
    }
    guard let unknownName = model["unk_token"]?.stringValue, let unknown = ids[unknownName] else {
      throw fail(.missingKey, "must name a piece of the vocabulary", key: "model.unk_token")
    }
    let prefix = model["continuing_subword_prefix"]?.stringValue ?? "##"
    let (wordStarts, continuations) = Tokenizer.wordPieceTries(
      pieces.enumerated().map { ($1, Int32($0)) }, prefix: prefix)
    let lowercase = normalizer["lowercase"]?.boolValue ?? true
    let wordPiece = WordPiece(
      flavor: .huggingFace, lowercase: lowercase,
      stripAccents: normalizer["strip_accents"]?.boolValue ?? lowercase,
      cleanText: normalizer["clean_text"]?.boolValue ?? true,
      handleCJK: normalizer["handle_chinese_chars"]?.boolValue ?? true, wordStarts: wordStarts,
      continuations: continuations, unknownID: unknown,
      maxInputCharsPerWord: model["max_input_chars_per_word"]?.intValue ?? 100)
    let decoder = root["decoder"]
    let cleanup = decoder?["cleanup"]?.boolValue ?? true
    let decoderPrefix = decoder?["prefix"]?.stringValue ?? prefix
    return (
      .wordPiece(
        WordPieceEngine(model: wordPiece, continuationPrefix: decoderPrefix, cleanup: cleanup)),
      Int(unknown)
    )
  }

  // MARK: Normalizers and post-processors

  func normalizerSteps(_ value: JSONValue?, key: String) throws -> [TextNormalizer] {
    guard let value, value != .null else { return [] }
    let type = try type(of: value, key)
    switch type {
    case "Sequence":
      var steps: [TextNormalizer] = []
      for (i, step) in (value["normalizers"]?.arrayValue ?? []).enumerated() {
        steps += try normalizerSteps(step, key: "\(key).normalizers[\(i)]")
      }
      return steps
    case "BertNormalizer": return []  // applied by WordPiece itself
    case "NFC": return [.nfc]
    case "NFD": return [.nfd]
    case "NFKC": return [.nfkc]
    case "NFKD": return [.nfkd]
    case "Lowercase": return [.lowercase]
    case "Strip":
      return [
        .strip(
          left: value["strip_left"]?.boolValue ?? true,
          right: value["strip_right"]?.boolValue ?? true)
      ]
    case "Prepend":
      return [.prepend(value["prepend"]?.stringValue ?? "")]
    case "Precompiled":
      guard let encoded = value["precompiled_charsmap"]?.stringValue,
        let data = Data(base64Encoded: encoded)
      else {
        throw fail(.invalidValue, "precompiled_charsmap must be base64", key: key)
      }
      return [.precompiled(try PrecompiledCharsmap([UInt8](data), path: path, key: key))]
    case "Replace":
      let content = value["content"]?.stringValue ?? ""
      if let literal = value["pattern"]?["String"]?.stringValue {
        return [.replaceLiteral(literal, content)]
      }
      if let regex = value["pattern"]?["Regex"]?.stringValue, let runs = Self.runPattern(regex) {
        return [.replaceRuns(runs.0, minimum: runs.1, content)]
      }
      throw fail(
        .unsupported,
        "the Replace pattern \(JSONWriter.compact(value["pattern"] ?? .null)) is not supported",
        key: key)
    default:
      throw fail(.unsupported, "normalizer '\(type)' is not supported", key: key)
    }
  }

  /// `c{n,}` or `c+` for a single literal character `c`.
  static func runPattern(_ regex: String) -> (Unicode.Scalar, Int)? {
    let scalars = Array(regex.unicodeScalars)
    guard let first = scalars.first, !"\\.[](){}*+?|^$".unicodeScalars.contains(first) else {
      return nil
    }
    let rest = String(String.UnicodeScalarView(scalars.dropFirst()))
    if rest == "+" { return (first, 1) }
    guard rest.hasPrefix("{"), rest.hasSuffix(",}"), let n = Int(rest.dropFirst().dropLast(2)),
      n >= 1
    else { return nil }
    return (first, n)
  }

  /// The special tokens the post-processor puts before and after a single sequence.
  func postProcessor(_ value: JSONValue?, ids: [String: Int32]) throws -> ([Int], [Int]) {
    let key = "post_processor"
    guard let value, value != .null else { return ([], []) }
    func id(_ pair: JSONValue?) throws -> Int {
      guard let pair = pair?.arrayValue, pair.count == 2, let id = pair[1].intValue,
        id >= 0 && id < Int(Int32.max)
      else { throw fail(.invalidValue, "expected [token, id]", key: key) }
      return id
    }
    switch try type(of: value, key) {
    case "ByteLevel": return ([], [])
    case "BertProcessing", "RobertaProcessing":
      return ([try id(value["cls"])], [try id(value["sep"])])
    case "Sequence":
      var prefix: [Int] = []
      var suffix: [Int] = []
      for processor in value["processors"]?.arrayValue ?? [] {
        let (p, s) = try postProcessor(processor, ids: ids)
        prefix += p
        suffix += s
      }
      return (prefix, suffix)
    case "TemplateProcessing":
      guard let single = value["single"]?.arrayValue else {
        throw fail(.missingKey, "the TemplateProcessing has no single template", key: key)
      }
      var prefix: [Int] = []
      var suffix: [Int] = []
      var seenSequence = false
      for item in single {
        if item["Sequence"] != nil {
          seenSequence = true
          continue
        }
        guard let name = item["SpecialToken"]?["id"]?.stringValue else {
          throw fail(.invalidValue, "unknown template item", key: key)
        }
        let listed = value["special_tokens"]?[name]?["ids"]?.arrayValue?.compactMap(\.intValue)
        guard let tokenIDs = listed ?? ids[name].map({ [Int($0)] }) else {
          throw fail(
            .tokenOutOfRange, "special token '\(name.escapedForMessage)' has no id", key: key)
        }
        if seenSequence { suffix += tokenIDs } else { prefix += tokenIDs }
      }
      return (prefix, suffix)
    case let other:
      throw fail(.unsupported, "post-processor '\(other)' is not supported", key: key)
    }
  }
}
