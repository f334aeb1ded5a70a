import FlareAdapters
import FlareArchitectures
import FlareCore
import FlareGGUF
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareModels

/// One prompt of `Fixtures/llama/smollm2-golden.json`.
struct LlamaGoldenCase {
  var name: String
  var ids: [Int]
  var top: [(id: Int, logit: Float)]
  var greedy: [Int]?
  var logits: [Float]

  static func load() throws -> (cases: [LlamaGoldenCase], vocab: Int) {
    let json = try loadFixtureJSON("llama/smollm2-golden.json")
    let vocab = try #require(json["vocab"]?.intValue)
    let blob = fileBytes(fixturePath("llama/smollm2-logits.f32"))
    var cases: [LlamaGoldenCase] = []
    for (index, item) in (json["cases"]?.arrayValue ?? []).enumerated() {
      let logits = (0..<vocab).map { i in
        let o = (index * vocab + i) * 4
        return Float(
          bitPattern: UInt32(blob[o]) | UInt32(blob[o + 1]) << 8 | UInt32(blob[o + 2]) << 16
            | UInt32(blob[o + 3]) << 24)
      }
      cases.append(
        LlamaGoldenCase(
          name: item["name"]?.stringValue ?? "",
          ids: item["ids"]?.arrayValue?.compactMap(\.intValue) ?? [],
          top: topList(item["top"]),
          greedy: item["greedy"]?["ids"]?.arrayValue?.compactMap(\.intValue), logits: logits))
    }
    return (cases, vocab)
  }

  static func topList(_ value: JSONValue?) -> [(id: Int, logit: Float)] {
    (value?.arrayValue ?? []).compactMap { entry in
      guard let id = entry["id"]?.intValue, let logit = entry["logit"]?.doubleValue else {
        return nil
      }
      return (id, Float(logit))
    }
  }
}

func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
  zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// Runs one prompt and returns its last-position logits.
func lastLogits(_ model: LlamaModel, _ ids: [Int]) throws -> [Float] {
  let cache = model.makeCache(batch: 1, capacity: ids.count)
  return try model.forward(tokens: [ids], cache: cache)
}

