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

/// `flare-train`: train adapters in-process on the CPU.
public enum TrainCommand {
  /// Opens a model for training (replaced in tests).
  public typealias ModelLoader = (_ path: String, _ task: TrainingTask) throws -> TrainingModel

  // MARK: - Options: each declared once (name, placeholder, default, type, rule)

  /// The options of `flare-train lora`.
  public enum LoRAOptions {
    public static let model = TypedOption<String>.text(
      "--model", value: "path", help: "The base model: an HF model folder or a .gguf file.")
    public static let data = TypedOption<String>.text(
      "--data", value: "path", help: "Training examples, one JSON object per line.")
    public static let valid = TypedOption<String>.text(
      "--valid", value: "path", help: "Validation examples, same format.")
    public static let output = TypedOption<String>.text(
      "--output", value: "dir", help: "The adapter folder to write (with the log and report).")
    public static let targetModules = TypedOption<[String]>.list(
      "--target-modules", value: "names|all-linear",
      help:
        "Linear modules to adapt, by name or path suffix (default: q_proj,v_proj; query,value for encoders)."
    )
    public static let rank = TypedOption<Int>.integer(
      "--rank", value: "r", default: 8, minimum: 1, maximum: 4096, help: "LoRA rank.")
    public static let alpha = TypedOption<Double>.number(
      "--alpha", value: "a", default: 16, help: "lora_alpha; the scale is alpha/r.",
      check: { $0 > 0 ? nil : "must be positive" })
    public static let rslora = FlagOption("--rslora", help: "Scale by alpha/sqrt(r) (rsLoRA).")
    public static let dropout = TypedOption<Double>.number(
      "--dropout", value: "p", default: 0, help: "Dropout on the LoRA input (lora_dropout).",
      check: { $0 >= 0 && $0 < 1 ? nil : "must be in [0, 1)" })
    public static let task = TypedOption<TrainingTask>.choice(
      "--task", default: .causalLM, help: "What the adapter learns.")
    public static let epochs = TypedOption<Int>.integer(
      "--epochs", value: "n", default: 1, minimum: 1, help: "Passes over the training data.")
    public static let maxSteps = TypedOption<Int>.integer(
      "--max-steps", value: "n", minimum: 1, help: "Optimizer steps in all (instead of --epochs).")
    public static let batchSize = TypedOption<Int>.integer(
      "--batch-size", value: "n", default: 8, minimum: 1, help: "Examples per micro-batch.")
    public static let gradAccum = TypedOption<Int>.integer(
      "--grad-accum", value: "n", default: 1, minimum: 1,
      help: "Micro-batches per optimizer step.")
    public static let lr = TypedOption<Double>.number(
      "--lr", value: "x", default: 2e-4, help: "Peak learning rate (AdamW).",
      check: { $0 > 0 ? nil : "must be positive" })
    public static let schedule = TypedOption<LearningRateSchedule>.choice(
      "--schedule", default: .linear, help: "Learning-rate decay after the warm-up.")
    public static let warmupSteps = TypedOption<Int>.integer(
      "--warmup-steps", value: "n", default: 0, minimum: 0, help: "Linear warm-up steps.")
    public static let weightDecay = TypedOption<Double>.number(
      "--weight-decay", value: "x", default: 0,
      help: "AdamW's decoupled weight decay (not on biases).",
      check: { $0 >= 0 ? nil : "must not be negative" })
    public static let maxGradNorm = TypedOption<Double>.number(
      "--max-grad-norm", value: "x", default: 1,
      help: "Clip gradients to this global norm (0: no clipping).",
      check: { $0 >= 0 ? nil : "must not be negative" })
    public static let maxLength = TypedOption<Int>.integer(
      "--max-length", value: "n", default: 128, minimum: 8, maximum: 1 << 20,
      help: "Tokens per example at most (longer ones are truncated).")
    public static let seed = TypedOption<UInt64>.unsigned(
      "--seed", value: "n", default: 0, help: "Seed of the LoRA init, data order and dropout.")
    public static let threads = TypedOption<Int>.integer(
      "--threads", value: "n", minimum: 1, maximum: 1024,
      help: "Threads of the training passes and OpenBLAS (default: all cores).")
    public static let compute = TypedOption<ComputeMode>.choice(
      "--compute", default: .quantized,
      help:
        "A GGUF base's quantized matrices: kept as stored, dequantized a tile at a time (QLoRA), or f32 at load."
    )
    public static let gradientCheckpointing = FlagOption(
      "--gradient-checkpointing",
      help:
        "Llama: keep only each block's input and recompute the block in the backward pass (less activation memory, one more forward of the blocks, the same gradients)."
    )
    public static let evalEvery = TypedOption<Int>.integer(
      "--eval-every", value: "n", default: 0, minimum: 0,
      help: "Validate every n steps (0: after each epoch).")
    public static let saveEvery = TypedOption<Int>.integer(
      "--save-every", value: "n", default: 0, minimum: 0,
      help: "Save a checkpoint every n steps (0: only on Ctrl-C).")
    public static let resume = TypedOption<String>.text(
      "--resume", value: "dir", help: "Continue from a checkpoint (or the newest in an output).")
    public static let initAdapter = TypedOption<String>.text(
      "--init-adapter", value: "dir", help: "Start from a PEFT LoRA folder instead of PEFT's init.")
    public static let noShuffle = FlagOption("--no-shuffle", help: "Keep the file's order.")
    public static let modelDropout = TypedOption<Double>.number(
      "--model-dropout", value: "p",
      help: "The model's own dropout in training (default: its config's hidden_dropout_prob).",
      check: { $0 >= 0 && $0 < 1 ? nil : "must be in [0, 1)" })
    public static let json = FlagOption("--json", help: "Print the log lines as JSON to stdout.")
    public static let quiet = FlagOption(
      "--quiet", short: "-q", help: "Print nothing on success; no progress bar.")
    public static let force = FlagOption("--force", help: "Replace an existing output.")
    public static let dryRun = FlagOption(
      "--dry-run", help: "Print the plan (parameters, steps, tokens, memory) and exit.")

