import FlareArchitectures
import FlareGGUF
import FlareTensor

/// How a Llama pass uses threads: an explicit parameter of the pass, not a global toggle.
enum LlamaThreads: Sendable {
  /// Inference: BLAS's own threads run the GEMMs; attention's (sequence, head) pairs are spread
  /// over `BLAS.threads` workers, BLAS single-threaded meanwhile.
  case blas
  /// Training and evaluation passes: BLAS runs single-threaded (the pass sets it and restores
  /// it) and the pass splits its work itself over `workers` threads, rows in fixed chunks and
  /// attention by (sequence, head), so every value is the same for any thread count.
  case split(workers: Int)

  /// The number of threads the pass's own loops use.
  var workers: Int {
    switch self {
    case .blas: max(1, BLAS.threads)
    case .split(let workers): max(1, workers)
    }
  }

  /// The threads a quantized product inside ``forRows(_:_:)`` may use: all of them under
  /// `.blas` (which runs rows whole), one under `.split` (whose row chunks already run in
  /// parallel).
  var quantizedWorkers: Int {
    switch self {
    case .blas: max(1, BLAS.threads)
    case .split: 1
    }
  }

  /// Whether quantized matrices are multiplied in F32 on dequantized tiles (training and
  /// evaluation passes: the dequantized model's arithmetic) rather than by the quantized
  /// kernels (inference: llama.cpp's arithmetic).
  var computesExactly: Bool {
    if case .split = self { return true }
    return false
  }

  /// Runs `body` over rows `0..<n`: whole under `.blas`, in chunks of
  /// ``Parallel/rowChunk(_:)`` rows spread
  /// over the workers under `.split`.
  func forRows(_ n: Int, _ body: (Range<Int>) -> Void) {
    guard case .split(let workers) = self else {
      body(0..<n)
      return
    }
    Parallel.forRowChunks(n, workers: workers, body)
  }
}

/// The buffers of one Llama forward pass, in the style of llm.c's `ActivationTensors` (as
/// ``BERTActivations``): one allocation cut into named regions holding every value the
/// backward pass needs — each RMSNorm's input and reciprocal standard deviation, Q and K after
/// RoPE, V, the attention probabilities, SwiGLU's gate and up projections and its output.
///
/// Inference (``LlamaModel/forward(tokens:mask:cache:logits:)``) and the evaluation pass use
/// the compact single-slot mode: every layer reuses one slot per region, the residual stream
/// is updated in place (the "mid" residual and layer output alias it), SwiGLU writes over its
/// gate, and attention probabilities are one `T×S` slot per worker. Training keeps every
/// layer. The KV cache is an add-on: with one, keys and values are appended to it and
/// attention reads them from there; without one (training), attention reads this pass's K
/// and V.
final class LlamaActivations: @unchecked Sendable {
  // @unchecked Sendable: written by the one forward pass that owns it, in disjoint slices.

  enum Region: Int, CaseIterable {
    /// `[N×C]`: layer `l`'s input (slot `l`), slot `L` the last layer's output.
    case residual
    /// `[N×C]`, `[N]`: the attention RMSNorm's output and reciprocal standard deviations.
    case attentionNormed, attentionRstd
    /// `[N×H·d]`, `[N×KV·d]`, `[N×KV·d]`: Q and K after RoPE, V.
    case q, k, v
    /// `[B×H×T×T]` per layer (training), or one `[T×S]` slot per worker.
    case probs
    /// `[N×H·d]`: the heads' outputs, concatenated (`o_proj`'s input).
    case context
    /// `[N×C]`: the residual after attention, the MLP RMSNorm's input.
    case mid
    /// `[N×C]`, `[N]`: the MLP RMSNorm's output and statistics.
    case mlpNormed, mlpRstd
    /// `[N×FF]`: `gate_proj` and `up_proj` outputs, and `silu(gate)·up` (`down_proj`'s input).
    case gate, up, act
    /// `[N×C]`, one slot: a linear layer's output before it joins the residual.
    case projected
    /// `[N×H·d]`, `[N×KV·d]`, `[N·H]`, `[N·KV]`: Qwen3's q and k projections before their
    /// per-head RMSNorm, and its reciprocal standard deviations (empty for other families).
    case rawQ, rawK, qRstd, kRstd
    /// `[N×C]`, `[N]`, twice: Gemma's attention and MLP outputs before their norms, and those
    /// norms' reciprocal standard deviations (empty for other families).
    case attentionOutput, attentionOutputRstd, mlpOutput, mlpOutputRstd
  }

  let batch: Int
  let length: Int
  let keys: Int
  /// Training mode (every layer's ``kept`` regions kept) or the compact mode.
  let keepsAllLayers: Bool
  /// The regions kept for every layer in training mode.
  let kept: Set<Region>
  let workers: Int
  let heads: Int
  let storage: FloatStorage
  private let offsets: [Int]
  private let slotSizes: [Int]

  /// The regions a training pass always keeps for every layer: what the backward pass through
  /// the frozen model reads (norm inputs and statistics, Q/K/V, probabilities, SwiGLU's
  /// inputs). The linear layers' inputs (`attentionNormed`, `context`, `mlpNormed`, `act`) are
  /// needed only for the weight gradients of LoRA layers on them.
  static let backwardRegions: Set<Region> = [
    .residual, .attentionRstd, .q, .k, .v, .probs, .mid, .mlpRstd, .gate, .up, .rawQ, .rawK,
    .qRstd, .kRstd, .attentionOutput, .attentionOutputRstd, .mlpOutput, .mlpOutputRstd,
  ]

