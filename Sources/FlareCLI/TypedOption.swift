import FlareCore

/// An option declared once: its name, placeholder, help, default, type and validation.
///
/// The ``spec`` it carries feeds the parser and `--help` (which shows the default from the
/// same value the code uses), and ``value(in:)`` converts and checks what was given, so a bad
/// value is a ``UsageError`` (exit 64) raised before any work starts. Declare options as
/// static constants and build the ``CommandSpec`` from their specs.
public struct TypedOption<Value: Sendable>: Sendable {
  /// What the parser and `--help` see.
  public let spec: OptionSpec
  /// The value when the option is not given, or `nil` for none.
  public let defaultValue: Value?
  let convert: @Sendable (String) -> Value?
  let check: @Sendable (Value) -> String?
  let expected: String

  /// Declares an option.
  /// - Parameters:
  ///   - name: The long name with dashes (`--rank`).
  ///   - value: The placeholder (`r`).
  ///   - default: The value used when the option is absent (shown in `--help`).
  ///   - showDefault: How `--help` prints the default.
  ///   - help: One line of help.
  ///   - expected: What a valid value looks like, for the error message (`an integer`).
  ///   - convert: Text → value, `nil` when the text is not of the type.
  ///   - check: `nil` when the value is acceptable, otherwise the rule it breaks
  ///     (`must be at least 1`).
  public init(
    _ name: String, value: String, default defaultValue: Value? = nil,
    showDefault: @Sendable (Value) -> String = { "\($0)" }, help: String, expected: String,
    convert: @escaping @Sendable (String) -> Value?,
    check: @escaping @Sendable (Value) -> String? = { _ in nil }
  ) {
    self.spec = OptionSpec(
      name, value: value, default: defaultValue.map(showDefault), help: help)
    self.defaultValue = defaultValue
    self.convert = convert
    self.check = check
    self.expected = expected
  }

  /// The long name (`--rank`).
  public var name: String { spec.name }

  /// Whether the option was given on the command line.
  public func isGiven(in arguments: ParsedArguments) -> Bool { arguments.value(name) != nil }

  /// The given value (the last, if repeated), converted and checked; the default when absent.
  /// - Throws: ``UsageError`` naming the option when the text is not of the type or breaks
  ///   the option's rule.
  public func value(in arguments: ParsedArguments) throws(UsageError) -> Value? {
    guard let text = arguments.value(name) else { return defaultValue }
    return try parse(text)
  }

  /// Every given value (repeatable options), converted and checked.
  public func values(in arguments: ParsedArguments) throws(UsageError) -> [Value] {
    var result: [Value] = []
    for text in arguments.allValues(name) { result.append(try parse(text)) }
    return result
  }

  /// The given value or default; a ``UsageError`` when there is neither.
  public func required(in arguments: ParsedArguments) throws(UsageError) -> Value {
    guard let value = try value(in: arguments) else {
      throw UsageError("missing expected option '\(spec.usageLabel)'")
    }
    return value
  }

  /// Converts and checks one text.
  public func parse(_ text: String) throws(UsageError) -> Value {
    guard let value = convert(text) else {
      throw UsageError(
        "the value '\(text.escapedForMessage)' is invalid for '\(spec.usageLabel)': expected \(expected)"
      )
    }
    if let rule = check(value) {
      throw UsageError(
        "the value '\(text.escapedForMessage)' is invalid for '\(spec.usageLabel)': \(rule)")
    }
    return value
  }
}

extension TypedOption where Value == Int {
  /// A whole number, at least `minimum` and at most `maximum`.
  public static func integer(
    _ name: String, value: String = "n", default defaultValue: Int? = nil, minimum: Int? = nil,
    maximum: Int? = nil, help: String
  ) -> Self {
    TypedOption(
      name, value: value, default: defaultValue, help: help, expected: "an integer",
      convert: { Int($0) },
      check: { number in
        if let minimum, number < minimum { return "must be at least \(minimum)" }
        if let maximum, number > maximum { return "must be at most \(maximum)" }
        return nil
      })
  }
}

extension TypedOption where Value == UInt64 {
  /// A non-negative 64-bit integer (seeds).
  public static func unsigned(
    _ name: String, value: String = "n", default defaultValue: UInt64? = nil, help: String
  ) -> Self {
    TypedOption(
      name, value: value, default: defaultValue, help: help,
      expected: "a non-negative integer", convert: { UInt64($0) })
  }
}

extension TypedOption where Value == Double {
  /// A finite number; `check` adds the option's own rule (a range).
  public static func number(
    _ name: String, value: String = "x", default defaultValue: Double? = nil, help: String,
    check: @escaping @Sendable (Double) -> String? = { _ in nil }
  ) -> Self {
    TypedOption(
      name, value: value, default: defaultValue, showDefault: { formatNumber($0) }, help: help,
      expected: "a number",
      convert: { text in Double(text).flatMap { $0.isFinite ? $0 : nil } }, check: check)
  }

  /// `x` as a short decimal: `16` for 16.0, `0.0002` for 2e-4.
  public static func formatNumber(_ x: Double) -> String {
    if x == x.rounded(), abs(x) < 1e15 { return String(Int(x)) }
    return "\(x)"
  }
}

extension TypedOption where Value == String {
  /// Any text (paths, names); `check` adds the option's own rule.
  public static func text(
    _ name: String, value: String, default defaultValue: String? = nil, help: String,
    check: @escaping @Sendable (String) -> String? = { _ in nil }
  ) -> Self {
    TypedOption(
      name, value: value, default: defaultValue, help: help, expected: "text",
      convert: { $0 }, check: check)
  }
}

extension TypedOption where Value == [String] {
  /// A comma-separated list of non-empty names.
  public static func list(
    _ name: String, value: String, default defaultValue: [String]? = nil, help: String
  ) -> Self {
    TypedOption(
      name, value: value, default: defaultValue, showDefault: { $0.joined(separator: ",") },
      help: help, expected: "a comma-separated list of names",
      convert: { text in
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map {
          String($0).trimmingSpaces
        }
        return items.contains(where: \.isEmpty) ? nil : items
      })
  }
}

extension TypedOption where Value: RawRepresentable & CaseIterable, Value.RawValue == String {
  /// One of the cases of `Value`, by raw value; the placeholder lists them (`a|b|c`).
  public static func choice(_ name: String, default defaultValue: Value? = nil, help: String)
    -> Self
  {
    let names = Value.allCases.map(\.rawValue)
    return TypedOption(
      name, value: names.joined(separator: "|"), default: defaultValue,
      showDefault: { $0.rawValue }, help: help,
      expected: "one of \(names.map { "'\($0)'" }.joined(separator: ", "))",
      convert: { Value(rawValue: $0) })
  }
}

/// A flag declared once (`--json`).
public struct FlagOption: Sendable {
  public let spec: OptionSpec

  public init(_ name: String, short: String? = nil, help: String) {
    spec = OptionSpec(name, short: short, help: help)
  }

  /// Whether the flag was given.
  public func isSet(in arguments: ParsedArguments) -> Bool { arguments.flag(spec.name) }
}

extension String {
  var trimmingSpaces: String {
    var text = Substring(self)
    while text.first == " " { text = text.dropFirst() }
    while text.last == " " { text = text.dropLast() }
    return String(text)
  }
}