    public static let inputFusion = FlagOption(
      "--input-fusion",
      help:
        "Input-level fusion baseline: each line's \"source\", a newline, then its text as one sequence (--max-length doubled; the source is never scored)."
    )

    /// Every option, in `--help` order.
    public static let specs: [OptionSpec] = [
      model.spec, data.spec, valid.spec, output.spec, targetModules.spec, rank.spec, alpha.spec,
      rslora.spec, dropout.spec, task.spec, epochs.spec, maxSteps.spec, batchSize.spec,
      gradAccum.spec, lr.spec, schedule.spec, warmupSteps.spec, weightDecay.spec,
      maxGradNorm.spec, maxLength.spec, seed.spec, threads.spec, compute.spec,
      gradientCheckpointing.spec, evalEvery.spec,
      saveEvery.spec, resume.spec, initAdapter.spec, noShuffle.spec, modelDropout.spec,
      json.spec, quiet.spec, force.spec, dryRun.spec,
    ]
  }

  /// The options `flare-train flare` adds to those of `flare-train lora`.
  public enum FLAREOptions {
    public static let fusion = TypedOption<FLAREConfig.Fusion>.choice(
      "--fusion", default: .addReLU,
      help: "How the source and target meet in the rank-r bottleneck (FLARE.md §2.3).")
    public static let fusedModules = TypedOption<[String]>.list(
      "--fused-modules", value: "names",
      help:
        "Adapted modules that receive the source state (default: q_proj,v_proj; query,value for encoders)."
    )
    public static let referenceForm = FlagOption(
      "--reference-form",
      help:
        "Decoders: let matmul, matmul_relu and cross-attention read every position, padding and later tokens included, as the reference does (default there: causal)."
    )
    public static let sourceNormalize = FlagOption(
      "--source-normalize",
      help: "Llama: pass the source through the block's input norm (default: the raw residual).")
    public static let crossAttentionHeads = TypedOption<Int>.integer(
      "--cross-attention-heads", value: "n", default: 1, minimum: 1, maximum: 4096,
      help: "cross-attention: heads (they must divide the rank).")
    public static let crossAttentionDropout = TypedOption<Double>.number(
      "--cross-attention-dropout", value: "p", default: 0,
      help: "cross-attention: dropout on its attention probabilities in training.",
      check: { $0 >= 0 && $0 < 1 ? nil : "must be in [0, 1)" })

    public static let specs: [OptionSpec] = [
      fusion.spec, fusedModules.spec, referenceForm.spec, sourceNormalize.spec,
      crossAttentionHeads.spec, crossAttentionDropout.spec,
    ]
  }

  /// The FLARE settings of a `flare-train flare` command line.
  public struct FLARERequest: Sendable {
    public var fusion: FLAREConfig.Fusion
    public var fusedModules: [String]?
    public var referenceForm: Bool
    public var normalizeSource: Bool
    public var heads: Int
    public var attentionDropout: Double

