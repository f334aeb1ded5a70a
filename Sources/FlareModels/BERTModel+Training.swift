import Dispatch
import FlareAdapters
import FlareCore
import FlareSafetensors
import FlareTensor

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

// Sequence-classification training of BERT / XLM-R encoders with LoRA: the inference forward
// (`BERTModel.run`, keeping every layer's activations) with the trainable LoRA layers and the
// model's dropout of a `TrainingState`, a classification head as transformers builds it, the
// cross-entropy, and the backward pass through the frozen encoder into the LoRA and head
// gradients. Frozen weights get no gradient buffer and no weight-gradient product.

/// What a training or evaluation pass adds to the frozen model's forward: the trainable LoRA
/// layers by linear-layer slot, the model's dropout, and the seed of every dropout mask.
struct BERTPassOptions {
  /// Where a dropout mask is drawn; each site has its own stream of the pass's seed.
  enum Site {
    case embeddings
    case attention(Int)
    case attentionOutput(Int)
    case output(Int)
    /// Before classification-head layer `i`.
    case head(Int)
    /// The input of the LoRA on linear-layer slot `i`.
    case lora(Int)
  }

  /// Trainable LoRA layers by linear-layer slot.
  var loras: [Int: TrainableLoRA]
  /// FLARE-fused LoRA layers by slot (never also in ``loras``).
  var fused: [Int: FusedLoRA] = [:]
  /// The model's dropout probability (hidden, attention and head); 0 in evaluation.
  var dropout: Float
  /// Whether LoRA dropout applies (training passes only).
  var training: Bool
  var seed: UInt64
  /// Threads the pass splits its work over (``BERTModel/trainingThreads``).
  var threads: Int

  /// The seed of `site`'s masks: the pass's seed mixed with the site's tag and index.
  func seed(_ site: Site) -> UInt64 {
    let (tag, index): (UInt64, Int)
    switch site {
    case .embeddings: (tag, index) = (1, 0)
    case .attention(let layer): (tag, index) = (2, layer)
    case .attentionOutput(let layer): (tag, index) = (3, layer)
    case .output(let layer): (tag, index) = (4, layer)
    case .head(let step): (tag, index) = (5, step)
    case .lora(let slot): (tag, index) = (6, slot)
    }
    return Kernels.mix64(Kernels.mix64(seed ^ (tag &* 0xD1B5_4A32_D192_ED03)) &+ UInt64(index))
  }

  /// The LoRA dropout seed of slot `slot`, or `nil` outside training.
  func loraDropoutSeed(slot: Int) -> UInt64? { training ? seed(.lora(slot)) : nil }

  /// The slots that carry a LoRA layer, fused or not.
  var adaptedSlots: Set<Int> { Set(loras.keys).union(fused.keys) }

  /// Model-dropout multipliers for elements `offset ..< offset + count` of `site`.
  func dropoutMask(_ mask: UnsafeMutablePointer<Float>, count: Int, site: Site, offset: Int = 0) {
    Kernels.dropoutMask(
      mask, count: count, probability: dropout, seed: seed(site), offset: UInt64(offset))
  }

  /// Applies the model dropout of `site` in place to rows `rows` of an `N×C` buffer, `x`
  /// pointing at the first of them.
  func applyDropout(
    _ x: UnsafeMutablePointer<Float>, rows: Range<Int>, channels c: Int, site: Site
  ) {
    let count = rows.count * c
    let mask = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
    defer { mask.deallocate() }
    dropoutMask(mask, count: count, site: site, offset: rows.lowerBound * c)
    Kernels.dropout(out: x, inp: x, mask: mask, count: count)
  }
}

/// Work split over threads by index; used by the training passes, whose partition of the work
/// is fixed so that results do not depend on the thread count.
enum Parallel {
  /// Runs `body(i)` for every `i` in `0..<count`, spread over `workers` threads (index `i` on
  /// thread `i % workers`); in order on the calling thread when `workers` is 1. Calls must
  /// write disjoint memory.
  static func forEach(_ count: Int, workers: Int, _ body: (Int) -> Void) {
    WorkerPool.shared.run(count, workers: workers, body)
  }

  /// Rows per chunk of the row-wise work of a training or evaluation pass: a function of the
  /// row count only, so the chunks (and so every value) do not depend on the thread count. A
  /// quarter of the rows, rounded up to 16, between 64 and 256: large enough that a GEMM's
  /// packing of the weight (once per call) costs little next to its arithmetic, small enough
  /// for 4 chunks to share out once there are 256 rows. (64-row chunks left SmolLM2's 8×128
  /// training step 20% slower than these.)
  static func rowChunk(_ n: Int) -> Int {
    let quarter = (n + 3) / 4
    return max(64, min(256, (quarter + 15) / 16 * 16))
  }

  /// Runs `body` over rows `0..<n` in chunks of ``rowChunk(_:)`` rows spread over `workers`
  /// threads.
  static func forRowChunks(_ n: Int, workers: Int, _ body: (Range<Int>) -> Void) {
    let size = rowChunk(n)
    forEach((n + size - 1) / size, workers: workers) { chunk in
      body((chunk * size)..<min(n, (chunk + 1) * size))
    }
  }
}

extension BERTModel {

