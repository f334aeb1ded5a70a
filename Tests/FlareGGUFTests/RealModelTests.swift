import FlareCore
import FlareGGUF
import Testing
import _FlareTestSupport

/// The real SmolLM2-135M-Instruct Q4_1 GGUF (written by llama.cpp's converter), fetched by
/// `scripts/fetch-models.sh`.
@Suite("the real SmolLM2 GGUF")
struct RealGGUFTests {
  static var path: String {
    "\(modelCache)/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
  }

  static func open() throws -> GGUFFile? {
    if offline && !fileExists(path) { return nil }
    #expect(fileExists(path), "run scripts/fetch-models.sh (or make test) to fetch the real model")
    return try GGUFFile(path: path)
  }

  @Test("header facts: v3, 33 keys, 272 tensors, alignment 32, data at 1,785,664")
  func header() throws {
    guard let file = try Self.open() else { return }
    #expect(file.version == 3)
    #expect(file.metadata.count == 33)
    #expect(file.tensors.count == 272)
    #expect(file.alignment == 32)
    #expect(file.dataStart == 1_785_664)
    #expect(file.value("general.architecture") == .string("llama"))
    #expect(file.value("general.file_type") == .uint32(3))
  }

  /// Oracle: the file itself. Writing its parsed metadata and tensors back must reproduce
  /// every byte (same key order, offsets, padding and data).
  @Test("re-writing the parsed file reproduces it byte for byte")
  func rewrite() throws {
    guard let file = try Self.open() else { return }
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let out = "\(folder)/copy.gguf"
    let specs = file.tensors.map { GGUFTensorSpec(name: $0.name, dims: $0.dims, type: $0.type) }
    try GGUFWriter.write(
      to: out, metadata: file.metadata, tensors: specs, alignment: file.alignment
    ) { sink in
      try sink.write(file.bytes(of: try #require(file.tensor(sink.spec.name))))
    }
    let copy = try MappedFile(path: out)
    let original = try MappedFile(path: Self.path)
    #expect(copy.count == original.count)
    #expect(copy.bytes.elementsEqual(original.bytes))
  }

  /// Oracle: `Fixtures/golden/gguf-smollm2.json` (gguf-py's reader and
  /// `gguf.quants.dequantize` on the same file). Tolerance: none (CRC-32 of every value).
  @Test("all 272 tensors dequantize bit-identically to gguf-py")
  func dequantize() throws {
    guard let file = try Self.open() else { return }
    let golden = try loadFixtureJSON("golden/gguf-smollm2.json")
    let tensors = try #require(golden["tensors"]?.arrayValue)
    #expect(tensors.count == 272)
    #expect(
      file.metadata.map(\.key) == golden["kvs"]?.arrayValue?.compactMap { $0["key"]?.stringValue })
    for (tensor, expected) in zip(file.tensors, tensors) {
      #expect(tensor.name == expected["name"]?.stringValue)
      #expect(tensor.type.name == expected["type"]?.stringValue)
      #expect(tensor.dims.map { JSONValue.integer($0) } == expected["dims"]?.arrayValue)
      #expect(tensor.offset == expected["offset"]?.intValue)
      var values = [Float](repeating: 0, count: tensor.elementCount)
      try values.withUnsafeMutableBufferPointer {
        try tensor.type.dequantizeParallel(
          file.bytes(of: tensor), count: tensor.elementCount, into: $0)
      }
      let crc = values.withUnsafeBytes { CRC32.checksum($0) }
      #expect(UInt64(crc) == expected["dequant_crc32"]?.uint64Value, "\(tensor.name)")
    }
  }
}
