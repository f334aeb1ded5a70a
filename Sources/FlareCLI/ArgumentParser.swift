/// A command-line usage error (exit status 64).
public struct UsageError: Error, Equatable, Sendable, CustomStringConvertible {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

/// The parsed command line.
public struct ParsedArguments: Sendable {
  /// Flags that were given (long names).
  public var flags: Set<String> = []
  /// Values of options, by long name, in order given (each use contributes `arity` values).
  public var values: [String: [String]] = [:]
  public var positionals: [String] = []
  /// `--help` or `-h` was given.
  public var helpRequested = false

  /// Whether flag `name` (e.g. `--json`) was given.
  public func flag(_ name: String) -> Bool { flags.contains(name) }

  /// The last value of option `name`, or `nil`.
  public func value(_ name: String) -> String? { values[name]?.last }

  /// All values of option `name`.
  public func allValues(_ name: String) -> [String] { values[name] ?? [] }

  /// The value of `name` parsed as a `Double`.
  /// - Throws: ``UsageError`` if it is not a number.
  public func double(_ name: String, spec: CommandSpec) throws(UsageError) -> Double? {
    guard let text = value(name) else { return nil }
    guard let number = Double(text), number.isFinite else {
      let label = spec.options.first { $0.name == name }?.usageLabel ?? name
      throw UsageError("the value '\(text)' is invalid for '\(label)'")
    }
    return number
  }

  /// The value of `name` parsed as an `Int`.
  /// - Throws: ``UsageError`` if it is not an integer.
  public func int(_ name: String, spec: CommandSpec) throws(UsageError) -> Int? {
    guard let text = value(name) else { return nil }
    guard let number = Int(text) else {
      let label = spec.options.first { $0.name == name }?.usageLabel ?? name
      throw UsageError("the value '\(text)' is invalid for '\(label)'")
    }
    return number
  }
}

/// Parses command lines with argument-parser's conventions: `--name value` and `--name=value`,
/// `--` ends options, `-h`/`--help`, unknown options suggested by edit distance.
public enum ArgumentParser {
  /// Parses `arguments` (without the program name) against `spec`.
  /// - Throws: ``UsageError`` for unknown options, missing values or missing positionals.
  public static func parse(_ arguments: [String], spec: CommandSpec) throws(UsageError)
    -> ParsedArguments
  {
    var result = ParsedArguments()
    var index = 0
    var optionsEnded = false
    while index < arguments.count {
      let argument = arguments[index]
      index += 1
      if optionsEnded || !argument.hasPrefix("-") || argument == "-" {
        result.positionals.append(argument)
        continue
      }
      if argument == "--" {
        optionsEnded = true
        continue
      }
      var name = argument
      var inlineValue: String?
      if argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") {
        name = String(argument[..<equals])
        inlineValue = String(argument[argument.index(after: equals)...])
      }
      if name == "--help" || name == "-h" {
        result.helpRequested = true
        continue
      }
      guard let option = spec.options.first(where: { $0.name == name || $0.short == name }) else {
        throw UsageError(unknownOptionMessage(name, spec: spec))
      }
      if option.valueName == nil {
        if inlineValue != nil {
          throw UsageError("option '\(option.name)' does not take a value")
        }
        result.flags.insert(option.name)
        continue
      }
      var collected: [String] = []
      if let inlineValue { collected.append(inlineValue) }
      while collected.count < option.arity {
        // A following option is not a value: `--diff --quiet a b` is missing its paths.
        guard index < arguments.count, !looksLikeOption(arguments[index], spec: spec) else {
          throw UsageError("missing value for '\(option.usageLabel)'")
        }
        collected.append(arguments[index])
        index += 1
      }
      result.values[option.name, default: []] += collected
    }
    if result.helpRequested { return result }
    let required = spec.positionals.filter { !$0.optional }
    if result.positionals.count < required.count {
      let missing = required[result.positionals.count]
      throw UsageError("missing expected argument '<\(missing.name)>'")
    }
    if !spec.positionals.contains(where: \.variadic),
      result.positionals.count > spec.positionals.count
    {
      throw UsageError("unexpected argument '\(result.positionals[spec.positionals.count])'")
    }
    return result
  }

  /// Whether `argument` is an option rather than a value: `--anything`, or a short option the
  /// command knows (`-q`, `-h`). Negative numbers and `-` stay values.
  static func looksLikeOption(_ argument: String, spec: CommandSpec) -> Bool {
    if argument.hasPrefix("--") && argument.count > 2 { return true }
    return spec.allOptions.contains { $0.short == argument }
  }

  static func unknownOptionMessage(_ name: String, spec: CommandSpec) -> String {
    var message = "unknown option '\(name)'"
    let candidates = spec.allOptions.map(\.name)
    let scored = candidates.map { ($0, editDistance(name, $0)) }.filter {
      $0.1 <= max(2, name.count / 3)
    }
    if let best = scored.min(by: { $0.1 < $1.1 }) {
      message += ". Did you mean '\(best.0)'?"
    }
    return message
  }

  /// Levenshtein distance between two strings (by Unicode scalar).
  public static func editDistance(_ a: String, _ b: String) -> Int {
    let x = Array(a.unicodeScalars)
    let y = Array(b.unicodeScalars)
    if x.isEmpty { return y.count }
    if y.isEmpty { return x.count }
    var previous = Array(0...y.count)
    var current = [Int](repeating: 0, count: y.count + 1)
    for i in 1...x.count {
      current[0] = i
      for j in 1...y.count {
        let cost = x[i - 1] == y[j - 1] ? 0 : 1
        current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
      }
      swap(&previous, &current)
    }
    return previous[y.count]
  }
}
