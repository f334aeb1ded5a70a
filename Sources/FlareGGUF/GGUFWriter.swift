import FlareCore

/// What the writer needs to know of a tensor before its bytes exist.
public struct GGUFTensorSpec: Sendable {
  public var name: String
  /// Dimensions in GGUF order (innermost first).
  public var dims: [Int]
  public var type: GGMLType

  public init(name: String, dims: [Int], type: GGMLType) {
    self.name = name
    self.dims = dims
    self.type = type
  }

  /// Bytes of data, or `nil` if the row is not a whole number of blocks or the size overflows.
  public var byteCount: Int? {
    guard let rows = elementCount(dims.dropFirst()),
      let rowBytes = type.rowBytes(elements: dims.first ?? 1)
    else {
      return nil
    }
    let (size, overflow) = rowBytes.multipliedReportingOverflow(by: rows)
    return overflow ? nil : size
  }
}

/// Receives the bytes of one tensor while a GGUF file is written.
public final class GGUFTensorSink {
  let writer: AtomicFileWriter
  public let spec: GGUFTensorSpec
  public let expectedBytes: Int
  public private(set) var written = 0

  init(writer: AtomicFileWriter, spec: GGUFTensorSpec, expectedBytes: Int) {
    self.writer = writer
    self.spec = spec
    self.expectedBytes = expectedBytes
  }

  /// Appends raw bytes of the tensor (already in its type's layout).
  public func write(_ bytes: UnsafeRawBufferPointer) throws {
    guard written + bytes.count <= expectedBytes else {
      throw FlareError(
        "gguf", .invalidArgument, "received more than the \(expectedBytes) bytes it needs",
        tensor: spec.name)
    }
    try writer.write(bytes)
    written += bytes.count
  }

  /// Quantizes `values` to the tensor's type and appends them (a whole number of blocks), about
  /// a million values at a time so the encoded copy stays small.
  public func write(floats values: UnsafeBufferPointer<Float>) throws {
    guard spec.type.rowBytes(elements: values.count) != nil else {
      throw FlareError(
        "gguf", .invalidArgument, "\(values.count) values are not whole \(spec.type.name) blocks",
        tensor: spec.name)
    }
    let chunk = max(1, (1 << 20) / spec.type.blockSize) * spec.type.blockSize
    var start = 0
    while start < values.count {
      let end = min(values.count, start + chunk)
      let part = UnsafeBufferPointer(rebasing: values[start..<end])
      var scratch = [UInt8](repeating: 0, count: spec.type.rowBytes(elements: part.count) ?? 0)
      try scratch.withUnsafeMutableBytes { try spec.type.quantizeParallel(part, into: $0) }
      try scratch.withUnsafeBytes { try write($0) }
      start = end
    }
  }
}

