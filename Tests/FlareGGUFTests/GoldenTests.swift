import FlareArchitectures
import FlareCore
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareGGUF

/// Oracle: `Fixtures/golden/gguf-values.json`, written by `Fixtures/gguf/make_fixtures.py` from
/// files gguf-py's `GGUFWriter` wrote (and hand-made edge cases), with values from gguf-py's
/// `GGUFReader` and `gguf.quants.dequantize`. Tolerance: none (bit-exact, CRC-32 of all values).
@Suite("GGUF files written by gguf-py")
struct GGUFGoldenTests {
  static let golden: JSONValue = (try? loadFixtureJSON("golden/gguf-values.json")) ?? .null
  static let files: [String] = golden.objectMembers?.map(\.0) ?? []

  @Test("header, every key/value and every tensor match the oracle", arguments: files)
  func golden(file: String) throws {
    let want = try #require(Self.golden[file])
    let gguf = try GGUFFile(path: fixturePath("gguf/\(file)"))
    #expect(UInt64(gguf.version) == want["version"]?.uint64Value)
    #expect(gguf.alignment == want["alignment"]?.intValue)
    #expect(gguf.dataStart == want["data_offset"]?.intValue)
    let kvs = try #require(want["kvs"]?.arrayValue)
    #expect(gguf.metadata.map(\.key) == kvs.compactMap { $0["key"]?.stringValue })
    for (entry, expected) in zip(gguf.metadata, kvs) {
      #expect(entry.value.type.name == expected["type"]?.stringValue, "\(entry.key)")
      try Self.compare(entry.value, expected, key: entry.key)
    }
    let tensors = try #require(want["tensors"]?.arrayValue)
    #expect(gguf.tensors.count == tensors.count)
    for (tensor, expected) in zip(gguf.tensors, tensors) {
      #expect(tensor.name == expected["name"]?.stringValue)
      #expect(tensor.type.name == expected["type"]?.stringValue)
      #expect(UInt64(tensor.type.id) == expected["type_id"]?.uint64Value)
      #expect(tensor.dims.map { JSONValue.integer($0) } == expected["dims"]?.arrayValue)
      #expect(tensor.offset == expected["offset"]?.intValue)
      #expect(tensor.byteCount == expected["n_bytes"]?.intValue)
      try Self.compareValues(gguf, tensor, expected)
    }
  }

  /// Dequantized values against the oracle's CRC-32 and first values; types Flare does not
  /// dequantize must say so rather than produce numbers.
  static func compareValues(_ gguf: GGUFFile, _ tensor: GGUFTensorInfo, _ expected: JSONValue)
    throws
  {
    guard let crc = expected["dequant_crc32"]?.uint64Value else { return }
    guard tensor.type.canDequantize else {
      #expect(throws: FlareError("gguf", .unsupported, "")) { try gguf.floats(tensor) }
      return
    }
    let values = try gguf.floats(tensor)
    let checksum = values.withUnsafeBytes { CRC32.checksum($0) }
    #expect(UInt64(checksum) == crc, "\(tensor.name) (\(tensor.type.name))")
    let first =
      expected["first_values_f32_bits"]?.arrayValue?.compactMap { $0.uint64Value.map(UInt32.init) }
      ?? []
    #expect(values.prefix(first.count).map(\.bitPattern) == first, "\(tensor.name)")
  }

