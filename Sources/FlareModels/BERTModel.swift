import FlareAdapters
import FlareCore

/// A BERT or XLM-RoBERTa encoder (all-MiniLM-L6-v2, multilingual-e5-small, …) running in F32,
/// with LoRA adapters applied unmerged and, when the checkpoint has them, BERT's pooler and a
/// sequence-classification head.
///
/// Follows transformers' `BertModel` and `XLMRobertaModel` in inference mode (no dropout):
/// word + token-type + position embeddings and a LayerNorm, then post-LayerNorm blocks
/// (self-attention → dense → add → LayerNorm; dense → GELU → dense → add → LayerNorm). Padded
/// keys are masked out of attention; padded queries are computed like any other token.
///
/// The forward pass is written as explicit steps over flat buffers (``BERTActivations``) so a
/// backward pass can reuse what it stored.
public final class BERTModel: @unchecked Sendable {
  // @unchecked Sendable: immutable after load except `linears`, which `attach` and
  // `detachAdapters` replace; change adapters before sharing the model between threads.

  /// How ``embed(tokens:pooling:normalize:attentionMask:tokenTypes:)`` turns token states into
  /// one vector per row.
  public enum Pooling: Sendable {
    /// The mean over the row's real tokens (sentence-transformers' `mean` pooling).
    case mean
    /// The first token's state (`[CLS]` / `<s>`).
    case cls
  }

  /// The classification head found in the checkpoint.
  enum Classifier {
    /// `BertForSequenceClassification`: `classifier` on the pooler's output.
    case onPooler(Int)
    /// `XLMRobertaForSequenceClassification`: `classifier.out_proj(tanh(classifier.dense(h₀)))`.
    case roberta(dense: Int, outProj: Int)
  }

  /// One block's LayerNorm parameters.
  struct BlockNorms {
    let attentionWeight: Weight
    let attentionBias: Weight
    let outputWeight: Weight
    let outputBias: Weight
  }

  /// The hyperparameters from `config.json`.
  public let config: BERTConfig
  /// The model folder.
  public let path: String
  /// The tensor-name prefix of the checkpoint: `""`, `"bert."` or `"roberta."`.
  public let prefix: String
  /// The tensors (memory-mapped F32, or decoded once at load).
  public let source: WeightSource
  /// Every linear layer, named by its HF module path (`encoder.layer.0.attention.self.query`,
  /// with the checkpoint's prefix), which is what adapters target. Layer `l` owns indices
  /// `6l ..< 6l + 6` (query, key, value, attention output, intermediate, output); the pooler
  /// and classifier layers follow.
  public private(set) var linears: [Linear]
  let wordEmbeddings: Weight
  let positionEmbeddings: Weight
  let tokenTypeEmbeddings: Weight
  let embeddingNormWeight: Weight
  let embeddingNormBias: Weight
  let norms: [BlockNorms]
  let poolerSlot: Int?
  let classifier: Classifier?

  /// Rows per forward pass in ``embed(tokens:pooling:normalize:attentionMask:tokenTypes:)``.
  public var embeddingBatchSize = 16

  /// Threads of a training or evaluation pass (``trainingPass(batch:state:gradientScale:)``):
  /// the pass runs BLAS single-threaded and splits its work itself, rows in fixed chunks and
  /// attention by (sequence, head), so its results are bit-identical for any thread count.
  /// Inference (``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``) uses BLAS's
  /// own threads instead.
  public var trainingThreads = 1
  /// The activation buffers of training and evaluation passes, kept for the next pass.
  let storagePool = StoragePool()

  /// Whether the checkpoint has BERT's pooler (`pooler.dense`).
  public var hasPooler: Bool { poolerSlot != nil }

  /// The number of classifier outputs, if the checkpoint has a sequence-classification head.
  public var labelCount: Int? {
    switch classifier {
    case .onPooler(let slot): linears[slot].outFeatures
    case .roberta(_, let outProj): linears[outProj].outFeatures
    case nil: nil
    }
  }

