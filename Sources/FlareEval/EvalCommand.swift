import FlareAdapters
import FlareCLI
import FlareCore
import FlareModels
import FlareTensor
import FlareTokenizers
import FlareTrain

#if canImport(Glibc)
  import Glibc
#endif

/// `flare-eval`: run models in-process: generate, score, tokenize, embed, compare, benchmark.
public enum EvalCommand {
  static let model = OptionSpec(
    "--model", value: "path", help: "An HF model folder or a .gguf file.")
  static let adapter = OptionSpec(
    "--adapter", value: "path[:weight]",
    help:
      "A PEFT LoRA folder or llama.cpp LoRA GGUF applied unmerged, optionally weighted (repeatable)."
  )
  static let threads = OptionSpec(
    "--threads", value: "n", help: "OpenBLAS threads (default: all cores).")
  static let json = OptionSpec("--json", help: "Print JSON.")
  static let compute = OptionSpec(
    "--compute", value: "quantized|f32", default: "quantized",
    help: "A GGUF's quantized matrices: run as stored, or dequantized to F32 at load.")
  static let quiet = OptionSpec("--quiet", short: "-q", help: "No progress output.")
  static let exitStatus = """
    EXIT STATUS:
      0 on success, 1 on a failure, 64 on a usage error.
    """

  /// Every subcommand: name, spec, implementation.
  static let subcommands: [ToolMain.Subcommand] = [
    .init("generate", generateSpec, generate),
    .init("logits", logitsSpec, logits),
    .init("tokenize", tokenizeSpec, tokenize),
    .init("embed", embedSpec, embed),
    .init("classify", classifySpec, classify),
    .init("significance", significanceSpec, significance),
    .init("perplexity", perplexitySpec, perplexity),
    .init("compare", compareSpec, compare),
    .init("bench", benchSpec, bench),
  ]

  public static let spec = CommandSpec(
    name: "flare-eval",
    overview:
      "Run Llama, Qwen2, Qwen3, Gemma and BERT/XLM-R models in-process: generate, score, embed, classify, compare.",
    positionals: [PositionalSpec("subcommand", help: "One of the subcommands below.")],
    options: [],
    discussion: """
      SUBCOMMANDS:
        generate    Continue a prompt (greedy by default).
        logits      The prompt's ids and the top logits at its last position.
        tokenize    The token ids of a text.
        embed       One vector per text from an encoder (mean or CLS pooling).
        classify    Accuracy, macro-F1 and confusion matrix of a classifier on labelled data.
        significance  Seed intervals and paired bootstrap between classify --json results.
        perplexity  Perplexity of a text file.
        compare     Logit differences and top-1 agreement between two models.
        bench       Prefill and decode speed.

      See 'flare-eval <subcommand> --help'.

      \(exitStatus)
      """)

  /// Dispatches to the subcommand named by the first argument; never returns.
  public static func main(arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
    ToolMain.dispatch(spec, subcommands: subcommands, arguments: arguments)
  }

  public static func run(_ arguments: ParsedArguments) throws -> ExitStatus {
    throw UsageError("missing expected argument '<subcommand>'")
  }

  // MARK: - Shared pieces

  static func required(_ arguments: ParsedArguments, _ option: OptionSpec) throws -> String {
    guard let value = arguments.value(option.name) else {
      throw UsageError("missing expected option '\(option.label)'")
    }
    return value
  }

  static func adapters(_ arguments: ParsedArguments) throws -> [(
    adapter: PEFTAdapter, weight: Double
  )] {
    try arguments.allValues("--adapter").map { text in
      let (path, weight) = PEFTAdapter.splitWeight(text)
      return (try PEFTAdapter.open(path), weight)
    }
  }

  // MARK: - FLARE adapters

  static let sourceText = OptionSpec(
    "--source-text", value: "text",
    help: "FLARE: the parallel English prompt (without it a FLARE adapter runs target-only).")
  static let flareBaked = OptionSpec(
    "--flare-baked",
    help:
      "FLARE add adapter: the model already holds it folded in (flare-merge); add the source term only."
  )
  static let flareDiscussion = """
    FLARE ADAPTERS:
      An --adapter folder with a flare_config.json is a FLARE adapter; it runs alone. With a
      source (--source-text, or a "source" field of the data) it runs as trained: a source
      pass over the English text with the weights without the adapter, then the target pass
      whose fused modules read the source pass's block inputs; target and source are padded
      to the adapter's max_length on its padding side and fused position by position. Without
      a source it runs target-only: the fused modules act as plain LoRA W + s*B*A (the
      reference's inference_mode, FLARE.md 8.3), and the tool says so. --flare-baked: the
      model is a flare-merge output of an add adapter; the target pass adds only the source
      term s*B*A*x_s and the source pass subtracts the folded LoRA (W1 = W2 - s*B*A), so the
      result equals the unmerged adapter.
    """

  /// The run's FLARE adapter, when an `--adapter` is a FLARE folder (it must then be the only one).
  static func flareAdapter(_ list: [(adapter: PEFTAdapter, weight: Double)]) throws
    -> PEFTAdapter?
  {
    guard list.contains(where: { $0.adapter.flare != nil }) else { return nil }
    guard list.count == 1, list[0].weight == 1 else {
      throw UsageError(
        "a FLARE adapter runs alone and unweighted: give it as the only '--adapter', without ':weight'"
      )
    }
    return list[0].adapter
  }

  /// The FLARE settings a result records.
  static func flareJSON(
    _ config: FLAREConfig, withSource: Bool, baked: Bool, mode: FLAREGenerationSource?
  ) -> JSONValue {
    .object([
      ("fusion", .string(config.fusion.rawValue)), ("causal", .bool(config.causal)),
      ("recipe", .string(withSource ? (baked ? "baked_add" : "fused") : "target_only")),
      ("max_length", .integer(config.maxLength)),
      ("generation_source", mode.map { .string($0.rawValue) } ?? .null),
    ])
  }

