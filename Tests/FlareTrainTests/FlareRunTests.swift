import FlareAdapters
import FlareCore
import FlareSafetensors
import FlareTrain
import Foundation
import Testing
import _FlareTestSupport

/// `flare-train flare` through the built tool on the real models and the committed parallel
/// Bible data (`Fixtures/data/bible/train.es-mt`: machine-translated Spanish `text`, the
/// English `source`, a book-group `label`). The numerics of a FLARE step are checked against
/// PyTorch in FlareModelsTests (FlareTrainingTests); these check the tool around them.
@Suite("flare-train flare")
struct FlareRunTests {
  static let data = fixturePath("data/bible/train.es-mt")

  /// The first `count` lines of the Bible data (optionally with a field removed).
  static func data(_ count: Int, in folder: String, dropping field: String? = nil) throws
    -> String
  {
    let lines = try String(contentsOfFile: data, encoding: .utf8).split(separator: "\n")
      .prefix(count)
    var out: [String] = []
    for line in lines {
      var json = try JSONParser.parse(Array(line.utf8))
      if let field, case .object(let members) = json {
        json = .object(members.filter { $0.0 != field })
      }
      out.append(JSONWriter.compact(json))
    }
    let path = "\(folder)/data-\(count)-\(field ?? "all").jsonl"
    writeBytes(Array((out.joined(separator: "\n") + "\n").utf8), to: path)
    return path
  }

  /// SmolLM2, causal LM, cross-attention (2 heads): the folder is a PEFT folder plus
  /// flare_config.json that reads back with the run's settings (causal on a decoder), the
  /// cross-attention weights are saved next to the LoRA tensors, the log has every step, and
  /// flare-merge reads the folder and refuses to fold the fusion.
  @Test("a causal-LM FLARE run on SmolLM2 writes a FLARE adapter folder")
  func smolLM2() throws {
    guard let model = try smolLM2HFFolder() else { return }
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let output = "\(work)/out"
    let data = try Self.data(8, in: work)
    func train(_ output: String, threads: Int) throws -> ToolResult {
      try runTool(
        "flare-train",
        [
          "flare", "--model", model, "--data", data, "--output", output, "--fusion",
          "cross-attention", "--cross-attention-heads", "2", "--rank", "4", "--batch-size", "4",
          "--max-steps", "2", "--max-length", "24", "--threads", "\(threads)", "--quiet",
        ])
    }
    let result = try train(output, threads: 2)
    try #require(result.status == 0, "\(result.stderr)")
    let config = try FLAREConfig(path: "\(output)/flare_config.json")
    #expect(config.fusion == .crossAttention && config.causal)
    #expect(config.fusedModules == ["q_proj", "v_proj"] && config.maxLength == 24)
    #expect(config.crossAttentionHeads == 2)
    let tensors = try SafetensorsFile(path: "\(output)/adapter_model.safetensors").tensors
    let names = Set(tensors.map(\.name))
    for layer in [0, 29] {
      for projection in ["q_proj", "v_proj"] {
        let prefix = "base_model.model.model.layers.\(layer).self_attn.\(projection)"
        #expect(names.contains("\(prefix).lora_A.weight"))
        for part in ["q", "k", "v"] {
          #expect(names.contains("\(prefix).cross_attention.\(part).weight"))
          #expect(names.contains("\(prefix).cross_attention.\(part).bias"))
        }
      }
    }
    #expect(names.count == 60 * 2 + 60 * 6)
    let log = try String(contentsOfFile: "\(output)/training_log.jsonl", encoding: .utf8)
    #expect(log.split(separator: "\n").filter { $0.contains("\"step\"") }.count == 2)
    // flare-merge reads the trained adapter and refuses to fold cross-attention, naming it.
    let merge = try runTool(
      "flare-merge", ["--base", model, "--adapter", output, "--output", "\(work)/merged"])
    #expect(merge.status == 1)
    #expect(merge.stderr.contains("'cross-attention'"), "\(merge.stderr)")
    #expect(!fileExists("\(work)/merged"))
    // The same run again gives the same adapter bit for bit.
    let again = "\(work)/again"
    let second = try train(again, threads: 1)
    try #require(second.status == 0, "\(second.stderr)")
    #expect(
      fileBytes("\(output)/adapter_model.safetensors")
        == fileBytes("\(again)/adapter_model.safetensors"))
  }

  /// e5-small classification with add_relu: the reference form on an encoder, the labels file,
  /// validation on the validation lines.
  @Test("a classification FLARE run on e5-small")
  func e5() throws {
    let folder = "\(modelCache)/models/multilingual-e5-small"
    guard fileExists("\(folder)/config.json") else { return }
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let output = "\(work)/out"
    let result = try runTool(
      "flare-train",
      [
        "flare", "--model", folder, "--task", "classification", "--data",
        try Self.data(8, in: work), "--output", output, "--batch-size", "8", "--max-steps",
        "1", "--max-length", "32", "--threads", "2", "--json",
      ])
    try #require(result.status == 0, "\(result.stderr)")
    let config = try FLAREConfig(path: "\(output)/flare_config.json")
    #expect(config.fusion == .addReLU && !config.causal)
    #expect(config.fusedModules == ["query", "value"] && config.paddingSide == "right")
    #expect(fileExists("\(output)/flare_labels.json"))

    // flare-eval classify: with the data's sources the adapter runs fused (its max_length by
    // default); without them target-only, which is what flare-merge --flare-target-only bakes
    // (the merged classifier's logits agree to 1e-4), and the source changes the logits.
    func classify(_ arguments: [String]) throws -> JSONValue {
      let result = try runTool("flare-eval", ["classify", "--json"] + arguments)
      try #require(result.status == 0, "\(result.stderr)")
      return try JSONParser.parse(Array(result.stdout.utf8))
    }
    func logits(_ report: JSONValue) -> [Double] {
      (report["predictions"]?.arrayValue ?? []).flatMap {
        ($0["logits"]?.arrayValue ?? []).map { $0.doubleValue ?? .nan }
      }
    }
    let paired = try Self.data(8, in: work)
    let plain = try Self.data(8, in: work, dropping: "source")
    let fused = try classify(["--model", folder, "--adapter", output, "--data", paired])
    #expect(fused["flare"]?["recipe"]?.stringValue == "fused")
    let targetOnly = try classify(["--model", folder, "--adapter", output, "--data", plain])
    #expect(targetOnly["flare"]?["recipe"]?.stringValue == "target_only")
    let merge = try runTool(
      "flare-merge",
      [
        "--base", folder, "--adapter", output, "--output", "\(work)/merged",
        "--flare-target-only", "--quiet",
      ])
    try #require(merge.status == 0, "\(merge.stderr)")
    let baked = try classify(["--model", "\(work)/merged", "--data", plain, "--max-length", "32"])
    let (a, b, c) = (logits(fused), logits(targetOnly), logits(baked))
    let classes = fused["labels"]?.arrayValue?.count ?? 0
    #expect(classes == 5 && a.count == 8 * classes)
    #expect(b.count == a.count && c.count == a.count)
    #expect(zip(b, c).allSatisfy { abs($0 - $1) <= 1e-4 }, "\(b) \(c)")
    #expect(zip(a, b).contains { abs($0 - $1) > 1e-4 })
    let text = try runTool(
      "flare-eval", ["classify", "--model", folder, "--adapter", output, "--data", plain])
    #expect(text.stdout.contains("target-only"), "\(text.stdout)")
  }

  /// The input-level fusion baseline: each line becomes its source, a newline and its text
  /// (a causal-LM source is an unscored prompt), the training run tokenizes that with twice
  /// --max-length, flare-eval classify --input-fusion reads data the same way, and the option
  /// is refused where it makes no sense (flare-train flare, a line without a source).
  @Test("--input-fusion: source and text as one sequence, max length doubled")
  func inputFusion() throws {
    let text = RawExample(line: 3, content: .text("hola"), source: "hello")
    #expect(
      text.inputFused()
        == RawExample(
          line: 3, content: .promptCompletion(prompt: "hello\n", completion: "hola")))
    let prompt = RawExample(
      line: 1, content: .promptCompletion(prompt: "P: ", completion: "sí"), source: "S")
    #expect(prompt.inputFused().content == .promptCompletion(prompt: "S\nP: ", completion: "sí"))
    let labelled = RawExample(
      line: 2, content: .classification(text: "t", pair: nil, label: .integer(1)), source: "s")
    #expect(
      labelled.inputFused().content == .classification(text: "s\nt", pair: nil, label: .integer(1))
    )
    #expect(RawExample(line: 1, content: .text("x")).inputFused().content == .text("x"))

    let folder = "\(modelCache)/models/multilingual-e5-small"
    guard fileExists("\(folder)/config.json") else { return }
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let data = try Self.data(8, in: work)
    let output = "\(work)/out"
    let run = try runTool(
      "flare-train",
      [
        "lora", "--model", folder, "--task", "classification", "--data", data, "--output",
        output, "--batch-size", "8", "--max-steps", "1", "--max-length", "16",
        "--input-fusion", "--threads", "2", "--quiet",
      ])
    try #require(run.status == 0, "\(run.stderr)")
    let plan = try runTool(
      "flare-train",
      [
        "lora", "--model", folder, "--task", "classification", "--data", data, "--max-length",
        "16", "--input-fusion", "--dry-run",
      ])
    #expect(plan.stdout.contains("truncated to 32 tokens"), "\(plan.stdout)")
    #expect(plan.stdout.contains("input-level fusion"), "\(plan.stdout)")
    let evaluated = try runTool(
      "flare-eval",
      [
        "classify", "--model", folder, "--adapter", output, "--data", data, "--max-length",
        "16", "--input-fusion", "--json",
      ])
    try #require(evaluated.status == 0, "\(evaluated.stderr)")
    let report = try JSONParser.parse(Array(evaluated.stdout.utf8))
    #expect(report["examples"]?.intValue == 8 && report["flare"] == .null)
    let flare = try runTool(
      "flare-train", ["flare", "--model", folder, "--data", data, "--input-fusion"])
    #expect(flare.status == 64)
    let missing = try runTool(
      "flare-train",
      [
        "lora", "--model", folder, "--task", "classification", "--data",
        try Self.data(4, in: work, dropping: "source"), "--input-fusion", "--dry-run",
      ])
    #expect(missing.status == 1)
    #expect(missing.stderr.contains(":1: ") && missing.stderr.contains("'source'"))
  }

  @Test("bad FLARE data and options are refused with the line or option named")
  func refusals() throws {
    guard let model = try smolLM2HFFolder() else { return }
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let base = ["flare", "--model", model, "--output", "\(work)/out", "--max-steps", "1"]
    let missing = try runTool(
      "flare-train", base + ["--data", try Self.data(4, in: work, dropping: "source")])
    #expect(missing.status == 1)
    #expect(
      missing.stderr.contains(":1: ") && missing.stderr.contains("'source'"), "\(missing.stderr)")
    let good = try Self.data(4, in: work)
    let notAdapted = try runTool(
      "flare-train", base + ["--data", good, "--fused-modules", "k_proj"])
    #expect(notAdapted.status == 64)
    #expect(notAdapted.stderr.contains("k_proj"), "\(notAdapted.stderr)")
    let heads = try runTool(
      "flare-train",
      base + ["--data", good, "--fusion", "cross-attention", "--cross-attention-heads", "3"])
    #expect(heads.status == 64)
    #expect(heads.stderr.contains("does not divide"), "\(heads.stderr)")
    let wrongFusion = try runTool(
      "flare-train", base + ["--data", good, "--cross-attention-heads", "2"])
    #expect(wrongFusion.status == 64)
    #expect(!fileExists("\(work)/out/adapter_model.safetensors"))
  }
}
