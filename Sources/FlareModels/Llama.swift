import Dispatch
import FlareAdapters
import FlareArchitectures
import FlareCore
import FlareGGUF
import FlareTensor

/// A Llama-family decoder (SmolLM2, Llama 2/3, …) running in F32: token embedding, RMSNorm,
/// RoPE, grouped-query attention, SwiGLU MLP, tied or untied output head, a KV cache, batched
/// prefill with padding, and LoRA adapters applied unmerged.
///
/// HF folders use transformers' RoPE (`rotate_half`); GGUF files keep llama.cpp's permuted Q/K
/// rows and use adjacent-pair RoPE, which computes the same function.
public final class LlamaModel: @unchecked Sendable {
  // @unchecked Sendable: immutable after load (adapters are attached and `trainingThreads` set
  // before use).
  /// One transformer block's weights.
  public struct Block: Sendable {
    public let attentionNorm: Weight
    public var q: Linear
    public var k: Linear
    public var v: Linear
    /// Qwen3's per-head RMSNorm weights of queries and keys (`[headDim]`), applied before RoPE.
    public let queryNorm: Weight?
    public let keyNorm: Weight?
    public var o: Linear
    public let mlpNorm: Weight
    /// Gemma's norms of the attention and MLP outputs before they join the residual.
    public let attentionOutputNorm: Weight?
    public let mlpOutputNorm: Weight?
    public var gate: Linear
    public var up: Linear
    public var down: Linear
  }

  public let config: DecoderConfig
  public let ropeStyle: Kernels.RopeStyle
  public let source: WeightSource
  public let embedding: Weight
  public private(set) var blocks: [Block]
  public let finalNorm: Weight
  public private(set) var head: Linear

  /// Threads of a training or evaluation pass (``trainingPass(batch:state:gradientScale:)``):
  /// the pass runs BLAS single-threaded and splits its work itself, rows in fixed chunks and
  /// attention by (sequence, head), so its results are bit-identical for any thread count.
  /// Inference (``forward(tokens:mask:cache:logits:)``) uses BLAS's own threads instead.
  public var trainingThreads = 1
  /// Gradient checkpointing in training passes: the forward pass keeps only each block's input
  /// (one slot per region otherwise, overwritten block by block), and the backward pass runs
  /// each block's forward again from its input before going back through it. Activation
  /// memory falls from every block's to one block's plus the residual stream, for one more
  /// forward pass of the blocks; the recomputation repeats the same operations on the same
  /// values. The LM head also takes fewer rows a call (``checkpointingHeadChunk``), which
  /// rounds its products apart in the last bits once a batch has more rows than that.
  public var gradientCheckpointing = false
  /// The activation buffers of training and evaluation passes, kept for the next pass.
  let storagePool = StoragePool()

  /// How the model computes with a quantized GGUF's matrices.
  public let compute: ComputeMode

  /// Loads a Llama model from an HF folder (`config.json` + safetensors) or a GGUF file
  /// (architecture `llama`). With `compute` `.f32` quantized tensors are dequantized to F32
  /// once; with `.quantized` a GGUF's quantized (and F16/BF16) matrices stay mapped as the file
  /// stores them and run on the quantized kernels.
  /// - Throws: ``FlareError`` naming the file and key for an invalid config (see
  ///   ``DecoderConfig``), the file and tensor for a missing tensor or a shape that disagrees
  ///   with the config, or an unsupported architecture.
  public convenience init(path: String, compute: ComputeMode = .f32) throws {
    try self.init(source: try WeightSource(path: path), compute: compute)
  }

