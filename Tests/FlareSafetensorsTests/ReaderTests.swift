import FlareCore
import FlareSafetensors
import Testing
import _FlareTestSupport

/// Oracle: `Fixtures/golden/safetensors-values.json`, written by
/// `Fixtures/safetensors/make_fixtures.py` from files the Python `safetensors` package wrote,
/// with values from numpy and ml_dtypes. Tolerance: none (bit-exact).
@Suite("reading files written by the safetensors package")
struct GoldenReadTests {
  static let golden: JSONValue = (try? loadFixtureJSON("golden/safetensors-values.json")) ?? .null
  static let files: [String] = golden.objectMembers?.map(\.0) ?? []

  @Test("headers, metadata, offsets and every value match the oracle", arguments: files)
  func golden(file: String) throws {
    let entry = try #require(Self.golden[file])
    let reader = try SafetensorsFile(path: fixturePath("safetensors/\(file)"))
    #expect(UInt64(reader.header.headerLength) == entry["header_length"]?.uint64Value)
    #expect(
      UInt64(CRC32.checksum(reader.file_bytesForTest)) == entry["file_sha_crc32"]?.uint64Value)
    let expectedMetadata = entry["metadata"]?.objectMembers?.map {
      "\($0.0)=\($0.1.stringValue ?? "?")"
    }
    #expect(reader.metadata?.map { "\($0.key)=\($0.value)" } == expectedMetadata)
    let tensors = try #require(entry["tensors"]?.arrayValue)
    #expect(reader.tensors.count == tensors.count)
    for (info, want) in zip(reader.tensors, tensors) {
      #expect(info.name == want["name"]?.stringValue)
      #expect(info.dtype.rawValue == want["dtype"]?.stringValue)
      #expect(info.shape.map { JSONValue.integer($0) } == want["shape"]?.arrayValue)
      #expect(
        [info.dataOffsets.lowerBound, info.dataOffsets.upperBound].map { JSONValue.integer($0) }
          == want["data_offsets"]?.arrayValue)
      let bits = try #require(want["f32_bits"]?.arrayValue).map { UInt32($0.uint64Value ?? 0) }
      let values = reader.view(info).floats()
      #expect(values.map(\.bitPattern) == bits, "tensor \(info.name)")
      if let exact = want["exact"]?.arrayValue {
        #expect(
          integers(reader.view(info)) == exact.compactMap(\.stringValue), "tensor \(info.name)")
      }
    }
  }

  /// The exact integer values of an integer or BOOL tensor, as decimal strings.
  func integers(_ view: TensorView) -> [String] {
    let raw = view.rawBytes
    let count = view.info.elementCount
    let size = view.dtype.bitWidth / 8
    return (0..<count).map { i -> String in
      var value: UInt64 = 0
      for b in 0..<size { value |= UInt64(raw[i * size + b]) << (8 * UInt64(b)) }
      switch view.dtype {
      case .i8: return String(Int8(truncatingIfNeeded: value))
      case .i16: return String(Int16(truncatingIfNeeded: value))
      case .i32: return String(Int32(truncatingIfNeeded: value))
      case .i64: return String(Int64(bitPattern: value))
      default: return String(value)
      }
    }
  }

  @Test("unaligned tensors are read by copying with the same values as aligned reads")
  func unaligned() throws {
    let reader = try SafetensorsFile(path: fixturePath("safetensors/unaligned.safetensors"))
    let unaligned = reader.views.filter { !$0.isAligned }
    #expect(!unaligned.isEmpty)
    for view in reader.views where view.dtype == .f32 {
      let direct = try view.withFloat32Elements { Array($0) }
      #expect(direct.map(\.bitPattern) == view.floats().map(\.bitPattern))
    }
  }
}

extension SafetensorsFile {
  /// The whole file's bytes (tests only).
  var file_bytesForTest: [UInt8] { fileBytes(path) }
}

/// Oracle: the expectations in `Fixtures/safetensors/malformed/manifest.json`, each file made
/// to break exactly one rule of the format (or to test a case that must be accepted).
@Suite("malformed files")
struct MalformedTests {
  struct Case: Sendable, CustomTestStringConvertible {
    var file: String
    var expect: String
    var tensor: String?
    var testDescription: String { "\(file) → \(expect)" }
  }

