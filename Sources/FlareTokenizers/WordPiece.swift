import Foundation

/// BERT's WordPiece: normalization (`BertNormalizer`), splitting on whitespace and punctuation
/// (`BertPreTokenizer`) and greedy longest-match-first subwords.
struct WordPiece: Sendable {
  /// Which reference's normalization to follow; they differ in corner cases.
  enum Flavor: Sendable {
    /// HF `tokenizers`: `BertNormalizer` (clean text, pad CJK, NFD + drop `Mn` when stripping
    /// accents, full lowercase mapping) and `BertPreTokenizer`.
    case huggingFace
    /// llama.cpp's `llm_tokenizer_wpm_session::preprocess`: per-code-point first-of-NFD and
    /// drop `\p{M}` when stripping accents, simple lowercase mapping.
    case llama
  }

  let flavor: Flavor
  let lowercase: Bool
  let stripAccents: Bool
  let cleanText: Bool
  let handleCJK: Bool
  /// Pieces that may start a word, by UTF-8 bytes.
  let wordStarts: ByteTrie
  /// Pieces that continue a word, by UTF-8 bytes without the continuation prefix.
  let continuations: ByteTrie
  let unknownID: Int32
  let maxInputCharsPerWord: Int

  /// Appends the ids of `text` to `output`.
  func encode(_ text: String, into output: inout [Int]) {
    for word in words(text) {
      encodeWord(word, into: &output)
    }
  }

  /// Normalizes `text` and splits it into words (each an array of scalars).
  func words(_ text: String) -> [[Unicode.Scalar]] {
    var words: [[Unicode.Scalar]] = []
    var current: [Unicode.Scalar] = []
    func finish() {
      if !current.isEmpty {
        words.append(current)
        current = []
      }
    }
    for scalar in normalized(text) {
      let value = scalar.value
      let flags = scalar.codepointClass
      if flags.isWhitespace {
        finish()
        continue
      }
      let punctuation = flags.isPunctuation || (value < 0x80 && flags.isSymbol)
      if punctuation || (flavor == .llama && isCJKIdeograph(value)) {
        finish()
        words.append([scalar])
        continue
      }
      current.append(scalar)
    }
    finish()
    return words
  }

  /// The normalized scalars of `text`.
  func normalized(_ text: String) -> [Unicode.Scalar] {
    switch flavor {
    case .huggingFace: return huggingFaceNormalized(text)
    case .llama: return llamaNormalized(text)
    }
  }

  private func huggingFaceNormalized(_ text: String) -> [Unicode.Scalar] {
    var scalars: [Unicode.Scalar] = []
    scalars.reserveCapacity(text.unicodeScalars.count)
    for scalar in text.unicodeScalars {
      let value = scalar.value
      if cleanText {
        if value == 0 || value == 0xFFFD { continue }
        let isTabOrNewline = value == 0x09 || value == 0x0A || value == 0x0D
        let category = scalar.properties.generalCategory
        let isOther = [.control, .format, .surrogate, .privateUse, .unassigned].contains(category)
        if isOther && !isTabOrNewline { continue }
        if isTabOrNewline || scalar.properties.isWhitespace {
          scalars.append(" ")
          continue
        }
      }
      if handleCJK && isCJKIdeograph(value) {
        scalars.append(" ")
        scalars.append(scalar)
        scalars.append(" ")
        continue
      }
      scalars.append(scalar)
    }
    if stripAccents {
      var view = String.UnicodeScalarView()
      view.append(contentsOf: scalars)
      let decomposed = String(view).decomposedStringWithCanonicalMapping
      scalars = decomposed.unicodeScalars.filter {
        $0.properties.generalCategory != .nonspacingMark
      }
    }
    if lowercase {
      scalars = scalars.flatMap { Array($0.properties.lowercaseMapping.unicodeScalars) }
    }
    return scalars
  }

  private func llamaNormalized(_ text: String) -> [Unicode.Scalar] {
    var scalars: [Unicode.Scalar] = []
    scalars.reserveCapacity(text.unicodeScalars.count)
    for original in text.unicodeScalars {
      var scalar = original
      if stripAccents, scalar.value >= 0x80,
        let first = String(scalar).decomposedStringWithCanonicalMapping.unicodeScalars.first
      {
        scalar = first
      }
      let flags = scalar.codepointClass
      if flags.isWhitespace {
        scalars.append(" ")
        continue
      }
      if scalar.value == 0 || scalar.value == 0xFFFD || flags.isControl { continue }
      if stripAccents && flags.isMark { continue }
      if lowercase { scalar = simpleLowercase(scalar) }
      scalars.append(scalar)
    }
    return scalars
  }

  /// Appends the WordPiece ids of one word, or the unknown token if it cannot be spelled.
  func encodeWord(_ word: [Unicode.Scalar], into output: inout [Int]) {
    guard word.count <= maxInputCharsPerWord else {
      output.append(Int(unknownID))
      return
    }
    var bytes: [UInt8] = []
    for scalar in word { UTF8.encode(scalar) { bytes.append($0) } }
    // Longest match first; pieces are whole UTF-8 characters, so matches end on one.
    var pieces: [Int] = []
    var start = 0
    while start < bytes.count {
      let trie = start == 0 ? wordStarts : continuations
      guard let (length, id) = trie.longestPrefix(of: bytes, from: start, limit: bytes.count)
      else {
        output.append(Int(unknownID))
        return
      }
      pieces.append(Int(id))
      start += length
    }
    output += pieces
  }
}

/// The simple (one-to-one) lowercase mapping of a scalar, as llama.cpp's `unicode_tolower`.
func simpleLowercase(_ scalar: Unicode.Scalar) -> Unicode.Scalar {
  if scalar.isASCII {
    return (0x41...0x5A).contains(scalar.value)
      ? Unicode.Scalar(scalar.value + 0x20) ?? scalar : scalar
  }
  let mapped = scalar.properties.lowercaseMapping.unicodeScalars
  if mapped.count == 1, let first = mapped.first { return first }
  return scalar
}