  /// Loads a Llama model from an opened ``WeightSource``.
  public init(source: WeightSource, compute: ComputeMode = .f32) throws {
    self.source = source
    self.compute = compute
    let config: DecoderConfig
    let name: (String) -> String
    if let gguf = source.gguf {
      config = try DecoderConfig(gguf: gguf)
      try config.checkTensors(config.hfShapes(of: gguf), complete: true)
      ropeStyle = config.family.ggufPermutesQueryKey ? .pairs : .halves
      name = { [family = config.family] in family.ggufName(hf: $0) ?? $0 }
    } else {
      let configPath = "\(source.configFolder)/config.json"
      config = try DecoderConfig(hfConfig: try source.config(), path: configPath)
      try config.checkTensors(source.tensorShapes, complete: true)
      ropeStyle = .halves
      name = { $0 }
    }
    // The config is checked (counts, head grouping, even head size, tensor shapes); every
    // tensor below is also checked to exist with the shape it gives.
    self.config = config
    let c = config.embeddingLength
    let qDim = config.headCount * config.headDim
    let kvDim = config.headCountKV * config.headDim
    let ff = config.feedForwardLength
    func weight(_ hf: String, _ shape: [Int]) throws -> Weight {
      try source.weight(name(hf), shape: shape, compute: compute)
    }
    func linear(_ path: String, _ shape: [Int], bias: Bool = false) throws -> Linear {
      Linear(
        path: path, weight: try weight("\(path).weight", shape),
        bias: bias ? try weight("\(path).bias", [shape[0]]) : nil)
    }
    let family = config.family
    let biased = family.queryKeyValueBias
    /// A norm's weight as the pass multiplies by it: Gemma's HF checkpoints store `w` for a
    /// factor of `1 + w` (added here in F32, as transformers does); its GGUFs store `1 + w`.
    func norm(_ path: String, _ size: Int) throws -> Weight {
      let stored = try weight("\(path).weight", [size])
      guard family.normAddsOne, source.gguf == nil else { return stored }
      return Weight(name: stored.name, shape: stored.shape, values: stored.values.map { 1 + $0 })
    }
    func headNorm(_ path: String) throws -> Weight? {
      family.queryKeyNorm ? try norm(path, config.headDim) : nil
    }
    let outputNorms = try family.outputNorms.map { parts in
      try (0..<config.blockCount).map { i in
        (
          try norm("model.layers.\(i).\(parts.attention)", c),
          try norm("model.layers.\(i).\(parts.mlp)", c)
        )
      }
    }
    embedding = try weight("model.embed_tokens.weight", [config.vocabSize, c])
    var blocks: [Block] = []
    for i in 0..<config.blockCount {
      let p = "model.layers.\(i)"
      blocks.append(
        Block(
          attentionNorm: try norm("\(p).input_layernorm", c),
          q: try linear("\(p).self_attn.q_proj", [qDim, c], bias: biased),
          k: try linear("\(p).self_attn.k_proj", [kvDim, c], bias: biased),
          v: try linear("\(p).self_attn.v_proj", [kvDim, c], bias: biased),
          queryNorm: try headNorm("\(p).self_attn.q_norm"),
          keyNorm: try headNorm("\(p).self_attn.k_norm"),
          o: try linear("\(p).self_attn.o_proj", [c, qDim]),
          mlpNorm: try norm("\(p).\(family.mlpNorm)", c),
          attentionOutputNorm: outputNorms?[i].0, mlpOutputNorm: outputNorms?[i].1,
          gate: try linear("\(p).mlp.gate_proj", [ff, c]),
          up: try linear("\(p).mlp.up_proj", [ff, c]),
          down: try linear("\(p).mlp.down_proj", [c, ff])))
    }
    self.blocks = blocks
    finalNorm = try norm("model.norm", c)
    if source.contains(name("lm_head.weight")) {
      head = try linear("lm_head", [config.vocabSize, c])
    } else {
      // Tied: the head is the embedding matrix.
      head = Linear(path: "lm_head", weight: embedding)
    }
  }

  /// Bytes of the weights as held in memory: quantized matrices at their file size, everything
  /// else as F32 (a tied head counted once).
  public var weightBytes: Int {
    func bytes(_ w: Weight) -> Int {
      if let q = w.quantized { return q.rows * q.rowBytes }
      return 4 * w.count
    }
    var total = bytes(embedding) + bytes(finalNorm)
    for block in blocks {
      total += bytes(block.attentionNorm) + bytes(block.mlpNorm)
      total += [block.queryNorm, block.keyNorm, block.attentionOutputNorm, block.mlpOutputNorm]
        .compactMap { $0 }.map(bytes).reduce(0, +)
      for linear in [block.q, block.k, block.v, block.o, block.gate, block.up, block.down] {
        total += bytes(linear.weight) + (linear.bias.map(bytes) ?? 0)
      }
    }
    if head.weight.name != embedding.name { total += bytes(head.weight) }
    return total
  }

