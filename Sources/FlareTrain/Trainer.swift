import FlareAdapters
import FlareCLI
import FlareCore
import FlareModels

/// The optimisation settings of a run.
public struct TrainingOptions: Sendable, Equatable {
  public var task: TrainingTask
  /// Examples per micro-batch (transformers' `per_device_train_batch_size`).
  public var batchSize: Int = 8
  /// Micro-batches per optimizer step.
  public var gradientAccumulation: Int = 1
  /// Passes over the data, unless ``maxSteps`` is set.
  public var epochs: Int = 1
  /// Optimizer steps in all; overrides ``epochs`` (the data is repeated as needed).
  public var maxSteps: Int?
  public var learningRate: Double = 2e-4
  public var schedule: LearningRateSchedule = .linear
  public var warmupSteps: Int = 0
  public var optimizer = AdamW.Options()
  /// Clip gradients to this global norm; 0 turns clipping off.
  public var maxGradNorm: Double = 1
  public var seed: UInt64 = 0
  /// Shuffle the examples each epoch (seeded); `false` keeps file order.
  public var shuffle = true
  /// Validate every this many steps; 0 validates at the end of each epoch.
  public var evalEvery: Int = 0
  /// Save a checkpoint every this many steps; 0 saves none (Ctrl-C still saves one).
  public var saveEvery: Int = 0
  /// The model's own dropout in training (BERT/XLM-R hidden and attention dropout).
  public var modelDropout: Float = 0

  public init(task: TrainingTask) { self.task = task }
}

/// Which examples each optimizer step uses: fixed by the example count, the options and the
/// seed alone, so any step's batches can be rebuilt (resuming needs no data cursor beyond the
/// step number).
public struct TrainingPlan: Sendable, Equatable {
  public let exampleCount: Int
  public let batchSize: Int
  public let gradientAccumulation: Int
  /// `⌈examples / batch⌉`.
  public let microBatchesPerEpoch: Int
  /// `⌈micro-batches / accumulation⌉`: a last, shorter step ends every epoch (transformers
  /// steps the optimizer on an epoch's remainder too).
  public let stepsPerEpoch: Int
  public let totalSteps: Int
  public let shuffle: Bool
  public let seed: UInt64

  public init(exampleCount: Int, options: TrainingOptions) {
    self.exampleCount = exampleCount
    batchSize = options.batchSize
    gradientAccumulation = options.gradientAccumulation
    microBatchesPerEpoch = (exampleCount + batchSize - 1) / batchSize
    stepsPerEpoch = max(1, (microBatchesPerEpoch + gradientAccumulation - 1) / gradientAccumulation)
    totalSteps = options.maxSteps ?? options.epochs * stepsPerEpoch
    shuffle = options.shuffle
    seed = options.seed
  }

  /// Passes over the data the run makes (the last may be partial).
  public var epochs: Int { (totalSteps + stepsPerEpoch - 1) / stepsPerEpoch }

  /// The example order of epoch `epoch` (0-based): file order, or a permutation drawn from
  /// the stream `derive(seed, "shuffle" ⊕ epoch)`.
  public func order(epoch: Int) -> [Int] {
    guard shuffle else { return Array(0..<exampleCount) }
    var random = SplitMix64(seed: SplitMix64.derive(seed, Streams.shuffle ^ UInt64(epoch)))
    return random.permutation(exampleCount)
  }

  /// The micro-batches of optimizer step `step` (0-based): example indices, and each
  /// micro-batch's index over the whole run (the dropout seed's label).
  public func microBatches(step: Int, order: [Int]) -> [(examples: [Int], globalIndex: Int)] {
    let epoch = step / stepsPerEpoch
    let first = (step % stepsPerEpoch) * gradientAccumulation
    let last = min(first + gradientAccumulation, microBatchesPerEpoch)
    return (first..<last).map { micro in
      let start = micro * batchSize
      let examples = Array(order[start..<min(start + batchSize, exampleCount)])
      return (examples, epoch * microBatchesPerEpoch + micro)
    }
  }
}

