import FlareCore

/// One tensor entry of a safetensors header.
public struct TensorInfo: Equatable, Sendable {
  public var name: String
  public var dtype: DType
  public var shape: [Int]
  /// `[begin, end)` relative to the start of the data section.
  public var dataOffsets: Range<Int>

  public init(name: String, dtype: DType, shape: [Int], dataOffsets: Range<Int>) {
    self.name = name
    self.dtype = dtype
    self.shape = shape
    self.dataOffsets = dataOffsets
  }

  /// Number of elements (1 for a scalar, 0 if any dimension is 0).
  public var elementCount: Int { FlareCore.elementCount(shape) ?? 0 }

  /// Size of the tensor's data in bytes.
  public var byteCount: Int { dataOffsets.count }
}

/// A parsed and fully validated safetensors header.
public struct SafetensorsHeader: Sendable {
  /// The maximum header length the reference reader accepts (and Flare with it).
  public static let maxHeaderLength = 100_000_000

  /// Length `N` of the JSON header in bytes (as stored in the first 8 bytes).
  public var headerLength: Int
  /// `__metadata__` entries in header order, or `nil` if the header has none.
  public var metadata: [(key: String, value: String)]?
  /// Tensors in file order (sorted by data offset; header order breaks ties).
  public var tensors: [TensorInfo]
  /// Tensors in the order the header lists them.
  public var headerOrder: [String]

  /// Absolute file offset of the data section (`8 + N`).
  public var dataStart: Int { 8 + headerLength }
  /// Size of the data section the tensors cover.
  public var dataLength: Int { tensors.last?.dataOffsets.upperBound ?? 0 }

  /// Parses and validates the header of a safetensors file held in `file`.
  ///
  /// Applies every rule of the reference reader (header cap before anything is allocated,
  /// UTF-8, JSON, schema, contiguous non-overlapping offsets starting at 0, shape × dtype size
  /// with checked arithmetic, sub-byte divisibility, exact coverage of the data section), and is
  /// stricter where the reference is lax: duplicate keys, empty names, control characters in
  /// names, non-string metadata and unknown fields in a tensor entry are rejected.
  ///
  /// - Throws: ``FlareError`` with a safetensors code, the tensor and the absolute byte offset.
  public static func parse(file: UnsafeRawBufferPointer) throws(FlareError) -> SafetensorsHeader {
    var reader = ByteReader(file)
    guard let wide = reader.read(UInt64.self) else {
      throw .safetensors(
        .headerTooSmall, "file is \(file.count) bytes, shorter than the 8-byte header length",
        offset: 0)
    }
    guard wide <= UInt64(maxHeaderLength) else {
      throw .safetensors(
        .headerTooLarge, "header length \(wide) exceeds the limit of \(maxHeaderLength) bytes",
        offset: 0)
    }
    let length = Int(wide)  // ≤ 100,000,000, so it fits
    guard let headerBytes = reader.readBytes(length) else {
      throw .safetensors(
        .invalidHeaderLength,
        "header length \(length) runs past the end of the file (\(file.count) bytes)", offset: 0)
    }
    return try parse(headerJSON: headerBytes, headerLength: length, fileSize: file.count)
  }

