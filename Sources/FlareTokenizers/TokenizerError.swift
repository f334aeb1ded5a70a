import FlareCore

extension FlareError.Code {
  /// A required tokenizer key or field is absent.
  public static let missingKey: Self = "missingKey"
  /// A tokenizer key or field has the wrong type or shape.
  public static let invalidValue: Self = "invalidValue"
  /// A token id (special token, merge, added token) lies outside the vocabulary.
  public static let tokenOutOfRange: Self = "tokenOutOfRange"
  /// A merge rule names a token the vocabulary does not have, or is not `left right`.
  public static let invalidMerge: Self = "invalidMerge"
}

extension FlareError {
  /// A tokenizer error about `key` in `path`.
  static func tokenizer(
    _ code: Code, _ message: String, path: String? = nil, key: String? = nil
  ) -> FlareError {
    FlareError("tokenizer", code, message, path: path, key: key)
  }
}

/// What a token is, as llama.cpp's `llama_token_attr` and HF's added-token flags describe it.
struct TokenAttributes: OptionSet, Sendable {
  let rawValue: UInt16

  static let normal = TokenAttributes(rawValue: 1 << 0)
  static let unknown = TokenAttributes(rawValue: 1 << 1)
  /// A control (special) token: parsed from text only on request, skipped by `skipSpecial`.
  static let control = TokenAttributes(rawValue: 1 << 2)
  /// A user-defined (added, not special) token: always split out of text.
  static let userDefined = TokenAttributes(rawValue: 1 << 3)
  static let unused = TokenAttributes(rawValue: 1 << 4)
  /// A byte token such as `<0x0A>`.
  static let byte = TokenAttributes(rawValue: 1 << 5)
  /// Whitespace before the token is dropped when it is split out of text.
  static let lstrip = TokenAttributes(rawValue: 1 << 6)
  /// Whitespace after the token is dropped when it is split out of text.
  static let rstrip = TokenAttributes(rawValue: 1 << 7)

  /// Attributes for GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
  static func gguf(type: Int) -> TokenAttributes {
    switch type {
    case 1: .normal
    case 2: .unknown
    case 3: .control
    case 4: .userDefined
    case 5: .unused
    case 6: .byte
    default: []
    }
  }

  /// Whether the token is special: control or unknown (skipped by `decode(skipSpecial:)`).
  var isSpecial: Bool { !isDisjoint(with: [.control, .unknown]) }
}

/// The GPT-2 byte-to-character map: printable Latin-1 bytes stand for themselves, the other 68
/// bytes for U+0100 upwards in byte order (`bytes_to_unicode` in GPT-2's `encoder.py`).
enum ByteMap {
  /// The character each byte stands for.
  static let byteToScalar: [Unicode.Scalar] = {
    var table = [Unicode.Scalar](repeating: " ", count: 256)
    var next: UInt32 = 256
    for byte in 0..<256 {
      let printable =
        (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte)
        || (0xAE...0xFF).contains(byte)
      if printable {
        table[byte] = Unicode.Scalar(UInt8(byte))
      } else {
        // U+0100 ... U+0143 are all valid scalars.
        table[byte] = Unicode.Scalar(next) ?? " "
        next += 1
      }
    }
    return table
  }()

  /// The byte a character stands for, or `nil` for characters outside the map.
  static func byte(for scalar: Unicode.Scalar) -> UInt8? {
    let value = scalar.value
    if value < 256 {
      let byte = UInt8(value)
      return byteToScalar[Int(byte)] == scalar ? byte : nil
    }
    return scalarToByte[scalar]
  }

  private static let scalarToByte: [Unicode.Scalar: UInt8] = {
    var map: [Unicode.Scalar: UInt8] = [:]
    for (byte, scalar) in byteToScalar.enumerated() where scalar.value >= 256 {
      map[scalar] = UInt8(byte)
    }
    return map
  }()

  /// The UTF-8 bytes of the string each byte stands for, for building words quickly.
  static let byteToUTF8: [[UInt8]] = byteToScalar.map { Array(String($0).utf8) }
}
