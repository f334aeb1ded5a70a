import FlareCore
import Testing
import _FlareTestSupport

@testable import FlareGGUF

/// Oracle: `Fixtures/golden/gguf-kquant.json`, made by `Fixtures/gguf/make_kquant_golden.py`
/// from ggml's own C code: `quantize_row_q4_K_ref`, `quantize_row_q5_K_ref` and
/// `quantize_row_q6_K_ref` of `ggml-quants.c` (vendored in a pinned llama-cpp-python sdist),
/// compiled with `-O2 -ffp-contract=off`, on 16 seeded rows (zeros, a constant, an outlier,
/// F16-subnormal tiny values, negative only, mixed scales, exact ties, normal, uniform,
/// heavy-tailed, sparse, positive only). The CRC-32s are of ggml's `dequantize_row_*` output,
/// which gguf-py's `gguf.quants.dequantize` reproduces bit for bit. Tolerance: none; every byte
/// and every dequantized bit must match.
@Suite("K-quant quantization against ggml's reference quantizers")
struct KQuantTests {
  static let golden: JSONValue = (try? loadFixtureJSON("golden/gguf-kquant.json")) ?? .null

  static func hex(_ bytes: [UInt8]) -> String {
    bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
  }

  static func inputRow(_ row: Int) throws -> [Float] {
    let bits = try #require(golden["input_f32_bits"]?.arrayValue?[row].arrayValue)
    return bits.map { Float(bitPattern: UInt32($0.uint64Value ?? 0)) }
  }

  @Test("Q4_K, Q5_K and Q6_K are quantizable") func quantizable() {
    for type in [GGMLType.q4_K, .q5_K, .q6_K] { #expect(type.canQuantize) }
  }

  @Test(
    "bytes identical to ggml's reference quantizer, and their dequantization's CRC-32 to ggml's",
    arguments: ["Q4_K", "Q5_K", "Q6_K"])
  func matchesOracle(name: String) throws {
    let type = try #require(GGMLType.named(name))
    let entry = try #require(Self.golden["types"]?[name])
    let rows = try #require(Self.golden["rows"]?.intValue)
    let lengths = try #require(Self.golden["row_lengths"]?.arrayValue).compactMap(\.intValue)
    let expected = try #require(entry["rows_hex"]?.arrayValue).compactMap(\.stringValue)
    let crcs = try #require(entry["dequant_crc32"]?.arrayValue).compactMap(\.uint64Value)
    try #require(rows == 16 && lengths.count == rows && expected.count == rows)
    try #require(crcs.count == rows)
    for row in 0..<rows {
      let values = try Self.inputRow(row)
      #expect(values.count == lengths[row])
      let size = try #require(type.rowBytes(elements: values.count))
      var out = [UInt8](repeating: 0xAA, count: size)
      var parallel = [UInt8](repeating: 0x55, count: size)
      try values.withUnsafeBufferPointer { v in
        try out.withUnsafeMutableBytes { try type.quantize(v, into: $0) }
        try parallel.withUnsafeMutableBytes { try type.quantizeParallel(v, into: $0) }
      }
      #expect(Self.hex(out) == expected[row], "\(name) row \(row)")
      #expect(parallel == out, "\(name) row \(row) in parallel")
      var back = [Float](repeating: 0, count: values.count)
      try out.withUnsafeBytes { raw in
        try back.withUnsafeMutableBufferPointer {
          try type.dequantize(raw, count: values.count, into: $0)
        }
      }
      #expect(
        UInt64(back.withUnsafeBytes { CRC32.checksum($0) }) == crcs[row],
        "\(name) row \(row) dequantized")
    }
  }

  @Test("the golden covers F16-subnormal, zero and outlier blocks and stays small")
  func goldenShape() throws {
    let notes = try #require(Self.golden["row_notes"]?.arrayValue).compactMap(\.stringValue)
    #expect(notes.contains { $0.contains("all zeros") })
    #expect(notes.contains { $0.contains("outlier") })
    #expect(notes.contains { $0.contains("subnormal") })
    #expect(fileBytes(fixturePath("golden/gguf-kquant.json")).count < 300_000)
    // An all-zero row gives all-zero Q6_K blocks (d = +0) and Q4_K/Q5_K blocks of zeros.
    for name in ["Q4_K", "Q5_K", "Q6_K"] {
      let zeros = try #require(Self.golden["types"]?[name]?["rows_hex"]?.arrayValue?[1].stringValue)
      #expect(zeros.allSatisfy { $0 == "0" }, "\(name) of zeros")
    }
  }

  @Test("nearest-integer rounding is ggml's: half to even, via the 1.5·2²³ trick")
  func nearestInt() {
    let cases: [(Float, Int)] = [
      (0, 0), (-0.0, 0), (0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (-2.5, -2),
      (0.49999997, 0), (3.7, 4), (-3.7, -4), (4_194_303, 4_194_303), (-4_194_303, -4_194_303),
    ]
    for (value, want) in cases { #expect(GGMLType.kNearestInt(value) == want, "\(value)") }
  }

  @Test("quantizing a non-whole block count is an error; a whole one needs the full output")
  func sizes() throws {
    for type in [GGMLType.q4_K, .q5_K, .q6_K] {
      let values = [Float](repeating: 1, count: 300)
      var out = [UInt8](repeating: 0, count: 2 * type.typeSize)
      #expect(throws: FlareError("gguf", .invalidArgument, "")) {
        try values.withUnsafeBufferPointer { v in
          try out.withUnsafeMutableBytes { try type.quantize(v, into: $0) }
        }
      }
      let block = [Float](repeating: 1, count: 256)
      var short = [UInt8](repeating: 0, count: type.typeSize - 1)
      #expect(throws: FlareError("gguf", .invalidArgument, "")) {
        try block.withUnsafeBufferPointer { v in
          try short.withUnsafeMutableBytes { try type.quantize(v, into: $0) }
        }
      }
    }
  }
}
