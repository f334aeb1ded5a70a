import FlareCore
import FlareModels
import FlareTokenizers

/// Where a model family puts its special tokens around one text or a pair of texts, as the
/// family's transformers tokenizer does with `add_special_tokens=True`.
public enum SequenceLayout: String, Sendable {
  /// BERT (`BertProcessing`): `[CLS] A [SEP]`, pairs `[CLS] A [SEP] B [SEP]` with token type
  /// 1 on `B [SEP]`.
  case bert
  /// RoBERTa / XLM-R (`RobertaProcessing`): `<s> A </s>`, pairs `<s> A </s></s> B </s>`, token
  /// types all 0.
  case roberta
  /// Decoders (Llama and the like): the tokenizer's own prefix and suffix around each text
  /// (`<s> A`, or `A` for tokenizers that add nothing); pairs repeat them (`<s> A <s> B`, as
  /// the Llama tokenizers' pair templates do).
  case decoder

  /// The layout for a `config.json` `model_type` (or a GGUF architecture).
  public init(architecture: String) {
    switch architecture {
    case "bert": self = .bert
    case "roberta", "xlm-roberta", "xlm_roberta": self = .roberta
    default: self = .decoder
    }
  }
}

/// The side padding goes on in a batch.
public enum PaddingSide: String, Sendable {
  case left, right
}

/// One tokenized example, ready to batch.
public struct TokenizedExample: Sendable, Equatable {
  /// The line of the file it came from.
  public var line: Int
  public var tokens: [Int]
  /// BERT segment ids, or `nil` for all zeros.
  public var tokenTypes: [Int]?
  /// Causal LM: transformers' `labels`, aligned with `tokens` (`-100`: no loss); the model
  /// scores position `t` against `labels[t + 1]`.
  public var labels: [Int]?
  /// Classification: the class id.
  public var classIndex: Int?
  /// Whether truncation to the maximum length shortened it.
  public var truncated: Bool
  /// FLARE: the parallel English text's tokens (fused position by position with `tokens`).
  public var source: [Int]?

  public init(
    line: Int, tokens: [Int], tokenTypes: [Int]? = nil, labels: [Int]? = nil,
    classIndex: Int? = nil, truncated: Bool = false
  ) {
    self.line = line
    self.tokens = tokens
    self.tokenTypes = tokenTypes
    self.labels = labels
    self.classIndex = classIndex
    self.truncated = truncated
  }

  /// How many loss terms it contributes: label tokens after the shift (causal LM), or 1.
  public var scoredCount: Int {
    guard let labels else { return 1 }
    return labels.dropFirst().reduce(0) { $0 + ($1 == -100 ? 0 : 1) }
  }
}

/// The tokenized examples of one file and what tokenization did to them.
public struct EncodedData: Sendable {
  public var examples: [TokenizedExample]
  /// Examples shortened to the maximum length.
  public var truncatedCount: Int
  /// Lines left out because nothing in them carries a loss (fewer than two tokens, or a
  /// completion truncated away).
  public var droppedLines: [Int]
  /// Tokens over all examples (no padding).
  public var tokenCount: Int { examples.reduce(0) { $0 + $1.tokens.count } }
  /// Loss terms over all examples.
  public var scoredCount: Int { examples.reduce(0) { $0 + $1.scoredCount } }
}

/// Turns examples into token ids with the model's own tokenizer, the way transformers
/// tokenizers and TRL's SFT trainer do:
///
/// - `{"text"}`: `tokenizer(text)` (with the tokenizer's special tokens), then EOS appended
///   unless the ids already end with it; every token is a label.
/// - `{"prompt","completion"}`: `tokenizer(prompt + completion)` + EOS, labels `-100` on the
///   first `len(tokenizer(prompt))` positions (TRL's completion mask).
/// - Causal LM sequences longer than `maxLength` keep their first `maxLength` tokens (TRL's
///   `keep_start`).
/// - Classification: the texts encoded without special tokens, truncated `longest_first` as
///   the tokenizers library does it (a single text keeps its first tokens; of a pair, the
///   shorter text keeps its length when the longer can absorb the cut, otherwise the budget is
///   split, the larger half to the originally longer text), so that the assembled sequence
///   (``SequenceLayout``) fits `maxLength`.
public struct ExampleEncoder: Sendable {
  public let tokenizer: Tokenizer
  public let layout: SequenceLayout
  public let maxLength: Int
  /// The model's vocabulary size: an id at or above it means the tokenizer is not the model's.
  public let vocabularySize: Int?

