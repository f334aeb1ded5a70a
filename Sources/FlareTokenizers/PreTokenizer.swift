/// Splits text into words before BPE, exactly as llama.cpp's `unicode_regex_split` does for the
/// pre-tokenizer a vocabulary names (`tokenizer.ggml.pre`).
///
/// llama.cpp runs a list of regexes in turn; each one splits every current piece into its
/// matches and the text between them. The GPT-2, Llama 3, Qwen2 and Qwen3.5 patterns have
/// hand-written matchers in llama.cpp (`unicode_regex_split_custom_*`), which these follow step
/// by step; the others go through `std::regex` on a text where every code point is collapsed to
/// its class, which the small matchers below reproduce without a regex engine.
struct PreTokenizer: Sendable {
  /// One splitting step.
  enum Rule: Sendable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// The Llama 3 family: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, with the digit run length (3 for
    /// Llama 3, 1 for Qwen2) and whether marks count as letters (Qwen3.5).
    case llama(digits: Int, marksAreLetters: Bool)
    /// Matches of a small pattern are isolated; the text between them forms its own pieces.
    case isolate(Pattern)
    /// `\s+$`: trailing whitespace of each piece is isolated.
    case trailingWhitespace
  }

  /// The regex shapes the collapsed-text pre-tokenizers use.
  enum Pattern: Sendable {
    /// `[set]` : one code point.
    case one(CharacterSet)
    /// `[set]+`
    case run(CharacterSet)
    /// `\s?[set]+`
    case spaceThenRun(CharacterSet)
    /// `[0-9][0-9][0-9]`
    case asciiDigitTriple
  }

  /// The character classes used in those patterns.
  enum CharacterSet: Sendable {
    /// `\p{N}`
    case number
    /// `\p{L}`
    case letter
    /// `\p{P}`
    case punctuation
    /// `[\p{P}\$\+<=>\^~\|`]`: all ASCII punctuation and symbols, and non-ASCII punctuation.
    case falconPunctuation
    /// `[\p{P}\$\+<=>\^~\|]`: as `falconPunctuation` but without the backtick.
    case defaultPunctuation
    /// `[\r\n]`
    case lineBreak
    /// DeepSeek's `[一-龥ࠀ-一가-퟿]`.
    case deepSeekCJK
    /// DeepSeek LLM's Latin, Greek, Cyrillic, ... letter ranges.
    case deepSeekCased
    /// DeepSeek LLM's `[!-/:-~！-／：-～‘-‟　-。]`.
    case deepSeekPunctuation
  }

  let rules: [Rule]

  /// The pre-tokenizer for llama.cpp's name `name`, or `nil` if Flare does not implement it.
  static func named(_ name: String) -> PreTokenizer? {
    switch name {
    case "gpt-2", "gpt2", "mpt", "phi-2", "olmo", "jais", "jina-es", "jina-de", "jina-v2-es",
      "jina-v2-de", "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4":
      return PreTokenizer(rules: [.gpt2])
    case "llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "dbrx", "smaug-bpe":
      return PreTokenizer(rules: [.llama(digits: 3, marksAreLetters: false)])
    case "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez":
      return PreTokenizer(rules: [.llama(digits: 1, marksAreLetters: false)])
    case "qwen35":
      return PreTokenizer(rules: [.llama(digits: 1, marksAreLetters: true)])
    case "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b":
      return PreTokenizer(rules: [.isolate(.one(.number)), .gpt2])
    case "falcon":
      return PreTokenizer(rules: [
        .isolate(.run(.falconPunctuation)), .gpt2, .isolate(.asciiDigitTriple),
      ])
    case "default":
      return PreTokenizer(rules: [
        .isolate(.run(.defaultPunctuation)), .gpt2, .isolate(.run(.number)),
        .isolate(.asciiDigitTriple),
      ])
    case "deepseek-coder":
      return PreTokenizer(rules: [
        .isolate(.one(.lineBreak)), .isolate(.spaceThenRun(.letter)),
        .isolate(.spaceThenRun(.punctuation)), .isolate(.run(.deepSeekCJK)),
        .isolate(.one(.number)),
      ])
    case "deepseek-llm":
      return PreTokenizer(rules: [
        .isolate(.one(.lineBreak)), .isolate(.spaceThenRun(.deepSeekCased)),
        .isolate(.spaceThenRun(.deepSeekPunctuation)), .trailingWhitespace,
        .isolate(.run(.deepSeekCJK)), .isolate(.run(.number)),
      ])
    default:
      return nil
    }
  }

  /// Names accepted by ``named(_:)``, for error messages.
  static let supportedNames = [
    "gpt-2", "gpt2", "mpt", "llama-bpe", "llama3", "qwen2", "qwen35", "smollm", "starcoder",
    "refact", "command-r", "falcon", "default", "deepseek-coder", "deepseek-llm",
  ]

  /// Splits `scalars` into word ranges, in order, covering all of it.
  func split(_ scalars: [Unicode.Scalar]) -> [Range<Int>] {
    let classes = scalars.map { $0.codepointClass }
    let text = Text(scalars: scalars, classes: classes)
    var pieces: [Range<Int>] = scalars.isEmpty ? [] : [0..<scalars.count]
    for rule in rules {
      var next: [Range<Int>] = []
      next.reserveCapacity(pieces.count * 2)
      for piece in pieces {
        switch rule {
        case .gpt2: text.splitGPT2(piece, into: &next)
        case .llama(let digits, let marks):
          text.splitLlama(piece, digits: digits, marksAreLetters: marks, into: &next)
        case .isolate(let pattern): text.isolate(pattern, in: piece, into: &next)
        case .trailingWhitespace: text.isolateTrailingWhitespace(piece, into: &next)
        }
      }
      pieces = next
    }
    return pieces
  }
}

