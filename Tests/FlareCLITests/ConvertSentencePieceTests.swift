import FlareCore
import FlareGGUF
import FlareTokenizers
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareConvert

/// A GGUF's tokenizer keys against the golden's (`make_spm_fixtures.py`'s dump of them):
/// the same keys, and every value equal (strings code point for code point, scores as F32).
/// Returns the differing keys.
func tokenizerKeyDifferences(_ file: GGUFFile, _ golden: JSONValue) -> [String] {
  func same(_ value: GGUFValue, _ json: JSONValue) -> Bool {
    switch value {
    case .array(_, let items):
      guard let expected = json.arrayValue, expected.count == items.count else { return false }
      return zip(items, expected).allSatisfy { same($0, $1) }
    case .string(let text): return json.stringValue?.sameScalars(text) == true
    case .bool(let flag): return json.boolValue == flag
    case .float32(let x): return json.doubleValue.map { Float($0) == x } == true
    default: return value.integerValue != nil && value.integerValue == json.intValue
    }
  }
  let members = golden.objectMembers ?? []
  let expectedKeys = Set(members.map(\.0))
  var differing = file.metadata.map(\.key).filter {
    $0.hasPrefix("tokenizer.") && !expectedKeys.contains($0)
  }
  for (key, json) in members {
    guard let value = file.value(key), same(value, json) else {
      differing.append(key)
      continue
    }
  }
  return differing
}

/// HF folders whose tokenizer is a SentencePiece `tokenizer.model` (Gemma 3, Gemma 2, Llama 2
/// form; `Fixtures/families/spm-*`), converted to GGUF and back.
///
/// Oracles (`Fixtures/families/spm-golden.json`, `make_spm_fixtures.py`): llama.cpp's
/// `convert_hf_to_gguf.py` (llama-cpp-python 0.3.36's sdist) on the same folders, every
/// `tokenizer.*` key; the `sentencepiece` library's ids for hf-golden.json's 31 strings; the
/// tokenizer.model the GGUF → HF conversion writes, built by the script with sentencepiece's
/// own protobuf module and checked there to load and tokenize as the trained model (its
/// CRC-32). Tolerance: none (keys, ids and bytes equal).
@Suite("flare-convert with SentencePiece tokenizer.model files")
struct ConvertSentencePieceTests {
  static let styles = ["gemma3", "gemma2", "llama2"]

  static func golden(_ style: String) throws -> JSONValue {
    try #require(try loadFixtureJSON("families/spm-golden.json")[style])
  }

  static func strings() throws -> [String] {
    try #require(try loadFixtureJSON("tokenizers/hf-golden.json")["strings"]?.arrayValue)
      .compactMap(\.stringValue)
  }

