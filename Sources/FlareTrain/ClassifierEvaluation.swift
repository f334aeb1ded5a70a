import FlareAdapters
import FlareArchitectures
import FlareCore
import FlareModels
import FlareTensor
import FlareTokenizers

/// One example's result in ``ClassifierEvaluation``.
public struct ClassifiedExample: Sendable, Equatable {
  /// The line of the data file.
  public var line: Int
  /// The class of the example's label.
  public var truth: Int
  /// The class with the largest logit (the first one on a tie).
  public var prediction: Int
  public var logits: [Float]
  /// The cross-entropy of the logits against the label.
  public var loss: Double
}

/// The result of ``ClassifierEvaluation/run(_:)``.
public struct ClassifierReport: Sendable {
  /// The label of each class.
  public var labels: [ExampleLabel]
  public var examples: [ClassifiedExample]
  /// Examples the maximum length shortened.
  public var truncatedCount: Int
  /// Mean cross-entropy over the examples.
  public var loss: Double
  public var accuracy: Double
  /// scikit-learn's `f1_score(average="macro")`: over the classes that occur as a label or a
  /// prediction.
  public var macroF1: Double
  /// `confusion[label][prediction]`: how many examples of each class got each prediction.
  public var confusion: [[Int]]
  /// For a FLARE adapter: its fusion, and whether the data gave a source (fused as trained)
  /// or not (target-only, FLARE.md §8.3).
  public var flare: (fusion: FLAREConfig.Fusion, withSource: Bool)?

  /// Examples whose prediction is their label.
  public var correctCount: Int { examples.reduce(0) { $0 + ($1.prediction == $1.truth ? 1 : 0) } }
}

/// A sequence classifier evaluated on a labelled JSONL file (`flare-eval classify`): a BERT/
/// XLM-R encoder or a Llama model (`LlamaForSequenceClassification`'s `score` head on the last
/// real token) with an adapter's LoRA layers and classification head (its `modules_to_save`),
/// or the checkpoint's own head, on examples read and tokenized exactly as `flare-train`
/// reads training data (``JSONLReader``, ``ExampleEncoder``, ``Collator``).
///
/// Labels: those of the adapter's `flare_labels.json` (written by `flare-train`) when it has
/// one; otherwise integer labels are class ids and string labels are looked up in the
/// model's `config.json` `id2label`.
public enum ClassifierEvaluation {
  /// What to evaluate.
  public struct Request: Sendable {
    public var model: String
    public var adapter: String?
    public var data: String
    public var batchSize: Int
    /// Tokens per example at most; `nil`: a FLARE adapter's `max_length`, else 128.
    public var maxLength: Int?
    /// Threads of the passes (`nil`: BLAS's current count).
    public var threads: Int?
    /// The input-level fusion baseline (`flare-train lora --input-fusion`): each line's
    /// `source`, a newline, then its text, with twice ``maxLength`` tokens.
    public var inputFusion = false
    /// How a GGUF's quantized matrices are held (the passes multiply dequantized tiles in F32
    /// either way).
    public var compute: ComputeMode = .quantized

    public init(
      model: String, adapter: String?, data: String, batchSize: Int = 8, maxLength: Int? = nil,
      threads: Int? = nil, inputFusion: Bool = false
    ) {
      self.model = model
      self.adapter = adapter
      self.data = data
      self.batchSize = batchSize
      self.maxLength = maxLength
      self.threads = threads
      self.inputFusion = inputFusion
    }
  }

  /// The label file `flare-train` writes beside a classification adapter.
  public static let labelFile = "flare_labels.json"