/// The labels of the seeded streams of a run (see ``SplitMix64/derive(_:_:)``).
public enum Streams {
  public static let shuffle: UInt64 = 0x5348_5546_0000_0000
  public static let dropout: UInt64 = 0x4452_4F50_0000_0000
  public static let head: UInt64 = 0x4845_4144_0000_0000
  public static let crossAttention: UInt64 = 0x4641_5454_0000_0000
}

/// Validation results.
public struct ValidationMetrics: Sendable, Equatable {
  /// Mean cross-entropy over the validation set's scored tokens or examples.
  public var loss: Double
  /// Classification: share of examples whose argmax is the label.
  public var accuracy: Double?
  /// Classification: the unweighted mean of per-class F1 over the classes that occur as a
  /// label or a prediction (scikit-learn's `f1_score(average="macro")`).
  public var macroF1: Double?

  public init(loss: Double, accuracy: Double? = nil, macroF1: Double? = nil) {
    self.loss = loss
    self.accuracy = accuracy
    self.macroF1 = macroF1
  }
}

/// One line of `training_log.jsonl`: one optimizer step.
public struct TrainingLogEntry: Sendable, Equatable {
  /// Optimizer steps done, counting this one.
  public var step: Int
  /// `step / stepsPerEpoch`, as transformers logs it.
  public var epoch: Double
  /// The step's loss (sum over its scored positions / their count).
  public var loss: Double
  /// The learning rate this step used.
  public var learningRate: Double
  /// The global gradient norm before clipping.
  public var gradNorm: Double
  /// Real (non-padding) tokens the step processed.
  public var tokens: Int
  /// Wall-clock seconds of the step.
  public var seconds: Double
  public var validation: ValidationMetrics?

  public var tokensPerSecond: Double { seconds > 0 ? Double(tokens) / seconds : 0 }

  /// The JSON line.
  public var json: JSONValue {
    var members: [(String, JSONValue)] = [
      ("step", .integer(step)), ("epoch", .exact(epoch)), ("loss", .exact(loss)),
      ("lr", .exact(learningRate)), ("grad_norm", .exact(gradNorm)), ("tokens", .integer(tokens)),
      ("seconds", .exact(seconds)), ("tokens_per_second", .exact(tokensPerSecond)),
    ]
    if let validation {
      members.append(("val_loss", .exact(validation.loss)))
      if let accuracy = validation.accuracy { members.append(("val_accuracy", .exact(accuracy))) }
      if let f1 = validation.macroF1 { members.append(("val_macro_f1", .exact(f1))) }
    }
    return .object(members)
  }

  /// Reads a line back (checkpoints keep the log so far).
  public init?(json: JSONValue) {
    guard let step = json["step"]?.intValue, let epoch = json["epoch"]?.doubleValue,
      let loss = json["loss"]?.doubleValue, let lr = json["lr"]?.doubleValue,
      let norm = json["grad_norm"]?.doubleValue, let tokens = json["tokens"]?.intValue,
      let seconds = json["seconds"]?.doubleValue
    else { return nil }
    self.init(
      step: step, epoch: epoch, loss: loss, learningRate: lr, gradNorm: norm, tokens: tokens,
      seconds: seconds)
    if let validationLoss = json["val_loss"]?.doubleValue {
      validation = ValidationMetrics(
        loss: validationLoss, accuracy: json["val_accuracy"]?.doubleValue,
        macroF1: json["val_macro_f1"]?.doubleValue)
    }
  }

  public init(
    step: Int, epoch: Double, loss: Double, learningRate: Double, gradNorm: Double, tokens: Int,
    seconds: Double, validation: ValidationMetrics? = nil
  ) {
    self.step = step
    self.epoch = epoch
    self.loss = loss
    self.learningRate = learningRate
    self.gradNorm = gradNorm
    self.tokens = tokens
    self.seconds = seconds
    self.validation = validation
  }
}

