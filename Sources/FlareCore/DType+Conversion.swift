/// Decode tables for the 8-bit-and-smaller float formats, built once.
private enum MinifloatTables {
  static let tables: [Minifloat: [Float]] = {
    var result: [Minifloat: [Float]] = [:]
    for format in [
      Minifloat.e4m3fn, .e5m2, .e4m3fnuz, .e5m2fnuz, .e8m0fnu, .e2m1fn, .e2m3fn, .e3m2fn,
    ] {
      result[format] = (0..<(1 << format.bitWidth)).map { format.decode(UInt32($0)) }
    }
    return result
  }()
}

extension DType {
  /// Converts `count` little-endian elements stored in `raw` to `Float`, into `output`.
  ///
  /// Float types convert exactly where `Float` can hold the value and otherwise round to nearest,
  /// ties to even (`F64`); integer types convert like a C cast (round to nearest); `BOOL` gives
  /// 0 or 1; `C64` gives interleaved real and imaginary parts (`2 × count` values). Sub-byte
  /// types are unpacked from a little-endian bit stream, element `i` at bits `[w·i, w·i + w)`.
  ///
  /// - Precondition: `raw` holds at least `byteCount(elements: count)` bytes (rounded up for
  ///   sub-byte types) and `output` at least `count × floatsPerElement` values. Callers validate
  ///   sizes from files before calling.
  public func decode(
    _ raw: UnsafeRawBufferPointer, count: Int, into output: UnsafeMutableBufferPointer<Float>
  ) {
    precondition(output.count >= count * floatsPerElement, "decode: output too small")
    precondition(raw.count * 8 >= count * bitWidth, "decode: input too small")
    if (self == .f32 || self == .c64) && UInt32(littleEndian: 1) == 1 {
      // Little-endian IEEE single precision: the bytes are already the values.
      if let target = output.baseAddress, let source = raw.baseAddress, count > 0 {
        UnsafeMutableRawPointer(target).copyMemory(
          from: source, byteCount: count * floatsPerElement * 4)
      }
      return
    }
    switch self {
    case .f32:
      for i in 0..<count { output[i] = Float(bitPattern: raw.loadLE(UInt32.self, at: i * 4)) }
    case .f16:
      for i in 0..<count {
        output[i] = HalfPrecision.f16ToFloat(raw.loadLE(UInt16.self, at: i * 2))
      }
    case .bf16:
      for i in 0..<count {
        output[i] = HalfPrecision.bf16ToFloat(raw.loadLE(UInt16.self, at: i * 2))
      }
    case .f64:
      for i in 0..<count {
        output[i] = Float(Double(bitPattern: raw.loadLE(UInt64.self, at: i * 8)))
      }
    case .c64:
      for i in 0..<(2 * count) { output[i] = Float(bitPattern: raw.loadLE(UInt32.self, at: i * 4)) }
    case .bool, .u8:
      for i in 0..<count { output[i] = Float(raw[i]) }
    case .i8:
      for i in 0..<count { output[i] = Float(Int8(bitPattern: raw[i])) }
    case .u16:
      for i in 0..<count { output[i] = Float(raw.loadLE(UInt16.self, at: i * 2)) }
    case .i16:
      for i in 0..<count {
        output[i] = Float(Int16(bitPattern: raw.loadLE(UInt16.self, at: i * 2)))
      }
    case .u32:
      for i in 0..<count { output[i] = Float(raw.loadLE(UInt32.self, at: i * 4)) }
    case .i32:
      for i in 0..<count {
        output[i] = Float(Int32(bitPattern: raw.loadLE(UInt32.self, at: i * 4)))
      }
    case .u64:
      for i in 0..<count { output[i] = Float(raw.loadLE(UInt64.self, at: i * 8)) }
    case .i64:
      for i in 0..<count {
        output[i] = Float(Int64(bitPattern: raw.loadLE(UInt64.self, at: i * 8)))
      }
    case .f8E4M3, .f8E5M2, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ:
      guard let format = minifloat, let table = MinifloatTables.tables[format] else { return }
      table.withUnsafeBufferPointer { lookup in
        for i in 0..<count { output[i] = lookup[Int(raw[i])] }
      }
    case .f4, .f6E2M3, .f6E3M2:
      guard let format = minifloat, let table = MinifloatTables.tables[format] else { return }
      table.withUnsafeBufferPointer { lookup in
        for i in 0..<count {
          output[i] = lookup[Int(raw.loadPackedCode(index: i, width: bitWidth))]
        }
      }
    }
  }

  /// Converts `values` to this float type, writing little-endian elements into `output`,
  /// rounding to nearest, ties to even (see ``Minifloat/encode(_:)`` for out-of-range values).
  ///
  /// - Throws: ``FlareError`` `.unsupported` for integer, boolean and complex types.
  /// - Precondition: `output.count >= byteCount(elements: values.count)` (rounded up).
  public func encode(
    _ values: UnsafeBufferPointer<Float>, into output: UnsafeMutableRawBufferPointer
  ) throws {
    let count = values.count
    precondition(output.count * 8 >= count * bitWidth, "encode: output too small")
    switch self {
    case .f32:
      for i in 0..<count { output.storeLE(values[i].bitPattern, at: i * 4) }
    case .f16:
      for i in 0..<count { output.storeLE(HalfPrecision.floatToF16(values[i]), at: i * 2) }
    case .bf16:
      for i in 0..<count { output.storeLE(HalfPrecision.floatToBF16(values[i]), at: i * 2) }
    case .f64:
      for i in 0..<count { output.storeLE(Double(values[i]).bitPattern, at: i * 8) }
    case .f8E4M3, .f8E5M2, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ:
      guard let format = minifloat else { return }
      for i in 0..<count { output[i] = UInt8(truncatingIfNeeded: format.encode(values[i])) }
    case .f4, .f6E2M3, .f6E3M2:
      guard let format = minifloat else { return }
      let bytes = (count * bitWidth + 7) / 8
      for i in 0..<bytes { output[i] = 0 }
      for i in 0..<count {
        output.storePackedCode(format.encode(values[i]), index: i, width: bitWidth)
      }
    default:
      throw FlareError("dtype", .unsupported, "cannot encode floats as \(rawValue)")
    }
  }
}

extension UnsafeRawBufferPointer {
  /// Loads a little-endian integer at a byte offset (no alignment needed).
  @inlinable
  func loadLE<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
    T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
  }

  /// Reads the `width`-bit code of element `index` from a little-endian bit stream.
  @inlinable
  func loadPackedCode(index: Int, width: Int) -> UInt32 {
    let bit = index * width
    let byte = bit >> 3
    var word = UInt32(self[byte])
    if byte + 1 < count { word |= UInt32(self[byte + 1]) << 8 }
    return (word >> UInt32(bit & 7)) & ((1 << UInt32(width)) - 1)
  }
}

extension UnsafeMutableRawBufferPointer {
  @inlinable
  func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
    storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
  }

  /// Ors the `width`-bit `code` of element `index` into a little-endian bit stream
  /// (the destination bytes must start zeroed).
  @inlinable
  func storePackedCode(_ code: UInt32, index: Int, width: Int) {
    let bit = index * width
    let byte = bit >> 3
    let shifted = (code & ((1 << UInt32(width)) - 1)) << UInt32(bit & 7)
    self[byte] |= UInt8(truncatingIfNeeded: shifted)
    if shifted > 0xFF { self[byte + 1] |= UInt8(truncatingIfNeeded: shifted >> 8) }
  }
}
