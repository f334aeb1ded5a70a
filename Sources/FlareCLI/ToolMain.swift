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

  /// Prints a usage error as argument-parser does.
  public static func reportUsage(_ error: UsageError, spec: CommandSpec) {
    Console.err(
      "\(spec.name): error: \(error.message)\nUsage: \(spec.usage)\n"
        + "See '\(spec.name) --help' for more information.\n")
  }
}
