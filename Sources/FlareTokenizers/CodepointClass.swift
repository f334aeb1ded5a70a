/// The Unicode classes the pre-tokenizers ask about, for one code point.
///
/// Mirrors the flags llama.cpp keeps per code point (`unicode_cpt_flags` in `src/unicode.h`):
/// one general-category group (`\p{L}`, `\p{N}`, `\p{P}`, `\p{S}`, `\p{M}`, `\p{Z}`, `\p{C}` or
/// unassigned) plus the `White_Space` property that regex `\s` means. Derived from the standard
/// library's `Unicode.Scalar.Properties`, so the Unicode version is the toolchain's.
struct CodepointClass: OptionSet, Sendable {
  let rawValue: UInt16

  static let undefined = CodepointClass(rawValue: 1 << 0)
  static let number = CodepointClass(rawValue: 1 << 1)
  static let letter = CodepointClass(rawValue: 1 << 2)
  static let separator = CodepointClass(rawValue: 1 << 3)
  static let mark = CodepointClass(rawValue: 1 << 4)
  static let punctuation = CodepointClass(rawValue: 1 << 5)
  static let symbol = CodepointClass(rawValue: 1 << 6)
  static let control = CodepointClass(rawValue: 1 << 7)
  static let whitespace = CodepointClass(rawValue: 1 << 8)

  /// No class at all: what llama.cpp reports for a position outside the text.
  static let outside = CodepointClass([])

  var isLetter: Bool { contains(.letter) }
  var isNumber: Bool { contains(.number) }
  var isWhitespace: Bool { contains(.whitespace) }
  var isPunctuation: Bool { contains(.punctuation) }
  var isSymbol: Bool { contains(.symbol) }
  var isMark: Bool { contains(.mark) }
  var isControl: Bool { contains(.control) }

  /// The class of `value`; code points that are not scalars (surrogates, beyond U+10FFFF) are
  /// `undefined`.
  static func of(_ value: UInt32) -> CodepointClass {
    if value < 0x1_0000 {
      return CodepointClass(rawValue: bmpTable[Int(value)])
    }
    return compute(value)
  }

  /// The class of a scalar.
  static func of(_ scalar: Unicode.Scalar) -> CodepointClass { of(scalar.value) }

  /// Classes of the Basic Multilingual Plane, computed once.
  private static let bmpTable: [UInt16] = (0..<0x1_0000).map { compute(UInt32($0)).rawValue }

  private static func compute(_ value: UInt32) -> CodepointClass {
    guard let scalar = Unicode.Scalar(value) else { return .undefined }
    let properties = scalar.properties
    var result: CodepointClass
    switch properties.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
      result = .letter
    case .decimalNumber, .letterNumber, .otherNumber:
      result = .number
    case .nonspacingMark, .spacingMark, .enclosingMark:
      result = .mark
    case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
      .initialPunctuation, .finalPunctuation, .otherPunctuation:
      result = .punctuation
    case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol:
      result = .symbol
    case .spaceSeparator, .lineSeparator, .paragraphSeparator:
      result = .separator
    case .control, .format, .privateUse, .surrogate:
      result = .control
    case .unassigned:
      result = .undefined
    @unknown default:
      result = .undefined
    }
    if properties.isWhitespace { result.insert(.whitespace) }
    return result
  }
}

extension Unicode.Scalar {
  /// The scalar's classes for the pre-tokenizers.
  var codepointClass: CodepointClass { CodepointClass.of(value) }
}

/// Whether `value` is a CJK ideograph in the sense of BERT's `_is_chinese_char` (the ranges HF
/// `tokenizers` uses, including its `0x2B920` start of the fifth range).
func isCJKIdeograph(_ value: UInt32) -> Bool {
  switch value {
  case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x2_0000...0x2_A6DF, 0x2_A700...0x2_B73F,
    0x2_B740...0x2_B81F, 0x2_B920...0x2_CEAF, 0xF900...0xFAFF, 0x2_F800...0x2_FA1F:
    return true
  default:
    return false
  }
}
