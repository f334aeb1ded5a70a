import FlareAdapters
import FlareCore
import FlareModels
import FlareTokenizers

/// The forward-pass part of `flare-merge --verify`: the merged model against the base with the
/// adapters applied unmerged, on a few prompts.
public struct ForwardCheck: Sendable {
  public var comparison: LogitComparison
  public var prompts: Int
  /// Whether the comparison is held to the F32 bound (every merged tensor stored as F32).
  public var exact: Bool
  /// The largest logit difference allowed when `exact`.
  public static let exactTolerance: Float = 1e-3
}

extension Merger {
  /// Prompts in several languages, as users would send them.
  static let verifyPrompts = [
    "Once upon a time, there was a little",
    "The capital of France is",
    "La capital de España es Madrid, y la de Francia",
    "def add(a, b):\n    return",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
  ]

  /// Compares the merged Llama model at `output` with `basePath` plus `adapters` applied
  /// unmerged (the same code as `flare-eval compare`).
  ///
  /// - Returns: `nil` with the reason when the check does not apply (not a Llama model, or an
  ///   adapter kind that only exists merged).
  /// - Throws: ``FlareError`` if every merged tensor is F32 and a logit differs by more than
  ///   ``ForwardCheck/exactTolerance``.
  public static func verifyForward(
    output: String, basePath: String, adapters: [WeightedAdapter], report: MergeReport
  ) throws -> (check: ForwardCheck?, reason: String?) {
    guard let source = try? WeightSource(path: basePath), (try? source.architecture()) == "llama"
    else { return (nil, "the forward-pass check runs Llama models") }
    let base: LlamaModel
    do {
      base = try LlamaModel(source: source)
    } catch let error as FlareError {
      return (nil, "Flare cannot run this base model (\(error.message))")
    }
    do {
      try base.attach(adapters: adapters.map { ($0.adapter, $0.weight) })
    } catch let error as FlareError {
      return (nil, "the adapters cannot be applied unmerged (\(error.message))")
    }
    let merged = try LlamaModel(path: output)
    var prompts: [[Int]]
    if let tokenizer = try? source.tokenizer() {
      prompts = verifyPrompts.map { tokenizer.encode($0) }
    } else {
      // No usable tokenizer: fixed ids spread over the vocabulary.
      let vocab = base.config.vocabSize
      prompts = (0..<3).map { p in (0..<12).map { ($0 * 7919 + p * 104_729 + 13) % vocab } }
    }
    prompts = prompts.filter { !$0.isEmpty }
    let comparison = try merged.compare(with: base, prompts: prompts)
    let exact = report.tensors.allSatisfy { $0.outputType == "F32" }
    let check = ForwardCheck(comparison: comparison, prompts: prompts.count, exact: exact)
    if exact && !(comparison.maxAbsDifference <= ForwardCheck.exactTolerance) {
      throw FlareError(
        "merge", .invalidArgument,
        "verification failed: the merged model's logits differ from base + adapters by \(comparison.maxAbsDifference) (allowed \(ForwardCheck.exactTolerance))",
        path: output)
    }
    return (check, nil)
  }
}
