import FlareCore

/// A tensor entry of a GGUF file.
public struct GGUFTensorInfo: Sendable {
  public var name: String
  /// Dimensions in GGUF order: `dims[0]` is the innermost (contiguous) one.
  public var dims: [Int]
  public var type: GGMLType
  /// Offset of the data relative to the start of the data section.
  public var offset: Int
  /// Bytes of data.
  public var byteCount: Int
  /// File offset of this tensor's info record.
  public var infoOffset: Int

  /// Number of elements.
  public var elementCount: Int { dims.reduce(1, *) }
}

/// A memory-mapped, validated GGUF file (version 2 or 3, little-endian).
///
/// Validation is as strict as ggml's `gguf.cpp`: counts and lengths bounded by the remaining
/// bytes, unique non-empty keys, no nested arrays, BOOL values 0 or 1, `general.alignment` a
/// `UINT32` power of two, tensor names under 64 bytes and unique, at most 4 dimensions, no
/// element-count overflow, known and not removed types, rows a whole number of blocks, offsets
/// exactly cumulative and aligned, and all data inside the file.
public final class GGUFFile: @unchecked Sendable {
  // @unchecked Sendable: immutable after init; the mapping is read-only.
  public static let maxNameLength = 63
  public static let defaultAlignment = 32

  public let path: String
  public let version: UInt32
  public let metadata: [GGUFKeyValue]
  public let tensors: [GGUFTensorInfo]
  public let alignment: Int
  /// File offset of the data section.
  public let dataStart: Int
  let file: MappedFile
  private let keyIndex: [String: Int]
  private let tensorIndex: [String: Int]

  /// Opens and validates `path`.
  /// - Throws: ``FlareError`` naming the file, the key or tensor, and the byte offset.
  public init(path: String) throws(FlareError) {
    self.path = path
    file = try MappedFile(path: path)
    do {
      let parsed = try GGUFFile.parse(file.bytes)
      version = parsed.version
      metadata = parsed.metadata
      tensors = parsed.tensors
      alignment = parsed.alignment
      dataStart = parsed.dataStart
    } catch {
      throw error.inFile(path)
    }
    keyIndex = Dictionary(uniqueKeysWithValues: metadata.enumerated().map { ($1.key, $0) })
    tensorIndex = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
  }

  /// Size of the file in bytes.
  public var fileSize: Int { file.count }

  /// The value of metadata key `key`, or `nil`.
  public func value(_ key: String) -> GGUFValue? { keyIndex[key].map { metadata[$0].value } }