  /// Every linear layer, in a fixed order (blocks' q, k, v, o, gate, up, down, then the head).
  public var linears: [Linear] {
    blocks.flatMap { [$0.q, $0.k, $0.v, $0.o, $0.gate, $0.up, $0.down] } + [head]
  }

  /// Applies PEFT LoRA adapters unmerged (`y = W·x + s·B·A·x`) to the layers they target.
  /// For GGUF models, `B`'s rows of Q and K adapters are permuted to GGUF's order.
  /// - Throws: ``FlareError`` as ``RuntimeAdapters/attach(_:to:permuteRows:)``.
  public func attach(adapters given: [(adapter: PEFTAdapter, weight: Double)]) throws {
    // llama.cpp LoRA GGUFs name modules as GGUF tensors (blk.0.attn_q): use the HF paths.
    let adapters = given.map { entry in
      var adapter = entry.adapter
      for i in adapter.modules.indices {
        let path = adapter.modules[i].path
        if let hf = config.family.hfName(gguf: "\(path).weight"), hf.hasSuffix(".weight") {
          adapter.modules[i].path = String(hf.dropLast(".weight".count))
        }
      }
      return (adapter: adapter, weight: entry.weight)
    }
    if ropeStyle == .halves {
      for (adapter, _) in adapters {
        for module in adapter.modules
        where module.rowsInGGUFOrder
          && (module.path.hasSuffix(".q_proj") || module.path.hasSuffix(".k_proj"))
        {
          throw FlareError(
            "adapter", .unsupported,
            "this llama.cpp LoRA GGUF holds \(module.path) in GGUF's permuted row order; apply it to the GGUF model (or use the PEFT adapter with this HF folder)",
            path: adapter.path)
        }
      }
    }
    var all = linears
    let heads = config.headCount
    let kvHeads = config.headCountKV
    let gguf = ropeStyle == .pairs
    try RuntimeAdapters.attach(adapters, to: &all) { path in
      guard gguf else { return nil }
      if path.hasSuffix(".self_attn.q_proj") { return heads }
      if path.hasSuffix(".self_attn.k_proj") { return kvHeads }
      return nil
    }
    for i in blocks.indices {
      let s = i * 7
      blocks[i].q = all[s]
      blocks[i].k = all[s + 1]
      blocks[i].v = all[s + 2]
      blocks[i].o = all[s + 3]
      blocks[i].gate = all[s + 4]
      blocks[i].up = all[s + 5]
      blocks[i].down = all[s + 6]
    }
    head = all[blocks.count * 7]
  }

  /// A cache for `batch` sequences of up to `capacity` tokens, at most the model's context
  /// length (a forward pass beyond it fails with "the context is full").
  public func makeCache(batch: Int, capacity: Int) -> KVCache {
    KVCache(
      layers: config.blockCount, batch: batch,
      capacity: max(1, min(capacity, config.contextLength)),
      kvDim: config.headCountKV * config.headDim)
  }

  /// Which positions' logits ``forward(tokens:mask:cache:logits:)`` returns.
  public enum LogitRows: Sendable {
    /// Each sequence's last real (unmasked) token in this call: `[B × vocab]`.
    case last
    /// Every position: `[B·T × vocab]`.
    case all
  }

