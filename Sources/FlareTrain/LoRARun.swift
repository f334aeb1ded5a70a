import FlareAdapters
import FlareCLI
import FlareCore
import FlareModels
import FlareTensor

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// One `flare-train lora` run, prepared: data read and tokenized, model opened, adapter
/// created (or loaded), optimizer ready, checkpoint restored. Writes checkpoints and the final
/// output; prints nothing.
public final class LoRARun {
  public let request: TrainCommand.LoRARequest
  public let loaded: TrainingModel
  public let targets: LoRATargets
  public let loras: [String: TrainableLoRA]
  public let heads: [TrainableTensor]
  public let labels: LabelSet?
  public let trainData: EncodedData
  public let validData: EncodedData?
  public let trainer: Trainer
  public let adapterConfig: PEFTLoRAConfig
  /// What a resume must match (`trainer_state.json` `settings`).
  public let settings: JSONValue
  /// `flare-train flare`: the adapter's `flare_config.json`.
  public var flareConfig: FLAREConfig?

  init(
    request: TrainCommand.LoRARequest, loaded: TrainingModel, targets: LoRATargets,
    loras: [String: TrainableLoRA], heads: [TrainableTensor], labels: LabelSet?,
    trainData: EncodedData, validData: EncodedData?, trainer: Trainer,
    adapterConfig: PEFTLoRAConfig, settings: JSONValue
  ) {
    self.request = request
    self.loaded = loaded
    self.targets = targets
    self.loras = loras
    self.heads = heads
    self.labels = labels
    self.trainData = trainData
    self.validData = validData
    self.trainer = trainer
    self.adapterConfig = adapterConfig
    self.settings = settings
  }