/// A fragment's code points with their classes; positions outside the current piece read as
/// "no code point, no class", as in llama.cpp's `_get_cpt` / `_get_flags`.
private struct Text {
  let scalars: [Unicode.Scalar]
  let classes: [CodepointClass]

  static let outside: UInt32 = 0xFFFF_FFFF

  /// Emits pieces and remembers where the last one ended.
  struct Emitter {
    var previousEnd: Int

    /// Emits `previousEnd..<end` if it is not empty; returns its length.
    @discardableResult
    mutating func emit(_ end: Int, into out: inout [Range<Int>]) -> Int {
      let length = end - previousEnd
      if length > 0 { out.append(previousEnd..<end) }
      previousEnd = end
      return length
    }
  }

  func value(_ position: Int, _ piece: Range<Int>) -> UInt32 {
    piece.contains(position) ? scalars[position].value : Text.outside
  }

  func flags(_ position: Int, _ piece: Range<Int>) -> CodepointClass {
    piece.contains(position) ? classes[position] : .outside
  }

  /// Length of a `'s|'t|'re|'ve|'m|'ll|'d` contraction at `position`, or 0.
  func contraction(at position: Int, _ piece: Range<Int>, ignoreCase: Bool) -> Int {
    guard value(position, piece) == 0x27, position + 1 < piece.upperBound else { return 0 }
    func lowered(_ v: UInt32) -> UInt32 {
      ignoreCase && (0x41...0x5A).contains(v) ? v + 0x20 : v
    }
    let next = lowered(value(position + 1, piece))
    if next == 0x73 || next == 0x74 || next == 0x6D || next == 0x64 { return 2 }  // s t m d
    guard position + 2 < piece.upperBound else { return 0 }
    let after = lowered(value(position + 2, piece))
    let pairs: [(UInt32, UInt32)] = [(0x72, 0x65), (0x76, 0x65), (0x6C, 0x6C)]  // re ve ll
    return pairs.contains { $0.0 == next && $0.1 == after } ? 3 : 0
  }