  /// The tensor named `name`, or `nil`.
  public func tensor(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

  /// The raw bytes of a tensor's data, in place.
  public func bytes(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
    let start = dataStart + tensor.offset  // validated to lie inside the file
    return UnsafeRawBufferPointer(rebasing: file.bytes[start..<(start + tensor.byteCount)])
  }

  /// Drops the mapped pages of `range` (byte offsets relative to the tensor) after a pass.
  public func releasePages(of tensor: GGUFTensorInfo, bytes range: Range<Int>) {
    let start = dataStart + tensor.offset
    file.release((start + range.lowerBound)..<(start + range.upperBound))
  }

  /// The tensor's values as `Float`, dequantized on all cores.
  ///
  /// With `releasing`, the tensor's mapped pages are dropped afterwards (for one pass over a
  /// large file).
  /// - Throws: ``FlareError`` `.unsupported` for types without a dequantizer.
  public func floats(_ tensor: GGUFTensorInfo, releasing: Bool = false) throws -> [Float] {
    let count = tensor.elementCount
    var output = [Float](repeating: 0, count: count)
    try output.withUnsafeMutableBufferPointer {
      try tensor.type.dequantizeParallel(bytes(of: tensor), count: count, into: $0)
    }
    if releasing { releasePages(of: tensor, bytes: 0..<tensor.byteCount) }
    return output
  }

  struct Parsed {
    var version: UInt32
    var metadata: [GGUFKeyValue]
    var tensors: [GGUFTensorInfo]
    var alignment: Int
    var dataStart: Int
  }

  /// Parses and validates a whole GGUF file held in memory.
  static func parse(_ bytes: UnsafeRawBufferPointer) throws(FlareError) -> Parsed {
    var reader = ByteReader(bytes)
    func need<T: FixedWidthInteger>(_: T.Type, _ what: String, tensor: String? = nil)
      throws(FlareError) -> T
    {
      guard let value = reader.read(T.self) else {
        throw .gguf(.truncated, "file ends inside \(what)", tensor: tensor, offset: reader.offset)
      }
      return value
    }
    guard bytes.count >= 4 else {
      throw .gguf(
        .truncated, "file is \(bytes.count) bytes, shorter than the 4-byte magic", offset: 0)
    }
    guard let magic = reader.read(UInt32.self), magic == 0x4655_4747 else {
      throw .gguf(.badMagic, "not a GGUF file (the first 4 bytes are not 'GGUF')", offset: 0)
    }
    let version = try need(UInt32.self, "the version")
    guard version == 2 || version == 3 else {
      let hint = version > 0xFFFF ? " (a big-endian file? Flare reads little-endian GGUF only)" : ""
      throw .gguf(
        .unsupportedVersion,
        "GGUF version \(version) is not supported; versions 2 and 3 are\(hint)", offset: 4)
    }
    let tensorCountOffset = reader.offset
    let tensorCount64 = try need(UInt64.self, "the tensor count")
    let kvCountOffset = reader.offset
    let kvCount64 = try need(UInt64.self, "the key/value count")
    // Each tensor info takes at least 24 bytes and each key/value at least 13.
    guard let tensorCount = Int(exactly: tensorCount64), tensorCount <= reader.remaining / 24 else {
      throw .gguf(
        .countTooLarge, "tensor count \(tensorCount64) is more than the file could hold",
        offset: tensorCountOffset)
    }
    guard let kvCount = Int(exactly: kvCount64), kvCount <= reader.remaining / 13 else {
      throw .gguf(
        .countTooLarge, "key/value count \(kvCount64) is more than the file could hold",
        offset: kvCountOffset)
    }

    var metadata: [GGUFKeyValue] = []
    metadata.reserveCapacity(kvCount)
    var seenKeys = Set<String>()
    for _ in 0..<kvCount {
      let start = reader.offset
      let key = try readString(&reader, what: "a key")
      guard !key.isEmpty else { throw .gguf(.emptyKey, "a metadata key is empty", offset: start) }
      guard seenKeys.insert(key).inserted else {
        throw .gguf(
          .duplicateKey, "metadata key '\(key.escapedForMessage)' appears twice", offset: start)
      }
      let typeOffset = reader.offset
      let typeID = try need(UInt32.self, "the type of key '\(key.escapedForMessage)'")
      guard let type = GGUFValueType(rawValue: typeID) else {
        throw .gguf(
          .invalidValueType, "key '\(key.escapedForMessage)' has unknown value type \(typeID)",
          offset: typeOffset)
      }
      let value = try readValue(&reader, type: type, key: key)
      metadata.append(GGUFKeyValue(key: key, value: value, offset: start))
    }

    var alignment = defaultAlignment
    if let entry = metadata.first(where: { $0.key == "general.alignment" }) {
      guard case .uint32(let value) = entry.value else {
        throw .gguf(
          .badAlignment, "general.alignment is \(entry.value.type.name), not UINT32",
          offset: entry.offset)
      }
      guard value > 0, value & (value - 1) == 0 else {
        throw .gguf(
          .badAlignment, "general.alignment \(value) is not a power of two", offset: entry.offset)
      }
      alignment = Int(value)
    }

    var infos: [GGUFTensorInfo] = []
    infos.reserveCapacity(tensorCount)
    var seenNames = Set<String>()
    for _ in 0..<tensorCount {
      let start = reader.offset
      let name = try readString(&reader, what: "a tensor name")
      guard name.utf8.count <= maxNameLength else {
        throw .gguf(
          .nameTooLong, "name is \(name.utf8.count) bytes; at most \(maxNameLength) are allowed",
          tensor: name, offset: start)
      }
      guard seenNames.insert(name).inserted else {
        throw .gguf(.duplicateTensor, "tensor name appears twice", tensor: name, offset: start)
      }
      let dimsOffset = reader.offset
      let nDims = try need(
        UInt32.self, "the dimension count of '\(name.escapedForMessage)'", tensor: name)
      guard nDims <= 4 else {
        throw .gguf(
          .tooManyDims, "has \(nDims) dimensions; at most 4 are allowed", tensor: name,
          offset: dimsOffset)
      }
      var dims: [Int] = []
      var elements = 1
      for _ in 0..<nDims {
        let dimOffset = reader.offset
        let wide = try need(
          UInt64.self, "the dimensions of '\(name.escapedForMessage)'", tensor: name)
        guard let dim = Int(exactly: wide) else {
          throw .gguf(
            .elementCountOverflow, "dimension \(wide) does not fit in a signed 64-bit integer",
            tensor: name, offset: dimOffset)
        }
        let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
        guard !overflow else {
          throw .gguf(
            .elementCountOverflow, "element count overflows", tensor: name, offset: dimOffset)
        }
        elements = product
        dims.append(dim)
      }
      let typeOffset = reader.offset
      let typeID = try need(UInt32.self, "the type of '\(name.escapedForMessage)'", tensor: name)
      guard let type = GGMLType.withID(typeID) else {
        if GGMLType.removedIDs.contains(typeID) {
          throw .gguf(
            .removedTensorType, "type id \(typeID) was removed from ggml", tensor: name,
            offset: typeOffset)
        }
        throw .gguf(
          .invalidTensorType, "unknown type id \(typeID)", tensor: name, offset: typeOffset)
      }
      let rowLength = dims.first ?? 1
      guard rowLength % type.blockSize == 0 else {
        throw .gguf(
          .blockSizeMismatch,
          "row length \(rowLength) is not a multiple of the \(type.name) block size \(type.blockSize)",
          tensor: name, offset: dimsOffset)
      }
      guard let rowBytes = type.rowBytes(elements: rowLength),
        case (let size, let overflow) = rowBytes.multipliedReportingOverflow(
          by: rowLength == 0 ? 0 : elements / rowLength),
        !overflow
      else {
        throw .gguf(.elementCountOverflow, "byte size overflows", tensor: name, offset: dimsOffset)
      }
      let offsetPosition = reader.offset
      let offset64 = try need(
        UInt64.self, "the offset of '\(name.escapedForMessage)'", tensor: name)
      guard let offset = Int(exactly: offset64) else {
        throw .gguf(
          .badOffset, "offset \(offset64) is out of range", tensor: name, offset: offsetPosition)
      }
      infos.append(
        GGUFTensorInfo(
          name: name, dims: dims, type: type, offset: offset, byteCount: size, infoOffset: start))
    }

    let dataStart = align(reader.offset, alignment)
    var expected = 0
    for info in infos {
      guard info.offset == expected else {
        throw .gguf(
          .badOffset,
          "has offset \(info.offset), expected \(expected) (offsets must be cumulative, each padded to \(alignment) bytes)",
          tensor: info.name, offset: info.infoOffset)
      }
      let (end, overflow) = expected.addingReportingOverflow(info.byteCount)
      guard !overflow, dataStart <= bytes.count, end <= bytes.count - dataStart else {
        throw .gguf(
          .dataOutOfRange,
          "data [\(info.offset), \(info.offset &+ info.byteCount)) runs past the end of the file (data section has \(max(0, bytes.count - dataStart)) bytes)",
          tensor: info.name, offset: dataStart &+ info.offset)
      }
      expected = align(end, alignment)
    }
    return Parsed(
      version: version, metadata: metadata, tensors: infos, alignment: alignment,
      dataStart: dataStart)
  }

  static func align(_ value: Int, _ alignment: Int) -> Int {
    let remainder = value % alignment
    return remainder == 0 ? value : value + (alignment - remainder)
  }

  private static func readString(_ reader: inout ByteReader, what: String) throws(FlareError)
    -> String
  {
    let start = reader.offset
    guard let wide = reader.read(UInt64.self) else {
      throw .gguf(.truncated, "file ends inside \(what)", offset: start)
    }
    guard let length = Int(exactly: wide), length <= reader.remaining else {
      reader.seek(to: start)
      throw .gguf(
        .stringTooLong, "\(what) claims \(wide) bytes but only \(reader.remaining - 8) remain",
        offset: start)
    }
    guard let raw = reader.readBytes(length), let text = String(validatingUTF8Bytes: raw) else {
      throw .gguf(.invalidString, "\(what) is not valid UTF-8", offset: start)
    }
    return text
  }

  private static func readValue(_ reader: inout ByteReader, type: GGUFValueType, key: String)
    throws(FlareError) -> GGUFValue
  {
    let start = reader.offset
    func fixed<T: FixedWidthInteger>(_: T.Type) throws(FlareError) -> T {
      guard let value = reader.read(T.self) else {
        throw .gguf(
          .truncated, "file ends inside the value of '\(key.escapedForMessage)'", offset: start)
      }
      return value
    }
    switch type {
    case .uint8: return .uint8(try fixed(UInt8.self))
    case .int8: return .int8(Int8(bitPattern: try fixed(UInt8.self)))
    case .uint16: return .uint16(try fixed(UInt16.self))
    case .int16: return .int16(Int16(bitPattern: try fixed(UInt16.self)))
    case .uint32: return .uint32(try fixed(UInt32.self))
    case .int32: return .int32(Int32(bitPattern: try fixed(UInt32.self)))
    case .float32: return .float32(Float(bitPattern: try fixed(UInt32.self)))
    case .uint64: return .uint64(try fixed(UInt64.self))
    case .int64: return .int64(Int64(bitPattern: try fixed(UInt64.self)))
    case .float64: return .float64(Double(bitPattern: try fixed(UInt64.self)))
    case .bool:
      let byte = try fixed(UInt8.self)
      guard byte <= 1 else {
        throw .gguf(
          .invalidBool, "BOOL value of '\(key.escapedForMessage)' is \(byte), not 0 or 1",
          offset: start)
      }
      return .bool(byte == 1)
    case .string:
      return .string(try readString(&reader, what: "the value of '\(key.escapedForMessage)'"))
    case .array:
      let elementID = try fixed(UInt32.self)
      guard let elementType = GGUFValueType(rawValue: elementID) else {
        throw .gguf(
          .invalidValueType,
          "array '\(key.escapedForMessage)' has unknown element type \(elementID)", offset: start)
      }
      guard elementType != .array else {
        throw .gguf(
          .invalidValueType,
          "array '\(key.escapedForMessage)' holds arrays; nested arrays are not supported",
          offset: start)
      }
      let countOffset = reader.offset
      let count64 = try fixed(UInt64.self)
      let minimum = elementType.fixedSize ?? 8
      guard let count = Int(exactly: count64), count <= reader.remaining / minimum else {
        throw .gguf(
          .countTooLarge,
          "array '\(key.escapedForMessage)' claims \(count64) elements, more than the file could hold",
          offset: countOffset)
      }
      var elements: [GGUFValue] = []
      elements.reserveCapacity(count)
      for _ in 0..<count { elements.append(try readValue(&reader, type: elementType, key: key)) }
      return .array(elementType, elements)
    }
  }
}