  /// Reads the data, opens the model and sets up the adapter and the optimizer.
  ///
  /// Data files are read and checked before the model is opened, so a bad line is reported
  /// at once.
  /// - Throws: ``TrainingDataError`` for bad data, ``FlareError`` for a model, adapter or
  ///   checkpoint that does not fit, ``UsageError`` for a limit the model's tokens break.
  public static func prepare(
    _ request: TrainCommand.LoRARequest, loader: TrainCommand.ModelLoader
  ) throws -> LoRARun {
    let task = request.options.task
    let flare = request.flare != nil
    let withSource = flare || request.inputFusion
    /// The examples of a data file (input-level fusion: source and text as one).
    func read(_ path: String) throws(TrainingDataError) -> [RawExample] {
      let raw = try JSONLReader.read(path: path, task: task, source: withSource)
      return request.inputFusion ? raw.map { $0.inputFused() } : raw
    }
    let trainRaw = try read(request.data)
    let validRaw = try request.valid.map { path throws(TrainingDataError) in try read(path) }
    // Input-level fusion doubles the length: the source and the text each get --max-length.
    let maxLength = request.inputFusion ? 2 * request.maxLength : request.maxLength
    var labels: LabelSet?
    if task == .classification {
      labels = try LabelSet(training: trainRaw, path: request.data)
      // Check the validation labels now, before the model is loaded.
      if let validRaw, let valid = request.valid, let known = labels {
        for example in validRaw {
          guard case .classification(_, _, let label) = example.content,
            known.index(of: label) == nil
          else { continue }
          throw TrainingDataError(
            .unknownLabel, path: valid, line: example.line,
            "label '\(label)' is not one of the training file's labels (\(known.labels.map { "'\($0)'" }.joined(separator: ", ")))"
          )
        }
      }
    }
    let loaded = try loader(request.model, task)
    // The passes split their work over threads themselves, in a fixed partition
    // (bit-identical results for any count), and run BLAS single-threaded.
    loaded.model.trainingThreads = request.threads ?? BLAS.threads
    if request.gradientCheckpointing {
      guard let llama = loaded.model as? LlamaModel else {
        throw UsageError(
          "'--gradient-checkpointing' applies to Llama models (this model: '\(loaded.architecture)')"
        )
      }
      llama.gradientCheckpointing = true
    }
    if task == .causalLM && loaded.layout != .decoder {
      throw FlareError(
        "train", .unsupported,
        "causal-lm training needs a decoder; '\(loaded.architecture)' is an encoder (use --task classification)",
        path: request.model)
    }
    let encoder = ExampleEncoder(
      tokenizer: loaded.tokenizer, layout: loaded.layout, maxLength: maxLength,
      vocabularySize: loaded.vocabularySize)
    if task == .classification, maxLength < encoder.specialCount(pair: true) + 2 {
      throw UsageError(
        "'--max-length' \(request.maxLength) leaves no room for text besides the special tokens")
    }
    let trainData = try encoder.encode(trainRaw, path: request.data, labels: labels)
    guard !trainData.examples.isEmpty else {
      throw TrainingDataError(
        .emptyFile, path: request.data, line: nil,
        "no example has anything to learn (every one is shorter than two tokens or lost its completion to truncation)"
      )
    }
    var validData: EncodedData?
    if let validRaw, let path = request.valid {
      validData = try encoder.encode(validRaw, path: path, labels: labels)
    }

    // Heads, then the LoRA layers (fresh or from --init-adapter).
    let model = loaded.model
    var heads: [TrainableTensor] = []
    var modulesToSave: [String]?
    if task == .classification, let labels {
      guard let provider = model as? any ClassificationHeadProvider else {
        throw FlareError(
          "train", .unsupported,
          "classification training of '\(loaded.architecture)' models is not available yet (no classification head)",
          path: request.model)
      }
      var random = SplitMix64(
        seed: SplitMix64.derive(request.options.seed, Streams.head))
      heads = try provider.makeClassificationHead(classes: labels.count, random: &random)
      modulesToSave = provider.classificationModules
    }
    let targets: LoRATargets
    var loras: [String: TrainableLoRA]
    var alphas: [String: Double] = [:]
    var rslora = request.lora.rslora
    if let initPath = request.initAdapter {
      let adapter = try PEFTAdapter(folder: initPath)
      let loaded = try LoRAFactory.load(
        adapter: adapter, model: model, heads: heads, dropout: request.lora.dropout)
      loras = loaded.loras
      heads = loaded.heads
      for module in adapter.modules { alphas[module.path] = module.alpha }
      rslora = adapter.config.useRslora
      let order = model.linearModules.filter { loras[$0] != nil }
      var recorded = order
      if case .list(let names) = adapter.config.targetModules, !names.isEmpty {
        recorded = names
      }
      targets = LoRATargets(adapted: order, recorded: recorded)
    } else {
      targets = try LoRATargets(
        targets: request.targets ?? loaded.defaultTargets, modules: model.linearModules,
        modulesToSave: modulesToSave ?? [], classification: task == .classification)
      loras = try LoRAFactory.create(
        model: model, modules: targets.adapted, settings: request.lora, seed: request.options.seed)
      for module in targets.adapted { alphas[module] = request.lora.alpha }
    }
    var options = request.options
    options.modelDropout = Float(request.modelDropout ?? Double(loaded.configDropout))
    var state = TrainingState(
      loras: loras, heads: Dictionary(uniqueKeysWithValues: heads.map { ($0.name, $0) }),
      modelDropout: options.modelDropout)
    var flareConfig: FLAREConfig?
    if let settings = request.flare {
      let (fusion, config) = try Self.fusion(
        settings, loras: loras, adapted: targets.adapted, loaded: loaded, request: request)
      state.fusion = fusion
      flareConfig = config
    }
    let tokenizer = loaded.tokenizer
    let collator = Collator(
      padID: tokenizer.pad ?? tokenizer.eos ?? 0, side: loaded.paddingSide,
      width: flare ? request.maxLength : nil)
    let trainer = Trainer(
      model: model, state: state, train: trainData.examples, valid: validData?.examples ?? [],
      options: options, collator: collator)
    let adapterConfig = LoRAFactory.peftConfig(
      loras: loras, alphas: alphas, recordedTargets: targets.recorded, rslora: rslora,
      dropout: request.lora.dropout, task: task, modulesToSave: modulesToSave,
      baseModel: request.model)
    var settings = Self.settings(
      request: request, options: options, loaded: loaded, targets: targets,
      config: adapterConfig, plan: trainer.plan, data: trainData, labels: labels)
    if let flareConfig, case .object(var members) = settings {
      members.append(("flare", flareConfig.json))
      settings = .object(members)
    }
    let run = LoRARun(
      request: request, loaded: loaded, targets: targets, loras: loras, heads: heads,
      labels: labels, trainData: trainData, validData: validData, trainer: trainer,
      adapterConfig: adapterConfig, settings: settings)
    run.flareConfig = flareConfig
    if let resume = request.resume {
      let folder = try CheckpointStore.locate(resume)
      let (checkpoint, saved) = try CheckpointStore.read(folder)
      let differing = CheckpointStore.differences(saved: saved, current: settings)
      guard differing.isEmpty else {
        throw FlareError(
          "train", .invalidArgument,
          "the checkpoint was saved with other settings: \(differing.joined(separator: ", ")) differ (resume with the command line of the interrupted run)",
          path: folder)
      }
      try trainer.restore(checkpoint)
    }
    return run
  }

