import FlareTokenizers

extension WeightSource {
  /// The tokenizer stored with the model: a GGUF's `tokenizer.ggml.*` keys, or the folder's
  /// `tokenizer.json` / `vocab.txt`.
  public func tokenizer() throws -> Tokenizer {
    if let gguf { return try Tokenizer.load(gguf: gguf) }
    return try Tokenizer.load(folder: configFolder)
  }
}