  static let cases: [Case] = {
    guard let list = (try? loadFixtureJSON("safetensors/malformed/manifest.json"))?.arrayValue
    else { return [] }
    return list.compactMap { entry in
      guard let file = entry["file"]?.stringValue, let expect = entry["expect"]?.stringValue else {
        return nil
      }
      return Case(file: file, expect: expect, tensor: entry["tensor"]?.stringValue)
    }
  }()

  @Test("the corpus is present and covers every rule")
  func coverage() {
    let codes = Set(Self.cases.map(\.expect))
    for code in [
      "headerTooSmall", "headerTooLarge", "invalidHeaderLength", "invalidUTF8", "invalidJSON",
      "invalidHeader",
      "invalidMetadata", "duplicateKey", "invalidName", "unknownDType", "invalidOffset",
      "shapeOverflow",
      "misalignedSlice", "tensorInvalidInfo", "incompleteBuffer", "ok",
    ] {
      #expect(codes.contains(code), "no case for \(code)")
    }
  }

  @Test("each case gives its expected verdict, naming the file and tensor", arguments: cases)
  func verdict(_ testCase: Case) {
    let path = fixturePath("safetensors/malformed/\(testCase.file)")
    do {
      let file = try SafetensorsFile(path: path)
      #expect(testCase.expect == "ok", "accepted, but expected \(testCase.expect)")
      _ = file.views.map { $0.floats() }
    } catch {
      #expect(error.code.name == testCase.expect, "\(error)")
      #expect(error.path == path)
      #expect(error.offset != nil, "error should give a byte offset: \(error)")
      if let tensor = testCase.tensor { #expect(error.tensor == tensor, "\(error)") }
    }
  }

  @Test("every truncated prefix of a valid file is rejected, never a crash")
  func truncation() throws {
    let bytes = fileBytes(fixturePath("safetensors/small.safetensors"))
    #expect(bytes.count > 100)
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    for n in 0..<bytes.count {
      let path = "\(folder)/p\(n).safetensors"
      writeBytes(Array(bytes.prefix(n)), to: path)
      #expect(throws: FlareError.self, "prefix \(n)") { try SafetensorsFile(path: path) }
      // The header parser on memory too: no file system in the way.
      let prefix = Array(bytes.prefix(n))
      _ = prefix.withUnsafeBytes { raw in
        #expect(throws: FlareError.self) { try SafetensorsHeader.parse(file: raw) }
      }
    }
    #expect(
      try SafetensorsFile(path: fixturePath("safetensors/small.safetensors")).tensors.count == 3)
  }

  @Test("a header that claims 100 GB is refused before anything is allocated")
  func hugeClaim() {
    var bytes = withUnsafeBytes(of: UInt64(100_000_000_000).littleEndian) { Array($0) }
    bytes += Array("{}".utf8)
    _ = bytes.withUnsafeBytes { raw in
      #expect(throws: FlareError("safetensors", .headerTooLarge, "")) {
        try SafetensorsHeader.parse(file: raw)
      }
    }
  }

  @Test("random byte flips in a valid file give an error or a valid file, never a crash")
  func fuzz() {
    let original = fileBytes(fixturePath("safetensors/dtypes.safetensors"))
    var state: UInt64 = 0x5EED_F1A2_E000_0001  // seed, printed on failure through the message
    func next() -> UInt64 {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return state >> 33
    }
    for round in 0..<2000 {
      var bytes = original
      for _ in 0..<(1 + Int(next() % 4)) {
        let position = Int(next() % UInt64(min(bytes.count, 1500)))
        bytes[position] = UInt8(truncatingIfNeeded: next())
      }
      bytes.withUnsafeBytes { raw in
        if let header = try? SafetensorsHeader.parse(file: raw) {
          #expect(
            header.dataStart + header.dataLength == raw.count,
            "round \(round) seed 0x5EEDF1A2E0000001")
        }
      }
    }
  }
}
