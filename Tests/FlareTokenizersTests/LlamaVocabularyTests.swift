import FlareCore
import FlareGGUF
import FlareTokenizers
import Testing
import _FlareTestSupport

/// Oracle: llama.cpp's own tokenizer test vectors, shipped in the llama-cpp-python 0.3.36 sdist
/// (`vendor/llama.cpp/models/ggml-vocab-<name>.gguf` with `.gguf.inp` and `.gguf.out`) and
/// extracted by `scripts/fetch-tokenizer-tests.sh`. Each case is run as llama.cpp's
/// `tests/test-tokenizer-0.cpp` runs it: the `.inp` file split on `"\n__ggml_vocab_test__\n"`,
/// `add_special = false`, `parse_special = false`, and the ids compared with the `.out` line.
/// Tolerance: none (every id of every case).
@Suite("llama.cpp tokenizer test vectors")
struct LlamaVocabularyTests {
  static var folder: String { "\(modelCache)/tokenizer-tests" }

  /// Vocabularies Flare supports, with their number of cases.
  static let supported: [(String, Int)] = [
    ("llama-spm", 46), ("phi-3", 46), ("llama-bpe", 46), ("gpt-2", 46), ("qwen2", 46),
    ("qwen35", 50), ("bert-bge", 46), ("falcon", 46), ("mpt", 46), ("starcoder", 46),
    ("refact", 46), ("deepseek-coder", 46), ("deepseek-llm", 46), ("command-r", 46),
    ("gemma-4", 46),
  ]

  /// Byte-level and SentencePiece BPE vocabularies are lossless: `decode(encode(x)) == x`.
  static let lossless: Set<String> = [
    "llama-spm", "phi-3", "llama-bpe", "gpt-2", "qwen2", "qwen35", "falcon", "mpt", "starcoder",
    "refact", "deepseek-coder", "deepseek-llm", "command-r", "gemma-4",
  ]

  /// Whether the test files are there; fails the test (or skips it when `FLARE_OFFLINE=1`).
  static func available() -> Bool {
    let present = fileExists("\(folder)/ggml-vocab-gpt-2.gguf.inp")
    if offline && !present { return false }
    #expect(present, "run scripts/fetch-tokenizer-tests.sh to fetch llama.cpp's test vectors")
    return present
  }

  /// The cases of `name`, split exactly as `read_tests` in `test-tokenizer-0.cpp` does.
  static func cases(_ name: String) throws -> [(String, [Int])] {
    let input = String(
      decoding: try readSmallFile("\(folder)/ggml-vocab-\(name).gguf.inp"), as: UTF8.self)
    let output = String(
      decoding: try readSmallFile("\(folder)/ggml-vocab-\(name).gguf.out"), as: UTF8.self)
    let separator = "\n__ggml_vocab_test__\n"
    var inputs: [String] = []
    var rest = Substring(input)
    while !rest.isEmpty {
      guard let range = rest.range(of: separator) else {
        inputs.append(String(rest))
        break
      }
      inputs.append(String(rest[..<range.lowerBound]))
      rest = rest[range.upperBound...]
    }
    var lines = output.split(separator: "\n", omittingEmptySubsequences: false)
    if lines.last?.isEmpty == true { lines.removeLast() }
    #expect(inputs.count == lines.count, "\(name): inputs and outputs differ in count")
    return zip(inputs, lines).map { text, line in
      (text, line.split(separator: " ").compactMap { Int($0) })
    }
  }

  @Test("every case matches llama.cpp", arguments: supported)
  func vocabulary(name: String, count: Int) throws {
    guard Self.available() else { return }
    let tokenizer = try Tokenizer.load(
      gguf: try GGUFFile(path: "\(Self.folder)/ggml-vocab-\(name).gguf"))
    let cases = try Self.cases(name)
    #expect(cases.count == count)
    var passed = 0
    for (text, expected) in cases {
      let ids = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
      #expect(ids == expected, "\(name): \(text.debugDescription)")
      if ids == expected { passed += 1 }
      if Self.lossless.contains(name) {
        #expect(tokenizer.decode(ids) == text, "\(name) round trip: \(text.debugDescription)")
      }
    }
    #expect(passed == cases.count, "\(name): \(passed)/\(cases.count) cases")
  }

  /// Vocabularies Flare refuses, and why: their pre-tokenizer is not named, so llama.cpp falls
  /// back to a guess ("default") that Flare does not make.
  static let refused: [(String, FlareError.Code)] = [
    ("aquila", .missingKey), ("gpt-neox", .missingKey),
  ]

  @Test("unsupported vocabularies are refused with a clear error", arguments: refused)
  func refusal(name: String, code: FlareError.Code) throws {
    guard Self.available() else { return }
    let file = try GGUFFile(path: "\(Self.folder)/ggml-vocab-\(name).gguf")
    #expect(throws: FlareError("tokenizer", code, "")) { try Tokenizer.load(gguf: file) }
    do {
      _ = try Tokenizer.load(gguf: file)
    } catch let error as FlareError {
      #expect(error.path == file.path)
      #expect(error.key?.hasPrefix("tokenizer.ggml.") == true)
    }
  }

  /// Oracle: llama.cpp's defaults (`llama_vocab::impl::load`) and the files' keys.
  @Test("special tokens and what addSpecial adds")
  func specials() throws {
    guard Self.available() else { return }
    func load(_ name: String) throws -> Tokenizer {
      try Tokenizer.load(gguf: try GGUFFile(path: "\(Self.folder)/ggml-vocab-\(name).gguf"))
    }
    let spm = try load("llama-spm")
    #expect(spm.kind == .sentencePieceBPE)
    #expect(spm.vocabularySize == 32000)
    #expect(spm.bos == 1 && spm.eos == 2 && spm.unknown == 0)
    #expect(spm.encode("Hello world") == [1, 15043, 3186])
    #expect(spm.encode("Hello world", addSpecial: false) == [15043, 3186])
    #expect(spm.decode([1, 15043, 3186], skipSpecial: true) == "Hello world")
    #expect(spm.piece(15043) == "\u{2581}Hello")
    #expect(spm.piece(-1) == nil && spm.piece(32000) == nil)

    let bert = try load("bert-bge")
    #expect(bert.kind == .wordPiece)
    #expect(bert.bos == 101 && bert.eos == 102 && bert.unknown == 100 && bert.pad == 0)
    let ids = bert.encode("Hello, world!")
    #expect(ids.first == 101 && ids.last == 102)
    #expect(bert.decode(ids, skipSpecial: true) == "hello, world!")

    let llama3 = try load("llama-bpe")
    #expect(llama3.kind == .byteLevelBPE)
    #expect(llama3.encode("Hello").first == 128000)
    // `<|begin_of_text|>` is a control token: text unless parseSpecial.
    #expect(llama3.encode("<|begin_of_text|>", addSpecial: false, parseSpecial: true) == [128000])
    #expect(llama3.encode("<|begin_of_text|>", addSpecial: false).count > 1)
    #expect(llama3.decode([128000, 9906], skipSpecial: true) == "Hello")
    #expect(llama3.decode([128000, 9906]) == "<|begin_of_text|>Hello")
  }
}
