import FlareCore

// The state a training step reads and writes, shared by the models' training passes, the
// optimizer and the trainer. Base weights are never here: they stay frozen `Weight`s of the
// model; only adapter matrices and trained heads are trainable.

/// One trainable tensor: F32 values and a gradient of the same shape, row-major, named as the
/// tensor is saved (`adapter_model.safetensors` keys without PEFT's adapter name, e.g.
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
public final class TrainableTensor: @unchecked Sendable {
  // @unchecked Sendable: a training step writes `values` (optimizer) and `gradient` (backward)
  // from one thread at a time; kernels that split work write disjoint slices.
  public let name: String
  public let shape: [Int]
  public var values: [Float]
  public var gradient: [Float]

  public var count: Int { values.count }

  public init(name: String, shape: [Int], values: [Float]) {
    precondition(shape.reduce(1, *) == values.count, "shape and value count of \(name) differ")
    self.name = name
    self.shape = shape
    self.values = values
    self.gradient = [Float](repeating: 0, count: values.count)
  }

  public func zeroGradient() {
    for i in gradient.indices { gradient[i] = 0 }
  }
}

/// LoRA on one linear layer, trainable: `y = W·x + b + scale · B·(A·dropout(x))`.
public struct TrainableLoRA: Sendable {
  /// The linear layer's module path in HF naming (`model.layers.0.self_attn.q_proj`).
  public let module: String
  /// `A`, `[r, in]`.
  public let a: TrainableTensor
  /// `B`, `[out, r]`.
  public let b: TrainableTensor
  /// `alpha / r`, or `alpha / √r` with rsLoRA.
  public let scale: Float
  /// Dropout probability on the LoRA input only (PEFT's `lora_dropout`).
  public let dropout: Float

  public var rank: Int { a.shape[0] }
  public var inFeatures: Int { a.shape[1] }
  public var outFeatures: Int { b.shape[0] }

  public init(module: String, a: TrainableTensor, b: TrainableTensor, scale: Float, dropout: Float)
  {
    self.module = module
    self.a = a
    self.b = b
    self.scale = scale
    self.dropout = dropout
  }
}

/// What a model's training pass needs besides the batch: the trainable adapter layers (by
/// module path), trained head tensors (by the name the model gives them), and the randomness
/// of this micro-batch.
public struct TrainingState: Sendable {
  /// LoRA layers by module path; modules without an entry run frozen.
  public var loras: [String: TrainableLoRA]
  /// Fully trained tensors (classification heads, PEFT's `modules_to_save`) by saved name.
  public var heads: [String: TrainableTensor]
  /// Dropout inside the model (BERT/XLM-R hidden and attention dropout); 0 turns it off.
  public var modelDropout: Float
  /// Seed of every dropout mask of this micro-batch (LoRA and model dropout); the trainer
  /// derives it from the run's seed and the micro-batch's global index, so a resumed run draws
  /// the same masks.
  public var seed: UInt64
  /// FLARE: which LoRA layers fuse the source state, and how (`nil`: plain LoRA).
  public var fusion: TrainingFusion?

  public init(
    loras: [String: TrainableLoRA], heads: [String: TrainableTensor] = [:],
    modelDropout: Float = 0, seed: UInt64 = 0, fusion: TrainingFusion? = nil
  ) {
    self.loras = loras
    self.heads = heads
    self.modelDropout = modelDropout
    self.seed = seed
    self.fusion = fusion
  }

  /// Every trainable tensor in a fixed order (LoRA `A`, `B` by module path, then heads by
  /// name, then FLARE's cross-attention weights by module path): the order of the optimizer
  /// state and of the saved file.
  public var parameters: [TrainableTensor] {
    loras.sorted { $0.key < $1.key }.flatMap { [$0.value.a, $0.value.b] }
      + heads.sorted { $0.key < $1.key }.map(\.value)
      + (fusion?.attention ?? [:]).sorted { $0.key < $1.key }.flatMap(\.value.tensors)
  }
}

/// One micro-batch, padded: `tokens[b][t]`, `mask[b][t]` false for padding.
public struct TrainingBatch: Sendable {
  public var tokens: [[Int]]
  public var mask: [[Bool]]
  /// BERT/XLM-R segment ids (`text_pair`), or `nil` for all zeros.
  public var tokenTypes: [[Int]]?
  public var targets: Targets
  /// FLARE: the parallel English text of each sequence, padded to the same length as
  /// `tokens` (position `j` fuses with position `j`), and its mask; `nil` without a source.
  public var source: [[Int]]?
  public var sourceMask: [[Bool]]?
  /// FLARE inference: per sequence and target position, the source position whose state that
  /// position fuses (the source may then have another length than the target); `nil`:
  /// position `j` fuses source position `j`. Evaluation passes only (generation, where the
  /// generated positions reuse a chosen source state).
  public var sourceRows: [[Int]]?
  /// FLARE evaluation: `S = A·x_s` of every fused module (by module path, `B·T_s × r` in
  /// source row order), from ``LlamaModel/sourceProjections(batch:state:)``; the pass then
  /// skips its source pass (generation reuses them at every step).
  public var sourceProjections: [String: [Float]]?

  public enum Targets: Sendable {
    /// Causal LM: transformers' `labels`, aligned with `tokens` (not shifted: the model shifts,
    /// so position `t` is scored against `labels[b][t + 1]`), `-100` where no loss is taken.
    case tokens([[Int]])
    /// Sequence classification: one class index per sequence.
    case classes([Int])
  }

  public init(
    tokens: [[Int]], mask: [[Bool]], tokenTypes: [[Int]]? = nil, targets: Targets,
    source: [[Int]]? = nil, sourceMask: [[Bool]]? = nil
  ) {
    self.tokens = tokens
    self.mask = mask
    self.tokenTypes = tokenTypes
    self.targets = targets
    self.source = source
    self.sourceMask = sourceMask
  }
}

/// The result of one training pass over a micro-batch.
public struct TrainingPassResult: Sendable {
  /// The unnormalised loss: the sum of the cross-entropies of every scored position (causal
  /// LM) or example (classification).
  public var lossSum: Double
  /// How many positions or examples were scored.
  public var count: Int
  /// Classification only: the predicted class of each sequence (argmax of the logits).
  public var predictions: [Int]?

  public init(lossSum: Double, count: Int, predictions: [Int]? = nil) {
    self.lossSum = lossSum
    self.count = count
    self.predictions = predictions
  }
}

/// A model that can be trained with adapters: one forward pass that keeps what the backward
/// pass needs, then the backward pass, accumulating (`+=`) every gradient into the trainable
/// tensors of `state`. The gradient is that of `gradientScale · lossSum`, so the trainer passes
/// `1 / N` with `N` the label count of the whole optimizer step (transformers ≥ 4.46) or the
/// number of examples of the step (classification).
public protocol TrainableModel: AnyObject {
  /// The linear layers' module paths (HF naming), in model order: what LoRA can target.
  var linearModules: [String] { get }
  /// The `[out, in]` shape of a linear layer by module path.
  func linearShape(_ module: String) -> (outFeatures: Int, inFeatures: Int)?

  /// Threads of a training or evaluation pass. Passes split their work in a fixed partition
  /// and run BLAS single-threaded, so results are bit-identical for any count.
  var trainingThreads: Int { get set }

  func trainingPass(batch: TrainingBatch, state: TrainingState, gradientScale: Float) throws
    -> TrainingPassResult

  /// The same loss without gradients (validation): no dropout, no gradient buffers.
  func evaluationPass(batch: TrainingBatch, state: TrainingState) throws -> TrainingPassResult
}
