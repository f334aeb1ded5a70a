import FlareAdapters
import FlareArchitectures
import FlareCore
import FlareModels
import FlareTokenizers

/// Opens models and their tokenizers for the subcommands.
enum LoadedModel {
  /// The tokenizer stored with a model (GGUF keys, or the folder's tokenizer files).
  static func tokenizer(_ path: String) throws -> Tokenizer {
    try WeightSource(path: path).tokenizer()
  }

  /// A decoder of a family in ``ModelFamily`` with its tokenizer and run-time adapters.
  static func llama(
    _ path: String, adapters: [(adapter: PEFTAdapter, weight: Double)],
    compute: ComputeMode = .quantized
  ) throws -> (LlamaModel, Tokenizer) {
    let source = try WeightSource(path: path)
    let kind = try source.architecture()
    guard ModelFamily.named(kind) != nil else {
      throw FlareError(
        "eval", .unsupported,
        "this subcommand runs \(ModelFamily.displayNames) models; the model is '\(kind)' (use 'embed' for encoders)",
        path: path)
    }
    let model = try LlamaModel(source: source, compute: compute)
    if !adapters.isEmpty { try model.attach(adapters: adapters) }
    return (model, try source.tokenizer())
  }

  /// A BERT or XLM-R encoder with its tokenizer and run-time adapters.
  static func encoder(_ path: String, adapters: [(adapter: PEFTAdapter, weight: Double)]) throws
    -> (BERTModel, Tokenizer)
  {
    let source = try WeightSource(path: path)
    let kind = try source.architecture()
    guard ["bert", "roberta", "xlm-roberta"].contains(kind) else {
      throw FlareError(
        "eval", .unsupported,
        "'embed' runs BERT, RoBERTa and XLM-R encoders; the model is '\(kind)'", path: path)
    }
    let model = try BERTModel.load(path: path)
    if !adapters.isEmpty { try model.attach(adapters: adapters) }
    return (model, try source.tokenizer())
  }
}
