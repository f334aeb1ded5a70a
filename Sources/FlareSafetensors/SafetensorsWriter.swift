import FlareCore

/// What the writer needs to know of a tensor before its bytes exist.
public struct TensorSpec: Equatable, Sendable {
  public var name: String
  public var dtype: DType
  public var shape: [Int]

  public init(name: String, dtype: DType, shape: [Int]) {
    self.name = name
    self.dtype = dtype
    self.shape = shape
  }

  /// Bytes of data, or `nil` if the shape overflows or does not fill whole bytes.
  public var byteCount: Int? {
    guard let count = elementCount(shape) else { return nil }
    return dtype.byteCount(elements: count)
  }
}

/// Options for ``SafetensorsWriter``.
public struct SafetensorsWriteOptions: Sendable {
  /// `__metadata__`; `nil` writes none. Defaults to `{"format":"pt"}`.
  public var metadata: [(key: String, value: String)]? = [("format", "pt")]
  /// When set (e.g. 64), the data section starts at a multiple of this many bytes from the start
  /// of the file, and tensors whose sizes are multiples of it are placed first so that they all
  /// start on such a boundary (the format forbids gaps between tensors, so a tensor that follows
  /// an odd-sized one cannot be aligned). `nil`: the header is padded to 8 bytes only.
  public var alignment: Int?
  /// Replace an existing file at the destination.
  public var overwrite = false

  public init(
    metadata: [(key: String, value: String)]? = [("format", "pt")], alignment: Int? = nil,
    overwrite: Bool = false
  ) {
    self.metadata = metadata
    self.alignment = alignment
    self.overwrite = overwrite
  }
}

/// Receives the bytes of one tensor while a file is written.
public final class TensorSink {
  let writer: AtomicFileWriter
  public let spec: TensorSpec
  public let expectedBytes: Int
  public private(set) var written = 0

  init(writer: AtomicFileWriter, spec: TensorSpec, expectedBytes: Int) {
    self.writer = writer
    self.spec = spec
    self.expectedBytes = expectedBytes
  }

  /// Appends raw little-endian bytes of the tensor.
  /// - Throws: ``FlareError`` `.tensorInvalidInfo` if more bytes arrive than the shape needs.
  public func write(_ bytes: UnsafeRawBufferPointer) throws {
    guard written + bytes.count <= expectedBytes else {
      throw FlareError(
        "safetensors", .tensorInvalidInfo,
        "received more than the \(expectedBytes) bytes its shape and dtype need", tensor: spec.name)
    }
    try writer.write(bytes)
    written += bytes.count
  }

  /// Appends bytes from an array.
  public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

  /// Appends `Float` values, encoded as the tensor's dtype (a float type), a million values
  /// at a time so the encoded copy stays small.
  public func write(floats: UnsafeBufferPointer<Float>) throws {
    guard spec.dtype.byteCount(elements: floats.count) != nil else {
      throw FlareError(
        "safetensors", .misalignedSlice, "\(floats.count) values do not fill whole bytes",
        tensor: spec.name)
    }
    if spec.dtype == .f32 && UInt32(littleEndian: 1) == 1 {
      // Little-endian F32: the values' bytes are the encoding; write them as they are.
      try write(UnsafeRawBufferPointer(floats))
      return
    }
    let chunk = 1 << 20  // a multiple of 8 values: sub-byte types stay byte-aligned
    var start = 0
    while start < floats.count {
      let end = min(floats.count, start + chunk)
      let part = UnsafeBufferPointer(rebasing: floats[start..<end])
      let size = (part.count * spec.dtype.bitWidth + 7) / 8
      var scratch = [UInt8](repeating: 0, count: size)
      try scratch.withUnsafeMutableBytes { try spec.dtype.encode(part, into: $0) }
      try write(scratch)
      start = end
    }
  }
}

