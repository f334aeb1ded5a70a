import FlareCore

/// A SentencePiece model file (`tokenizer.model`: the protobuf `ModelProto` the `sentencepiece`
/// library reads and writes): its pieces (text, score, type) and the few settings a GGUF or a
/// `tokenizer.json` needs. Read strictly: every varint, length and field is checked against the
/// bytes that remain, and an error names the file and the byte offset.
struct SentencePieceModelFile: Equatable {
  /// One piece. SentencePiece numbers its types as llama.cpp's token types (1 normal,
  /// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
  struct Piece: Equatable {
    var text: String
    var score: Float
    var type: BPETokenizer.TokenType
  }

  var pieces: [Piece] = []
  /// `trainer_spec.model_type`: 1 unigram, 2 BPE, 3 word, 4 character; nil when absent.
  var modelType: Int32?
  var byteFallback: Bool?
  /// `normalizer_spec.name` (`identity` for Gemma's and Llama 2's files).
  var normalizerName: String?
  /// `normalizer_spec.add_dummy_prefix`; nil when absent (SentencePiece then adds it).
  var addDummyPrefix: Bool?
  var removeExtraWhitespaces: Bool?

  init(pieces: [Piece]) { self.pieces = pieces }

  /// Reads a `tokenizer.model` file.
  /// - Throws: ``FlareError`` naming `path` and the byte offset for anything that is not a
  ///   well-formed `ModelProto`.
  init(path: String) throws {
    let bytes = try readSmallFile(path)
    try self.init(bytes: bytes, path: path)
  }

  init(bytes: [UInt8], path: String) throws {
    var reader = ProtoReader(bytes: bytes, range: 0..<bytes.count, path: path)
    while let (field, wire, start) = try reader.nextField() {
      switch (field, wire) {
      case (1, 2):
        pieces.append(try Self.piece(reader.subreader(), index: pieces.count))
      case (2, 2):
        var spec = try reader.subreader()
        while let (field, wire, at) = try spec.nextField() {
          switch (field, wire) {
          case (3, 0): modelType = try spec.int32(at: at, "trainer_spec.model_type")
          case (35, 0): byteFallback = try spec.varint() != 0
          default: try spec.skip(wire: wire, at: at)
          }
        }
      case (3, 2):
        var spec = try reader.subreader()
        while let (field, wire, at) = try spec.nextField() {
          switch (field, wire) {
          case (1, 2): normalizerName = try spec.string(at: at, "normalizer_spec.name")
          case (3, 0): addDummyPrefix = try spec.varint() != 0
          case (4, 0): removeExtraWhitespaces = try spec.varint() != 0
          default: try spec.skip(wire: wire, at: at)
          }
        }
      case (1, _), (2, _), (3, _):
        throw reader.fail("field \(field) has wire type \(wire), not a message", at: start)
      default:
        try reader.skip(wire: wire, at: start)
      }
    }
    if pieces.isEmpty {
      throw FlareError(
        "convert", .invalidArgument, "holds no pieces: not a SentencePiece model", path: path)
    }
  }

  private static func piece(_ message: ProtoReader, index: Int) throws -> Piece {
    var reader = message
    var piece = Piece(text: "", score: 0, type: .normal)
    var hasText = false
    while let (field, wire, at) = try reader.nextField() {
      switch (field, wire) {
      case (1, 2):
        piece.text = try reader.string(at: at, "piece \(index)")
        hasText = true
      case (2, 5): piece.score = Float(bitPattern: try reader.fixed32())
      case (3, 0):
        let type = try reader.int32(at: at, "piece \(index) type")
        guard let known = BPETokenizer.TokenType(rawValue: type) else {
          throw reader.fail(
            "piece \(index) has type \(type), not a SentencePiece type (1 to 6)", at: at)
        }
        piece.type = known
      case (1, _), (2, _), (3, _):
        throw reader.fail("piece \(index) field \(field) has wire type \(wire)", at: at)
      default: try reader.skip(wire: wire, at: at)
      }
    }
    guard hasText, !piece.text.isEmpty else {
      throw reader.fail("piece \(index) has no text", at: message.range.lowerBound)
    }
    guard piece.score.isFinite else {
      throw reader.fail("piece \(index) has the score \(piece.score)", at: message.range.lowerBound)
    }
    return piece
  }

  /// The file's bytes: every piece with its text, score and type; a trainer spec naming the
  /// BPE model type (and byte fallback when the pieces hold bytes); a normalizer spec.
  func serialized() -> [UInt8] {
    var out: [UInt8] = []
    for piece in pieces {
      var message: [UInt8] = []
      ProtoWriter.bytes(Array(piece.text.utf8), field: 1, into: &message)
      ProtoWriter.fixed32(piece.score.bitPattern, field: 2, into: &message)
      ProtoWriter.varint(UInt64(bitPattern: Int64(piece.type.rawValue)), field: 3, into: &message)
      ProtoWriter.bytes(message, field: 1, into: &out)
    }
    var trainer: [UInt8] = []
    if let modelType {
      ProtoWriter.varint(UInt64(bitPattern: Int64(modelType)), field: 3, into: &trainer)
    }
    if let byteFallback { ProtoWriter.varint(byteFallback ? 1 : 0, field: 35, into: &trainer) }
    ProtoWriter.bytes(trainer, field: 2, into: &out)
    var normalizer: [UInt8] = []
    if let normalizerName {
      ProtoWriter.bytes(Array(normalizerName.utf8), field: 1, into: &normalizer)
    }
    if let addDummyPrefix {
      ProtoWriter.varint(addDummyPrefix ? 1 : 0, field: 3, into: &normalizer)
    }
    if let removeExtraWhitespaces {
      ProtoWriter.varint(removeExtraWhitespaces ? 1 : 0, field: 4, into: &normalizer)
    }
    ProtoWriter.bytes(normalizer, field: 3, into: &out)
    return out
  }
}