  private init(
    config: BERTConfig, path: String, prefix: String, source: WeightSource, linears: [Linear],
    embeddings: [Weight], norms: [BlockNorms], poolerSlot: Int?, classifier: Classifier?
  ) {
    self.config = config
    self.path = path
    self.prefix = prefix
    self.source = source
    self.linears = linears
    wordEmbeddings = embeddings[0]
    positionEmbeddings = embeddings[1]
    tokenTypeEmbeddings = embeddings[2]
    embeddingNormWeight = embeddings[3]
    embeddingNormBias = embeddings[4]
    self.norms = norms
    self.poolerSlot = poolerSlot
    self.classifier = classifier
  }

  /// Loads an encoder from an HF folder: `config.json` and `model.safetensors` (or a sharded
  /// index). Tensor names may carry a `bert.` or `roberta.` prefix (the `…For…` task models) or
  /// none (`BertModel`, `XLMRobertaModel`, sentence-transformers).
  /// - Parameter path: The model folder.
  /// - Returns: The model, with any pooler and classification head the file has.
  /// - Throws: ``FlareError`` for an unsupported config, or naming the file and tensor for a
  ///   missing tensor or a shape that disagrees with the config.
  public static func load(path: String) throws -> BERTModel {
    let configPath = "\(path)/config.json"
    guard isDirectory(path) else {
      throw FlareError(
        "model", fileExists(path) ? .invalidArgument : .fileNotFound,
        "an encoder is loaded from an HF model folder (config.json and safetensors)", path: path)
    }
    guard fileExists(configPath) else {
      throw FlareError("model", .fileNotFound, "no config.json in the model folder", path: path)
    }
    let json = try JSONParser.parse(file: configPath, domain: "config", limit: 16 << 20)
    let config = try BERTConfig(hfConfig: json, path: configPath)
    let source = try WeightSource(path: path)
    guard source.gguf == nil else {
      throw FlareError(
        "model", .unsupported, "encoders are read from safetensors, not GGUF", path: path)
    }
    let candidates = config.kind == .bert ? ["", "bert.", "roberta."] : ["", "roberta.", "bert."]
    guard
      let prefix = candidates.first(where: {
        source.contains("\($0)embeddings.word_embeddings.weight")
      })
    else {
      throw FlareError(
        "model", .tensorNotFound,
        "is missing (also looked for it with a bert. or roberta. prefix)", path: path,
        tensor: "embeddings.word_embeddings.weight")
    }
    // Every block the tensors hold must be one the config runs (shapes are checked per tensor
    // below).
    let layerPrefix = "\(prefix)encoder.layer."
    for name in source.tensorShapes.map(\.name).sorted() where name.hasPrefix(layerPrefix) {
      let index = Int(name.dropFirst(layerPrefix.count).prefix { $0.isNumber }) ?? 0
      if index >= config.layers {
        throw FlareError(
          "config", .invalidArgument,
          "is in layer \(index), but num_hidden_layers is \(config.layers)", path: configPath,
          tensor: name, key: "num_hidden_layers")
      }
    }
    let c = config.hidden
    let ff = config.intermediate
    func weight(_ name: String, _ shape: [Int]) throws -> Weight {
      try source.weight(name, shape: shape)
    }
    func linear(_ module: String, out: Int, in inputs: Int) throws -> Linear {
      let bias = "\(module).bias"
      return Linear(
        path: module, weight: try weight("\(module).weight", [out, inputs]),
        bias: source.contains(bias) ? try weight(bias, [out]) : nil)
    }
    let e = "\(prefix)embeddings"
    let embeddings = [
      try weight("\(e).word_embeddings.weight", [config.vocab, c]),
      try weight("\(e).position_embeddings.weight", [config.maxPositions, c]),
      try weight("\(e).token_type_embeddings.weight", [config.typeVocab, c]),
      try weight("\(e).LayerNorm.weight", [c]),
      try weight("\(e).LayerNorm.bias", [c]),
    ]
    var linears: [Linear] = []
    var norms: [BlockNorms] = []
    for layer in 0..<config.layers {
      let p = "\(prefix)encoder.layer.\(layer)"
      linears += [
        try linear("\(p).attention.self.query", out: c, in: c),
        try linear("\(p).attention.self.key", out: c, in: c),
        try linear("\(p).attention.self.value", out: c, in: c),
        try linear("\(p).attention.output.dense", out: c, in: c),
        try linear("\(p).intermediate.dense", out: ff, in: c),
        try linear("\(p).output.dense", out: c, in: ff),
      ]
      norms.append(
        BlockNorms(
          attentionWeight: try weight("\(p).attention.output.LayerNorm.weight", [c]),
          attentionBias: try weight("\(p).attention.output.LayerNorm.bias", [c]),
          outputWeight: try weight("\(p).output.LayerNorm.weight", [c]),
          outputBias: try weight("\(p).output.LayerNorm.bias", [c])))
    }
    var poolerSlot: Int?
    if source.contains("\(prefix)pooler.dense.weight") {
      poolerSlot = linears.count
      linears.append(try linear("\(prefix)pooler.dense", out: c, in: c))
    }
    var classifier: Classifier?
    func rows(_ name: String) throws -> Int {
      let shape = try source.weight(name).shape
      guard shape.count == 2, shape[0] > 0 else {
        throw FlareError(
          "model", .invalidArgument, "tensor has shape \(shape), expected [labels, \(c)]",
          path: path, tensor: name)
      }
      return shape[0]
    }
    if source.contains("classifier.out_proj.weight") {
      let dense = linears.count
      linears.append(try linear("classifier.dense", out: c, in: c))
      linears.append(
        try linear("classifier.out_proj", out: try rows("classifier.out_proj.weight"), in: c))
      classifier = .roberta(dense: dense, outProj: dense + 1)
    } else if source.contains("classifier.weight") {
      guard poolerSlot != nil else {
        throw FlareError(
          "model", .tensorNotFound,
          "is missing, and the classifier on the pooler needs it",
          path: path, tensor: "\(prefix)pooler.dense.weight")
      }
      classifier = .onPooler(linears.count)
      linears.append(try linear("classifier", out: try rows("classifier.weight"), in: c))
    }
    return BERTModel(
      config: config, path: path, prefix: prefix, source: source, linears: linears,
      embeddings: embeddings, norms: norms, poolerSlot: poolerSlot, classifier: classifier)
  }

