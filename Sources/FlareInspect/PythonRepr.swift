/// Python's `repr` for the values gguf-dump prints, so Flare's GGUF listing matches it byte
/// for byte.
enum PythonRepr {
  /// `repr(float)`: the shortest digits that read back, in fixed notation when the decimal
  /// exponent is in (-4, 16], else `1e-05` / `1.5e+16` style; `inf`, `-inf`, `nan`.
  static func float(_ value: Double) -> String {
    if value.isNaN { return "nan" }
    if value.isInfinite { return value < 0 ? "-inf" : "inf" }
    if value == 0 { return value.sign == .minus ? "-0.0" : "0.0" }
    // Swift's description gives the same shortest round-trip digits; re-lay them out.
    var text = "\(value.magnitude)"
    var exponent = 0
    if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
      exponent = Int(text[text.index(after: e)...]) ?? 0
      text = String(text[..<e])
    }
    var digits = ""
    var pointPosition = 0
    var seenPoint = false
    for character in text {
      if character == "." {
        seenPoint = true
        continue
      }
      digits.append(character)
      if !seenPoint { pointPosition += 1 }
    }
    // Strip leading zeros (moving the point) and trailing zeros.
    while digits.count > 1 && digits.first == "0" {
      digits.removeFirst()
      pointPosition -= 1
    }
    while digits.count > 1 && digits.last == "0" { digits.removeLast() }
    let decimalPoint = pointPosition + exponent
    let sign = value < 0 ? "-" : ""
    if decimalPoint > -4 && decimalPoint <= 16 {
      if decimalPoint <= 0 {
        return sign + "0." + String(repeating: "0", count: -decimalPoint) + digits
      }
      if decimalPoint >= digits.count {
        return sign + digits + String(repeating: "0", count: decimalPoint - digits.count) + ".0"
      }
      let index = digits.index(digits.startIndex, offsetBy: decimalPoint)
      return sign + digits[..<index] + "." + digits[index...]
    }
    var mantissa = String(digits.prefix(1))
    if digits.count > 1 { mantissa += "." + digits.dropFirst() }
    let e = decimalPoint - 1
    let magnitude = String(abs(e))
    return sign + mantissa + "e" + (e < 0 ? "-" : "+") + (magnitude.count < 2 ? "0" : "")
      + magnitude
  }

  /// `repr(str)`: single quotes unless the text has a single quote and no double quote;
  /// backslash, the quote, `\n \r \t` escaped; other non-printable characters as `\xNN`,
  /// `\uNNNN` or `\UNNNNNNNN`.
  static func string(_ text: String) -> String {
    let useDouble = text.contains("'") && !text.contains("\"")
    let quote: Character = useDouble ? "\"" : "'"
    var out = String(quote)
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      default:
        if Character(scalar) == quote {
          out += "\\" + String(quote)
        } else if isPrintable(scalar) {
          out.unicodeScalars.append(scalar)
        } else {
          out += escape(scalar)
        }
      }
    }
    out.append(quote)
    return out
  }

  private static func escape(_ scalar: Unicode.Scalar) -> String {
    let hex = String(scalar.value, radix: 16)
    if scalar.value <= 0xFF { return "\\x" + String(repeating: "0", count: 2 - hex.count) + hex }
    if scalar.value <= 0xFFFF { return "\\u" + String(repeating: "0", count: 4 - hex.count) + hex }
    return "\\U" + String(repeating: "0", count: 8 - hex.count) + hex
  }

  /// Python's `str.isprintable` for one character: not in categories Cc, Cf, Cs, Co, Cn, Zl,
  /// Zp, or Zs other than the space.
  private static func isPrintable(_ scalar: Unicode.Scalar) -> Bool {
    if scalar == " " { return true }
    switch scalar.properties.generalCategory {
    case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator,
      .paragraphSeparator,
      .spaceSeparator:
      return false
    default: return true
    }
  }
}
