import FlareArchitectures
import FlareCore
import FlareGGUF
import FlareTensor

// Causal-LM training of Llama models with LoRA: the inference forward (`LlamaModel.run`,
// keeping every layer's activations, no KV cache) with the trainable LoRA layers of a
// `TrainingState`, the LM head and cross-entropy fused and chunked (never `tokens × vocab`
// logits), and the backward pass through the frozen model into the LoRA gradients. Frozen
// weights get no gradient buffer and no weight-gradient product.
//
// GGUF models keep llama.cpp's permuted Q/K rows. Trainable tensors are always in HF (PEFT)
// order, as they are saved: inside a pass, the `B` of a LoRA on q_proj/k_proj is permuted to
// GGUF order (as `attach` permutes a loaded adapter) and its gradient permuted back.

extension LlamaModel: TrainableModel {
  /// Rows of the LM head + cross-entropy per call: `256 × vocab` logits per worker at once
  /// (SmolLM2: 50 MB). Each call's two GEMMs pack the whole head weight (113 MB for SmolLM2),
  /// so fewer, larger calls pack it less often: 256 rows instead of 64 made SmolLM2's 8×128
  /// step 6 % faster (2.96 → 2.77 s, medians of 20 steps, 5 interleaved runs each).
  static let headChunk = 256
  /// ``headChunk`` under gradient checkpointing, which trades time for memory: 64 rows hold
  /// a quarter of the logits (SmolLM2 on 2 workers: 25 MB instead of 101 MB).
  static let checkpointingHeadChunk = 64
  /// The LM head's rows per call in this model's passes.
  var headChunk: Int { gradientCheckpointing ? Self.checkpointingHeadChunk : Self.headChunk }

  /// The linear layers LoRA can target, as PEFT names them
  /// (`model.layers.0.self_attn.q_proj`, …, `model.layers.L-1.mlp.down_proj`); PEFT saves a
  /// LoRA on one as `base_model.model.<module>.lora_A.weight`. The LM head is not listed
  /// (training it is out of scope).
  public var linearModules: [String] {
    blocks.indices.flatMap { layer in (0..<7).map { blocks[layer].linear($0).path } }
  }

  public func linearShape(_ module: String) -> (outFeatures: Int, inFeatures: Int)? {
    guard let slot = linearSlots[module] else { return nil }
    let layer = blocks[slot / 7].linear(slot % 7)
    return (layer.outFeatures, layer.inFeatures)
  }

  /// Linear-layer slots (`7·layer + j`) by module path, also without the `model.` prefix.
  var linearSlots: [String: Int] {
    var index: [String: Int] = [:]
    for (slot, path) in linearModules.enumerated() {
      index[path] = slot
      index[String(path.dropFirst("model.".count))] = slot
    }
    return index
  }

  /// One forward and backward pass on `batch`, accumulating the gradient of
  /// `gradientScale · lossSum` into every LoRA `A` and `B` (and the `score` head):
  ///
  /// - Causal language modelling (targets `.tokens`, transformers' unshifted `labels`): the
  ///   cross-entropy of every position whose shifted label is not `-100` (position `t` scored
  ///   against `labels[t + 1]`) through the LM head; `state.heads` must be empty.
  /// - Sequence classification (targets `.classes`), as `LlamaForSequenceClassification`:
  ///   the `score` head (``scoreHeadName``, `[classes, C]`, no bias, in `state.heads`) on the
  ///   final norm's output at each sequence's last real token (the last position of its
  ///   mask; transformers takes the last token that is not `pad_token_id`, the same token
  ///   unless the text itself contains the pad token), and the cross-entropy of each sequence.
  ///
  /// The model runs with `state`'s LoRA layers (each with its LoRA dropout, masks from
  /// `state.seed`). Padding may be on either side: positions count real tokens
  /// (transformers' `cumsum(mask) − 1`) and padding keys are never attended to; for causal
  /// LM a padding position must carry label `-100`, and so must a real token whose
  /// predecessor is padding (left padding). Work is split over ``trainingThreads`` threads
  /// with BLAS single-threaded (restored afterwards), so results are bit-identical for any
  /// thread count.
  /// - Throws: ``FlareError`` for labels outside the vocabulary or classes outside the head,
  ///   a LoRA layer on a module the model does not have or of the wrong shape, a LoRA dropout
  ///   outside [0, 1), a non-zero `state.modelDropout` (Llama has no hidden dropout), head
  ///   tensors in a causal-LM state or anything but a fitting `score` head in a
  ///   classification state, a sequence without real tokens to classify, adapters attached
  ///   with ``attach(adapters:)``, or a batch the model cannot take.
  public func trainingPass(batch: TrainingBatch, state: TrainingState, gradientScale: Float)
    throws -> TrainingPassResult
  {
    try pass(batch: batch, state: state, gradientScale: gradientScale).result
  }

  /// The loss of `batch` without dropout and without gradients, with the compact activations
  /// of inference.
  /// - Throws: ``FlareError`` as ``trainingPass(batch:state:gradientScale:)``.
  public func evaluationPass(batch: TrainingBatch, state: TrainingState) throws
    -> TrainingPassResult
  {
    try pass(batch: batch, state: state, gradientScale: nil).result
  }

  /// An evaluation pass of sequence classification that also returns the logits: `B` rows of
  /// the `score` head's class count, in batch order (what `flare-eval classify` prints).
  /// - Throws: ``FlareError`` as ``trainingPass(batch:state:gradientScale:)``.
  public func classificationLogits(batch: TrainingBatch, state: TrainingState) throws -> (
    result: TrainingPassResult, logits: [[Float]]
  ) {
    let (result, flat) = try pass(batch: batch, state: state, gradientScale: nil)
    let b = batch.tokens.count
    guard b > 0, !flat.isEmpty else { return (result, Array(repeating: [], count: b)) }
    let width = flat.count / b
    return (result, (0..<b).map { Array(flat[($0 * width)..<(($0 + 1) * width)]) })
  }

