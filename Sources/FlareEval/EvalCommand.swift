import FlareCLI
import FlareCore

/// `flare-eval`: run models in-process (generate, score, embed, compare).
public enum EvalCommand {
  public static let spec = CommandSpec(
    name: "flare-eval",
    overview: "Run Llama and BERT/XLM-R models in-process: generate, score, embed, compare.",
    positionals: [], options: [], discussion: "")

  public static func run(_ arguments: ParsedArguments) throws -> ExitStatus {
    throw FlareError("eval", .unsupported, "flare-eval is being built")
  }
}
