import FlareCore
import Testing
import _FlareTestSupport

/// Oracle: `Fixtures/golden/dtype-conversions.json`, written by
/// `Fixtures/safetensors/make_fixtures.py` with numpy (F16) and ml_dtypes (BF16, F8_*, F4,
/// F6_*). Tolerance: none; every code and every bit must match.
@Suite("dtype conversions against numpy and ml_dtypes")
struct DTypeConversionTests {
  static let golden: JSONValue = (try? loadFixtureJSON("golden/dtype-conversions.json")) ?? .null
  static let targets = [
    "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3",
    "F6_E3M2",
  ]

  static func inputs() throws -> [Float] {
    let list = try #require(golden["inputs_f32_bits"]?.arrayValue)
    return try list.map { Float(bitPattern: UInt32(try #require($0.uint64Value))) }
  }

  static func encodeOne(_ dtype: DType, _ value: Float) throws -> UInt32 {
    switch dtype {
    case .f16: return UInt32(HalfPrecision.floatToF16(value))
    case .bf16: return UInt32(HalfPrecision.floatToBF16(value))
    default: return try #require(dtype.minifloat).encode(value)
    }
  }

  @Test("every input encodes to the oracle's code", arguments: targets)
  func encode(target: String) throws {
    let dtype = try #require(DType(rawValue: target))
    let expected = try #require(Self.golden["encode"]?[target]?.arrayValue)
    let inputs = try Self.inputs()
    #expect(expected.count == inputs.count)
    var mismatches: [String] = []
    for (value, code) in zip(inputs, expected) {
      let want = UInt32(try #require(code.uint64Value))
      let got = try Self.encodeOne(dtype, value)
      if got != want && mismatches.count < 10 {
        mismatches.append(
          "0x\(String(value.bitPattern, radix: 16)) (\(value)): got 0x\(String(got, radix: 16)), want 0x\(String(want, radix: 16))"
        )
      }
    }
    #expect(mismatches.isEmpty, "\(target): \(mismatches.joined(separator: "; "))")
  }

  @Test(
    "bulk encode packs the same codes as the scalar path",
    arguments: ["F4", "F6_E2M3", "F6_E3M2", "F8_E4M3", "F16", "BF16"])
  func bulkEncode(target: String) throws {
    let dtype = try #require(DType(rawValue: target))
    let inputs = Array(try Self.inputs().prefix(400))
    var bytes = [UInt8](repeating: 0, count: (inputs.count * dtype.bitWidth + 7) / 8)
    try inputs.withUnsafeBufferPointer { values in
      try bytes.withUnsafeMutableBytes { try dtype.encode(values, into: $0) }
    }
    var decoded = [Float](repeating: 0, count: inputs.count)
    bytes.withUnsafeBytes { raw in
      decoded.withUnsafeMutableBufferPointer { dtype.decode(raw, count: inputs.count, into: $0) }
    }
    for (i, value) in inputs.enumerated() {
      let code = try Self.encodeOne(dtype, value)
      let expected: Float =
        switch dtype {
        case .f16: HalfPrecision.f16ToFloat(UInt16(code))
        case .bf16: HalfPrecision.bf16ToFloat(UInt16(code))
        default: try #require(dtype.minifloat).decode(code)
        }
      #expect(decoded[i].bitPattern == expected.bitPattern, "\(target) element \(i)")
    }
  }

  @Test(
    "every code of the small formats decodes to the oracle's value",
    arguments: [
      "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2",
    ])
  func decodeSmall(target: String) throws {
    let dtype = try #require(DType(rawValue: target))
    let format = try #require(dtype.minifloat)
    let table = try #require(Self.golden["decode"]?[target]?.arrayValue)
    #expect(table.count == 1 << format.bitWidth)
    for (code, bits) in table.enumerated() {
      let want = UInt32(try #require(bits.uint64Value))
      let got = format.decode(UInt32(code)).bitPattern
      #expect(
        got == want,
        "\(target) code \(code): got 0x\(String(got, radix: 16)), want 0x\(String(want, radix: 16))"
      )
    }
  }

  @Test(
    "all 65536 F16 and BF16 codes decode to the oracle's bits (CRC-32 of the table)",
    arguments: ["F16", "BF16"])
  func decodeHalf(target: String) throws {
    let entry = try #require(Self.golden["decode"]?[target])
    let want = UInt32(try #require(entry["decode_crc32"]?.uint64Value))
    var table = [UInt8]()
    table.reserveCapacity(65536 * 4)
    for code in 0..<65536 {
      let value =
        target == "F16"
        ? HalfPrecision.f16ToFloat(UInt16(code)) : HalfPrecision.bf16ToFloat(UInt16(code))
      withUnsafeBytes(of: value.bitPattern.littleEndian) { table.append(contentsOf: $0) }
    }
    #expect(CRC32.checksum(table) == want)
    for (key, bits) in try #require(entry["decode_sample"]?.objectMembers) {
      let code = try #require(UInt16(key))
      let value = target == "F16" ? HalfPrecision.f16ToFloat(code) : HalfPrecision.bf16ToFloat(code)
      #expect(value.bitPattern == UInt32(try #require(bits.uint64Value)), "\(target) code \(code)")
    }
  }

  @Test("F16 and BF16 narrowing inverts widening for every non-NaN code")
  func halfRoundTrip() {
    for code in 0..<65536 {
      let h = UInt16(code)
      let f = HalfPrecision.f16ToFloat(h)
      if !f.isNaN { #expect(HalfPrecision.floatToF16(f) == h) }
      let b = HalfPrecision.bf16ToFloat(h)
      if !b.isNaN { #expect(HalfPrecision.floatToBF16(b) == h) }
    }
  }

  @Test("byte counts follow bit widths and reject partial bytes")
  func byteCounts() {
    #expect(DType.f4.byteCount(elements: 6) == 3)
    #expect(DType.f4.byteCount(elements: 5) == nil)
    #expect(DType.f6E2M3.byteCount(elements: 4) == 3)
    #expect(DType.f6E2M3.byteCount(elements: 2) == nil)
    #expect(DType.c64.byteCount(elements: 3) == 24)
    #expect(DType.f32.byteCount(elements: Int.max / 2) == nil)
    #expect(elementCount([1 << 32, 1 << 32]) == nil)
    #expect(elementCount([Int]()) == 1)
  }
}