  /// 1 for a letter, 2 for a number, 3 for anything else that is not whitespace, 0 otherwise.
  static func gpt2Kind(_ flags: CodepointClass) -> Int {
    if flags.isLetter { return 1 }
    if flags.isNumber { return 2 }
    if flags.isWhitespace || flags == .outside { return 0 }
    return 3
  }

  /// llama.cpp's `unicode_regex_split_custom_gpt2`.
  func splitGPT2(_ piece: Range<Int>, into out: inout [Range<Int>]) {
    var emitter = Emitter(previousEnd: piece.lowerBound)
    var position = piece.lowerBound
    while position < piece.upperBound {
      let current = value(position, piece)
      let flags = self.flags(position, piece)
      let contraction = contraction(at: position, piece, ignoreCase: false)
      if contraction > 0 {
        position += emitter.emit(position + contraction, into: &out)
        continue
      }
      let space = current == 0x20
      var next = space ? self.flags(position + 1, piece) : flags
      // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
      let kind = Text.gpt2Kind(next)
      if kind != 0 {
        if space { position += 1 }
        while Text.gpt2Kind(next) == kind {
          position += 1
          next = self.flags(position, piece)
        }
        emitter.emit(position, into: &out)
        continue
      }
      if whitespaceRun(&position, piece, emitter: &emitter, lineBreaks: false, into: &out) {
        continue
      }
      position += 1
      emitter.emit(position, into: &out)
    }
  }

  /// llama.cpp's `unicode_regex_split_custom_llama3` (digits 3), `_qwen2` (digits 1) and
  /// `_qwen35` (digits 1, marks are letters).
  func splitLlama(
    _ piece: Range<Int>, digits: Int, marksAreLetters: Bool, into out: inout [Range<Int>]
  ) {
    func letterLike(_ flags: CodepointClass) -> Bool {
      flags.isLetter || (marksAreLetters && flags.isMark)
    }
    var emitter = Emitter(previousEnd: piece.lowerBound)
    var position = piece.lowerBound
    while position < piece.upperBound {
      let current = value(position, piece)
      let flags = self.flags(position, piece)
      let contraction = contraction(at: position, piece, ignoreCase: true)
      if contraction > 0 {
        position += emitter.emit(position + contraction, into: &out)
        continue
      }
      // `[^\r\n\p{L}\p{N}]?\p{L}+`
      if !(current == 0x0D || current == 0x0A || flags.isNumber) {
        if letterLike(flags) || letterLike(self.flags(position + 1, piece)) {
          position += 1
          while letterLike(self.flags(position, piece)) { position += 1 }
          emitter.emit(position, into: &out)
          continue
        }
      }
      // `\p{N}{1,digits}`
      if flags.isNumber {
        var start = position
        while self.flags(position, piece).isNumber {
          position += 1
          if position - start >= digits {
            emitter.emit(position, into: &out)
            start = position
          }
        }
        emitter.emit(position, into: &out)
        continue
      }
      // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
      func other(_ f: CodepointClass) -> Bool {
        !(f.isWhitespace || letterLike(f) || f.isLetter || f.isNumber) && f != .outside
      }
      let space = current == 0x20
      var next = space ? self.flags(position + 1, piece) : flags
      if other(next) && flags != .outside {
        if space { position += 1 }
        while other(next) {
          position += 1
          next = self.flags(position, piece)
        }
        var after = value(position, piece)
        while after == 0x0D || after == 0x0A {
          position += 1
          after = value(position, piece)
        }
        emitter.emit(position, into: &out)
        continue
      }
      if whitespaceRun(&position, piece, emitter: &emitter, lineBreaks: true, into: &out) {
        continue
      }
      position += 1
      emitter.emit(position, into: &out)
    }
  }

