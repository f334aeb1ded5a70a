import FlareAdapters
import FlareArchitectures
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
  /// What was compared: `logits` (Llama: every position's next-token logits; an encoder with
  /// a classification head: each prompt's class logits) or `hidden states` (an encoder
  /// without one: every token's output vector; "top-1" is then its largest component).
  public var quantity = "logits"
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
    guard let source = try? WeightSource(path: basePath),
      let architecture = try? source.architecture()
    else { return (nil, "Flare cannot read the base model's architecture") }
    if ["bert", "roberta", "xlm-roberta"].contains(architecture) {
      return try verifyEncoderForward(
        output: output, basePath: basePath, source: source, adapters: adapters, report: report)
    }
    guard ModelFamily.named(architecture) != nil else {
      return (
        nil,
        "the forward-pass check runs \(ModelFamily.displayNames) models and BERT/XLM-R encoders"
      )
    }
    // Every merged tensor F32: both sides in F32, held to the F32 bound. Otherwise quantized
    // matrices stay as their files store them on both sides (the memory of the files) and the
    // differences are reported.
    let exact = report.tensors.allSatisfy { $0.outputType == "F32" }
    let compute: ComputeMode = exact ? .f32 : .quantized
    let base: LlamaModel
    do {
      base = try LlamaModel(source: source, compute: compute)
    } catch let error as FlareError {
      return (nil, "Flare cannot run this base model (\(error.message))")
    }
    let mergedSource = try WeightSource(path: output)
    if mergedSource.gguf == nil, mergedSource.contains("score.weight") {
      return try verifyLlamaClassifier(
        output: output, base: base, source: source, adapters: adapters, report: report)
    }
    do {
      try base.attach(adapters: adapters.map { ($0.adapter, $0.weight) })
    } catch let error as FlareError {
      return (nil, "the adapters cannot be applied unmerged (\(error.message))")
    }
    let merged = try LlamaModel(path: output, compute: compute)
    let prompts = llamaPrompts(source: source, vocab: base.config.vocabSize)
    let comparison = try merged.compare(with: base, prompts: prompts)
    let check = ForwardCheck(comparison: comparison, prompts: prompts.count, exact: exact)
    if exact && !(comparison.maxAbsDifference <= ForwardCheck.exactTolerance) {
      throw FlareError(
        "merge", .invalidArgument,
        "verification failed: the merged model's logits differ from base + adapters by \(comparison.maxAbsDifference) (allowed \(ForwardCheck.exactTolerance))",
        path: output)
    }
    return (check, nil)
  }

  /// The built-in prompts tokenized by the base's tokenizer, or without a usable tokenizer,
  /// fixed ids spread over the vocabulary.
  static func llamaPrompts(source: WeightSource, vocab: Int) -> [[Int]] {
    var prompts: [[Int]]
    if let tokenizer = try? source.tokenizer() {
      prompts = verifyPrompts.map { tokenizer.encode($0) }
    } else {
      prompts = (0..<3).map { p in (0..<12).map { ($0 * 7919 + p * 104_729 + 13) % vocab } }
    }
    return prompts.filter { !$0.isEmpty }
  }

  /// The encoder form of ``verifyForward(output:basePath:adapters:report:)``: the merged
  /// encoder against the base with the adapters' LoRA applied unmerged and, when the merged
  /// model has a sequence-classification head, the head the adapters saved (their
  /// `modules_to_save`, else the base's own): class logits of each prompt; without a head,
  /// every token's hidden state.
  static func verifyEncoderForward(
    output: String, basePath: String, source: WeightSource, adapters: [WeightedAdapter],
    report: MergeReport
  ) throws -> (check: ForwardCheck?, reason: String?) {
    guard isDirectory(output) else {
      return (nil, "the output is a single .safetensors file, without the config an encoder needs")
    }
    let base: BERTModel
    do {
      base = try BERTModel.load(path: basePath)
    } catch let error as FlareError {
      return (nil, "Flare cannot run this base model (\(error.message))")
    }
    // The saved head runs as the head below; the LoRA layers are attached.
    var unmerged = adapters.map { ($0.adapter, $0.weight) }
    for i in unmerged.indices { unmerged[i].0.replacements = [] }
    do {
      try base.attach(adapters: unmerged)
    } catch let error as FlareError {
      return (nil, "the adapters cannot be applied unmerged (\(error.message))")
    }
    let merged = try BERTModel.load(path: output)
    let limit = base.config.maxPositions - (base.config.kind == .xlmRoberta ? 2 : 0)
    var prompts: [[Int]]
    if let tokenizer = try? source.tokenizer() {
      prompts = verifyPrompts.map { Array(tokenizer.encode($0).prefix(max(1, limit))) }
    } else {
      let vocab = base.config.vocab
      prompts = (0..<3).map { p in (0..<12).map { ($0 * 7919 + p * 104_729 + 13) % vocab } }
    }
    prompts = prompts.filter { !$0.isEmpty }
    var rowsA: [[Float]] = []
    var rowsB: [[Float]] = []
    var quantity = "logits"
    if merged.labelCount != nil {
      let headAdapter = adapters.first { !$0.adapter.replacements.isEmpty }?.adapter
      let heads = try base.savedClassificationHead(adapter: headAdapter).tensors
      rowsA = try merged.logits(tokens: prompts)
      rowsB = try base.logits(tokens: prompts, heads: heads)
    } else {
      quantity = "hidden states"
      let c = base.config.hidden
      for ids in prompts {
        let a = try merged.hiddenStates(tokens: [ids])
        let b = try base.hiddenStates(tokens: [ids])
        for position in 0..<ids.count {
          rowsA.append(Array(a[(position * c)..<((position + 1) * c)]))
          rowsB.append(Array(b[(position * c)..<((position + 1) * c)]))
        }
      }
    }
    return (
      try rowCheck(
        rowsA, rowsB, prompts: prompts.count, quantity: quantity, model: "encoder",
        output: output, report: report), nil
    )
  }

  /// The Llama form of the check when the merged folder has a `score` head
  /// (`LlamaForSequenceClassification`): each prompt's class logits from the merged model
  /// against the base with the adapters' LoRA attached and the head they saved (else the
  /// base's own).
  static func verifyLlamaClassifier(
    output: String, base: LlamaModel, source: WeightSource, adapters: [WeightedAdapter],
    report: MergeReport
  ) throws -> (check: ForwardCheck?, reason: String?) {
    var unmerged = adapters.map { ($0.adapter, $0.weight) }
    for i in unmerged.indices { unmerged[i].0.replacements = [] }
    do {
      try base.attach(adapters: unmerged)
    } catch let error as FlareError {
      return (nil, "the adapters cannot be applied unmerged (\(error.message))")
    }
    let merged = try LlamaModel(path: output)
    let headAdapter = adapters.first { !$0.adapter.replacements.isEmpty }?.adapter
    let head = try base.savedClassificationHead(adapter: headAdapter).tensors.values.first!
    let baseScore = Weight(name: "score.weight", shape: head.shape, values: head.values)
    let mergedScore = try merged.source.weight("score.weight")
    let prompts = llamaPrompts(source: source, vocab: base.config.vocabSize)
    var rowsA: [[Float]] = []
    var rowsB: [[Float]] = []
    for ids in prompts {
      rowsA += try merged.classificationLogits(tokens: [ids], score: mergedScore)
      rowsB += try base.classificationLogits(tokens: [ids], score: baseScore)
    }
    return (
      try rowCheck(
        rowsA, rowsB, prompts: prompts.count, quantity: "logits", model: "classifier",
        output: output, report: report), nil
    )
  }

  /// Compares the merged model's rows with base + adapters' (one row per prompt or
  /// position), held to the F32 bound when every merged tensor is F32.
  static func rowCheck(
    _ rowsA: [[Float]], _ rowsB: [[Float]], prompts: Int, quantity: String, model: String,
    output: String, report: MergeReport
  ) throws -> ForwardCheck {
    var comparison = LogitComparison()
    for (row, (a, b)) in zip(rowsA, rowsB).enumerated() where !a.isEmpty {
      comparison.add(prompt: row, reference: a, candidate: b, vocab: a.count)
    }
    let exact = report.tensors.allSatisfy { $0.outputType == "F32" }
    var check = ForwardCheck(comparison: comparison, prompts: prompts, exact: exact)
    check.quantity = quantity
    if exact && !(comparison.maxAbsDifference <= ForwardCheck.exactTolerance) {
      throw FlareError(
        "merge", .invalidArgument,
        "verification failed: the merged \(model)'s \(quantity) differ from base + adapters by \(comparison.maxAbsDifference) (allowed \(ForwardCheck.exactTolerance))",
        path: output)
    }
    return check
  }
}
