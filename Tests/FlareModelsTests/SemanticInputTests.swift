import FlareAdapters
import FlareArchitectures
import FlareConvert
import FlareCore
import FlareGGUF
import FlareMerge
import FlareModels
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// What a consumer did with an input: accepted it, or refused it with a ``FlareError``.
enum Verdict: Equatable, CustomStringConvertible {
  case ok
  case refused(code: String, key: String?, tensor: String?)
  /// Anything but a FlareError (always a test failure).
  case foreign(String)

  init(_ body: () throws -> Void) {
    do {
      try body()
      self = .ok
    } catch let error as FlareError {
      self = .refused(code: error.code.name, key: error.key, tensor: error.tensor)
    } catch {
      self = .foreign("\(type(of: error)): \(error)")
    }
  }

  var description: String {
    switch self {
    case .ok: "ok"
    case .refused(let code, let key, let tensor):
      "\(code) key=\(key ?? "-") tensor=\(tensor ?? "-")"
    case .foreign(let text): "non-FlareError \(text)"
    }
  }
}

/// The error a consumer threw, if it threw a FlareError.
func flareError(_ body: () throws -> Void) -> FlareError? {
  do {
    try body()
    return nil
  } catch let error as FlareError {
    return error
  } catch {
    return nil
  }
}

/// The consumers of a Llama GGUF file: the checked config alone, the config with the whole
/// model's tensors, flare-eval's model (loaded and run on two tokens), flare-convert (GGUF → HF)
/// and flare-merge (a LoRA on layer 0's Q and K), each in-process.
struct GGUFConsumers {
  let adapter: PEFTAdapter
  let work: String

  /// Runs every consumer on `path`; `full` needs the whole model, `partial` what is present.
  func run(_ path: String) -> (full: [String: Verdict], partial: [String: Verdict]) {
    let converted = "\(work)/converted"
    let merged = "\(work)/merged.gguf"
    removeTree(converted)
    removeTree(merged)
    var full: [String: Verdict] = [:]
    var partial: [String: Verdict] = [:]
    partial["config"] = Verdict { _ = try DecoderConfig(gguf: try GGUFFile(path: path)) }
    full["config+tensors"] = Verdict {
      let file = try GGUFFile(path: path)
      let config = try DecoderConfig(gguf: file)
      try config.checkTensors(config.hfShapes(of: file), complete: true)
    }
    full["eval"] = Verdict {
      let model = try LlamaModel(path: path)
      let logits = try model.forward(
        tokens: [[0, 1]], cache: model.makeCache(batch: 1, capacity: 2))
      guard logits.count == model.config.vocabSize else {
        throw FlareError("test", "logitCount", "\(logits.count) logits")
      }
    }
    full["convert"] = Verdict {
      _ = try Converter.ggufToHF(
        try GGUFFile(path: path), folder: converted, outtype: .f32, overwrite: false)
    }
    if full["convert"] != .ok && !folderContents(converted).isEmpty {
      full["convert"] = .foreign("a refused conversion left \(folderContents(converted))")
    }
    partial["merge"] = Verdict {
      let base = try Merger.openBase(path)
      let adapters = [WeightedAdapter(adapter: adapter)]
      let plan = try Merger.plan(base: base, adapters: adapters, outtype: nil)
      _ = try Merger.merge(
        base: base, basePath: path, adapters: adapters, plan: plan, output: merged,
        outtype: nil, overwrite: false, threads: 1)
    }
    if partial["merge"] != .ok && fileExists(merged) {
      partial["merge"] = .foreign("a refused merge left its output")
    }
    return (full, partial)
  }
}

/// The consumers of an HF Llama folder: the checked config with the tensors, flare-eval's model
/// and flare-convert (HF → GGUF).
func hfLlamaConsumers(_ folder: String, work: String) -> [String: Verdict] {
  let output = "\(work)/converted.gguf"
  removeTree(output)
  var verdicts: [String: Verdict] = [:]
  verdicts["config+tensors"] = Verdict {
    let path = "\(folder)/config.json"
    let config = try DecoderConfig(
      hfConfig: try JSONParser.parse(file: path, domain: "config"), path: path)
    let model = try SafetensorsModel.open(folder)
    try config.checkTensors(model.tensors.map { ($0.name, $0.shape) }, complete: true)
  }
  verdicts["eval"] = Verdict {
    let model = try LlamaModel(path: folder)
    let logits = try model.forward(tokens: [[0, 1]], cache: model.makeCache(batch: 1, capacity: 2))
    guard logits.count == model.config.vocabSize else {
      throw FlareError("test", "logitCount", "\(logits.count) logits")
    }
  }
  verdicts["convert"] = Verdict {
    _ = try Converter.hfToGGUF(
      folder: folder, output: output, outtype: .auto, tokenizerPre: nil, overwrite: false)
  }
  if verdicts["convert"] != .ok && fileExists(output) {
    verdicts["convert"] = .foreign("a refused conversion left its output")
  }
  return verdicts
}

/// An HF Llama folder: `config` beside the tensors of `Fixtures/<base>` and a small tokenizer.
func makeLlamaFolder(_ folder: String, config: JSONValue, base: String) throws {
  try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
  removeTree("\(folder)/model.safetensors")
  try FileManager.default.createSymbolicLink(
    atPath: "\(folder)/model.safetensors",
    withDestinationPath: fixturePath("\(base)/model.safetensors"))
  writeJSON(config, to: "\(folder)/config.json")
  writeBytes(Array(syntheticBPETokenizerJSON().utf8), to: "\(folder)/tokenizer.json")
}