  // MARK: - Adapters

  /// Applies PEFT LoRA adapters unmerged (`y = W·x + b + s·B·A·x`) to the linear layers they
  /// target. Module paths are matched with or without the checkpoint's `bert.` / `roberta.`
  /// prefix, so an adapter trained on `BertModel` fits a `BertForSequenceClassification` file
  /// and the reverse. All adapters are attached or, on error, none.
  /// - Parameter adapters: Each adapter with its weight (a multiplier on PEFT's scaling).
  /// - Throws: ``FlareError`` as ``RuntimeAdapters/attach(_:to:permuteRows:)``.
  public func attach(adapters: [(adapter: PEFTAdapter, weight: Double)]) throws {
    let known = Set(linears.map(\.path))
    var renamed = adapters
    for i in renamed.indices {
      for j in renamed[i].adapter.modules.indices {
        let module = renamed[i].adapter.modules[j].path
        guard !known.contains(module) else { continue }
        if known.contains(prefix + module) {
          renamed[i].adapter.modules[j].path = prefix + module
        } else if let other = ["bert.", "roberta."].first(where: { module.hasPrefix($0) }),
          known.contains(prefix + module.dropFirst(other.count))
        {
          renamed[i].adapter.modules[j].path = prefix + module.dropFirst(other.count)
        }
      }
    }
    var all = linears
    try RuntimeAdapters.attach(renamed, to: &all)
    linears = all
  }

  /// Removes every attached adapter.
  public func detachAdapters() {
    for i in linears.indices { linears[i].adapters = [] }
  }

  // MARK: - Inputs

