import FlareCore
import FlareGGUF
import Foundation

/// A text tokenizer read from a GGUF file or a Hugging Face tokenizer folder.
///
/// Four algorithms, each checked against its reference implementation:
/// - ``Kind/byteLevelBPE``: GPT-2 style byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2, …),
///   with the pre-tokenizer the vocabulary names, written by hand after llama.cpp and HF;
/// - ``Kind/sentencePieceBPE``: SentencePiece BPE driven by piece scores (Llama 2, Phi-3), or
///   by merge ranks over "▁"-spelled pieces (Gemma 4);
/// - ``Kind/unigram``: SentencePiece Unigram, Viterbi over piece log probabilities (XLM-R, T5);
/// - ``Kind/wordPiece``: BERT's greedy longest-match WordPiece.
///
/// Instances are immutable and safe to share between threads. Encoding never traps on any
/// input, and decoding skips ids outside the vocabulary.
public final class Tokenizer: Sendable {
  /// The tokenization algorithm.
  public enum Kind: Sendable, Equatable {
    case byteLevelBPE, sentencePieceBPE, unigram, wordPiece
  }

  /// The tokenization algorithm.
  public let kind: Kind
  /// The beginning-of-sequence token (`[CLS]` for BERT), if the vocabulary has one.
  public let bos: Int?
  /// The end-of-sequence token (`[SEP]` for BERT), if the vocabulary has one.
  public let eos: Int?
  /// The padding token, if the vocabulary has one.
  public let pad: Int?
  /// The unknown token, if the vocabulary has one.
  public let unknown: Int?

  /// Number of token ids (the largest id plus one).
  public var vocabularySize: Int { pieces.count }

  let pieces: [String]
  let attributes: [TokenAttributes]
  let engine: Engine
  let splitter: SpecialTokenSplitter
  /// Tokens `encode(addSpecial: true)` puts before and after the text.
  let prefix: [Int]
  let suffix: [Int]

  init(
    kind: Kind, pieces: [String], attributes: [TokenAttributes], engine: Engine,
    splitter: SpecialTokenSplitter, prefix: [Int], suffix: [Int], bos: Int?, eos: Int?,
    pad: Int?, unknown: Int?
  ) {
    self.kind = kind
    self.pieces = pieces
    self.attributes = attributes
    self.engine = engine
    self.splitter = splitter
    self.prefix = prefix
    self.suffix = suffix
    self.bos = bos
    self.eos = eos
    self.pad = pad
    self.unknown = unknown
  }

  /// The vocabulary string of token `id` (as the file spells it: byte-level BPE pieces use the
  /// GPT-2 byte characters, SentencePiece pieces "▁"), or `nil` if `id` is out of range.
  public func piece(_ id: Int) -> String? {
    pieces.indices.contains(id) ? pieces[id] : nil
  }

  /// Tokenizes `text`.
  ///
  /// - Parameters:
  ///   - text: The text.
  ///   - addSpecial: Add the tokens the model adds around a sequence: BOS for Llama-style
  ///     SentencePiece (per `tokenizer.ggml.add_bos_token`), `[CLS]` and `[SEP]` for BERT,
  ///     `<s>` and `</s>` for XLM-R, nothing for GPT-2 and SmolLM2 unless their configuration
  ///     (`add_bos_token`, `add_eos_token`, the post-processor) says so.
  ///   - parseSpecial: Recognise special (control) token strings such as `<|im_start|>` in
  ///     `text`. Added tokens that are not special are always recognised.
  /// - Returns: The token ids.
  /// - Complexity: Linear in the length of `text` for typical inputs (BPE merges use a heap).
  public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = false) -> [Int] {
    let bytes = Array(text.utf8)
    let fragments = splitter.split(bytes, parseSpecial: parseSpecial)
    var output: [Int] = []
    output.reserveCapacity(bytes.count / 3 + prefix.count + suffix.count)
    if addSpecial { output += prefix }
    var previousSpecial = true
    for fragment in fragments {
      switch fragment {
      case .token(let id):
        output.append(id)
        previousSpecial = true
      case .text(let range):
        let piece = String(decoding: bytes[range], as: UTF8.self)
        engine.encode(
          piece, afterSpecial: previousSpecial, atStart: range.lowerBound == 0,
          vocabulary: self, into: &output)
        previousSpecial = false
      }
    }
    if addSpecial { output += suffix }
    return output
  }

  /// Turns token ids back into text.
  ///
  /// Byte-level BPE maps the GPT-2 byte characters back to bytes; SentencePiece turns "▁" into
  /// spaces and byte tokens into bytes, and drops the space the encoder prefixed; WordPiece
  /// joins words with spaces and glues "##" continuations on. Invalid UTF-8 becomes U+FFFD.
  /// - Parameters:
  ///   - ids: Token ids; ids outside the vocabulary are skipped.
  ///   - skipSpecial: Leave out special tokens (control and unknown tokens, HF special added
  ///     tokens).
  /// - Returns: The text.
  public func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
    let kept = ids.filter {
      pieces.indices.contains($0) && !(skipSpecial && attributes[$0].isSpecial)
    }
    return engine.decode(kept, vocabulary: self)
  }
}