/// Oracle: the verdicts written in the three semantic corpora (a FlareError code with the key and
/// tensor it names, or `ok`), derived from the rules of `formats/models.md` ("Checks"); each case
/// changes one or two values of a valid fixture model. Every consumer must give the case's
/// verdict: the same code, key and tensor, never a trap, and nothing left behind on refusal.
@Suite("semantic corpora: values that parse but make no sense")
struct SemanticCorpusTests {
  static let gguf = SemanticCase.load("gguf/malformed/semantic.json")
  static let llama = SemanticCase.load("llama/malformed-config.json")
  static let encoder = SemanticCase.load("encoders/malformed-config.json")

  static func expected(_ verdict: String, _ testCase: SemanticCase) -> Verdict {
    verdict == "ok" ? .ok : .refused(code: verdict, key: testCase.key, tensor: testCase.tensor)
  }

  @Test("the corpora cover each kind of value and each consumer's rules")
  func coverage() {
    #expect(Self.gguf.cases.count >= 40 && Self.llama.cases.count >= 40)
    #expect(Self.encoder.cases.count >= 20)
    let all = Self.gguf.cases + Self.llama.cases + Self.encoder.cases
    for word in ["minus", "zero", "huge", "string", "float", "mismatch", "non-divis", "missing"] {
      #expect(all.contains { $0.name.contains(word) }, "no case named '\(word)'")
    }
    for code in ["ok", "invalidArgument", "unsupported", "tensorNotFound"] {
      #expect(all.contains { $0.expect == code }, "no case expecting \(code)")
    }
    #expect(Self.gguf.cases.contains { $0.expect != $0.expectPartial })
  }

  @Test("GGUF keys: tiny-llama.gguf with one key changed", arguments: gguf.cases)
  func ggufCase(_ testCase: SemanticCase) throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let source = try GGUFFile(path: fixturePath(Self.gguf.base))
    let metadata = testCase.edit(
      editedMetadata(
        source.metadata, set: SemanticCase.baseEdits("gguf/malformed/semantic.json"), drop: []))
    let path = "\(work)/case.gguf"
    try writeGGUF(copying: source, metadata: metadata, to: path)
    let written = try GGUFFile(path: path)
    let adapterFolder = "\(work)/adapter"
    try writeTinyLlamaLoRA(folder: adapterFolder, hidden: 64, qRows: 64, kRows: 32)
    let consumers = GGUFConsumers(adapter: try PEFTAdapter(folder: adapterFolder), work: work)
    let (full, partial) = consumers.run(path)
    for (name, verdict) in full {
      let expected = testCase.expectBy[name] ?? testCase.expect
      #expect(verdict == Self.expected(expected, testCase), "\(name)")
    }
    for (name, verdict) in partial {
      let expected = testCase.expectBy[name] ?? testCase.expectPartial
      #expect(verdict == Self.expected(expected, testCase), "\(name)")
    }
    // The error names the file and, for a key the file holds, the key's byte offset.
    if let error = flareError({ _ = try LlamaModel(path: path) }) {
      #expect(error.path == path, "\(error)")
      if let key = error.key, let entry = written.metadata.first(where: { $0.key == key }) {
        #expect(error.offset == entry.offset, "\(error)")
      }
      #expect("\(error)".contains(error.tensor ?? error.key ?? "?"), "\(error)")
    }
  }

  @Test(
    "config.json fields: Fixtures/peft/base-llama with one field changed", arguments: llama.cases)
  func llamaCase(_ testCase: SemanticCase) throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let base = try loadFixtureJSON("\(Self.llama.base)/config.json")
    let folder = "\(work)/model"
    try makeLlamaFolder(folder, config: testCase.edit(base), base: Self.llama.base)
    for (name, verdict) in hfLlamaConsumers(folder, work: work) {
      #expect(verdict == Self.expected(testCase.expect, testCase), "\(name)")
    }
    if let error = flareError({ _ = try LlamaModel(path: folder) }) {
      #expect(error.path == "\(folder)/config.json", "\(error)")
    }
  }

  @Test(
    "encoder config.json fields: Fixtures/encoders/tiny-bert-cls with one field changed",
    arguments: encoder.cases)
  func encoderCase(_ testCase: SemanticCase) throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let base = try loadFixtureJSON("\(Self.encoder.base)/config.json")
    try FileManager.default.createSymbolicLink(
      atPath: "\(work)/model.safetensors",
      withDestinationPath: fixturePath("\(Self.encoder.base)/model.safetensors"))
    writeJSON(testCase.edit(base), to: "\(work)/config.json")
    let verdict = Verdict {
      let model = try BERTModel.load(path: work)
      let rows = try model.embed(tokens: [[2, 3, 4]], pooling: .mean, normalize: false)
      guard rows.count == 1, rows[0].count == model.config.hidden else {
        throw FlareError("test", "embeddingShape", "\(rows.count) rows")
      }
    }
    #expect(verdict == Self.expected(testCase.expect, testCase))
    if let error = flareError({ _ = try BERTModel.load(path: work) }) {
      #expect(error.path?.hasPrefix(work) == true, "\(error)")
    }
  }
}