/// Writes GGUF v3 files that llama.cpp loads: metadata first, then tensor infos with offsets
/// exactly cumulative and padded to the alignment, zero padding, then each tensor's data
/// streamed in order (each padded to the alignment), so memory stays bounded.
///
/// Output is atomic (temporary file, `fsync`, rename).
public enum GGUFWriter {
  /// Encodes the header: magic, version 3, counts, key/values and tensor infos, zero-padded
  /// to the alignment.
  /// - Returns: The header bytes and each tensor's byte size.
  /// - Throws: ``FlareError`` for duplicate or empty keys, nested arrays, bad names, sizes
  ///   that overflow, or a `general.alignment` that disagrees with `alignment`.
  public static func header(metadata: [GGUFKeyValue], tensors: [GGUFTensorSpec], alignment: Int)
    throws
    -> (bytes: [UInt8], sizes: [Int])
  {
    guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= Int(UInt32.max) else {
      throw FlareError.gguf(.badAlignment, "alignment \(alignment) is not a power of two")
    }
    var out: [UInt8] = []
    func put<T: FixedWidthInteger>(_ value: T) {
      withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
    }
    func putString(_ text: String) {
      put(UInt64(text.utf8.count))
      out.append(contentsOf: text.utf8)
    }
    func putValue(_ value: GGUFValue, key: String) throws {
      switch value {
      case .uint8(let v): put(v)
      case .int8(let v): put(v)
      case .uint16(let v): put(v)
      case .int16(let v): put(v)
      case .uint32(let v): put(v)
      case .int32(let v): put(v)
      case .float32(let v): put(v.bitPattern)
      case .bool(let v): put(UInt8(v ? 1 : 0))
      case .string(let v): putString(v)
      case .uint64(let v): put(v)
      case .int64(let v): put(v)
      case .float64(let v): put(v.bitPattern)
      case .array(let type, let elements):
        guard type != .array else {
          throw FlareError.gguf(
            .invalidValueType, "array '\(key.escapedForMessage)' holds arrays, which ggml rejects")
        }
        put(type.rawValue)
        put(UInt64(elements.count))
        for element in elements {
          guard element.type == type else {
            throw FlareError.gguf(
              .invalidValueType,
              "array '\(key.escapedForMessage)' mixes \(element.type.name) into \(type.name)")
          }
          try putValue(element, key: key)
        }
      }
    }
    put(UInt32(0x4655_4747))
    put(UInt32(3))
    put(UInt64(tensors.count))
    put(UInt64(metadata.count))
    var keys = Set<String>()
    for entry in metadata {
      guard !entry.key.isEmpty else { throw FlareError.gguf(.emptyKey, "a metadata key is empty") }
      guard keys.insert(entry.key).inserted else {
        throw FlareError.gguf(
          .duplicateKey, "metadata key '\(entry.key.escapedForMessage)' appears twice")
      }
      if entry.key == "general.alignment" && entry.value != .uint32(UInt32(alignment)) {
        throw FlareError.gguf(
          .badAlignment, "general.alignment disagrees with the alignment \(alignment) being written"
        )
      }
      putString(entry.key)
      put(entry.value.type.rawValue)
      try putValue(entry.value, key: entry.key)
    }
    if alignment != GGUFFile.defaultAlignment && !keys.contains("general.alignment") {
      throw FlareError.gguf(.badAlignment, "alignment \(alignment) needs a general.alignment key")
    }
    var names = Set<String>()
    var sizes: [Int] = []
    var offset = 0
    for spec in tensors {
      guard !spec.name.isEmpty, spec.name.utf8.count <= GGUFFile.maxNameLength else {
        throw FlareError.gguf(
          .nameTooLong, "name must be 1 to \(GGUFFile.maxNameLength) bytes", tensor: spec.name)
      }
      guard names.insert(spec.name).inserted else {
        throw FlareError.gguf(.duplicateTensor, "tensor name appears twice", tensor: spec.name)
      }
      guard spec.dims.count <= 4 else {
        throw FlareError.gguf(
          .tooManyDims, "has \(spec.dims.count) dimensions; at most 4", tensor: spec.name)
      }
      guard let size = spec.byteCount else {
        throw FlareError.gguf(
          .blockSizeMismatch,
          "dims \(spec.dims) do not fit \(spec.type.name) blocks of \(spec.type.blockSize)",
          tensor: spec.name)
      }
      putString(spec.name)
      put(UInt32(spec.dims.count))
      for dim in spec.dims { put(UInt64(dim)) }
      put(spec.type.id)
      put(UInt64(offset))
      sizes.append(size)
      offset = GGUFFile.align(offset + size, alignment)
    }
    out.append(
      contentsOf: repeatElement(0, count: GGUFFile.align(out.count, alignment) - out.count))
    return (out, sizes)
  }

  /// Writes a GGUF file at `path`, asking `body` for each tensor's bytes in order.
  /// - Throws: ``FlareError`` for invalid metadata or tensors, a tensor given the wrong number
  ///   of bytes, an existing output (unless `overwrite`), or I/O failures; nothing is left behind.
  public static func write(
    to path: String, metadata: [GGUFKeyValue], tensors: [GGUFTensorSpec],
    alignment: Int = GGUFFile.defaultAlignment,
    overwrite: Bool = false, body: (GGUFTensorSink) throws -> Void
  ) throws {
    let (header, sizes) = try header(metadata: metadata, tensors: tensors, alignment: alignment)
    let writer: AtomicFileWriter
    do {
      writer = try AtomicFileWriter(destination: path, overwrite: overwrite)
    } catch let error as FlareError { throw error.inFile(path) }
    do {
      try writer.write(header)
      for (spec, size) in zip(tensors, sizes) {
        let sink = GGUFTensorSink(writer: writer, spec: spec, expectedBytes: size)
        try body(sink)
        guard sink.written == size else {
          throw FlareError(
            "gguf", .invalidArgument, "received \(sink.written) bytes, but needs \(size)",
            path: path, tensor: spec.name)
        }
        try writer.writeZeros(GGUFFile.align(size, alignment) - size)
      }
      try writer.commit()
    } catch let error as FlareError {
      writer.abandon()
      throw error.inFile(path)
    } catch {
      writer.abandon()
      throw error
    }
  }
}
