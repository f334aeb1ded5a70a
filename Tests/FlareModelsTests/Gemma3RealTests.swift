import FlareCore
import FlareGGUF
import FlareTokenizers
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareModels

/// The real Gemma 3 270M GGUF (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0), against
/// `Fixtures/families/gemma3-270m.json` (`make_gemma3_golden.py`).
///
/// Oracles: llama-cpp-python 0.3.36 on the same file (token ids; greedy continuation with its
/// quantized kernels), transformers 5.25 loading the GGUF dequantized to F32 (last-position
/// logits: the top 20 and every 64th of the 262,144). Tolerance against transformers: 1e-3
/// absolute, Flare with `--compute f32` (the same dequantized weights, F32 arithmetic).
@Suite("Gemma 3 270M (real GGUF) against llama.cpp and transformers")
struct Gemma3RealTests {
  struct Case {
    var text: String
    var ids: [Int]
    var top: [(id: Int, logit: Float)]
    var strided: [Float]
    var greedy: [Int]
    /// llama.cpp's best minus second-best logit at each greedy step.
    var margins: [Float]
    var llamaCppTop: [(id: Int, logit: Float)]
  }

  static func cases() throws -> (cases: [Case], stride: Int) {
    let json = try loadFixtureJSON("families/gemma3-270m.json")
    let cases = try #require(json["cases"]?.arrayValue).map { item in
      Case(
        text: try #require(item["text"]?.stringValue),
        ids: try #require(item["ids"]?.arrayValue).compactMap(\.intValue),
        top: LlamaGoldenCase.topList(item["transformers"]?["top"]),
        strided: try #require(item["transformers"]?["strided"]?.arrayValue).map {
          Float(try #require($0.doubleValue))
        },
        greedy: try #require(item["llamacpp"]?["greedy"]?.arrayValue).compactMap(\.intValue),
        margins: try #require(item["llamacpp"]?["margins"]?.arrayValue).map {
          Float(try #require($0.doubleValue))
        },
        llamaCppTop: LlamaGoldenCase.topList(item["llamacpp"]?["top"]))
    }
    return (cases, try #require(json["stride"]?.intValue))
  }

  @Test("the tokenizer read from the GGUF gives llama.cpp's ids")
  func tokenizer() throws {
    guard let path = try requireGemma3GGUF() else { return }
    let tokenizer = try Tokenizer.load(gguf: try GGUFFile(path: path))
    for c in try Self.cases().cases {
      #expect(tokenizer.encode(c.text) == c.ids, "\(c.text)")
    }
  }

  @Test("F32 compute: last-position logits within 1e-3 of transformers'")
  func logits() throws {
    guard let path = try requireGemma3GGUF() else { return }
    let model = try LlamaModel(path: path, compute: .f32)
    #expect(model.config.family == .gemma3)
    #expect(model.config.slidingLayers.filter { !$0 }.count == 3)
    let (cases, stride) = try Self.cases()
    for c in cases {
      let logits = try lastLogits(model, c.ids)
      var worst: Float = 0
      for (id, logit) in c.top { worst = max(worst, abs(logits[id] - logit)) }
      for (i, value) in c.strided.enumerated() {
        worst = max(worst, abs(logits[i * stride] - value))
      }
      #expect(c.strided.count == (logits.count + stride - 1) / stride)
      #expect(worst <= 1e-3, "\(c.text): max |Δ| \(worst)")
      print("gemma3-270m '\(c.text)': max |Δ| from transformers \(worst)")
    }
  }