  /// The FLARE part of a `flare-train flare` run: the fused modules (the adapted modules
  /// `--fused-modules` names, matched as PEFT matches `target_modules`), the form (causal on
  /// decoders unless `--reference-form`; encoders always read every position, as the
  /// reference), and for `cross-attention` fresh `r×r` q/k/v weights and biases initialised
  /// as PyTorch's `nn.Linear` does, `U(−1/√r, 1/√r)`, from the run's seed.
  /// - Throws: ``UsageError`` for fused modules that are not adapted, heads that do not divide
  ///   a rank, `--source-normalize` on an encoder.
  static func fusion(
    _ settings: TrainCommand.FLARERequest, loras: [String: TrainableLoRA], adapted: [String],
    loaded: TrainingModel, request: TrainCommand.LoRARequest
  ) throws -> (TrainingFusion, FLAREConfig) {
    let decoder = loaded.layout == .decoder
    let names =
      settings.fusedModules ?? (decoder ? ["q_proj", "v_proj"] : ["query", "value"])
    var config = FLAREConfig(
      fusion: settings.fusion, fusedModules: names,
      causal: decoder && !settings.referenceForm, normalizeSource: settings.normalizeSource,
      paddingSide: loaded.paddingSide.rawValue, maxLength: request.maxLength,
      crossAttentionHeads: settings.heads, crossAttentionDropout: settings.attentionDropout)
    if !decoder && settings.normalizeSource {
      throw UsageError(
        "'--source-normalize' applies to pre-norm decoders; an encoder's block input is already normalized"
      )
    }
    if !decoder && settings.referenceForm {
      throw UsageError("'--reference-form' applies to decoders; encoders always use it")
    }
    let fused = adapted.filter { config.isFused($0) }
    for name in names where !adapted.contains(where: { $0 == name || $0.hasSuffix(".\(name)") }) {
      throw UsageError(
        "'--fused-modules' names \(name), which is not an adapted module (adapt it with --target-modules)"
      )
    }
    var attention: [String: TrainableFusionAttention] = [:]
    for module in fused {
      let r = loras[module]?.rank ?? 0
      guard r % settings.heads == 0 else {
        throw UsageError(
          "'--cross-attention-heads' \(settings.heads) does not divide the rank \(r) of \(module)")
      }
      guard settings.fusion == .crossAttention else { continue }
      var random = SplitMix64(
        seed: SplitMix64.derive(
          SplitMix64.derive(request.options.seed, Streams.crossAttention), LoRAFactory.fnv1a(module)
        ))
      let bound = 1 / Float(r).squareRoot()
      func tensor(_ part: String, _ shape: [Int]) -> TrainableTensor {
        TrainableTensor(
          name: "base_model.model.\(module).cross_attention.\(part)", shape: shape,
          values: (0..<shape.reduce(1, *)).map { _ in random.symmetric(bound) })
      }
      attention[module] = TrainableFusionAttention(
        query: tensor("q.weight", [r, r]), queryBias: tensor("q.bias", [r]),
        key: tensor("k.weight", [r, r]), keyBias: tensor("k.bias", [r]),
        value: tensor("v.weight", [r, r]), valueBias: tensor("v.bias", [r]))
    }
    config.fusedModules = names
    let fusion = TrainingFusion(
      fusion: settings.fusion, fusedModules: Set(fused), causal: config.causal,
      heads: settings.heads, attentionDropout: Float(settings.attentionDropout),
      normalizeSource: settings.normalizeSource, attention: attention)
    return (fusion, config)
  }