@Suite("Llama forward pass on the real SmolLM2", .serialized)
struct LlamaTests {
  // Oracle: transformers LlamaForCausalLM in F32 on the same F32 folder
  // (Fixtures/llama/make_golden.py). Tolerance: 1e-3 max abs over all 49,152 logits, the
  // issue's bound; top-1 and the 15-token greedy continuation must be identical.
  @Test("HF folder: logits within 1e-3 of transformers, greedy continuation identical")
  func hfFolder() throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let model = try LlamaModel(path: folder)
    #expect(model.ropeStyle == .halves)
    let (cases, vocab) = try LlamaGoldenCase.load()
    #expect(model.config.vocabSize == vocab)
    for golden in cases {
      let logits = try lastLogits(model, golden.ids)
      let difference = maxAbsDifference(logits, golden.logits)
      #expect(difference < 1e-3, "\(golden.name): max abs difference \(difference)")
      #expect(Sampler.argmax(logits[...]) == golden.top.first?.id, "\(golden.name)")
      if let expected = golden.greedy {
        #expect(
          try model.generate(prompt: golden.ids, maxTokens: expected.count) == expected,
          "\(golden.name)")
      }
    }
  }

  // Oracle: the same transformers goldens. The GGUF holds the Q4_1 weights the F32 folder was
  // dequantized from, with permuted Q/K rows and adjacent-pair RoPE; tolerance 1e-3.
  @Test("GGUF (Q4_1 dequantized at load): same logits as transformers within 1e-3")
  func gguf() throws {
    guard try smolLM2HFFolder() != nil else { return }
    let model = try LlamaModel(path: smolLM2GGUF)
    #expect(model.ropeStyle == .pairs)
    let (cases, _) = try LlamaGoldenCase.load()
    for golden in cases {
      let logits = try lastLogits(model, golden.ids)
      let difference = maxAbsDifference(logits, golden.logits)
      #expect(difference < 1e-3, "\(golden.name): max abs difference \(difference)")
    }
    let english = try #require(cases.first { $0.greedy != nil })
    #expect(
      try model.generate(prompt: english.ids, maxTokens: english.greedy?.count ?? 0)
        == english.greedy)
  }

  // Oracle: llama.cpp on the same Q4_1 file (Fixtures/llama/make_llamacpp_golden.py:
  // llama-cpp-python 0.3.36), which also keeps the weights quantized and quantizes activations
  // per 32-value block. Both sides carry that quantization noise, which a float-rounding
  // difference anywhere re-draws (an OpenBLAS kernel, a thread count, an instruction set):
  // llama.cpp's own ten top logits differ from transformers' F32 ones by up to 0.78 (the
  // Spanish prompt). Tolerance: its ten top logits within 1.0 each, and Flare's top-1 a token
  // whose llama.cpp logit is within 1.0 of llama.cpp's largest (the code prompt's two best
  // differ by 0.013 there, so either may come first). How far the greedy continuation agrees
  // with llama.cpp's is printed (reported in BENCHMARKS.md, not a correctness property).
  @Test("GGUF kept quantized: no F32 copy of its matrices, llama.cpp's top logits on the same file")
  func ggufQuantized() throws {
    guard FileManager.default.fileExists(atPath: smolLM2GGUF) || !offline else { return }
    let model = try LlamaModel(path: smolLM2GGUF, compute: .quantized)
    #expect(model.compute == .quantized)
    for linear in model.linears {
      #expect(linear.weight.quantized != nil && linear.weight.values.isEmpty, "\(linear.path)")
    }
    #expect(model.embedding.quantized?.format == .q8_0)
    #expect(model.finalNorm.quantized == nil)
    let golden = try loadFixtureJSON("llama/smollm2-q4_1-llamacpp.json")
    let cases = try #require(golden["cases"]?.arrayValue)
    try #require(cases.count == 5)
    for item in cases {
      let name = item["name"]?.stringValue ?? "?"
      let ids = try #require(item["ids"]?.arrayValue).compactMap(\.intValue)
      let logits = try lastLogits(model, ids)
      let top = try #require(item["top"]?.arrayValue)
      let best = try #require(logits.indices.max { logits[$0] < logits[$1] })
      let largest = try #require(top.first?["logit"]?.doubleValue)
      let near = top.filter { ($0["logit"]?.doubleValue ?? -.infinity) >= largest - 1.0 }
      #expect(near.contains { $0["id"]?.intValue == best }, "\(name): top-1 \(best)")
      var worst: Float = 0
      for entry in top {
        let id = try #require(entry["id"]?.intValue)
        let value = Float(try #require(entry["logit"]?.doubleValue))
        worst = max(worst, abs(logits[id] - value))
      }
      #expect(worst <= 1.0, "\(name): \(worst)")
      let greedy = try #require(item["greedy"]?.arrayValue).compactMap(\.intValue)
      let mine = try model.generate(prompt: ids, maxTokens: greedy.count)
      let agree = zip(mine, greedy).prefix { $0 == $1 }.count
      print(
        "\(name): quantized vs llama.cpp, largest top-10 logit difference \(worst), greedy agrees for \(agree) of \(greedy.count) tokens"
      )
    }
  }

  // Oracle: the unpadded single-sequence run (itself checked against transformers above).
  // Padding must not change a sequence's logits beyond float reordering: 1e-4.
  @Test("a padded batch (left and right padding) gives each sequence its unpadded logits")
  func paddedBatch() throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let model = try LlamaModel(path: folder)
    let (cases, _) = try LlamaGoldenCase.load()
    let a = cases[0].ids
    let b = cases[1].ids
    let singleA = try lastLogits(model, a)
    let singleB = try lastLogits(model, b)
    let t = max(a.count, b.count)
    for left in [true, false] {
      func pad(_ ids: [Int]) -> ([Int], [Bool]) {
        let padding = [Int](repeating: 0, count: t - ids.count)
        let off = [Bool](repeating: false, count: t - ids.count)
        let on = [Bool](repeating: true, count: ids.count)
        return left ? (padding + ids, off + on) : (ids + padding, on + off)
      }
      let (ta, ma) = pad(a)
      let (tb, mb) = pad(b)
      let cache = model.makeCache(batch: 2, capacity: t)
      let logits = try model.forward(tokens: [ta, tb], mask: [ma, mb], cache: cache)
      let vocab = model.config.vocabSize
      #expect(maxAbsDifference(Array(logits[0..<vocab]), singleA) < 1e-4, "left: \(left)")
      #expect(maxAbsDifference(Array(logits[vocab...]), singleB) < 1e-4, "left: \(left)")
    }
  }

  // Oracle: the full-prompt forward pass. Feeding the prompt in pieces through the KV cache
  // must give the same logits at every position (1e-4).
  @Test("the KV cache: pieces give the same logits as one pass")
  func cacheIncremental() throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let model = try LlamaModel(path: folder)
    let ids = try LlamaGoldenCase.load().cases[0].ids
    let whole = try model.forward(
      tokens: [ids], cache: model.makeCache(batch: 1, capacity: ids.count), logits: .all)
    let cache = model.makeCache(batch: 1, capacity: ids.count)
    let vocab = model.config.vocabSize
    var done = 0
    for size in [4, 1, 3, 1] {
      let piece = Array(ids[done..<(done + size)])
      let logits = try model.forward(tokens: [piece], cache: cache, logits: .all)
      let expected = Array(whole[(done * vocab)..<((done + size) * vocab)])
      #expect(maxAbsDifference(logits, expected) < 1e-4, "piece at \(done)")
      done += size
    }
    #expect(cache.length == ids.count)
    #expect(throws: FlareError.self) { try model.forward(tokens: [[1]], cache: cache) }
  }

  // Oracles: PEFT's unmerged forward (Fixtures/llama/smollm2-lora.json, top-10 logits, 1e-3),
  // and flare-merge's merged folder (all logits, 1e-4: the issue's bound for unmerged vs
  // merged).
  @Test("LoRA applied unmerged equals PEFT and equals the merged model")
  func runtimeLoRA() throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let adapterPath = fixturePath("peft/smollm2-demo-lora")
    let model = try LlamaModel(path: folder)
    try model.attach(adapters: [(try PEFTAdapter(folder: adapterPath), 1)])
    #expect(model.linears.contains { !$0.adapters.isEmpty })
    let json = try loadFixtureJSON("llama/smollm2-lora.json")
    var unmerged: [[Float]] = []
    for item in json["cases"]?.arrayValue ?? [] {
      let ids = item["ids"]?.arrayValue?.compactMap(\.intValue) ?? []
      let logits = try lastLogits(model, ids)
      unmerged.append(logits)
      for (id, logit) in LlamaGoldenCase.topList(item["top"]) {
        #expect(abs(logits[id] - logit) < 1e-3, "\(item["name"]?.stringValue ?? ""): id \(id)")
      }
    }
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let merged = "\(work)/merged"
    let result = try runTool(
      "flare-merge", ["--base", folder, "--adapter", adapterPath, "--output", merged, "-q"])
    #expect(result.status == 0, "\(result.stderr)")
    let mergedModel = try LlamaModel(path: merged)
    for (item, expected) in zip(json["cases"]?.arrayValue ?? [], unmerged) {
      let ids = item["ids"]?.arrayValue?.compactMap(\.intValue) ?? []
      let difference = maxAbsDifference(try lastLogits(mergedModel, ids), expected)
      #expect(difference < 1e-4, "max abs difference \(difference)")
    }
    // The same adapter on the GGUF (B's Q/K rows permuted at attach) gives the same logits.
    let ggufModel = try LlamaModel(path: smolLM2GGUF)
    try ggufModel.attach(adapters: [(try PEFTAdapter(folder: adapterPath), 1)])
    let first = try #require(json["cases"]?.arrayValue?.first)
    let ids = first["ids"]?.arrayValue?.compactMap(\.intValue) ?? []
    #expect(maxAbsDifference(try lastLogits(ggufModel, ids), unmerged[0]) < 1e-4)
    // llama.cpp's LoRA GGUF of the same adapter (Fixtures/peft/make_gguf_lora.sh) on the GGUF
    // gives the same logits; on the HF folder it is refused (its Q/K rows are permuted).
    let ggufAdapter = try PEFTAdapter(ggufAdapter: fixturePath("peft/smollm2-demo-lora.gguf"))
    let withGGUFAdapter = try LlamaModel(path: smolLM2GGUF)
    try withGGUFAdapter.attach(adapters: [(ggufAdapter, 1)])
    #expect(maxAbsDifference(try lastLogits(withGGUFAdapter, ids), unmerged[0]) < 1e-4)
    let hf = try LlamaModel(path: folder)
    #expect(throws: FlareError.self) { try hf.attach(adapters: [(ggufAdapter, 1)]) }
  }

  @Test("bad input: ids outside the vocabulary, ragged batches, a missing tensor")
  func badInput() throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let model = try LlamaModel(path: folder)
    let cache = model.makeCache(batch: 1, capacity: 8)
    #expect(throws: FlareError.self) { try model.forward(tokens: [[49152]], cache: cache) }
    #expect(throws: FlareError.self) { try model.forward(tokens: [[-1]], cache: cache) }
    #expect(throws: FlareError.self) { try model.forward(tokens: [[1], [2]], cache: cache) }
    #expect(cache.length == 0)
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    // A folder whose config names more layers than the file has.
    let config = try JSONParser.parse(try readSmallFile("\(folder)/config.json"))
    var members = (config.objectMembers ?? []).filter { $0.0 != "num_hidden_layers" }
    members.append(("num_hidden_layers", .integer(31)))
    try writeFileAtomically(
      Array(JSONWriter.pretty(.object(members)).utf8), to: "\(work)/config.json")
    try FileManager.default.createSymbolicLink(
      atPath: "\(work)/model.safetensors", withDestinationPath: "\(folder)/model.safetensors")
    do {
      _ = try LlamaModel(path: work)
      Issue.record("a missing layer was not reported")
    } catch let error as FlareError {
      #expect("\(error)".contains("model.layers.30"), "\(error)")
    }
    // Key/value heads that do not divide the query heads would index past the cache.
    func write(_ changes: [(String, JSONValue)]) throws {
      let keys = Set(changes.map(\.0))
      let kept = (config.objectMembers ?? []).filter { !keys.contains($0.0) }
      try writeFileAtomically(
        Array(JSONWriter.pretty(.object(kept + changes)).utf8), to: "\(work)/config.json",
        overwrite: true)
    }
    try write([("num_key_value_heads", .integer(2))])
    #expect(throws: FlareError.self) { try LlamaModel(path: work) }
    // A context of 12 tokens: generation stops at its end however many tokens are asked for,
    // and a longer prompt is refused (no cache larger than the context is ever allocated).
    try write([("max_position_embeddings", .integer(12))])
    let short = try LlamaModel(path: work)
    let ids = try LlamaGoldenCase.load().cases[0].ids
    let out = try short.generate(prompt: ids, maxTokens: 1_000_000_000)
    #expect(out.count == 12 - ids.count)
    #expect(throws: FlareError.self) {
      try short.generate(prompt: ids + ids, maxTokens: 1)
    }
  }
}

@Suite("Llama config")
struct LlamaConfigTests {
  static func config(_ extra: String) throws -> DecoderConfig {
    let text = """
      {"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
       "num_attention_heads":4,"vocab_size":32\(extra)}
      """
    return try DecoderConfig(hfConfig: try JSONParser.parse(Array(text.utf8)), path: "config.json")
  }

  // Oracle: transformers 5's DecoderConfig, which keeps rope_theta inside rope_parameters (the
  // tiny bases in Fixtures/peft were saved that way) and older files with a top-level key.
  @Test("rope_theta is read from rope_parameters (transformers 5) or the top level")
  func ropeTheta() throws {
    #expect(try Self.config("").ropeFreqBase == 10000)
    #expect(try Self.config(#","rope_theta":500000.0"#).ropeFreqBase == 500_000)
    #expect(
      try Self.config(#","rope_parameters":{"rope_type":"default","rope_theta":100000.0}"#)
        .ropeFreqBase == 100_000)
    #expect(throws: FlareError.self) {
      try Self.config(#","rope_parameters":{"rope_type":"llama3","rope_theta":500000.0}"#)
    }
  }
}