  /// The logits of an evaluation pass (no dropout, no gradients) with the state's LoRA and
  /// FLARE layers: `rows` `.last` gives each sequence's last real position (`B × vocab`),
  /// `.all` every position (`B·T × vocab`). The batch's targets are not scored (causal-LM
  /// labels may all be `-100`). This is how `flare-eval` runs FLARE adapters: the source pass
  /// and the fused layers are those of training.
  /// - Throws: ``FlareError`` as ``trainingPass(batch:state:gradientScale:)``.
  public func evaluationLogits(batch: TrainingBatch, state: TrainingState, rows: LogitRows)
    throws -> [Float]
  {
    let b = batch.tokens.count
    let t = batch.tokens.first?.count ?? 0
    let selected: [Int]
    switch rows {
    case .all: selected = Array(0..<(b * t))
    case .last:
      selected = batch.mask.enumerated().map { row, mask in
        row * t + (mask.lastIndex(of: true) ?? (t - 1))
      }
    }
    return try pass(batch: batch, state: state, gradientScale: nil, logitRows: selected).logits
  }

  /// The bytes a FLARE training pass's source pass holds for `batch × length` tokens besides
  /// the target pass's (every block's input is kept for `A`'s gradient, and with
  /// `normalizeSource` its normed form too).
  public func sourcePassBytes(batch: Int, length: Int, normalizeSource: Bool) -> Int {
    4
      * LlamaActivations.layout(
        config: config, batch: batch, length: length, keys: length,
        keeping: normalizeSource ? [.residual, .attentionNormed] : [.residual],
        workers: min(max(1, trainingThreads), batch * config.headCount)
      ).total
  }

  /// The bytes a training pass holds for `batch × length` tokens with LoRA layers on
  /// `loraModules`, besides the weights: the activations it keeps (the same layout the pass
  /// allocates), the backward pass's gradient buffers, the final norm's, and the LM head's
  /// logit chunks on `threads` workers.
  public func trainingActivationBytes(
    batch: Int, length: Int, loraModules: [String], threads: Int
  ) -> Int {
    let slots = linearSlots
    let kept = LlamaActivations.kept(
      loraSlots: loraModules.compactMap { slots[$0] }, checkpointing: gradientCheckpointing)
    let workers = max(1, threads)
    let activations = LlamaActivations.layout(
      config: config, batch: batch, length: length, keys: length, keeping: kept,
      workers: min(workers, batch * config.headCount)
    ).total
    let n = batch * length
    let c = config.embeddingLength
    let qDim = config.headCount * config.headDim
    let kvDim = config.headCountKV * config.headDim
    let backward = n * (2 * c + 2 * qDim + 2 * kvDim + 3 * config.feedForwardLength)
    let final = n * (2 * c + 1)
    let head =
      min(workers, max(1, n / headChunk)) * headChunk
      * (config.vocabSize + 2 * c)
    return 4 * (activations + backward + final + head)
  }

  /// The saved name of `LlamaForSequenceClassification`'s head, `score` (`[classes, C]`, no
  /// bias), as PEFT saves it in `modules_to_save`.
  public static let scoreHeadName = "base_model.model.score.weight"