  static func compare(_ value: GGUFValue, _ expected: JSONValue, key: String) throws {
    switch value {
    case .float32(let v):
      #expect(expected["f32_bits"]?.uint64Value == UInt64(v.bitPattern), "\(key)")
    case .float64(let v):
      #expect(
        expected["value"]?.doubleValue.map { $0.bitPattern == v.bitPattern || ($0 == 0 && v == 0) }
          == true, "\(key)")
    case .uint64(let v):
      #expect(
        (expected["value_text"] ?? expected["value"])?.stringValue
          ?? expected["value"]?.uint64Value.map(String.init) == String(v), "\(key)")
    case .int64(let v):
      #expect(
        (expected["value_text"]?.stringValue ?? expected["value"]?.intValue.map(String.init))
          == String(v), "\(key)")
    case .bool(let v): #expect(expected["value"] == .bool(v), "\(key)")
    case .string(let s): #expect(expected["value"] == .string(s), "\(key)")
    case .array(let type, let elements):
      #expect(expected["array_type"]?.stringValue == type.name || elements.isEmpty, "\(key)")
      let list = try #require(expected["value"]?.arrayValue, "\(key)")
      #expect(list.count == elements.count, "\(key)")
      let bits = expected["f32_bits"]?.arrayValue
      let texts = expected["value_text"]?.arrayValue
      for (i, (element, want)) in zip(elements, list).enumerated() {
        switch element {
        case .float32(let f): #expect(bits?[i].uint64Value == UInt64(f.bitPattern), "\(key)[\(i)]")
        case .float64(let d):
          #expect(want.doubleValue.map { $0.bitPattern == d.bitPattern } == true, "\(key)[\(i)]")
        case .uint64(let u): #expect(texts?[i].stringValue == String(u), "\(key)[\(i)]")
        case .int64(let n): #expect(texts?[i].stringValue == String(n), "\(key)[\(i)]")
        case .bool(let b): #expect(want == .bool(b), "\(key)[\(i)]")
        case .string(let s): #expect(want == .string(s), "\(key)[\(i)]")
        default: #expect(want.intValue == element.integerValue, "\(key)[\(i)]")
        }
      }
    default:
      #expect(expected["value"]?.intValue == value.integerValue, "\(key)")
    }
  }

  /// Oracle: gguf-py's writer. Writing a parsed fixture back gives the same bytes.
  @Test(
    "re-writing each gguf-py-written fixture reproduces its bytes",
    arguments: [
      "metadata-all-types.gguf", "quant-types.gguf", "alignment-8.gguf", "alignment-64.gguf",
      "alignment-256.gguf",
      "alignment-padding.gguf", "tiny-llama.gguf",
    ])
  func rewrite(file: String) throws {
    let path = fixturePath("gguf/\(file)")
    let gguf = try GGUFFile(path: path)
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let out = "\(folder)/copy.gguf"
    let specs = gguf.tensors.map { GGUFTensorSpec(name: $0.name, dims: $0.dims, type: $0.type) }
    try GGUFWriter.write(
      to: out, metadata: gguf.metadata, tensors: specs, alignment: gguf.alignment
    ) { sink in
      try sink.write(gguf.bytes(of: try #require(gguf.tensor(sink.spec.name))))
    }
    #expect(fileBytes(out) == fileBytes(path))
  }
}

/// Oracle: `Fixtures/golden/gguf-quantize.json`: gguf-py's `gguf.quants.quantize` on seeded
/// rows including zero, constant, outlier, tiny and negative-only rows. Tolerance: none; every
/// byte must match.
@Suite("GGUF quantization against gguf-py")
struct GGUFQuantizeTests {
  static let golden: JSONValue = (try? loadFixtureJSON("golden/gguf-quantize.json")) ?? .null
  static let types: [String] = golden["types"]?.objectMembers?.map(\.0) ?? []

  static func hex(_ bytes: [UInt8]) -> String {
    bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
  }

  @Test(
    "each type gguf-py quantizes: Flare gives identical bytes, or says it does not support it",
    arguments: types)
  func quantize(name: String) throws {
    let entry = try #require(Self.golden["types"]?[name])
    let type = try #require(GGMLType.named(name))
    let rows = try #require(Self.golden["rows"]?.intValue)
    let length = try #require(Self.golden["row_length"]?.intValue)
    let input = try #require(Self.golden["input_f32_bits"]?.arrayValue)
    let expected = try #require(entry["rows_hex"]?.arrayValue).compactMap(\.stringValue)
    #expect(expected.count == rows)
    guard type.canQuantize else {
      // TQ1_0, TQ2_0 and MXFP4 have no Flare quantizer yet; that must be an error, not bytes.
      #expect(["TQ1_0", "TQ2_0", "MXFP4"].contains(name), "\(name) should be quantizable")
      #expect(throws: FlareError("gguf", .unsupported, "")) {
        try [Float](repeating: 0, count: type.blockSize).withUnsafeBufferPointer { values in
          var out = [UInt8](repeating: 0, count: type.typeSize)
          try out.withUnsafeMutableBytes { try type.quantize(values, into: $0) }
        }
      }
      return
    }
    for row in 0..<rows {
      let bits = try #require(input[row].arrayValue)
      #expect(bits.count == length)
      let values = bits.map { Float(bitPattern: UInt32($0.uint64Value ?? 0)) }
      var out = [UInt8](repeating: 0, count: try #require(type.rowBytes(elements: length)))
      try values.withUnsafeBufferPointer { v in
        try out.withUnsafeMutableBytes { try type.quantizeParallel(v, into: $0) }
      }
      #expect(Self.hex(out) == expected[row], "\(name) row \(row)")
      if let crc = entry["dequant_crc32"]?.arrayValue?[row].uint64Value
        ?? entry["dequant_crc32"]?.uint64Value,
        entry["dequant_crc32"]?.arrayValue != nil
      {
        var back = [Float](repeating: 0, count: length)
        try out.withUnsafeBytes { raw in
          try back.withUnsafeMutableBufferPointer {
            try type.dequantize(raw, count: length, into: $0)
          }
        }
        #expect(
          UInt64(back.withUnsafeBytes { CRC32.checksum($0) }) == crc,
          "\(name) row \(row) dequantized")
      }
    }
  }
}