  /// Runs `body` over rows `0..<n`: whole for inference (`options` is `nil`), or in chunks of
  /// ``Parallel/rowChunk(_:)`` rows spread over the pass's threads.
  func forRows(_ n: Int, _ options: BERTPassOptions?, _ body: (Range<Int>) -> Void) {
    guard let options else {
      body(0..<n)
      return
    }
    Parallel.forRowChunks(n, workers: options.threads, body)
  }
}

/// The weights of one classification-head layer in a pass.
enum HeadWeights {
  /// The checkpoint's layer, frozen (inference, or a head not being trained).
  case frozen(Linear)
  /// Trained in full: `[out, in]` and `[out]`.
  case trained(weight: TrainableTensor, bias: TrainableTensor)

  var outFeatures: Int {
    switch self {
    case .frozen(let linear): linear.outFeatures
    case .trained(let weight, _): weight.shape[0]
    }
  }
}

/// One layer of a classification head: optional dropout on its input, the linear layer, an
/// optional tanh.
struct HeadStep {
  var layer: HeadWeights
  var dropoutBefore: Bool
  var tanh: Bool
}

/// What a head's forward keeps for its backward: each step's input after dropout, its output
/// after tanh, and the dropout mask (`nil` without dropout). `B` rows each.
struct HeadActivations {
  var inputs: [[Float]] = []
  var outputs: [[Float]] = []
  var masks: [[Float]?] = []
}

/// One layer of the head a training pass builds, as transformers' task model has it.
struct HeadLayerSpec {
  /// The module path in the task model (`bert.pooler.dense`, `classifier`, `classifier.dense`).
  let module: String
  let dropoutBefore: Bool
  let tanh: Bool
  /// The output width, or `nil` for the label count (the last layer).
  let outFeatures: Int?
  /// The checkpoint's layer, if it has one.
  let checkpoint: Linear?

  var weightName: String { "base_model.model.\(module).weight" }
  var biasName: String { "base_model.model.\(module).bias" }
}

extension BERTModel: TrainableModel {
  // MARK: - Names

  /// The prefix the task models give the encoder (`bert.` in `BertForSequenceClassification`,
  /// `roberta.` in `XLMRobertaForSequenceClassification`), whatever the checkpoint's own.
  public var taskPrefix: String { config.kind == .bert ? "bert." : "roberta." }

  /// The encoder's linear layers as the task model names them (`bert.encoder.layer.0.attention.self.query`,
  /// `roberta.encoder.layer.11.output.dense`): what LoRA can target. PEFT saves a LoRA on one
  /// of them as `base_model.model.<module>.lora_A.weight`. The pooler and classifier are not
  /// listed: they are trained in full (``classificationHeadNames``).
  public var linearModules: [String] { (0..<(config.layers * 6)).map(taskModule) }

  public func linearShape(_ module: String) -> (outFeatures: Int, inFeatures: Int)? {
    guard let slot = encoderSlots[module] else { return nil }
    return (linears[slot].outFeatures, linears[slot].inFeatures)
  }

  private func taskModule(_ slot: Int) -> String {
    taskPrefix + linears[slot].path.dropFirst(prefix.count)
  }

  /// Encoder linear-layer slots by module path: the task model's name, the checkpoint's, and
  /// the name without any prefix (an adapter trained on `BertModel` fits).
  private var encoderSlots: [String: Int] {
    var index: [String: Int] = [:]
    for slot in 0..<(config.layers * 6) {
      let path = linears[slot].path
      index[String(path.dropFirst(prefix.count))] = slot
      index[path] = slot
      index[taskModule(slot)] = slot
    }
    return index
  }

  /// The classification head a training pass runs: `BertForSequenceClassification`'s pooler
  /// (dense + tanh on `[CLS]`) → dropout → `classifier`, or
  /// `XLMRobertaForSequenceClassification`'s `<s>` → dropout → `classifier.dense` → tanh →
  /// dropout → `classifier.out_proj`.
  var headLayers: [HeadLayerSpec] {
    let c = config.hidden
    switch config.kind {
    case .bert:
      var checkpoint: Linear?
      if case .onPooler(let slot) = classifier { checkpoint = linears[slot] }
      return [
        HeadLayerSpec(
          module: "\(taskPrefix)pooler.dense", dropoutBefore: false, tanh: true, outFeatures: c,
          checkpoint: poolerSlot.map { linears[$0] }),
        HeadLayerSpec(
          module: "classifier", dropoutBefore: true, tanh: false, outFeatures: nil,
          checkpoint: checkpoint),
      ]
    case .xlmRoberta:
      var dense: Linear?
      var outProj: Linear?
      if case .roberta(let d, let o) = classifier {
        dense = linears[d]
        outProj = linears[o]
      }
      return [
        HeadLayerSpec(
          module: "classifier.dense", dropoutBefore: true, tanh: true, outFeatures: c,
          checkpoint: dense),
        HeadLayerSpec(
          module: "classifier.out_proj", dropoutBefore: true, tanh: false, outFeatures: nil,
          checkpoint: outProj),
      ]
    }
  }

  /// The names of the head tensors, as PEFT saves a task model's `modules_to_save` in
  /// `adapter_model.safetensors`: `base_model.model.bert.pooler.dense.weight`, `….bias`,
  /// `base_model.model.classifier.weight`, `….bias` (BERT) or
  /// `base_model.model.classifier.dense.weight`, `….bias`, `…classifier.out_proj.weight`,
  /// `….bias` (XLM-R), in that order. A training state's ``TrainingState/heads`` uses them.
  public var classificationHeadNames: [String] {
    headLayers.flatMap { [$0.weightName, $0.biasName] }
  }