  /// The line a text-mode run prints on stderr about its FLARE adapter.
  static func flareNote(_ config: FLAREConfig, withSource: Bool, mode: FLAREGenerationSource?)
    -> String
  {
    guard withSource else { return FLAREInference.targetOnlyNote(config) + "\n" }
    return
      "FLARE: \(config.fusion.rawValue) fused with the source\(mode.map { "; generated positions use the source: \($0.rawValue)" } ?? "")\n"
  }

  /// Loads the model of a Llama subcommand: with a FLARE adapter, the model alone and the
  /// decoder that runs it; otherwise the model with its adapters attached.
  static func llamaModel(_ arguments: ParsedArguments, path: String) throws -> (
    LlamaModel, Tokenizer, FLAREDecoder?
  ) {
    let list = try adapters(arguments)
    let flare = try flareAdapter(list)
    if flare == nil {
      if arguments.value("--source-text") != nil {
        throw UsageError(
          "'--source-text' is for FLARE adapters (an --adapter with flare_config.json)")
      }
      if arguments.flag("--flare-baked") {
        throw UsageError("'--flare-baked' needs a FLARE add adapter as '--adapter'")
      }
    }
    // FLARE adapters run through the evaluation pass, which computes in F32.
    let (model, tokenizer) = try LoadedModel.llama(
      path, adapters: flare == nil ? list : [],
      compute: flare == nil ? try computeMode(arguments) : .f32)
    guard let flare else { return (model, tokenizer, nil) }
    model.trainingThreads = BLAS.threads
    let decoder = try FLAREDecoder(
      model: model, tokenizer: tokenizer, adapter: flare, baked: arguments.flag("--flare-baked"))
    return (model, tokenizer, decoder)
  }

  /// `--compute`: how a GGUF's quantized matrices are run (default: as stored).
  static func computeMode(_ arguments: ParsedArguments) throws -> ComputeMode {
    guard let text = arguments.value("--compute") else { return .quantized }
    guard let mode = ComputeMode(rawValue: text) else {
      throw UsageError("'--compute' must be quantized or f32, not '\(text)'")
    }
    return mode
  }

  static func applyThreads(_ arguments: ParsedArguments, spec: CommandSpec) throws {
    if let n = try arguments.int("--threads", spec: spec) {
      guard n > 0 else { throw UsageError("'--threads' must be at least 1") }
      BLAS.setThreads(n)
    }
  }

  static func double(_ value: Double) -> JSONValue { .exact(value) }

  // MARK: - generate

  static let generateSpec = CommandSpec(
    name: "flare-eval generate",
    overview: "Continue a prompt with a Llama model; prints the continuation only.",
    positionals: [],
    options: [
      model, adapter,
      OptionSpec("--prompt", value: "text", help: "The prompt."),
      OptionSpec("--max-tokens", value: "n", default: "64", help: "Tokens to generate at most."),
      OptionSpec(
        "--temperature", value: "t", default: "0", help: "0 is greedy; above 0 samples."),
      OptionSpec(
        "--top-k", value: "k", default: "0", help: "Sample among the k likeliest (0: all)."),
      OptionSpec(
        "--top-p", value: "p", default: "1", help: "Sample within probability mass p (1: all)."),
      OptionSpec("--seed", value: "s", default: "0", help: "Seed of the sampler."),
      OptionSpec(
        "--no-special", help: "Do not add the model's special tokens (BOS) to the prompt."),
      OptionSpec("--ignore-eos", help: "Keep generating after the end-of-text token."),
      sourceText,
      OptionSpec(
        "--source-mode", value: "aligned|reference", default: "aligned",
        help: "FLARE: how generated positions use the source (see below)."),
      flareBaked, compute, threads, json,
    ],
    discussion: """
      \(flareDiscussion)
      FLARE generation runs the whole sequence again for every token (no KV cache). How the
      generated positions use the source (FLARE.md 3.4), recorded in --json output:
        aligned    as in training: target and source padded to max_length and fused
                   position by position; a generated position beyond max_length (with left
                   padding: every one) fuses the source prompt's last token.
        reference  as the reference implementation: the model without the adapter first
                   generates greedily from the source prompt (up to --max-tokens); every
                   position fuses the states of the last token that run fed to the model.

      \(exitStatus)
      """)

