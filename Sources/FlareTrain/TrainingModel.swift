import FlareArchitectures
import FlareCore
import FlareModels
import FlareTokenizers

/// A model opened for training, with what the data pipeline and the plan need to know.
public struct TrainingModel {
  public var model: any TrainableModel
  public var tokenizer: Tokenizer
  /// `config.json` `model_type` or GGUF `general.architecture` (`llama`, `bert`, …).
  public var architecture: String
  public var layout: SequenceLayout
  /// The embedding table's rows: token ids must stay below it.
  public var vocabularySize: Int
  /// The side batches are padded on.
  public var paddingSide: PaddingSide
  /// The model's own training dropout (`hidden_dropout_prob`), the default of
  /// `--model-dropout`.
  public var configDropout: Float
  /// PEFT's default `target_modules` for the family.
  public var defaultTargets: [String]
  /// Bytes of F32 weights in memory.
  public var weightBytes: Int
  /// Estimated bytes of the activations a training pass keeps for `batch × length` tokens
  /// with LoRA layers on `modules`.
  public var activationBytes: @Sendable (_ batch: Int, _ length: Int, _ modules: [String]) -> Int
  /// Estimated bytes a FLARE source pass keeps for `batch × length` tokens (with the source
  /// normalized or not) on top of ``activationBytes``.
  public var sourcePassBytes: @Sendable (_ batch: Int, _ length: Int, _ normalize: Bool) -> Int =
    { _, _, _ in 0 }

  public init(
    model: any TrainableModel, tokenizer: Tokenizer, architecture: String,
    layout: SequenceLayout, vocabularySize: Int, paddingSide: PaddingSide = .right,
    configDropout: Float = 0, defaultTargets: [String], weightBytes: Int = 0,
    activationBytes: @escaping @Sendable (Int, Int, [String]) -> Int = { _, _, _ in 0 },
    sourcePassBytes: @escaping @Sendable (Int, Int, Bool) -> Int = { _, _, _ in 0 }
  ) {
    self.sourcePassBytes = sourcePassBytes
    self.model = model
    self.tokenizer = tokenizer
    self.architecture = architecture
    self.layout = layout
    self.vocabularySize = vocabularySize
    self.paddingSide = paddingSide
    self.configDropout = configDropout
    self.defaultTargets = defaultTargets
    self.weightBytes = weightBytes
    self.activationBytes = activationBytes
  }

  /// Opens a model for training: Llama (HF folder or GGUF) through `LlamaModel`, BERT and
  /// XLM-R through `BERTModel`.
  ///
  /// - Throws: ``FlareError`` `.unsupported` for other families, or "training <family> is
  ///   not available yet" when the family's model does not implement ``TrainableModel``.
  ///
  /// `compute` says how a GGUF's quantized matrices are held: as the file stores them (the
  /// passes dequantize 64-row tiles as they go; QLoRA) or dequantized to F32 at load.
  public static func open(_ path: String, task: TrainingTask, compute: ComputeMode = .f32)
    throws -> TrainingModel
  {
    let source = try WeightSource(path: path)
    let architecture = try source.architecture()
    let family = ModelFamily.named(architecture)
    guard family != nil || ["bert", "roberta", "xlm-roberta"].contains(architecture) else {
      throw FlareError(
        "train", .unsupported,
        "flare-train trains \(ModelFamily.displayNames) models and BERT/XLM-R encoders; this model is '\(architecture)'",
        path: path)
    }
    let tokenizer = try source.tokenizer()
    let paddingSide = Self.paddingSide(folder: source.gguf == nil ? source.configFolder : nil)
    switch architecture {
    case _ where family != nil:
      let llama = try LlamaModel(source: source, compute: compute)
      let model = try trainable(llama, family: "\(llama.config.family.displayName) models")
      let c = llama.config
      return TrainingModel(
        model: model, tokenizer: tokenizer, architecture: architecture, layout: .decoder,
        vocabularySize: c.vocabSize, paddingSide: paddingSide, configDropout: 0,
        defaultTargets: ["q_proj", "v_proj"], weightBytes: llama.weightBytes,
        activationBytes: { batch, length, modules in
          llama.trainingActivationBytes(
            batch: batch, length: length, loraModules: modules, threads: llama.trainingThreads)
        },
        sourcePassBytes: { batch, length, normalize in
          llama.sourcePassBytes(batch: batch, length: length, normalizeSource: normalize)
        })
    case "bert", "roberta", "xlm-roberta":
      let bert = try BERTModel.load(path: path)
      let model = try trainable(bert, family: "BERT and XLM-R encoders")
      let c = bert.config
      let json = try source.config()
      let dropout = Float(json["hidden_dropout_prob"]?.doubleValue ?? 0.1)
      let parameters =
        c.layers * (4 * c.hidden * c.hidden + 2 * c.hidden * c.intermediate + 9 * c.hidden)
        + (c.vocab + c.maxPositions + c.typeVocab) * c.hidden
      return TrainingModel(
        model: model, tokenizer: tokenizer, architecture: architecture,
        layout: SequenceLayout(architecture: architecture), vocabularySize: c.vocab,
        paddingSide: paddingSide, configDropout: dropout, defaultTargets: ["query", "value"],
        weightBytes: 4 * parameters,
        activationBytes: { batch, length, _ in
          bert.trainingActivationBytes(batch: batch, length: length, dropout: dropout > 0)
        },
        sourcePassBytes: { batch, length, _ in bert.sourcePassBytes(batch: batch, length: length) })
    default:
      throw FlareError(
        "train", .unsupported,
        "flare-train trains \(ModelFamily.displayNames) models and BERT/XLM-R encoders; this model is '\(architecture)'",
        path: path)
    }
  }

  /// The model as a ``TrainableModel``, or the refusal the tool prints until the family's
  /// training pass exists.
  static func trainable(_ model: AnyObject, family: String) throws -> any TrainableModel {
    guard let trainable = model as? any TrainableModel else {
      throw FlareError(
        "train", .unsupported,
        "training \(family) is not available yet (their training pass is not wired in)")
    }
    return trainable
  }

  /// `padding_side` from the folder's `tokenizer_config.json`, right when absent (the side
  /// transformers tokenizers and TRL's collators default to).
  static func paddingSide(folder: String?) -> PaddingSide {
    guard let folder, let bytes = try? readSmallFile("\(folder)/tokenizer_config.json"),
      let json = try? JSONParser.parse(bytes), json["padding_side"]?.stringValue == "left"
    else { return .right }
    return .left
  }
}