  // MARK: - Head initialisation

  /// The trainable head tensors for `labelCount` classes, named as
  /// ``classificationHeadNames``. Each tensor starts from, in order: the same tensor in
  /// `adapter` (its `modules_to_save` copy, for `--init-adapter`), the checkpoint's (the
  /// pretrained pooler of a `BertModel`, or a task checkpoint's classifier), or a fresh
  /// initialisation as transformers' `_init_weights` gives a new layer (weight
  /// `N(0, initializer_range)`, bias 0) drawn from a ``SplitMix64`` seeded with `seed` (weights
  /// in head order, values row-major, one Box–Muller pair per two values).
  /// - Parameters:
  ///   - labelCount: The number of classes (at least 1).
  ///   - seed: The seed of a fresh initialisation.
  ///   - adapter: A PEFT adapter whose saved head tensors to start from, if any.
  /// - Returns: The tensors by name, gradients zero.
  /// - Throws: ``FlareError`` for a label count below 1, a checkpoint or adapter tensor whose
  ///   shape does not fit (a checkpoint classifier for another number of labels), or an
  ///   unreadable `config.json`.
  public func makeClassificationHead(
    labelCount: Int, seed: UInt64, adapter: PEFTAdapter? = nil
  ) throws -> [String: TrainableTensor] {
    try classificationHead(labelCount: labelCount, seed: seed, adapter: adapter)
  }

  /// The classification head of a trained classifier, for evaluation: each tensor from
  /// `adapter`'s `modules_to_save` copy or else the checkpoint's, never a fresh
  /// initialisation. The label count is that of the adapter's last head layer
  /// (`classifier.weight`, `classifier.out_proj.weight`), or else the checkpoint's.
  /// - Parameter adapter: The trained adapter, if any.
  /// - Returns: The label count and the head tensors by name (as
  ///   ``classificationHeadNames``).
  /// - Throws: ``FlareError`` `.tensorNotFound` naming the first head tensor neither the
  ///   adapter nor the checkpoint has (a base encoder without a classifier needs an adapter
  ///   that saved one), or as ``makeClassificationHead(labelCount:seed:adapter:)``.
  public func savedClassificationHead(adapter: PEFTAdapter?) throws -> (
    labelCount: Int, tensors: [String: TrainableTensor]
  ) {
    let last = headLayers.last!
    let saved = adapter.flatMap { savedHeadTensor(last.weightName, in: $0) }
    guard let labelCount = saved?.shape.first ?? self.labelCount, labelCount >= 1 else {
      throw FlareError(
        "model", .tensorNotFound,
        adapter == nil
          ? "is missing: the model has no sequence-classification head; give an adapter that saved one (modules_to_save)"
          : "is missing: neither the adapter (modules_to_save) nor the checkpoint has a sequence-classification head",
        path: adapter?.path ?? path,
        tensor: String(last.weightName.dropFirst(Self.peftPrefix.count)))
    }
    return (labelCount, try classificationHead(labelCount: labelCount, seed: nil, adapter: adapter))
  }

  /// The prefix PEFT gives every saved tensor.
  private static let peftPrefix = "base_model.model."

  /// `adapter`'s saved copy of head tensor `name` (`base_model.model.<module>.weight`), found
  /// with or without the task model's `bert.` / `roberta.` prefix.
  private func savedHeadTensor(_ name: String, in adapter: PEFTAdapter) -> TensorView? {
    let saved = name.dropFirst(Self.peftPrefix.count)
    return adapter.replacements.first(where: {
      $0.name == saved || taskPrefix + $0.name == saved
    })?.view
  }

  /// ``makeClassificationHead(labelCount:seed:adapter:)``; without a seed, a tensor that
  /// neither the adapter nor the checkpoint has is an error instead of a fresh initialisation.
  private func classificationHead(
    labelCount: Int, seed: UInt64?, adapter: PEFTAdapter?
  ) throws -> [String: TrainableTensor] {
    guard labelCount >= 1 else {
      throw FlareError(
        "model", .invalidArgument,
        "a classification head needs at least 1 label, got \(labelCount)",
        path: path)
    }
    let c = config.hidden
    let deviation = try initializerRange()
    var random = SplitMix64(seed: seed ?? 0)
    var result: [String: TrainableTensor] = [:]
    for layer in headLayers {
      let out = layer.outFeatures ?? labelCount
      for (name, shape) in [(layer.weightName, [out, c]), (layer.biasName, [out])] {
        let isWeight = shape.count == 2
        var values: [Float]?
        if let adapter {
          if let view = savedHeadTensor(name, in: adapter) {
            guard view.shape == shape else {
              throw FlareError(
                "adapter", .invalidArgument,
                "head tensor has shape \(view.shape), expected \(shape) (\(labelCount) labels, hidden size \(c))",
                path: adapter.path, tensor: view.name)
            }
            values = view.floats()
          }
        }
        if values == nil, let linear = layer.checkpoint {
          let weight = isWeight ? Optional(linear.weight) : linear.bias
          if let weight {
            guard weight.shape == shape else {
              throw FlareError(
                "model", .invalidArgument,
                "the checkpoint's head tensor has shape \(weight.shape), not \(shape): it was trained for \(weight.shape[0]) labels, not \(labelCount)",
                path: path, tensor: weight.name)
            }
            values = Array(weight.values)
          }
        }
        if values == nil {
          guard seed != nil else {
            throw FlareError(
              "model", .tensorNotFound,
              "is not in the \(adapter == nil ? "model" : "adapter's saved modules (modules_to_save) nor in the model"); the classification head needs it",
              path: adapter?.path ?? path, tensor: String(name.dropFirst(Self.peftPrefix.count)))
          }
          values =
            isWeight
            ? random.normals(count: out * c, std: deviation)
            : [Float](repeating: 0, count: out)
        }
        result[name] = TrainableTensor(name: name, shape: shape, values: values!)
      }
    }
    return result
  }

