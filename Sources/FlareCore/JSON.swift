/// A JSON value that keeps object keys in document order and numbers as written.
///
/// Used for safetensors headers, shard indexes and adapter configs, where a reader must see
/// duplicate keys (the standard library's decoders silently keep one) and exact 64-bit integers.
public enum JSONValue: Equatable, Sendable {
  case null
  case bool(Bool)
  /// The number's text as it appears in the document (or as Flare will write it).
  case number(String)
  case string(String)
  case array([JSONValue])
  /// Members in document order; duplicates are kept so validators can report them.
  case object([(String, JSONValue)])

  public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
    switch (lhs, rhs) {
    case (.null, .null): true
    case (.bool(let a), .bool(let b)): a == b
    case (.number(let a), .number(let b)): a == b
    case (.string(let a), .string(let b)): a == b
    case (.array(let a), .array(let b)): a == b
    case (.object(let a), .object(let b)):
      a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    default: false
    }
  }

  /// An integer number value.
  public static func integer<T: BinaryInteger>(_ value: T) -> JSONValue { .number(String(value)) }

  /// A `Float` as the shortest text that reads back to it; `null` for NaN, infinities or `nil`.
  public static func float(_ value: Float?) -> JSONValue {
    guard let value, value.isFinite else { return .null }
    return .number("\(value)")
  }

  /// A `Double` as the shortest text that reads back to it; `null` for NaN, infinities or `nil`.
  public static func exact(_ value: Double?) -> JSONValue {
    guard let value, value.isFinite else { return .null }
    return .number("\(value)")
  }

  /// The string, if this is a string.
  public var stringValue: String? {
    if case .string(let s) = self { return s }
    return nil
  }

  /// The members, if this is an object.
  public var objectMembers: [(String, JSONValue)]? {
    if case .object(let members) = self { return members }
    return nil
  }

  /// The elements, if this is an array.
  public var arrayValue: [JSONValue]? {
    if case .array(let elements) = self { return elements }
    return nil
  }

  /// The value, if this is a number written as a non-negative integer that fits `UInt64`.
  public var uint64Value: UInt64? {
    guard case .number(let text) = self else { return nil }
    return UInt64(text)
  }

  /// The value, if this is an integer number that fits `Int`.
  public var intValue: Int? {
    guard case .number(let text) = self else { return nil }
    return Int(text)
  }

  /// The value, if this is a number.
  public var doubleValue: Double? {
    guard case .number(let text) = self else { return nil }
    return Double(text)
  }

  /// The bool, if this is a bool.
  public var boolValue: Bool? {
    if case .bool(let b) = self { return b }
    return nil
  }

  /// The last member named `key`, if this is an object that has one.
  public subscript(key: String) -> JSONValue? {
    objectMembers?.last { $0.0 == key }?.1
  }
}

/// A strict JSON parser (RFC 8259) with a nesting limit.
///
/// Rejects trailing commas, comments, leading zeros, lone surrogates, unescaped control
/// characters and anything after the top-level value but whitespace.
public struct JSONParser {
  /// Why parsing failed and where (a byte offset into the text).
  public struct Failure: Error, Sendable {
    public var message: String
    public var offset: Int
  }

  private let bytes: UnsafeRawBufferPointer
  private var position = 0
  private let maxDepth: Int

  private init(_ bytes: UnsafeRawBufferPointer, maxDepth: Int) {
    self.bytes = bytes
    self.maxDepth = maxDepth
  }

  /// Parses a complete JSON document.
  /// - Throws: ``Failure`` with the byte offset of the first problem.
  public static func parse(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 64) throws(Failure)
    -> JSONValue
  {
    var parser = JSONParser(bytes, maxDepth: maxDepth)
    parser.skipWhitespace()
    let value = try parser.parseValue(depth: 0)
    parser.skipWhitespace()
    guard parser.position == bytes.count else {
      throw Failure(message: "unexpected data after the JSON value", offset: parser.position)
    }
    return value
  }

  /// Parses a complete JSON document from a byte array.
  public static func parse(_ bytes: [UInt8], maxDepth: Int = 64) throws(Failure) -> JSONValue {
    let result: Result<JSONValue, Failure> = bytes.withUnsafeBytes { raw in
      do throws(Failure) { return .success(try parse(raw, maxDepth: maxDepth)) } catch {
        return .failure(error)
      }
    }
    return try result.get()
  }

  /// Reads and parses a JSON file (at most `limit` bytes), with errors naming the file and the
  /// byte offset of the first problem.
  /// - Throws: ``FlareError`` in `domain` with `code` for text that is not JSON, or the read's
  ///   own error.
  public static func parse(
    file path: String, domain: String, code: FlareError.Code = .invalidArgument,
    limit: Int = 256 << 20
  ) throws -> JSONValue {
    let bytes = try readSmallFile(path, limit: limit)
    do {
      return try parse(bytes)
    } catch {
      throw FlareError(
        domain, code, "not valid JSON: \(error.message)", path: path, offset: error.offset)
    }
  }