  /// Runs `tokens` (`B` sequences of `T` tokens, padded; `mask[b][t]` false marks padding)
  /// through the model after what `cache` already holds, appends them to the cache and returns
  /// logits.
  ///
  /// Positions count real tokens only (transformers' `cumsum(mask) − 1`), so left padding
  /// gives the same logits as no padding. Padding keys are never attended to.
  /// `head` replaces the LM head (a sequence-classification `score` layer gives class logits).
  /// - Throws: ``FlareError`` for token ids outside the vocabulary, ragged or empty batches,
  ///   or a cache that is full.
  public func forward(
    tokens: [[Int]], mask: [[Bool]]? = nil, cache: KVCache, logits rows: LogitRows = .last,
    head: Linear? = nil
  ) throws -> [Float] {
    let batch = tokens.count
    guard batch == cache.batch, let t = tokens.first?.count, t > 0,
      tokens.allSatisfy({ $0.count == t })
    else {
      throw FlareError(
        "model", .invalidArgument,
        "a batch needs \(cache.batch) sequences of the same non-zero length")
    }
    let mask = mask ?? tokens.map { [Bool](repeating: true, count: $0.count) }
    guard mask.count == batch, mask.allSatisfy({ $0.count == t }) else {
      throw FlareError("model", .invalidArgument, "the mask does not match the tokens' shape")
    }
    guard cache.length + t <= cache.capacity else {
      throw FlareError(
        "model", .invalidArgument,
        "the context is full: \(cache.length) + \(t) tokens exceed the cache's \(cache.capacity)")
    }
    for sequence in tokens {
      for id in sequence where id < 0 || id >= config.vocabSize {
        throw FlareError(
          "model", .invalidArgument,
          "token id \(id) is outside the vocabulary (0..<\(config.vocabSize))")
      }
    }
    let c = config.embeddingLength
    let n = batch * t
    let start = cache.length

    // Positions and validity of the new slots.
    var positions = [Int](repeating: 0, count: n)
    for b in 0..<batch {
      var next = cache.nextPosition[b]
      for i in 0..<t {
        positions[b * t + i] = next
        if mask[b][i] { next += 1 }
      }
      cache.nextPosition[b] = next
      cache.valid[b].replaceSubrange(start..<(start + t), with: mask[b])
    }
    // The compact activations (one slot per region, freed on return).
    let keys = start + t
    let threads = LlamaThreads.blas
    let workers = max(1, min(threads.workers, batch * config.headCount))
    let a = LlamaActivations(
      config: config, batch: batch, length: t, keys: keys, keeping: nil,
      workers: workers)
    // The padding slots each sequence must not attend to (usually none).
    let padding = cache.valid.map { slots in (0..<keys).filter { !slots[$0] } }
    run(
      a, tokens: Array(tokens.joined()), positions: positions, padding: padding, cache: cache,
      pass: LlamaPass(threads: threads))
    cache.length += t
    let x = a.residual(blocks.count)
    let eps = config.rmsNormEpsilon

    // The rows whose logits are wanted.
    var selected: [Int]
    switch rows {
    case .all: selected = Array(0..<n)
    case .last:
      selected = (0..<batch).map { b in
        let last = mask[b].lastIndex(of: true) ?? (t - 1)
        return b * t + last
      }
    }
    let m = selected.count
    let final = Scratch([m * c])
    defer { final.free() }
    for (i, row) in selected.enumerated() {
      Kernels.rmsnorm(
        out: final[0] + i * c, rstd: nil, inp: x + row * c, weight: finalNorm.pointer, rows: 1,
        channels: c, eps: eps)
    }
    let output = head ?? self.head
    var logits = [Float](repeating: 0, count: m * output.outFeatures)
    logits.withUnsafeMutableBufferPointer { ls in
      guard let out = ls.baseAddress else { return }
      output.forward(out: out, inp: final[0], rows: m, workers: LlamaThreads.blas.workers)
      // Gemma 2's LM head: cap·tanh(logits/cap), as transformers and llama.cpp compute it.
      if let cap = config.finalSoftcap, head == nil {
        Kernels.softcap(out, count: ls.count, cap: cap)
      }
    }
    return logits
  }
}

/// What a pass adds to the frozen model's forward: how it uses threads and, for training and
/// evaluation, the trainable LoRA layers by linear-layer slot (`7·layer + j`, j over q, k, v,
/// o, gate, up, down) and the seed of their dropout masks.
struct LlamaPass {
  var threads: LlamaThreads
  var loras: [Int: TrainableLoRA] = [:]
  /// FLARE-fused LoRA layers by slot (never also in ``loras``).
  var fused: [Int: FusedLoRA] = [:]
  /// Whether LoRA dropout applies (training passes only).
  var training = false
  var seed: UInt64 = 0

