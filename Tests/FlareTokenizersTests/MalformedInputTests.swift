import FlareCore
import FlareGGUF
import FlareTokenizers
import Testing
import _FlareTestSupport

/// Malformed vocabularies must fail with a `FlareError` that names the file and the key, never
/// trap. Oracle: the rules of `llama_vocab::impl::load` and HF `tokenizers` (merges must name
/// vocabulary pieces, ids must lie inside the vocabulary), made strict where llama.cpp only
/// warns. Tolerance: the error code must match exactly.
@Suite("malformed tokenizers")
struct MalformedInputTests {
  typealias Keys = [GGUFKeyValue]

  static let bpe = Vocabularies.bytePairKeys()
  static let spm = Vocabularies.sentencePieceKeys()

  static let ggufCases: [(String, Keys, FlareError.Code, String)] = [
    (
      "no tokenizer", Vocabularies.replacing(bpe, "tokenizer.ggml.model", with: nil), .missingKey,
      "tokenizer.ggml.model"
    ),
    (
      "unknown model", Vocabularies.replacing(bpe, "tokenizer.ggml.model", with: .string("rwkv")),
      .unsupported, "tokenizer.ggml.model"
    ),
    (
      "model not a string", Vocabularies.replacing(bpe, "tokenizer.ggml.model", with: .uint32(2)),
      .invalidValue, "tokenizer.ggml.model"
    ),
    (
      "no tokens", Vocabularies.replacing(bpe, "tokenizer.ggml.tokens", with: nil), .missingKey,
      "tokenizer.ggml.tokens"
    ),
    (
      "tokens not strings",
      Vocabularies.replacing(bpe, "tokenizer.ggml.tokens", with: Vocabularies.int32s([1, 2])),
      .invalidValue, "tokenizer.ggml.tokens"
    ),
    (
      "empty vocabulary",
      Vocabularies.replacing(spm, "tokenizer.ggml.tokens", with: Vocabularies.strings([])),
      .invalidValue, "tokenizer.ggml.tokens"
    ),
    (
      "no merges", Vocabularies.replacing(bpe, "tokenizer.ggml.merges", with: nil), .missingKey,
      "tokenizer.ggml.merges"
    ),
    (
      "no pre-tokenizer", Vocabularies.replacing(bpe, "tokenizer.ggml.pre", with: nil), .missingKey,
      "tokenizer.ggml.pre"
    ),
    (
      "unknown pre-tokenizer",
      Vocabularies.replacing(bpe, "tokenizer.ggml.pre", with: .string("kimi-k2")), .unsupported,
      "tokenizer.ggml.pre"
    ),
    (
      "merge naming a missing token",
      Vocabularies.replacing(
        bpe, "tokenizer.ggml.merges", with: Vocabularies.strings(["Ġ t", "h zz"])),
      .invalidMerge, "tokenizer.ggml.merges"
    ),
    (
      "merge forming a missing token",
      Vocabularies.replacing(bpe, "tokenizer.ggml.merges", with: Vocabularies.strings(["a b"])),
      .invalidMerge, "tokenizer.ggml.merges"
    ),
    (
      "merge without a space",
      Vocabularies.replacing(bpe, "tokenizer.ggml.merges", with: Vocabularies.strings(["ab"])),
      .invalidMerge, "tokenizer.ggml.merges"
    ),
    (
      "bos id out of range",
      Vocabularies.replacing(bpe, "tokenizer.ggml.bos_token_id", with: .uint32(9999)),
      .tokenOutOfRange, "tokenizer.ggml.bos_token_id"
    ),
    (
      "eos id negative",
      Vocabularies.replacing(spm, "tokenizer.ggml.eos_token_id", with: .int32(-1)),
      .tokenOutOfRange, "tokenizer.ggml.eos_token_id"
    ),
    (
      "unknown id not an integer",
      Vocabularies.replacing(spm, "tokenizer.ggml.unknown_token_id", with: .string("0")),
      .invalidValue, "tokenizer.ggml.unknown_token_id"
    ),
    (
      "token types too few",
      Vocabularies.replacing(spm, "tokenizer.ggml.token_type", with: Vocabularies.int32s([1, 1])),
      .invalidValue, "tokenizer.ggml.token_type"
    ),
    (
      "scores of the wrong type",
      Vocabularies.replacing(
        spm, "tokenizer.ggml.scores", with: Vocabularies.strings(Array(repeating: "1", count: 269))),
      .invalidValue, "tokenizer.ggml.scores"
    ),
    (
      "add_bos_token not a bool",
      Vocabularies.replacing(spm, "tokenizer.ggml.add_bos_token", with: .uint8(1)), .invalidValue,
      "tokenizer.ggml.add_bos_token"
    ),
    (
      "charsmap without a header",
      Vocabularies.sentencePieceKeys(model: "t5") + [
        GGUFKeyValue(
          key: "tokenizer.ggml.precompiled_charsmap", value: .array(.uint8, [.uint8(1), .uint8(2)]))
      ], .invalidValue, "tokenizer.ggml.precompiled_charsmap"
    ),
    (
      "charsmap larger than its blob",
      Vocabularies.sentencePieceKeys(model: "t5") + [
        GGUFKeyValue(
          key: "tokenizer.ggml.precompiled_charsmap",
          value: .array(.uint8, [0xFF, 0xFF, 0, 0, 1, 2, 3, 4].map { .uint8($0) }))
      ], .invalidValue, "tokenizer.ggml.precompiled_charsmap"
    ),
    (
      "unigram without an unknown token",
      [
        GGUFKeyValue(key: "tokenizer.ggml.model", value: .string("t5")),
        GGUFKeyValue(key: "tokenizer.ggml.tokens", value: Vocabularies.strings(["a", "b"])),
      ], .missingKey, "tokenizer.ggml.unknown_token_id"
    ),
  ]