  /// `\s*[\r\n]+` (when `lineBreaks`), `\s+(?!\S)` and `\s+` at `position`; returns whether one
  /// matched.
  func whitespaceRun(
    _ position: inout Int, _ piece: Range<Int>, emitter: inout Emitter, lineBreaks: Bool,
    into out: inout [Range<Int>]
  ) -> Bool {
    var count = 0
    var lastLineBreakEnd = 0
    while flags(position + count, piece).isWhitespace {
      let v = value(position + count, piece)
      if v == 0x0D || v == 0x0A { lastLineBreakEnd = position + count + 1 }
      count += 1
    }
    if lineBreaks && lastLineBreakEnd > 0 {
      position = lastLineBreakEnd
      emitter.emit(position, into: &out)
      return true
    }
    if count > 1 && value(position + count, piece) != Text.outside {
      position += count - 1
      emitter.emit(position, into: &out)
      return true
    }
    if count > 0 {
      position += count
      emitter.emit(position, into: &out)
      return true
    }
    return false
  }

  /// Whether the code point at `position` is in `set`. Non-ASCII whitespace never is: llama.cpp
  /// replaces it with U+000B before running `std::regex`.
  func contains(_ set: PreTokenizer.CharacterSet, _ position: Int) -> Bool {
    let v = scalars[position].value
    let flags = classes[position]
    if v > 0x7F && flags.isWhitespace { return false }
    switch set {
    case .number: return flags.isNumber
    case .letter: return flags.isLetter
    case .punctuation: return flags.isPunctuation
    case .falconPunctuation: return flags.isPunctuation || (v < 0x80 && flags.isSymbol)
    case .defaultPunctuation:
      return flags.isPunctuation || (v < 0x80 && flags.isSymbol && v != 0x60)
    case .lineBreak: return v == 0x0D || v == 0x0A
    case .deepSeekCJK: return (0x0800...0x9FA5).contains(v) || (0xAC00...0xD7FF).contains(v)
    case .deepSeekPunctuation:
      return (0x21...0x2F).contains(v) || (0x3A...0x7E).contains(v)
        || (0xFF01...0xFF0F).contains(v) || (0xFF1A...0xFF5E).contains(v)
        || (0x2018...0x201F).contains(v) || (0x3000...0x3002).contains(v)
    case .deepSeekCased: return DeepSeekRanges.contains(v)
    }
  }

  /// Length of a match of `pattern` at `position` inside `piece`, or 0.
  func match(_ pattern: PreTokenizer.Pattern, at position: Int, _ piece: Range<Int>) -> Int {
    func run(_ set: PreTokenizer.CharacterSet, from start: Int) -> Int {
      var end = start
      while end < piece.upperBound && contains(set, end) { end += 1 }
      return end - start
    }
    switch pattern {
    case .one(let set): return contains(set, position) ? 1 : 0
    case .run(let set): return run(set, from: position)
    case .spaceThenRun(let set):
      // `\s?` is greedy, so a whitespace followed by the run is taken with it.
      if classes[position].isWhitespace && position + 1 < piece.upperBound {
        let length = run(set, from: position + 1)
        if length > 0 { return length + 1 }
      }
      return run(set, from: position)
    case .asciiDigitTriple:
      guard position + 3 <= piece.upperBound else { return 0 }
      let digits = (position..<position + 3).allSatisfy {
        (0x30...0x39).contains(scalars[$0].value)
      }
      return digits ? 3 : 0
    }
  }

  /// Splits `piece` into the matches of `pattern` (leftmost first, as `std::regex_iterator`) and
  /// the text between them.
  func isolate(_ pattern: PreTokenizer.Pattern, in piece: Range<Int>, into out: inout [Range<Int>])
  {
    var gapStart = piece.lowerBound
    var position = piece.lowerBound
    while position < piece.upperBound {
      let length = match(pattern, at: position, piece)
      if length > 0 {
        if position > gapStart { out.append(gapStart..<position) }
        out.append(position..<(position + length))
        position += length
        gapStart = position
      } else {
        position += 1
      }
    }
    if gapStart < piece.upperBound { out.append(gapStart..<piece.upperBound) }
  }

