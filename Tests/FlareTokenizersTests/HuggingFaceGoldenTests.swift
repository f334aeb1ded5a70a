import FlareCore
import FlareGGUF
import FlareTokenizers
import Testing
import _FlareTestSupport

/// Oracle: Hugging Face `tokenizers` 0.23.3, through `Fixtures/tokenizers/make_golden.py`,
/// which wrote `Fixtures/tokenizers/hf-golden.json`: 31 strings (English, Spanish, German,
/// Chinese, Japanese, Arabic, Hindi, Korean, Russian, emoji, digits, whitespace runs, accents,
/// special-token strings, a 120-character word, control characters) encoded with and without
/// special tokens and with special tokens taken literally, and decoded with and without them.
/// Tolerance: none (every id, every decoded character).
@Suite("Hugging Face tokenizers goldens")
struct HuggingFaceGoldenTests {
  static let golden: JSONValue = (try? loadFixtureJSON("tokenizers/hf-golden.json")) ?? .null
  static var strings: [String] { golden["strings"]?.arrayValue?.compactMap(\.stringValue) ?? [] }

  static var smolLM2GGUF: String {
    "\(modelCache)/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
  }
  static var xlmrJSON: String { "\(modelCache)/models/xlmr-tokenizer/tokenizer.json" }

  /// Whether `path` is there; fails the test (or skips it when `FLARE_OFFLINE=1`).
  static func present(_ path: String, fetch script: String) -> Bool {
    let exists = fileExists(path)
    if offline && !exists { return false }
    #expect(exists, "\(path) is missing: run \(script)")
    return exists
  }