  /// The regions a training pass keeps for `loras` (linear-layer slots `7·layer + j`): the
  /// ``backwardRegions`` plus the inputs of the linear layers that carry a LoRA; with
  /// `checkpointing`, the residual stream only (each block's input; the backward pass
  /// recomputes the rest block by block into the single slots).
  static func kept(loraSlots: some Sequence<Int>, checkpointing: Bool = false) -> Set<Region> {
    if checkpointing { return [.residual] }
    var kept = backwardRegions
    for slot in loraSlots {
      switch slot % 7 {
      case 0, 1, 2: kept.insert(.attentionNormed)
      case 3: kept.insert(.context)
      case 4, 5: kept.insert(.mlpNormed)
      default: kept.insert(.act)
      }
    }
    return kept
  }

  /// - Parameters:
  ///   - batch, length: `B` sequences of `T` tokens (`N = B·T` rows).
  ///   - keys: Keys each query may see (`T` without a cache, cache length + `T` with one).
  ///   - keeping: Training: the regions kept for every layer (the others get one slot that
  ///     each layer overwrites, see ``kept(loraSlots:checkpointing:)``); `nil`: the compact mode.
  ///   - workers: Attention workers (compact mode's probability slots).
  ///   - pool: Where to take the storage from (a training or evaluation pass gives it back).
  init(
    config: DecoderConfig, batch: Int, length: Int, keys: Int, keeping: Set<Region>?, workers: Int,
    pool: StoragePool? = nil
  ) {
    self.batch = batch
    self.length = length
    self.keys = keys
    keepsAllLayers = keeping != nil
    kept = keeping ?? []
    self.workers = max(1, workers)
    heads = config.headCount
    let layout = Self.layout(
      config: config, batch: batch, length: length, keys: keys, keeping: keeping,
      workers: workers)
    offsets = layout.offsets
    slotSizes = layout.slotSizes
    let total = layout.total
    storage = pool?.take(count: total) ?? FloatStorage(count: total)
  }

  /// Where each region starts and how large one slot of it is, and the floats in all, for a
  /// pass of this shape (the arguments as ``init(config:batch:length:keys:keeping:workers:pool:)``'s).
  static func layout(
    config: DecoderConfig, batch: Int, length: Int, keys: Int, keeping: Set<Region>?, workers: Int
  ) -> (offsets: [Int], slotSizes: [Int], total: Int) {
    let keepingAllLayers = keeping != nil
    let kept = keeping ?? []
    let n = batch * length
    let c = config.embeddingLength
    let qDim = config.headCount * config.headDim
    let kvDim = config.headCountKV * config.headDim
    let ff = config.feedForwardLength
    let qkNorm = config.family.queryKeyNorm
    let outputNorms = config.family.outputNorms != nil
    var offsets: [Int] = []
    var slotSizes: [Int] = []
    var total = 0
    for region in Region.allCases {
      let layers = kept.contains(region) ? config.blockCount : 1
      var (size, slots): (Int, Int)
      switch region {
      case .residual: (size, slots) = (n * c, keepingAllLayers ? config.blockCount + 1 : 1)
      case .attentionNormed, .mlpNormed: (size, slots) = (n * c, layers)
      case .attentionRstd, .mlpRstd: (size, slots) = (n, layers)
      case .q, .context: (size, slots) = (n * qDim, layers)
      case .k, .v: (size, slots) = (n * kvDim, layers)
      case .probs:
        (size, slots) =
          keepingAllLayers
          ? (batch * config.headCount * length * keys, layers)
          : (max(1, workers) * length * keys, 1)
      case .mid, .act:
        (size, slots) = (region == .mid ? n * c : n * ff, keepingAllLayers ? layers : 0)
      case .gate, .up: (size, slots) = (n * ff, layers)
      case .projected: (size, slots) = (n * c, 1)
      case .rawQ: (size, slots) = (qkNorm ? n * qDim : 0, layers)
      case .rawK: (size, slots) = (qkNorm ? n * kvDim : 0, layers)
      case .qRstd: (size, slots) = (qkNorm ? n * config.headCount : 0, layers)
      case .kRstd: (size, slots) = (qkNorm ? n * config.headCountKV : 0, layers)
      case .attentionOutput, .mlpOutput: (size, slots) = (outputNorms ? n * c : 0, layers)
      case .attentionOutputRstd, .mlpOutputRstd: (size, slots) = (outputNorms ? n : 0, layers)
      }
      offsets.append(total)
      slotSizes.append(size)
      total += size * slots
    }
    return (offsets, slotSizes, total)
  }

  /// The start of `region`'s slot for `layer`. In the compact mode `mid` is the residual and
  /// `act` is `gate` (both updated in place).
  func pointer(_ region: Region, layer: Int = 0) -> UnsafeMutablePointer<Float> {
    var region = region
    if !keepsAllLayers {
      if region == .mid { region = .residual }
      if region == .act { region = .gate }
    }
    let slot = keepsAllLayers && kept.contains(region) ? layer : 0
    return storage.buffer.baseAddress! + offsets[region.rawValue]
      + slot * slotSizes[region.rawValue]
  }

  /// Layer `layer`'s input (`L` gives the last layer's output).
  func residual(_ layer: Int) -> UnsafeMutablePointer<Float> {
    pointer(.residual, layer: keepsAllLayers ? layer : 0)
  }

  /// Where the probabilities of (sequence `b`, head `h`) of `layer` go, `T×S`, when kept; in
  /// the compact mode, worker `worker`'s slot.
  func probabilities(layer: Int, sequence b: Int, head h: Int, worker: Int)
    -> UnsafeMutablePointer<Float>
  {
    let base = pointer(.probs, layer: layer)
    return keepsAllLayers
      ? base + (b * heads + h) * length * keys : base + worker * length * keys
  }
}