  static func generate(_ arguments: ParsedArguments) throws -> ExitStatus {
    try applyThreads(arguments, spec: generateSpec)
    let (model, tokenizer, decoder) = try llamaModel(
      arguments, path: try required(arguments, EvalCommand.model))
    let modeText = arguments.value("--source-mode") ?? "aligned"
    guard let mode = FLAREGenerationSource(rawValue: modeText) else {
      throw UsageError("the value '\(modeText)' is invalid for '--source-mode <aligned|reference>'")
    }
    let prompt = try required(arguments, OptionSpec("--prompt", value: "text", help: ""))
    let maxTokens = try arguments.int("--max-tokens", spec: generateSpec) ?? 64
    guard maxTokens >= 0 else { throw UsageError("'--max-tokens' must not be negative") }
    var options = SamplingOptions()
    options.temperature = Float(try arguments.double("--temperature", spec: generateSpec) ?? 0)
    options.topK = try arguments.int("--top-k", spec: generateSpec) ?? 0
    options.topP = Float(try arguments.double("--top-p", spec: generateSpec) ?? 1)
    options.seed = UInt64(max(0, try arguments.int("--seed", spec: generateSpec) ?? 0))
    guard options.temperature >= 0, options.topK >= 0, options.topP > 0, options.topP <= 1 else {
      throw UsageError("'--temperature' and '--top-k' must not be negative; '--top-p' is in (0, 1]")
    }
    let ids = tokenizer.encode(prompt, addSpecial: !arguments.flag("--no-special"))
    var stop = Set<Int>()
    if !arguments.flag("--ignore-eos") {
      if let eos = tokenizer.eos { stop.insert(eos) }
      if let eos = model.config.eosTokenID { stop.insert(eos) }
    }
    let streaming = !arguments.flag("--json")
    let source = arguments.value("--source-text").map {
      tokenizer.encode($0, addSpecial: !arguments.flag("--no-special"))
    }
    if let decoder, streaming {
      Console.err(
        flareNote(decoder.config, withSource: source != nil, mode: source.map { _ in mode }))
    }
    var printed = ""
    var generated: [Int] = []
    func emit(_ token: Int) -> Bool {
      generated.append(token)
      if streaming {
        // Print the text as it grows (a token can end in the middle of a character).
        let text = tokenizer.decode(generated.filter { !stop.contains($0) }, skipSpecial: true)
        if text.hasPrefix(printed), !text.hasSuffix("\u{FFFD}") {
          Console.out(String(text.dropFirst(printed.count)))
          printed = text
        }
      }
      return true
    }
    var out: [Int]
    var flare: JSONValue?
    if let decoder {
      let result = try decoder.generate(
        prompt: ids, source: source, mode: mode, maxTokens: maxTokens, sampling: options,
        stop: stop, onToken: emit)
      out = result.generated
      var record = flareJSON(
        decoder.config, withSource: source != nil, baked: arguments.flag("--flare-baked"),
        mode: source == nil ? nil : mode)
      if case .object(var members) = record {
        members.append(("source_ids", source.map { .array($0.map { .integer($0) }) } ?? .null))
        if mode == .reference && source != nil {
          members.append(
            ("source_generated_ids", .array(result.sourceGenerated.map { .integer($0) })))
        }
        record = .object(members)
      }
      flare = record
    } else {
      out = try model.generate(
        prompt: ids, maxTokens: maxTokens, sampling: options, stop: stop, onToken: emit)
    }
    let visible = out.filter { !stop.contains($0) }
    let text = tokenizer.decode(visible, skipSpecial: true)
    if streaming {
      if text.hasPrefix(printed) { Console.out(String(text.dropFirst(printed.count))) }
      Console.out("\n")
    } else {
      Console.out(
        JSONWriter.compact(
          .object(
            [
              ("prompt_ids", .array(ids.map { .integer($0) })),
              ("generated_ids", .array(out.map { .integer($0) })),
              ("text", .string(text)),
            ] + (flare.map { [("flare", $0)] } ?? []))) + "\n")
    }
    return .success
  }

  // MARK: - logits

  static let logitsSpec = CommandSpec(
    name: "flare-eval logits",
    overview: "The prompt's token ids and the top logits at its last position.",
    positionals: [],
    options: [
      model, adapter, OptionSpec("--prompt", value: "text", help: "The prompt."),
      OptionSpec("--top", value: "k", default: "10", help: "How many logits to show."),
      OptionSpec("--no-special", help: "Do not add the model's special tokens (BOS)."),
      sourceText, flareBaked, compute, threads, json,
    ],
    discussion: """
      \(flareDiscussion)
      \(exitStatus)
      """)

