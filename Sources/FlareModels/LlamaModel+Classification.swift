import FlareAdapters
import FlareCore

/// A model that classifies sequences with a head saved beside its adapter (PEFT's
/// `modules_to_save`) or in its checkpoint: what `flare-eval classify` runs.
public protocol SequenceClassifier: TrainableModel {
  /// The classification head of a trained classifier, for evaluation: each tensor from
  /// `adapter`'s `modules_to_save` copy or else the checkpoint's, never a fresh
  /// initialisation.
  /// - Returns: The label count and the head tensors by saved name.
  func savedClassificationHead(adapter: PEFTAdapter?) throws -> (
    labelCount: Int, tensors: [String: TrainableTensor]
  )

  /// An evaluation pass that also returns each sequence's logits, in batch order.
  func classificationLogits(batch: TrainingBatch, state: TrainingState) throws -> (
    result: TrainingPassResult, logits: [[Float]]
  )
}

extension BERTModel: SequenceClassifier {}

/// `LlamaForSequenceClassification`'s head: `score` (`[classes, C]`, no bias) on the last real
/// token, saved as ``scoreHeadName``.
extension LlamaModel: SequenceClassifier {
  /// The `score` head for `labelCount` classes, starting from, in order: `adapter`'s saved
  /// copy (`modules_to_save`), the checkpoint's `score.weight` (a
  /// `LlamaForSequenceClassification` checkpoint), or, with a seed, a fresh initialisation as
  /// transformers' `_init_weights` gives a new linear layer: `N(0, initializer_range)`
  /// (`config.json`, 0.02 when absent or for GGUF), drawn from a ``SplitMix64`` seeded with
  /// `seed`, row-major.
  /// - Throws: ``FlareError`` for a label count below 1, a saved or checkpoint head of
  ///   another shape, or (without a seed) no head in the adapter or the checkpoint.
  public func makeScoreHead(labelCount: Int, seed: UInt64?, adapter: PEFTAdapter? = nil) throws
    -> TrainableTensor
  {
    let c = config.embeddingLength
    guard labelCount >= 1 else {
      throw FlareError(
        "model", .invalidArgument,
        "a classification head needs at least 1 label, got \(labelCount)", path: source.path)
    }
    let shape = [labelCount, c]
    if let adapter,
      let view = adapter.replacements.first(where: { $0.name == "score.weight" })?.view
    {
      guard view.shape == shape else {
        throw FlareError(
          "adapter", .invalidArgument,
          "head tensor has shape \(view.shape), expected \(shape) (\(labelCount) labels, hidden size \(c))",
          path: adapter.path, tensor: view.name)
      }
      return TrainableTensor(name: Self.scoreHeadName, shape: shape, values: view.floats())
    }
    if source.gguf == nil, source.contains("score.weight") {
      let weight = try source.weight("score.weight")
      guard weight.shape == shape else {
        throw FlareError(
          "model", .invalidArgument,
          "the checkpoint's head tensor has shape \(weight.shape), not \(shape): it was trained for \(weight.shape.first ?? 0) labels, not \(labelCount)",
          path: source.path, tensor: "score.weight")
      }
      return TrainableTensor(name: Self.scoreHeadName, shape: shape, values: Array(weight.values))
    }
    guard let seed else {
      throw FlareError(
        "model", .tensorNotFound,
        adapter == nil
          ? "is missing: the model has no sequence-classification head; give an adapter that saved one (modules_to_save)"
          : "is missing: neither the adapter (modules_to_save) nor the checkpoint has a sequence-classification head",
        path: adapter?.path ?? source.path, tensor: "score.weight")
    }
    var deviation: Float = 0.02
    if source.gguf == nil, let range = (try? source.config())?["initializer_range"]?.doubleValue {
      deviation = Float(range)
    }
    var random = SplitMix64(seed: seed)
    return TrainableTensor(
      name: Self.scoreHeadName, shape: shape,
      values: random.normals(count: labelCount * c, std: deviation))
  }

  /// Sequence-classification logits through the inference forward (attached adapters
  /// apply): `score` (`[classes, C]`) on each sequence's last real token. What `flare-merge
  /// --verify` compares a merged classifier with.
  /// - Returns: `B` rows of `classes` logits.
  /// - Throws: ``FlareError`` for a `score` of another width, or as
  ///   ``forward(tokens:mask:cache:logits:head:)``.
  public func classificationLogits(tokens: [[Int]], mask: [[Bool]]? = nil, score: Weight)
    throws -> [[Float]]
  {
    guard score.shape.count == 2, score.shape[0] >= 1, score.shape[1] == config.embeddingLength
    else {
      throw FlareError(
        "model", .invalidArgument,
        "the score head has shape \(score.shape); expected [classes, \(config.embeddingLength)]",
        path: source.path, tensor: score.name)
    }
    let t = tokens.first?.count ?? 0
    let flat = try forward(
      tokens: tokens, mask: mask, cache: makeCache(batch: tokens.count, capacity: max(t, 1)),
      logits: .last, head: Linear(path: "score", weight: score))
    let k = score.shape[0]
    return (0..<tokens.count).map { Array(flat[($0 * k)..<(($0 + 1) * k)]) }
  }

  /// The `score` head of a trained classifier: the adapter's saved copy, else the
  /// checkpoint's `score.weight`; the label count is its row count.
  /// - Throws: ``FlareError`` `.tensorNotFound` when neither has one, or as
  ///   ``makeScoreHead(labelCount:seed:adapter:)``.
  public func savedClassificationHead(adapter: PEFTAdapter?) throws -> (
    labelCount: Int, tensors: [String: TrainableTensor]
  ) {
    var count = adapter?.replacements.first(where: { $0.name == "score.weight" })?.view.shape.first
    if count == nil, source.gguf == nil, source.contains("score.weight") {
      count = source.tensorShapes.first(where: { $0.name == "score.weight" })?.shape.first
    }
    let head = try makeScoreHead(labelCount: count ?? 1, seed: nil, adapter: adapter)
    return (head.shape[0], [head.name: head])
  }
}