  public init(tokenizer: Tokenizer, layout: SequenceLayout, maxLength: Int, vocabularySize: Int?) {
    self.tokenizer = tokenizer
    self.layout = layout
    self.maxLength = maxLength
    self.vocabularySize = vocabularySize
  }

  /// The number of special tokens the layout adds around one text, or two.
  public func specialCount(pair: Bool) -> Int {
    let (prefix, suffix) = tokenizer.specialTokens
    guard pair else { return prefix.count + suffix.count }
    switch layout {
    case .bert: return prefix.count + 2 * suffix.count
    case .roberta: return prefix.count + 3 * suffix.count
    case .decoder: return 2 * (prefix.count + suffix.count)
    }
  }

  /// Tokenizes every example of a file.
  /// - Parameters:
  ///   - examples: The file's examples.
  ///   - path: The file, for errors.
  ///   - labels: The training file's classes (classification).
  /// - Throws: ``TrainingDataError`` `.unknownLabel` for a label the training file does not
  ///   have, `.tokenizerMismatch` for a token id outside the model's vocabulary.
  public func encode(_ examples: [RawExample], path: String, labels: LabelSet?)
    throws(TrainingDataError) -> EncodedData
  {
    var result = EncodedData(examples: [], truncatedCount: 0, droppedLines: [])
    result.examples.reserveCapacity(examples.count)
    for example in examples {
      var encoded = try encode(example, path: path, labels: labels)
      if let source = example.source {
        // The source as one text with the model's special tokens, cut to the maximum length
        // (the reference's source is the prompt alone: no answer, no EOS added).
        let single = classification(text: source, pair: nil, classIndex: 0, line: example.line)
        encoded.source = single.tokens
      }
      if let vocabularySize,
        let bad = (encoded.tokens + (encoded.source ?? [])).first(where: { $0 >= vocabularySize })
      {
        throw TrainingDataError(
          .tokenizerMismatch, path: path, line: example.line,
          "token id \(bad) is outside the model's vocabulary of \(vocabularySize) ids: the tokenizer does not belong to this model"
        )
      }
      if encoded.truncated { result.truncatedCount += 1 }
      if encoded.scoredCount == 0 {
        result.droppedLines.append(example.line)
        continue
      }
      result.examples.append(encoded)
    }
    return result
  }

  func encode(_ example: RawExample, path: String, labels: LabelSet?) throws(TrainingDataError)
    -> TokenizedExample
  {
    let eos = tokenizer.eos
    switch example.content {
    case .text(let text):
      var ids = tokenizer.encode(text)
      if let eos, ids.last != eos { ids.append(eos) }
      return causal(ids, scoredFrom: 0, line: example.line)
    case .promptCompletion(let prompt, let completion):
      let promptCount = tokenizer.encode(prompt).count
      var ids = tokenizer.encode(prompt + completion)
      if let eos, ids.last != eos { ids.append(eos) }
      return causal(ids, scoredFrom: promptCount, line: example.line)
    case .classification(let text, let pair, let label):
      guard let labels, let index = labels.index(of: label) else {
        let known = labels?.labels.map { "'\($0)'" }.joined(separator: ", ") ?? ""
        throw TrainingDataError(
          .unknownLabel, path: path, line: example.line,
          "label '\(label)' is not one of the training file's labels (\(known))")
      }
      return classification(text: text, pair: pair, classIndex: index, line: example.line)
    }
  }