  /// Checks a batch and pads it on the right to its longest row (pad id, mask `false`).
  func prepare(tokens: [[Int]], attentionMask: [[Bool]]?, tokenTypes: [[Int]]?) throws
    -> BERTInputs
  {
    func bad(_ message: String) -> FlareError {
      FlareError("model", .invalidArgument, message, path: path)
    }
    let b = tokens.count
    if let attentionMask, attentionMask.count != b {
      throw bad("the attention mask has \(attentionMask.count) rows for \(b) rows of tokens")
    }
    if let tokenTypes, tokenTypes.count != b {
      throw bad("the token types have \(tokenTypes.count) rows for \(b) rows of tokens")
    }
    let t = tokens.map(\.count).max() ?? 0
    var inputs = BERTInputs(
      batch: b, length: t, tokens: Array(repeating: config.padTokenID, count: b * t),
      positions: Array(repeating: 0, count: b * t), types: Array(repeating: 0, count: b * t),
      mask: Array(repeating: false, count: b * t))
    for (row, ids) in tokens.enumerated() {
      let mask = attentionMask?[row]
      let types = tokenTypes?[row]
      if let mask, mask.count != ids.count {
        throw bad("row \(row) has \(ids.count) tokens but \(mask.count) attention-mask entries")
      }
      if let types, types.count != ids.count {
        throw bad("row \(row) has \(ids.count) tokens but \(types.count) token types")
      }
      for (column, id) in ids.enumerated() {
        guard id >= 0 && id < config.vocab else {
          throw bad(
            "token id \(id) (row \(row), position \(column)) is outside the vocabulary of \(config.vocab)"
          )
        }
        let type = types?[column] ?? 0
        guard type >= 0 && type < config.typeVocab else {
          throw bad(
            "token type \(type) (row \(row), position \(column)) is outside 0..<\(config.typeVocab)"
          )
        }
        let n = row * t + column
        inputs.tokens[n] = id
        inputs.types[n] = type
        inputs.mask[n] = mask?[column] ?? true
      }
    }
    switch config.kind {
    case .bert:
      guard t <= config.maxPositions else {
        throw bad(
          "a row of \(t) tokens is longer than the model's \(config.maxPositions) positions")
      }
      for row in 0..<b {
        for column in 0..<t { inputs.positions[row * t + column] = column }
      }
    case .xlmRoberta:
      // transformers' create_position_ids_from_input_ids: decided by the ids, not the mask.
      let pad = config.padTokenID
      for row in 0..<b {
        var count = 0
        for column in 0..<t {
          let n = row * t + column
          if inputs.tokens[n] == pad {
            inputs.positions[n] = pad
          } else {
            count += 1
            inputs.positions[n] = pad + count
          }
        }
        guard pad + count < config.maxPositions else {
          throw bad(
            "row \(row) has \(count) tokens; the model's \(config.maxPositions) positions allow \(config.maxPositions - pad - 1)"
          )
        }
      }
    }
    return inputs
  }

  // MARK: - Forward

  /// Runs the encoder on a batch.
  ///
  /// Rows may have different lengths; shorter rows are padded on the right with the padding
  /// token and masked. Pass an explicit `attentionMask` for batches padded by a tokenizer
  /// (left or right): `false` entries are keys no token may attend to.
  /// - Parameters:
  ///   - tokens: `B` rows of token ids (untrusted: every id is checked).
  ///   - attentionMask: Per token, whether it is real; all `true` when `nil`.
  ///   - tokenTypes: Per token, the segment (`token_type_ids`); all 0 when `nil`.
  ///   - keepingAllLayers: Keep every layer's intermediate values for a backward pass.
  /// - Returns: The activations; ``BERTActivations/hiddenStates`` is the output.
  /// - Throws: ``FlareError`` naming the model folder for an id, type or length the model
  ///   cannot take, or ragged mask and type rows.
  public func forward(
    tokens: [[Int]], attentionMask: [[Bool]]? = nil, tokenTypes: [[Int]]? = nil,
    keepingAllLayers: Bool = false
  ) throws -> BERTActivations {
    let inputs = try prepare(tokens: tokens, attentionMask: attentionMask, tokenTypes: tokenTypes)
    let activations = BERTActivations(
      config: config, inputs: inputs, keepingAllLayers: keepingAllLayers)
    run(activations)
    return activations
  }

  /// The encoder's output for a batch: `B×T×C` row-major, `T` the longest row.
  /// - Parameters: As ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``.
  /// - Returns: The last hidden states, padding positions included.
  /// - Throws: ``FlareError`` as ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``.
  public func hiddenStates(
    tokens: [[Int]], attentionMask: [[Bool]]? = nil, tokenTypes: [[Int]]? = nil
  ) throws -> [Float] {
    try forward(tokens: tokens, attentionMask: attentionMask, tokenTypes: tokenTypes)
      .hiddenStates
  }