  /// The slots that carry a LoRA layer, fused or not.
  var adaptedSlots: Set<Int> { Set(loras.keys).union(fused.keys) }

  /// The LoRA dropout seed of slot `slot`, or `nil` outside training.
  func loraDropoutSeed(slot: Int) -> UInt64? {
    guard training else { return nil }
    return Kernels.mix64(Kernels.mix64(seed ^ (6 &* 0xD1B5_4A32_D192_ED03)) &+ UInt64(slot))
  }
}

extension LlamaModel {
  /// The forward pass of every block, shared by inference, training and evaluation: writes
  /// `a`'s regions (every layer's when it keeps them), leaving the last block's output in
  /// `a.residual(L)`. With a cache, this call's keys and values are appended to it at slot
  /// `cache.length` and attention reads the cache; without one, attention reads `a`'s own K/V.
  /// - Parameters:
  ///   - tokens: `N = B·T` token ids, checked by the caller.
  ///   - positions: Each row's RoPE position.
  ///   - padding: Per sequence, the key slots it must not attend to.
  ///   - layers: Only these blocks, from `a.residual(layers.lowerBound)` as it stands (the
  ///     tokens are not embedded again unless the range starts at block 0): the recomputation
  ///     of gradient checkpointing. `nil`: every block.
  func run(
    _ a: LlamaActivations, tokens: [Int], positions: [Int], padding: [[Int]], cache: KVCache?,
    pass: LlamaPass, layers: Range<Int>? = nil
  ) {
    let batch = a.batch
    let t = a.length
    let n = batch * t
    let c = config.embeddingLength
    let heads = config.headCount
    let kvHeads = config.headCountKV
    let d = config.headDim
    let qDim = heads * d
    let kvDim = kvHeads * d
    let ff = config.feedForwardLength
    let eps = config.rmsNormEpsilon
    let start = cache?.length ?? 0
    let global = Kernels.ropeTables(positions: positions, headDim: d, theta: config.ropeFreqBase)
    // Gemma 3's sliding layers rotate with a base of their own.
    let local = config.ropeLocalFreqBase.map {
      Kernels.ropeTables(positions: positions, headDim: d, theta: $0)
    }
    let layers = layers ?? blocks.indices
    if layers.lowerBound == 0 {
      let x0 = a.residual(0)
      for (row, id) in tokens.enumerated() { embedding.copyRow(id, into: x0 + row * c) }
      if config.family.scalesEmbedding {
        // Gemma: × √hidden rounded to F32 (transformers' embed_scale, llama.cpp's sqrtf).
        let scale = Float(Double(c).squareRoot())
        for i in 0..<(n * c) { x0[i] *= scale }
      }
    }
    let rows = pass.threads
    /// Linear layer `j` of `block` (slot `7·layer + j`), plus the pass's trainable LoRA on it.
    func linear(
      _ layer: Int, _ j: Int, out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>
    ) {
      let slot = layer * 7 + j
      let module = blocks[layer].linear(j)
      let lora = pass.loras[slot]
      let seed = pass.loraDropoutSeed(slot: slot)
      rows.forRows(n) { r in
        let out = out + r.lowerBound * module.outFeatures
        let inp = inp + r.lowerBound * module.inFeatures
        module.forward(
          out: out, inp: inp, rows: r.count, workers: rows.quantizedWorkers,
          exact: rows.computesExactly)
        lora?.forward(
          out: out, inp: inp, rows: r.count, dropoutSeed: seed, firstRow: r.lowerBound)
      }
      pass.fused[slot]?.forward(
        out: out, target: inp, batch: batch, length: t, dropoutSeed: seed,
        workers: rows.workers)
    }
    /// Linear layers `js` of `layer` on one input: in one parallel product when they are kept
    /// quantized, carry no trainable or fused LoRA and run whole (inference), else one by one.
    func linears(
      _ layer: Int, _ js: [Int], outs: [UnsafeMutablePointer<Float>], inp: UnsafePointer<Float>
    ) {
      let slots = js.map { layer * 7 + $0 }
      if !rows.computesExactly,
        slots.allSatisfy({ pass.loras[$0] == nil && pass.fused[$0] == nil }),
        Linear.forward(
          js.map { blocks[layer].linear($0) }, outs: outs, inp: inp, rows: n,
          workers: rows.quantizedWorkers)
      {
        return
      }
      for (j, out) in zip(js, outs) { linear(layer, j, out: out, inp: inp) }
    }
    func rmsnorm(
      out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
      inp: UnsafePointer<Float>, weight: Weight
    ) {
      rows.forRows(n) { r in
        Kernels.rmsnorm(
          out: out + r.lowerBound * c, rstd: rstd + r.lowerBound, inp: inp + r.lowerBound * c,
          weight: weight.pointer, rows: r.count, channels: c, eps: eps)
      }
    }
    /// Linear layer `j` of `layer` into `projected`, through Gemma's norm of the sublayer's
    /// output when the block has one (the raw output and the norm's statistics kept in
    /// `raw` and `rstd` for the backward pass).
    func output(
      _ layer: Int, _ j: Int, inp: UnsafePointer<Float>, norm: Weight?,
      raw: LlamaActivations.Region, rstd: LlamaActivations.Region
    ) {
      let projected = a.pointer(.projected)
      guard let norm else {
        linear(layer, j, out: projected, inp: inp)
        return
      }
      let values = a.pointer(raw, layer: layer)
      linear(layer, j, out: values, inp: inp)
      rmsnorm(out: projected, rstd: a.pointer(rstd, layer: layer), inp: values, weight: norm)
    }
    /// `out = x + y` (`out` may be `x`).
    func residualAdd(
      _ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>
    ) {
      rows.forRows(n) { r in
        let o = r.lowerBound * c
        for i in o..<(o + r.count * c) { out[i] = x[i] + y[i] }
      }
    }

    for layer in layers {
      let block = blocks[layer]
      let x = a.residual(layer)
      let normed = a.pointer(.attentionNormed, layer: layer)
      let q = a.pointer(.q, layer: layer)
      let k = a.pointer(.k, layer: layer)
      let v = a.pointer(.v, layer: layer)
      let context = a.pointer(.context, layer: layer)
      let projected = a.pointer(.projected)
      let mid = a.pointer(.mid, layer: layer)
      rmsnorm(
        out: normed, rstd: a.pointer(.attentionRstd, layer: layer), inp: x,
        weight: block.attentionNorm)
      if let queryNorm = block.queryNorm, let keyNorm = block.keyNorm {
        // Qwen3: the projections, then each head RMS-normalised (kept for the backward pass).
        let (rawQ, rawK) = (a.pointer(.rawQ, layer: layer), a.pointer(.rawK, layer: layer))
        let (qRstd, kRstd) = (a.pointer(.qRstd, layer: layer), a.pointer(.kRstd, layer: layer))
        linears(layer, [0, 1, 2], outs: [rawQ, rawK, v], inp: normed)
        rows.forRows(n) { r in
          let first = r.lowerBound
          Kernels.rmsnorm(
            out: q + first * qDim, rstd: qRstd + first * heads, inp: rawQ + first * qDim,
            weight: queryNorm.pointer, rows: r.count * heads, channels: d, eps: eps)
          Kernels.rmsnorm(
            out: k + first * kvDim, rstd: kRstd + first * kvHeads, inp: rawK + first * kvDim,
            weight: keyNorm.pointer, rows: r.count * kvHeads, channels: d, eps: eps)
        }
      } else {
        linears(layer, [0, 1, 2], outs: [q, k, v], inp: normed)
      }
      let sliding = config.slidingLayers[layer]
      let (cosines, sines) = sliding ? local ?? global : global
      cosines.withUnsafeBufferPointer { cs in
        sines.withUnsafeBufferPointer { ss in
          guard let cos = cs.baseAddress, let sin = ss.baseAddress else { return }
          rows.forRows(n) { r in
            let first = r.lowerBound
            let half = d / 2
            Kernels.rope(
              q + first * qDim, rows: r.count, stride: qDim, heads: heads, headDim: d,
              cos: cos + first * half, sin: sin + first * half, style: ropeStyle)
            Kernels.rope(
              k + first * kvDim, rows: r.count, stride: kvDim, heads: kvHeads, headDim: d,
              cos: cos + first * half, sin: sin + first * half, style: ropeStyle)
          }
        }
      }
      // With a cache, append this call's keys and values, then attend over all of it.
      let keyStore: UnsafeMutablePointer<Float>
      let valueStore: UnsafeMutablePointer<Float>
      let offsets: [Int]
      if let cache {
        for b in 0..<batch {
          let slot = cache.offset(layer: layer, sequence: b, slot: start)
          (cache.keys + slot).update(from: k + b * t * kvDim, count: t * kvDim)
          (cache.values + slot).update(from: v + b * t * kvDim, count: t * kvDim)
        }
        (keyStore, valueStore) = (cache.keys, cache.values)
        offsets = (0..<batch).map { cache.offset(layer: layer, sequence: $0, slot: 0) }
      } else {
        (keyStore, valueStore) = (k, v)
        offsets = (0..<batch).map { $0 * t * kvDim }
      }
      // Inference on quantized matrices: attention's products in Flare's fixed order, so that
      // the logits are the same bits on every CPU (BLAS's depend on the CPU's kernels).
      attend(
        a, layer: layer, q: q, keys: keyStore, values: valueStore, offsets: offsets, out: context,
        start: start, padding: padding, window: sliding ? config.slidingWindow : nil,
        threads: pass.threads, fixedOrder: compute == .quantized && !rows.computesExactly)
      output(
        layer, 3, inp: context, norm: block.attentionOutputNorm, raw: .attentionOutput,
        rstd: .attentionOutputRstd)
      residualAdd(mid, x, projected)
      let mlpNormed = a.pointer(.mlpNormed, layer: layer)
      rmsnorm(
        out: mlpNormed, rstd: a.pointer(.mlpRstd, layer: layer), inp: mid, weight: block.mlpNorm)
      let gate = a.pointer(.gate, layer: layer)
      let up = a.pointer(.up, layer: layer)
      let act = a.pointer(.act, layer: layer)
      linears(layer, [4, 5], outs: [gate, up], inp: mlpNormed)
      let activation = config.family.activation
      // Inference on quantized matrices follows llama.cpp's arithmetic, its F16 GELU included.
      let quantizedArithmetic = compute == .quantized && !rows.computesExactly
      rows.forRows(n) { r in
        let o = r.lowerBound * ff
        switch activation {
        case .silu: Kernels.swiglu(out: act + o, gate: gate + o, up: up + o, count: r.count * ff)
        case .geluTanh:
          Kernels.geglu(
            out: act + o, gate: gate + o, up: up + o, count: r.count * ff,
            ggmlF16: quantizedArithmetic)
        }
      }
      output(
        layer, 6, inp: act, norm: block.mlpOutputNorm, raw: .mlpOutput, rstd: .mlpOutputRstd)
      residualAdd(a.residual(layer + 1), mid, projected)
    }
  }

