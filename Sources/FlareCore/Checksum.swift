import CFlareZlib

/// CRC-32 (the zlib/PNG polynomial) through zlib.
public enum CRC32 {
  /// The CRC-32 of `bytes`, continuing from `initial` (0 to start).
  public static func checksum(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt32 {
    var crc = UInt(initial)
    var offset = 0
    guard let base = bytes.baseAddress else { return initial }
    // zlib takes a 32-bit length; feed large buffers in chunks.
    while offset < bytes.count {
      let chunk = min(bytes.count - offset, 1 << 30)
      crc = crc32(crc, base.advanced(by: offset).assumingMemoryBound(to: UInt8.self), UInt32(chunk))
      offset += chunk
    }
    return UInt32(truncatingIfNeeded: crc)
  }

  /// The CRC-32 of a byte array.
  public static func checksum(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { checksum($0) }
  }
}
