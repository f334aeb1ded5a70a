/// Process exit statuses shared by all Flare tools.
public enum ExitStatus: Int32, Sendable {
  /// Success.
  case success = 0
  /// A runtime failure (unreadable or invalid file, I/O error) or a problem found.
  case failure = 1
  /// `EX_USAGE`: the command line is wrong.
  case usage = 64
  /// 128 + SIGINT: stopped by Ctrl-C after saving its state (`flare-train`).
  case interrupted = 130
}

/// An option of a command: a flag (`--json`) or an option taking a value (`--tolerance <x>`).
public struct OptionSpec: Sendable {
  /// Long name with dashes, e.g. `--json`.
  public var name: String
  /// Optional one-letter alias with a dash, e.g. `-q`.
  public var short: String?
  /// The value's placeholder, e.g. `tolerance`; `nil` for a flag.
  public var valueName: String?
  public var help: String
  /// Shown as `(default: x)`.
  public var defaultValue: String?
  /// How many values the option takes after it (`--diff <a> <b>` takes 2).
  public var arity: Int

  public init(
    _ name: String, short: String? = nil, value valueName: String? = nil, arity: Int = 1,
    default defaultValue: String? = nil, help: String
  ) {
    self.name = name
    self.short = short
    self.valueName = valueName
    self.help = help
    self.defaultValue = defaultValue
    self.arity = valueName == nil ? 0 : arity
  }

  /// `--tolerance <tolerance>` or `--json`.
  public var label: String {
    var text = short.map { "\($0), \(name)" } ?? name
    if let valueName {
      text += String(repeating: " <\(valueName)>", count: max(1, arity))
    }
    return text
  }

  var usageLabel: String {
    guard let valueName else { return name }
    return name + String(repeating: " <\(valueName)>", count: max(1, arity))
  }
}

/// A positional argument.
public struct PositionalSpec: Sendable {
  public var name: String
  public var help: String
  /// Takes one or more values.
  public var variadic: Bool
  public var optional: Bool

  public init(_ name: String, help: String, variadic: Bool = false, optional: Bool = false) {
    self.name = name
    self.help = help
    self.variadic = variadic
    self.optional = optional
  }
}

/// What a command accepts, used for parsing and for rendering `--help`.
public struct CommandSpec: Sendable {
  public var name: String
  public var overview: String
  public var positionals: [PositionalSpec]
  public var options: [OptionSpec]
  /// Extra paragraphs printed after the options.
  public var discussion: String?
  /// A hand-written usage line for commands with many options (`tool --a <x> [<options>]`);
  /// `nil` lists every option.
  public var usageLine: String?

  public init(
    name: String, overview: String, positionals: [PositionalSpec], options: [OptionSpec],
    discussion: String? = nil
  ) {
    self.name = name
    self.overview = overview
    self.positionals = positionals
    self.options = options
    self.discussion = discussion
  }

  static let helpOption = OptionSpec("--help", short: "-h", help: "Show help information.")

  /// All options including `--help`.
  var allOptions: [OptionSpec] { options + [Self.helpOption] }

  /// `flare-inspect <path> ... [--json] [--tolerance <tolerance>]`.
  public var usage: String {
    if let usageLine { return usageLine }
    var parts = [name]
    for positional in positionals {
      var text = "<\(positional.name)>"
      if positional.variadic { text += " ..." }
      parts.append(positional.optional ? "[\(text)]" : text)
    }
    for option in options { parts.append("[\(option.usageLabel)]") }
    return parts.joined(separator: " ")
  }

  /// The full `--help` text, laid out as argument-parser does (a 26-column label field).
  public var helpText: String {
    var lines = ["OVERVIEW: \(overview)", "", "USAGE: \(usage)", ""]
    if !positionals.isEmpty {
      lines.append("ARGUMENTS:")
      for positional in positionals {
        lines += Self.row(label: "<\(positional.name)>", help: positional.help)
      }
      lines.append("")
    }
    lines.append("OPTIONS:")
    for option in allOptions {
      var help = option.help
      if let value = option.defaultValue { help += " (default: \(value))" }
      lines += Self.row(label: option.label, help: help)
    }
    if let discussion {
      lines.append("")
      lines.append(discussion)
    }
    return lines.joined(separator: "\n") + "\n"
  }

  private static func row(label: String, help: String) -> [String] {
    let indent = "  "
    let column = 26
    let text = indent + label
    if text.count + 2 <= column {
      return [text + String(repeating: " ", count: column - text.count) + help]
    }
    return [text, String(repeating: " ", count: column) + help]
  }
}
