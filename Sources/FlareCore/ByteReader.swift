/// A bounds-checked little-endian cursor over bytes it does not own.
///
/// Every read checks the remaining length first with arithmetic that cannot overflow; a failed
/// read returns `nil` and leaves ``offset`` unchanged.
public struct ByteReader {
  public let bytes: UnsafeRawBufferPointer
  public private(set) var offset: Int

  public init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
    self.bytes = bytes
    self.offset = max(0, min(offset, bytes.count))
  }

  /// Bytes left after the cursor.
  public var remaining: Int { bytes.count - offset }

  /// Reads a little-endian `T` at `index` without moving the cursor.
  /// - Returns: `nil` if fewer than `MemoryLayout<T>.size` bytes remain at `index`.
  public func peek<T: FixedWidthInteger>(_: T.Type, at index: Int) -> T? {
    guard index >= 0, index <= bytes.count, bytes.count - index >= MemoryLayout<T>.size else {
      return nil
    }
    return T(littleEndian: bytes.loadUnaligned(fromByteOffset: index, as: T.self))
  }

  /// Reads a little-endian `T` and advances; on failure the cursor does not move.
  public mutating func read<T: FixedWidthInteger>(_: T.Type) -> T? {
    guard let value = peek(T.self, at: offset) else { return nil }
    offset &+= MemoryLayout<T>.size  // can't overflow: peek checked offset + size <= count
    return value
  }

  /// Reads `count` bytes and advances; on failure the cursor does not move.
  /// - Returns: `nil` if `count` is negative or more than ``remaining``.
  public mutating func readBytes(_ count: Int) -> UnsafeRawBufferPointer? {
    guard count >= 0, count <= remaining else { return nil }
    let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    offset += count
    return slice
  }

  /// Reads a length-prefixed string: a little-endian u64 length, then that many UTF-8 bytes.
  /// - Returns: `nil` if the length does not fit in the remaining bytes or the bytes are not
  ///   valid UTF-8; the cursor does not move then.
  public mutating func readLengthPrefixedString() -> String? {
    let start = offset
    guard let wide = read(UInt64.self), let length = Int(exactly: wide), length <= remaining,
      let raw = readBytes(length), let text = String(validatingUTF8Bytes: raw)
    else {
      offset = start
      return nil
    }
    return text
  }

  /// Moves the cursor to `newOffset`. - Returns: `false` (cursor unchanged) if out of range.
  @discardableResult
  public mutating func seek(to newOffset: Int) -> Bool {
    guard newOffset >= 0, newOffset <= bytes.count else { return false }
    offset = newOffset
    return true
  }
}

extension String {
  /// Decodes `bytes` as UTF-8, or returns `nil` if they are not valid UTF-8.
  public init?(validatingUTF8Bytes bytes: UnsafeRawBufferPointer) {
    guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
    self = text
  }
}
