/// The checked inputs of one encoder call: a padded batch of `B` rows of `T` tokens, flattened
/// row-major (`n = b·T + t`).
struct BERTInputs: Sendable {
  var batch: Int
  var length: Int
  var tokens: [Int]
  var positions: [Int]
  var types: [Int]
  /// Whether token `n` is a real token (a key other tokens may attend to).
  var mask: [Bool]
}

/// The buffers of one encoder forward pass, in the style of llm.c's `ActivationTensors`: one
/// allocation cut into named regions, holding every value the matching backward pass needs
/// (LayerNorm inputs, means and reciprocal standard deviations, Q/K/V, attention probabilities,
/// the pre-GELU activations) so that it can run without recomputing anything.
///
/// Made by ``BERTModel/forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)`` and by the
/// training passes (``BERTModel/trainingPass(batch:state:gradientScale:)`` keeps all layers for
/// its backward pass, ``BERTModel/evaluationPass(batch:state:)`` does not). With
/// `keepingAllLayers` every layer has its own slots; without it (inference) the layers reuse one
/// set of slots, the residual stream ping-pongs between two, and attention probabilities are kept
/// for one sequence at a time, so only ``hiddenStates`` is meaningful afterwards.
///
/// The struct shares its storage between copies; it is written only by the pass that made it.
public struct BERTActivations: @unchecked Sendable {
  // @unchecked Sendable: the storage is written once, by the forward pass, before it is returned.

  /// The regions of the allocation. Per-layer regions have one slot per layer (or one slot).
  enum Region: Int, CaseIterable {
    /// `[B·T×C]` word + token type + position embeddings, the embedding LayerNorm's input.
    case embeddingSum
    /// `[B·T]` the embedding LayerNorm's means and reciprocal standard deviations.
    case embeddingMean, embeddingRstd
    /// `[B·T×C]` per slot: slot `l` is layer `l`'s input, slot `L` the encoder's output.
    case residual
    /// `[B·T×C]` per layer: the query, key and value projections.
    case q, k, v
    /// `[B×NH×T×T]` per layer: attention probabilities (`[NH×T×T]` for one sequence when not
    /// keeping all layers).
    case probs
    /// `[B·T×C]` per layer: the heads' attention outputs, concatenated (the output dense's input).
    case context
    /// `[B·T×C]` per layer: output dense + residual, the attention LayerNorm's input.
    case attentionSum
    /// `[B·T]` per layer: the attention LayerNorm's statistics.
    case attentionMean, attentionRstd
    /// `[B·T×C]` per layer: the attention LayerNorm's output (the feed-forward input).
    case attentionNormed
    /// `[B·T×FF]` per layer: the intermediate dense output before and after GELU.
    case preGELU, postGELU
    /// `[B·T×C]` per layer: output dense + residual, the output LayerNorm's input.
    case outputSum
    /// `[B·T]` per layer: the output LayerNorm's statistics.
    case outputMean, outputRstd
  }

  /// Rows in the batch (`B`).
  public let batch: Int
  /// Tokens per row, padding included (`T`).
  public let length: Int
  /// Width of a hidden state (`C`).
  public let channels: Int
  /// Whether every layer's intermediate values were kept for a backward pass.
  public let keepsAllLayers: Bool
  /// Whether every layer's input (the residual stream) is kept, also in the compact mode (a
  /// FLARE source pass: the fused layers of block `i` read its input).
  let keepsResiduals: Bool
  let inputs: BERTInputs
  let layers: Int
  let heads: Int
  let storage: FloatStorage
  private let offsets: [Int]
  private let slotSizes: [Int]

  /// `pool`, when given, supplies the storage (a training or evaluation pass gives it back).
  init(
    config: BERTConfig, inputs: BERTInputs, keepingAllLayers: Bool,
    keepingResiduals: Bool = false, pool: StoragePool? = nil
  ) {
    batch = inputs.batch
    length = inputs.length
    channels = config.hidden
    keepsAllLayers = keepingAllLayers
    keepsResiduals = keepingAllLayers || keepingResiduals
    self.inputs = inputs
    layers = config.layers
    heads = config.heads
    let layout = Self.layout(
      config: config, batch: inputs.batch, length: inputs.length,
      keepingAllLayers: keepingAllLayers, keepingResiduals: keepingResiduals)
    offsets = layout.offsets
    slotSizes = layout.slotSizes
    storage = pool?.take(count: layout.total) ?? FloatStorage(count: layout.total)
  }

  /// Where each region starts, the size of one of its slots, and the floats of the whole
  /// layout for a `batch × length` pass.
  static func layout(
    config: BERTConfig, batch: Int, length t: Int, keepingAllLayers: Bool,
    keepingResiduals: Bool = false
  ) -> (
    offsets: [Int], slotSizes: [Int], total: Int
  ) {
    let n = batch * t
    let c = config.hidden
    let layerSlots = keepingAllLayers ? config.layers : 1
    var offsets: [Int] = []
    var slotSizes: [Int] = []
    var total = 0
    for region in Region.allCases {
      let (size, slots): (Int, Int)
      switch region {
      case .embeddingSum: (size, slots) = (n * c, 1)
      case .embeddingMean, .embeddingRstd: (size, slots) = (n, 1)
      case .residual:
        (size, slots) = (n * c, keepingAllLayers || keepingResiduals ? config.layers + 1 : 2)
      case .q, .k, .v, .context, .attentionSum, .attentionNormed, .outputSum:
        (size, slots) = (n * c, layerSlots)
      case .attentionMean, .attentionRstd, .outputMean, .outputRstd: (size, slots) = (n, layerSlots)
      case .preGELU, .postGELU: (size, slots) = (n * config.intermediate, layerSlots)
      case .probs:
        (size, slots) =
          keepingAllLayers ? (batch * config.heads * t * t, layerSlots) : (config.heads * t * t, 1)
      }
      offsets.append(total)
      slotSizes.append(size)
      total += size * slots
    }
    return (offsets, slotSizes, total)
  }

  /// The start of `region`'s slot for `layer` (ignored for single-slot regions).
  func pointer(_ region: Region, layer: Int = 0) -> UnsafeMutablePointer<Float> {
    let slot = keepsAllLayers ? layer : 0
    return storage.buffer.baseAddress! + offsets[region.rawValue]
      + slot * slotSizes[region.rawValue]
  }

  /// Layer `layer`'s input (`layer` = `L` gives the encoder's output).
  func residual(_ layer: Int) -> UnsafeMutablePointer<Float> {
    let slot = keepsResiduals ? layer : layer % 2
    return storage.buffer.baseAddress! + offsets[Region.residual.rawValue]
      + slot * slotSizes[Region.residual.rawValue]
  }

  /// The attention probabilities `[NH×T×T]` of sequence `sequence` in layer `layer`.
  func probabilities(layer: Int, sequence: Int) -> UnsafeMutablePointer<Float> {
    let base = storage.buffer.baseAddress! + offsets[Region.probs.rawValue]
    guard keepsAllLayers else { return base }
    return base + layer * slotSizes[Region.probs.rawValue] + sequence * heads * length * length
  }

  /// The encoder's output, `B×T×C` row-major (padding positions included).
  public var hiddenStates: [Float] {
    let count = batch * length * channels
    return Array(UnsafeBufferPointer(start: residual(layers), count: count))
  }

  /// The attention mask the pass used, `B×T` (`true` for tokens that may be attended to).
  public var attentionMask: [Bool] { inputs.mask }

  /// The position ids the pass used, `B×T`.
  public var positions: [Int] { inputs.positions }
}