  /// A training pass (`gradientScale` given) or an evaluation pass (`nil`); for sequence
  /// classification also the logits, `B×classes`.
  /// With `logitRows` (evaluation only), the LM head's logits of those rows instead of a loss.
  private func pass(
    batch: TrainingBatch, state: TrainingState, gradientScale: Float?, logitRows: [Int]? = nil
  ) throws
    -> (result: TrainingPassResult, logits: [Float])
  {
    func bad(_ message: String, _ code: FlareError.Code = .invalidArgument) -> FlareError {
      FlareError("model", code, message, path: source.path)
    }
    if let attached = linears.first(where: { !$0.adapters.isEmpty }) {
      throw bad(
        "adapters are attached to \(attached.path); a training or evaluation pass takes its LoRA layers from the training state (load the model again without them)",
        .unsupported)
    }
    guard state.modelDropout == 0 else {
      throw bad(
        "model dropout \(state.modelDropout) is not supported for Llama models (they have no hidden dropout; use LoRA dropout)",
        .unsupported)
    }
    let b = batch.tokens.count
    // Causal LM: token labels, no head tensors. Classification: one class per sequence and
    // the `score` head.
    var labels: [[Int]] = []
    var classes: [Int]?
    var score: TrainableTensor?
    switch batch.targets {
    case .tokens(let tokens):
      labels = tokens
      if let name = state.heads.keys.sorted().first {
        throw bad(
          "head tensor \(name): Llama causal-LM training trains LoRA layers only (LM head and embedding training are out of scope)",
          .unsupported)
      }
    case .classes(let targets):
      classes = targets
      let c = config.embeddingLength
      guard let head = state.heads[Self.scoreHeadName], state.heads.count == 1 else {
        throw bad(
          "Llama sequence classification needs exactly the score head (\(Self.scoreHeadName)); the state has \(state.heads.keys.sorted())",
          .unsupported)
      }
      guard head.shape.count == 2, head.shape[0] >= 1, head.shape[1] == c else {
        throw bad(
          "the score head has shape \(head.shape); expected [classes, \(c)]")
      }
      guard targets.count == b else {
        throw bad("\(targets.count) class targets for a batch of \(b) sequences")
      }
      if let row = targets.firstIndex(where: { $0 < 0 || $0 >= head.shape[0] }) {
        throw bad(
          "row \(row) has class \(targets[row]), outside the score head's 0..<\(head.shape[0])")
      }
      score = head
    }
    guard b > 0 else { return (TrainingPassResult(lossSum: 0, count: 0), []) }
    let t = batch.tokens[0].count
    guard t > 0, batch.tokens.allSatisfy({ $0.count == t }) else {
      throw bad("a batch needs sequences of the same non-zero length")
    }
    guard t <= config.contextLength else {
      throw bad("sequences of \(t) tokens exceed the model's context of \(config.contextLength)")
    }
    guard batch.mask.count == b, batch.mask.allSatisfy({ $0.count == t }) else {
      throw bad("the mask does not match the tokens' shape")
    }
    if classes == nil {
      guard labels.count == b, labels.allSatisfy({ $0.count == t }) else {
        throw bad("the labels do not match the tokens' shape")
      }
    } else if let row = batch.mask.firstIndex(where: { !$0.contains(true) }) {
      throw bad("row \(row) has no real token to classify (its mask is all padding)")
    }
    let vocab = config.vocabSize
    for (row, sequence) in batch.tokens.enumerated() {
      if let id = sequence.first(where: { $0 < 0 || $0 >= vocab }) {
        throw bad("row \(row) has token id \(id), outside the vocabulary (0..<\(vocab))")
      }
    }
    for (row, sequence) in labels.enumerated() {
      if let label = sequence.first(where: {
        $0 != Kernels.ignoreIndex && ($0 < 0 || $0 >= vocab)
      }) {
        throw bad(
          "row \(row) has label \(label), neither -100 nor a token id (0..<\(vocab))")
      }
    }
    let resolved = try resolve(state.loras)
    var loras = resolved.loras
    let shadows = resolved.shadows
    let training = gradientScale != nil
    let threads = LlamaThreads.split(workers: max(1, trainingThreads))
    var pass = LlamaPass(threads: threads, loras: loras, training: training, seed: state.seed)
    // The pass splits its work itself; BLAS's own threads would make results depend on the
    // thread count (OpenBLAS's SGEMM rounds differently with another split).
    BLAS.beginSingleThreaded()
    defer { BLAS.endSingleThreaded() }

    let n = b * t
    let c = config.embeddingLength
    /// RoPE positions (real tokens counted) and each sequence's padding slots.
    let (positions, padding) = Self.layout(batch.mask)
    // FLARE: the source pass (base weights, every adapter off, no gradient) keeps each block's
    // input; the fused LoRA layers read it.
    var sourceStorage: FloatStorage?
    defer { sourceStorage.map { storagePool.give($0) } }
    var gathered: [FloatStorage] = []
    defer { gathered.forEach { storagePool.give($0) } }
    if let fusion = state.fusion {
      let source = try checkedSource(batch, length: t, training: training)
      let ts = source.tokens[0].count
      if fusion.bakedTarget {
        guard fusion.fusion == .add, !training else {
          throw bad(
            "a baked FLARE adapter (target path folded into the weights) is evaluated with the add fusion only; '\(fusion.fusion.rawValue)' is not linear in the target",
            .unsupported)
        }
      }
      let slots = linearSlots
      var fused: [(module: String, slot: Int, lora: TrainableLoRA)] = []
      for module in fusion.fusedModules.sorted() {
        guard let slot = slots[module], let lora = loras[slot] else {
          throw bad("fused module \(module) has no LoRA layer in the training state")
        }
        fused.append((module, slot, lora))
      }
      /// Rows of `width` floats per source row, one per target row (the row map applied).
      func aligned(_ rows: UnsafePointer<Float>, width: Int) -> UnsafePointer<Float> {
        guard let map = batch.sourceRows else { return rows }
        let storage = storagePool.take(count: n * width)
        gathered.append(storage)
        let out = storage.buffer.baseAddress!
        for row in 0..<b {
          for j in 0..<t {
            (out + (row * t + j) * width).update(
              from: rows + (row * ts + map[row][j]) * width, count: width)
          }
        }
        return UnsafePointer(out)
      }
      var sources: [Int: FusedLoRA.FusedSource] = [:]
      if training {
        // A's gradient needs x_s itself: the source pass keeps every block's input.
        let s = try sourcePass(batch, fusion: fusion, loras: loras, threads: threads)
        sourceStorage = s.storage
        for entry in fused {
          sources[entry.slot] = .states(
            UnsafePointer(
              fusion.normalizeSource
                ? s.pointer(.attentionNormed, layer: entry.slot / 7)
                : s.residual(entry.slot / 7)))
        }
      } else {
        // Evaluation keeps only S = A·x_s per fused module (FLARE.md §7.2).
        let projections =
          try batch.sourceProjections
          ?? projectSource(batch, fusion: fusion, loras: loras, threads: threads)
        for entry in fused {
          let r = entry.lora.rank
          guard let values = projections[entry.module], values.count == b * ts * r else {
            throw bad(
              "the source projections lack \(entry.module) or do not hold \(b)×\(ts) rows of \(r)")
          }
          let storage = storagePool.take(count: values.count)
          gathered.append(storage)
          let rows = storage.buffer.baseAddress!
          rows.update(from: values, count: values.count)
          sources[entry.slot] = .projected(aligned(rows, width: r))
        }
      }
      for entry in fused {
        loras.removeValue(forKey: entry.slot)
        let function = try FusionFunction(
          checking: fusion, module: entry.module, lora: entry.lora, training: training)
        var layer = FusedLoRA(
          lora: entry.lora, function: function, attention: fusion.attention[entry.module],
          source: sources[entry.slot]!, keyMask: batch.mask)
        layer.sourceOnly = fusion.bakedTarget
        pass.fused[entry.slot] = layer
      }
      pass.loras = fusion.bakedTarget ? [:] : loras
    }
    let checkpointing = training && gradientCheckpointing
    let a = LlamaActivations(
      config: config, batch: b, length: t, keys: t,
      keeping: training
        ? LlamaActivations.kept(loraSlots: pass.adaptedSlots, checkpointing: checkpointing) : nil,
      workers: min(threads.workers, b * config.headCount), pool: storagePool)
    defer { storagePool.give(a.storage) }
    let tokens = Array(batch.tokens.joined())
    run(a, tokens: tokens, positions: positions, padding: padding, cache: nil, pass: pass)
    /// Gradient checkpointing: block `layer`'s activations again, from its kept input.
    let recompute: ((Int) -> Void)? =
      checkpointing
      ? { [self] layer in
        run(
          a, tokens: tokens, positions: positions, padding: padding, cache: nil, pass: pass,
          layers: layer..<(layer + 1))
      } : nil

    // Final norm (kept for its backward), then the LM head + cross-entropy in fixed row groups
    // (or the score head on the last real tokens).
    let final = storagePool.take(count: n * c + n + (training ? n * c : 0))
    defer { storagePool.give(final) }
    let normed = final.buffer.baseAddress!
    let (rstd, dnormed) = (normed + n * c, normed + n * c + n)
    let x = a.residual(blocks.count)
    threads.forRows(n) { r in
      Kernels.rmsnorm(
        out: normed + r.lowerBound * c, rstd: rstd + r.lowerBound, inp: x + r.lowerBound * c,
        weight: finalNorm.pointer, rows: r.count, channels: c, eps: config.rmsNormEpsilon)
      // The heads write the gradient of the rows they score only.
      if training { (dnormed + r.lowerBound * c).update(repeating: 0, count: r.count * c) }
    }
    /// From the gradient of the final norm's output (`dnormed`) down to the LoRA gradients,
    /// those of GGUF-order shadows permuted back into the state's tensors.
    func backpropagate() {
      backward(
        a, pass: pass, positions: positions, dnormed: dnormed, normedInput: x, rstd: rstd,
        recompute: recompute)
      for shadow in shadows {
        let back = LlamaLayout.permuted(
          shadow.gguf.gradient, rows: shadow.hf.shape[0], heads: shadow.heads, toGGUF: false)
        for i in back.indices { shadow.hf.gradient[i] += back[i] }
      }
    }
    if let logitRows {
      let m = logitRows.count
      let gathered = storagePool.take(count: max(1, m * c))
      defer { storagePool.give(gathered) }
      let rowsIn = gathered.buffer.baseAddress!
      for (i, row) in logitRows.enumerated() {
        (rowsIn + i * c).update(from: normed + row * c, count: c)
      }
      var logits = [Float](repeating: 0, count: m * vocab)
      logits.withUnsafeMutableBufferPointer { out in
        threads.forRows(m) { r in
          head.weight.frozen.forward(
            out: out.baseAddress! + r.lowerBound * vocab, inp: rowsIn + r.lowerBound * c,
            bias: head.bias?.pointer, rows: r.count, inFeatures: c, outFeatures: vocab)
        }
      }
      if let cap = config.finalSoftcap {
        logits.withUnsafeMutableBufferPointer {
          Kernels.softcap($0.baseAddress!, count: $0.count, cap: cap)
        }
      }
      return (TrainingPassResult(lossSum: 0, count: 0), logits)
    }
    if let classes, let score {
      // LlamaForSequenceClassification: the score head on each sequence's last real token.
      let last = (0..<b).map { row in row * t + batch.mask[row].lastIndex(of: true)! }
      let (result, logits) = classify(
        rows: last, normed: normed, dnormed: training ? dnormed : nil, score: score,
        classes: classes, gradientScale: gradientScale ?? 1)
      if training { backpropagate() }
      return (result, logits)
    }
    let shifted = Kernels.shiftedLabels(Array(labels.joined()), batch: b, length: t)
    let groups = (n + headChunk - 1) / headChunk
    var losses = [Double](repeating: 0, count: groups)
    var counts = [Int](repeating: 0, count: groups)
    // Group `g` runs on worker `g % workers`, in that worker's workspace.
    let workers = min(threads.workers, groups)
    let space = headChunk * (vocab + 2 * c)
    let workspace = storagePool.take(count: workers * space)
    defer { storagePool.give(workspace) }
    losses.withUnsafeMutableBufferPointer { losses in
      counts.withUnsafeMutableBufferPointer { counts in
        shifted.withUnsafeBufferPointer { labels in
          Parallel.forEach(workers, workers: workers) { worker in
            for group in stride(from: worker, to: groups, by: workers) {
              let first = group * headChunk
              let m = min(n, first + headChunk) - first
              let (loss, count) = Kernels.lmHeadCrossEntropy(
                dinp: training ? dnormed + first * c : nil, inp: normed + first * c,
                frozen: head.weight.frozen, bias: head.bias?.pointer,
                labels: labels.baseAddress! + first, rows: m, channels: c, vocab: vocab,
                chunk: headChunk, gradientScale: gradientScale ?? 1,
                workspace: workspace.buffer.baseAddress! + worker * space,
                softcap: config.finalSoftcap)
              losses[group] = loss
              counts[group] = count
            }
          }
        }
      }
    }
    let result = TrainingPassResult(lossSum: losses.reduce(0, +), count: counts.reduce(0, +))
    if training { backpropagate() }
    return (result, [])
  }

