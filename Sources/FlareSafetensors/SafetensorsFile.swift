import FlareCore

/// A memory-mapped, validated `.safetensors` file.
///
/// Opening reads and validates only the header; tensor data is touched only when a tensor's
/// bytes are read. The file stays mapped while the object lives.
public final class SafetensorsFile: @unchecked Sendable {
  // @unchecked Sendable: immutable after init; the mapping is read-only.
  public let path: String
  public let header: SafetensorsHeader
  let file: MappedFile
  private let index: [String: Int]

  /// Opens and validates `path`.
  /// - Throws: ``FlareError`` naming the file, and where relevant the tensor and byte offset.
  public init(path: String) throws(FlareError) {
    self.path = path
    file = try MappedFile(path: path)
    do {
      header = try SafetensorsHeader.parse(file: file.bytes)
    } catch {
      throw error.inFile(path)
    }
    var index: [String: Int] = [:]
    for (i, info) in header.tensors.enumerated() { index[info.name] = i }
    self.index = index
  }

  /// Size of the file in bytes.
  public var fileSize: Int { file.count }

  /// `__metadata__` entries in header order (`nil` if the header has none).
  public var metadata: [(key: String, value: String)]? { header.metadata }

  /// Tensors in file order.
  public var tensors: [TensorInfo] { header.tensors }

  /// The tensor named `name`, or `nil`.
  public func info(_ name: String) -> TensorInfo? {
    index[name].map { header.tensors[$0] }
  }

  /// A view of tensor `info` (which must come from this file).
  public func view(_ info: TensorInfo) -> TensorView {
    TensorView(file: self, info: info)
  }

  /// A view of the tensor named `name`.
  /// - Throws: ``FlareError`` `.tensorNotFound`.
  public func view(_ name: String) throws(FlareError) -> TensorView {
    guard let info = info(name) else {
      throw FlareError("safetensors", .tensorNotFound, "no such tensor", path: path, tensor: name)
    }
    return view(info)
  }

  /// Views of every tensor, in file order.
  public var views: [TensorView] { header.tensors.map { view($0) } }
}

/// A tensor inside a mapped safetensors file: its header entry and its bytes.
public struct TensorView: @unchecked Sendable {
  // @unchecked Sendable: points into an immutable read-only mapping kept alive by `file`.
  public let file: SafetensorsFile
  public let info: TensorInfo

  public var name: String { info.name }
  public var dtype: DType { info.dtype }
  public var shape: [Int] { info.shape }

  /// Absolute offset of the tensor's first byte in the file.
  public var fileOffset: Int { file.header.dataStart + info.dataOffsets.lowerBound }

  /// Whether the data sits at a file offset that is a multiple of the dtype's alignment,
  /// so it can be viewed in place (the mapping itself is page-aligned).
  public var isAligned: Bool { fileOffset % info.dtype.alignment == 0 }

  /// The tensor's raw little-endian bytes, in place (zero-copy). Valid while `file` lives.
  public var rawBytes: UnsafeRawBufferPointer {
    // In range: the header validation proved dataStart + end <= file size.
    UnsafeRawBufferPointer(rebasing: file.file.bytes[fileOffset..<(fileOffset + info.byteCount)])
  }

  /// Calls `body` with the elements of an `F32` tensor: in place when aligned, from an aligned
  /// copy when not.
  /// - Throws: ``FlareError`` `.unsupported` if the tensor is not `F32`.
  public func withFloat32Elements<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) throws -> R {
    guard info.dtype == .f32 else {
      throw FlareError(
        "safetensors", .unsupported, "is \(info.dtype.rawValue), not F32", path: file.path,
        tensor: name)
    }
    let raw = rawBytes
    if isAligned, let base = raw.baseAddress {
      let typed = base.assumingMemoryBound(to: Float.self)
      return try body(UnsafeBufferPointer(start: typed, count: info.elementCount))
    }
    let copy = floats()
    return try copy.withUnsafeBufferPointer { try body($0) }
  }

  /// The values converted to `Float` (see ``DType/decode(_:count:into:)``; `C64` gives
  /// interleaved real and imaginary parts).
  public func floats() -> [Float] {
    let count = info.elementCount
    return [Float](unsafeUninitializedCapacity: count * info.dtype.floatsPerElement) {
      buffer, initialized in
      info.dtype.decode(rawBytes, count: count, into: buffer)
      initialized = count * info.dtype.floatsPerElement
    }
  }

  /// Drops the mapped pages of bytes `range` (relative to the tensor's first byte) from memory.
  public func releasePages(bytes range: Range<Int>) {
    file.file.release((fileOffset + range.lowerBound)..<(fileOffset + range.upperBound))
  }

  /// Drops the mapped pages of elements `range` from memory after a streaming pass over them.
  public func releasePages(elements range: Range<Int>) {
    let bits = info.dtype.bitWidth
    let start = fileOffset + range.lowerBound * bits / 8
    let end = fileOffset + min(info.byteCount, (range.upperBound * bits + 7) / 8)
    file.file.release(start..<end)
  }

  /// Decodes elements `range` (element indices) into `output`.
  /// - Precondition: `range` lies in `0..<elementCount`, and for sub-byte types starts at an
  ///   element whose first bit is byte-aligned.
  public func decode(elements range: Range<Int>, into output: UnsafeMutableBufferPointer<Float>) {
    let bits = info.dtype.bitWidth
    precondition(range.lowerBound >= 0 && range.upperBound <= info.elementCount)
    precondition((range.lowerBound * bits) % 8 == 0, "decode: range does not start on a byte")
    let startByte = range.lowerBound * bits / 8
    let endByte = min(info.byteCount, (range.upperBound * bits + 7) / 8)
    let slice = UnsafeRawBufferPointer(rebasing: rawBytes[startByte..<endByte])
    info.dtype.decode(slice, count: range.count, into: output)
  }
}