/// Oracle: the expectations in `Fixtures/gguf/malformed/manifest.json`, each file breaking one
/// rule of ggml's reader (or testing a case that must be accepted).
@Suite("malformed GGUF files")
struct GGUFMalformedTests {
  struct Case: Sendable, CustomTestStringConvertible {
    var file: String
    var expect: String
    var name: String?
    var testDescription: String { "\(file) → \(expect)" }
  }

  static let cases: [Case] = {
    guard let list = (try? loadFixtureJSON("gguf/malformed/manifest.json"))?.arrayValue else {
      return []
    }
    return list.compactMap { entry in
      guard let file = entry["file"]?.stringValue, let expect = entry["expect"]?.stringValue else {
        return nil
      }
      return Case(file: file, expect: expect, name: entry["tensor"]?.stringValue)
    }
  }()

  @Test("the corpus covers every rule")
  func coverage() {
    let codes = Set(Self.cases.map(\.expect))
    for code in [
      "badMagic", "unsupportedVersion", "truncated", "duplicateKey", "emptyKey", "invalidValueType",
      "invalidBool",
      "badAlignment", "nameTooLong", "duplicateTensor", "tooManyDims", "elementCountOverflow",
      "invalidTensorType",
      "removedTensorType", "blockSizeMismatch", "badOffset", "dataOutOfRange", "stringTooLong",
      "countTooLarge", "ok",
    ] {
      #expect(codes.contains(code), "no case for \(code)")
    }
  }