/// Reads protobuf wire format within `range` of `bytes`; offsets stay those of the file.
struct ProtoReader {
  let bytes: [UInt8]
  let range: Range<Int>
  let path: String
  private(set) var offset: Int

  init(bytes: [UInt8], range: Range<Int>, path: String) {
    self.bytes = bytes
    self.range = range
    self.path = path
    self.offset = range.lowerBound
  }

  func fail(_ message: String, at offset: Int) -> FlareError {
    FlareError("convert", .invalidArgument, message, path: path, offset: offset)
  }

  /// The next field's number, wire type and start offset; nil at the end of the message.
  mutating func nextField() throws -> (UInt64, UInt8, Int)? {
    guard offset < range.upperBound else { return nil }
    let start = offset
    let key = try varint()
    let field = key >> 3
    guard field > 0 else { throw fail("a field number is 0", at: start) }
    return (field, UInt8(key & 7), start)
  }

  mutating func varint() throws -> UInt64 {
    let start = offset
    var value: UInt64 = 0
    var shift: UInt64 = 0
    while true {
      guard offset < range.upperBound else {
        throw fail("a varint runs past the end of its message", at: start)
      }
      let byte = bytes[offset]
      offset += 1
      guard shift < 64, shift < 63 || byte <= 1 else {
        throw fail("a varint is longer than 64 bits", at: start)
      }
      value |= UInt64(byte & 0x7F) << shift
      if byte < 0x80 { return value }
      shift += 7
    }
  }

  /// An `int32` field: a varint whose value fits 32 bits (negative ones are sign-extended).
  mutating func int32(at start: Int, _ what: String) throws -> Int32 {
    let raw = Int64(bitPattern: try varint())
    guard let value = Int32(exactly: raw) else {
      throw fail("\(what) is \(raw), outside the 32-bit range", at: start)
    }
    return value
  }

  mutating func fixed32() throws -> UInt32 {
    guard range.upperBound - offset >= 4 else {
      throw fail("a 4-byte value runs past the end of its message", at: offset)
    }
    var value: UInt32 = 0
    for i in 0..<4 { value |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
    offset += 4
    return value
  }

  /// A length-delimited field's bytes.
  mutating func delimited() throws -> Range<Int> {
    let start = offset
    let length = try varint()
    guard length <= UInt64(range.upperBound - offset) else {
      throw fail(
        "a field of \(length) bytes runs past the end of its message (\(range.upperBound - offset) bytes left)",
        at: start)
    }
    let body = offset..<(offset + Int(length))
    offset = body.upperBound
    return body
  }

  mutating func subreader() throws -> ProtoReader {
    ProtoReader(bytes: bytes, range: try delimited(), path: path)
  }

  mutating func string(at start: Int, _ what: String) throws -> String {
    let body = try delimited()
    guard let text = String(validating: bytes[body], as: UTF8.self) else {
      throw fail("\(what) is not valid UTF-8", at: start)
    }
    return text
  }

  mutating func skip(wire: UInt8, at start: Int) throws {
    switch wire {
    case 0: _ = try varint()
    case 1:
      guard range.upperBound - offset >= 8 else {
        throw fail("an 8-byte value runs past the end of its message", at: offset)
      }
      offset += 8
    case 2: _ = try delimited()
    case 5: _ = try fixed32()
    default: throw fail("wire type \(wire) is not one a SentencePiece model uses", at: start)
    }
  }
}

/// Writes protobuf wire format.
enum ProtoWriter {
  static func rawVarint(_ value: UInt64, into out: inout [UInt8]) {
    var rest = value
    while rest >= 0x80 {
      out.append(UInt8(rest & 0x7F) | 0x80)
      rest >>= 7
    }
    out.append(UInt8(rest))
  }

  static func varint(_ value: UInt64, field: UInt64, into out: inout [UInt8]) {
    rawVarint(field << 3, into: &out)
    rawVarint(value, into: &out)
  }

  static func fixed32(_ value: UInt32, field: UInt64, into out: inout [UInt8]) {
    rawVarint(field << 3 | 5, into: &out)
    for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) }
  }

  static func bytes(_ value: [UInt8], field: UInt64, into out: inout [UInt8]) {
    rawVarint(field << 3 | 2, into: &out)
    rawVarint(UInt64(value.count), into: &out)
    out += value
  }
}