  /// Evaluates the classifier on every example of the data file.
  /// - Throws: ``TrainingDataError`` for a bad data line or a label the classifier does not
  ///   have; ``FlareError`` for a model that is neither Llama nor BERT/XLM-R, an adapter that
  ///   does not fit it, or no classification head in the adapter or the checkpoint.
  ///
  /// A FLARE adapter (a folder with `flare_config.json`) runs as trained when the data's lines
  /// carry `source` (the parallel English text; the first line decides, and then every line
  /// needs one): target and source padded to the adapter's `max_length`, a source pass without
  /// the adapter, the fused layers. Without sources it runs target-only (FLARE.md §8.3), which
  /// the report says.
  public static func run(_ request: Request) throws -> ClassifierReport {
    let adapter = try request.adapter.map { try PEFTAdapter(folder: $0) }
    let flare = adapter?.flare
    if request.inputFusion && flare != nil {
      throw FlareError(
        "eval", .invalidArgument,
        "--input-fusion is the baseline for plain LoRA adapters; a FLARE adapter reads the source through its fused layers",
        path: request.adapter)
    }
    var sourced: [RawExample]?
    if request.inputFusion {
      sourced = try JSONLReader.read(path: request.data, task: .classification, source: true)
        .map { $0.inputFused() }
    } else if flare != nil {
      do {
        sourced = try JSONLReader.read(path: request.data, task: .classification, source: true)
      } catch {
        // No source on the first line: the whole file runs target-only.
        let missing = error.code == .missingField && error.message.contains("'source'")
        guard missing, error.line == firstLine(request.data) else { throw error }
      }
    }
    let withSource = sourced != nil && flare != nil
    let raw = try sourced ?? JSONLReader.read(path: request.data, task: .classification)
    let maxLength =
      request.inputFusion
      ? 2 * (request.maxLength ?? 128) : request.maxLength ?? flare?.maxLength ?? 128
    if let flare, withSource, maxLength != flare.maxLength {
      throw FlareError(
        "eval", .invalidArgument,
        "--max-length is \(maxLength), but the FLARE adapter fuses target and source padded to \(flare.maxLength) tokens (flare_config.json source.max_length); leave --max-length out",
        path: request.adapter)
    }
    let architecture = try WeightSource(path: request.model).architecture()
    guard
      ModelFamily.named(architecture) != nil
        || ["bert", "roberta", "xlm-roberta"].contains(architecture)
    else {
      throw FlareError(
        "eval", .unsupported,
        "classify runs \(ModelFamily.displayNames) models and BERT/XLM-R encoders; the model is '\(architecture)'",
        path: request.model)
    }
    let loaded = try TrainingModel.open(
      request.model, task: .classification, compute: request.compute)
    guard let model = loaded.model as? any SequenceClassifier else {
      throw FlareError(
        "eval", .unsupported,
        "classify runs \(ModelFamily.displayNames) models and BERT/XLM-R encoders; the model is '\(loaded.architecture)'",
        path: request.model)
    }
    model.trainingThreads = request.threads ?? BLAS.threads
    let head = try model.savedClassificationHead(adapter: adapter)
    var loras: [String: TrainableLoRA] = [:]
    var fusion: TrainingFusion?
    if let adapter, flare != nil {
      let loaded = try FLAREInference.load(adapter: adapter, model: model)
      loras = loaded.loras
      fusion = withSource ? loaded.fusion : nil
    } else if let adapter, !adapter.modules.isEmpty {
      loras = try LoRAFactory.load(adapter: adapter, model: model, heads: [], dropout: 0).loras
    }
    let labels = try labelSet(
      adapter: request.adapter, model: request.model, count: head.labelCount, data: raw,
      dataPath: request.data)
    let encoder = ExampleEncoder(
      tokenizer: loaded.tokenizer, layout: loaded.layout, maxLength: maxLength,
      vocabularySize: loaded.vocabularySize)
    let data = try encoder.encode(raw, path: request.data, labels: labels)
    let state = TrainingState(loras: loras, heads: head.tensors, fusion: fusion)
    let tokenizer = loaded.tokenizer
    let collator = Collator(
      padID: tokenizer.pad ?? tokenizer.eos ?? 0,
      side: flare.flatMap { PaddingSide(rawValue: $0.paddingSide) } ?? loaded.paddingSide,
      width: fusion == nil ? nil : maxLength)
    var examples: [ClassifiedExample] = []
    var lossSum = 0.0
    var start = 0
    while start < data.examples.count {
      let chunk = Array(data.examples[start..<min(start + request.batchSize, data.examples.count)])
      start += request.batchSize
      let (result, logits) = try model.classificationLogits(
        batch: collator.batch(chunk), state: state)
      lossSum += result.lossSum
      for (example, row) in zip(chunk, logits) {
        let truth = example.classIndex ?? 0
        examples.append(
          ClassifiedExample(
            line: example.line, truth: truth, prediction: Sampler.argmax(row[...]), logits: row,
            loss: crossEntropy(row, truth)))
      }
    }
    let predictions = examples.map(\.prediction)
    let truth = examples.map(\.truth)
    var confusion = [[Int]](
      repeating: [Int](repeating: 0, count: labels.count), count: labels.count)
    for (t, p) in zip(truth, predictions) { confusion[t][p] += 1 }
    return ClassifierReport(
      labels: labels.labels, examples: examples, truncatedCount: data.truncatedCount,
      loss: lossSum / Double(max(examples.count, 1)),
      accuracy: Trainer.accuracy(predictions: predictions, truth: truth),
      macroF1: Trainer.macroF1(predictions: predictions, truth: truth), confusion: confusion,
      flare: flare.map { ($0.fusion, withSource) })
  }