/// The algorithm-specific part of a tokenizer.
enum Engine: Sendable {
  case bytePair(BytePairEngine)
  case pieceMerges(PieceMergeEngine)
  case sentencePiece(SentencePieceEngine)
  case unigram(UnigramEngine)
  case wordPiece(WordPieceEngine)

  func encode(
    _ text: String, afterSpecial: Bool, atStart: Bool, vocabulary: Tokenizer,
    into output: inout [Int]
  ) {
    switch self {
    case .bytePair(let engine): engine.encode(text, into: &output)
    case .pieceMerges(let engine): engine.encode(text, into: &output)
    case .sentencePiece(let engine):
      engine.encode(text, afterSpecial: afterSpecial, into: &output)
    case .unigram(let engine): engine.encode(text, atStart: atStart, into: &output)
    case .wordPiece(let engine): engine.model.encode(text, into: &output)
    }
  }

  func decode(_ ids: [Int], vocabulary: Tokenizer) -> String {
    switch self {
    case .bytePair(let engine): engine.decode(ids, vocabulary)
    case .pieceMerges(let engine):
      Engine.decodeSentencePiece(
        ids, vocabulary, stripLeadingSpace: engine.stripsPrependedSpace)
    case .sentencePiece(let engine):
      Engine.decodeSentencePiece(ids, vocabulary, stripLeadingSpace: engine.addSpacePrefix)
    case .unigram(let engine):
      Engine.decodeSentencePiece(ids, vocabulary, stripLeadingSpace: engine.stripLeadingSpace)
    case .wordPiece(let engine): engine.decode(ids, vocabulary)
    }
  }