  /// The values a resume must match: every setting that changes the result.
  static func settings(
    request: TrainCommand.LoRARequest, options: TrainingOptions, loaded: TrainingModel,
    targets: LoRATargets, config: PEFTLoRAConfig, plan: TrainingPlan, data: EncodedData,
    labels: LabelSet?
  ) -> JSONValue {
    .object(
      [
        ("task", .string(options.task.rawValue)),
        ("architecture", .string(loaded.architecture)),
        ("vocabulary_size", .integer(loaded.vocabularySize)),
        ("adapted_modules", .array(targets.adapted.map { .string($0) })),
        ("r", .integer(config.r)), ("lora_alpha", .exact(config.loraAlpha)),
        ("rank_pattern", .integer(config.rankPattern.count)),
        ("use_rslora", .bool(config.useRslora)), ("lora_dropout", .exact(config.loraDropout)),
        ("init_adapter", .bool(request.initAdapter != nil)),
        ("batch_size", .integer(options.batchSize)),
        ("grad_accum", .integer(options.gradientAccumulation)),
        ("total_steps", .integer(plan.totalSteps)), ("lr", .exact(options.learningRate)),
        ("schedule", .string(options.schedule.rawValue)),
        ("warmup_steps", .integer(options.warmupSteps)),
        ("weight_decay", .exact(options.optimizer.weightDecay)),
        ("max_grad_norm", .exact(options.maxGradNorm)), ("max_length", .integer(request.maxLength)),
        ("seed", .integer(options.seed)), ("shuffle", .bool(options.shuffle)),
        ("model_dropout", .float(options.modelDropout)),
        ("train_examples", .integer(data.examples.count)),
        ("train_fingerprint", .string(fingerprint(data.examples))),
        ("labels", labels?.json ?? .null),
      ] + (request.inputFusion ? [("input_fusion", JSONValue.bool(true))] : []))
  }