  /// `initializer_range` from `config.json` (transformers' default 0.02).
  private func initializerRange() throws -> Float {
    let configPath = "\(path)/config.json"
    let json = try JSONParser.parse(file: configPath, domain: "config", limit: 16 << 20)
    guard let value = json["initializer_range"], value != .null else { return 0.02 }
    guard let range = value.doubleValue, range.isFinite, range >= 0 else {
      throw FlareError(
        "config", .invalidArgument, "'initializer_range' is not a non-negative number",
        path: configPath)
    }
    return Float(range)
  }

  // MARK: - Passes

  /// One forward and backward pass of sequence classification on `batch` (targets
  /// `.classes`): the encoder with `state`'s LoRA layers (each with its own LoRA dropout) and
  /// the model's dropout at `state.modelDropout` (transformers' `hidden_dropout_prob`,
  /// `attention_probs_dropout_prob` and the classifier's dropout, all at that probability;
  /// masks from `state.seed`, so a pass repeats exactly); the head of ``classificationHeadNames``
  /// from `state.heads` (a head layer missing from it runs frozen from the checkpoint, if the
  /// checkpoint has it); the cross-entropy of each row's logits. Accumulates the gradient of
  /// `gradientScale · lossSum` into every LoRA `A`, `B` and head tensor of `state`.
  /// - Throws: ``FlareError`` for causal-LM targets, a label outside the head's classes, a
  ///   LoRA layer on a module the encoder does not have or of the wrong shape, a head tensor
  ///   missing or misshapen, a dropout probability outside [0, 1), adapters attached with
  ///   ``attach(adapters:)``, or a batch the model cannot take (as
  ///   ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``).
  public func trainingPass(batch: TrainingBatch, state: TrainingState, gradientScale: Float)
    throws -> TrainingPassResult
  {
    try pass(batch: batch, state: state, gradientScale: gradientScale).result
  }

  /// The loss and predictions of `batch` without dropout and without gradients, with the
  /// compact activations of inference.
  /// - Throws: ``FlareError`` as ``trainingPass(batch:state:gradientScale:)``.
  public func evaluationPass(batch: TrainingBatch, state: TrainingState) throws
    -> TrainingPassResult
  {
    try pass(batch: batch, state: state, gradientScale: nil).result
  }

  /// An evaluation pass that also returns the logits: `B` rows of the head's label count, in
  /// batch order (what `flare-eval classify` prints).
  /// - Throws: ``FlareError`` as ``trainingPass(batch:state:gradientScale:)``.
  public func classificationLogits(batch: TrainingBatch, state: TrainingState) throws -> (
    result: TrainingPassResult, logits: [[Float]]
  ) {
    let (result, flat) = try pass(batch: batch, state: state, gradientScale: nil)
    let b = batch.tokens.count
    guard b > 0 else { return (result, []) }
    let width = flat.count / b
    return (result, (0..<b).map { Array(flat[($0 * width)..<(($0 + 1) * width)]) })
  }

  /// The sequence-classification logits of each row through the inference forward (attached
  /// adapters apply), with `heads` in place of the checkpoint's head layers: tensors named as
  /// ``classificationHeadNames`` (``savedClassificationHead(adapter:)`` gives an adapter's); a
  /// layer `heads` lacks runs from the checkpoint. What `flare-merge --verify` compares a
  /// merged classifier with.
  /// - Returns: `B` rows of the head's label count.
  /// - Throws: ``FlareError`` for a head layer neither `heads` nor the checkpoint has, a
  ///   misshapen head tensor, or as ``forward(tokens:attentionMask:tokenTypes:keepingAllLayers:)``.
  public func logits(
    tokens: [[Int]], attentionMask: [[Bool]]? = nil, tokenTypes: [[Int]]? = nil,
    heads: [String: TrainableTensor]
  ) throws -> [[Float]] {
    let steps = try headSteps(heads)
    let a = try forward(tokens: tokens, attentionMask: attentionMask, tokenTypes: tokenTypes)
    guard a.batch > 0, a.length > 0 else { return Array(repeating: [], count: a.batch) }
    let flat = runHead(first: firstTokens(a), rows: a.batch, steps: steps, options: nil).outputs
      .last!
    let width = flat.count / a.batch
    return (0..<a.batch).map { Array(flat[($0 * width)..<(($0 + 1) * width)]) }
  }