/// Writes `.safetensors` files by streaming: the header is computed from the specs first, then
/// each tensor's bytes are written in order, so memory stays constant whatever the model size.
///
/// Output is atomic: a temporary file in the destination folder, `fsync`, rename.
public enum SafetensorsWriter {
  /// The header JSON (compact, `__metadata__` first, tensors in the given order) padded with
  /// spaces so that `8 + N` is a multiple of `alignment` (at least 8).
  ///
  /// - Returns: The padded header bytes and the specs' data ranges.
  /// - Throws: ``FlareError`` for invalid names, duplicate names, sizes that overflow, or a
  ///   header over the 100 MB cap.
  public static func header(
    for specs: [TensorSpec], metadata: [(key: String, value: String)]?, alignment: Int = 8
  ) throws -> (bytes: [UInt8], ranges: [Range<Int>]) {
    var members: [(String, JSONValue)] = []
    if let metadata {
      var seen = Set<String>()
      for (key, _) in metadata where !seen.insert(key).inserted {
        throw FlareError.safetensors(
          .duplicateKey, "metadata key '\(key.escapedForMessage)' appears twice")
      }
      members.append(("__metadata__", .object(metadata.map { ($0.key, .string($0.value)) })))
    }
    var seen = Set<String>()
    var ranges: [Range<Int>] = []
    var offset = 0
    for spec in specs {
      try SafetensorsHeader.validateName(spec.name)
      guard spec.name != "__metadata__" else {
        throw FlareError.safetensors(
          .invalidName, "a tensor cannot be called '__metadata__'", tensor: spec.name)
      }
      guard seen.insert(spec.name).inserted else {
        throw FlareError.safetensors(
          .duplicateKey, "name appears more than once", tensor: spec.name)
      }
      guard let size = spec.byteCount else {
        throw FlareError.safetensors(
          .shapeOverflow, "shape \(spec.shape) of \(spec.dtype.rawValue) has no whole byte size",
          tensor: spec.name)
      }
      let (end, overflow) = offset.addingReportingOverflow(size)
      guard !overflow else {
        throw FlareError.safetensors(.shapeOverflow, "total size overflows", tensor: spec.name)
      }
      ranges.append(offset..<end)
      members.append(
        (
          spec.name,
          .object([
            ("dtype", .string(spec.dtype.rawValue)),
            ("shape", .array(spec.shape.map { .integer($0) })),
            ("data_offsets", .array([.integer(offset), .integer(end)])),
          ])
        ))
      offset = end
    }
    var bytes = Array(JSONWriter.compact(.object(members)).utf8)
    let unit = max(8, alignment)
    let padding = (unit - (8 + bytes.count) % unit) % unit
    bytes.append(contentsOf: repeatElement(UInt8(ascii: " "), count: padding))
    guard bytes.count <= SafetensorsHeader.maxHeaderLength else {
      throw FlareError.safetensors(
        .headerTooLarge,
        "header would be \(bytes.count) bytes, over the \(SafetensorsHeader.maxHeaderLength)-byte limit"
      )
    }
    var file = withUnsafeBytes(of: UInt64(bytes.count).littleEndian) { Array($0) }
    file.append(contentsOf: bytes)
    return (file, ranges)
  }

  /// The order tensors are written in: `specs` as given, or with alignment, tensors whose size
  /// is a multiple of `alignment` first (each group keeps its order).
  public static func layoutOrder(_ specs: [TensorSpec], alignment: Int?) -> [Int] {
    guard let alignment, alignment > 1 else { return Array(specs.indices) }
    let aligned = specs.indices.filter { (specs[$0].byteCount ?? 1) % alignment == 0 }
    let rest = specs.indices.filter { (specs[$0].byteCount ?? 1) % alignment != 0 }
    return aligned + rest
  }

  /// Writes a safetensors file at `path`, asking `body` for each tensor's bytes in turn.
  ///
  /// `body` is called once per tensor, in write order (see ``layoutOrder(_:alignment:)``), with
  /// a sink that must receive exactly the tensor's byte size.
  /// - Returns: The specs in the order written.
  /// - Throws: ``FlareError`` for invalid specs, a tensor that receives the wrong number of
  ///   bytes, an existing output (unless `overwrite`), or I/O failures; nothing is left at `path`.
  @discardableResult
  public static func write(
    to path: String, tensors specs: [TensorSpec], options: SafetensorsWriteOptions = .init(),
    body: (TensorSink) throws -> Void
  ) throws -> [TensorSpec] {
    let order = layoutOrder(specs, alignment: options.alignment).map { specs[$0] }
    let (header, ranges) = try header(
      for: order, metadata: options.metadata, alignment: options.alignment ?? 8)
    let writer: AtomicFileWriter
    do {
      writer = try AtomicFileWriter(destination: path, overwrite: options.overwrite)
    } catch let error as FlareError { throw error.inFile(path) }
    do {
      try writer.write(header)
      try streamTensors(order, ranges: ranges, into: writer, body: body)
      try writer.commit()
    } catch let error as FlareError {
      writer.abandon()
      throw error.inFile(path)
    } catch {
      writer.abandon()
      throw error
    }
    return order
  }

  /// Streams each tensor's bytes from `body` into `writer`, checking that every tensor gets
  /// exactly its byte size.
  static func streamTensors(
    _ order: [TensorSpec], ranges: [Range<Int>], into writer: AtomicFileWriter,
    body: (TensorSink) throws -> Void
  ) throws {
    for (spec, range) in zip(order, ranges) {
      let sink = TensorSink(writer: writer, spec: spec, expectedBytes: range.count)
      try body(sink)
      guard sink.written == range.count else {
        throw FlareError(
          "safetensors", .tensorInvalidInfo,
          "received \(sink.written) bytes, but its shape and dtype need \(range.count)",
          path: writer.destination, tensor: spec.name)
      }
    }
  }

  /// Writes in-memory tensors (name, dtype, shape, raw bytes) to `path`.
  public static func write(
    to path: String, tensors: [(spec: TensorSpec, bytes: [UInt8])],
    options: SafetensorsWriteOptions = .init()
  ) throws {
    var byName: [String: [UInt8]] = [:]
    for tensor in tensors { byName[tensor.spec.name] = tensor.bytes }
    try write(to: path, tensors: tensors.map(\.spec), options: options) { sink in
      try sink.write(byName[sink.spec.name] ?? [])
    }
  }
}