  @Test("a bad GGUF vocabulary fails with a clear error", arguments: ggufCases)
  func gguf(name: String, keys: Keys, code: FlareError.Code, key: String) throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let file = try Vocabularies.gguf(keys, in: folder)
    do {
      _ = try Tokenizer.load(gguf: file)
      Issue.record("\(name): loaded")
    } catch let error as FlareError {
      #expect(error.code == code, "\(name): \(error)")
      #expect(error.path == file.path, "\(name)")
      #expect(error.key == key, "\(name): \(error)")
      #expect(error.message.first?.isLowercase ?? false, "\(name): \(error.message)")
      #expect(!error.message.hasSuffix("."), "\(name): \(error.message)")
    }
  }

  static let jsonCases: [(String, String, FlareError.Code)] = [
    ("not JSON", "{\"model\": ", .invalidValue),
    ("no model", #"{"added_tokens": []}"#, .missingKey),
    ("unknown model", #"{"model": {"type": "WordLevel", "vocab": {"a": 0}}}"#, .unsupported),
    (
      "vocabulary id out of range",
      #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 7}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}}"#,
      .tokenOutOfRange
    ),
    (
      "merge naming a missing token",
      #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a c"]}, "pre_tokenizer": {"type": "ByteLevel"}}"#,
      .invalidMerge
    ),
    (
      "merge of the wrong shape",
      #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]}, "pre_tokenizer": {"type": "ByteLevel"}}"#,
      .invalidMerge
    ),
    (
      "added token id out of range",
      #"{"added_tokens": [{"id": 99999999, "content": "<x>", "special": true}], "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}}"#,
      .tokenOutOfRange
    ),
    (
      "SentencePiece-style BPE",
      #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}}"#,
      .unsupported
    ),
    (
      "unsupported pre-tokenizer regex",
      #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"}, {"type": "ByteLevel", "use_regex": false}]}}"#,
      .unsupported
    ),
    (
      "unigram unknown id out of range",
      #"{"model": {"type": "Unigram", "unk_id": 5, "vocab": [["a", -1.0]]}, "pre_tokenizer": {"type": "Metaspace"}}"#,
      .tokenOutOfRange
    ),
    (
      "unigram entry without a score",
      #"{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["a"]]}, "pre_tokenizer": {"type": "Metaspace"}}"#,
      .invalidValue
    ),
    (
      "wordpiece unknown token missing",
      #"{"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"a": 0}}, "normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "BertPreTokenizer"}}"#,
      .missingKey
    ),
    (
      "post-processor id out of range",
      #"{"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0}}, "normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": {"type": "BertProcessing", "cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}}"#,
      .tokenOutOfRange
    ),
    (
      "unsupported normalizer",
      #"{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["a", -1.0]]}, "normalizer": {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, "pre_tokenizer": {"type": "Metaspace"}}"#,
      .unsupported
    ),
  ]

  @Test("a bad tokenizer.json fails with a clear error", arguments: jsonCases)
  func json(name: String, text: String, code: FlareError.Code) throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let path = "\(folder)/tokenizer.json"
    writeBytes(Array(text.utf8), to: path)
    do {
      _ = try Tokenizer.load(tokenizerJSON: path)
      Issue.record("\(name): loaded")
    } catch let error as FlareError {
      #expect(error.code == code, "\(name): \(error)")
      #expect(error.path == path, "\(name): \(error)")
      #expect(error.message.first?.isLowercase ?? false, "\(name): \(error.message)")
    }
  }

  @Test("a folder without a tokenizer names the folder")
  func emptyFolder() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    #expect(throws: FlareError("tokenizer", .fileNotFound, "")) {
      try Tokenizer.load(folder: folder)
    }
    #expect(throws: FlareError("io", .fileNotFound, "")) {
      try Tokenizer.load(tokenizerJSON: "\(folder)/missing.json")
    }
  }
}