  /// The `score` head and its cross-entropy on the pooled rows `rows` (one per sequence) of
  /// the final norm's output `normed`: logits `normed[row]·scoreᵀ` (dot products summed in
  /// double precision, rounded once), the loss `logsumexp − logit[class]` per sequence, the
  /// predictions (first largest logit), and with `dnormed` the gradients: `g = gradientScale ·
  /// (softmax − onehot)`, `score.gradient += gᵀ·normed[rows]`, `dnormed[row] = g·score`
  /// (other rows stay as they are, zero).
  private func classify(
    rows: [Int], normed: UnsafePointer<Float>, dnormed: UnsafeMutablePointer<Float>?,
    score: TrainableTensor, classes: [Int], gradientScale: Float
  ) -> (TrainingPassResult, [Float]) {
    let c = config.embeddingLength
    let k = score.shape[0]
    var logits = [Float](repeating: 0, count: rows.count * k)
    score.values.withUnsafeBufferPointer { w in
      for (i, row) in rows.enumerated() {
        let x = normed + row * c
        for j in 0..<k {
          var sum = 0.0
          for m in 0..<c { sum += Double(x[m]) * Double(w[j * c + m]) }
          logits[i * k + j] = Float(sum)
        }
      }
    }
    var lossSum = 0.0
    var predictions: [Int] = []
    var dlogits = [Float](repeating: 0, count: rows.count * k)
    logits.withUnsafeBufferPointer { z in
      dlogits.withUnsafeMutableBufferPointer { g in
        for i in rows.indices {
          var best = 0
          for j in 1..<max(k, 1) where z[i * k + j] > z[i * k + best] { best = j }
          predictions.append(best)
          g.baseAddress!.advanced(by: i * k).update(from: z.baseAddress! + i * k, count: k)
          lossSum += Kernels.crossEntropyRowInPlace(
            g.baseAddress! + i * k, classes: k, label: classes[i], scale: gradientScale)
        }
      }
    }
    if let dnormed {
      score.values.withUnsafeBufferPointer { w in
        score.gradient.withUnsafeMutableBufferPointer { dw in
          for (i, row) in rows.enumerated() {
            let x = normed + row * c
            let dx = dnormed + row * c
            for j in 0..<k {
              let gj = dlogits[i * k + j]
              for m in 0..<c {
                dw[j * c + m] += gj * x[m]
                dx[m] += gj * w[j * c + m]
              }
            }
          }
        }
      }
    }
    return (
      TrainingPassResult(lossSum: lossSum, count: rows.count, predictions: predictions), logits
    )
  }

