extension Tokenizer {
  /// The tokens ``encode(_:addSpecial:parseSpecial:)`` puts before and after a text when
  /// `addSpecial` is `true` (`[CLS]`/`[SEP]` for BERT, `<s>`/`</s>` for XLM-R, BOS for
  /// Llama-style tokenizers, nothing for GPT-2 style ones), for callers that assemble
  /// sequences themselves (sentence pairs, prompt masks).
  public var specialTokens: (prefix: [Int], suffix: [Int]) { (prefix, suffix) }
}