  /// A training pass (`gradientScale` given) or an evaluation pass (`nil`); returns the
  /// logits, `B×labels`, too.
  private func pass(batch: TrainingBatch, state: TrainingState, gradientScale: Float?) throws
    -> (result: TrainingPassResult, logits: [Float])
  {
    func bad(_ message: String, _ code: FlareError.Code = .invalidArgument) -> FlareError {
      FlareError("model", code, message, path: path)
    }
    if let attached = linears.first(where: { !$0.adapters.isEmpty }) {
      throw bad(
        "adapters are attached to \(attached.path); a training or evaluation pass takes its LoRA layers from the training state (detach the attached adapters first)",
        .unsupported)
    }
    guard case .classes(let classes) = batch.targets else {
      throw bad(
        "the encoder trains sequence classification (class targets), not a causal language model",
        .unsupported)
    }
    guard state.modelDropout >= 0 && state.modelDropout < 1 else {
      throw bad("model dropout \(state.modelDropout) is outside [0, 1)")
    }
    var loras = try resolve(state.loras)
    let steps = try headSteps(state.heads)
    let labelCount = steps.last!.layer.outFeatures
    let b = batch.tokens.count
    guard classes.count == b else {
      throw bad("the batch has \(b) rows but \(classes.count) class targets")
    }
    for (row, label) in classes.enumerated() where label < 0 || label >= labelCount {
      throw bad("row \(row) has class \(label), outside the head's 0..<\(labelCount)")
    }
    if let row = batch.tokens.firstIndex(where: \.isEmpty) {
      throw bad("row \(row) has no tokens; a classified row needs at least its first token")
    }
    let inputs = try prepare(
      tokens: batch.tokens, attentionMask: batch.mask, tokenTypes: batch.tokenTypes)
    guard b > 0 else { return (TrainingPassResult(lossSum: 0, count: 0, predictions: []), []) }
    let training = gradientScale != nil
    var options = BERTPassOptions(
      loras: loras, dropout: training ? state.modelDropout : 0, training: training,
      seed: state.seed, threads: max(1, trainingThreads))
    // The pass splits its work itself; BLAS's own threads would make results depend on the
    // thread count (OpenBLAS's SGEMM rounds differently with another split).
    BLAS.beginSingleThreaded()
    defer { BLAS.endSingleThreaded() }
    // FLARE: the source pass (base weights, every adapter off, no gradient; the model's
    // dropout as in the target pass, its own masks) keeps every block's input, which the
    // fused LoRA layers of the same block read.
    var sourceStorage: FloatStorage?
    defer { sourceStorage.map { storagePool.give($0) } }
    if let fusion = state.fusion {
      guard let tokens = batch.source, let mask = batch.sourceMask, tokens.count == b,
        mask.count == b,
        zip(tokens, batch.tokens).allSatisfy({ $0.0.count == $0.1.count }),
        zip(mask, tokens).allSatisfy({ $0.0.count == $0.1.count })
      else {
        throw bad(
          "a FLARE pass needs the source (parallel English) tokens and mask of every sequence, padded to the target's length"
        )
      }
      guard !fusion.normalizeSource else {
        throw bad(
          "--source-normalize applies to pre-norm (Llama) models; an encoder's block input is already normalized",
          .unsupported)
      }
      guard batch.sourceRows == nil, !fusion.bakedTarget else {
        throw bad(
          "source row maps and baked FLARE adapters are for Llama models (generation and folded add adapters)",
          .unsupported)
      }
      let sourceInputs = try prepare(tokens: tokens, attentionMask: mask, tokenTypes: nil)
      let s = BERTActivations(
        config: config, inputs: sourceInputs, keepingAllLayers: false, keepingResiduals: true,
        pool: storagePool)
      sourceStorage = s.storage
      run(
        s,
        options: BERTPassOptions(
          loras: [:], dropout: options.dropout, training: false,
          seed: Kernels.mix64(state.seed ^ 0x5EED_F1A7_E500_0002), threads: options.threads))
      let slots = encoderSlots
      for module in fusion.fusedModules.sorted() {
        guard let slot = slots[module], let lora = loras.removeValue(forKey: slot) else {
          throw bad("fused module \(module) has no LoRA layer in the training state")
        }
        let function = try FusionFunction(
          checking: fusion, module: module, lora: lora, training: training)
        options.fused[slot] = FusedLoRA(
          lora: lora, function: function, attention: fusion.attention[module],
          source: .states(UnsafePointer(s.residual(slot / 6))), keyMask: batch.mask)
      }
      options.loras = loras
    }
    let a = BERTActivations(
      config: config, inputs: inputs, keepingAllLayers: training, pool: storagePool)
    defer { storagePool.give(a.storage) }
    run(a, options: options)
    let head = runHead(first: firstTokens(a), rows: b, steps: steps, options: options)
    let logits = head.outputs.last!
    var dlogits = [Float](repeating: 0, count: training ? logits.count : 0)
    let (loss, count) = logits.withUnsafeBufferPointer { logits in
      classes.withUnsafeBufferPointer { labels in
        dlogits.withUnsafeMutableBufferPointer { d in
          Kernels.crossEntropy(
            dlogits: training ? d.baseAddress : nil, logits: logits.baseAddress!,
            labels: labels.baseAddress!, rows: b, classes: labelCount,
            gradientScale: gradientScale ?? 1)
        }
      }
    }
    let predictions = (0..<b).map {
      Sampler.argmax(logits[($0 * labelCount)..<(($0 + 1) * labelCount)])
    }
    if training {
      let dfirst = headBackward(head, steps: steps, dlogits: dlogits, rows: b)
      if !options.adaptedSlots.isEmpty { encoderBackward(a, options: options, dfirst: dfirst) }
    }
    return (TrainingPassResult(lossSum: loss, count: count, predictions: predictions), logits)
  }

