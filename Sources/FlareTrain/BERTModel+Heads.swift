import FlareModels

/// BERT/XLM-R classification heads for flare-train: the model builds them itself
/// (``BERTModel/makeClassificationHead(labelCount:seed:adapter:)``: the checkpoint's pooler or
/// classifier when it has one, a fresh transformers-style initialisation otherwise).
extension BERTModel: ClassificationHeadProvider {
  /// PEFT's `SEQ_CLS` defaults, plus `pooler` when the head trains BERT's pooler: without it in
  /// `modules_to_save`, PEFT would not load the trained pooler.
  public var classificationModules: [String] {
    let pooler = classificationHeadNames.contains { $0.contains(".pooler.") }
    return ClassificationHeads.modulesToSave + (pooler ? ["pooler"] : [])
  }

  public func makeClassificationHead(classes: Int, random: inout SplitMix64) throws
    -> [TrainableTensor]
  {
    let heads = try makeClassificationHead(labelCount: classes, seed: random.next())
    return classificationHeadNames.compactMap { heads[$0] }
  }
}