  /// FLARE evaluation: the source pass alone (without the adapter: the base weights, or for
  /// a baked adapter the merged weights with every adapted module's LoRA subtracted) and
  /// `S = A·x_s` of every fused module, by module path, `B·T_s × r` in source row order. An
  /// evaluation pass given these (``TrainingBatch/sourceProjections``) skips its own source
  /// pass; generation computes them once.
  /// - Throws: ``FlareError`` for a state without fusion and as
  ///   ``evaluationLogits(batch:state:rows:)``.
  public func sourceProjections(batch: TrainingBatch, state: TrainingState) throws
    -> [String: [Float]]
  {
    guard let fusion = state.fusion else {
      throw FlareError(
        "model", .invalidArgument, "the state has no FLARE fusion", path: source.path)
    }
    let resolved = try resolve(state.loras)
    let threads = LlamaThreads.split(workers: max(1, trainingThreads))
    BLAS.beginSingleThreaded()
    defer { BLAS.endSingleThreaded() }
    return try projectSource(batch, fusion: fusion, loras: resolved.loras, threads: threads)
  }

  /// The source pass of a FLARE batch, keeping every block's input (and its normed form with
  /// `normalizeSource`); the caller gives the storage back to the pool.
  private func sourcePass(
    _ batch: TrainingBatch, fusion: TrainingFusion, loras: [Int: TrainableLoRA],
    threads: LlamaThreads
  ) throws -> LlamaActivations {
    let b = batch.tokens.count
    // The pass checked the source for training already; the row map is for evaluation.
    let source = try checkedSource(
      batch, length: batch.tokens.first?.count ?? 0, training: false)
    let ts = source.tokens[0].count
    var pass = LlamaPass(threads: threads)
    if fusion.bakedTarget {
      pass.loras = loras.mapValues {
        TrainableLoRA(module: $0.module, a: $0.a, b: $0.b, scale: -$0.scale, dropout: 0)
      }
    }
    let (positions, padding) = Self.layout(source.mask)
    let s = LlamaActivations(
      config: config, batch: b, length: ts, keys: ts,
      keeping: fusion.normalizeSource ? [.residual, .attentionNormed] : [.residual],
      workers: min(threads.workers, b * config.headCount), pool: storagePool)
    run(
      s, tokens: Array(source.tokens.joined()), positions: positions, padding: padding,
      cache: nil, pass: pass)
    return s
  }

  /// `S = A·x_s` of every fused module after a source pass (whose storage is given back).
  private func projectSource(
    _ batch: TrainingBatch, fusion: TrainingFusion, loras: [Int: TrainableLoRA],
    threads: LlamaThreads
  ) throws -> [String: [Float]] {
    let s = try sourcePass(batch, fusion: fusion, loras: loras, threads: threads)
    defer { storagePool.give(s.storage) }
    let rows = s.batch * s.length
    let c = config.embeddingLength
    let slots = linearSlots
    var result: [String: [Float]] = [:]
    for module in fusion.fusedModules {
      guard let slot = slots[module], let lora = loras[slot] else {
        throw FlareError(
          "model", .invalidArgument,
          "fused module \(module) has no LoRA layer in the training state", path: source.path)
      }
      let layer = slot / 7
      let states = UnsafePointer(
        fusion.normalizeSource ? s.pointer(.attentionNormed, layer: layer) : s.residual(layer))
      let r = lora.rank
      var out = [Float](repeating: 0, count: rows * r)
      out.withUnsafeMutableBufferPointer { o in
        lora.a.values.withUnsafeBufferPointer { a in
          nonisolated(unsafe) let (o, a) = (o.baseAddress!, a.baseAddress!)
          threads.forRows(rows) { range in
            BLAS.sgemm(
              transA: false, transB: true, m: range.count, n: r, k: c, alpha: 1,
              a: states + range.lowerBound * c, lda: c, b: a, ldb: c, beta: 0,
              c: o + range.lowerBound * r, ldc: r)
          }
        }
      }
      result[module] = out
    }
    return result
  }

