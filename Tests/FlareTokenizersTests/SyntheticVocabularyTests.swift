import FlareCore
import FlareGGUF
import FlareTokenizers
import Testing
import _FlareTestSupport

/// Tiny vocabulary-only GGUF files written by the tests themselves.
enum Vocabularies {
  /// The GPT-2 byte characters, in byte order.
  static let byteCharacters: [String] = {
    var next: UInt32 = 256
    return (0..<256).map { byte -> String in
      if (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte)
        || (0xAE...0xFF).contains(byte)
      {
        return String(Unicode.Scalar(UInt8(byte)))
      }
      defer { next += 1 }
      return String(Unicode.Scalar(next) ?? " ")
    }
  }()

  static func strings(_ values: [String]) -> GGUFValue {
    .array(.string, values.map { .string($0) })
  }
  static func int32s(_ values: [Int]) -> GGUFValue {
    .array(.int32, values.map { .int32(Int32($0)) })
  }
  static func floats(_ values: [Float]) -> GGUFValue {
    .array(.float32, values.map { .float32($0) })
  }

  /// A byte-level BPE vocabulary: the 256 byte characters, then "Ġt", "he", "Ġthe", "<|end|>".
  static func bytePairKeys() -> [GGUFKeyValue] {
    let tokens = byteCharacters + ["Ġt", "he", "Ġthe", "<|end|>"]
    var types = [Int](repeating: 1, count: tokens.count)
    types[types.count - 1] = 3
    return [
      GGUFKeyValue(key: "tokenizer.ggml.model", value: .string("gpt2")),
      GGUFKeyValue(key: "tokenizer.ggml.pre", value: .string("gpt-2")),
      GGUFKeyValue(key: "tokenizer.ggml.tokens", value: strings(tokens)),
      GGUFKeyValue(key: "tokenizer.ggml.token_type", value: int32s(types)),
      GGUFKeyValue(key: "tokenizer.ggml.merges", value: strings(["Ġ t", "h e", "Ġt he"])),
      GGUFKeyValue(key: "tokenizer.ggml.eos_token_id", value: .uint32(259)),
    ]
  }

  /// A SentencePiece vocabulary: `<unk> <s> </s>`, 256 byte tokens, then pieces with scores.
  static func sentencePieceKeys(model: String = "llama") -> [GGUFKeyValue] {
    let bytes = (0..<256).map { "<0x\(String(format2: $0))>" }
    let pieces = ["\u{2581}", "h", "e", "l", "o", "he", "\u{2581}he", "ll", "llo", "\u{2581}hello"]
    let tokens = ["<unk>", "<s>", "</s>"] + bytes + pieces
    let types =
      [2, 3, 3] + [Int](repeating: 6, count: 256) + [Int](repeating: 1, count: pieces.count)
    let pieceScores: [Float] = [-2, -3, -3, -3, -3, -1, -0.5, -1.5, -1, -9]
    let scores = [Float](repeating: 0, count: 259) + pieceScores
    return [
      GGUFKeyValue(key: "tokenizer.ggml.model", value: .string(model)),
      GGUFKeyValue(key: "tokenizer.ggml.tokens", value: strings(tokens)),
      GGUFKeyValue(key: "tokenizer.ggml.token_type", value: int32s(types)),
      GGUFKeyValue(key: "tokenizer.ggml.scores", value: floats(scores)),
      GGUFKeyValue(key: "tokenizer.ggml.bos_token_id", value: .uint32(1)),
      GGUFKeyValue(key: "tokenizer.ggml.eos_token_id", value: .uint32(2)),
      GGUFKeyValue(key: "tokenizer.ggml.unknown_token_id", value: .uint32(0)),
    ]
  }

