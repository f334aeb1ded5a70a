import FlareCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Runs a tool's body with Flare's conventions: `--help` to stdout (exit 0), usage errors to
/// stderr with the usage line (exit 64), runtime errors as `tool: error: message` (exit 1).
public enum ToolMain {
  /// Parses `CommandLine.arguments` and runs `body`, then exits the process.
  public static func run(
    _ spec: CommandSpec, arguments: [String] = Array(CommandLine.arguments.dropFirst()),
    body: (ParsedArguments) throws -> ExitStatus
  ) -> Never {
    CleanupOnSignal.install()
    exit(runReturningStatus(spec, arguments: arguments, body: body).rawValue)
  }

  /// Like ``run(_:arguments:body:)`` but returns the status instead of exiting.
  public static func runReturningStatus(
    _ spec: CommandSpec, arguments: [String], body: (ParsedArguments) throws -> ExitStatus
  ) -> ExitStatus {
    do {
      let parsed = try ArgumentParser.parse(arguments, spec: spec)
      if parsed.helpRequested {
        Console.out(spec.helpText)
        return .success
      }
      return try body(parsed)
    } catch let error as UsageError {
      reportUsage(error, spec: spec)
      return .usage
    } catch let error as FlareError {
      Console.err("\(spec.name): error: \(error)\n")
      return .failure
    } catch {
      Console.err("\(spec.name): error: \(error)\n")
      return .failure
    }
  }

  /// One subcommand of a tool with subcommands: its name, its spec and its body.
  public struct Subcommand: Sendable {
    public let name: String
    public let spec: CommandSpec
    public let run: @Sendable (ParsedArguments) throws -> ExitStatus

    public init(
      _ name: String, _ spec: CommandSpec,
      _ run: @escaping @Sendable (ParsedArguments) throws -> ExitStatus
    ) {
      self.name = name
      self.spec = spec
      self.run = run
    }
  }

  /// Runs the subcommand named by the first argument, then exits the process: `--help` (or no
  /// argument, a usage error) prints the tool's own help; an unknown name is a usage error that
  /// suggests the nearest known name.
  public static func dispatch(
    _ spec: CommandSpec, subcommands: [Subcommand],
    arguments: [String] = Array(CommandLine.arguments.dropFirst())
  ) -> Never {
    guard let first = arguments.first else {
      reportUsage(UsageError("missing expected argument '<subcommand>'"), spec: spec)
      exit(ExitStatus.usage.rawValue)
    }
    if first == "--help" || first == "-h" || first == "help" {
      Console.out(spec.helpText)
      exit(ExitStatus.success.rawValue)
    }
    guard let sub = subcommands.first(where: { $0.name == first }) else {
      var message = "unknown subcommand '\(first)'"
      let near = subcommands.map(\.name).min {
        ArgumentParser.editDistance($0, first) < ArgumentParser.editDistance($1, first)
      }
      if let near, ArgumentParser.editDistance(near, first) <= 2 {
        message += "; did you mean '\(near)'?"
      }
      reportUsage(UsageError(message), spec: spec)
      exit(ExitStatus.usage.rawValue)
    }
    run(sub.spec, arguments: Array(arguments.dropFirst()), body: sub.run)
  }

  /// Prints a usage error as argument-parser does.
  public static func reportUsage(_ error: UsageError, spec: CommandSpec) {
    Console.err(
      "\(spec.name): error: \(error.message)\nUsage: \(spec.usage)\n"
        + "See '\(spec.name) --help' for more information.\n")
  }
}