  @Test("each case gives its expected verdict with the file, tensor and offset", arguments: cases)
  func verdict(_ testCase: Case) {
    let path = fixturePath("gguf/malformed/\(testCase.file)")
    do {
      let file = try GGUFFile(path: path)
      #expect(testCase.expect == "ok", "accepted, but expected \(testCase.expect)")
      for tensor in file.tensors where tensor.type.canDequantize { _ = try? file.floats(tensor) }
    } catch {
      #expect(error.code.name == testCase.expect, "\(error)")
      #expect(error.path == path)
      #expect(error.offset != nil, "\(error)")
      if let name = testCase.name { #expect(error.tensor == name, "\(error)") }
    }
  }

  @Test("every truncated prefix of a GGUF is rejected until its last tensor's data is complete")
  func truncation() throws {
    let bytes = fileBytes(fixturePath("gguf/metadata-all-types.gguf"))
    let full = try bytes.withUnsafeBytes { try GGUFFile.parse($0) }
    let last = try #require(full.tensors.last)
    let needed = full.dataStart + last.offset + last.byteCount
    for n in 0..<bytes.count {
      let prefix = Array(bytes.prefix(n))
      prefix.withUnsafeBytes { raw in
        if n < needed {
          #expect(throws: FlareError.self, "prefix \(n)") { try GGUFFile.parse(raw) }
        } else {
          #expect((try? GGUFFile.parse(raw)) != nil, "prefix \(n) holds every tensor")
        }
      }
    }
  }

  // Oracle: properties that must hold of any input, not the parser's own checks: a refusal
  // points at a byte inside the file with one of the reader's codes; an accepted file can be
  // used by every reader of it (each tensor dequantized, the llama config read or refused by
  // key) and survives a round trip through the writer (re-encoded header + the same data parse
  // to the same keys, values and tensors). The campaign must reach both outcomes and several
  // rules.
  @Test("seeded byte flips: refusals point into the file, accepted files are usable and round-trip")
  func fuzz() throws {
    let original = fileBytes(fixturePath("gguf/tiny-llama.gguf"))
    var state: UInt64 = 0x6767_7566_5EED_0001  // seed
    func next() -> UInt64 {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return state >> 33
    }
    let known = Set(
      (Self.cases.map(\.expect) + ["invalidString", "invalidArgument"]).filter { $0 != "ok" })
    let header = min(original.count, 4096)
    var accepted = 0
    var codes: [String: Int] = [:]
    for round in 0..<1500 {
      var bytes = original
      for _ in 0..<(1 + Int(next() % 3)) {
        bytes[Int(next() % UInt64(header))] = UInt8(truncatingIfNeeded: next())
      }
      let parsed: GGUFFile.Parsed
      do {
        parsed = try bytes.withUnsafeBytes { try GGUFFile.parse($0) }
      } catch let error as FlareError {
        codes[error.code.name, default: 0] += 1
        #expect(known.contains(error.code.name), "round \(round): \(error)")
        #expect((error.offset ?? -1) >= 0 && (error.offset ?? -1) <= bytes.count, "\(error)")
        continue
      } catch {
        Issue.record("round \(round): not a FlareError: \(error)")
        continue
      }
      accepted += 1
      try bytes.withUnsafeBytes { raw in
        for tensor in parsed.tensors where tensor.type.canDequantize {
          let start = parsed.dataStart + tensor.offset
          var values = [Float](repeating: 0, count: tensor.elementCount)
          try values.withUnsafeMutableBufferPointer {
            try tensor.type.dequantize(
              UnsafeRawBufferPointer(rebasing: raw[start..<(start + tensor.byteCount)]),
              count: tensor.elementCount, into: $0)
          }
        }
      }
      do {
        _ = try DecoderConfig(
          ggufMetadata: parsed.metadata, tensors: parsed.tensors.map { ($0.name, $0.dims) },
          path: "fuzz.gguf")
      } catch {
        #expect(error.key != nil || error.tensor != nil, "round \(round): \(error)")
      }
      let specs = parsed.tensors.map { GGUFTensorSpec(name: $0.name, dims: $0.dims, type: $0.type) }
      let rewritten = try GGUFWriter.header(
        metadata: parsed.metadata, tensors: specs, alignment: parsed.alignment)
      #expect(rewritten.bytes.count == parsed.dataStart, "round \(round)")
      let again = try (rewritten.bytes + bytes[parsed.dataStart...]).withUnsafeBytes {
        try GGUFFile.parse($0)
      }
      #expect(again.metadata.map(\.key) == parsed.metadata.map(\.key), "round \(round)")
      #expect(again.metadata.map(\.value) == parsed.metadata.map(\.value), "round \(round)")
      #expect(again.alignment == parsed.alignment)
      for (a, b) in zip(again.tensors, parsed.tensors) {
        #expect(
          a.name == b.name && a.dims == b.dims && a.type == b.type && a.offset == b.offset,
          "round \(round): \(b.name)")
      }
      #expect(again.tensors.count == parsed.tensors.count)
    }
    #expect(accepted > 100 && 1500 - accepted > 100, "accepted \(accepted)")
    #expect(codes.count >= 5, "refusals reached only \(codes)")
  }
}