  @Test("HF → GGUF: every tokenizer key equals llama.cpp's converter's", arguments: styles)
  func toGGUF(style: String) throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let out = "\(scratch)/\(style).gguf"
    let result = try runTool("flare-convert", [fixturePath("families/spm-\(style)"), out, "-q"])
    try #require(result.status == 0, "\(result.stderr)")
    let golden = try Self.golden(style)
    let file = try GGUFFile(path: out)
    let differing = tokenizerKeyDifferences(file, try #require(golden["gguf"]))
    #expect(differing.isEmpty, "\(style): \(differing)")
    // The vocabulary tokenizes as SentencePiece does with the folder's model.
    let tokenizer = try Tokenizer.load(gguf: file)
    let ids = try #require(golden["ids"]?.arrayValue)
    for (text, expected) in zip(try Self.strings(), ids) {
      #expect(
        tokenizer.encode(text, addSpecial: false) == expected.arrayValue?.compactMap(\.intValue),
        "\(style) \(text.debugDescription)")
    }
  }

  @Test(
    "GGUF → HF writes the tokenizer.model sentencepiece checked; back to GGUF, the same keys",
    arguments: styles)
  func roundTrip(style: String) throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let golden = try Self.golden(style)
    for (input, output) in [
      (fixturePath("families/spm-\(style)"), "\(scratch)/a.gguf"),
      ("\(scratch)/a.gguf", "\(scratch)/hf"), ("\(scratch)/hf", "\(scratch)/b.gguf"),
    ] {
      let result = try runTool("flare-convert", [input, output, "-q"])
      try #require(result.status == 0, "\(input): \(result.stderr)")
    }
    let written = try readSmallFile("\(scratch)/hf/tokenizer.model")
    #expect(
      UInt64(CRC32.checksum(written)) == golden["hf_tokenizer_model_crc32"]?.uint64Value,
      "\(style): tokenizer.model is not the file sentencepiece was checked on")
    // It reads back as what it says.
    let model = try SentencePieceModelFile(bytes: written, path: "tokenizer.model")
    #expect(model.serialized() == written)
    let keys = try #require(golden["gguf"])
    #expect(model.pieces.count == keys["tokenizer.ggml.tokens"]?.arrayValue?.count)
    let differing = tokenizerKeyDifferences(try GGUFFile(path: "\(scratch)/b.gguf"), keys)
    #expect(differing.isEmpty, "\(style) after GGUF → HF → GGUF: \(differing)")
  }

  /// Without tokenizer.model the folder's tokenizer.json is read, and a SentencePiece-style one
  /// (byte fallback) is refused: the scores llama.cpp tokenizes with are only in the model.
  @Test("no tokenizer.model: a SentencePiece-style tokenizer.json alone is refused")
  func refusals() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    for style in Self.styles {
      let folder = "\(scratch)/\(style)"
      try FileManager.default.copyItem(
        atPath: fixturePath("families/spm-\(style)"), toPath: folder)
      try FileManager.default.removeItem(atPath: "\(folder)/tokenizer.model")
      let result = try runTool("flare-convert", [folder, "\(scratch)/\(style).gguf"])
      #expect(result.status == 1, "\(style): \(result.stderr)")
      #expect(result.stderr.contains("SentencePiece-style BPE"), "\(style): \(result.stderr)")
      #expect(!FileManager.default.fileExists(atPath: "\(scratch)/\(style).gguf"))
    }
  }

  /// Damaged `tokenizer.model` files: each error names the file and the byte offset, and no
  /// GGUF is written. Oracle: the protobuf wire format (each case is built to break one rule).
  @Test("a damaged tokenizer.model: a clear error with the byte offset, nothing written")
  func damaged() throws {
    let original = try readSmallFile(fixturePath("families/spm-gemma3/tokenizer.model"))
    var badPiece: [UInt8] = []
    ProtoWriter.bytes(Array("a".utf8), field: 1, into: &badPiece)
    ProtoWriter.varint(9, field: 3, into: &badPiece)
    var badType: [UInt8] = []
    ProtoWriter.bytes(badPiece, field: 1, into: &badType)
    var badUTF8: [UInt8] = []
    ProtoWriter.bytes([0x0A, 0x02, 0xC3, 0x28], field: 1, into: &badUTF8)
    let cases: [(String, [UInt8], String)] = [
      ("truncated", Array(original.prefix(original.count - 3)), "runs past the end"),
      ("huge length", [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F], "runs past the end"),
      ("long varint", [0x48] + Array(repeating: 0xFF, count: 10) + [0x01], "longer than 64 bits"),
      ("group", [0x0B, 0x0C], "wire type 3"),
      ("bad type", badType, "has type 9"),
      ("bad UTF-8", badUTF8, "not valid UTF-8"),
      ("empty", [], "holds no pieces"),
    ]
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let folder = "\(scratch)/model"
    try FileManager.default.copyItem(atPath: fixturePath("families/spm-gemma3"), toPath: folder)
    for (name, bytes, message) in cases {
      #expect(throws: FlareError.self, "\(name)") {
        try SentencePieceModelFile(bytes: bytes, path: "x")
      }
      try Data(bytes).write(to: URL(fileURLWithPath: "\(folder)/tokenizer.model"))
      let result = try runTool("flare-convert", [folder, "\(scratch)/out.gguf"])
      #expect(result.status == 1, "\(name): \(result.stderr)")
      #expect(
        result.stderr.contains("tokenizer.model: convert error:"), "\(name): \(result.stderr)")
      #expect(result.stderr.contains(message), "\(name): \(result.stderr)")
      if !bytes.isEmpty {
        #expect(result.stderr.contains("(at byte "), "\(name): \(result.stderr)")
      }
      #expect(!FileManager.default.fileExists(atPath: "\(scratch)/out.gguf"), "\(name)")
    }
  }
}