  static func logits(_ arguments: ParsedArguments) throws -> ExitStatus {
    try applyThreads(arguments, spec: logitsSpec)
    let (model, tokenizer, decoder) = try llamaModel(
      arguments, path: try required(arguments, EvalCommand.model))
    let prompt = try required(arguments, OptionSpec("--prompt", value: "text", help: ""))
    let k = try arguments.int("--top", spec: logitsSpec) ?? 10
    guard k > 0 else { throw UsageError("'--top' must be at least 1") }
    let ids = tokenizer.encode(prompt, addSpecial: !arguments.flag("--no-special"))
    guard !ids.isEmpty else {
      throw FlareError("eval", .invalidArgument, "the prompt has no tokens")
    }
    let source = arguments.value("--source-text").map {
      tokenizer.encode($0, addSpecial: !arguments.flag("--no-special"))
    }
    let logits: [Float]
    var flare: JSONValue?
    if let decoder {
      logits = try decoder.logits(prompt: ids, source: source, lastOnly: true)
      flare = flareJSON(
        decoder.config, withSource: source != nil, baked: arguments.flag("--flare-baked"),
        mode: nil)
      if !arguments.flag("--json") {
        Console.err(flareNote(decoder.config, withSource: source != nil, mode: nil))
      }
    } else {
      logits = try model.forward(
        tokens: [ids], cache: model.makeCache(batch: 1, capacity: ids.count))
    }
    let order = logits.indices.sorted {
      logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1)
    }
    let top = order.prefix(k)
    if arguments.flag("--json") {
      Console.out(
        JSONWriter.compact(
          .object(
            [
              ("ids", .array(ids.map { .integer($0) })),
              (
                "top",
                .array(top.map { .object([("id", .integer($0)), ("logit", .float(logits[$0]))]) })
              ),
            ] + (flare.map { [("flare", $0)] } ?? []))) + "\n")
    } else {
      Console.out("ids: \(ids.map(String.init).joined(separator: " "))\n")
      for id in top {
        let piece = tokenizer.decode([id])
        Console.out("\(id)\t\(logits[id])\t\(piece.debugDescription)\n")
      }
    }
    return .success
  }

  // MARK: - tokenize

  static let tokenizeSpec = CommandSpec(
    name: "flare-eval tokenize",
    overview: "The token ids of a text, with the model's tokenizer.",
    positionals: [],
    options: [
      model, OptionSpec("--text", value: "text", help: "The text."),
      OptionSpec("--no-special", help: "Do not add the model's special tokens."),
      OptionSpec("--parse-special", help: "Read special-token strings in the text as such."),
      json,
    ],
    discussion: exitStatus)

  static func tokenize(_ arguments: ParsedArguments) throws -> ExitStatus {
    let tokenizer = try LoadedModel.tokenizer(try required(arguments, EvalCommand.model))
    let text = try required(arguments, OptionSpec("--text", value: "text", help: ""))
    let ids = tokenizer.encode(
      text, addSpecial: !arguments.flag("--no-special"),
      parseSpecial: arguments.flag("--parse-special"))
    if arguments.flag("--json") {
      Console.out(JSONWriter.compact(.array(ids.map { .integer($0) })) + "\n")
    } else {
      for id in ids { Console.out("\(id)\t\((tokenizer.piece(id) ?? "").debugDescription)\n") }
    }
    return .success
  }

  // MARK: - embed

  static let embedSpec = CommandSpec(
    name: "flare-eval embed",
    overview: "One embedding vector per text from a BERT or XLM-R encoder.",
    positionals: [],
    options: [
      model, adapter, OptionSpec("--text", value: "text", help: "A text (repeatable)."),
      OptionSpec("--pooling", value: "mean|cls", default: "mean", help: "How tokens are pooled."),
      OptionSpec("--normalize", help: "Scale each vector to unit length."), threads, json,
    ],
    discussion: exitStatus)

  static func embed(_ arguments: ParsedArguments) throws -> ExitStatus {
    try applyThreads(arguments, spec: embedSpec)
    let texts = arguments.allValues("--text")
    guard !texts.isEmpty else { throw UsageError("missing expected option '--text <text>'") }
    let pooling: BERTModel.Pooling
    switch arguments.value("--pooling") ?? "mean" {
    case "mean": pooling = .mean
    case "cls": pooling = .cls
    case let other: throw UsageError("the value '\(other)' is invalid for '--pooling <mean|cls>'")
    }
    let (model, tokenizer) = try LoadedModel.encoder(
      try required(arguments, EvalCommand.model), adapters: try adapters(arguments))
    let limit = model.config.maxPositions - (model.config.kind == .xlmRoberta ? 2 : 0)
    let ids = texts.map { Array(tokenizer.encode($0).prefix(max(1, limit))) }
    let vectors = try model.embed(
      tokens: ids, pooling: pooling, normalize: arguments.flag("--normalize"))
    if arguments.flag("--json") {
      Console.out(
        JSONWriter.compact(.array(vectors.map { .array($0.map { JSONValue.float($0) }) })) + "\n")
    } else {
      for (text, vector) in zip(texts, vectors) {
        let head = vector.prefix(4).map { "\($0)" }.joined(separator: " ")
        Console.out("\(text.debugDescription): \(vector.count) values [\(head) …]\n")
      }
      if vectors.count > 1 {
        Console.out("cosine similarity:\n")
        for (i, a) in vectors.enumerated() {
          let row = vectors.map { b in String(fourDecimals(cosine(a, b))) }
          Console.out("  \(i + 1): \(row.joined(separator: " "))\n")
        }
      }
    }
    return .success
  }

  static func cosine(_ a: [Float], _ b: [Float]) -> Double {
    var dot = 0.0
    var na = 0.0
    var nb = 0.0
    for (x, y) in zip(a, b) {
      dot += Double(x) * Double(y)
      na += Double(x) * Double(x)
      nb += Double(y) * Double(y)
    }
    return na > 0 && nb > 0 ? dot / (na.squareRoot() * nb.squareRoot()) : 0
  }

  /// `value` with 4 decimals.
  static func fourDecimals(_ value: Double) -> String {
    let scaled = (value * 10_000).rounded()
    let sign = scaled < 0 ? "-" : ""
    let magnitude = Int(abs(scaled))
    let fraction = String(magnitude % 10_000)
    return
      "\(sign)\(magnitude / 10_000).\(String(repeating: "0", count: 4 - fraction.count))\(fraction)"
  }

  // MARK: - classify

  static let classifySpec = CommandSpec(
    name: "flare-eval classify",
    overview: "Evaluate a BERT or XLM-R sequence classifier on labelled JSONL data.",
    positionals: [],
    options: [
      model,
      OptionSpec(
        "--adapter", value: "dir",
        help: "A PEFT LoRA folder with its classification head (modules_to_save)."),
      OptionSpec(
        "--data", value: "path",
        help: "Examples, one JSON object per line: {\"text\", \"label\"}, optionally \"text_pair\"."
      ),
      OptionSpec("--batch-size", value: "n", default: "8", help: "Examples per forward pass."),
      OptionSpec(
        "--input-fusion",
        help:
          "Each line's \"source\", a newline, then its text, as flare-train lora --input-fusion trains."
      ),
      OptionSpec(
        "--max-length", value: "n", default: "128",
        help:
          "Tokens per example at most (longer ones are truncated, as in training); a FLARE adapter's own by default."
      ),
      compute, threads, json,
    ],
    discussion: """
      The data is read and tokenized as flare-train reads classification data. The head is the
      adapter's (its modules_to_save: BERT's pooler and classifier, XLM-R's classifier) or, for
      what the adapter does not save, the model's own. Labels are those of the adapter's
      flare_labels.json (written by flare-train); without it, integer labels are class ids and
      string labels are looked up in the model's config.json id2label. --json prints every
      example's line, label, prediction and logits too.

      A FLARE adapter runs with the data's "source" field (the parallel English text): the first
      line decides; with a source there, every line needs one. Without sources it runs
      target-only and the report says so.

      \(exitStatus)
      """)

  static func classify(_ arguments: ParsedArguments) throws -> ExitStatus {
    try applyThreads(arguments, spec: classifySpec)
    let adapters = arguments.allValues("--adapter")
    guard adapters.count <= 1 else {
      throw UsageError("'--adapter' is given \(adapters.count) times; classify takes one")
    }
    let batchSize = try arguments.int("--batch-size", spec: classifySpec) ?? 8
    let maxLength = try arguments.int("--max-length", spec: classifySpec)
    guard batchSize >= 1 else { throw UsageError("'--batch-size' must be at least 1") }
    guard (maxLength ?? 8) >= 8 else { throw UsageError("'--max-length' must be at least 8") }
    var request = ClassifierEvaluation.Request(
      model: try required(arguments, EvalCommand.model), adapter: adapters.first,
      data: try required(arguments, OptionSpec("--data", value: "path", help: "")),
      batchSize: batchSize, maxLength: maxLength,
      threads: try arguments.int("--threads", spec: classifySpec),
      inputFusion: arguments.flag("--input-fusion"))
    request.compute = try computeMode(arguments)
    let report = try ClassifierEvaluation.run(request)
    if arguments.flag("--json") {
      Console.out(JSONWriter.compact(classifyJSON(report)) + "\n")
    } else {
      Console.out(classifyText(report))
    }
    return .success
  }

  static func classifyJSON(_ report: ClassifierReport) -> JSONValue {
    func label(_ index: Int) -> JSONValue {
      switch report.labels[index] {
      case .integer(let value): .integer(value)
      case .string(let text): .string(text)
      }
    }
    return .object([
      ("examples", .integer(report.examples.count)),
      ("truncated", .integer(report.truncatedCount)),
      ("labels", .array(report.labels.indices.map(label))),
      ("accuracy", .exact(report.accuracy)), ("macro_f1", .exact(report.macroF1)),
      ("loss", .exact(report.loss)),
      ("confusion", .array(report.confusion.map { .array($0.map { .integer($0) }) })),
      (
        "flare",
        report.flare.map {
          .object([
            ("fusion", .string($0.fusion.rawValue)),
            ("recipe", .string($0.withSource ? "fused" : "target_only")),
          ])
        } ?? .null
      ),
      (
        "predictions",
        .array(
          report.examples.map { example in
            .object([
              ("line", .integer(example.line)), ("label", label(example.truth)),
              ("prediction", label(example.prediction)),
              ("logits", .array(example.logits.map { .float($0) })),
              ("loss", .exact(example.loss)),
            ])
          })
      ),
    ])
  }

  static func classifyText(_ report: ClassifierReport) -> String {
    let names = report.labels.map(\.description)
    var lines = [
      "examples: \(report.examples.count) (\(report.truncatedCount) truncated)",
      "accuracy: \(fourDecimals(report.accuracy)) (\(report.correctCount)/\(report.examples.count))",
      "macro-F1: \(fourDecimals(report.macroF1))",
      "loss: \(fourDecimals(report.loss))",
      "confusion matrix (rows: label, columns: prediction):",
    ]
    if let flare = report.flare {
      lines.insert(
        flare.withSource
          ? "FLARE: \(flare.fusion.rawValue) fused with each example's source"
          : "FLARE: \(flare.fusion.rawValue) adapter run target-only (no source in the data; fused modules as plain LoRA)",
        at: 0)
    }
    let counts = report.confusion.flatMap { $0 }.map(String.init)
    let width = max(names.map(\.count).max() ?? 1, counts.map(\.count).max() ?? 1)
    func pad(_ text: String) -> String {
      String(repeating: " ", count: max(0, width - text.count)) + text
    }
    lines.append("  " + pad("") + "  " + names.map(pad).joined(separator: "  "))
    for (name, row) in zip(names, report.confusion) {
      lines.append("  " + pad(name) + "  " + row.map { pad(String($0)) }.joined(separator: "  "))
    }
    return lines.joined(separator: "\n") + "\n"
  }

  // MARK: - significance

  static let significanceSpec = CommandSpec(
    name: "flare-eval significance",
    overview:
      "Compare classifiers from 'classify --json' results: seed intervals and a paired bootstrap.",
    positionals: [],
    options: [
      OptionSpec(
        "--a", value: "path", help: "A 'classify --json' result of the baseline (repeatable)."),
      OptionSpec(
        "--b", value: "path",
        help: "A 'classify --json' result of the candidate (repeatable; paired with --a in order)."),
      OptionSpec("--resamples", value: "n", default: "10000", help: "Bootstrap resamples."),
      OptionSpec("--seed", value: "s", default: "0", help: "Seed of the resampling."),
      json,
    ],
    discussion: """
      Each --a/--b pair is one seed of the baseline and the candidate evaluated on the same
      test file (the same lines and labels; anything else is an error). For accuracy and
      macro-F1: each side's mean over the seeds with a 95 % interval (Student's t, n - 1
      degrees of freedom), the same for the seed-level difference b - a, and per pair a paired bootstrap over the test examples: the
      difference b - a, its 95 % percentile interval and a two-sided p-value for "no
      difference" ((1 + k) / (R + 1), k the resampled differences at least as far from the
      observed one as it is from 0).

      \(exitStatus)
      """)

  /// One `classify --json` result: per example its line, true class and predicted class.
  struct ClassifyResult {
    var path: String
    var labels: [JSONValue]
    var lines: [Int]
    var truth: [Int]
    var predictions: [Int]
  }

  static func classifyResult(_ path: String) throws -> ClassifyResult {
    func bad(_ message: String) -> FlareError {
      FlareError("eval", .invalidArgument, message, path: path)
    }
    let bytes = try readSmallFile(path, limit: 1 << 30)
    let json: JSONValue
    do {
      json = try JSONParser.parse(bytes)
    } catch {
      throw bad("not a 'classify --json' result: \(error.message) (byte \(error.offset))")
    }
    guard let labels = json["labels"]?.arrayValue, !labels.isEmpty,
      let predictions = json["predictions"]?.arrayValue, !predictions.isEmpty
    else {
      throw bad("not a 'classify --json' result: it needs 'labels' and 'predictions'")
    }
    var result = ClassifyResult(path: path, labels: labels, lines: [], truth: [], predictions: [])
    for (index, entry) in predictions.enumerated() {
      guard let line = entry["line"]?.intValue,
        let truth = entry["label"].flatMap({ labels.firstIndex(of: $0) }),
        let prediction = entry["prediction"].flatMap({ labels.firstIndex(of: $0) })
      else {
        throw bad(
          "prediction \(index + 1) needs a line and a label and a prediction among 'labels'")
      }
      result.lines.append(line)
      result.truth.append(truth)
      result.predictions.append(prediction)
    }
    return result
  }

  static func significance(_ arguments: ParsedArguments) throws -> ExitStatus {
    let aPaths = arguments.allValues("--a")
    let bPaths = arguments.allValues("--b")
    guard !aPaths.isEmpty, aPaths.count == bPaths.count else {
      throw UsageError("give '--a' and '--b' the same number of times (at least once)")
    }
    let resamples = try arguments.int("--resamples", spec: significanceSpec) ?? 10_000
    guard resamples >= 100 else { throw UsageError("'--resamples' must be at least 100") }
    let seed = UInt64(max(0, try arguments.int("--seed", spec: significanceSpec) ?? 0))
    let a = try aPaths.map(classifyResult)
    let b = try bPaths.map(classifyResult)
    let reference = a[0]
    for result in a + b
    where result.lines != reference.lines || result.truth != reference.truth
      || result.labels != reference.labels
    {
      throw FlareError(
        "eval", .invalidArgument,
        "not the same test set as \(reference.path) (lines, labels or classes differ)",
        path: result.path)
    }
    typealias Stats = ClassifierStatistics
    var metrics: [(String, JSONValue)] = []
    var text = "pairs: \(a.count), test examples: \(reference.truth.count)\n"
    var pairs: [[(String, JSONValue)]] = zip(aPaths, bPaths).map {
      [("a", .string($0.0)), ("b", .string($0.1))]
    }
    for metric in Stats.Metric.allCases {
      func side(_ results: [ClassifyResult]) -> ([Double], (mean: Double, halfWidth: Double)) {
        let values = results.map { metric.value(predictions: $0.predictions, truth: $0.truth) }
        return (values, Stats.meanInterval(values))
      }
      let (valuesA, intervalA) = side(a)
      let (valuesB, intervalB) = side(b)
      func summary(_ values: [Double], _ interval: (mean: Double, halfWidth: Double)) -> JSONValue {
        .object([
          ("mean", .exact(interval.mean)), ("half_width", .exact(interval.halfWidth)),
          ("values", .array(values.map { .exact($0) })),
        ])
      }
      // The seed-level paired difference b − a: its mean over the pairs with a 95 % interval.
      let differences = zip(valuesB, valuesA).map { $0.0 - $0.1 }
      let intervalDifference = Stats.meanInterval(differences)
      metrics.append(
        (
          metric.rawValue,
          .object([
            ("a", summary(valuesA, intervalA)), ("b", summary(valuesB, intervalB)),
            ("difference", summary(differences, intervalDifference)),
          ])
        ))
      text +=
        "\(metric.rawValue): a \(fourDecimals(intervalA.mean)) ± \(fourDecimals(intervalA.halfWidth)), b \(fourDecimals(intervalB.mean)) ± \(fourDecimals(intervalB.halfWidth)), b - a \(fourDecimals(intervalDifference.mean)) ± \(fourDecimals(intervalDifference.halfWidth)) (mean over seeds, 95 % interval)\n"
      for (index, (x, y)) in zip(a, b).enumerated() {
        let comparison = Stats.pairedBootstrap(
          truth: x.truth, a: x.predictions, b: y.predictions, metric: metric,
          resamples: resamples, seed: seed &+ UInt64(index))
        pairs[index].append(
          (
            metric.rawValue,
            .object([
              ("a", .exact(comparison.a)), ("b", .exact(comparison.b)),
              ("difference", .exact(comparison.difference)), ("low", .exact(comparison.low)),
              ("high", .exact(comparison.high)), ("p", .exact(comparison.pValue)),
            ])
          ))
        text +=
          "  pair \(index + 1): b - a = \(fourDecimals(comparison.difference)) [\(fourDecimals(comparison.low)), \(fourDecimals(comparison.high))], p = \(fourDecimals(comparison.pValue))\n"
      }
    }
    if arguments.flag("--json") {
      Console.out(
        JSONWriter.compact(
          .object([
            ("examples", .integer(reference.truth.count)), ("resamples", .integer(resamples)),
            ("seed", .integer(Int(seed))), ("metrics", .object(metrics)),
            ("pairs", .array(pairs.map { .object($0) })),
          ])) + "\n")
    } else {
      Console.out(text)
    }
    return .success
  }

  // MARK: - perplexity

  static let perplexitySpec = CommandSpec(
    name: "flare-eval perplexity",
    overview: "Perplexity of a UTF-8 text file under a Llama model.",
    positionals: [],
    options: [
      model, adapter, OptionSpec("--file", value: "path", help: "The text file."),
      OptionSpec(
        "--context", value: "n", default: "512",
        help: "Tokens per window; windows do not overlap."),
      compute, threads, json, quiet,
    ],
    discussion: """
      The file is tokenized whole (with the model's BOS if it adds one) and cut into windows of
      --context tokens; every token of a window except its first is scored given the tokens
      before it in the window. Perplexity is exp of the mean negative log-likelihood.

      \(exitStatus)
      """)

  static func perplexity(_ arguments: ParsedArguments) throws -> ExitStatus {
    try applyThreads(arguments, spec: perplexitySpec)
    let path = try required(arguments, OptionSpec("--file", value: "path", help: ""))
    let context = try arguments.int("--context", spec: perplexitySpec) ?? 512
    guard context >= 2 else { throw UsageError("'--context' must be at least 2") }
    let (model, tokenizer) = try LoadedModel.llama(
      try required(arguments, EvalCommand.model), adapters: try adapters(arguments),
      compute: try computeMode(arguments))
    guard context <= model.config.contextLength else {
      throw UsageError(
        "'--context' is \(context); the model's context holds \(model.config.contextLength) tokens")
    }
    let text = String(decoding: try readSmallFile(path), as: UTF8.self)
    let ids = tokenizer.encode(text)
    guard ids.count >= 2 else {
      throw FlareError("eval", .invalidArgument, "the file has fewer than 2 tokens", path: path)
    }
    let vocab = model.config.vocabSize
    var nll = 0.0
    var scored = 0
    var start = 0
    let bar = ProgressBar(
      label: "scoring", total: ids.count, enabled: !arguments.flag("--quiet"))
    while start + 1 < ids.count {
      let window = Array(ids[start..<min(ids.count, start + context)])
      let logits = try model.forward(
        tokens: [window], cache: model.makeCache(batch: 1, capacity: window.count), logits: .all)
      for i in 0..<(window.count - 1) {
        let row = logits[(i * vocab)..<((i + 1) * vocab)]
        let largest = row.max() ?? 0
        var sum = 0.0
        for value in row { sum += exp(Double(value - largest)) }
        let logProbability = Double(row[row.startIndex + window[i + 1]] - largest) - log(sum)
        nll -= logProbability
        scored += 1
      }
      start += window.count
      bar.set(done: start, of: ids.count)
    }
    bar.finish()
    let value = exp(nll / Double(scored))
    if arguments.flag("--json") {
      Console.out(
        JSONWriter.compact(
          .object([
            ("perplexity", .exact(value)), ("tokens", .integer(ids.count)),
            ("scored", .integer(scored)), ("context", .integer(context)),
          ])) + "\n")
    } else {
      Console.out("perplexity: \(value) (\(scored) tokens scored, windows of \(context))\n")
    }
    return .success
  }

  // MARK: - compare

  static let compareSpec = CommandSpec(
    name: "flare-eval compare",
    overview: "Logit differences and top-1 agreement between two Llama models.",
    positionals: [],
    options: [
      OptionSpec(
        "--model", value: "path",
        help: "Give it twice: the reference model, then the candidate."),
      OptionSpec(
        "--adapter", value: "path[:weight]",
        help: "Applied unmerged to the candidate (the second --model) (repeatable)."),
      OptionSpec(
        "--file", value: "path",
        help: "Prompts, one per line; a .jsonl file: {\"text\"} or {\"text\", \"source\"} per line."
      ),
      flareBaked, compute, threads, json,
    ],
    discussion: """
      Every position of every prompt is compared: the largest and the mean absolute logit
      difference, and how often the two models' most likely next token agrees. A typical use:
      flare-eval compare --model merged --model base --adapter lora --file prompts.txt

      With a FLARE adapter on the candidate, the prompts come from a .jsonl file whose lines
      carry "source" (the parallel English prompt); lines without one run target-only.

      \(flareDiscussion)
      \(exitStatus)
      """)

  static func compare(_ arguments: ParsedArguments) throws -> ExitStatus {
    try applyThreads(arguments, spec: compareSpec)
    let models = arguments.allValues("--model")
    guard models.count == 2 else {
      throw UsageError("'--model' must be given twice (reference, then candidate)")
    }
    let path = try required(arguments, OptionSpec("--file", value: "path", help: ""))
    let (reference, tokenizer) = try LoadedModel.llama(
      models[0], adapters: [], compute: try computeMode(arguments))
    let (candidate, _, decoder) = try llamaModel(arguments, path: models[1])
    let prompts = try comparePrompts(path)
    guard !prompts.isEmpty else {
      throw FlareError("eval", .invalidArgument, "no prompts in the file", path: path)
    }
    let ids = prompts.map { tokenizer.encode($0.text) }
    guard let decoder else {
      if prompts.contains(where: { $0.source != nil }) {
        throw UsageError(
          "the prompts carry \"source\", which only a FLARE adapter (an --adapter with flare_config.json) reads"
        )
      }
      let result = try reference.compare(with: candidate, prompts: ids)
      printComparison(result, prompts: prompts.count, json: arguments.flag("--json"))
      return .success
    }
    let vocab = reference.config.vocabSize
    guard candidate.config.vocabSize == vocab else {
      throw FlareError(
        "compare", .invalidArgument,
        "the models' vocabularies differ (\(vocab) and \(candidate.config.vocabSize) tokens)")
    }
    var result = LogitComparison()
    let withSource = prompts.filter { $0.source != nil }.count
    for (p, (prompt, tokens)) in zip(prompts, ids).enumerated() where !tokens.isEmpty {
      let a = try reference.forward(
        tokens: [tokens], cache: reference.makeCache(batch: 1, capacity: tokens.count),
        logits: .all)
      let b = try decoder.logits(
        prompt: tokens, source: prompt.source.map { tokenizer.encode($0) }, lastOnly: false)
      result.add(prompt: p, reference: a, candidate: b, vocab: vocab)
    }
    if !arguments.flag("--json") {
      Console.err(
        "FLARE: \(decoder.config.fusion.rawValue) adapter; \(withSource) of \(prompts.count) prompts with a source (fused), the others target-only\n"
      )
    }
    printComparison(
      result, prompts: prompts.count, json: arguments.flag("--json"),
      flare: .object([
        ("fusion", .string(decoder.config.fusion.rawValue)),
        ("prompts_with_source", .integer(withSource)),
        ("baked", .bool(arguments.flag("--flare-baked"))),
      ]))
    return .success
  }

  /// The prompts of `compare`: plain lines, or for a `.jsonl` file each line's `text` and
  /// optional `source`.
  static func comparePrompts(_ path: String) throws -> [(text: String, source: String?)] {
    let lines = String(decoding: try readSmallFile(path), as: UTF8.self)
      .split(separator: "\n", omittingEmptySubsequences: false)
    guard path.lowercased().hasSuffix(".jsonl") else {
      return lines.filter { !$0.isEmpty }.map { (String($0), nil) }
    }
    var prompts: [(text: String, source: String?)] = []
    for (index, line) in lines.enumerated()
    where !line.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) {
      func bad(_ message: String) -> FlareError {
        FlareError("eval", .invalidArgument, "line \(index + 1): \(message)", path: path)
      }
      let json: JSONValue
      do {
        json = try JSONParser.parse(Array(line.utf8))
      } catch {
        throw bad("malformed JSON: \(error.message) (column \(error.offset + 1))")
      }
      guard let text = json["text"]?.stringValue else {
        throw bad("each line needs a string field 'text'")
      }
      var source: String?
      if let value = json["source"], value != .null {
        guard let string = value.stringValue else { throw bad("field 'source' is not a string") }
        source = string
      }
      prompts.append((text, source))
    }
    return prompts
  }

  static func printComparison(
    _ result: LogitComparison, prompts: Int, json: Bool, flare: JSONValue? = nil
  ) {
    if json {
      Console.out(
        JSONWriter.compact(
          .object(
            [
              ("prompts", .integer(prompts)), ("positions", .integer(result.positions)),
              ("max_abs_diff", .float(result.maxAbsDifference)),
              ("mean_abs_diff", .exact(result.meanAbsDifference)),
              ("top1_agreement", .exact(result.top1Agreement)),
            ] + (flare.map { [("flare", $0)] } ?? []))) + "\n")
    } else {
      Console.out(
        """
        positions compared: \(result.positions) (\(prompts) prompts)
        max abs logit difference: \(result.maxAbsDifference) (prompt \(result.worst.prompt + 1), position \(result.worst.position), token \(result.worst.id))
        mean abs logit difference: \(result.meanAbsDifference)
        top-1 agreement: \(result.top1Agreements)/\(result.positions)

        """)
    }
  }

  // MARK: - bench

  static let benchSpec = CommandSpec(
    name: "flare-eval bench",
    overview: "Prefill and decode speed of a Llama model.",
    positionals: [],
    options: [
      model,
      OptionSpec("--prompt-tokens", value: "n", default: "128", help: "Prompt length."),
      OptionSpec("--gen-tokens", value: "n", default: "64", help: "Tokens decoded one by one."),
      OptionSpec("--repeat", value: "n", default: "1", help: "Runs; the best is reported."),
      compute, threads, json,
    ],
    discussion: """
      The prompt is made of fixed token ids (no tokenizer involved). Prefill: one forward pass
      over the prompt; decode: greedy tokens one at a time with the KV cache. Load time is
      reported separately.

      \(exitStatus)
      """)

  static func bench(_ arguments: ParsedArguments) throws -> ExitStatus {
    try applyThreads(arguments, spec: benchSpec)
    let promptTokens = try arguments.int("--prompt-tokens", spec: benchSpec) ?? 128
    let genTokens = try arguments.int("--gen-tokens", spec: benchSpec) ?? 64
    let repeats = try arguments.int("--repeat", spec: benchSpec) ?? 1
    guard promptTokens > 0, genTokens >= 0, repeats > 0 else {
      throw UsageError("'--prompt-tokens' and '--repeat' must be positive")
    }
    let loadStart = monotonicSeconds()
    let model = try LlamaModel(
      path: try required(arguments, EvalCommand.model), compute: try computeMode(arguments))
    let loadSeconds = monotonicSeconds() - loadStart
    guard promptTokens + genTokens <= model.config.contextLength else {
      throw UsageError(
        "'--prompt-tokens' + '--gen-tokens' exceed the model's context of \(model.config.contextLength) tokens"
      )
    }
    let vocab = model.config.vocabSize
    let prompt = (0..<promptTokens).map { ($0 * 7919 + 13) % vocab }
    var bestPrefill = Double.infinity
    var bestDecode = Double.infinity
    for _ in 0..<repeats {
      let cache = model.makeCache(batch: 1, capacity: promptTokens + genTokens)
      let t0 = monotonicSeconds()
      var logits = try model.forward(tokens: [prompt], cache: cache)
      let t1 = monotonicSeconds()
      for _ in 0..<genTokens {
        logits = try model.forward(tokens: [[Sampler.argmax(logits[...])]], cache: cache)
      }
      let t2 = monotonicSeconds()
      bestPrefill = min(bestPrefill, t1 - t0)
      bestDecode = min(bestDecode, t2 - t1)
    }
    let prefillRate = Double(promptTokens) / bestPrefill
    let decodeRate = genTokens == 0 ? 0 : Double(genTokens) / bestDecode
    if arguments.flag("--json") {
      Console.out(
        JSONWriter.compact(
          .object([
            ("model", .string(model.source.path)), ("prompt_tokens", .integer(promptTokens)),
            ("gen_tokens", .integer(genTokens)), ("threads", .integer(BLAS.threads)),
            ("kernels", .string(BLAS.coreName)), ("compute", .string(model.compute.rawValue)),
            ("quantized_kernels", .string(QuantizedMatrix.ISA.active.description)),
            ("load_s", .exact(loadSeconds)),
            ("prefill_s", .exact(bestPrefill)), ("prefill_tok_s", .exact(prefillRate)),
            ("decode_s", .exact(bestDecode)), ("decode_tok_s", .exact(decodeRate)),
          ])) + "\n")
    } else {
      Console.out(
        """
        load: \(loadSeconds) s
        prefill: \(promptTokens) tokens in \(bestPrefill) s = \(prefillRate) tok/s
        decode: \(genTokens) tokens in \(bestDecode) s = \(decodeRate) tok/s
        threads: \(BLAS.threads), OpenBLAS kernels: \(BLAS.coreName), compute: \(model.compute.rawValue) (quantized kernels: \(QuantizedMatrix.ISA.active))

        """)
    }
    return .success
  }
}
