/// One value of a model configuration, as `config.json` or a GGUF header stores it.
public struct ConfigValue: Sendable {
  public enum Kind: Sendable {
    /// An integer that fits `Int`.
    case integer(Int)
    /// Any other number: a fraction, or an integer too large for `Int`.
    case number(Double)
    case bool(Bool)
    case string(String)
    case list([ConfigValue])
    /// An object.
    case other
  }

  public var kind: Kind
  /// The stored type, for messages: `number`, `string`, … (JSON) or `UINT32`, `FLOAT32`, … (GGUF).
  public var typeName: String
  /// The value as stored, for messages (strings and containers abridged).
  public var text: String
  /// The byte offset of the key in its file, where known (GGUF).
  public var offset: Int?

  public init(kind: Kind, typeName: String, text: String, offset: Int? = nil) {
    self.kind = kind
    self.typeName = typeName
    self.text = text
    self.offset = offset
  }

  /// A JSON value; `nil` for `null`, which configuration files use for "not set".
  public init?(json: JSONValue) {
    switch json {
    case .null: return nil
    case .bool(let flag): self.init(kind: .bool(flag), typeName: "boolean", text: "\(flag)")
    case .number(let text):
      if let int = Int(text) {
        self.init(kind: .integer(int), typeName: "number", text: text)
      } else {
        // The parser accepts only valid JSON numbers, which Double always reads (perhaps as ±inf).
        self.init(kind: .number(Double(text) ?? .nan), typeName: "number", text: text)
      }
    case .string(let string):
      self.init(kind: .string(string), typeName: "string", text: ConfigValue.quoted(string))
    case .array(let elements):
      self.init(
        kind: .list(
          elements.map {
            ConfigValue(json: $0) ?? ConfigValue(kind: .other, typeName: "null", text: "null")
          }),
        typeName: "array", text: "[…]")
    case .object: self.init(kind: .other, typeName: "object", text: "{…}")
    }
  }

  /// A string for a message: quoted, control characters escaped, at most 40 characters.
  public static func quoted(_ string: String) -> String {
    let short = string.count > 40 ? String(string.prefix(40)) + "…" : string
    return "'\(short.escapedForMessage)'"
  }
}

/// Typed, checked reads of a model configuration: the members of `config.json` or the keys of a
/// GGUF header.
///
/// Every read either returns a value that makes sense (a count in range, a finite positive
/// number, a value of the right type) or throws a ``FlareError`` naming the file, the key and,
/// where known, its byte offset. Nothing a file holds can make a read trap. Model configurations
/// (`DecoderConfig`, `BERTConfig`) are built from these reads, so every consumer of a configuration
/// sees the same checked values.
public struct ConfigFields: Sendable {
  /// The largest count a configuration may hold: sizes reach BLAS as 32-bit integers and GGUF as
  /// `UINT32`.
  public static let maximumCount = Int(Int32.max)

  /// The file the fields come from, named in every error.
  public let path: String
  /// The error domain (`config`, `adapter`).
  public let domain: String
  /// The code of an invalid value's error.
  public let code: FlareError.Code
  private let find: @Sendable (String) -> ConfigValue?

  /// Fields found by `find` (which returns `nil` for a missing key).
  public init(
    path: String, domain: String = "config", code: FlareError.Code = .invalidArgument,
    find: @escaping @Sendable (String) -> ConfigValue?
  ) {
    self.path = path
    self.domain = domain
    self.code = code
    self.find = find
  }

  /// The members of a JSON object; a dotted key (`rope_parameters.rope_theta`) reads a nested
  /// object's member.
  public init(
    json: JSONValue, path: String, domain: String = "config",
    code: FlareError.Code = .invalidArgument
  ) {
    self.init(path: path, domain: domain, code: code) { key in
      var value: JSONValue? = json
      for part in key.split(separator: ".", omittingEmptySubsequences: false) {
        value = value?[String(part)]
      }
      return value.flatMap(ConfigValue.init(json:))
    }
  }

  /// The value of `key`, or `nil` if it is absent (or a JSON `null`).
  public func value(_ key: String) -> ConfigValue? { find(key) }

  /// An error about `key` (and `tensor`, if given), with the key's byte offset where known.
  public func error(
    _ key: String, _ message: String, code: FlareError.Code? = nil, tensor: String? = nil
  ) -> FlareError {
    FlareError(
      domain, code ?? self.code, message, path: path, tensor: tensor, key: key,
      offset: find(key)?.offset)
  }