  /// FNV-1a over every example's tokens, labels, token types and class, in order (hex).
  static func fingerprint(_ examples: [TokenizedExample]) -> String {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    func add(_ value: Int) {
      var v = UInt64(bitPattern: Int64(value))
      for _ in 0..<8 {
        hash ^= v & 0xFF
        hash &*= 0x0000_0100_0000_01B3
        v >>= 8
      }
    }
    for example in examples {
      add(-1)
      example.tokens.forEach(add)
      add(-2)
      (example.labels ?? []).forEach(add)
      add(-3)
      (example.tokenTypes ?? []).forEach(add)
      add(example.classIndex ?? -4)
      if let source = example.source {
        add(-5)
        source.forEach(add)
      }
    }
    let hex = String(hash, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
  }

  /// The files a finished run writes into the output folder.
  public var outputFiles: [String] {
    PEFTWriter.fileNames + ["training_log.jsonl", "training_report.svg"]
      + (labels == nil ? [] : ["flare_labels.json"])
      + (flareConfig == nil ? [] : ["flare_config.json"])
  }

  /// Makes sure the output folder can be written: refuses an existing run's output without
  /// `--force` (or `--resume`), removes the old checkpoints with `--force`, creates the
  /// folder.
  /// - Returns: Whether the folder was created.
  public func prepareOutput() throws -> Bool {
    let output = request.output
    if fileExists(output) && !isDirectory(output) {
      throw FlareError("io", .outputExists, "output exists and is not a folder", path: output)
    }
    if isDirectory(output) {
      if request.resume == nil {
        let existing = outputFiles.filter { fileExists("\(output)/\($0)") }
        let checkpoints = CheckpointStore.checkpoints(in: output)
        if !request.force, let first = existing.first ?? checkpoints.first?.path {
          throw FlareError(
            "io", .outputExists, "output already exists (use --force to overwrite)",
            path: first.hasPrefix("/") || first.hasPrefix(output) ? first : "\(output)/\(first)")
        }
        for old in checkpoints { CheckpointStore.removeFlatFolder(old.path) }
      }
      return false
    }
    guard mkdir(output, 0o777) == 0 else {
      throw FlareError.io("cannot create the output folder", path: output, errno: errno)
    }
    return true
  }

  /// Saves a checkpoint into the output folder (replacing the previous one).
  public func writeCheckpoint(_ checkpoint: TrainerCheckpoint) throws {
    try CheckpointStore.write(
      checkpoint, into: request.output, adapterConfig: adapterConfig, settings: settings,
      plan: trainer.plan)
  }

  /// Writes the adapter, the log, the report (and the labels) into the output folder.
  /// - Returns: The paths written.
  public func writeFinalOutput() throws -> [String] {
    let log = trainer.log
    let title =
      "flare-train: \(request.options.task.rawValue) \(flareConfig.map { "FLARE (\($0.fusion.rawValue))" } ?? "LoRA") on \(AtomicFileWriter.baseName(of: request.model)) (\(loaded.architecture))"
    var extra: [(name: String, bytes: [UInt8])] = [
      ("training_log.jsonl", CheckpointStore.logBytes(log)),
      ("training_report.svg", Array(TrainingReport.svg(log: log, title: title).utf8)),
    ]
    if let labels {
      extra.append(("flare_labels.json", Array((JSONWriter.pretty(labels.json) + "\n").utf8)))
    }
    if let flareConfig {
      extra.append(("flare_config.json", Array((JSONWriter.pretty(flareConfig.json) + "\n").utf8)))
    }
    return try PEFTWriter.write(
      folder: request.output, config: adapterConfig,
      tensors: trainer.parameters.map {
        PEFTTensor(name: $0.name, shape: $0.shape, values: $0.values)
      }, extraFiles: extra, overwrite: true)
  }

  /// Estimated peak memory: F32 weights, the activations of one micro-batch of the longest
  /// examples (FLARE: of `--max-length` tokens, plus the source pass's kept block inputs),
  /// and the trainable values with their gradients and two AdamW moments.
  public var memoryEstimate: (weights: Int, activations: Int, trainable: Int, total: Int) {
    var longest = trainData.examples.map(\.tokens.count).max() ?? 0
    if request.flare != nil { longest = request.maxLength }
    let weights = loaded.weightBytes
    var activations = loaded.activationBytes(
      request.options.batchSize, longest, targets.adapted)
    if let flare = request.flare {
      activations += loaded.sourcePassBytes(
        request.options.batchSize, longest, flare.normalizeSource)
    }
    let trainable = 16 * trainer.parameterCount
    return (weights, activations, trainable, weights + activations + trainable)
  }

  /// `q_proj, v_proj` (the distinct last path components of the adapted modules).
  public var targetSummary: String {
    var seen: [String] = []
    for module in targets.adapted {
      let last = module.split(separator: ".").last.map(String.init) ?? module
      if !seen.contains(last) { seen.append(last) }
    }
    return seen.joined(separator: ", ")
  }

  /// `8`, or `4–16` when modules differ.
  public var rankSummary: String {
    let ranks = loras.values.map(\.rank)
    guard let low = ranks.min(), let high = ranks.max() else { return "0" }
    return low == high ? "\(low)" : "\(low)-\(high)"
  }
}

extension LoRATargets {
  /// Targets given directly (an adapter's own modules).
  init(adapted: [String], recorded: [String]) {
    self.adapted = adapted
    self.recorded = recorded
  }
}