    init(_ arguments: ParsedArguments) throws(UsageError) {
      typealias O = FLAREOptions
      fusion = try O.fusion.required(in: arguments)
      fusedModules = try O.fusedModules.value(in: arguments)
      referenceForm = O.referenceForm.isSet(in: arguments)
      normalizeSource = O.sourceNormalize.isSet(in: arguments)
      heads = try O.crossAttentionHeads.required(in: arguments)
      attentionDropout = try O.crossAttentionDropout.required(in: arguments)
      if fusion != .crossAttention {
        for option in [O.crossAttentionHeads.name, O.crossAttentionDropout.name]
        where arguments.value(option) != nil {
          throw UsageError("'\(option)' applies to '--fusion cross-attention' only")
        }
      }
    }
  }

  static let exitStatus = """
    EXIT STATUS:
      0 on success, 1 on a failure, 64 on a usage error, 130 when stopped by Ctrl-C (a
      checkpoint of the last finished step is saved; continue with --resume).
    """

  public static let loraSpec: CommandSpec = {
    var spec = CommandSpec(
      name: "flare-train lora",
      overview: "Train a LoRA adapter (PEFT folder) on a Llama model or a BERT/XLM-R encoder.",
      positionals: [], options: LoRAOptions.specs + [LoRAOptions.inputFusion.spec],
      discussion: """
        DATA:
          causal-lm:       {"text": …} (loss on every token) or {"prompt": …, "completion": …}
                           (loss on the completion only)
          classification:  {"text": …, "label": …} or {"text": …, "text_pair": …, "label": …};
                           labels are strings or integers, the classes those of --data
          --input-fusion:  every line also has "source" (the parallel English text), put in
                           front of the text (for causal LM as a prompt, never scored)

        OUTPUT:
          adapter_config.json, adapter_model.safetensors (a PEFT folder), training_log.jsonl,
          training_report.svg, flare_labels.json (classification), checkpoint-<step>/.

        \(exitStatus)
        """)
    spec.usageLine =
      "flare-train lora --model <path> --data <path> --output <dir> [<options>]"
    return spec
  }()

  public static let flareSpec: CommandSpec = {
    var spec = CommandSpec(
      name: "flare-train flare",
      overview:
        "Train a FLARE adapter: LoRA whose fused modules also read the parallel English text.",
      positionals: [], options: LoRAOptions.specs + FLAREOptions.specs,
      discussion: """
        DATA:
          each line as for 'flare-train lora' plus "source": the parallel English text
          (text_pair is not supported). Target and source are padded to --max-length and
          fused position by position.

        OUTPUT:
          as 'flare-train lora', plus flare_config.json (formats/flare-adapter.md); the
          cross-attention weights are in adapter_model.safetensors.

        \(exitStatus)
        """)
    spec.usageLine =
      "flare-train flare --model <path> --data <path> --output <dir> [--fusion <f>] [<options>]"
    return spec
  }()

  public static let spec = CommandSpec(
    name: "flare-train",
    overview:
      "Train adapters on the CPU: LoRA and FLARE on Llama, Qwen and Gemma decoders and BERT/XLM-R encoders.",
    positionals: [PositionalSpec("subcommand", help: "One of the subcommands below.")],
    options: [],
    discussion: """
      SUBCOMMANDS:
        lora    Train a LoRA adapter and write it as a PEFT folder.
        flare   Train a FLARE adapter (PEFT folder + flare_config.json) on parallel text.

      See 'flare-train <subcommand> --help'.

      \(exitStatus)
      """)

  /// Dispatches to the subcommand named by the first argument; never returns.
  public static func main(arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
    ToolMain.dispatch(
      spec,
      subcommands: [
        .init("lora", loraSpec, { try runLoRA($0) }),
        .init("flare", flareSpec, { try runLoRA($0, flare: true) }),
      ], arguments: arguments)
  }

  // MARK: - lora

  /// The checked command line of `flare-train lora`.
  public struct LoRARequest: Sendable {
    public var model: String
    public var data: String
    public var valid: String?
    public var output: String
    public var targets: [String]?
    public var lora: LoRASettings
    public var options: TrainingOptions
    public var maxLength: Int
    public var threads: Int?
    public var compute: ComputeMode = .quantized
    /// `--gradient-checkpointing` (Llama models).
    public var gradientCheckpointing = false
    public var resume: String?
    public var initAdapter: String?
    public var modelDropout: Double?
    public var json: Bool
    public var quiet: Bool
    public var force: Bool
    public var dryRun: Bool
    /// `flare-train flare`: the fusion settings.
    public var flare: FLARERequest?
    /// `--input-fusion` (`flare-train lora`): source and text as one sequence.
    public var inputFusion = false