  /// The HF folder flare-convert writes from the GGUF, against transformers: the golden's
  /// CRC-32s say the tokenizer.json and model.safetensors are the bytes the script checked (its
  /// merges, vocabulary and post-processor equal those transformers builds from the GGUF,
  /// 514,906 merges; and
  /// transformers' logits on the folder equal its logits on the GGUF exactly). Here: Flare's
  /// tokenizer read from the folder gives transformers' ids for hf-golden.json's 31 strings
  /// and llama.cpp's for the prompts, and the folder's F32 logits are within 1e-3 of
  /// transformers'.
  @Test("flare-convert's HF folder: the bytes transformers checked, its tokens and logits")
  func convertedFolder() throws {
    guard let folder = try gemma3HFFolder() else { return }
    let golden = try #require(try loadFixtureJSON("families/gemma3-270m.json")["converted"])
    #expect(golden["merges_equal_transformers"] == .bool(true))
    #expect(golden["vocab_equal_transformers"] == .bool(true))
    #expect(golden["post_processor_equal_transformers"] == .bool(true))
    for (file, key) in [
      ("tokenizer.json", "tokenizer_json_crc32"), ("model.safetensors", "model_safetensors_crc32"),
    ] {
      let bytes = try MappedFile(path: "\(folder)/\(file)")
      #expect(
        UInt64(CRC32.checksum(bytes.bytes)) == golden[key]?.uint64Value,
        "\(file) is not the file transformers was checked on")
    }
    let tokenizer = try Tokenizer.load(folder: folder)
    let strings = try #require(golden["strings"]?.arrayValue).compactMap(\.stringValue)
    let ids = try #require(golden["ids"]?.arrayValue)
    #expect(strings.count == 31 && ids.count == 31)
    for (text, expected) in zip(strings, ids) {
      #expect(
        tokenizer.encode(text, addSpecial: false, parseSpecial: true)
          == expected.arrayValue?.compactMap(\.intValue), "\(text.debugDescription)")
    }
    let model = try LlamaModel(path: folder)
    let (cases, stride) = try Self.cases()
    for c in cases {
      #expect(tokenizer.encode(c.text) == c.ids, "\(c.text)")
      let logits = try lastLogits(model, c.ids)
      var worst: Float = 0
      for (id, logit) in c.top { worst = max(worst, abs(logits[id] - logit)) }
      for (i, value) in c.strided.enumerated() {
        worst = max(worst, abs(logits[i * stride] - value))
      }
      #expect(worst <= 1e-3, "\(c.text): max |Δ| \(worst)")
      print("gemma3-270m HF folder '\(c.text)': max |Δ| from transformers \(worst)")
    }
  }

  /// The folder's SentencePiece model: its tokenizer.model is the file
  /// `make_spm_fixtures.py --gemma3` built from the GGUF with sentencepiece's protobuf module
  /// (CRC-32; 262,144 pieces), with which sentencepiece gives the ids recorded in
  /// gemma3-270m-spm.json, and Flare's GGUF tokenizer (llama.cpp's ids) gives them too, special
  /// tokens read as text as sentencepiece reads them. Back to GGUF, llama.cpp's converter's
  /// way, every tokenizer key equals the original file's: tokens, scores, types, special ids,
  /// add flags.
  @Test(
    "flare-convert's HF folder: its tokenizer.model, and back to a GGUF with the same vocabulary")
  func convertedFolderSentencePiece() throws {
    guard let folder = try gemma3HFFolder(), let path = try requireGemma3GGUF() else { return }
    let golden = try loadFixtureJSON("families/gemma3-270m-spm.json")
    let written = try readSmallFile("\(folder)/tokenizer.model")
    #expect(written.count == golden["hf_tokenizer_model_bytes"]?.intValue)
    #expect(
      UInt64(CRC32.checksum(written)) == golden["hf_tokenizer_model_crc32"]?.uint64Value,
      "tokenizer.model is not the file sentencepiece was checked on")
    let original = try GGUFFile(path: path)
    let tokenizer = try Tokenizer.load(gguf: original)
    let strings = try #require(
      try loadFixtureJSON("tokenizers/hf-golden.json")["strings"]?.arrayValue
    ).compactMap(\.stringValue)
    let ids = try #require(golden["ids"]?.arrayValue)
    #expect(strings.count == 31 && ids.count == 31)
    for (text, expected) in zip(strings, ids) {
      #expect(
        tokenizer.encode(text, addSpecial: false) == expected.arrayValue?.compactMap(\.intValue),
        "\(text.debugDescription)")
    }
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let back = try runTool("flare-convert", [folder, "\(scratch)/back.gguf", "-q"])
    try #require(back.status == 0, "\(back.stderr)")
    let converted = try GGUFFile(path: "\(scratch)/back.gguf")
    func keys(_ file: GGUFFile) -> [String] {
      file.metadata.map(\.key).filter { $0.hasPrefix("tokenizer.") }.sorted()
    }
    #expect(keys(converted) == keys(original))
    for key in keys(original) {
      #expect(
        sameValue(try #require(original.value(key)), try #require(converted.value(key))),
        "\(key) differs after GGUF → HF → GGUF")
    }
  }

  /// Equal values, strings compared code point for code point.
  func sameValue(_ a: GGUFValue, _ b: GGUFValue) -> Bool {
    switch (a, b) {
    case (.array(let ta, let ia), .array(let tb, let ib)):
      return ta == tb && ia.count == ib.count && zip(ia, ib).allSatisfy { sameValue($0, $1) }
    case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
    case (.float32(let x), .float32(let y)): return x.bitPattern == y.bitPattern
    case (.bool(let x), .bool(let y)): return x == y
    default: return a.type == b.type && a.integerValue != nil && a.integerValue == b.integerValue
    }
  }

  /// Quantized compute (llama.cpp's arithmetic: activations rounded to 8 bits per block, its
  /// F16 GELU table; attention's products in Flare's fixed order): the greedy continuation
  /// equals llama.cpp's on the same file for every step on which llama.cpp agrees with itself.
  /// Both sides round activations to 8 bits, so any change in the order of float additions
  /// redraws the rounding: llama.cpp's own continuation changes when it evaluates the prompt one
  /// token at a time instead of as one batch (the golden's `llamacpp_token_by_token`: its
  /// prompt-end logits move by up to 0.57 over its top 20, and two of the four continuations
  /// part at step 5, where its two best logits lie 0.014 and 0.061 apart). Up to the step where
  /// llama.cpp's two evaluation orders part, Flare's tokens must equal them; the agreement over
  /// all 16 steps is reported (and must be at least llama.cpp's agreement with itself). Flare's
  /// logits here are the same bits on every x86 CPU (its kernels give equal results for every
  /// instruction set, and no BLAS call is on this path), so the outcome is the same on an
  /// Intel Xeon and an AMD EPYC (`machineIndependent` checks it with the portable and AVX2
  /// kernels and OpenBLAS's Haswell kernels forced). Golden made on an AMD EPYC (Zen 4);
  /// llama.cpp's batched continuations equal those an Intel Xeon gave it before.
  @Test(
    "quantized compute: greedy continuation equals llama.cpp's wherever llama.cpp agrees with itself"
  )
  func greedy() throws {
    guard let path = try requireGemma3GGUF() else { return }
    let model = try LlamaModel(path: path, compute: .quantized)
    let golden = try #require(try loadFixtureJSON("families/gemma3-270m.json")["cases"]?.arrayValue)
    var (agreed, total, llamaCppSelf) = (0, 0, 0)
    for (c, item) in zip(try Self.cases().cases, golden) {
      let selfAgreement = try #require(
        item["llamacpp_token_by_token"]?["agrees_with_batched_for"]?.intValue)
      let cache = model.makeCache(batch: 1, capacity: c.ids.count + c.greedy.count)
      var logits = try model.forward(tokens: [c.ids], cache: cache)
      let deltas = c.llamaCppTop.map { abs(logits[$0.id] - $0.logit) }.sorted()
      #expect(deltas.last ?? 1 < 0.75, "\(c.text): \(deltas) from llama.cpp's top 20")
      var produced: [Int] = []
      for _ in c.greedy {
        let next = Sampler.argmax(logits[...])
        produced.append(next)
        logits = try model.forward(tokens: [[next]], cache: cache)
      }
      let agree = zip(produced, c.greedy).prefix { $0 == $1 }.count
      agreed += agree
      total += c.greedy.count
      llamaCppSelf += selfAgreement
      print(
        "gemma3-270m '\(c.text)': greedy agrees with llama.cpp for \(agree) of \(c.greedy.count) tokens (llama.cpp with itself: \(selfAgreement))"
      )
      #expect(
        Array(produced.prefix(selfAgreement)) == Array(c.greedy.prefix(selfAgreement)),
        "\(c.text): \(produced) vs llama.cpp \(c.greedy)")
    }
    print(
      "gemma3-270m: greedy agreement \(agreed) of \(total) tokens (llama.cpp's two evaluation orders: \(llamaCppSelf))"
    )
    #expect(agreed >= llamaCppSelf)
  }

  /// The same logits on every x86 CPU: `flare-eval logits` with the kernels this CPU picks, and
  /// with the portable C kernels and OpenBLAS's Haswell (AVX2) kernels forced (what an AMD EPYC
  /// without AVX-512 runs), print the same JSON. Oracle: the run itself; tolerance: none.
  @Test("quantized compute: the same logits bit for bit whatever kernels the CPU selects")
  func machineIndependent() throws {
    guard let path = try requireGemma3GGUF() else { return }
    let arguments = [
      "logits", "--model", path, "--prompt", "The capital of France is", "--top", "40", "--json",
    ]
    var outputs: [String] = []
    for forced in [
      [:], ["FLARE_KERNELS": "avx2", "OPENBLAS_CORETYPE": "Haswell"],
      ["FLARE_KERNELS": "scalar", "OPENBLAS_CORETYPE": "Haswell"],
    ] as [[String: String]] {
      var environment = ProcessInfo.processInfo.environment
      environment.merge(forced) { _, new in new }
      let result = try runTool("flare-eval", arguments, environment: environment)
      try #require(result.status == 0, "\(forced): \(result.stderr)")
      outputs.append(result.stdout)
    }
    #expect(outputs.allSatisfy { $0 == outputs[0] }, "\(outputs)")
  }
}