  /// The state's LoRA layers by encoder slot, checked against the layers they target.
  private func resolve(_ loras: [String: TrainableLoRA]) throws -> [Int: TrainableLoRA] {
    let slots = encoderSlots
    var result: [Int: TrainableLoRA] = [:]
    for (module, lora) in loras.sorted(by: { $0.key < $1.key }) {
      func bad(_ message: String) -> FlareError {
        FlareError("adapter", .invalidArgument, message, path: path, tensor: module)
      }
      guard let slot = slots[module] else {
        throw bad(
          "LoRA targets a module that is not a linear layer of the encoder (the pooler and classifier are trained in full, not with LoRA)"
        )
      }
      guard result[slot] == nil else {
        throw bad("two LoRA layers target the same linear layer \(taskModule(slot))")
      }
      let layer = linears[slot]
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
      result[slot] = lora
    }
    return result
  }

  /// The head of a pass: each layer trained from `heads` or, if `heads` has neither of its
  /// tensors, frozen from the checkpoint.
  private func headSteps(_ heads: [String: TrainableTensor]) throws -> [HeadStep] {
    let layers = headLayers
    let known = Set(layers.flatMap { [$0.weightName, $0.biasName] })
    if let unknown = heads.keys.sorted().first(where: { !known.contains($0) }) {
      throw FlareError(
        "model", .invalidArgument,
        "head tensor is not part of this model's classification head (expected \(known.sorted().joined(separator: ", ")))",
        path: path, tensor: unknown)
    }
    let c = config.hidden
    var steps: [HeadStep] = []
    for layer in layers {
      let weight = heads[layer.weightName]
      let bias = heads[layer.biasName]
      let weights: HeadWeights
      switch (weight, bias) {
      case (let weight?, let bias?):
        let out = layer.outFeatures ?? weight.shape.first ?? 0
        guard out > 0, weight.shape == [out, c], bias.shape == [out] else {
          throw FlareError(
            "model", .invalidArgument,
            "head tensors have shapes \(weight.shape) and \(bias.shape), expected [\(layer.outFeatures.map(String.init) ?? "labels"), \(c)] and [\(layer.outFeatures.map(String.init) ?? "labels")]",
            path: path, tensor: layer.weightName)
        }
        weights = .trained(weight: weight, bias: bias)
      case (nil, nil):
        guard let linear = layer.checkpoint else {
          throw FlareError(
            "model", .tensorNotFound,
            "the checkpoint has no \(layer.module) and the training state does not train it (makeClassificationHead makes the head)",
            path: path, tensor: layer.weightName)
        }
        weights = .frozen(linear)
      default:
        throw FlareError(
          "model", .invalidArgument,
          "the training state has only one of the layer's weight and bias", path: path,
          tensor: weight == nil ? layer.weightName : layer.biasName)
      }
      steps.append(HeadStep(layer: weights, dropoutBefore: layer.dropoutBefore, tanh: layer.tanh))
    }
    return steps
  }

  // MARK: - Head forward and backward

  /// Runs a classification head over `B` first-token states: per step, dropout on its input
  /// (in training), the linear layer, tanh; keeps what the backward pass needs.
  func runHead(first: [Float], rows b: Int, steps: [HeadStep], options: BERTPassOptions?)
    -> HeadActivations
  {
    var h = HeadActivations()
    var x = first
    for (i, step) in steps.enumerated() {
      var mask: [Float]?
      if step.dropoutBefore, let options, options.dropout > 0 {
        var m = [Float](repeating: 0, count: x.count)
        m.withUnsafeMutableBufferPointer {
          options.dropoutMask($0.baseAddress!, count: x.count, site: .head(i))
        }
        for j in x.indices { x[j] *= m[j] }
        mask = m
      }
      let inFeatures = x.count / max(b, 1)
      let outFeatures = step.layer.outFeatures
      var out = [Float](repeating: 0, count: b * outFeatures)
      x.withUnsafeBufferPointer { inp in
        out.withUnsafeMutableBufferPointer { out in
          switch step.layer {
          case .frozen(let linear):
            linear.forward(out: out.baseAddress!, inp: inp.baseAddress!, rows: b)
          case .trained(let weight, let bias):
            weight.values.withUnsafeBufferPointer { w in
              bias.values.withUnsafeBufferPointer { bias in
                Kernels.matmul(
                  out: out.baseAddress!, inp: inp.baseAddress!, weight: w.baseAddress!,
                  bias: bias.baseAddress, rows: b, inFeatures: inFeatures,
                  outFeatures: outFeatures)
              }
            }
          }
          if step.tanh { Kernels.tanh(out.baseAddress!, count: out.count) }
        }
      }
      h.inputs.append(x)
      h.outputs.append(out)
      h.masks.append(mask)
      x = out
    }
    return h
  }