  func causal(_ ids: [Int], scoredFrom start: Int, line: Int) -> TokenizedExample {
    let kept = Array(ids.prefix(maxLength))
    var labels = kept
    for i in 0..<min(start, labels.count) { labels[i] = -100 }
    return TokenizedExample(
      line: line, tokens: kept, tokenTypes: nil, labels: labels, classIndex: nil,
      truncated: ids.count > maxLength)
  }

  func classification(text: String, pair: String?, classIndex: Int, line: Int)
    -> TokenizedExample
  {
    let (prefix, suffix) = tokenizer.specialTokens
    var first = tokenizer.encode(text, addSpecial: false)
    var second = pair.map { tokenizer.encode($0, addSpecial: false) }
    let budget = max(0, maxLength - specialCount(pair: second != nil))
    var truncated = false
    if let b = second, first.count + b.count > budget {
      // The tokenizers library's longest_first for pairs: the shorter text keeps its length
      // if the longer one can absorb the cut, otherwise they share the budget (the
      // originally shorter one gets the smaller half).
      var short = min(first.count, b.count)
      var long = max(first.count, b.count)
      long = short > budget ? short : max(short, budget - short)
      if short + long > budget {
        short = budget / 2
        long = short + budget % 2
      }
      let firstIsLonger = first.count > b.count
      first = Array(first.prefix(firstIsLonger ? long : short))
      second = Array(b.prefix(firstIsLonger ? short : long))
      truncated = true
    } else if first.count > budget {
      first.removeLast(first.count - budget)
      truncated = true
    }
    var tokens = prefix + first + suffix
    var types: [Int]?
    if let second {
      switch layout {
      case .bert:
        types =
          [Int](repeating: 0, count: tokens.count)
          + [Int](
            repeating: 1, count: second.count + suffix.count)
        tokens += second + suffix
      case .roberta:
        tokens += suffix + second + suffix
      case .decoder:
        tokens += prefix + second + suffix
      }
    }
    return TokenizedExample(
      line: line, tokens: tokens, tokenTypes: types, labels: nil, classIndex: classIndex,
      truncated: truncated)
  }
}

/// Pads examples into a ``TrainingBatch`` (to the longest example of the batch).
public struct Collator: Sendable {
  /// The id written at padded positions (they are masked, so it only matters to models that
  /// derive positions from it, like XLM-R).
  public let padID: Int
  public let side: PaddingSide
  /// Pad every batch to this many tokens instead of its longest example (FLARE pads target
  /// and source to `--max-length`, as the reference does).
  public let width: Int?

  public init(padID: Int, side: PaddingSide, width: Int? = nil) {
    self.padID = padID
    self.side = side
    self.width = width
  }

  /// The batch of `examples` (with their sources, padded the same way, if they have them).
  public func batch(_ examples: [TokenizedExample]) -> TrainingBatch {
    let longest = examples.map { max($0.tokens.count, $0.source?.count ?? 0) }.max() ?? 0
    let width = max(self.width ?? 0, longest)
    func pad<T>(_ row: [T], with value: T) -> [T] {
      let filler = [T](repeating: value, count: width - row.count)
      return side == .right ? row + filler : filler + row
    }
    let tokens = examples.map { pad($0.tokens, with: padID) }
    let mask = examples.map { pad([Bool](repeating: true, count: $0.tokens.count), with: false) }
    var types: [[Int]]?
    if examples.contains(where: { $0.tokenTypes != nil }) {
      types = examples.map {
        pad($0.tokenTypes ?? [Int](repeating: 0, count: $0.tokens.count), with: 0)
      }
    }
    let targets: TrainingBatch.Targets
    if examples.first?.labels != nil {
      targets = .tokens(examples.map { pad($0.labels ?? [], with: -100) })
    } else {
      targets = .classes(examples.map { $0.classIndex ?? 0 })
    }
    var batch = TrainingBatch(tokens: tokens, mask: mask, tokenTypes: types, targets: targets)
    if examples.contains(where: { $0.source != nil }) {
      batch.source = examples.map { pad($0.source ?? [], with: padID) }
      batch.sourceMask = examples.map {
        pad([Bool](repeating: true, count: $0.source?.count ?? 0), with: false)
      }
    }
    return batch
  }
}