  /// The forward pass proper, writing every region of `a`.
  ///
  /// Inference and training run this same code. `options` (a training or evaluation pass) adds
  /// the trainable LoRA layers on top of the frozen linear layers and, in training, the model's
  /// dropout (embeddings, attention probabilities, attention and feed-forward outputs, where
  /// transformers' `BertModel` applies it) with masks drawn from the pass's seed; it also
  /// splits row-wise work into fixed chunks over the pass's threads (BLAS single-threaded), so
  /// the result does not depend on the thread count. Inference runs each step whole, with
  /// BLAS's own threads.
  func run(_ a: BERTActivations, options: BERTPassOptions? = nil) {
    let n = a.batch * a.length
    guard n > 0 else { return }
    let c = config.hidden
    let t = a.length
    let ff = config.intermediate
    let heads = config.heads
    let d = config.headDim
    let inputs = a.inputs
    let dropout = options?.dropout ?? 0
    /// LayerNorm of `rows` rows from `inp` into `out`, statistics into `mean`/`rstd`.
    func layernorm(
      _ out: UnsafeMutablePointer<Float>, _ mean: UnsafeMutablePointer<Float>,
      _ rstd: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, _ weight: Weight,
      _ bias: Weight
    ) {
      forRows(n, options) { r in
        let first = r.lowerBound
        Kernels.layernorm(
          out: out + first * c, mean: mean + first, rstd: rstd + first, inp: inp + first * c,
          weight: weight.values.baseAddress!, bias: bias.values.baseAddress!, rows: r.count,
          channels: c, eps: config.eps)
      }
    }
    /// `x = dropout(x) + residual` (`x += residual` without dropout).
    func addResidual(
      _ x: UnsafeMutablePointer<Float>, _ residual: UnsafePointer<Float>,
      site: BERTPassOptions.Site
    ) {
      forRows(n, options) { r in
        let x = x + r.lowerBound * c
        if let options, dropout > 0 {
          options.applyDropout(x, rows: r, channels: c, site: site)
        }
        Kernels.add(x, residual + r.lowerBound * c, count: r.count * c)
      }
    }
    inputs.tokens.withUnsafeBufferPointer { tokens in
      inputs.positions.withUnsafeBufferPointer { positions in
        inputs.types.withUnsafeBufferPointer { types in
          Kernels.embeddingSum(
            out: a.pointer(.embeddingSum), tokens: tokens.baseAddress!,
            positions: positions.baseAddress!, types: types.baseAddress!,
            word: wordEmbeddings.values.baseAddress!,
            position: positionEmbeddings.values.baseAddress!,
            tokenType: tokenTypeEmbeddings.values.baseAddress!, rows: n, channels: c)
        }
      }
    }
    layernorm(
      a.residual(0), a.pointer(.embeddingMean), a.pointer(.embeddingRstd),
      a.pointer(.embeddingSum), embeddingNormWeight, embeddingNormBias)
    if let options, dropout > 0 {
      let x = a.residual(0)
      forRows(n, options) { r in
        options.applyDropout(x + r.lowerBound * c, rows: r, channels: c, site: .embeddings)
      }
    }
    inputs.mask.withUnsafeBufferPointer { mask in
      for layer in 0..<config.layers {
        let s = layer * 6
        let x = a.residual(layer)
        let q = a.pointer(.q, layer: layer)
        let k = a.pointer(.k, layer: layer)
        let v = a.pointer(.v, layer: layer)
        linear(s, out: q, inp: x, rows: n, options: options)
        linear(s + 1, out: k, inp: x, rows: n, options: options)
        linear(s + 2, out: v, inp: x, rows: n, options: options)
        let context = a.pointer(.context, layer: layer)
        for row in 0..<a.batch {
          let probs = a.probabilities(layer: layer, sequence: row)
          let first = row * t
          Parallel.forEach(heads, workers: options?.threads ?? 1) { head in
            let offset = first * c + head * d
            var attentionMask: UnsafeMutablePointer<Float>?
            if let options, dropout > 0 {
              // One mask over the layer's [B×NH×T×T] probabilities, cut per head.
              attentionMask = .allocate(capacity: t * t)
              options.dropoutMask(
                attentionMask!, count: t * t, site: .attention(layer),
                offset: (row * heads + head) * t * t)
            }
            defer { attentionMask?.deallocate() }
            Kernels.attentionHead(
              out: context + offset, outStride: c, q: q + offset, qStride: c, k: k + offset,
              v: v + offset, kvStride: c, queries: t, keys: t, headDim: d,
              probs: probs + head * t * t, dropout: attentionMask.map { UnsafePointer($0) }
            ) { _, key in mask[first + key] }
          }
        }
        let attentionSum = a.pointer(.attentionSum, layer: layer)
        linear(s + 3, out: attentionSum, inp: context, rows: n, options: options)
        addResidual(attentionSum, x, site: .attentionOutput(layer))
        let normed = a.pointer(.attentionNormed, layer: layer)
        layernorm(
          normed, a.pointer(.attentionMean, layer: layer),
          a.pointer(.attentionRstd, layer: layer), attentionSum, norms[layer].attentionWeight,
          norms[layer].attentionBias)
        let pre = a.pointer(.preGELU, layer: layer)
        let post = a.pointer(.postGELU, layer: layer)
        linear(s + 4, out: pre, inp: normed, rows: n, options: options)
        forRows(n, options) { r in
          let offset = r.lowerBound * ff
          (post + offset).update(from: pre + offset, count: r.count * ff)
          Kernels.gelu(post + offset, count: r.count * ff)
        }
        let outputSum = a.pointer(.outputSum, layer: layer)
        linear(s + 5, out: outputSum, inp: post, rows: n, options: options)
        addResidual(outputSum, normed, site: .output(layer))
        layernorm(
          a.residual(layer + 1), a.pointer(.outputMean, layer: layer),
          a.pointer(.outputRstd, layer: layer), outputSum, norms[layer].outputWeight,
          norms[layer].outputBias)
      }
    }
  }

