import Foundation

/// One step of an HF `tokenizers` normalizer (the `normalizer` of `tokenizer.json`).
enum TextNormalizer: Sendable {
  /// `Precompiled`: SentencePiece's charsmap, applied per grapheme cluster as HF does.
  case precompiled(PrecompiledCharsmap)
  /// `Replace` with a literal pattern.
  case replaceLiteral(String, String)
  /// `Replace` with a regex of the form `c{n,}` or `c+`: runs of at least `minimum` copies of
  /// one character.
  case replaceRuns(Unicode.Scalar, minimum: Int, String)
  case nfc, nfd, nfkc, nfkd, lowercase
  case prepend(String)
  case strip(left: Bool, right: Bool)

  /// Applies the step.
  func apply(_ text: String) -> String {
    switch self {
    case .precompiled(let charsmap): return Self.precompiled(text, charsmap)
    case .replaceLiteral(let pattern, let content):
      let replaced = replacingBytes(Array(text.utf8), Array(pattern.utf8), Array(content.utf8))
      return String(decoding: replaced, as: UTF8.self)
    case .replaceRuns(let scalar, let minimum, let content):
      return Self.replaceRuns(text, scalar, minimum, content)
    case .nfc: return text.precomposedStringWithCanonicalMapping
    case .nfd: return text.decomposedStringWithCanonicalMapping
    case .nfkc: return text.precomposedStringWithCompatibilityMapping
    case .nfkd: return text.decomposedStringWithCompatibilityMapping
    case .lowercase:
      var view = String.UnicodeScalarView()
      for scalar in text.unicodeScalars {
        view.append(contentsOf: scalar.properties.lowercaseMapping.unicodeScalars)
      }
      return String(view)
    case .prepend(let prefix): return text.isEmpty ? text : prefix + text
    case .strip(let left, let right):
      var scalars = Substring(text).unicodeScalars[...]
      if left { scalars = scalars.drop { $0.properties.isWhitespace } }
      if right {
        while let last = scalars.last, last.properties.isWhitespace { scalars = scalars.dropLast() }
      }
      return String(String.UnicodeScalarView(scalars))
    }
  }

  /// HF's `Precompiled::normalize`: a grapheme cluster under 6 bytes is replaced whole when the
  /// map knows a prefix of it (the shortest); otherwise each code point is looked up alone.
  private static func precompiled(_ text: String, _ charsmap: PrecompiledCharsmap) -> String {
    var out: [UInt8] = []
    out.reserveCapacity(text.utf8.count)
    for grapheme in text {
      let bytes = Array(String(grapheme).utf8)
      if bytes.count < 6, let first = charsmap.matches(bytes, from: 0, limit: bytes.count).first {
        out += first.1
        continue
      }
      for scalar in grapheme.unicodeScalars {
        let part = Array(String(scalar).utf8)
        if let first = charsmap.matches(part, from: 0, limit: part.count).first {
          out += first.1
        } else {
          out += part
        }
      }
    }
    return String(decoding: out, as: UTF8.self)
  }

  private static func replaceRuns(
    _ text: String, _ target: Unicode.Scalar, _ minimum: Int, _ content: String
  ) -> String {
    var view = String.UnicodeScalarView()
    var run = 0
    func flush() {
      if run >= minimum {
        view.append(contentsOf: content.unicodeScalars)
      } else {
        for _ in 0..<run { view.append(target) }
      }
      run = 0
    }
    for scalar in text.unicodeScalars {
      if scalar == target {
        run += 1
      } else {
        flush()
        view.append(scalar)
      }
    }
    flush()
    return String(view)
  }
}

/// HF's `Metaspace` pre-tokenizer: spaces become "▁", a "▁" is prepended, and the text is split
/// before every "▁".
struct Metaspace: Sendable {
  enum Prepend: Sendable { case always, first, never }

  var replacement: Unicode.Scalar = "\u{2581}"
  var prepend: Prepend = .always
  var split = true

  /// The words of one text fragment; `atStart` says whether it begins the input (for `first`).
  func words(_ text: String, atStart: Bool) -> [[UInt8]] {
    var view = String.UnicodeScalarView()
    for scalar in text.unicodeScalars { view.append(scalar == " " ? replacement : scalar) }
    if let first = view.first, first != replacement {
      if prepend == .always || (prepend == .first && atStart) {
        view.insert(replacement, at: view.startIndex)
      }
    }
    let bytes = Array(String(view).utf8)
    guard split else { return bytes.isEmpty ? [] : [bytes] }
    let marker = Array(String(replacement).utf8)
    var words: [[UInt8]] = []
    var start = 0
    var position = 0
    while position < bytes.count {
      if position > start && bytes[position...].starts(with: marker) {
        words.append(Array(bytes[start..<position]))
        start = position
      }
      position += 1
    }
    if start < bytes.count { words.append(Array(bytes[start...])) }
    return words
  }
}
