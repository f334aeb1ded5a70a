import FlareAdapters
import FlareCore
import FlareGGUF
import FlareModels
import FlareTokenizers

/// Opens models and their tokenizers for the subcommands.
enum LoadedModel {
  /// The architecture a path holds: `llama`, `bert` or `xlm-roberta`.
  static func architecture(_ path: String) throws -> String {
    if path.hasSuffix(".gguf") {
      let file = try GGUFFile(path: path)
      return file.value("general.architecture")?.stringValue ?? "unknown"
    }
    let folder = isDirectory(path) ? path : AtomicFileWriter.parentFolder(of: path)
    let configPath = "\(folder)/config.json"
    guard fileExists(configPath) else {
      throw FlareError(
        "eval", .invalidArgument, "not a model: no config.json and not a .gguf file", path: path)
    }
    let config = try JSONParser.parse(try readSmallFile(configPath))
    return config["model_type"]?.stringValue ?? "unknown"
  }

  /// The tokenizer stored with a model (GGUF keys, or the folder's tokenizer files).
  static func tokenizer(_ path: String, gguf: GGUFFile? = nil) throws -> Tokenizer {
    if let gguf { return try Tokenizer.load(gguf: gguf) }
    if path.hasSuffix(".gguf") { return try Tokenizer.load(gguf: try GGUFFile(path: path)) }
    return try Tokenizer.load(
      folder: isDirectory(path) ? path : AtomicFileWriter.parentFolder(of: path))
  }

  /// A Llama model with its tokenizer and run-time adapters.
  static func llama(_ path: String, adapters: [(adapter: PEFTAdapter, weight: Double)]) throws -> (
    LlamaModel, Tokenizer
  ) {
    let kind = try architecture(path)
    guard kind == "llama" else {
      throw FlareError(
        "eval", .unsupported,
        "this subcommand runs Llama models; the model is '\(kind)' (use 'embed' for encoders)",
        path: path)
    }
    let model = try LlamaModel(path: path)
    if !adapters.isEmpty { try model.attach(adapters: adapters) }
    return (model, try tokenizer(path, gguf: model.source.gguf))
  }

  /// A BERT or XLM-R encoder with its tokenizer and run-time adapters.
  static func encoder(_ path: String, adapters: [(adapter: PEFTAdapter, weight: Double)]) throws
    -> (
      BERTModel, Tokenizer
    )
  {
    let kind = try architecture(path)
    guard ["bert", "roberta", "xlm-roberta"].contains(kind) else {
      throw FlareError(
        "eval", .unsupported,
        "'embed' runs BERT, RoBERTa and XLM-R encoders; the model is '\(kind)'", path: path)
    }
    let model = try BERTModel.load(path: path)
    if !adapters.isEmpty { try model.attach(adapters: adapters) }
    return (model, try tokenizer(path))
  }
}