  /// The head's backward pass from the logits' gradient: accumulates the trained layers'
  /// weight and bias gradients and returns the gradient of the first-token states, `B×C`.
  func headBackward(_ h: HeadActivations, steps: [HeadStep], dlogits: [Float], rows b: Int)
    -> [Float]
  {
    var upstream = dlogits
    for (i, step) in steps.enumerated().reversed() {
      let input = h.inputs[i]
      let outFeatures = step.layer.outFeatures
      let inFeatures = input.count / max(b, 1)
      if step.tanh {
        var dpre = [Float](repeating: 0, count: upstream.count)
        Kernels.tanhBackward(
          dinp: &dpre, out: h.outputs[i], dout: upstream, count: upstream.count)
        upstream = dpre
      }
      var dinput = [Float](repeating: 0, count: input.count)
      func inputGradient(_ w: UnsafeBufferPointer<Float>) {
        Kernels.matmulBackwardInput(
          dinp: &dinput, dout: upstream, weight: w.baseAddress!, rows: b,
          inFeatures: inFeatures, outFeatures: outFeatures)
      }
      switch step.layer {
      case .frozen(let linear):
        inputGradient(linear.weight.values)
      case .trained(let w, let bias):
        w.gradient.withUnsafeMutableBufferPointer { dw in
          bias.gradient.withUnsafeMutableBufferPointer { db in
            Kernels.matmulBackwardWeight(
              dweight: dw.baseAddress!, dbias: db.baseAddress, dout: upstream, inp: input,
              rows: b, inFeatures: inFeatures, outFeatures: outFeatures)
          }
        }
        w.values.withUnsafeBufferPointer(inputGradient)
      }
      if let mask = h.masks[i] {
        var dx = [Float](repeating: 0, count: dinput.count)
        Kernels.dropoutBackward(dinp: &dx, dout: dinput, mask: mask, count: dinput.count)
        dinput = dx
      }
      upstream = dinput
    }
    return upstream
  }

  // MARK: - Encoder backward

  /// The encoder's backward pass from the gradient of each row's first-token state: through
  /// every layer down to the lowest one with a LoRA layer, accumulating the LoRA gradients.
  /// Frozen linear layers pass the gradient to their input (one GEMM each) and get none.
  /// Row-wise steps run in the pass's fixed row chunks; each chunk's share of the LoRA weight
  /// gradients is added in chunk order (``LinearBackward``).
  /// The floats of ``encoderBackward(_:options:dfirst:)``'s gradient buffers.
  static func backwardCount(config: BERTConfig, batch: Int, length t: Int, dropout: Bool) -> Int {
    let n = batch * t
    return 10 * n * config.hidden + 2 * n * config.intermediate
      + (dropout ? batch * config.heads * t * t : 0)
  }

  /// The bytes a training pass holds for `batch × length` tokens besides the weights: every
  /// layer's activations (the layout the pass allocates) and the backward pass's gradient
  /// buffers (with the attention dropout mask when `dropout` is on).
  /// The bytes a FLARE training pass's source pass holds for `batch × length` tokens besides
  /// the target pass's (every block's input is kept for `A`'s gradient).
  public func sourcePassBytes(batch: Int, length: Int) -> Int {
    4
      * BERTActivations.layout(
        config: config, batch: batch, length: length, keepingAllLayers: false,
        keepingResiduals: true
      ).total
  }

  public func trainingActivationBytes(batch: Int, length: Int, dropout: Bool) -> Int {
    let activations = BERTActivations.layout(
      config: config, batch: batch, length: length, keepingAllLayers: true
    ).total
    return 4
      * (activations
        + Self.backwardCount(config: config, batch: batch, length: length, dropout: dropout))
  }