  /// A llama.cpp-style BERT vocabulary ("▁" marks word starts).
  static func wordPieceKeys() -> [GGUFKeyValue] {
    let tokens = [
      "[PAD]", "[UNK]", "[CLS]", "[SEP]", "\u{2581}hello", "\u{2581}he", "llo", "\u{2581},",
      "\u{2581}un",
      "aff", "able",
    ]
    return [
      GGUFKeyValue(key: "tokenizer.ggml.model", value: .string("bert")),
      GGUFKeyValue(key: "tokenizer.ggml.tokens", value: strings(tokens)),
      GGUFKeyValue(
        key: "tokenizer.ggml.token_type",
        value: int32s([3, 3, 3, 3] + [Int](repeating: 1, count: 7))),
      GGUFKeyValue(key: "tokenizer.ggml.unknown_token_id", value: .uint32(1)),
      GGUFKeyValue(key: "tokenizer.ggml.cls_token_id", value: .uint32(2)),
      GGUFKeyValue(key: "tokenizer.ggml.seperator_token_id", value: .uint32(3)),
      GGUFKeyValue(key: "tokenizer.ggml.padding_token_id", value: .uint32(0)),
    ]
  }

  /// Writes `keys` as a vocabulary-only GGUF in `folder` and opens it.
  static func gguf(_ keys: [GGUFKeyValue], in folder: String, name: String = "vocab.gguf") throws
    -> GGUFFile
  {
    let path = "\(folder)/\(name)"
    let metadata = [GGUFKeyValue(key: "general.architecture", value: .string("llama"))] + keys
    try GGUFWriter.write(to: path, metadata: metadata, tensors: [], overwrite: true) { _ in }
    return try GGUFFile(path: path)
  }

  /// `keys` with `key` replaced by `value` (or removed when `value` is nil).
  static func replacing(_ keys: [GGUFKeyValue], _ key: String, with value: GGUFValue?)
    -> [GGUFKeyValue]
  {
    var result = keys.filter { $0.key != key }
    if let value { result.append(GGUFKeyValue(key: key, value: value)) }
    return result
  }
}

extension String {
  /// Two upper-case hex digits.
  init(format2 value: Int) {
    let hex = String(value, radix: 16, uppercase: true)
    self = hex.count == 1 ? "0" + hex : hex
  }
}

