import FlareCore
import FlareModels
import FlareSafetensors
import FlareTokenizers
import FlareTrain
import Foundation
import Testing
import _FlareTestSupport

/// `flare-train lora` and `flare-eval classify` on the real all-MiniLM-L6-v2, through the built
/// tools, against `Fixtures/training/make_encoder_trajectory.py` (PyTorch + PEFT): the data and
/// the starting adapter are committed in `Fixtures/training/encoder-run/`.
@Suite("flare-train and flare-eval classify on all-MiniLM-L6-v2")
struct EncoderRunTests {
  static let folder = fixturePath("training/encoder-run")
  static var data: String { "\(folder)/train.jsonl" }
  static var test: String { "\(folder)/test.jsonl" }

  /// The MiniLM folder, or `nil` when it is missing and `FLARE_OFFLINE=1` (skipped).
  static func model() throws -> String? {
    let exists = fileExists("\(miniLMFolder)/config.json")
    if offline && !exists { return nil }
    try #require(exists, "\(miniLMFolder) is missing: run scripts/fetch-models.sh (make models)")
    return miniLMFolder
  }

  static func golden() throws -> JSONValue {
    try loadFixtureJSON("training/encoder-run/trajectory.json")
  }

  /// The golden run's `flare-train` command line for `model` writing `output`.
  static func trajectoryArguments(_ golden: JSONValue, model: String, output: String) throws
    -> [String]
  {
    try #require(golden["flare_train_arguments"]?.arrayValue).map { item in
      let text = item.stringValue ?? ""
      return
        text
        .replacing("{model}", with: model).replacing("{data}", with: data)
        .replacing("{init}", with: "\(folder)/init").replacing("{output}", with: output)
    }
  }

  /// Runs a tool and requires exit status 0.
  @discardableResult
  static func run(_ tool: String, _ arguments: [String]) throws -> ToolResult {
    let result = try runTool(tool, arguments)
    try #require(
      result.status == 0, "\(tool) exited \(result.status): \(result.stderr)")
    return result
  }

  static func tensors(_ path: String) throws -> [String: [Float]] {
    let file = try SafetensorsFile(path: path)
    return Dictionary(uniqueKeysWithValues: file.views.map { ($0.name, $0.floats()) })
  }

  /// Oracle: transformers' tokenizer (the token ids the golden run trained on). flare-train
  /// reads the same file with ``JSONLReader`` and ``ExampleEncoder``; the trajectory below
  /// only means something if the examples are the same.
  @Test("flare-train's examples are transformers' token ids")
  func tokens() throws {
    guard let model = try Self.model() else { return }
    let golden = try Self.golden()
    let tokenizer = try WeightSource(path: model).tokenizer()
    let encoder = ExampleEncoder(
      tokenizer: tokenizer, layout: .bert, maxLength: 32, vocabularySize: nil)
    let labels = LabelSet(
      labels: try #require(golden["labels"]?.arrayValue).map { .string($0.stringValue ?? "") })
    for (file, key) in [(Self.data, "train"), (Self.test, "test")] {
      let raw = try JSONLReader.read(path: file, task: .classification)
      #expect(try LabelSet(training: raw, path: file).labels == labels.labels || key == "test")
      let encoded = try encoder.encode(raw, path: file, labels: labels)
      let expected = try #require(golden[key]?.arrayValue)
      try #require(encoded.examples.count == expected.count)
      for (example, reference) in zip(encoded.examples, expected) {
        #expect(example.tokens == integers(reference["input_ids"]), "\(key) line \(example.line)")
        let types = example.tokenTypes ?? [Int](repeating: 0, count: example.tokens.count)
        #expect(types == integers(reference["token_type_ids"]), "\(key) line \(example.line)")
        #expect(example.classIndex == reference["label"]?.intValue)
      }
      if key == "train" { #expect(encoded.truncatedCount == 1) }
    }
  }

  /// Oracle: PyTorch + PEFT, the same 20 optimizer steps from the same `--init-adapter`
  /// (AdamW, warm-up + cosine, clipping on 10 of the 20 steps, accumulation of 2 with a
  /// shorter last step per epoch, weight decay on the weights). Tolerances: per-step loss 1e-4
  /// relative, final tensors 1e-3 relative Frobenius (the pooler weight through its sketch),
  /// as the golden records them. Then PEFT's logits with the adapter flare-train wrote (the
  /// script ran the same command): `flare-eval classify` within 1e-3 absolute, and the same
  /// predictions, accuracy, macro-F1 (scikit-learn) and confusion matrix.
  @Test("20 steps match PyTorch + PEFT; PEFT, flare-eval classify and the merged model agree")
  func trajectory() throws {
    guard let model = try Self.model() else { return }
    let golden = try Self.golden()
    let tolerance = try #require(golden["tolerance"])
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let output = "\(scratch)/out"
    try Self.run(
      "flare-train",
      try Self.trajectoryArguments(golden, model: model, output: output) + ["--threads", "2"])

    // Per step: loss, learning rate, gradient norm before clipping.
    let log = try String(contentsOfFile: "\(output)/training_log.jsonl", encoding: .utf8)
      .split(separator: "\n").map { try JSONParser.parse(Array($0.utf8)) }
    let steps = try #require(golden["steps"]?.arrayValue)
    try #require(log.count == steps.count)
    let lossTolerance = try #require(tolerance["loss_relative"]?.doubleValue)
    var worstLoss = 0.0
    var worstNorm = 0.0
    for (index, (entry, reference)) in zip(log, steps).enumerated() {
      let loss = try #require(entry["loss"]?.doubleValue)
      let expected = try #require(reference["loss"]?.doubleValue)
      let error = abs(loss - expected) / abs(expected)
      worstLoss = max(worstLoss, error)
      #expect(error <= lossTolerance, "step \(index + 1): loss \(loss), PyTorch \(expected)")
      let lr = try #require(entry["lr"]?.doubleValue)
      let expectedLR = try #require(reference["lr"]?.doubleValue)
      #expect(abs(lr - expectedLR) <= 1e-12 * max(expectedLR, 1e-12), "step \(index + 1)")
      let norm = try #require(entry["grad_norm"]?.doubleValue)
      let expectedNorm = try #require(reference["grad_norm"]?.doubleValue)
      worstNorm = max(worstNorm, abs(norm - expectedNorm) / expectedNorm)
      #expect(abs(norm - expectedNorm) <= lossTolerance * expectedNorm, "step \(index + 1)")
    }

    // Final tensors.
    let finalTolerance = try #require(tolerance["final_tensor_relative_frobenius"]?.doubleValue)
    let trained = try Self.tensors("\(output)/adapter_model.safetensors")
    let reference = try SafetensorsFile(path: "\(Self.folder)/trajectory.safetensors")
    let names = try #require(golden["decays"]?.objectMembers).map(\.0)
    #expect(Set(trained.keys) == Set(names), "flare-train saved other tensors than PEFT trains")
    let projection = try reference.view("sketch.projection")
    let columns = projection.shape[1]
    let r = projection.floats()
    var worstTensor = (name: "", error: 0.0)
    for name in names.sorted() {
      let values = try #require(trained[name], "\(name) is missing")
      var got = values
      var expected: [Float]
      if let sketch = reference.info("sketch.\(name)") {
        expected = reference.view(sketch).floats()
        // final · R, rows of the [out, in] weight against R's [in, columns].
        let width = r.count / columns
        let rows = values.count / width
        got = [Float](repeating: 0, count: rows * columns)
        for i in 0..<rows {
          for j in 0..<columns {
            var sum = 0.0
            for k in 0..<width { sum += Double(values[i * width + k]) * Double(r[k * columns + j]) }
            got[i * columns + j] = Float(sum)
          }
        }
      } else {
        expected = try reference.view("final.\(name)").floats()
      }
      let error = relativeError(got, expected)
      if error > worstTensor.error { worstTensor = (name, error) }
      #expect(error <= finalTolerance, "\(name): relative Frobenius error \(error)")
    }
    print(
      "MiniLM 20-step trajectory vs PyTorch + PEFT: loss worst \(worstLoss), grad norm worst \(worstNorm), final tensors worst \(worstTensor.error) (\(worstTensor.name))"
    )

    // PEFT's logits with this adapter (the script evaluated the adapter its flare-train run
    // wrote; the CRC tells whether the bytes are the same here).
    let bytes = fileBytes("\(output)/adapter_model.safetensors")
    let sameBytes = golden["flare_adapter_crc32"]?.intValue == Int(CRC32.checksum(bytes))
    let oracle = try #require(golden["test_peft_with_flare_adapter"])
    let report = try Self.classify(model: model, adapter: output)
    let worstLogit = try Self.compareLogits(report, oracle, tolerance: tolerance)
    #expect(Self.matrix(report["confusion"]) == Self.matrix(oracle["confusion"]))
    for (key, limit) in [("accuracy", 1e-12), ("macro_f1", 1e-12), ("loss", 1e-5)] {
      let got = try #require(report[key]?.doubleValue)
      let expected = try #require(oracle[key]?.doubleValue)
      #expect(abs(got - expected) <= limit, "\(key): \(got), scikit-learn/PEFT \(expected)")
    }
    #expect(try #require(report["labels"]?.arrayValue) == golden["labels"]?.arrayValue)
    print(
      "flare-eval classify vs PEFT with flare-train's adapter (\(sameBytes ? "the same bytes the script evaluated" : "bytes differ from the script's run")): logits worst absolute difference \(worstLogit)"
    )
    try Self.checkMerge(model: model, adapter: output, golden: golden, scratch: scratch)
  }

  /// `flare-merge --verify` bakes the trained adapter into the MiniLM checkpoint: LoRA into
  /// the query and value weights, the saved pooler over the checkpoint's, the classifier added
  /// with `config.json` made a `BertForSequenceClassification` with the adapter's labels.
  /// Oracles: its own checks (stored tensors = base + ΔW; merged vs base + adapter forward,
  /// bounded at 1e-3 for F32), and transformers alone loading the folder the script's run of
  /// the same command wrote: `flare-eval classify` on the merged folder, without an adapter,
  /// gives transformers' logits within 1e-3 and the same predictions.
  static func checkMerge(model: String, adapter: String, golden: JSONValue, scratch: String)
    throws
  {
    let merged = "\(scratch)/merged"
    let arguments = try #require(golden["flare_merge_arguments"]?.arrayValue).map {
      ($0.stringValue ?? "").replacing("{model}", with: model)
        .replacing("{adapter}", with: adapter).replacing("{output}", with: merged)
    }
    let report = try JSONParser.parse(Array(try run("flare-merge", arguments).stdout.utf8))
    #expect(report["verified"]?.doubleValue == 0, "stored tensors differ from base + ΔW")
    let forward = try #require(report["forward"])
    #expect(forward["checked"] == .bool(true) && forward["bounded"] == .bool(true))
    #expect(forward["compared"] == .string("logits"))
    let difference = try #require(forward["max_abs_diff"]?.doubleValue)
    #expect(difference <= 1e-3)
    let kinds = try #require(report["tensors"]?.arrayValue).compactMap { $0["kind"]?.stringValue }
    #expect(kinds.filter { $0 == "lora" }.count == 12)
    #expect(kinds.filter { $0 == "replace" }.count == 4)
    let oracle = try #require(golden["test_transformers_with_merged"])
    let config = try JSONParser.parse(try readSmallFile("\(merged)/config.json"))
    #expect(config["architectures"] == oracle["architectures"])
    #expect(config["id2label"] == oracle["id2label"])
    let result = try run(
      "flare-eval",
      [
        "classify", "--model", merged, "--data", test, "--json", "--batch-size", "4",
        "--max-length", "32",
      ])
    let classified = try JSONParser.parse(Array(result.stdout.utf8))
    #expect(classified["labels"] == golden["labels"])
    var expected = oracle
    if case .object(var members) = oracle, let peft = golden["test_peft_with_flare_adapter"] {
      members.append(("predictions", peft["predictions"] ?? .null))
      expected = .object(members)
    }
    let worst = try compareLogits(
      classified, expected, tolerance: try #require(golden["tolerance"]))
    print(
      "flare-merge --verify: merged vs base + adapter \(difference); flare-eval classify on the merged folder vs transformers on it: logits worst absolute difference \(worst)"
    )
  }

  /// Oracle: the adapter's own earlier state (a run is a function of the seed and the step).
  /// On the real model, with everything random switched on (fresh LoRA init from the seed,
  /// shuffling, LoRA dropout 0.1, the model's dropout 0.1): 6 steps on 2 threads, saving a
  /// checkpoint at step 3; the same 6 steps on 1 thread and on 4; steps 4-6 resumed on 1 thread
  /// from the step-3 checkpoint. The four adapters are the same bytes, and so are the logged
  /// losses.
  @Test("--resume and --threads 1, 2 or 4 give the same adapter, bit for bit")
  func resumeAndThreads() throws {
    guard let model = try Self.model() else { return }
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    func arguments(_ output: String, _ extra: [String]) -> [String] {
      [
        "lora", "--model", model, "--data", Self.data, "--output", output, "--task",
        "classification", "--max-steps", "6", "--batch-size", "4", "--grad-accum", "2",
        "--dropout", "0.1", "--seed", "7", "--lr", "1e-3", "--max-length", "32", "--quiet",
      ] + extra
    }
    let whole = "\(scratch)/whole"
    let single = "\(scratch)/single"
    let resumed = "\(scratch)/resumed"
    try Self.run("flare-train", arguments(whole, ["--threads", "2", "--save-every", "3"]))
    try Self.run("flare-train", arguments(single, ["--threads", "1"]))
    let four = "\(scratch)/four"
    try Self.run("flare-train", arguments(four, ["--threads", "4"]))
    let checkpoint = "\(whole)/checkpoint-3"
    try #require(fileExists("\(checkpoint)/trainer_state.json"))
    try Self.run("flare-train", arguments(resumed, ["--threads", "1", "--resume", checkpoint]))

    let file = "adapter_model.safetensors"
    let bytes = fileBytes("\(whole)/\(file)")
    try #require(!bytes.isEmpty)
    #expect(fileBytes("\(single)/\(file)") == bytes, "--threads 1 and 2 differ")
    #expect(fileBytes("\(four)/\(file)") == bytes, "--threads 4 and 2 differ")
    #expect(fileBytes("\(resumed)/\(file)") == bytes, "the resumed run differs")
    // The run moved the adapter after the checkpoint (the comparison is not between copies of
    // an untrained state).
    #expect(fileBytes("\(checkpoint)/\(file)") != bytes)
    func losses(_ folder: String) throws -> [Double] {
      try String(contentsOfFile: "\(folder)/training_log.jsonl", encoding: .utf8)
        .split(separator: "\n").map {
          try JSONParser.parse(Array($0.utf8))["loss"]?.doubleValue ?? .nan
        }
    }
    let reference = try losses(whole)
    #expect(reference.count == 6 && reference.allSatisfy(\.isFinite))
    #expect(try losses(single) == reference)
    #expect(try losses(resumed) == reference)
  }

  /// Oracle: PEFT's logits with the starting adapter as PEFT saved it (float16, no
  /// flare_labels.json): integer labels are class ids; string labels need names the model's
  /// config does not have, so they are refused naming the file and line. Other refusals:
  /// two adapters (usage, 64), no classification head (1), a label the classifier lacks (1), a
  /// model that is not an encoder (1).
  @Test("classify: a PEFT-written adapter, class ids, and what it refuses")
  func classifyPEFTAdapter() throws {
    guard let model = try Self.model() else { return }
    let golden = try Self.golden()
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let initial = "\(Self.folder)/init"
    let labels = try #require(golden["labels"]?.arrayValue).compactMap(\.stringValue)
    var lines: [String] = []
    for line in try String(contentsOfFile: Self.test, encoding: .utf8).split(separator: "\n") {
      let json = try JSONParser.parse(Array(line.utf8))
      let label = try #require(labels.firstIndex(of: json["label"]?.stringValue ?? ""))
      lines.append(
        JSONWriter.compact(
          .object([
            ("text", json["text"]!), ("text_pair", json["text_pair"] ?? .null),
            ("label", .integer(label)),
          ])))
    }
    let ids = "\(scratch)/ids.jsonl"
    writeText(lines.joined(separator: "\n") + "\n", to: ids)
    let report = try Self.classify(model: model, adapter: initial, data: ids)
    let oracle = try #require(golden["test_peft_with_init_adapter"])
    let worst = try Self.compareLogits(report, oracle, tolerance: try #require(golden["tolerance"]))
    #expect(report["labels"] == .array([.integer(0), .integer(1), .integer(2)]))
    print(
      "flare-eval classify vs PEFT with the PEFT-written float16 adapter: logits worst absolute difference \(worst)"
    )

    let strings = try runTool(
      "flare-eval", ["classify", "--model", model, "--adapter", initial, "--data", Self.test])
    #expect(strings.status == 1)
    #expect(strings.stderr.contains("\(Self.test):1:"), "\(strings.stderr)")
    #expect(strings.stderr.contains("flare_labels.json"), "\(strings.stderr)")

    let twice = try runTool(
      "flare-eval",
      ["classify", "--model", model, "--adapter", initial, "--adapter", initial, "--data", ids])
    #expect(twice.status == 64, "\(twice.stderr)")

    let headless = try runTool("flare-eval", ["classify", "--model", model, "--data", ids])
    #expect(headless.status == 1)
    #expect(headless.stderr.contains("no sequence-classification head"), "\(headless.stderr)")

    if fileExists(smolLM2GGUF) {
      // A Llama model without a score head and without an adapter that saved one.
      let llama = try runTool("flare-eval", ["classify", "--model", smolLM2GGUF, "--data", ids])
      #expect(llama.status == 1)
      #expect(llama.stderr.contains("no sequence-classification head"), "\(llama.stderr)")
    }

    let unknown = "\(scratch)/unknown.jsonl"
    writeText(lines[0] + "\n" + #"{"text": "Fine.", "label": 7}"# + "\n", to: unknown)
    let refused = try runTool(
      "flare-eval", ["classify", "--model", model, "--adapter", initial, "--data", unknown])
    #expect(refused.status == 1)
    #expect(refused.stderr.contains("\(unknown):2:"), "\(refused.stderr)")
  }

  /// A JSON matrix of integers.
  static func matrix(_ value: JSONValue?) -> [[Int]] {
    (value?.arrayValue ?? []).map { integers($0) }
  }

  /// `flare-eval classify --json` of the test set, with `adapter` when given.
  static func classify(model: String, adapter: String?, data: String = test) throws -> JSONValue {
    let result = try run(
      "flare-eval",
      ["classify", "--model", model] + (adapter.map { ["--adapter", $0] } ?? []) + [
        "--data", data, "--json", "--batch-size", "4", "--max-length", "32",
      ])
    return try JSONParser.parse(Array(result.stdout.utf8))
  }

  /// Checks every example's logits and prediction against the oracle's; returns the largest
  /// absolute difference.
  static func compareLogits(_ report: JSONValue, _ oracle: JSONValue, tolerance: JSONValue)
    throws -> Double
  {
    let limit = try #require(tolerance["logits_absolute"]?.doubleValue)
    let predictions = try #require(report["predictions"]?.arrayValue)
    let expected = try #require(oracle["logits"]?.arrayValue)
    try #require(predictions.count == expected.count)
    var worst = 0.0
    for (index, (row, reference)) in zip(predictions, expected).enumerated() {
      let got = floats(row["logits"])
      let want = floats(reference)
      try #require(got.count == want.count)
      for (g, w) in zip(got, want) { worst = max(worst, Double(abs(g - w))) }
      #expect(row["line"]?.intValue == index + 1)
      if let classes = oracle["predictions"]?.arrayValue, let labels = report["labels"]?.arrayValue,
        let predicted = classes[index].intValue
      {
        #expect(row["prediction"] == labels[predicted], "line \(index + 1)")
      }
    }
    #expect(worst <= limit, "logits differ from PEFT's by up to \(worst)")
    return worst
  }
}