  private func encoderBackward(_ a: BERTActivations, options: BERTPassOptions, dfirst: [Float]) {
    let b = a.batch
    let t = a.length
    let n = b * t
    let c = config.hidden
    let ff = config.intermediate
    let heads = config.heads
    let d = config.headDim
    let dropout = options.dropout
    guard let lowest = options.adaptedSlots.min().map({ $0 / 6 }) else { return }
    // N×C each: the residual-stream gradient (current, next), dOutputSum, dNormed,
    // dAttentionSum, the gradient after a dropout, dContext, dQ, dK, dV; N×FF: dPost, dPre;
    // B×NH×T×T for the attention dropout mask when dropout is on.
    let total = Self.backwardCount(config: config, batch: b, length: t, dropout: dropout > 0)
    let attentionMaskCount = dropout > 0 ? b * heads * t * t : 0
    let storage = UnsafeMutablePointer<Float>.allocate(capacity: max(total, 1))
    defer { storage.deallocate() }
    var cursor = storage
    func take(_ count: Int) -> UnsafeMutablePointer<Float> {
      defer { cursor += count }
      return cursor
    }
    var dres = take(n * c)
    var dnext = take(n * c)
    let doutputSum = take(n * c)
    let dnormed = take(n * c)
    let dattentionSum = take(n * c)
    let ddropped = take(n * c)
    let dcontext = take(n * c)
    let dq = take(n * c)
    let dk = take(n * c)
    let dv = take(n * c)
    let dpost = take(n * ff)
    let dpre = take(n * ff)
    let attentionMask = dropout > 0 ? take(attentionMaskCount) : nil

    dres.update(repeating: 0, count: n * c)
    let rows = (0..<b).map { $0 * t }
    dfirst.withUnsafeBufferPointer { g in
      rows.withUnsafeBufferPointer { rows in
        Kernels.gatherRowsBackward(
          dinp: dres, dout: g.baseAddress!, indices: rows.baseAddress!, count: b, channels: c)
      }
    }
    /// Runs `body` over the pass's row chunks.
    func chunks(_ body: (Range<Int>) -> Void) { forRows(n, options, body) }
    /// The gradient before the dropout of `site` (`g` itself without dropout).
    func throughDropout(_ g: UnsafeMutablePointer<Float>, site: BERTPassOptions.Site)
      -> UnsafeMutablePointer<Float>
    {
      guard dropout > 0 else { return g }
      chunks { r in
        let offset = r.lowerBound * c
        (ddropped + offset).update(from: g + offset, count: r.count * c)
        options.applyDropout(ddropped + offset, rows: r, channels: c, site: site)
      }
      return ddropped
    }
    /// A linear layer's backward: the frozen weight's input gradient and the LoRA's share
    /// (if `dinp`; added to it, or overwriting it without `accumulate`), and the LoRA's
    /// weight gradients.
    func linearBackward(
      _ slot: Int, dinp: UnsafeMutablePointer<Float>?, accumulate: Bool = true,
      dout: UnsafePointer<Float>, inp: UnsafePointer<Float>
    ) {
      LinearBackward(
        linears[slot], lora: options.loras[slot], fused: options.fused[slot],
        dropoutSeed: options.loraDropoutSeed(slot: slot)
      ).run(
        dinp: dinp, accumulate: accumulate, dout: dout, inp: inp, rows: n, length: t,
        workers: options.threads)
    }
    /// LayerNorm backward (no weight gradients) of rows chunked: `dinp = 0`, then `+=`.
    func layernormBackward(
      dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
      inp: UnsafePointer<Float>, weight: Weight, mean: UnsafePointer<Float>,
      rstd: UnsafePointer<Float>
    ) {
      chunks { r in
        let first = r.lowerBound
        (dinp + first * c).update(repeating: 0, count: r.count * c)
        Kernels.layernormBackward(
          dinp: dinp + first * c, dweight: nil, dbias: nil, dout: dout + first * c,
          inp: inp + first * c, weight: weight.values.baseAddress!, mean: mean + first,
          rstd: rstd + first, rows: r.count, channels: c)
      }
    }

    for layer in stride(from: config.layers - 1, through: lowest, by: -1) {
      let s = layer * 6
      let x = a.residual(layer)
      let needsInput = layer > lowest
      // Output LayerNorm; its input is dropout(output dense) + normed.
      layernormBackward(
        dinp: doutputSum, dout: dres, inp: a.pointer(.outputSum, layer: layer),
        weight: norms[layer].outputWeight, mean: a.pointer(.outputMean, layer: layer),
        rstd: a.pointer(.outputRstd, layer: layer))
      dnormed.update(from: doutputSum, count: n * c)
      let dffOut = throughDropout(doutputSum, site: .output(layer))
      linearBackward(
        s + 5, dinp: dpost, accumulate: false, dout: dffOut,
        inp: a.pointer(.postGELU, layer: layer))
      let pre = a.pointer(.preGELU, layer: layer)
      chunks { r in
        let offset = r.lowerBound * ff
        (dpre + offset).update(repeating: 0, count: r.count * ff)
        Kernels.geluBackward(
          dinp: dpre + offset, inp: pre + offset, dout: dpost + offset, count: r.count * ff)
      }
      linearBackward(
        s + 4, dinp: dnormed, dout: dpre, inp: a.pointer(.attentionNormed, layer: layer))
      // Attention LayerNorm; its input is dropout(attention output dense) + x.
      layernormBackward(
        dinp: dattentionSum, dout: dnormed, inp: a.pointer(.attentionSum, layer: layer),
        weight: norms[layer].attentionWeight, mean: a.pointer(.attentionMean, layer: layer),
        rstd: a.pointer(.attentionRstd, layer: layer))
      if needsInput { dnext.update(from: dattentionSum, count: n * c) }
      let adapted = options.adaptedSlots
      let needsAttention = needsInput || (s..<(s + 3)).contains { adapted.contains($0) }
      let dattentionOut = throughDropout(dattentionSum, site: .attentionOutput(layer))
      linearBackward(
        s + 3, dinp: needsAttention ? dcontext : nil, accumulate: false, dout: dattentionOut,
        inp: a.pointer(.context, layer: layer))
      guard needsAttention else { continue }
      if let attentionMask {
        // The same masks the forward drew per (sequence, head), for the whole layer.
        let span = heads * t * t
        Parallel.forEach(b, workers: options.threads) { row in
          options.dropoutMask(
            attentionMask + row * span, count: span, site: .attention(layer), offset: row * span)
        }
      }
      for g in [dq, dk, dv] { g.update(repeating: 0, count: n * c) }
      Kernels.attentionBackward(
        dq: dq, dk: dk, dv: dv, dout: dcontext, q: a.pointer(.q, layer: layer),
        k: a.pointer(.k, layer: layer), v: a.pointer(.v, layer: layer),
        probs: a.probabilities(layer: layer, sequence: 0),
        dropout: attentionMask.map { UnsafePointer($0) }, batch: b, length: t, heads: heads,
        kvHeads: heads, headDim: d, workers: options.threads)
      let dx = needsInput ? dnext : nil
      linearBackward(s, dinp: dx, dout: dq, inp: x)
      linearBackward(s + 1, dinp: dx, dout: dk, inp: x)
      linearBackward(s + 2, dinp: dx, dout: dv, inp: x)
      swap(&dres, &dnext)
    }
  }
}