  /// Attention of every (sequence, head) pair of one layer: query rows from `q`, keys and
  /// values of sequence `b` at `keys/values + offsets[b]` (stride `KV·d`), probabilities into
  /// `a`'s slots. Under ``LlamaThreads/blas`` the pairs are spread over `a.workers` threads
  /// with BLAS single-threaded meanwhile (restored after); under `.split` BLAS already is. Each
  /// pair runs on one thread, so the result does not depend on the split.
  func attend(
    _ a: LlamaActivations, layer: Int, q: UnsafeMutablePointer<Float>,
    keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>, offsets: [Int],
    out: UnsafeMutablePointer<Float>, start: Int, padding: [[Int]], window: Int? = nil,
    threads: LlamaThreads, fixedOrder: Bool = false
  ) {
    let heads = config.headCount
    let d = config.headDim
    let qDim = heads * d
    let kvDim = config.headCountKV * d
    let group = heads / config.headCountKV
    let t = a.length
    let keyCount = a.keys
    let pairs = a.batch * heads
    let workers = max(1, min(a.workers, pairs))
    let (scale, softcap) = (config.attentionScale, config.attentionSoftcap)
    nonisolated(unsafe) let (qs, outs, keyStore, valueStore) = (q, out, keys, values)
    let work: @Sendable (Int) -> Void = { worker in
      var pair = worker
      while pair < pairs {
        let b = pair / heads
        let head = pair % heads
        let kvHead = head / group
        Kernels.causalAttentionHead(
          out: outs + b * t * qDim + head * d, outStride: qDim, q: qs + b * t * qDim + head * d,
          qStride: qDim, k: keyStore + offsets[b] + kvHead * d,
          v: valueStore + offsets[b] + kvHead * d, kvStride: kvDim, queries: t, keys: keyCount,
          headDim: d,
          probs: a.probabilities(layer: layer, sequence: b, head: head, worker: worker),
          causalOffset: start, padding: padding[b], scale: scale, window: window,
          softcap: softcap, fixedOrder: fixedOrder)
        pair += workers
      }
    }
    if workers == 1 {
      work(0)
      return
    }
    if case .blas = threads {
      BLAS.beginSingleThreaded()
      defer { BLAS.endSingleThreaded() }
      DispatchQueue.concurrentPerform(iterations: workers, execute: work)
    } else {
      Parallel.forEach(workers, workers: workers, work)
    }
  }
}