  /// `\s+$`: the only match starts where the piece's trailing whitespace starts.
  func isolateTrailingWhitespace(_ piece: Range<Int>, into out: inout [Range<Int>]) {
    var start = piece.upperBound
    while start > piece.lowerBound && classes[start - 1].isWhitespace { start -= 1 }
    if start > piece.lowerBound { out.append(piece.lowerBound..<start) }
    if start < piece.upperBound { out.append(start..<piece.upperBound) }
  }
}

/// The letter ranges of DeepSeek LLM's pre-tokenizer regex (from its `tokenizer.json`, as
/// llama.cpp lists them for `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM`), sorted, for binary search.
private enum DeepSeekRanges {
  static let ranges: [ClosedRange<UInt32>] = [
    0x41...0x5A, 0x61...0x7A, 0xB5...0xB5, 0xC0...0xD6, 0xD8...0xF6, 0xF8...0x1BA,
    0x1BC...0x1BF, 0x1C4...0x293, 0x295...0x2AF, 0x370...0x373, 0x376...0x377, 0x37B...0x37D,
    0x37F...0x37F, 0x386...0x386, 0x388...0x38A, 0x38C...0x38C, 0x38E...0x3A1, 0x3A3...0x3F5,
    0x3F7...0x481, 0x48A...0x52F, 0x531...0x556, 0x10A0...0x10C5, 0x13A0...0x13F5,
    0x13F8...0x13FD, 0x1C90...0x1CBA, 0x1CBD...0x1CBF, 0x1D00...0x1D2B, 0x1D6B...0x1D77,
    0x1D79...0x1D9A, 0x1E00...0x1F15, 0x1F18...0x1F1D, 0x1F20...0x1F45, 0x1F48...0x1F4D,
    0x1F50...0x1F57, 0x1F59...0x1F59, 0x1F5B...0x1F5B, 0x1F5D...0x1F5D, 0x1F5F...0x1F7D,
    0x1F80...0x1FB4, 0x1FB6...0x1FBC, 0x1FBE...0x1FBE, 0x1FC2...0x1FC4, 0x1FC6...0x1FCC,
    0x1FD0...0x1FD3, 0x1FD6...0x1FDB, 0x1FE0...0x1FEC, 0x1FF2...0x1FF4, 0x1FF6...0x1FFC,
    0x2102...0x2102, 0x2107...0x2107, 0x210A...0x2113, 0x2115...0x2115, 0x2119...0x211D,
    0x2124...0x2124, 0x2126...0x2126, 0x2128...0x2128, 0x212A...0x212D, 0x212F...0x2134,
    0x2139...0x2139, 0x213C...0x213F, 0x2145...0x2149, 0x214E...0x214E, 0x2183...0x2184,
    0x2C00...0x2C7B, 0x2C7E...0x2CE4, 0x2CEB...0x2CEE, 0x2CF2...0x2CF3, 0xA640...0xA66D,
    0xA680...0xA69B, 0xA722...0xA76F, 0xA771...0xA787, 0xA78B...0xA78E, 0xAB70...0xABBF,
    0xFB00...0xFB06, 0xFB13...0xFB17, 0xFF21...0xFF3A, 0xFF41...0xFF5A, 0x1_0400...0x1_044F,
    0x1_04B0...0x1_04D3, 0x1_04D8...0x1_04FB, 0x1_0C80...0x1_0CB2, 0x1_0CC0...0x1_0CF2,
    0x1_18A0...0x1_18DF, 0x1_E900...0x1_E943,
  ]

  static func contains(_ value: UInt32) -> Bool {
    var low = 0
    var high = ranges.count
    while low < high {
      let mid = (low + high) / 2
      if ranges[mid].upperBound < value {
        low = mid + 1
      } else {
        high = mid
      }
    }
    return low < ranges.count && ranges[low].contains(value)
  }
}