  /// Linear layer `slot` (with any attached adapters) plus the pass's trainable LoRA on it.
  private func linear(
    _ slot: Int, out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows n: Int,
    options: BERTPassOptions?
  ) {
    let layer = linears[slot]
    let lora = options?.loras[slot]
    let seed = options?.loraDropoutSeed(slot: slot)
    forRows(n, options) { r in
      let out = out + r.lowerBound * layer.outFeatures
      let inp = inp + r.lowerBound * layer.inFeatures
      layer.forward(out: out, inp: inp, rows: r.count)
      lora?.forward(
        out: out, inp: inp, rows: r.count, dropoutSeed: seed, firstRow: r.lowerBound)
    }
    if let fused = options?.fused[slot], let options {
      let b = fused.keyMask.count
      fused.forward(
        out: out, target: inp, batch: b, length: n / max(b, 1), dropoutSeed: seed,
        workers: options.threads)
    }
  }

  // MARK: - Pooling and heads

  /// One embedding per row: the encoder's output pooled and, optionally, L2-normalized
  /// (sentence-transformers' `Pooling` + `Normalize`; `normalize` divides by
  /// `max(‖v‖, 1e-12)` like `torch.nn.functional.normalize`).
  ///
  /// Rows are encoded `embeddingBatchSize` at a time, each group padded to its longest row, so
  /// a row's embedding does not depend on the other rows.
  /// - Parameters:
  ///   - tokens: Rows of token ids, each a whole input (special tokens included).
  ///   - pooling: Masked mean or first token.
  ///   - normalize: Scale each embedding to unit length.
  ///   - attentionMask: Optional per-token masks (as in ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``).
  ///   - tokenTypes: Optional per-token segments.
  /// - Returns: `B` vectors of `C` values.
  /// - Throws: ``FlareError`` as ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``.
  public func embed(
    tokens: [[Int]], pooling: Pooling, normalize: Bool, attentionMask: [[Bool]]? = nil,
    tokenTypes: [[Int]]? = nil
  ) throws -> [[Float]] {
    let c = config.hidden
    var result: [[Float]] = []
    result.reserveCapacity(tokens.count)
    let step = max(embeddingBatchSize, 1)
    var start = 0
    while start < tokens.count {
      let range = start..<min(start + step, tokens.count)
      let a = try forward(
        tokens: Array(tokens[range]), attentionMask: attentionMask.map { Array($0[range]) },
        tokenTypes: tokenTypes.map { Array($0[range]) })
      let t = a.length
      let hidden = a.residual(config.layers)
      for row in 0..<a.batch {
        var vector = [Float](repeating: 0, count: c)
        switch pooling {
        case .mean:
          a.inputs.mask.withUnsafeBufferPointer { mask in
            vector.withUnsafeMutableBufferPointer { out in
              Kernels.meanPool(
                out: out.baseAddress!, inp: hidden + row * t * c, mask: mask.baseAddress! + row * t,
                batch: 1, length: t, channels: c)
            }
          }
        case .cls:
          if t > 0 {
            let h = hidden + row * t * c
            for i in 0..<c { vector[i] = h[i] }
          }
        }
        if normalize {
          var norm: Double = 0
          for value in vector { norm += Double(value) * Double(value) }
          let scale = Float(1 / max(norm.squareRoot(), 1e-12))
          for i in 0..<c { vector[i] *= scale }
        }
        result.append(vector)
      }
      start = range.upperBound
    }
    return result
  }