extension LlamaModel.Block {
  /// Linear layer `j`: q, k, v, o, gate, up, down.
  func linear(_ j: Int) -> Linear {
    switch j {
    case 0: q
    case 1: k
    case 2: v
    case 3: o
    case 4: gate
    case 5: up
    default: down
    }
  }
}

/// Keys and values of every layer for a batch of sequences, plus which slots hold real tokens
/// and each sequence's next position.
public final class KVCache: @unchecked Sendable {
  // @unchecked Sendable: used by one forward pass at a time.
  public let layers: Int
  public let batch: Int
  public let capacity: Int
  public let kvDim: Int
  /// Slots filled so far (the same for every sequence of the batch).
  public internal(set) var length = 0
  /// `valid[b][slot]`: the slot holds a real token (padding is never attended to).
  public internal(set) var valid: [[Bool]]
  /// The position the next real token of each sequence gets.
  public internal(set) var nextPosition: [Int]
  let keys: UnsafeMutablePointer<Float>
  let values: UnsafeMutablePointer<Float>

  init(layers: Int, batch: Int, capacity: Int, kvDim: Int) {
    self.layers = layers
    self.batch = batch
    self.capacity = capacity
    self.kvDim = kvDim
    let count = max(1, layers * batch * capacity * kvDim)
    keys = .allocate(capacity: count)
    keys.initialize(repeating: 0, count: count)
    values = .allocate(capacity: count)
    values.initialize(repeating: 0, count: count)
    valid = [[Bool]](repeating: [Bool](repeating: false, count: capacity), count: batch)
    nextPosition = [Int](repeating: 0, count: batch)
  }

  deinit {
    keys.deallocate()
    values.deallocate()
  }

  /// The index of `slot` of sequence `sequence` in `layer`'s keys or values.
  func offset(layer: Int, sequence: Int, slot: Int) -> Int {
    ((layer * batch + sequence) * capacity + slot) * kvDim
  }

  /// Forgets everything (the memory is kept).
  public func reset() {
    length = 0
    for b in 0..<batch { valid[b] = [Bool](repeating: false, count: capacity) }
    nextPosition = [Int](repeating: 0, count: batch)
  }
}

/// Zero-filled F32 buffers allocated together and freed together.
struct Scratch {
  private let pointers: [UnsafeMutablePointer<Float>]

  init(_ counts: [Int]) {
    pointers = counts.map { count in
      let p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
      p.initialize(repeating: 0, count: max(count, 1))
      return p
    }
  }

  subscript(_ i: Int) -> UnsafeMutablePointer<Float> { pointers[i] }

  func free() { for p in pointers { p.deallocate() } }
}