/// Why a run stopped early.
public struct TrainingStopped: Error, CustomStringConvertible, Sendable {
  public enum Reason: Sendable, Equatable {
    /// The loss or the gradient norm was NaN or infinite; the step was not applied.
    case nonFinite(quantity: String, value: Double)
  }

  public var reason: Reason
  /// The step (1-based) that failed.
  public var step: Int

  public var description: String {
    switch reason {
    case .nonFinite(let quantity, let value):
      "step \(step): the \(quantity) is \(value); training stopped before applying the step"
    }
  }
}

/// How ``Trainer/run(shouldStop:onStep:onCheckpoint:)`` ended.
public enum TrainingOutcome: Sendable, Equatable {
  case finished
  /// `shouldStop` returned true; a checkpoint of this step was handed to `onCheckpoint`.
  case interrupted(step: Int)
}

/// Runs the optimisation of one adapter over a ``TrainableModel``: micro-batches, loss
/// normalisation over the whole step, clipping, AdamW, the schedule, validation and
/// checkpoints.
///
/// Each step: zero the gradients; `N` = the step's scored label tokens (causal LM) or
/// examples (classification); every micro-batch runs `trainingPass` with
/// `gradientScale = 1/N`, so the gradients are those of `Σ CE / N` (transformers ≥ 4.46);
/// clip to the global norm; AdamW with `lr = base · schedule(step)`. A non-finite loss or
/// norm stops the run before the update.
public final class Trainer {
  public let model: any TrainableModel
  public let state: TrainingState
  /// The trainable tensors in optimizer order.
  public let parameters: [TrainableTensor]
  public let train: [TokenizedExample]
  public let valid: [TokenizedExample]
  public let options: TrainingOptions
  public let plan: TrainingPlan
  public let collator: Collator
  public private(set) var optimizer: AdamW
  /// Optimizer steps done.
  public private(set) var step = 0
  /// Every step's log line so far.
  public private(set) var log: [TrainingLogEntry] = []
  private var cachedOrder: (epoch: Int, order: [Int])?

  public init(
    model: any TrainableModel, state: TrainingState, train: [TokenizedExample],
    valid: [TokenizedExample], options: TrainingOptions, collator: Collator
  ) {
    self.model = model
    self.state = state
    parameters = state.parameters
    self.train = train
    self.valid = valid
    self.options = options
    plan = TrainingPlan(exampleCount: train.count, options: options)
    self.collator = collator
    optimizer = AdamW(parameters: parameters, options: options.optimizer)
  }

  /// Trainable values in all.
  public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

