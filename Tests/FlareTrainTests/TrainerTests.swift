import FlareAdapters
import FlareCore
import FlareModels
import FlareTrain
import Testing
import _FlareTestSupport

/// The trainer over the test double ``LinearSoftmaxModel``.
@Suite("trainer")
struct TrainerTests {
  static let golden: JSONValue? = try? loadFixtureJSON("training/trainer-golden.json")

  /// A trainer for a golden case: the double with the case's frozen weights, LoRA (and head)
  /// from the case's initial values.
  static func goldenTrainer(_ case_: JSONValue) throws -> (Trainer, LinearSoftmaxModel) {
    let golden = try #require(Self.golden)
    let vocabulary = try #require(golden["vocab"]?.intValue)
    let dim = try #require(golden["dim"]?.intValue)
    let rank = try #require(golden["rank"]?.intValue)
    let classes = try #require(golden["classes"]?.intValue)
    let task = try #require(TrainingTask(rawValue: case_["task"]?.stringValue ?? ""))
    let config = try #require(case_["config"])
    let classification = task == .classification
    let model = LinearSoftmaxModel(
      vocabulary: vocabulary, dim: dim, embedding: floats(case_["frozen"]?["E"]),
      weight: floats(case_["frozen"]?["W"]), classification: classification)
    let module = model.module
    let out = model.outFeatures
    let lora = TrainableLoRA(
      module: module,
      a: TrainableTensor(
        name: LoRAFactory.key(module, "lora_A"), shape: [rank, dim],
        values: floats(case_["init"]?["A"])),
      b: TrainableTensor(
        name: LoRAFactory.key(module, "lora_B"), shape: [out, rank],
        values: floats(case_["init"]?["B"])),
      scale: Float((config["alpha"]?.doubleValue ?? 0) / Double(rank)), dropout: 0)
    var heads: [String: TrainableTensor] = [:]
    if classification {
      heads["base_model.model.classifier.weight"] = TrainableTensor(
        name: "base_model.model.classifier.weight", shape: [classes, dim],
        values: floats(case_["init"]?["H"]))
      heads["base_model.model.classifier.bias"] = TrainableTensor(
        name: "base_model.model.classifier.bias", shape: [classes],
        values: floats(case_["init"]?["c"]))
    }
    var options = TrainingOptions(task: task)
    options.batchSize = try #require(config["batch"]?.intValue)
    options.gradientAccumulation = try #require(config["accum"]?.intValue)
    options.epochs = try #require(config["epochs"]?.intValue)
    options.learningRate = try #require(config["lr"]?.doubleValue)
    options.schedule = try #require(
      LearningRateSchedule(rawValue: config["schedule"]?.stringValue ?? ""))
    options.warmupSteps = try #require(config["warmup"]?.intValue)
    options.optimizer.weightDecay = try #require(config["weight_decay"]?.doubleValue)
    options.maxGradNorm = try #require(config["max_grad_norm"]?.doubleValue)
    options.shuffle = false
    let trainer = Trainer(
      model: model, state: TrainingState(loras: [module: lora], heads: heads),
      train: goldenExamples(case_["examples"]), valid: [], options: options,
      collator: Collator(padID: 0, side: .right))
    return (trainer, model)
  }

  static var goldenTasks: [String] {
    (golden?["cases"]?.arrayValue ?? []).compactMap { $0["task"]?.stringValue }
  }

  /// Oracle: PyTorch autograd on the same model with transformers' Trainer semantics
  /// (`Fixtures/training/make_trainer_golden.py`): loss normalised over the label tokens (or
  /// examples) of each optimizer step's micro-batches, a shorter last step per epoch,
  /// clipping, AdamW with decay on weights only, warm-up + cosine/linear decay. Tolerance:
  /// 1e-5 relative on each step's loss and gradient norm, 1e-12 on the learning rate, 1e-5
  /// relative (Frobenius) on every final tensor.
  @Test(
    "6 steps with accumulation match PyTorch + the transformers Trainer", arguments: goldenTasks)
  func trajectory(task: String) throws {
    let case_ = try #require(
      Self.golden?["cases"]?.arrayValue?.first { $0["task"]?.stringValue == task })
    let (trainer, _) = try Self.goldenTrainer(case_)
    #expect(trainer.plan.stepsPerEpoch == case_["steps_per_epoch"]?.intValue)
    #expect(trainer.plan.totalSteps == case_["total_steps"]?.intValue)
    var entries: [TrainingLogEntry] = []
    #expect(try trainer.run(onStep: { entries.append($0) }) == .finished)
    let steps = try #require(case_["steps"]?.arrayValue)
    #expect(entries.count == steps.count)
    for (entry, want) in zip(entries, steps) {
      let loss = try #require(want["loss"]?.doubleValue)
      let norm = try #require(want["grad_norm"]?.doubleValue)
      let lr = try #require(want["lr"]?.doubleValue)
      #expect(abs(entry.loss - loss) <= 1e-5 * loss, "step \(entry.step): \(entry.loss) vs \(loss)")
      #expect(abs(entry.gradNorm - norm) <= 1e-5 * norm, "step \(entry.step) norm")
      #expect(abs(entry.learningRate - lr) <= 1e-12, "step \(entry.step) lr")
    }
    let final = try #require(case_["final"])
    let byKey: [String: String] = [
      "A": "lora_A.weight", "B": "lora_B.weight", "H": "classifier.weight",
      "c": "classifier.bias",
    ]
    for (key, suffix) in byKey {
      guard let want = final[key] else { continue }
      let tensor = try #require(trainer.parameters.first { $0.name.hasSuffix(suffix) })
      let error = relativeError(tensor.values, floats(want))
      #expect(error <= 1e-5, "\(task) \(key): \(error)")
    }
  }

  /// A run of 2N steps equals N steps, a checkpoint written to disk and read back, and N more
  /// steps, bit for bit — with shuffling and LoRA dropout on, so the data order and every mask
  /// must be reproduced from the seed and the step. Oracle: the uninterrupted run.
  @Test("stop, checkpoint, resume gives the same adapter bit for bit", arguments: [false, true])
  func resume(classification: Bool) throws {
    func makeTrainer() throws -> (Trainer, LinearSoftmaxModel) {
      let model = LinearSoftmaxModel(
        vocabulary: 13, dim: 5, classification: classification, seed: 7)
      let settings = LoRASettings(
        targets: [model.module], rank: 3, alpha: 6, rslora: false, dropout: 0.2)
      let loras = try LoRAFactory.create(
        model: model, modules: [model.module], settings: settings, seed: 11)
      // B starts at zero (PEFT's init), so A gets no gradient at the first step; give B values.
      var random = SplitMix64(seed: 3)
      for lora in loras.values {
        lora.b.values = lora.b.values.map { _ in random.normal(std: 0.1) }
      }
      var heads: [String: TrainableTensor] = [:]
      if classification {
        var headRandom = SplitMix64(seed: 5)
        for tensor in try model.makeClassificationHead(classes: 3, random: &headRandom) {
          heads[tensor.name] = tensor
        }
      }
      var examples: [TokenizedExample] = []
      var data = SplitMix64(seed: 99)
      for line in 1...23 {
        let tokens = (0..<(2 + data.below(6))).map { _ in data.below(13) }
        examples.append(
          TokenizedExample(
            line: line, tokens: tokens, tokenTypes: nil,
            labels: classification ? nil : tokens, classIndex: classification ? data.below(3) : nil,
            truncated: false))
      }
      var options = TrainingOptions(task: classification ? .classification : .causalLM)
      options.batchSize = 4
      options.gradientAccumulation = 2
      options.epochs = 3
      options.learningRate = 0.02
      options.schedule = .cosine
      options.warmupSteps = 2
      options.optimizer.weightDecay = 0.01
      options.maxGradNorm = 0.3
      options.seed = 1234
      return (
        Trainer(
          model: model, state: TrainingState(loras: loras, heads: heads), train: examples,
          valid: Array(examples.prefix(5)), options: options,
          collator: Collator(padID: 0, side: .left)),
        model
      )
    }
    let (straight, _) = try makeTrainer()
    #expect(try straight.run() == .finished)
    let total = straight.plan.totalSteps
    #expect(total == 9)

    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let (first, _) = try makeTrainer()
    let stopAt = 4
    let config = PEFTLoRAConfig(r: 3, loraAlpha: 6, targetModules: ["proj"])
    let settings = JSONValue.object([("seed", .integer(1234))])
    let outcome = try first.run(
      shouldStop: { first.step == stopAt },
      onCheckpoint: {
        try CheckpointStore.write(
          $0, into: folder, adapterConfig: config, settings: settings, plan: first.plan)
      })
    #expect(outcome == .interrupted(step: stopAt))
    let saved = try CheckpointStore.locate(folder)
    #expect(saved == "\(folder)/checkpoint-\(stopAt)")
    let (checkpoint, readSettings) = try CheckpointStore.read(saved)
    #expect(readSettings == settings)
    #expect(checkpoint == first.checkpoint())

    let (second, _) = try makeTrainer()
    try second.restore(checkpoint)
    #expect(try second.run() == .finished)
    #expect(second.step == total)
    for (a, b) in zip(second.parameters, straight.parameters) {
      #expect(a.values.map(\.bitPattern) == b.values.map(\.bitPattern), "\(a.name)")
    }
    #expect(second.log.map(\.loss) == straight.log.map(\.loss))
    #expect(second.log.map(\.gradNorm) == straight.log.map(\.gradNorm))
    #expect(
      second.log.compactMap(\.validation) == straight.log.compactMap(\.validation))
    #expect(
      second.optimizer.firstMoments.map { $0.map(\.bitPattern) }
        == straight.optimizer.firstMoments.map { $0.map(\.bitPattern) })
  }

  /// A NaN loss stops the run before the step is applied: the parameters are those after the
  /// last good step. Oracle: a run of exactly that many steps.
  @Test("a NaN loss stops the run and leaves the last good state")
  func nanStops() throws {
    let golden = try #require(Self.golden?["cases"]?.arrayValue?.first)
    let (reference, _) = try Self.goldenTrainer(golden)
    _ = try reference.runStep()
    _ = try reference.runStep()
    let (trainer, model) = try Self.goldenTrainer(golden)
    // Steps hold 2 micro-batches: calls 0–3 are steps 1–2; call 4 starts step 3.
    model.nanFromCall = 4
    #expect(throws: TrainingStopped.self) { try trainer.run() }
    do {
      _ = try trainer.runStep()
    } catch let stopped as TrainingStopped {
      #expect(stopped.step == 3)
      if case .nonFinite(let quantity, let value) = stopped.reason {
        #expect(quantity == "loss")
        #expect(value.isNaN)
      }
      #expect("\(stopped)".contains("step 3: the loss is nan"))
    }
    #expect(trainer.step == 2)
    for (a, b) in zip(trainer.parameters, reference.parameters) {
      #expect(a.values == b.values, "\(a.name)")
    }
  }

  /// Oracle: the definitions (transformers' step count `⌈⌈n/b⌉/k⌉`; a permutation per epoch).
  @Test("the plan covers every example once per epoch in a seeded order")
  func plan() {
    var options = TrainingOptions(task: .causalLM)
    options.batchSize = 3
    options.gradientAccumulation = 2
    options.maxSteps = 7
    options.seed = 42
    let plan = TrainingPlan(exampleCount: 10, options: options)
    #expect(plan.microBatchesPerEpoch == 4)
    #expect(plan.stepsPerEpoch == 2)
    #expect(plan.totalSteps == 7)
    #expect(plan.epochs == 4)
    for epoch in 0..<4 {
      let order = plan.order(epoch: epoch)
      #expect(order.sorted() == Array(0..<10))
      let covered = (0..<plan.stepsPerEpoch).flatMap { step in
        plan.microBatches(step: epoch * plan.stepsPerEpoch + step, order: order).flatMap(
          \.examples)
      }
      #expect(covered == order)
    }
    #expect(plan.order(epoch: 0) != plan.order(epoch: 1))
    #expect(
      plan.order(epoch: 2) == TrainingPlan(exampleCount: 10, options: options).order(epoch: 2))
    options.shuffle = false
    #expect(TrainingPlan(exampleCount: 10, options: options).order(epoch: 3) == Array(0..<10))
  }

  /// Oracle: accuracy and macro-F1 computed by hand from the confusion counts (scikit-learn's
  /// `f1_score(average="macro")` definition: classes seen as a label or a prediction).
  @Test("accuracy and macro-F1 follow scikit-learn's definitions")
  func metrics() {
    let truth = [0, 0, 1, 1, 2, 2]
    let predictions = [0, 1, 1, 1, 0, 3]
    #expect(Trainer.accuracy(predictions: predictions, truth: truth) == 0.5)
    // Class 0: TP 1, FP 1, FN 1 → 0.5; class 1: TP 2, FP 1, FN 0 → 0.8; class 2: 0; class 3: 0.
    #expect(abs(Trainer.macroF1(predictions: predictions, truth: truth) - 1.3 / 4) < 1e-12)
  }
}