@Suite("GGUF writer rules")
struct GGUFWriterTests {
  @Test("invalid metadata or tensors are refused and nothing is written")
  func refusals() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let path = "\(folder)/out.gguf"
    let arch = GGUFKeyValue(key: "general.architecture", value: .string("llama"))
    let spec = GGUFTensorSpec(name: "w", dims: [32, 2], type: .q8_0)
    let cases: [([GGUFKeyValue], [GGUFTensorSpec], Int, FlareError.Code)] = [
      ([arch, arch], [], 32, .duplicateKey),
      ([GGUFKeyValue(key: "", value: .uint8(1))], [], 32, .emptyKey),
      ([GGUFKeyValue(key: "a", value: .array(.array, []))], [], 32, .invalidValueType),
      ([arch], [spec, spec], 32, .duplicateTensor),
      (
        [arch], [GGUFTensorSpec(name: String(repeating: "n", count: 64), dims: [1], type: .f32)],
        32, .nameTooLong
      ),
      ([arch], [GGUFTensorSpec(name: "q", dims: [33], type: .q8_0)], 32, .blockSizeMismatch),
      ([arch], [GGUFTensorSpec(name: "d", dims: [1, 1, 1, 1, 1], type: .f32)], 32, .tooManyDims),
      ([arch], [], 48, .badAlignment),
      ([arch], [], 64, .badAlignment),
    ]
    for (metadata, tensors, alignment, code) in cases {
      #expect(throws: FlareError("gguf", code, "")) {
        try GGUFWriter.write(to: path, metadata: metadata, tensors: tensors, alignment: alignment) {
          _ in
        }
      }
    }
    #expect(throws: FlareError("gguf", .invalidArgument, "")) {
      try GGUFWriter.write(to: path, metadata: [arch], tensors: [spec]) { sink in
        // The bytes stay alive for the call (AddressSanitizer found the pointer escaping its
        // closure here once).
        try [UInt8](repeating: 0, count: 10).withUnsafeBytes { try sink.write($0) }
      }
    }
    #expect(folderContents(folder).isEmpty)
  }

  @Test("quantized values written through the sink read back as the dequantized quantization")
  func floatsRoundTrip() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let path = "\(folder)/q.gguf"
    let values = (0..<128).map { Float(sin(Double($0) * 0.37)) * 3 }
    let types: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1]
    let specs = types.map { GGUFTensorSpec(name: "t.\($0.name)", dims: [64, 2], type: $0) }
    try GGUFWriter.write(
      to: path, metadata: [GGUFKeyValue(key: "general.architecture", value: .string("llama"))],
      tensors: specs
    ) { sink in
      try values.withUnsafeBufferPointer { try sink.write(floats: $0) }
    }
    let file = try GGUFFile(path: path)
    for (type, tensor) in zip(types, file.tensors) {
      let back = try file.floats(tensor)
      var bytes = [UInt8](repeating: 0, count: try #require(type.rowBytes(elements: 128)))
      try values.withUnsafeBufferPointer { v in
        try bytes.withUnsafeMutableBytes { try type.quantize(v, into: $0) }
      }
      #expect(Array(file.bytes(of: tensor)) == bytes, "\(type.name)")
      let maxError = zip(back, values).map { abs($0 - $1) }.max() ?? 0
      // Worst case per type for values within ±3: half a step (plus the F16 rounding of the
      // scale), or a whole step at the
      // positive end of Q4_0/Q5_0's asymmetric grids (max/8, max/16).
      let bounds: [String: Float] = [
        "F32": 0, "F16": 0.002, "BF16": 0.012, "Q8_0": 0.013, "Q4_0": 0.376, "Q4_1": 0.2,
        "Q5_0": 0.188, "Q5_1": 0.1,
      ]
      #expect(maxError <= bounds[type.name, default: 0], "\(type.name): \(maxError)")
    }
  }
}

@Suite("parallel block splitting")
struct ChunkTests {
  @Test("chunks cover every item exactly once and start on unit boundaries")
  func cover() {
    for count in [0, 1, 31, 32, 576, 8191, 8192, 8193, 100_000, 1 << 20] {
      for granularity in [1, 32, 256, 8192] {
        let ranges = chunkRanges(count: count, granularity: granularity)
        #expect(ranges.reduce(0) { $0 + $1.count } == count, "\(count)/\(granularity)")
        #expect(zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
        #expect(ranges.allSatisfy { $0.lowerBound % granularity == 0 })
        #expect(ranges.first?.lowerBound ?? 0 == 0 && (ranges.last?.upperBound ?? 0) == count)
      }
    }
  }
}
