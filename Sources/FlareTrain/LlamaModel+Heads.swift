import FlareModels

/// Llama classification heads for flare-train: `LlamaForSequenceClassification`'s `score`,
/// from the checkpoint when it has one, a fresh transformers-style initialisation otherwise
/// (``LlamaModel/makeScoreHead(labelCount:seed:adapter:)``).
extension LlamaModel: ClassificationHeadProvider {
  /// PEFT's `SEQ_CLS` defaults (`classifier`, `score`).
  public var classificationModules: [String] { ClassificationHeads.modulesToSave }

  public func makeClassificationHead(classes: Int, random: inout SplitMix64) throws
    -> [TrainableTensor]
  {
    [try makeScoreHead(labelCount: classes, seed: random.next())]
  }
}