  /// RoPE positions of padded sequences of equal length (real tokens counted, transformers'
  /// `cumsum(mask) − 1`) and each sequence's padding slots.
  private static func layout(_ mask: [[Bool]]) -> (positions: [Int], padding: [[Int]]) {
    var positions: [Int] = []
    var padding: [[Int]] = []
    for row in mask {
      var next = 0
      for real in row {
        positions.append(next)
        if real { next += 1 }
      }
      padding.append(row.indices.filter { !row[$0] })
    }
    return (positions, padding)
  }

  /// The batch's source (FLARE) after checking it against the model and the target batch.
  private func checkedSource(_ batch: TrainingBatch, length t: Int, training: Bool)
    throws -> (tokens: [[Int]], mask: [[Bool]])
  {
    func bad(_ message: String) -> FlareError {
      FlareError("model", .invalidArgument, message, path: source.path)
    }
    guard let tokens = batch.source, let mask = batch.sourceMask else {
      throw bad(
        "a FLARE pass needs the source (parallel English) tokens and mask of every sequence")
    }
    // With a row map, the source has its own length; without, the target's.
    let ts = batch.sourceRows == nil ? t : (tokens.first?.count ?? 0)
    guard tokens.count == batch.tokens.count, mask.count == tokens.count, ts > 0,
      tokens.allSatisfy({ $0.count == ts }), mask.allSatisfy({ $0.count == ts })
    else {
      throw bad(
        "the source must be padded to the target's shape (\(batch.tokens.count) sequences of \(t) tokens)"
      )
    }
    guard ts <= config.contextLength else {
      throw bad(
        "source sequences of \(ts) tokens exceed the model's context of \(config.contextLength)")
    }
    if let map = batch.sourceRows {
      guard !training else { throw bad("a source row map is for evaluation passes only") }
      guard map.count == tokens.count, map.allSatisfy({ $0.count == t }),
        map.allSatisfy({ $0.allSatisfy { $0 >= 0 && $0 < ts } })
      else {
        throw bad(
          "the source row map must give each of the \(t) target positions a source position in 0..<\(ts)"
        )
      }
    }
    for (row, sequence) in tokens.enumerated() {
      if let id = sequence.first(where: { $0 < 0 || $0 >= config.vocabSize }) {
        throw bad("source row \(row) has token id \(id), outside the vocabulary")
      }
    }
    return (tokens, mask)
  }

  /// A trainable `B` in GGUF's Q/K row order standing in for the state's (HF order) one.
  private struct Shadow {
    let hf: TrainableTensor
    let gguf: TrainableTensor
    let heads: Int
  }

  /// The state's LoRA layers by linear-layer slot, checked against the layers they target;
  /// for GGUF models, LoRA layers on q_proj/k_proj get a `B` in GGUF row order (the returned
  /// shadows, whose gradients the pass permutes back).
  private func resolve(_ loras: [String: TrainableLoRA]) throws -> (
    loras: [Int: TrainableLoRA], shadows: [Shadow]
  ) {
    let slots = linearSlots
    var result: [Int: TrainableLoRA] = [:]
    var shadows: [Shadow] = []
    for (module, lora) in loras.sorted(by: { $0.key < $1.key }) {
      func bad(_ message: String) -> FlareError {
        FlareError("adapter", .invalidArgument, message, path: source.path, tensor: module)
      }
      guard let slot = slots[module] else {
        throw bad(
          "LoRA targets a module that is not a linear layer of the model's blocks (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; the LM head is not trained)"
        )
      }
      guard result[slot] == nil else {
        throw bad("two LoRA layers target the same linear layer \(linearModules[slot])")
      }
      let layer = blocks[slot / 7].linear(slot % 7)
      let r = lora.a.shape.first ?? 0
      guard r > 0, lora.a.shape == [r, layer.inFeatures], lora.b.shape == [layer.outFeatures, r]
      else {
        throw bad(
          "LoRA does not fit: expected A [r, \(layer.inFeatures)] and B [\(layer.outFeatures), r], got A \(lora.a.shape) and B \(lora.b.shape)"
        )
      }
      guard lora.dropout >= 0 && lora.dropout < 1 else {
        throw bad("LoRA dropout \(lora.dropout) is outside [0, 1)")
      }
      let j = slot % 7
      if ropeStyle == .pairs && (j == 0 || j == 1) {
        let heads = j == 0 ? config.headCount : config.headCountKV
        let gguf = TrainableTensor(
          name: lora.b.name, shape: lora.b.shape,
          values: LlamaLayout.permuted(
            lora.b.values, rows: layer.outFeatures, heads: heads, toGGUF: true))
        shadows.append(Shadow(hf: lora.b, gguf: gguf, heads: heads))
        result[slot] = TrainableLoRA(
          module: lora.module, a: lora.a, b: gguf, scale: lora.scale, dropout: lora.dropout)
      } else {
        result[slot] = lora
      }
    }
    return (result, shadows)
  }