  /// BERT's pooler output, `tanh(pooler.dense(h₀))` of each row's first token
  /// (transformers' `pooler_output`).
  /// - Parameters: As ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``.
  /// - Returns: `B` vectors of `C` values.
  /// - Throws: ``FlareError`` if the checkpoint has no pooler, or as
  ///   ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``.
  public func pooledOutput(
    tokens: [[Int]], attentionMask: [[Bool]]? = nil, tokenTypes: [[Int]]? = nil
  ) throws -> [[Float]] {
    guard let poolerSlot else {
      throw FlareError(
        "model", .unsupported, "the model has no pooler (pooler.dense)", path: path,
        tensor: "\(prefix)pooler.dense.weight")
    }
    let a = try forward(tokens: tokens, attentionMask: attentionMask, tokenTypes: tokenTypes)
    return rows(head(a, through: [poolerSlot]), count: a.batch)
  }

  /// The sequence-classification logits of each row (`BertForSequenceClassification`:
  /// `classifier(pooler_output)`; `XLMRobertaForSequenceClassification`:
  /// `out_proj(tanh(dense(h₀)))`).
  /// - Parameters: As ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``.
  /// - Returns: `B` vectors of ``labelCount`` logits.
  /// - Throws: ``FlareError`` if the checkpoint has no classification head, or as
  ///   ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``.
  public func logits(
    tokens: [[Int]], attentionMask: [[Bool]]? = nil, tokenTypes: [[Int]]? = nil
  ) throws -> [[Float]] {
    let slots: [Int]
    switch classifier {
    case .onPooler(let slot): slots = [poolerSlot ?? 0, slot]
    case .roberta(let dense, let outProj): slots = [dense, outProj]
    case nil:
      throw FlareError(
        "model", .unsupported,
        "the model has no sequence-classification head (classifier.weight or classifier.out_proj.weight)",
        path: path)
    }
    let a = try forward(tokens: tokens, attentionMask: attentionMask, tokenTypes: tokenTypes)
    return rows(head(a, through: slots), count: a.batch)
  }

  /// Runs the first token of each row through `slots`: dense + tanh for the first, a plain
  /// linear layer for the second (the inference form of ``runHead(first:rows:steps:options:)``).
  private func head(_ a: BERTActivations, through slots: [Int]) -> [Float] {
    guard a.batch > 0, a.length > 0 else { return [] }
    let steps = slots.enumerated().map { i, slot in
      HeadStep(layer: .frozen(linears[slot]), dropoutBefore: false, tanh: i == 0)
    }
    return runHead(first: firstTokens(a), rows: a.batch, steps: steps, options: nil).outputs.last!
  }

  /// Each row's first-token state (`[CLS]` / `<s>`), `B×C`.
  func firstTokens(_ a: BERTActivations) -> [Float] {
    let c = config.hidden
    var first = [Float](repeating: 0, count: a.batch * c)
    let indices = (0..<a.batch).map { $0 * a.length }
    first.withUnsafeMutableBufferPointer { out in
      indices.withUnsafeBufferPointer { rows in
        Kernels.gatherRows(
          out: out.baseAddress!, inp: a.residual(config.layers), indices: rows.baseAddress!,
          count: a.batch, channels: c)
      }
    }
    return first
  }

  private func rows(_ flat: [Float], count: Int) -> [[Float]] {
    guard count > 0, !flat.isEmpty else { return Array(repeating: [], count: count) }
    let width = flat.count / count
    return (0..<count).map { Array(flat[$0 * width..<($0 + 1) * width]) }
  }
}
