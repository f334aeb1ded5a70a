import FlareAdapters
import FlareCLI
import FlareCore
import FlareModels
import FlareSafetensors
import FlareTokenizers
import FlareTrain
import Foundation
import Testing
import _FlareTestSupport

#if canImport(Glibc)
  import Glibc
#endif

/// `flare-train lora` end to end, in-process with the test double standing in for the model
/// (the real families plug in through ``TrainingModel/open(_:task:)``). Serialized: the
/// Ctrl-C flag is process-wide.
@Suite("flare-train lora", .serialized)
struct CommandTests {
  static let words = [
    "the", "cat", "dog", "sat", "on", "mat", "ran", "far", "good", "bad", "film", "very",
  ]

  /// A run folder with a word tokenizer and data files.
  struct Setup {
    let folder: String
    let tokenizer: Tokenizer
    var train: String { "\(folder)/train.jsonl" }
    var valid: String { "\(folder)/valid.jsonl" }
    var output: String { "\(folder)/out" }

    init(classification: Bool) throws {
      folder = makeTemporaryFolder()
      tokenizer = try Tokenizer.load(folder: try makeWordTokenizer(words: words, in: folder))
      var random = SplitMix64(seed: 17)
      func sentence() -> String {
        (0..<(2 + random.below(5))).map { _ in words[random.below(words.count)] }.joined(
          separator: " ")
      }
      var lines: [String] = []
      for i in 0..<21 {
        if classification {
          let label = ["neg", "pos", "neutral"][random.below(3)]
          let pair = i % 4 == 0 ? ", \"text_pair\": \"\(sentence())\"" : ""
          lines.append("{\"text\": \"\(sentence())\"\(pair), \"label\": \"\(label)\"}")
        } else if i % 3 == 0 {
          lines.append("{\"prompt\": \"\(sentence())\", \"completion\": \" \(sentence())\"}")
        } else {
          lines.append("{\"text\": \"\(sentence())\"}")
        }
      }
      writeText(lines.joined(separator: "\n") + "\n", to: train)
      writeText(lines.prefix(6).joined(separator: "\n") + "\n", to: valid)
    }

    /// The loader `flare-train` calls: the double, this tokenizer.
    func loader(classification: Bool, nanFromCall: Int? = nil, interruptAtCall: Int? = nil)
      -> TrainCommand.ModelLoader
    {
      { _, _ in
        let model = InterruptingModel(
          vocabulary: tokenizer.vocabularySize, dim: 6, classification: classification, seed: 5)
        model.nanFromCall = nanFromCall
        model.interruptAtCall = interruptAtCall
        return TrainingModel(
          model: model, tokenizer: tokenizer, architecture: classification ? "bert" : "llama",
          layout: classification ? .bert : .decoder, vocabularySize: tokenizer.vocabularySize,
          configDropout: 0.1, defaultTargets: [model.module], weightBytes: 1000,
          activationBytes: { b, t, _ in b * t * 100 })
      }
    }

    func arguments(_ extra: [String], classification: Bool) -> [String] {
      [
        "--model", "double", "--data", train, "--valid", valid, "--output", output, "--task",
        classification ? "classification" : "causal-lm", "--batch-size", "4", "--grad-accum",
        "2", "--epochs", "2", "--lr", "0.01", "--schedule", "cosine", "--warmup-steps", "1",
        "--dropout", "0.1", "--seed", "3", "--quiet",
      ] + extra
    }

    func run(
      _ extra: [String], classification: Bool, nanFromCall: Int? = nil,
      interruptAtCall: Int? = nil
    ) throws -> FlareCLI.ExitStatus {
      let parsed = try ArgumentParser.parse(
        arguments(extra, classification: classification), spec: TrainCommand.loraSpec)
      return try TrainCommand.runLoRA(
        parsed,
        loader: loader(
          classification: classification, nanFromCall: nanFromCall,
          interruptAtCall: interruptAtCall))
    }
  }