  /// Validates header JSON whose data section has `fileSize - 8 - headerLength` bytes.
  static func parse(headerJSON: UnsafeRawBufferPointer, headerLength: Int, fileSize: Int)
    throws(FlareError) -> SafetensorsHeader
  {
    guard String(validating: headerJSON, as: UTF8.self) != nil else {
      throw .safetensors(
        .invalidUTF8, "header is not valid UTF-8", offset: 8 + firstInvalidUTF8(headerJSON))
    }
    let json: JSONValue
    do {
      json = try JSONParser.parse(headerJSON)
    } catch {
      throw .safetensors(
        .invalidJSON, "header is not valid JSON: \(error.message)", offset: 8 + error.offset)
    }
    guard let members = json.objectMembers else {
      throw .safetensors(.invalidHeader, "header is not a JSON object", offset: 8)
    }
    var metadata: [(key: String, value: String)]?
    var entries: [TensorInfo] = []
    var seen = Set<String>()
    var sawMetadata = false
    for (key, value) in members {
      if key == "__metadata__" {
        if sawMetadata {
          throw .safetensors(.duplicateKey, "key '__metadata__' appears twice", offset: 8)
        }
        sawMetadata = true
        metadata = try parseMetadata(value)
        continue
      }
      guard seen.insert(key).inserted else {
        throw .safetensors(
          .duplicateKey, "name appears more than once in the header", tensor: key, offset: 8)
      }
      try validateName(key)
      entries.append(try parseEntry(name: key, value))
    }
    let headerOrder = entries.map(\.name)
    let dataStart = 8 + headerLength
    let sorted = entries.enumerated().sorted {
      ($0.element.dataOffsets.lowerBound, $0.element.dataOffsets.upperBound, $0.offset)
        < ($1.element.dataOffsets.lowerBound, $1.element.dataOffsets.upperBound, $1.offset)
    }.map(\.element)
    var expectedBegin = 0
    for info in sorted {
      let range = info.dataOffsets
      guard range.lowerBound == expectedBegin else {
        let what =
          range.lowerBound < expectedBegin
          ? "overlaps the previous tensor, which ends at \(expectedBegin)"
          : "leaves a gap after offset \(expectedBegin)"
        throw .safetensors(
          .invalidOffset, "data offsets [\(range.lowerBound), \(range.upperBound)) \(what)",
          tensor: info.name, offset: dataStart &+ min(range.lowerBound, Int.max - dataStart))
      }
      guard let count = elementCount(info.shape) else {
        throw .safetensors(
          .shapeOverflow, "element count of shape \(info.shape) overflows", tensor: info.name,
          offset: dataStart + range.lowerBound)
      }
      let (bits, overflow) = count.multipliedReportingOverflow(by: info.dtype.bitWidth)
      guard !overflow else {
        throw .safetensors(
          .shapeOverflow, "bit count of shape \(info.shape) × \(info.dtype.rawValue) overflows",
          tensor: info.name, offset: dataStart + range.lowerBound)
      }
      guard bits % 8 == 0 else {
        throw .safetensors(
          .misalignedSlice,
          "\(count) elements of \(info.dtype.rawValue) are \(bits) bits, not a whole number of bytes",
          tensor: info.name, offset: dataStart + range.lowerBound)
      }
      guard range.count == bits / 8 else {
        throw .safetensors(
          .tensorInvalidInfo,
          "data offsets [\(range.lowerBound), \(range.upperBound)) hold \(range.count) bytes, but shape \(info.shape) of \(info.dtype.rawValue) needs \(bits / 8)",
          tensor: info.name, offset: dataStart + range.lowerBound)
      }
      expectedBegin = range.upperBound
    }
    let dataSize = fileSize - dataStart
    guard expectedBegin == dataSize else {
      let message =
        expectedBegin < dataSize
        ? "data section has \(dataSize) bytes but the tensors cover only \(expectedBegin) (\(dataSize - expectedBegin) trailing bytes)"
        : "tensors need \(expectedBegin) bytes of data but the data section has only \(dataSize) (file truncated?)"
      throw .safetensors(
        .incompleteBuffer, message, offset: dataStart + min(expectedBegin, dataSize))
    }
    return SafetensorsHeader(
      headerLength: headerLength, metadata: metadata, tensors: sorted, headerOrder: headerOrder)
  }

  /// Offset of the first byte that is not part of a valid UTF-8 sequence.
  private static func firstInvalidUTF8(_ bytes: UnsafeRawBufferPointer) -> Int {
    var iterator = bytes.makeIterator()
    var parser = Unicode.UTF8.ForwardParser()
    var offset = 0
    while true {
      switch parser.parseScalar(from: &iterator) {
      case .valid(let encoded): offset += encoded.count
      case .emptyInput, .error: return offset
      }
    }
  }

  static func validateName(_ name: String) throws(FlareError) {
    guard !name.isEmpty else {
      throw .safetensors(.invalidName, "tensor name is empty", tensor: name, offset: 8)
    }
    if let bad = name.unicodeScalars.first(where: { $0.value < 0x20 || $0.value == 0x7F }) {
      throw .safetensors(
        .invalidName, "name contains the control character U+\(hex4(bad.value))",
        tensor: name, offset: 8)
    }
  }