    /// Reads and checks every option (and with `flare`, those of `flare-train flare`).
    /// - Throws: ``UsageError`` for a bad value or a combination that makes no sense.
    public init(_ arguments: ParsedArguments, flare: Bool = false) throws(UsageError) {
      typealias O = LoRAOptions
      self.flare = flare ? try FLARERequest(arguments) : nil
      model = try O.model.required(in: arguments)
      data = try O.data.required(in: arguments)
      valid = try O.valid.value(in: arguments)
      dryRun = O.dryRun.isSet(in: arguments)
      output = try O.output.value(in: arguments) ?? ""
      if output.isEmpty && !dryRun {
        throw UsageError("missing expected option '--output <dir>'")
      }
      targets = try O.targetModules.value(in: arguments)
      if let targets, targets.contains("all-linear"), targets.count > 1 {
        throw UsageError("'--target-modules all-linear' cannot be combined with module names")
      }
      lora = LoRASettings(
        targets: targets ?? [], rank: try O.rank.required(in: arguments),
        alpha: try O.alpha.required(in: arguments), rslora: O.rslora.isSet(in: arguments),
        dropout: try O.dropout.required(in: arguments))
      var options = TrainingOptions(task: try O.task.required(in: arguments))
      if O.epochs.isGiven(in: arguments) && O.maxSteps.isGiven(in: arguments) {
        throw UsageError("give either '--epochs' or '--max-steps', not both")
      }
      options.epochs = try O.epochs.required(in: arguments)
      options.maxSteps = try O.maxSteps.value(in: arguments)
      options.batchSize = try O.batchSize.required(in: arguments)
      options.gradientAccumulation = try O.gradAccum.required(in: arguments)
      options.learningRate = try O.lr.required(in: arguments)
      options.schedule = try O.schedule.required(in: arguments)
      options.warmupSteps = try O.warmupSteps.required(in: arguments)
      options.optimizer.weightDecay = try O.weightDecay.required(in: arguments)
      options.maxGradNorm = try O.maxGradNorm.required(in: arguments)
      options.seed = try O.seed.required(in: arguments)
      options.shuffle = !O.noShuffle.isSet(in: arguments)
      options.evalEvery = try O.evalEvery.required(in: arguments)
      options.saveEvery = try O.saveEvery.required(in: arguments)
      self.options = options
      maxLength = try O.maxLength.required(in: arguments)
      threads = try O.threads.value(in: arguments)
      compute = try O.compute.required(in: arguments)
      gradientCheckpointing = O.gradientCheckpointing.isSet(in: arguments)
      resume = try O.resume.value(in: arguments)
      initAdapter = try O.initAdapter.value(in: arguments)
      modelDropout = try O.modelDropout.value(in: arguments)
      inputFusion = !flare && O.inputFusion.isSet(in: arguments)
      json = O.json.isSet(in: arguments)
      quiet = O.quiet.isSet(in: arguments)
      force = O.force.isSet(in: arguments)
      if initAdapter != nil {
        let clashing =
          [O.targetModules.name, O.rank.name, O.alpha.name]
          .filter { arguments.value($0) != nil } + (lora.rslora ? [O.rslora.spec.name] : [])
        if let first = clashing.first {
          throw UsageError(
            "'\(first)' cannot be combined with '--init-adapter' (the adapter's config sets the modules, ranks, alphas and rsLoRA)"
          )
        }
      }
    }
  }

  /// Runs `flare-train lora` with the parsed command line.
  /// - Parameter loader: Opens the model (tests pass a stand-in).
  public static func runLoRA(
    _ arguments: ParsedArguments, flare: Bool = false, loader: ModelLoader? = nil
  ) throws -> ExitStatus {
    let request = try LoRARequest(arguments, flare: flare)
    let compute = request.compute
    let run = try LoRARun.prepare(
      request, loader: loader ?? { try TrainingModel.open($0, task: $1, compute: compute) })
    if request.dryRun {
      printPlan(run, request: request)
      return .success
    }
    // OpenBLAS's thread count is the process's: set here, for the run, not while planning (a
    // dry run changes nothing, and a caller in the same process keeps its setting).
    if let threads = request.threads { BLAS.setThreads(threads) }
    return try execute(run, request: request)
  }