  /// SentencePiece-style decoding: "▁" is a space, `<0xXX>` a byte, special tokens their text.
  static func decodeSentencePiece(
    _ ids: [Int], _ vocabulary: Tokenizer, stripLeadingSpace: Bool
  ) -> String {
    var bytes: [UInt8] = []
    for (index, id) in ids.enumerated() {
      let piece = vocabulary.pieces[id]
      let attributes = vocabulary.attributes[id]
      if attributes.contains(.byte), let byte = byteTokenValue(piece) {
        bytes.append(byte)
        continue
      }
      if !attributes.isDisjoint(with: [.control, .unknown, .userDefined]) {
        bytes += Array(piece.utf8)
        continue
      }
      var text = replacingBytes(Array(piece.utf8), Array("\u{2581}".utf8), [0x20])
      if index == 0 && stripLeadingSpace && text.first == 0x20 { text.removeFirst() }
      bytes += text
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  /// The byte of a `<0xXX>` piece.
  static func byteTokenValue(_ piece: String) -> UInt8? {
    let utf8 = Array(piece.utf8)
    guard utf8.count == 6, utf8.starts(with: Array("<0x".utf8)), utf8[5] == UInt8(ascii: ">")
    else { return nil }
    return UInt8(String(decoding: utf8[3..<5], as: UTF8.self), radix: 16)
  }
}

/// Byte-level BPE: pre-tokenize, map bytes to GPT-2 characters, merge.
struct BytePairEngine: Sendable {
  let preTokenizer: PreTokenizer
  let merger: BytePairMerger
  /// Llama 3's `ignore_merges`: a word that is itself a token is taken whole.
  let ignoreMerges: Bool
  /// The token of each byte's GPT-2 character (`-1` if the vocabulary lacks it).
  let byteTokens: [Int32]
  /// Token ids by piece, for `ignoreMerges`.
  let pieceIDs: [String: Int32]
  /// The token for characters the vocabulary lacks (HF `unk_token`); `nil` drops them.
  let unknownID: Int32?
  /// HF normalizer steps applied before pre-tokenizing.
  let normalizers: [TextNormalizer]
  /// HF `ByteLevel(add_prefix_space: true)`.
  let addPrefixSpace: Bool

  func encode(_ text: String, into output: inout [Int]) {
    var text = text
    for step in normalizers { text = step.apply(text) }
    if addPrefixSpace, let first = text.unicodeScalars.first, first != " " { text = " " + text }
    let scalars = Array(text.unicodeScalars)
    for range in preTokenizer.split(scalars) {
      var bytes: [UInt8] = []
      for scalar in scalars[range] { UTF8.encode(scalar) { bytes.append($0) } }
      if ignoreMerges {
        var mapped: [UInt8] = []
        for byte in bytes { mapped += ByteMap.byteToUTF8[Int(byte)] }
        if let id = pieceIDs[String(decoding: mapped, as: UTF8.self)] {
          output.append(Int(id))
          continue
        }
      }
      let merged = merger.merge(bytes.map { byteTokens[Int($0)] })
      var previousUnknown = false
      for id in merged {
        if id >= 0 {
          output.append(Int(id))
          previousUnknown = false
        } else if let unknownID, !previousUnknown {
          output.append(Int(unknownID))
          previousUnknown = true
        }
      }
    }
  }

  func decode(_ ids: [Int], _ vocabulary: Tokenizer) -> String {
    var bytes: [UInt8] = []
    for id in ids {
      let piece = vocabulary.pieces[id]
      if !vocabulary.attributes[id].isDisjoint(with: [.control, .userDefined, .unknown]) {
        bytes += Array(piece.utf8)
        continue
      }
      for scalar in piece.unicodeScalars {
        if let byte = ByteMap.byte(for: scalar) {
          bytes.append(byte)
        } else {
          bytes += Array(String(scalar).utf8)
        }
      }
    }
    return String(decoding: bytes, as: UTF8.self)
  }
}

/// BPE merges over UTF-8 characters with SentencePiece spelling, as llama.cpp runs Gemma 4
/// (`tokenizer.ggml.model = "gemma4"`): spaces become "▁", the text is split into runs of
/// newlines and of everything else, each run is merged by rank, and characters the vocabulary
/// lacks are spelled as `<0xXX>` byte tokens. With `normalizers` (an HF `tokenizer.json` BPE
/// with `byte_fallback` and no pre-tokenizer: Gemma's, Llama 2's), the normalizers spell the
/// spaces instead and the whole text is one word, as `tokenizers` merges it.
struct PieceMergeEngine: Sendable {
  let merger: BytePairMerger
  let pieces: ByteTrie
  /// The `<0xXX>` token of each byte (`-1` if missing).
  let byteTokens: [Int32]
  /// The HF form: its normalizers (`nil`: llama.cpp's Gemma 4 rules).
  var normalizers: [TextNormalizer]? = nil
  /// Whether decoding drops the space a `Prepend("▁")` normalizer put first (Llama 2's
  /// decoder strips it).
  var stripsPrependedSpace = false

  func encode(_ text: String, into output: inout [Int]) {
    if let normalizers {
      let normalized = normalizers.reduce(text) { $1.apply($0) }
      let bytes = Array(normalized.utf8)
      encodeRun(bytes, 0..<bytes.count, newlines: false, into: &output)
      return
    }
    let escaped = replacingBytes(Array(text.utf8), [0x20], Array("\u{2581}".utf8))
    var start = 0
    while start < escaped.count {
      let newline = escaped[start] == 0x0A
      var end = start
      while end < escaped.count && (escaped[end] == 0x0A) == newline { end += 1 }
      encodeRun(escaped, start..<end, newlines: newline, into: &output)
      start = end
    }
  }

  private func encodeRun(
    _ bytes: [UInt8], _ run: Range<Int>, newlines: Bool, into output: inout [Int]
  ) {
    if newlines, let id = pieces.value(of: bytes[run]) {
      output.append(Int(id))
      return
    }
    var characters: [Range<Int>] = []
    var offset = run.lowerBound
    while offset < run.upperBound {
      let lead = bytes[offset]
      let length = lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
      let end = min(offset + length, run.upperBound)
      characters.append(offset..<end)
      offset = end
    }
    let ids = characters.map { pieces.value(of: bytes[$0]) ?? -1 }
    for symbol in merger.symbols(ids) {
      if symbol.id >= 0 {
        output.append(Int(symbol.id))
      } else {
        // Only single characters stay outside the vocabulary: they never merge.
        for byte in bytes[characters[symbol.start]] where byteTokens[Int(byte)] >= 0 {
          output.append(Int(byteTokens[Int(byte)]))
        }
      }
    }
  }
}

/// SentencePiece BPE as llama.cpp runs it for `tokenizer.ggml.model = "llama"`.
struct SentencePieceEngine: Sendable {
  let model: SentencePieceBPE
  /// Token ids by piece bytes (a repeated piece maps to its last id, as in llama.cpp).
  let pieces: ByteTrie
  /// `tokenizer.ggml.add_space_prefix`: a space before text that starts the input or follows a
  /// special token.
  let addSpacePrefix: Bool
  /// The `<0xXX>` token of each byte (`-1` if missing).
  let byteTokens: [Int32]
  let unknownID: Int32?

  func encode(_ text: String, afterSpecial: Bool, into output: inout [Int]) {
    var text = Array(text.utf8)
    if addSpacePrefix && afterSpecial { text.insert(0x20, at: 0) }
    let escaped = replacingBytes(text, [0x20], Array("\u{2581}".utf8))
    model.encode(
      escaped,
      lookup: { pieces.value(of: $0) },
      byteToken: { byte in
        let id = byteTokens[Int(byte)]
        return id >= 0 ? id : unknownID
      },
      into: &output)
  }
}

/// SentencePiece Unigram with either llama.cpp's or HF's normalization.
struct UnigramEngine: Sendable {
  enum Normalization: Sendable {
    /// llama.cpp's `llm_tokenizer_ugm_session::normalize` (GGUF `t5` vocabularies).
    case llama(LlamaUnigramNormalizer)
    /// HF `tokenizer.json`: normalizer steps, then `Metaspace`.
    case huggingFace([TextNormalizer], Metaspace)
  }

  let model: UnigramModel
  let normalization: Normalization

  /// Whether decoding drops the space the encoder prefixed.
  var stripLeadingSpace: Bool {
    switch normalization {
    case .llama(let normalizer): normalizer.addSpacePrefix
    case .huggingFace(_, let metaspace): metaspace.prepend != .never
    }
  }

  func encode(_ text: String, atStart: Bool, into output: inout [Int]) {
    switch normalization {
    case .llama(let normalizer):
      model.encode(normalizer.normalize(Array(text.utf8)), into: &output)
    case .huggingFace(let steps, let metaspace):
      var text = text
      for step in steps { text = step.apply(text) }
      for word in metaspace.words(text, atStart: atStart) {
        model.encode(word, into: &output)
      }
    }
  }
}

/// llama.cpp's Unigram normalization: user-defined tokens kept, the charsmap's longest match
/// replaced, spaces escaped to "▁", a space prefixed and runs of spaces merged as configured.
struct LlamaUnigramNormalizer: Sendable {
  let charsmap: PrecompiledCharsmap?
  let userDefined: ByteTrie?
  let addSpacePrefix: Bool
  let removeExtraWhitespaces: Bool

  func normalize(_ input: [UInt8]) -> [UInt8] {
    let space = Array("\u{2581}".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(input.count * 3)
    var spacePrepended = false
    var inWord = false
    var offset = 0
    while offset < input.count {
      let (chunk, consumed) = prefix(input, at: offset)
      for byte in chunk {
        if byte != 0x20 {
          if !inWord {
            inWord = true
            if (addSpacePrefix && !spacePrepended) || removeExtraWhitespaces {
              out += space
              spacePrepended = true
            }
          }
          out.append(byte)
        } else {
          inWord = false
          if !removeExtraWhitespaces { out += space }
        }
      }
      offset += consumed
    }
    return out
  }

  /// The normalized bytes for the input at `offset` and how many input bytes they replace.
  private func prefix(_ input: [UInt8], at offset: Int) -> ([UInt8], Int) {
    if let userDefined,
      let (length, _) = userDefined.longestPrefix(
        of: input, from: offset, limit: input.count)
    {
      return (Array(input[offset..<(offset + length)]), length)
    }
    if let charsmap, let longest = charsmap.matches(input, from: offset, limit: input.count).last {
      return (Array(longest.1), longest.0)
    }
    let lead = input[offset]
    let length = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
    let end = min(offset + length, input.count)
    return (Array(input[offset..<end]), end - offset)
  }
}

/// WordPiece with its decoder.
struct WordPieceEngine: Sendable {
  let model: WordPiece
  /// Pieces that continue a word, as the decoder recognises them: HF pieces start with the
  /// prefix (`##`), llama.cpp's GGUF pieces lack the "▁" of a word start.
  let continuationPrefix: String?
  /// HF WordPiece decoder `cleanup`.
  let cleanup: Bool

  func decode(_ ids: [Int], _ vocabulary: Tokenizer) -> String {
    let wordStart = Array("\u{2581}".utf8)
    var text: [UInt8] = []
    for (index, id) in ids.enumerated() {
      var piece = Array(vocabulary.pieces[id].utf8)
      let special = !vocabulary.attributes[id].isDisjoint(with: [.control, .unknown, .userDefined])
      var continuation = false
      if let continuationPrefix {
        let prefix = Array(continuationPrefix.utf8)
        if piece.starts(with: prefix) && !special {
          continuation = true
          if index != 0 { piece.removeFirst(prefix.count) }
        }
      } else if !special {
        if piece.starts(with: wordStart) {
          piece.removeFirst(wordStart.count)
        } else {
          continuation = true
        }
      }
      if index != 0 && !continuation { piece.insert(0x20, at: 0) }
      if cleanup { piece = Self.cleanup(piece) }
      text += piece
    }
    return String(decoding: text, as: UTF8.self)
  }

  /// HF `tokenizers`' `cleanup`, applied to each token as its WordPiece decoder does.
  static func cleanup(_ token: [UInt8]) -> [UInt8] {
    var token = token
    for (from, to) in [
      (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
      (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ] {
      token = replacingBytes(token, Array(from.utf8), Array(to.utf8))
    }
    return token
  }
}

/// `bytes` with every non-overlapping occurrence of `target`, left to right, replaced.
func replacingBytes(_ bytes: [UInt8], _ target: [UInt8], _ replacement: [UInt8]) -> [UInt8] {
  guard !target.isEmpty, bytes.count >= target.count else { return bytes }
  var out: [UInt8] = []
  out.reserveCapacity(bytes.count)
  var i = 0
  while i < bytes.count {
    if bytes[i] == target[0] && i + target.count <= bytes.count
      && bytes[i..<(i + target.count)].elementsEqual(target)
    {
      out += replacement
      i += target.count
    } else {
      out.append(bytes[i])
      i += 1
    }
  }
  return out
}