  private static func parseMetadata(_ value: JSONValue) throws(FlareError) -> [(
    key: String, value: String
  )]? {
    if value == .null { return nil }
    guard let members = value.objectMembers else {
      throw .safetensors(.invalidHeader, "'__metadata__' is not an object", offset: 8)
    }
    var result: [(key: String, value: String)] = []
    var seen = Set<String>()
    for (key, member) in members {
      guard seen.insert(key).inserted else {
        throw .safetensors(
          .duplicateKey, "metadata key '\(key.escapedForMessage)' appears twice", offset: 8)
      }
      guard let text = member.stringValue else {
        throw .safetensors(
          .invalidMetadata, "metadata value of '\(key.escapedForMessage)' is not a string",
          offset: 8)
      }
      result.append((key, text))
    }
    return result
  }

  private static func parseEntry(name: String, _ value: JSONValue) throws(FlareError) -> TensorInfo
  {
    guard let members = value.objectMembers else {
      throw .safetensors(.invalidHeader, "entry is not an object", tensor: name, offset: 8)
    }
    var dtypeValue: JSONValue?
    var shapeValue: JSONValue?
    var offsetsValue: JSONValue?
    for (key, member) in members {
      switch key {
      case "dtype" where dtypeValue == nil: dtypeValue = member
      case "shape" where shapeValue == nil: shapeValue = member
      case "data_offsets" where offsetsValue == nil: offsetsValue = member
      case "dtype", "shape", "data_offsets":
        throw .safetensors(.duplicateKey, "field '\(key)' appears twice", tensor: name, offset: 8)
      default:
        throw .safetensors(
          .invalidHeader, "unknown field '\(key.escapedForMessage)'", tensor: name, offset: 8)
      }
    }
    guard let dtypeValue, let shapeValue, let offsetsValue else {
      let missing = [("dtype", dtypeValue), ("shape", shapeValue), ("data_offsets", offsetsValue)]
        .filter { $0.1 == nil }.map(\.0).joined(separator: ", ")
      throw .safetensors(.invalidHeader, "entry is missing \(missing)", tensor: name, offset: 8)
    }
    guard let dtypeName = dtypeValue.stringValue else {
      throw .safetensors(.invalidHeader, "dtype is not a string", tensor: name, offset: 8)
    }
    guard let dtype = DType(rawValue: dtypeName) else {
      throw .safetensors(
        .unknownDType, "unknown dtype '\(dtypeName.escapedForMessage)'", tensor: name, offset: 8)
    }
    guard let dims = shapeValue.arrayValue else {
      throw .safetensors(.invalidHeader, "shape is not an array", tensor: name, offset: 8)
    }
    var shape: [Int] = []
    for dim in dims {
      guard let wide = dim.uint64Value else {
        throw .safetensors(
          .invalidHeader,
          "shape \(JSONWriter.compact(shapeValue)) is not a list of non-negative integers",
          tensor: name, offset: 8)
      }
      guard let size = Int(exactly: wide) else {
        throw .safetensors(
          .shapeOverflow, "dimension \(wide) does not fit in a 64-bit signed integer", tensor: name,
          offset: 8)
      }
      shape.append(size)
    }
    guard let pair = offsetsValue.arrayValue, pair.count == 2, let begin64 = pair[0].uint64Value,
      let end64 = pair[1].uint64Value
    else {
      throw .safetensors(
        .invalidHeader,
        "data_offsets \(JSONWriter.compact(offsetsValue)) is not a pair of non-negative integers",
        tensor: name, offset: 8)
    }
    guard let begin = Int(exactly: begin64), let end = Int(exactly: end64), begin <= end else {
      throw .safetensors(
        .invalidOffset, "data offsets [\(begin64), \(end64)) are out of order or out of range",
        tensor: name, offset: 8)
    }
    return TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end)
  }
}

/// `value` as at least four uppercase hex digits.
func hex4(_ value: UInt32) -> String {
  let hex = String(value, radix: 16, uppercase: true)
  return String(repeating: "0", count: max(0, 4 - hex.count)) + hex
}