  private func wrongType(_ key: String, _ value: ConfigValue, expected: String) -> FlareError {
    error(key, "is \(value.typeName) \(value.text), not \(expected)")
  }

  /// An integer in `minimum...maximum` (by default a positive count that fits `Int32`).
  /// - Throws: ``FlareError`` if the key is missing (and there is no default), not an integer, or
  ///   out of range.
  public func count(
    _ key: String, default fallback: Int? = nil, minimum: Int = 1, maximum: Int = maximumCount
  ) throws(FlareError) -> Int {
    guard let value = try optionalCount(key, minimum: minimum, maximum: maximum) ?? fallback else {
      throw error(key, "is missing")
    }
    return value
  }

  /// As ``count(_:default:minimum:maximum:)``, or `nil` when the key is absent.
  public func optionalCount(_ key: String, minimum: Int = 1, maximum: Int = maximumCount)
    throws(FlareError) -> Int?
  {
    guard let value = find(key) else { return nil }
    let range =
      minimum == 1 ? "a count from 1 to \(maximum)" : "an integer from \(minimum) to \(maximum)"
    switch value.kind {
    case .integer(let int):
      guard int >= minimum && int <= maximum else { throw error(key, "is \(int), not \(range)") }
      return int
    case .number:
      throw error(key, "is \(value.text), not \(range)")
    default:
      throw wrongType(key, value, expected: "an integer")
    }
  }

  /// A finite number greater than zero that stays finite and non-zero as a `Float`.
  /// - Throws: ``FlareError`` if the key holds anything else.
  public func positiveNumber(_ key: String, default fallback: Double) throws(FlareError) -> Float {
    guard let value = find(key) else { return Float(fallback) }
    let number: Double
    switch value.kind {
    case .integer(let int): number = Double(int)
    case .number(let double): number = double
    default: throw wrongType(key, value, expected: "a number")
    }
    let single = Float(number)
    guard number.isFinite, number > 0, single.isFinite, single > 0 else {
      throw error(key, "is \(value.text), not a finite number greater than 0 (as a 32-bit float)")
    }
    return single
  }

  /// A number in `range` (finite).
  /// - Throws: ``FlareError`` if the key holds anything else.
  public func number(_ key: String, default fallback: Double, in range: Range<Double>)
    throws(FlareError) -> Double
  {
    guard let value = find(key) else { return fallback }
    let number: Double
    switch value.kind {
    case .integer(let int): number = Double(int)
    case .number(let double): number = double
    default: throw wrongType(key, value, expected: "a number")
    }
    guard number.isFinite, range.contains(number) else {
      throw error(
        key, "is \(value.text), not a number from \(range.lowerBound) up to \(range.upperBound)")
    }
    return number
  }

  /// A boolean.
  /// - Throws: ``FlareError`` if the key holds another type.
  public func bool(_ key: String, default fallback: Bool) throws(FlareError) -> Bool {
    guard let value = find(key) else { return fallback }
    guard case .bool(let flag) = value.kind else {
      throw wrongType(key, value, expected: "a boolean")
    }
    return flag
  }

  /// A string, or `nil` when the key is absent.
  /// - Throws: ``FlareError`` if the key holds another type.
  public func string(_ key: String) throws(FlareError) -> String? {
    guard let value = find(key) else { return nil }
    guard case .string(let text) = value.kind else {
      throw wrongType(key, value, expected: "a string")
    }
    return text
  }

  /// The product of counts read from `keys` (for messages), checked not to overflow `Int` and to
  /// stay at most `maximum`; the error names the first key.
  /// - Throws: ``FlareError`` if the product is too large.
  public func product(
    _ factors: [(key: String, value: Int)], maximum: Int = Int.max, what: String
  ) throws(FlareError) -> Int {
    var result = 1
    for factor in factors {
      let (next, overflow) = result.multipliedReportingOverflow(by: factor.value)
      guard !overflow, next <= maximum else {
        let names = factors.map { "\($0.key) \($0.value)" }.joined(separator: " × ")
        let limit = maximum == Int.max ? "the integer range" : String(maximum)
        throw error(factors.first?.key ?? what, "makes \(what) (\(names)) exceed \(limit)")
      }
      result = next
    }
    return result
  }
}