  // MARK: - Reporting

  static func printPlan(_ run: LoRARun, request: LoRARequest) {
    let plan = run.trainer.plan
    let loraCount = run.loras.values.reduce(0) { $0 + $1.a.count + $1.b.count }
    let headCount = run.heads.reduce(0) { $0 + $1.count }
    let memory = run.memoryEstimate
    if request.json {
      Console.out(
        JSONWriter.compact(
          .object([
            ("dry_run", .bool(true)), ("task", .string(request.options.task.rawValue)),
            ("architecture", .string(run.loaded.architecture)),
            ("adapted_modules", .integer(run.loras.count)),
            ("target_modules", .array(run.targets.recorded.map { .string($0) })),
            ("trainable_parameters", .integer(loraCount + headCount)),
            ("lora_parameters", .integer(loraCount)), ("head_parameters", .integer(headCount)),
            ("examples", .integer(plan.exampleCount)),
            ("truncated", .integer(run.trainData.truncatedCount)),
            ("dropped", .integer(run.trainData.droppedLines.count)),
            ("tokens", .integer(run.trainData.tokenCount)),
            ("scored_tokens", .integer(run.trainData.scoredCount)),
            ("validation_examples", .integer(run.validData?.examples.count ?? 0)),
            ("steps_per_epoch", .integer(plan.stepsPerEpoch)),
            ("total_steps", .integer(plan.totalSteps)), ("epochs", .integer(plan.epochs)),
            ("memory_bytes", .integer(memory.total)),
            ("memory_weights_bytes", .integer(memory.weights)),
            ("memory_activations_bytes", .integer(memory.activations)),
            ("memory_trainable_bytes", .integer(memory.trainable)),
            ("threads", .integer(run.loaded.model.trainingThreads)),
            ("gradient_checkpointing", .bool(request.gradientCheckpointing)),
            ("flare", run.flareConfig?.json ?? .null),
          ])) + "\n")
      return
    }
    let options = request.options
    var lines = [
      "plan: \(options.task.rawValue) \(run.flareConfig == nil ? "LoRA" : "FLARE") on \(request.model) (\(run.loaded.architecture))",
      "  adapted modules: \(run.loras.count) (\(run.targetSummary)), rank \(run.rankSummary), scale \(TrainingReport.format(Double(run.loras.values.first?.scale ?? 0)))",
      "  trainable parameters: \(grouped(loraCount + headCount)) (LoRA \(grouped(loraCount))\(headCount > 0 ? ", head \(grouped(headCount))" : ""))",
      "  data: \(plan.exampleCount) examples, \(grouped(run.trainData.tokenCount)) tokens, \(grouped(run.trainData.scoredCount)) scored; \(run.trainData.truncatedCount) truncated to \(request.inputFusion ? 2 * request.maxLength : request.maxLength) tokens, \(run.trainData.droppedLines.count) dropped (nothing to learn)\(request.inputFusion ? "; input-level fusion: each source, a newline, then the text" : "")",
    ]
    if let valid = run.validData {
      lines.append(
        "  validation: \(valid.examples.count) examples (\(valid.truncatedCount) truncated)")
    }
    lines += [
      "  steps: \(plan.stepsPerEpoch) per epoch, \(plan.totalSteps) in all (\(plan.epochs) epoch\(plan.epochs == 1 ? "" : "s"); batch \(options.batchSize) x accumulation \(options.gradientAccumulation))",
      "  optimizer: AdamW lr \(TrainingReport.format(options.learningRate)), \(options.schedule.rawValue) schedule, \(options.warmupSteps) warm-up steps, weight decay \(TrainingReport.format(options.optimizer.weightDecay)), clip \(TrainingReport.format(options.maxGradNorm))",
      "  memory estimate: \(bytes(memory.total)) (weights \(bytes(memory.weights)), activations \(bytes(memory.activations))\(request.gradientCheckpointing ? " with gradient checkpointing" : ""), adapter + optimizer \(bytes(memory.trainable)))",
      "  threads: \(run.loaded.model.trainingThreads)",
    ]
    if let flare = run.flareConfig {
      let fused = run.loras.keys.filter { flare.isFused($0) }.count
      lines.insert(
        "  fusion: \(flare.fusion.rawValue) on \(fused) modules (\(flare.fusedModules.joined(separator: ", "))), \(flare.causal ? "causal (a position reads target positions up to itself)" : "reference form (every position reads every position)")\(flare.fusion == .crossAttention ? ", \(flare.crossAttentionHeads) head\(flare.crossAttentionHeads == 1 ? "" : "s")" : ""); source: the block input\(flare.normalizeSource ? " through its input norm" : ""), padded to \(flare.maxLength) tokens",
        at: 2)
    }
    Console.out(lines.joined(separator: "\n") + "\n")
  }