/// Oracle: expectations worked out by hand from the algorithms' definitions (BPE: lowest merge
/// rank first; SentencePiece BPE: highest piece score first; Unigram: best total log
/// probability; WordPiece: longest match first), and for seeded random text the identity
/// `decode(encode(x)) == x` of the lossless algorithms. Tolerance: none.
@Suite("tiny vocabularies")
struct SyntheticVocabularyTests {
  @Test("byte-level BPE merges by rank and round-trips any text")
  func bytePair() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let tokenizer = try Tokenizer.load(
      gguf: try Vocabularies.gguf(Vocabularies.bytePairKeys(), in: folder))
    #expect(tokenizer.kind == .byteLevelBPE && tokenizer.vocabularySize == 260)
    // " the": "Ġ t" (rank 0), then "h e" (rank 1), then "Ġt he" (rank 2).
    #expect(tokenizer.encode(" the", addSpecial: false) == [258])
    // "the": no "t h" merge; "h e" applies.
    #expect(tokenizer.encode("the", addSpecial: false) == [116, 257])
    #expect(tokenizer.piece(258) == "Ġthe")
    // A control token is text unless parsed.
    #expect(tokenizer.encode("<|end|>", parseSpecial: true) == [259])
    #expect(tokenizer.encode("<|end|>").count == 7)
    #expect(tokenizer.decode([258, 259]) == " the<|end|>")
    #expect(tokenizer.decode([258, 259], skipSpecial: true) == " the")
    // Out-of-range ids are skipped, never trapped on.
    #expect(tokenizer.decode([-5, 258, 1_000_000]) == " the")
    for text in FuzzText.samples(seed: 7, count: 200) {
      #expect(tokenizer.decode(tokenizer.encode(text)) == text, "\(text.debugDescription)")
    }
  }

  @Test("SentencePiece BPE merges by score, adds BOS and falls back to bytes")
  func sentencePiece() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let tokenizer = try Tokenizer.load(
      gguf: try Vocabularies.gguf(Vocabularies.sentencePieceKeys(), in: folder))
    #expect(tokenizer.kind == .sentencePieceBPE && tokenizer.bos == 1 && tokenizer.eos == 2)
    // "▁hello": "he" (-1) merges first, then "▁he" (-0.5), "ll" (-1.5), "llo" (-1) and at
    // last "▁hello" (-9): every merge that forms a piece happens, best score first.
    let ids = tokenizer.encode("hello")
    #expect(ids == [1, 268])
    #expect(tokenizer.decode(ids, skipSpecial: true) == "hello")
    // "x" is no piece: byte fallback <0x78> (id 3 + 0x78) after the prefixed "▁".
    #expect(tokenizer.encode("x", addSpecial: false) == [259, 3 + 0x78])
    #expect(tokenizer.decode([259, 3 + 0x78]) == "x")
    #expect(tokenizer.decode([3 + 0xC3, 3 + 0xA9]) == "é")
    for text in FuzzText.samples(seed: 11, count: 200) {
      #expect(
        tokenizer.decode(tokenizer.encode(text, addSpecial: false)) == text,
        "\(text.debugDescription)")
    }
  }

  @Test("Unigram picks the best segmentation and fuses unknown runs")
  func unigram() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    var keys = Vocabularies.sentencePieceKeys(model: "t5")
    keys.append(GGUFKeyValue(key: "tokenizer.ggml.add_space_prefix", value: .bool(true)))
    let tokenizer = try Tokenizer.load(gguf: try Vocabularies.gguf(keys, in: folder))
    #expect(tokenizer.kind == .unigram)
    // Best path for "▁hello": "▁he"(-0.5) + "llo"(-1) = -1.5 beats "▁hello"(-9).
    #expect(tokenizer.encode("hello", addSpecial: false) == [265, 267])
    // t5 adds EOS by default.
    #expect(tokenizer.encode("hello") == [265, 267, 2])
    // "xyz" has no pieces: one fused unknown token.
    #expect(tokenizer.encode("xyz", addSpecial: false) == [259, 0])
    #expect(tokenizer.decode([265, 267], skipSpecial: true) == "hello")
    for text in FuzzText.samples(seed: 13, count: 100) { _ = tokenizer.encode(text) }
  }

  @Test("WordPiece takes the longest match and [UNK] for words it cannot spell")
  func wordPiece() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let tokenizer = try Tokenizer.load(
      gguf: try Vocabularies.gguf(Vocabularies.wordPieceKeys(), in: folder))
    #expect(tokenizer.kind == .wordPiece && tokenizer.bos == 2 && tokenizer.eos == 3)
    #expect(tokenizer.encode("HELLO, unaffable") == [2, 4, 7, 8, 9, 10, 3])
    #expect(tokenizer.encode("hexyz", addSpecial: false) == [1])
    #expect(tokenizer.encode("Héllo", addSpecial: false) == [4])
    #expect(tokenizer.decode([2, 4, 7, 8, 9, 10, 3], skipSpecial: true) == "hello, unaffable")
    let long = String(repeating: "a", count: 101)
    #expect(tokenizer.encode(long, addSpecial: false) == [1])
    for text in FuzzText.samples(seed: 17, count: 100) { _ = tokenizer.encode(text) }
  }
}

/// Seeded random text mixing scripts, marks, controls, whitespace and emoji; the seeds are
/// fixed in the tests, so a failure is reproducible.
enum FuzzText {
  struct Generator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
      state &+= 0x9E37_79B9_7F4A_7C15
      var z = state
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
  }

  static let pools: [ClosedRange<UInt32>] = [
    0x20...0x7E, 0x09...0x0D, 0xA0...0x17F, 0x300...0x36F, 0x400...0x4FF, 0x600...0x6FF,
    0x900...0x97F, 0x3040...0x30FF, 0x4E00...0x4FFF, 0xAC00...0xAC80, 0x1F300...0x1F64F,
    0x2000...0x206F, 0xFF00...0xFFEF, 0x0...0x1F,
  ]

  static func samples(seed: UInt64, count: Int) -> [String] {
    var generator = Generator(state: seed)
    return (0..<count).map { _ in
      var view = String.UnicodeScalarView()
      let length = Int.random(in: 0...40, using: &generator)
      for _ in 0..<length {
        let pool = pools.randomElement(using: &generator) ?? 0x20...0x7E
        if let scalar = Unicode.Scalar(UInt32.random(in: pool, using: &generator)) {
          view.append(scalar)
        }
      }
      return String(view)
    }
  }
}