  /// Continues from a checkpoint: parameters, optimizer moments, step and log.
  /// - Throws: ``FlareError`` when the checkpoint's tensors do not match this run's.
  public func restore(_ checkpoint: TrainerCheckpoint) throws {
    guard checkpoint.step <= plan.totalSteps else {
      throw FlareError(
        "train", .invalidArgument,
        "the checkpoint is at step \(checkpoint.step), past this run's \(plan.totalSteps) steps")
    }
    let saved = Dictionary(
      checkpoint.parameters.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    guard saved.count == parameters.count else {
      throw FlareError(
        "train", .invalidArgument,
        "the checkpoint holds \(saved.count) tensors; this run trains \(parameters.count)")
    }
    for parameter in parameters {
      guard let copy = saved[parameter.name], copy.shape == parameter.shape else {
        throw FlareError(
          "train", .invalidArgument, "the checkpoint has no tensor of this name and shape",
          tensor: parameter.name)
      }
      parameter.values = copy.values
    }
    optimizer = try AdamW(
      parameters: parameters, options: options.optimizer, step: checkpoint.step,
      firstMoments: checkpoint.firstMoments, secondMoments: checkpoint.secondMoments)
    step = checkpoint.step
    log = checkpoint.log
  }

  /// The state to save now.
  public func checkpoint() -> TrainerCheckpoint {
    TrainerCheckpoint(
      step: step,
      parameters: parameters.map { PEFTTensor(name: $0.name, shape: $0.shape, values: $0.values) },
      firstMoments: optimizer.firstMoments, secondMoments: optimizer.secondMoments, log: log)
  }

  func order(epoch: Int) -> [Int] {
    if let cachedOrder, cachedOrder.epoch == epoch { return cachedOrder.order }
    let order = plan.order(epoch: epoch)
    cachedOrder = (epoch, order)
    return order
  }

  /// Runs one optimizer step and returns its log line (without validation).
  /// - Throws: ``TrainingStopped`` for a non-finite loss or gradient norm (nothing is
  ///   updated), or what the model's training pass throws.
  public func runStep() throws -> TrainingLogEntry {
    let started = monotonicSeconds()
    let epoch = step / plan.stepsPerEpoch
    let micro = plan.microBatches(step: step, order: order(epoch: epoch))
    let batches = micro.map { piece in
      (
        batch: collator.batch(piece.examples.map { train[$0] }), globalIndex: piece.globalIndex,
        expected: piece.examples.reduce(0) { $0 + train[$1].scoredCount },
        tokens: piece.examples.reduce(0) { $0 + train[$1].tokens.count }
      )
    }
    let total = batches.reduce(0) { $0 + $1.expected }
    for parameter in parameters { parameter.zeroGradient() }
    var lossSum = 0.0
    let scale = Float(1 / Double(max(total, 1)))
    for item in batches {
      var microState = state
      microState.modelDropout = options.modelDropout
      microState.seed = SplitMix64.derive(
        SplitMix64.derive(options.seed, Streams.dropout), UInt64(item.globalIndex))
      let result = try model.trainingPass(
        batch: item.batch, state: microState, gradientScale: scale)
      guard result.count == item.expected else {
        throw FlareError(
          "train", .invalidArgument,
          "the model scored \(result.count) \(options.task == .causalLM ? "positions" : "examples"); the micro-batch has \(item.expected)"
        )
      }
      lossSum += result.lossSum
    }
    let loss = lossSum / Double(max(total, 1))
    guard loss.isFinite else {
      throw TrainingStopped(reason: .nonFinite(quantity: "loss", value: loss), step: step + 1)
    }
    let norm =
      options.maxGradNorm > 0
      ? GradientClipping.clip(parameters, maxNorm: options.maxGradNorm)
      : GradientClipping.globalNorm(parameters)
    guard norm.isFinite else {
      throw TrainingStopped(
        reason: .nonFinite(quantity: "gradient norm", value: norm), step: step + 1)
    }
    let lr =
      options.learningRate
      * options.schedule.multiplier(
        step: step, warmup: options.warmupSteps, total: plan.totalSteps)
    optimizer.update(parameters, learningRate: lr)
    step += 1
    let entry = TrainingLogEntry(
      step: step, epoch: Double(step) / Double(plan.stepsPerEpoch), loss: loss,
      learningRate: lr, gradNorm: norm, tokens: batches.reduce(0) { $0 + $1.tokens },
      seconds: monotonicSeconds() - started)
    log.append(entry)
    return entry
  }

  /// Loss (and classification metrics) over the validation set, in micro-batches of the
  /// training batch size, without dropout or gradients.
  public func evaluate() throws -> ValidationMetrics {
    var lossSum = 0.0
    var count = 0
    var predictions: [Int] = []
    var truth: [Int] = []
    var start = 0
    while start < valid.count {
      let examples = Array(valid[start..<min(start + options.batchSize, valid.count)])
      start += options.batchSize
      let result = try model.evaluationPass(batch: collator.batch(examples), state: state)
      lossSum += result.lossSum
      count += result.count
      if options.task == .classification {
        predictions += result.predictions ?? []
        truth += examples.map { $0.classIndex ?? 0 }
      }
    }
    var metrics = ValidationMetrics(loss: lossSum / Double(max(count, 1)))
    if options.task == .classification, predictions.count == truth.count, !truth.isEmpty {
      metrics.accuracy = Self.accuracy(predictions: predictions, truth: truth)
      metrics.macroF1 = Self.macroF1(predictions: predictions, truth: truth)
    }
    return metrics
  }

  /// The share of predictions equal to the truth.
  public static func accuracy(predictions: [Int], truth: [Int]) -> Double {
    let right = zip(predictions, truth).reduce(0) { $0 + ($1.0 == $1.1 ? 1 : 0) }
    return Double(right) / Double(max(truth.count, 1))
  }

  /// Macro-averaged F1 over the classes that occur as a label or a prediction; a class's F1
  /// is `2TP / (2TP + FP + FN)`.
  public static func macroF1(predictions: [Int], truth: [Int]) -> Double {
    let classes = Set(predictions).union(truth).sorted()
    guard !classes.isEmpty else { return 0 }
    var sum = 0.0
    for c in classes {
      var tp = 0
      var fp = 0
      var fn = 0
      for (p, t) in zip(predictions, truth) {
        if p == c && t == c { tp += 1 } else if p == c { fp += 1 } else if t == c { fn += 1 }
      }
      let denominator = 2 * tp + fp + fn
      sum += denominator == 0 ? 0 : Double(2 * tp) / Double(denominator)
    }
    return sum / Double(classes.count)
  }

  /// Whether validation runs after step `step` (1-based).
  public func validatesAfter(step: Int) -> Bool {
    guard !valid.isEmpty else { return false }
    if step == plan.totalSteps { return true }
    if options.evalEvery > 0 { return step % options.evalEvery == 0 }
    return step % plan.stepsPerEpoch == 0
  }

  /// Trains until the last step, or until `shouldStop` returns true after a step.
  ///
  /// - Parameters:
  ///   - shouldStop: Polled after every step; `true` hands a checkpoint to `onCheckpoint`
  ///     and returns ``TrainingOutcome/interrupted(step:)``.
  ///   - onStep: Each step's log line (with validation when it ran).
  ///   - onCheckpoint: Called every ``TrainingOptions/saveEvery`` steps and on interruption.
  /// - Throws: ``TrainingStopped`` for a non-finite loss (the last checkpoint stays the last
  ///   good state), or what the model or `onCheckpoint` throw.
  public func run(
    shouldStop: () -> Bool = { false }, onStep: (TrainingLogEntry) -> Void = { _ in },
    onCheckpoint: (TrainerCheckpoint) throws -> Void = { _ in }
  ) throws -> TrainingOutcome {
    while step < plan.totalSteps {
      var entry = try runStep()
      if validatesAfter(step: step) {
        entry.validation = try evaluate()
        log[log.count - 1] = entry
      }
      onStep(entry)
      if step < plan.totalSteps {
        if shouldStop() {
          try onCheckpoint(checkpoint())
          return .interrupted(step: step)
        }
        if options.saveEvery > 0 && step % options.saveEvery == 0 {
          try onCheckpoint(checkpoint())
        }
      }
    }
    return .finished
  }
}

/// Everything a run needs to continue bit for bit: the step, the trainable values, AdamW's
/// moments and the log. The data order and every dropout mask follow from the seed and the
/// step (``TrainingPlan``), so no generator state is needed beyond the seed.
public struct TrainerCheckpoint: Sendable, Equatable {
  public var step: Int
  public var parameters: [PEFTTensor]
  public var firstMoments: [[Float]]
  public var secondMoments: [[Float]]
  public var log: [TrainingLogEntry]

  public init(
    step: Int, parameters: [PEFTTensor], firstMoments: [[Float]], secondMoments: [[Float]],
    log: [TrainingLogEntry]
  ) {
    self.step = step
    self.parameters = parameters
    self.firstMoments = firstMoments
    self.secondMoments = secondMoments
    self.log = log
  }
}