  /// Oracle: the output layout of `formats/training.md` and PEFT's folder format (read back
  /// with Flare's PEFT reader, whose format is checked against PEFT elsewhere).
  @Test(
    "a run writes the PEFT folder, the log, the report and the labels",
    arguments: [
      false, true,
    ])
  func output(classification: Bool) throws {
    let setup = try Setup(classification: classification)
    defer { removeTree(setup.folder) }
    // The plan is printed and nothing is written.
    #expect(try setup.run(["--dry-run", "--json"], classification: classification) == .success)
    #expect(!fileExists(setup.output))
    // --threads reaches the model's passes (Llama runs once got one thread whatever was asked).
    var model: (any TrainableModel)?
    let planned = try TrainCommand.runLoRA(
      ArgumentParser.parse(
        setup.arguments(["--dry-run", "--threads", "2"], classification: classification),
        spec: TrainCommand.loraSpec),
      loader: { path, task in
        let loaded = try setup.loader(classification: classification)(path, task)
        model = loaded.model
        return loaded
      })
    #expect(planned == .success)
    #expect(model?.trainingThreads == 2)
    // Gradient checkpointing is the Llama passes' (an encoder refuses it, as a usage error).
    if classification {
      #expect(throws: UsageError.self) {
        try setup.run(["--dry-run", "--gradient-checkpointing"], classification: true)
      }
    }
    #expect(try setup.run([], classification: classification) == .success)
    var expected = [
      "adapter_config.json", "adapter_model.safetensors", "training_log.jsonl",
      "training_report.svg",
    ]
    if classification { expected.append("flare_labels.json") }
    #expect(folderContents(setup.output) == expected.sorted())
    let adapter = try PEFTAdapter(folder: setup.output)
    #expect(adapter.config.taskType == (classification ? "SEQ_CLS" : "CAUSAL_LM"))
    #expect(adapter.config.r == 8)
    #expect(adapter.modules.map(\.path) == [classification ? "encoder.proj" : "lm.proj"])
    #expect(adapter.modules.first?.scaling == 2)
    #expect(adapter.replacements.count == (classification ? 2 : 0))
    // 21 examples, batch 4 → 6 micro-batches, accumulation 2 → 3 steps per epoch, 2 epochs.
    let log = try String(
      decoding: fileBytes("\(setup.output)/training_log.jsonl"), as: UTF8.self
    ).split(separator: "\n").map { try JSONParser.parse(Array($0.utf8)) }
    #expect(log.map { $0["step"]?.intValue } == [1, 2, 3, 4, 5, 6])
    #expect(log.map { $0["val_loss"] != nil } == [false, false, true, false, false, true])
    #expect(
      log.allSatisfy { $0["lr"] != nil && $0["grad_norm"] != nil && $0["tokens_per_second"] != nil }
    )
    #expect(log[0]["lr"]?.doubleValue == 0)
    #expect((log[5]["val_accuracy"] != nil) == classification)
    #expect((log[5]["val_macro_f1"] != nil) == classification)
    let svg = String(decoding: fileBytes("\(setup.output)/training_report.svg"), as: UTF8.self)
    #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
    #expect(svg.contains("validation loss"))
    #expect(svg.components(separatedBy: "<polyline").count == 5)
    if classification {
      let labels = try loadLabels("\(setup.output)/flare_labels.json")
      #expect(labels == ["neg", "neutral", "pos"])
    }
    // The output exists now: a second run needs --force.
    #expect(throws: FlareError("io", .outputExists, "")) {
      try setup.run([], classification: classification)
    }
    #expect(try setup.run(["--force"], classification: classification) == .success)
  }

  func loadLabels(_ path: String) throws -> [String] {
    let json = try JSONParser.parse(fileBytes(path))
    return (json["labels"]?.arrayValue ?? []).compactMap(\.stringValue)
  }

  /// Ctrl-C during a step (the flag set from inside the model, as the handler would) saves a
  /// checkpoint after that step and exits 130; `--resume` finishes the run; the adapter and
  /// the log's losses equal an uninterrupted run's bit for bit. Oracle: the uninterrupted run.
  @Test("Ctrl-C saves a checkpoint, exits 130, and --resume continues bit for bit")
  func interruptAndResume() throws {
    let straight = try Setup(classification: false)
    defer { removeTree(straight.folder) }
    #expect(try straight.run([], classification: false) == .success)

    let setup = try Setup(classification: false)
    defer { removeTree(setup.folder) }
    // Micro-batch calls 0–1 are step 1, 2–3 step 2: a Ctrl-C during step 2.
    #expect(try setup.run([], classification: false, interruptAtCall: 3) == .interrupted)
    #expect(folderContents(setup.output) == ["checkpoint-2"])
    #expect(
      folderContents("\(setup.output)/checkpoint-2") == [
        "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
        "trainer_state.json", "training_log.jsonl",
      ])
    _ = try PEFTAdapter(folder: "\(setup.output)/checkpoint-2")
    // Other settings are refused.
    do {
      _ = try setup.run(["--resume", setup.output, "--lr", "0.02"], classification: false)
      Issue.record("a resume with another learning rate was accepted")
    } catch let error as FlareError {
      #expect(error.message.contains("lr differ"))
    }
    #expect(try setup.run(["--resume", setup.output], classification: false) == .success)
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
      #expect(
        fileBytes("\(setup.output)/\(file)") == fileBytes("\(straight.output)/\(file)"), "\(file)")
    }
    let losses = { (path: String) -> [String] in
      String(decoding: fileBytes(path), as: UTF8.self).split(separator: "\n").map {
        JSONWriter.compact((try? JSONParser.parse(Array($0.utf8)))?["loss"] ?? .null)
      }
    }
    #expect(
      losses("\(setup.output)/training_log.jsonl")
        == losses("\(straight.output)/training_log.jsonl"))
  }

  /// A NaN loss stops with a clear error; the last good checkpoint stays, nothing else is
  /// written.
  @Test("a NaN loss stops the run and keeps the last good checkpoint")
  func nanKeepsCheckpoint() throws {
    let setup = try Setup(classification: false)
    defer { removeTree(setup.folder) }
    do {
      _ = try setup.run(["--save-every", "2"], classification: false, nanFromCall: 8)
      Issue.record("a NaN loss did not stop the run")
    } catch let error as FlareError {
      #expect(error.message.contains("step 5: the loss is nan"))
      #expect(error.message.contains("checkpoint-4 (step 4)"))
    }
    #expect(folderContents(setup.output) == ["checkpoint-4"])
    // Without any checkpoint, nothing is left at all.
    let bare = try Setup(classification: false)
    defer { removeTree(bare.folder) }
    #expect(throws: FlareError.self) {
      try bare.run([], classification: false, nanFromCall: 0)
    }
    #expect(!fileExists(bare.output))
  }

  /// `--init-adapter` starts from a PEFT folder (a first run's adapter, LoRA and head): a
  /// one-step second run whose only step has learning rate 0 (warm-up) ends with exactly the
  /// values it started from. Oracle: the first run's file.
  @Test("--init-adapter starts from a PEFT folder, LoRA and head")
  func initAdapter() throws {
    let setup = try Setup(classification: true)
    defer { removeTree(setup.folder) }
    #expect(try setup.run([], classification: true) == .success)
    #expect(throws: UsageError.self) {
      try setup.run(
        ["--init-adapter", setup.output, "--rank", "4", "--output", "\(setup.folder)/b"],
        classification: true)
    }
    let second = "\(setup.folder)/second"
    #expect(
      try setup.run(
        [
          "--init-adapter", setup.output, "--epochs", "1", "--batch-size", "32", "--grad-accum",
          "1", "--output", second,
        ],
        classification: true) == .success)
    let before = try SafetensorsFile(path: "\(setup.output)/adapter_model.safetensors")
    let after = try SafetensorsFile(path: "\(second)/adapter_model.safetensors")
    #expect(before.views.map(\.name) == after.views.map(\.name))
    #expect(before.views.count == 4)
    for (a, b) in zip(before.views, after.views) {
      #expect(a.floats().map(\.bitPattern) == b.floats().map(\.bitPattern), "\(a.name)")
    }
    let log = String(decoding: fileBytes("\(second)/training_log.jsonl"), as: UTF8.self)
    #expect(log.hasPrefix("{\"step\":1,"))
    #expect(log.contains("\"lr\":0.0"))
  }

  /// Oracle: the argument-parser conventions (exit 64, the option named, the rule stated),
  /// through the built tool.
  @Test(
    "bad option values and combinations exit 64",
    arguments: [
      (["--rank", "0"], "'--rank <r>': must be at least 1"),
      (["--lr", "-1"], "'--lr <x>': must be positive"),
      (["--dropout", "1"], "'--dropout <p>': must be in [0, 1)"),
      (["--task", "regression"], "expected one of 'causal-lm', 'classification'"),
      (["--schedule", "cos"], "expected one of 'constant', 'linear', 'cosine'"),
      (["--batch-size", "x"], "expected an integer"),
      (["--epochs", "2", "--max-steps", "3"], "either '--epochs' or '--max-steps'"),
      (["--target-modules", "q_proj,,v_proj"], "comma-separated list"),
      (["--target-modules", "all-linear,q_proj"], "cannot be combined"),
      (["--seed", "-3"], "expected a non-negative integer"),
    ])
  func usageErrors(extra: [String], message: String) throws {
    let result = try runTool(
      "flare-train",
      ["lora", "--model", "m", "--data", "d.jsonl", "--output", "o"] + extra)
    #expect(result.status == 64, "\(extra)")
    #expect(result.stderr.contains(message), "\(result.stderr)")
    #expect(result.stderr.contains("Usage: flare-train lora --model <path>"))
  }

  /// Every option of the one list the parser and `--help` use is documented in the man page.
  @Test("the man page documents every option")
  func manPage() {
    let page = String(decoding: fileBytes("\(packageRoot)/man/flare-train.1"), as: UTF8.self)
    let items = page.split(separator: "\n").filter { $0.hasPrefix(".It ") }
    for option in TrainCommand.LoRAOptions.specs + TrainCommand.FLAREOptions.specs {
      // mdoc writes `--model` as `Fl -model`.
      let mdoc = "Fl \(option.name.dropFirst())"
      #expect(items.contains { $0.contains(mdoc + " ") || $0.hasSuffix(mdoc) }, "\(option.name)")
    }
  }

  @Test("the tool's help, subcommands and refusals")
  func tool() throws {
    let help = try runTool("flare-train", ["lora", "--help"])
    #expect(help.status == 0)
    #expect(help.stdout.contains("--rank <r>              LoRA rank. (default: 8)"))
    #expect(help.stdout.contains("--schedule <constant|linear|cosine>"))
    #expect(try runTool("flare-train", []).status == 64)
    let typo = try runTool("flare-train", ["lroa"])
    #expect(typo.status == 64)
    #expect(typo.stderr.contains("did you mean 'lora'?"))
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    writeText("{\"text\": \"hello\"}\n", to: "\(folder)/t.jsonl")
    let gpt2 = try runTool(
      "flare-train",
      [
        "lora", "--model", fixturePath("peft/base-gpt2"), "--data", "\(folder)/t.jsonl",
        "--output", "\(folder)/o",
      ])
    #expect(gpt2.status == 1)
    #expect(gpt2.stderr.contains("this model is 'gpt2'"))
    let bad = try runTool(
      "flare-train",
      ["lora", "--model", "m", "--data", "\(folder)/missing.jsonl", "--output", "\(folder)/o"])
    #expect(bad.status == 1)
    #expect(bad.stderr.contains("\(folder)/missing.jsonl: data error:"))
    #expect(!fileExists("\(folder)/o"))
  }

  /// The first SIGINT only sets the flag (the process goes on); the handler re-arms the
  /// previous one for a second Ctrl-C.
  @Test("the first SIGINT sets the flag instead of stopping the process")
  func signalFlag() {
    InterruptRequest.install()
    #expect(!InterruptRequest.isRequested)
    // The test runner's threads may have SIGINT blocked; let this thread take it.
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    var old = sigset_t()
    pthread_sigmask(SIG_UNBLOCK, &signals, &old)
    defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
    raise(SIGINT)
    #expect(InterruptRequest.isRequested)
    InterruptRequest.install()
    #expect(!InterruptRequest.isRequested)
    // Leave SIGINT routed to the flag (a second raise here would reach the default handler).
  }
}

/// The test double that also raises the Ctrl-C flag at a given training-pass call.
final class InterruptingModel: LinearSoftmaxModel, @unchecked Sendable {
  var interruptAtCall: Int?

  override func trainingPass(batch: TrainingBatch, state: TrainingState, gradientScale: Float)
    throws -> TrainingPassResult
  {
    if let interruptAtCall, trainingCalls == interruptAtCall { InterruptRequest.request() }
    return try super.trainingPass(batch: batch, state: state, gradientScale: gradientScale)
  }
}