  /// `1234567` as `1,234,567`.
  static func grouped(_ value: Int) -> String {
    let digits = Array(String(abs(value)))
    var out = ""
    for (i, digit) in digits.enumerated() {
      if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
      out.append(digit)
    }
    return (value < 0 ? "-" : "") + out
  }

  /// A byte count in MB or GB.
  static func bytes(_ count: Int) -> String {
    let mb = Double(count) / 1_000_000
    return mb >= 1000 ? "\(TrainingReport.format(mb / 1000)) GB" : "\(TrainingReport.format(mb)) MB"
  }

  /// `1m20s`, `45s`, `2h05m`.
  static func duration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    if s >= 3600 { return "\(s / 3600)h\(String(format2(s % 3600 / 60)))m" }
    if s >= 60 { return "\(s / 60)m\(format2(s % 60))s" }
    return "\(s)s"
  }

  static func format2(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }

  // MARK: - Running

  static func execute(_ run: LoRARun, request: LoRARequest) throws -> ExitStatus {
    let output = request.output
    let createdOutput = try run.prepareOutput()
    var wroteCheckpoint = false
    InterruptRequest.install()
    let trainer = run.trainer
    let total = trainer.plan.totalSteps
    let bar = ProgressBar(label: "training", total: total, enabled: !request.quiet && !request.json)
    let started = monotonicSeconds()
    let startStep = trainer.step
    let outcome: TrainingOutcome
    do {
      outcome = try trainer.run(
        shouldStop: { InterruptRequest.isRequested },
        onStep: { entry in
          if request.json {
            Console.out(JSONWriter.compact(entry.json) + "\n")
          } else if !request.quiet {
            let done = entry.step - startStep
            let eta =
              (monotonicSeconds() - started) / Double(max(done, 1)) * Double(total - entry.step)
            bar.set(
              done: entry.step, of: total,
              detail:
                "step \(entry.step)/\(total) loss \(TrainingReport.format(entry.loss)) lr \(TrainingReport.format(entry.learningRate)) \(Int(entry.tokensPerSecond.rounded())) tok/s ETA \(duration(eta))"
            )
            if let validation = entry.validation {
              bar.finish()
              Console.out(validationLine(entry.step, validation) + "\n")
            }
          }
        },
        onCheckpoint: { checkpoint in
          try run.writeCheckpoint(checkpoint)
          wroteCheckpoint = true
        })
    } catch let stopped as TrainingStopped {
      bar.finish()
      let last = CheckpointStore.checkpoints(in: output).last
      if createdOutput && !wroteCheckpoint && last == nil { rmdir(output) }
      let kept =
        last.map { "the last good checkpoint is \($0.path) (step \($0.step))" }
        ?? "no checkpoint was saved"
      throw FlareError("train", .invalidArgument, "\(stopped); \(kept)", path: request.data)
    } catch {
      bar.finish()
      if createdOutput && CheckpointStore.checkpoints(in: output).isEmpty { rmdir(output) }
      throw error
    }
    bar.finish()
    if case .interrupted(let step) = outcome {
      if !request.quiet {
        Console.err(
          "flare-train: interrupted after step \(step) of \(total); checkpoint saved in \(output)/\(CheckpointStore.folderName(step: step)) (continue with --resume \(output))\n"
        )
      }
      return .interrupted
    }
    let files = try run.writeFinalOutput()
    if !request.quiet && !request.json {
      let last = trainer.log.last
      Console.out(
        "trained \(trainer.step) steps\(last.map { ", final loss \(TrainingReport.format($0.loss))" } ?? ""); wrote \(files.map { AtomicFileWriter.baseName(of: $0) }.joined(separator: ", ")) to \(output)\n"
      )
    }
    return .success
  }

  static func validationLine(_ step: Int, _ metrics: ValidationMetrics) -> String {
    var text = "step \(step): validation loss \(TrainingReport.format(metrics.loss))"
    if let accuracy = metrics.accuracy { text += ", accuracy \(TrainingReport.format(accuracy))" }
    if let f1 = metrics.macroF1 { text += ", macro-F1 \(TrainingReport.format(f1))" }
    return text
  }
}