  private var atEnd: Bool { position >= bytes.count }
  private var current: UInt8 { bytes[position] }

  private mutating func skipWhitespace() {
    while !atEnd, [0x20, 0x09, 0x0A, 0x0D].contains(current) { position += 1 }
  }

  private func fail(_ message: String) -> Failure { Failure(message: message, offset: position) }

  private mutating func parseValue(depth: Int) throws(Failure) -> JSONValue {
    guard !atEnd else { throw fail("unexpected end of JSON") }
    switch current {
    case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
    case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
    case UInt8(ascii: "\""): return .string(try parseString())
    case UInt8(ascii: "t"):
      try expectLiteral("true")
      return .bool(true)
    case UInt8(ascii: "f"):
      try expectLiteral("false")
      return .bool(false)
    case UInt8(ascii: "n"):
      try expectLiteral("null")
      return .null
    case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
    default:
      throw fail("unexpected character '\(Character(Unicode.Scalar(current)).escapedDescription)'")
    }
  }

  private mutating func expectLiteral(_ literal: String) throws(Failure) {
    for byte in literal.utf8 {
      guard !atEnd, current == byte else { throw fail("invalid literal") }
      position += 1
    }
  }

  private mutating func parseObject(depth: Int) throws(Failure) -> JSONValue {
    guard depth <= maxDepth else { throw fail("JSON nested deeper than \(maxDepth) levels") }
    position += 1
    var members: [(String, JSONValue)] = []
    skipWhitespace()
    if !atEnd, current == UInt8(ascii: "}") {
      position += 1
      return .object(members)
    }
    while true {
      skipWhitespace()
      guard !atEnd, current == UInt8(ascii: "\"") else { throw fail("expected a string key") }
      let key = try parseString()
      skipWhitespace()
      guard !atEnd, current == UInt8(ascii: ":") else { throw fail("expected ':' after a key") }
      position += 1
      skipWhitespace()
      members.append((key, try parseValue(depth: depth)))
      skipWhitespace()
      guard !atEnd else { throw fail("unexpected end of JSON in an object") }
      if current == UInt8(ascii: ",") {
        position += 1
        continue
      }
      guard current == UInt8(ascii: "}") else { throw fail("expected ',' or '}' in an object") }
      position += 1
      return .object(members)
    }
  }

  private mutating func parseArray(depth: Int) throws(Failure) -> JSONValue {
    guard depth <= maxDepth else { throw fail("JSON nested deeper than \(maxDepth) levels") }
    position += 1
    var elements: [JSONValue] = []
    skipWhitespace()
    if !atEnd, current == UInt8(ascii: "]") {
      position += 1
      return .array(elements)
    }
    while true {
      skipWhitespace()
      elements.append(try parseValue(depth: depth))
      skipWhitespace()
      guard !atEnd else { throw fail("unexpected end of JSON in an array") }
      if current == UInt8(ascii: ",") {
        position += 1
        continue
      }
      guard current == UInt8(ascii: "]") else { throw fail("expected ',' or ']' in an array") }
      position += 1
      return .array(elements)
    }
  }

  private mutating func parseNumber() throws(Failure) -> JSONValue {
    let start = position
    if current == UInt8(ascii: "-") { position += 1 }
    guard !atEnd, isDigit(current) else { throw fail("invalid number") }
    if current == UInt8(ascii: "0") {
      position += 1
      if !atEnd, isDigit(current) { throw fail("leading zeros are not allowed in numbers") }
    } else {
      while !atEnd, isDigit(current) { position += 1 }
    }
    if !atEnd, current == UInt8(ascii: ".") {
      position += 1
      guard !atEnd, isDigit(current) else { throw fail("invalid number") }
      while !atEnd, isDigit(current) { position += 1 }
    }
    if !atEnd, current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
      position += 1
      if !atEnd, current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { position += 1 }
      guard !atEnd, isDigit(current) else { throw fail("invalid number") }
      while !atEnd, isDigit(current) { position += 1 }
    }
    let text = String(
      decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
    return .number(text)
  }

  private func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