  /// The backward pass from the gradient of the final norm's output: through the final norm
  /// and every block down to the lowest one with a LoRA layer, accumulating the LoRA
  /// gradients. Frozen linear layers pass the gradient to their input (one GEMM each) and get
  /// none. Row-wise steps run in the pass's fixed row chunks; attention by (sequence, key/value
  /// head); each row chunk's share of the LoRA weight gradients (sums over rows) is computed
  /// beside its input gradient and the shares are added in chunk order (``LinearBackward``).
  /// With `recompute` (gradient checkpointing), each block below the last has its activations
  /// recomputed from its input before the pass goes back through it.
  private func backward(
    _ a: LlamaActivations, pass: LlamaPass, positions: [Int],
    dnormed dfinal: UnsafeMutablePointer<Float>, normedInput: UnsafePointer<Float>,
    rstd: UnsafePointer<Float>, recompute: ((Int) -> Void)? = nil
  ) {
    let b = a.batch
    let t = a.length
    let n = b * t
    let c = config.embeddingLength
    let heads = config.headCount
    let kvHeads = config.headCountKV
    let d = config.headDim
    let qDim = heads * d
    let kvDim = kvHeads * d
    let ff = config.feedForwardLength
    let threads = pass.threads
    guard let lowest = pass.adaptedSlots.min().map({ $0 / 7 }) else { return }
    let qkNorm = config.family.queryKeyNorm
    let outputNorms = config.family.outputNorms != nil
    // Gradient buffers; every region is written before it is read.
    let storage = storagePool.take(
      count: n
        * (2 * c + 2 * qDim + 2 * kvDim + 3 * ff + (qkNorm ? qDim + kvDim : 0)
          + (outputNorms ? c : 0)))
    defer { storagePool.give(storage) }
    let dres = storage.buffer.baseAddress!
    let dnormed = dres + n * c
    let dcontext = dnormed + n * c
    let dq = dcontext + n * qDim
    let dk = dq + n * qDim
    let dv = dk + n * kvDim
    let (dact, dgate, dup) = (dv + n * kvDim, dv + n * kvDim + n * ff, dv + n * kvDim + 2 * n * ff)
    // Qwen3: the gradients of the q and k projections' outputs, before the per-head norms.
    let (drawQ, drawK) = (dup + n * ff, dup + n * ff + n * qDim)
    // Gemma: the gradient of a sublayer's output before its norm.
    let draw = dup + n * ff + (qkNorm ? n * (qDim + kvDim) : 0)
    /// The gradient a sublayer's linear layer receives: `dres` itself, or through Gemma's
    /// output norm (into `draw`).
    func throughOutputNorm(
      _ norm: Weight?, _ layer: Int, raw: LlamaActivations.Region,
      rstd: LlamaActivations.Region
    ) -> UnsafePointer<Float> {
      guard let norm else { return UnsafePointer(dres) }
      rmsnormBackward(
        dinp: draw, zero: true, dout: dres, inp: a.pointer(raw, layer: layer), weight: norm,
        rstd: a.pointer(rstd, layer: layer))
      return UnsafePointer(draw)
    }
    let global = Kernels.ropeTables(positions: positions, headDim: d, theta: config.ropeFreqBase)
    let local = config.ropeLocalFreqBase.map {
      Kernels.ropeTables(positions: positions, headDim: d, theta: $0)
    }
    let activation = config.family.activation

    /// `dinp +=` the RMSNorm backward in row chunks (`dinp` zeroed first with `zero`).
    func rmsnormBackward(
      dinp: UnsafeMutablePointer<Float>, zero: Bool = false, dout: UnsafePointer<Float>,
      inp: UnsafePointer<Float>, weight: Weight, rstd: UnsafePointer<Float>
    ) {
      threads.forRows(n) { r in
        let o = r.lowerBound * c
        if zero { (dinp + o).update(repeating: 0, count: r.count * c) }
        Kernels.rmsnormBackward(
          dinp: dinp + o, dweight: nil, dout: dout + o, inp: inp + o, weight: weight.pointer,
          rstd: rstd + r.lowerBound, rows: r.count, channels: c)
      }
    }
    /// Linear layer `j` of `layer`: the frozen weight's and the LoRA's share of the input
    /// gradient (into `dinp` if given: added to it with `accumulate`, else overwriting it) and
    /// the LoRA's weight gradients.
    func linearBackward(
      _ layer: Int, _ j: Int, dinp: UnsafeMutablePointer<Float>?, accumulate: Bool = false,
      dout: UnsafePointer<Float>, inp: UnsafePointer<Float>
    ) {
      let slot = layer * 7 + j
      LinearBackward(
        blocks[layer].linear(j), lora: pass.loras[slot], fused: pass.fused[slot],
        dropoutSeed: pass.loraDropoutSeed(slot: slot)
      ).run(
        dinp: dinp, accumulate: accumulate, dout: dout, inp: inp, rows: n, length: t,
        workers: threads.workers)
    }

    rmsnormBackward(
      dinp: dres, zero: true, dout: dfinal, inp: normedInput, weight: finalNorm, rstd: rstd)
    for layer in stride(from: blocks.count - 1, through: lowest, by: -1) {
      // The last block's activations are still in their slots after the forward pass.
      if layer < blocks.count - 1 { recompute?(layer) }
      let block = blocks[layer]
      let adapted = pass.adaptedSlots
      let hasLoRA = { (js: Range<Int>) in js.contains { adapted.contains(layer * 7 + $0) } }
      let needsInput = layer > lowest
      // MLP: residual(l+1) = mid + down(silu(gate)·up); dres is the gradient of both.
      let needsMLPInput = needsInput || hasLoRA(0..<6)
      linearBackward(
        layer, 6, dinp: needsMLPInput || hasLoRA(4..<6) ? dact : nil,
        dout: throughOutputNorm(block.mlpOutputNorm, layer, raw: .mlpOutput, rstd: .mlpOutputRstd),
        inp: a.pointer(.act, layer: layer))
      if needsMLPInput || hasLoRA(4..<6) {
        let gate = a.pointer(.gate, layer: layer)
        let up = a.pointer(.up, layer: layer)
        threads.forRows(n) { r in
          let o = r.lowerBound * ff
          dgate.advanced(by: o).update(repeating: 0, count: r.count * ff)
          dup.advanced(by: o).update(repeating: 0, count: r.count * ff)
          switch activation {
          case .silu:
            Kernels.swigluBackward(
              dgate: dgate + o, dup: dup + o, gate: gate + o, up: up + o, dout: dact + o,
              count: r.count * ff)
          case .geluTanh:
            Kernels.gegluBackward(
              dgate: dgate + o, dup: dup + o, gate: gate + o, up: up + o, dout: dact + o,
              count: r.count * ff)
          }
        }
        let mlpNormed = a.pointer(.mlpNormed, layer: layer)
        linearBackward(
          layer, 4, dinp: needsMLPInput ? dnormed : nil, dout: dgate, inp: mlpNormed)
        linearBackward(
          layer, 5, dinp: needsMLPInput ? dnormed : nil, accumulate: true, dout: dup, inp: mlpNormed
        )
        if needsMLPInput {
          rmsnormBackward(
            dinp: dres, dout: dnormed, inp: a.pointer(.mid, layer: layer),
            weight: block.mlpNorm, rstd: a.pointer(.mlpRstd, layer: layer))
        }
      }
      // Attention: mid = x + o(attention(rope(q(h)), rope(k(h)), v(h))), h = norm(x).
      guard needsInput || hasLoRA(0..<4) else { continue }
      let needsAttention = needsInput || hasLoRA(0..<3)
      linearBackward(
        layer, 3, dinp: needsAttention ? dcontext : nil,
        dout: throughOutputNorm(
          block.attentionOutputNorm, layer, raw: .attentionOutput, rstd: .attentionOutputRstd),
        inp: a.pointer(.context, layer: layer))
      guard needsAttention else { continue }
      threads.forRows(n) { r in
        (dq + r.lowerBound * qDim).update(repeating: 0, count: r.count * qDim)
        (dk + r.lowerBound * kvDim).update(repeating: 0, count: r.count * kvDim)
        (dv + r.lowerBound * kvDim).update(repeating: 0, count: r.count * kvDim)
      }
      Kernels.attentionBackward(
        dq: dq, dk: dk, dv: dv, dout: dcontext, q: a.pointer(.q, layer: layer),
        k: a.pointer(.k, layer: layer), v: a.pointer(.v, layer: layer),
        probs: a.pointer(.probs, layer: layer), dropout: nil, batch: b, length: t, heads: heads,
        kvHeads: kvHeads, headDim: d, workers: threads.workers, scale: config.attentionScale,
        softcap: config.attentionSoftcap)
      let (cosines, sines) = config.slidingLayers[layer] ? local ?? global : global
      cosines.withUnsafeBufferPointer { cs in
        sines.withUnsafeBufferPointer { ss in
          let (cos, sin) = (cs.baseAddress!, ss.baseAddress!)
          threads.forRows(n) { r in
            let first = r.lowerBound
            let half = d / 2
            Kernels.ropeBackward(
              dq + first * qDim, rows: r.count, stride: qDim, heads: heads, headDim: d,
              cos: cos + first * half, sin: sin + first * half, style: ropeStyle)
            Kernels.ropeBackward(
              dk + first * kvDim, rows: r.count, stride: kvDim, heads: kvHeads, headDim: d,
              cos: cos + first * half, sin: sin + first * half, style: ropeStyle)
          }
        }
      }
      var (dqOut, dkOut) = (UnsafePointer(dq), UnsafePointer(dk))
      if let queryNorm = block.queryNorm, let keyNorm = block.keyNorm {
        let (rawQ, rawK) = (a.pointer(.rawQ, layer: layer), a.pointer(.rawK, layer: layer))
        let (qRstd, kRstd) = (a.pointer(.qRstd, layer: layer), a.pointer(.kRstd, layer: layer))
        threads.forRows(n) { r in
          let first = r.lowerBound
          (drawQ + first * qDim).update(repeating: 0, count: r.count * qDim)
          (drawK + first * kvDim).update(repeating: 0, count: r.count * kvDim)
          Kernels.rmsnormBackward(
            dinp: drawQ + first * qDim, dweight: nil, dout: dq + first * qDim,
            inp: rawQ + first * qDim, weight: queryNorm.pointer, rstd: qRstd + first * heads,
            rows: r.count * heads, channels: d)
          Kernels.rmsnormBackward(
            dinp: drawK + first * kvDim, dweight: nil, dout: dk + first * kvDim,
            inp: rawK + first * kvDim, weight: keyNorm.pointer, rstd: kRstd + first * kvHeads,
            rows: r.count * kvHeads, channels: d)
        }
        (dqOut, dkOut) = (UnsafePointer(drawQ), UnsafePointer(drawK))
      }
      let normed = a.pointer(.attentionNormed, layer: layer)
      let dh = needsInput ? dnormed : nil
      linearBackward(layer, 0, dinp: dh, dout: dqOut, inp: normed)
      linearBackward(layer, 1, dinp: dh, accumulate: true, dout: dkOut, inp: normed)
      linearBackward(layer, 2, dinp: dh, accumulate: true, dout: dv, inp: normed)
      if needsInput {
        rmsnormBackward(
          dinp: dres, dout: dnormed, inp: a.residual(layer), weight: block.attentionNorm,
          rstd: a.pointer(.attentionRstd, layer: layer))
      }
    }
  }
}