  /// The number of the file's first non-blank line (1 if it cannot be read).
  static func firstLine(_ path: String) -> Int {
    guard let bytes = try? readSmallFile(path, limit: 4 << 30) else { return 1 }
    var line = 1
    var blank = true
    for byte in bytes {
      if byte == UInt8(ascii: "\n") {
        if !blank { return line }
        line += 1
        blank = true
      } else if byte != 0x20 && byte != 0x09 && byte != 0x0D {
        blank = false
      }
    }
    return line
  }

  /// `logsumexp(logits) − logits[label]`, in `Double`.
  static func crossEntropy(_ logits: [Float], _ label: Int) -> Double {
    let largest = Double(logits.max() ?? 0)
    let sum = logits.reduce(0.0) { $0 + exp(Double($1) - largest) }
    return largest + log(sum) - Double(logits[label])
  }

  /// The classes: the adapter's `flare_labels.json`, or class ids (integer labels), or the
  /// model's `id2label` names (string labels).
  static func labelSet(
    adapter: String?, model: String, count: Int, data: [RawExample], dataPath: String
  ) throws -> LabelSet {
    if let adapter, fileExists("\(adapter)/\(labelFile)") {
      let path = "\(adapter)/\(labelFile)"
      let json = try JSONParser.parse(file: path, domain: "adapter", limit: 16 << 20)
      guard let labels = LabelSet(json: json) else {
        throw FlareError(
          "adapter", .invalidArgument, "has no \"labels\" array of strings or integers", path: path
        )
      }
      guard labels.count == count else {
        throw FlareError(
          "adapter", .invalidArgument,
          "lists \(labels.count) labels; the classification head has \(count) outputs", path: path)
      }
      return labels
    }
    let stringLabel = data.lazy.compactMap { example -> (Int, String)? in
      guard case .classification(_, _, .string(let text)) = example.content else { return nil }
      return (example.line, text)
    }.first
    guard let (line, text) = stringLabel else {
      return LabelSet(labels: (0..<count).map { .integer($0) })
    }
    let names = try id2label(model: model, count: count)
    guard let names else {
      throw TrainingDataError(
        .unknownLabel, path: dataPath, line: line,
        "label '\(text)' is a string, but there is no \(labelFile) beside the adapter and no id2label in the model's config.json to name the \(count) classes (use class ids 0-\(count - 1))"
      )
    }
    return LabelSet(labels: names.map { .string($0) })
  }

  /// `id2label` of the model's `config.json` when it names every class.
  static func id2label(model: String, count: Int) throws -> [String]? {
    let path = "\(model)/config.json"
    guard fileExists(path) else { return nil }
    let json = try JSONParser.parse(file: path, domain: "config", limit: 16 << 20)
    guard let members = json["id2label"]?.objectMembers else { return nil }
    var names = [String?](repeating: nil, count: count)
    for (key, value) in members {
      guard let id = Int(key), names.indices.contains(id), let name = value.stringValue else {
        return nil
      }
      names[id] = name
    }
    let complete = names.compactMap { $0 }
    return complete.count == count ? complete : nil
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif
