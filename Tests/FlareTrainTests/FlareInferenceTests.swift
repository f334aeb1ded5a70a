import FlareAdapters
import FlareCore
import FlareModels
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareTrain

/// FLARE adapters at inference: the two-stage pipeline through the tools, `flare-eval` with a
/// source, target-only and baked `add` adapters, the generation-time source modes. Adapters
/// are trained for one step by the built `flare-train` on the real SmolLM2 and the committed
/// parallel Bible data (a large learning rate, so that the adapter visibly changes outputs).
/// The oracles are the model without the adapter (B = 0), the unmerged FLARE pass (baked
/// adapters), the folded plain-LoRA model (target-only) and the inference path without
/// adapters (the reference mode's source run); the fused pass itself is checked against
/// PyTorch in FlareTrainingTests.
@Suite("FLARE inference", .serialized)
struct FlareInferenceTests {
  static let prompt = "Y dijo Dios: Sea la luz"
  static let source = "And God said, Let there be light"

  /// The first `count` Bible pairs, as FLARE data, or their English side as causal-LM text.
  static func data(_ count: Int, in folder: String, english: Bool = false) throws -> String {
    let lines = try String(contentsOfFile: FlareRunTests.data, encoding: .utf8)
      .split(separator: "\n").prefix(count)
    var out: [String] = []
    for line in lines {
      let json = try JSONParser.parse(Array(line.utf8))
      if english {
        out.append(JSONWriter.compact(.object([("text", json["source"]!)])))
      } else {
        out.append(
          JSONWriter.compact(.object([("text", json["text"]!), ("source", json["source"]!)])))
      }
    }
    let path = "\(folder)/\(english ? "en" : "pairs")-\(count).jsonl"
    writeBytes(Array((out.joined(separator: "\n") + "\n").utf8), to: path)
    return path
  }

  /// Trains a one-step FLARE adapter on SmolLM2 (`extra` options added).
  static func train(_ model: String, _ output: String, work: String, _ extra: [String]) throws {
    let result = try runTool(
      "flare-train",
      [
        "flare", "--model", model, "--data", try data(4, in: work), "--output", output,
        "--rank", "4", "--batch-size", "4", "--max-steps", "1", "--max-length", "24", "--quiet",
      ] + extra)
    try #require(result.status == 0, "\(result.stderr)")
  }

  static func json(_ result: ToolResult) throws -> JSONValue {
    try #require(result.status == 0, "\(result.stderr)")
    return try JSONParser.parse(Array(result.stdout.utf8))
  }

  /// The top logits of a `flare-eval logits --json` result, as (id, logit).
  static func top(_ json: JSONValue) -> [(Int, Double)] {
    (json["top"]?.arrayValue ?? []).map {
      ($0["id"]?.intValue ?? -1, $0["logit"]?.doubleValue ?? .nan)
    }
  }

  static func largestDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
  }

  /// Stage 1 (LoRA on English, folded with flare-merge in F32), stage 2 (FLARE on the
  /// translated data with the English source) whose single step runs at learning rate 0 (the
  /// warm-up's first step), so B stays 0: the FLARE model must then be the stage-1 model.
  /// Tools: flare-eval logits with and without the adapter agree (different code paths: the
  /// fused training pass and the KV-cache inference pass, 1e-4); library: the fused pass and
  /// the same pass without any adapter on the same padded batch agree bit for bit.
  @Test("two-stage pipeline; a FLARE adapter with B = 0 reproduces the stage-1 model")
  func twoStage() throws {
    guard let model = try smolLM2HFFolder() else { return }
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let stage1 = try runTool(
      "flare-train",
      [
        "lora", "--model", model, "--data", try Self.data(4, in: work, english: true),
        "--output", "\(work)/s1", "--target-modules", "q_proj,v_proj,down_proj", "--rank", "4",
        "--batch-size", "4", "--max-steps", "1", "--max-length", "24", "--lr", "0.01", "--quiet",
      ])
    try #require(stage1.status == 0, "\(stage1.stderr)")
    let merged = "\(work)/stage1"
    let merge = try runTool(
      "flare-merge", ["--base", model, "--adapter", "\(work)/s1", "--output", merged, "--quiet"])
    try #require(merge.status == 0, "\(merge.stderr)")
    try Self.train(merged, "\(work)/s2", work: work, ["--warmup-steps", "1"])
    let adapter = try PEFTAdapter(folder: "\(work)/s2")
    #expect(adapter.flare?.fusion == .addReLU)
    for module in adapter.modules {
      #expect(module.b.floats().allSatisfy { $0 == 0 }, "\(module.path)")
    }
    let plain = try Self.json(
      try runTool(
        "flare-eval", ["logits", "--model", merged, "--prompt", Self.prompt, "--json"]))
    let fused = try Self.json(
      try runTool(
        "flare-eval",
        [
          "logits", "--model", merged, "--adapter", "\(work)/s2", "--prompt", Self.prompt,
          "--source-text", Self.source, "--json",
        ]))
    #expect(fused["flare"]?["recipe"]?.stringValue == "fused")
    #expect(fused["ids"] == plain["ids"])
    let (a, b) = (Self.top(plain), Self.top(fused))
    #expect(a.map(\.0) == b.map(\.0))
    for (x, y) in zip(a, b) { #expect(abs(x.1 - y.1) <= 1e-4, "\(x) \(y)") }

    // The same padded batch through the pass, with the B = 0 FLARE adapter and with nothing.
    let llama = try LlamaModel(path: merged)
    let tokenizer = try WeightSource(path: merged).tokenizer()
    let decoder = try FLAREDecoder(model: llama, tokenizer: tokenizer, adapter: adapter)
    let batch = try decoder.batch(
      prompt: tokenizer.encode(Self.prompt), generated: [], source: tokenizer.encode(Self.source),
      mode: .aligned, sourceRun: [])
    let withAdapter = try llama.evaluationLogits(
      batch: batch, state: decoder.state(withSource: true), rows: .all)
    let without = try llama.evaluationLogits(
      batch: batch, state: TrainingState(loras: [:]), rows: .all)
    #expect(withAdapter == without)
  }

  /// An `add` adapter (fused q and v, plain k) folded by flare-merge: the merged model with
  /// the source term kept aside (--flare-baked: only s·B·A·x_s on the fused modules, the source
  /// pass with the folded LoRA subtracted) equals the unmerged FLARE model; the merged model
  /// alone equals the adapter run target-only. Both within 2e-4 of logits of size ~20 (two
  /// roundings of W + s·B·A against the unmerged sum).
  @Test("baked add adapter plus its source term equals the unmerged FLARE model")
  func bakedAdd() throws {
    guard let model = try smolLM2HFFolder() else { return }
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let adapterPath = "\(work)/add"
    try Self.train(
      model, adapterPath, work: work,
      ["--fusion", "add", "--target-modules", "q_proj,k_proj,v_proj", "--lr", "0.02"])
    let merged = "\(work)/merged"
    let merge = try runTool(
      "flare-merge", ["--base", model, "--adapter", adapterPath, "--output", merged, "--quiet"])
    try #require(merge.status == 0, "\(merge.stderr)")
    let adapter = try PEFTAdapter(folder: adapterPath)
    let tokenizer = try WeightSource(path: model).tokenizer()
    let ids = tokenizer.encode(Self.prompt)
    let source = tokenizer.encode(Self.source)
    let base = try LlamaModel(path: model)
    let folded = try LlamaModel(path: merged)
    let unmerged = try FLAREDecoder(model: base, tokenizer: tokenizer, adapter: adapter)
    let baked = try FLAREDecoder(
      model: folded, tokenizer: tokenizer, adapter: adapter, baked: true)
    let reference = try unmerged.logits(prompt: ids, source: source, lastOnly: false)
    let candidate = try baked.logits(prompt: ids, source: source, lastOnly: false)
    #expect(Self.largestDifference(reference, candidate) <= 2e-4)
    // The adapter changes the logits by far more than that, and the source matters.
    let plain = try base.forward(
      tokens: [ids], cache: base.makeCache(batch: 1, capacity: ids.count), logits: .all)
    #expect(Self.largestDifference(reference, plain) > 0.05)
    let targetOnly = try unmerged.logits(prompt: ids, source: nil, lastOnly: false)
    #expect(Self.largestDifference(reference, targetOnly) > 0.01)
    let mergedAlone = try folded.forward(
      tokens: [ids], cache: folded.makeCache(batch: 1, capacity: ids.count), logits: .all)
    #expect(Self.largestDifference(targetOnly, mergedAlone) <= 2e-4)

    // Through the tool: the recipe is recorded; --flare-baked needs a source.
    let tool = try Self.json(
      try runTool(
        "flare-eval",
        [
          "logits", "--model", merged, "--adapter", adapterPath, "--flare-baked", "--prompt",
          Self.prompt, "--source-text", Self.source, "--json",
        ]))
    #expect(tool["flare"]?["recipe"]?.stringValue == "baked_add")
    let noSource = try runTool(
      "flare-eval",
      ["logits", "--model", merged, "--adapter", adapterPath, "--flare-baked", "--prompt", "x"])
    #expect(noSource.status == 1)
    #expect(noSource.stderr.contains("needs a source"), "\(noSource.stderr)")
    // compare: the merged model against the unmerged FLARE adapter, one prompt with a
    // source (fused: differs) and one without (target-only: the merged model's function).
    let withSource = JSONValue.object([
      ("text", .string(Self.prompt)), ("source", .string(Self.source)),
    ])
    let withoutSource = JSONValue.object([("text", .string(Self.prompt))])
    let prompts = "\(work)/prompts.jsonl"
    let lines = JSONWriter.compact(withSource) + "\n" + JSONWriter.compact(withoutSource) + "\n"
    writeBytes(Array(lines.utf8), to: prompts)
    let compared = try Self.json(
      try runTool(
        "flare-eval",
        [
          "compare", "--model", merged, "--model", model, "--adapter", adapterPath, "--file",
          prompts, "--json",
        ]))
    #expect(compared["flare"]?["prompts_with_source"]?.intValue == 1)
    #expect(compared["positions"]?.intValue == 2 * ids.count)
    #expect((compared["max_abs_diff"]?.doubleValue ?? 0) > 0.01)
  }

  /// The source row maps of both generation modes, for right padding (SmolLM2's tokenizer
  /// side, which flare-train used: both sequences start at position 0 and position j fuses
  /// source position j) and left padding (the config rewritten: the prompt is left-padded to
  /// the width like the source, generated positions fuse the source's last token); reference
  /// mode: every position fuses the last token the source run fed.
  func checkRowMaps(
    _ decoder: FLAREDecoder, ids: [Int], source: [Int], left: Bool
  ) throws {
    let n = ids.count
    let m = source.count
    let aligned = try decoder.batch(
      prompt: ids, generated: [7, 8], source: source, mode: .aligned, sourceRun: [])
    let reference = try decoder.batch(
      prompt: ids, generated: [7], source: source, mode: .reference, sourceRun: [5, 6])
    var alignedRows: [Int] = []
    var referenceRows: [Int] = []
    var sourceRun: [Int] = []
    if left {
      alignedRows = Array(0..<24)
      alignedRows.append(23)
      alignedRows.append(23)
      referenceRows = [Int](repeating: 25, count: 25)
      sourceRun = [Int](repeating: aligned.source?[0][0] ?? 0, count: 24 - m)
    } else {
      alignedRows = Array(0..<(n + 2))
      referenceRows = [Int](repeating: m + 1, count: n + 1)
    }
    sourceRun.append(contentsOf: source)
    sourceRun.append(contentsOf: [5, 6])
    let targetCount = left ? 26 : n + 2
    #expect(aligned.tokens[0].count == targetCount)
    #expect(aligned.source?[0].count == 24)
    #expect(aligned.sourceRows?[0] == alignedRows)
    let realCount = aligned.mask[0].filter { $0 }.count
    #expect(realCount == n + 2)
    #expect(reference.source?[0] == sourceRun)
    #expect(reference.sourceRows?[0] == referenceRows)
  }

  /// An add_relu adapter generating: the first aligned token is the argmax of the prompt's
  /// last logits; the row maps of both modes and padding sides; the reference mode's source
  /// run is the model without the adapter generating greedily from the source (checked against
  /// flare-eval generate on the plain model); only an `add` adapter can be baked; without a
  /// source the tool says it runs target-only; --source-text without a FLARE adapter is a
  /// usage error.
  @Test("FLARE generation: aligned and reference source modes, target-only note")
  func generation() throws {
    guard let model = try smolLM2HFFolder() else { return }
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let adapterPath = "\(work)/relu"
    try Self.train(model, adapterPath, work: work, ["--lr", "0.05", "--source-normalize"])
    let adapter = try PEFTAdapter(folder: adapterPath)
    let tokenizer = try WeightSource(path: model).tokenizer()
    let llama = try LlamaModel(path: model)
    let decoder = try FLAREDecoder(model: llama, tokenizer: tokenizer, adapter: adapter)
    let ids = tokenizer.encode(Self.prompt)
    let source = tokenizer.encode(Self.source)
    let last = try decoder.logits(prompt: ids, source: source, lastOnly: true)
    let (generated, _) = try decoder.generate(
      prompt: ids, source: source, mode: .aligned, maxTokens: 2, sampling: SamplingOptions(),
      stop: [])
    #expect(generated.count == 2)
    #expect(generated.first == Sampler.argmax(last[...]))

    #expect(adapter.flare?.paddingSide == "right")
    try checkRowMaps(decoder, ids: ids, source: source, left: false)
    var leftConfig = try #require(adapter.flare)
    leftConfig.paddingSide = "left"
    let configPath = "\(adapterPath)/flare_config.json"
    let saved = fileBytes(configPath)
    writeBytes(Array(JSONWriter.compact(leftConfig.json).utf8), to: configPath)
    let leftDecoder = try FLAREDecoder(
      model: llama, tokenizer: tokenizer, adapter: try PEFTAdapter(folder: adapterPath))
    try checkRowMaps(leftDecoder, ids: ids, source: source, left: true)
    writeBytes(saved, to: configPath)

    let fused = try Self.json(
      try runTool(
        "flare-eval",
        [
          "generate", "--model", model, "--adapter", adapterPath, "--prompt", Self.prompt,
          "--source-text", Self.source, "--source-mode", "reference", "--max-tokens", "3",
          "--json",
        ]))
    #expect(fused["flare"]?["generation_source"]?.stringValue == "reference")
    let plain = try Self.json(
      try runTool(
        "flare-eval",
        ["generate", "--model", model, "--prompt", Self.source, "--max-tokens", "3", "--json"]))
    #expect(fused["flare"]?["source_generated_ids"] == plain["generated_ids"])

    let targetOnly = try runTool(
      "flare-eval",
      [
        "generate", "--model", model, "--adapter", adapterPath, "--prompt", Self.prompt,
        "--max-tokens", "1",
      ])
    #expect(targetOnly.status == 0, "\(targetOnly.stderr)")
    #expect(targetOnly.stderr.contains("target-only"), "\(targetOnly.stderr)")
    let notAdd = try runTool(
      "flare-eval",
      [
        "logits", "--model", model, "--adapter", adapterPath, "--flare-baked", "--prompt", "x",
        "--source-text", "y",
      ])
    #expect(notAdd.status == 1)
    #expect(notAdd.stderr.contains("add_relu"), "\(notAdd.stderr)")
    let notFLARE = try runTool(
      "flare-eval", ["logits", "--model", model, "--prompt", "x", "--source-text", "y"])
    #expect(notFLARE.status == 64)
  }
}
