import FlareModels

/// Fresh sequence-classification heads as transformers builds them for a base checkpoint that
/// has none, named as PEFT saves them (`modules_to_save`), for model families'
/// ``ClassificationHeadProvider`` conformances.
///
/// transformers' `_init_weights` draws linear weights from `N(0, initializer_range)` and zeroes
/// biases; Flare draws the normals from a ``SplitMix64`` (weights in the order listed), so the
/// values are Flare's own, the distribution transformers'.
public enum ClassificationHeads {
  /// The PEFT `modules_to_save` of a `SEQ_CLS` adapter (PEFT adds both names).
  public static let modulesToSave = ["classifier", "score"]

  /// `BertForSequenceClassification`: `classifier` (`[classes, hidden]` and a bias) on the
  /// pooler's output.
  public static func bert(
    hidden: Int, classes: Int, initializerRange: Float = 0.02, random: inout SplitMix64
  ) -> [TrainableTensor] {
    [
      normal("classifier.weight", [classes, hidden], initializerRange, &random),
      zeros("classifier.bias", [classes]),
    ]
  }

  /// `XLMRobertaForSequenceClassification`: `classifier.dense` (`[hidden, hidden]`, bias) then
  /// `classifier.out_proj` (`[classes, hidden]`, bias) on the first token.
  public static func roberta(
    hidden: Int, classes: Int, initializerRange: Float = 0.02, random: inout SplitMix64
  ) -> [TrainableTensor] {
    [
      normal("classifier.dense.weight", [hidden, hidden], initializerRange, &random),
      zeros("classifier.dense.bias", [hidden]),
      normal("classifier.out_proj.weight", [classes, hidden], initializerRange, &random),
      zeros("classifier.out_proj.bias", [classes]),
    ]
  }

  /// `LlamaForSequenceClassification`: `score` (`[classes, hidden]`, no bias) on the last
  /// real token.
  public static func llama(
    hidden: Int, classes: Int, initializerRange: Float = 0.02, random: inout SplitMix64
  ) -> [TrainableTensor] {
    [normal("score.weight", [classes, hidden], initializerRange, &random)]
  }

  static func normal(_ name: String, _ shape: [Int], _ std: Float, _ random: inout SplitMix64)
    -> TrainableTensor
  {
    let count = shape.reduce(1, *)
    var values = [Float](repeating: 0, count: count)
    for i in 0..<count { values[i] = random.normal(std: std) }
    return TrainableTensor(name: LoRATargets.keyPrefix + name, shape: shape, values: values)
  }

  static func zeros(_ name: String, _ shape: [Int]) -> TrainableTensor {
    TrainableTensor(
      name: LoRATargets.keyPrefix + name, shape: shape,
      values: [Float](repeating: 0, count: shape.reduce(1, *)))
  }
}