  private mutating func parseString() throws(Failure) -> String {
    position += 1  // opening quote
    var scalars = String.UnicodeScalarView()
    var runStart = position
    func flushRun(_ parser: JSONParser, upTo end: Int) throws(Failure) {
      guard end > runStart else { return }
      let run = UnsafeRawBufferPointer(rebasing: parser.bytes[runStart..<end])
      guard let text = String(validating: run, as: UTF8.self) else {
        throw Failure(message: "invalid UTF-8 in a string", offset: runStart)
      }
      scalars.append(contentsOf: text.unicodeScalars)
    }
    while true {
      guard !atEnd else { throw fail("unterminated string") }
      let byte = current
      if byte == UInt8(ascii: "\"") {
        try flushRun(self, upTo: position)
        position += 1
        return String(scalars)
      }
      if byte < 0x20 { throw fail("unescaped control character in a string") }
      if byte != UInt8(ascii: "\\") {
        position += 1
        continue
      }
      try flushRun(self, upTo: position)
      position += 1
      guard !atEnd else { throw fail("unterminated escape") }
      let escape = current
      position += 1
      switch escape {
      case UInt8(ascii: "\""): scalars.append("\"")
      case UInt8(ascii: "\\"): scalars.append("\\")
      case UInt8(ascii: "/"): scalars.append("/")
      case UInt8(ascii: "b"): scalars.append("\u{08}")
      case UInt8(ascii: "f"): scalars.append("\u{0C}")
      case UInt8(ascii: "n"): scalars.append("\n")
      case UInt8(ascii: "r"): scalars.append("\r")
      case UInt8(ascii: "t"): scalars.append("\t")
      case UInt8(ascii: "u"):
        let first = try parseHex4()
        if (0xD800...0xDBFF).contains(first) {
          guard position + 1 < bytes.count, bytes[position] == UInt8(ascii: "\\"),
            bytes[position + 1] == UInt8(ascii: "u")
          else { throw fail("unpaired surrogate escape") }
          position += 2
          let second = try parseHex4()
          guard (0xDC00...0xDFFF).contains(second) else { throw fail("unpaired surrogate escape") }
          let value = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
          guard let scalar = Unicode.Scalar(value) else { throw fail("invalid escape") }
          scalars.append(scalar)
        } else {
          guard let scalar = Unicode.Scalar(first) else { throw fail("unpaired surrogate escape") }
          scalars.append(scalar)
        }
      default:
        throw fail("invalid escape '\\\(Character(Unicode.Scalar(escape)).escapedDescription)'")
      }
      runStart = position
    }
  }

  private mutating func parseHex4() throws(Failure) -> UInt32 {
    guard bytes.count - position >= 4 else { throw fail("truncated \\u escape") }
    var value: UInt32 = 0
    for _ in 0..<4 {
      let byte = current
      let digit: UInt32
      switch byte {
      case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - 0x30)
      case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - 0x61 + 10)
      case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - 0x41 + 10)
      default: throw fail("invalid hex digit in \\u escape")
      }
      value = value << 4 | digit
      position += 1
    }
    return value
  }
}

extension Character {
  fileprivate var escapedDescription: String { String(self).escapedForMessage }
}

/// Serializes ``JSONValue``s.
public enum JSONWriter {
  /// Compact JSON (no spaces), escaping `"`, `\`, and control characters
  /// (`\b \f \n \r \t`, others as `\u00XX`); non-ASCII text is written as UTF-8.
  public static func compact(_ value: JSONValue) -> String {
    var out = ""
    write(value, into: &out, indent: nil, level: 0)
    return out
  }

  /// Indented JSON (`indent` spaces per level, `": "` after keys), as Python's
  /// `json.dumps(indent=…)` lays it out, but with non-ASCII text kept as UTF-8.
  public static func pretty(_ value: JSONValue, indent: Int = 2) -> String {
    var out = ""
    write(value, into: &out, indent: indent, level: 0)
    return out
  }

  /// A JSON string literal for `text`.
  public static func quote(_ text: String) -> String {
    var out = ""
    appendQuoted(text, into: &out)
    return out
  }

  private static func appendQuoted(_ text: String, into out: inout String) {
    out.append("\"")
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": out.append("\\\"")
      case "\\": out.append("\\\\")
      case "\u{08}": out.append("\\b")
      case "\u{0C}": out.append("\\f")
      case "\n": out.append("\\n")
      case "\r": out.append("\\r")
      case "\t": out.append("\\t")
      default:
        if scalar.value < 0x20 {
          let hex = String(scalar.value, radix: 16)
          out.append("\\u" + String(repeating: "0", count: 4 - hex.count) + hex)
        } else {
          out.unicodeScalars.append(scalar)
        }
      }
    }
    out.append("\"")
  }

  private static func write(_ value: JSONValue, into out: inout String, indent: Int?, level: Int) {
    switch value {
    case .null: out.append("null")
    case .bool(let b): out.append(b ? "true" : "false")
    case .number(let text): out.append(text)
    case .string(let s): appendQuoted(s, into: &out)
    case .array(let elements):
      if elements.isEmpty {
        out.append("[]")
        return
      }
      out.append("[")
      for (i, element) in elements.enumerated() {
        if i > 0 { out.append(",") }
        newline(&out, indent: indent, level: level + 1)
        write(element, into: &out, indent: indent, level: level + 1)
      }
      newline(&out, indent: indent, level: level)
      out.append("]")
    case .object(let members):
      if members.isEmpty {
        out.append("{}")
        return
      }
      out.append("{")
      for (i, (key, member)) in members.enumerated() {
        if i > 0 { out.append(",") }
        newline(&out, indent: indent, level: level + 1)
        appendQuoted(key, into: &out)
        out.append(indent == nil ? ":" : ": ")
        write(member, into: &out, indent: indent, level: level + 1)
      }
      newline(&out, indent: indent, level: level)
      out.append("}")
    }
  }

  private static func newline(_ out: inout String, indent: Int?, level: Int) {
    guard let indent else { return }
    out.append("\n")
    out.append(String(repeating: " ", count: indent * level))
  }
}