  /// Checks every golden case of `name` against `tokenizer`.
  static func check(_ tokenizer: Tokenizer, _ name: String, decoding: Bool = true) throws {
    let cases = try #require(golden["tokenizers"]?[name]?["cases"]?.arrayValue)
    #expect(cases.count == strings.count && !cases.isEmpty)
    func ids(_ value: JSONValue?) -> [Int] { value?.arrayValue?.compactMap(\.intValue) ?? [] }
    for (text, expected) in zip(strings, cases) {
      let label = "\(name): \(text.debugDescription)"
      let full = tokenizer.encode(text, addSpecial: true, parseSpecial: true)
      #expect(full == ids(expected["ids"]), "\(label) (with special tokens)")
      #expect(
        tokenizer.encode(text, addSpecial: false, parseSpecial: true) == ids(expected["ids_plain"]),
        "\(label) (without special tokens)")
      #expect(
        tokenizer.encode(text, addSpecial: false, parseSpecial: false)
          == ids(expected["ids_literal"]), "\(label) (special tokens as text)")
      if decoding {
        #expect(tokenizer.decode(full) == expected["decoded"]?.stringValue, "\(label) (decode)")
        #expect(
          tokenizer.decode(full, skipSpecial: true) == expected["decoded_skip"]?.stringValue,
          "\(label) (decode, skipping special tokens)")
      }
    }
  }

  @Test("all-MiniLM-L6-v2 tokenizer.json (WordPiece, uncased)")
  func miniLMJSON() throws {
    guard Self.present("\(miniLMFolder)/tokenizer.json", fetch: "scripts/fetch-models.sh") else {
      return
    }
    let tokenizer = try Tokenizer.load(tokenizerJSON: "\(miniLMFolder)/tokenizer.json")
    #expect(tokenizer.kind == .wordPiece)
    #expect(tokenizer.vocabularySize == 30522)
    #expect(tokenizer.bos == 101 && tokenizer.eos == 102 && tokenizer.unknown == 100)
    #expect(tokenizer.pad == 0)
    try Self.check(tokenizer, "minilm")
    // The folder prefers tokenizer.json and adds the config's names.
    let folder = try Tokenizer.load(folder: miniLMFolder)
    #expect(folder.bos == 101 && folder.eos == 102 && folder.pad == 0)
    try Self.check(folder, "minilm")
  }

  @Test("all-MiniLM-L6-v2 vocab.txt gives the same ids")
  func miniLMVocab() throws {
    guard Self.present("\(miniLMFolder)/vocab.txt", fetch: "scripts/fetch-models.sh") else {
      return
    }
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    writeBytes(fileBytes("\(miniLMFolder)/vocab.txt"), to: "\(folder)/vocab.txt")
    writeBytes(
      fileBytes("\(miniLMFolder)/tokenizer_config.json"), to: "\(folder)/tokenizer_config.json")
    let tokenizer = try Tokenizer.load(folder: folder)
    #expect(tokenizer.kind == .wordPiece && tokenizer.vocabularySize == 30522)
    #expect(tokenizer.bos == 101 && tokenizer.eos == 102 && tokenizer.unknown == 100)
    try Self.check(tokenizer, "minilm")
  }

  /// SmolLM2 from the GGUF itself must agree with HF on the tokenizer.json flare-convert
  /// rebuilt from that GGUF.
  @Test("SmolLM2 from its GGUF (byte-level BPE, smollm pre-tokenizer)")
  func smolLM2GGUF() throws {
    guard Self.present(Self.smolLM2GGUF, fetch: "scripts/fetch-models.sh") else { return }
    let tokenizer = try Tokenizer.load(gguf: try GGUFFile(path: Self.smolLM2GGUF))
    #expect(tokenizer.kind == .byteLevelBPE)
    #expect(tokenizer.vocabularySize == 49152)
    #expect(tokenizer.bos == 1 && tokenizer.eos == 2 && tokenizer.unknown == 0)
    #expect(tokenizer.pad == 2)
    #expect(
      tokenizer.encode("Once upon a time, there was a little", addSpecial: false)
        == [6403, 1980, 253, 655, 28, 665, 436, 253, 1838])
    // add_bos_token is false: nothing is added.
    #expect(
      tokenizer.encode("Once upon a time")
        == tokenizer.encode("Once upon a time", addSpecial: false))
    try Self.check(tokenizer, "smollm2")
  }

  /// The HF folder flare-convert writes from the SmolLM2 GGUF (made on first use).
  @Test("SmolLM2 tokenizer.json written by flare-convert")
  func smolLM2JSON() throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let tokenizer = try Tokenizer.load(folder: folder)
    #expect(tokenizer.kind == .byteLevelBPE)
    #expect(tokenizer.bos == 1 && tokenizer.eos == 2 && tokenizer.unknown == 0)
    #expect(
      tokenizer.encode("Once upon a time, there was a little", addSpecial: false)
        == [6403, 1980, 253, 655, 28, 665, 436, 253, 1838])
    try Self.check(tokenizer, "smollm2")
  }

  /// llama.cpp ships no test vectors for its XLM-R-vocabulary GGUF (`nomic-bert-moe`, `t5`
  /// model, 250,048 pieces whose first 250,002 are XLM-R's). Its ids must equal the HF XLM-R
  /// goldens, except that llama.cpp's `remove_extra_whitespaces` drops text that is only
  /// spaces (HF keeps a "▁", id 6) and its `<mask>` swallows the space before it.
  @Test("XLM-R GGUF (nomic-bert-moe, llama.cpp's Unigram) against the HF goldens")
  func xlmrGGUF() throws {
    let path = "\(modelCache)/tokenizer-tests/ggml-vocab-nomic-bert-moe.gguf"
    guard Self.present(path, fetch: "scripts/fetch-tokenizer-tests.sh") else { return }
    let tokenizer = try Tokenizer.load(gguf: try GGUFFile(path: path))
    #expect(tokenizer.kind == .unigram && tokenizer.vocabularySize == 250_048)
    #expect(tokenizer.bos == 0 && tokenizer.eos == 2 && tokenizer.unknown == 3)
    let cases = try #require(Self.golden["tokenizers"]?["xlmr"]?["cases"]?.arrayValue)
    let spaceOnly: Set<String> = [
      " Hello  world  ", "   leading and trailing spaces   ",
      "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
      "<s>hello</s> <mask> <unk> <pad>",
    ]
    for (text, expected) in zip(Self.strings, cases) {
      var want = expected["ids"]?.arrayValue?.compactMap(\.intValue) ?? []
      if spaceOnly.contains(text) { want.removeAll { $0 == 6 } }
      #expect(
        tokenizer.encode(text, addSpecial: true, parseSpecial: true) == want,
        "\(text.debugDescription)")
    }
  }

  @Test("XLM-R tokenizer.json (SentencePiece Unigram, precompiled charsmap)")
  func xlmr() throws {
    guard Self.present(Self.xlmrJSON, fetch: "scripts/fetch-tokenizer-tests.sh") else { return }
    let tokenizer = try Tokenizer.load(tokenizerJSON: Self.xlmrJSON)
    #expect(tokenizer.kind == .unigram)
    #expect(tokenizer.vocabularySize == 250_002)
    #expect(tokenizer.bos == 0 && tokenizer.eos == 2 && tokenizer.unknown == 3)
    #expect(tokenizer.pad == 1)
    #expect(tokenizer.piece(6) == "\u{2581}")
    try Self.check(tokenizer, "xlmr")
  }
}
