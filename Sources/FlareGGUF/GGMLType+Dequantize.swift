import FlareCore

extension UnsafeRawBufferPointer {
  @inline(__always) fileprivate func u8(_ i: Int) -> UInt8 { self[i] }
  @inline(__always) fileprivate func u16(_ i: Int) -> UInt16 {
    UInt16(littleEndian: loadUnaligned(fromByteOffset: i, as: UInt16.self))
  }
  @inline(__always) fileprivate func u32(_ i: Int) -> UInt32 {
    UInt32(littleEndian: loadUnaligned(fromByteOffset: i, as: UInt32.self))
  }
  @inline(__always) fileprivate func u64(_ i: Int) -> UInt64 {
    UInt64(littleEndian: loadUnaligned(fromByteOffset: i, as: UInt64.self))
  }
  @inline(__always) fileprivate func half(_ i: Int) -> Float { HalfPrecision.f16ToFloat(u16(i)) }
}

/// The non-linear 4-bit codebook of IQ4_NL and IQ4_XS.
let iq4Values: [Int8] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
/// MXFP4's e2m1 values, doubled (the scale is halved to match).
let mxfp4Values: [Int8] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]

extension GGMLType {
  /// Whether Flare can dequantize this type.
  public var canDequantize: Bool {
    switch id {
    case 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 23, 24, 25, 26, 27, 28, 30, 39: true
    default: false
    }
  }

  /// Dequantizes `count` elements (a whole number of blocks) from `raw` into `output`.
  ///
  /// Bit-identical to gguf-py's `gguf.quants.dequantize`: every block is computed in `Float`
  /// with the same operations in the same order (for example Q4_K is `(d·sc)·q − dmin·m`),
  /// which `Fixtures/golden/gguf-values.json` and the SmolLM2 checksums verify.
  /// - Throws: ``FlareError`` `.unsupported` for types without a dequantizer, `.invalidArgument`
  ///   if the sizes disagree.
  public func dequantize(
    _ raw: UnsafeRawBufferPointer, count: Int, into output: UnsafeMutableBufferPointer<Float>
  ) throws {
    try checkDequantize(raw, count: count, into: output)
    let blocks = count / blockSize
    switch id {
    case 0: for i in 0..<count { output[i] = Float(bitPattern: raw.u32(4 * i)) }
    case 1: for i in 0..<count { output[i] = raw.half(2 * i) }
    case 30: for i in 0..<count { output[i] = Float(bitPattern: UInt32(raw.u16(2 * i)) << 16) }
    case 28: for i in 0..<count { output[i] = Float(Double(bitPattern: raw.u64(8 * i))) }
    case 24: for i in 0..<count { output[i] = Float(Int8(bitPattern: raw.u8(i))) }
    case 25: for i in 0..<count { output[i] = Float(Int16(bitPattern: raw.u16(2 * i))) }
    case 26: for i in 0..<count { output[i] = Float(Int32(bitPattern: raw.u32(4 * i))) }
    case 27: for i in 0..<count { output[i] = Float(Int64(bitPattern: raw.u64(8 * i))) }
    case 2: for b in 0..<blocks { Self.q4_0Block(raw, b * 18, output, b * 32) }
    case 3: for b in 0..<blocks { Self.q4_1Block(raw, b * 20, output, b * 32) }
    case 6: for b in 0..<blocks { Self.q5Block(raw, b * 22, output, b * 32, hasMin: false) }
    case 7: for b in 0..<blocks { Self.q5Block(raw, b * 24, output, b * 32, hasMin: true) }
    case 8: for b in 0..<blocks { Self.q8_0Block(raw, b * 34, output, b * 32) }
    case 10: for b in 0..<blocks { Self.q2_KBlock(raw, b * 84, output, b * 256) }
    case 11: for b in 0..<blocks { Self.q3_KBlock(raw, b * 110, output, b * 256) }
    case 12: for b in 0..<blocks { Self.q45_KBlock(raw, b * 144, output, b * 256, highBits: false) }
    case 13: for b in 0..<blocks { Self.q45_KBlock(raw, b * 176, output, b * 256, highBits: true) }
    case 14: for b in 0..<blocks { Self.q6_KBlock(raw, b * 210, output, b * 256) }
    case 20: for b in 0..<blocks { Self.iq4_NLBlock(raw, b * 18, output, b * 32) }
    case 23: for b in 0..<blocks { Self.iq4_XSBlock(raw, b * 136, output, b * 256) }
    case 39: for b in 0..<blocks { Self.mxfp4Block(raw, b * 17, output, b * 32) }
    default: break
    }
  }

  /// Throws unless this type dequantizes and `count` whole blocks fit `raw` and `output`.
  func checkDequantize(
    _ raw: UnsafeRawBufferPointer, count: Int, into output: UnsafeMutableBufferPointer<Float>
  ) throws {
    guard canDequantize else {
      throw FlareError("gguf", .unsupported, "dequantizing \(name) is not supported")
    }
    guard count % blockSize == 0, output.count >= count, let bytes = rowBytes(elements: count),
      raw.count >= bytes
    else {
      throw FlareError(
        "gguf", .invalidArgument, "\(count) \(name) elements do not match \(raw.count) bytes")
    }
  }

  // Q4_0: d (f16), qs[16]; element j < 16 is the low nibble of qs[j], j + 16 the high one.
  private static func q4_0Block(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let d = r.half(o)
    for j in 0..<16 {
      let byte = r.u8(o + 2 + j)
      y[at + j] = d * Float(Int(byte & 0x0F) - 8)
      y[at + j + 16] = d * Float(Int(byte >> 4) - 8)
    }
  }

  // Q4_1: d, m (f16), qs[16]; x = d·q + m.
  private static func q4_1Block(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let d = r.half(o)
    let m = r.half(o + 2)
    for j in 0..<16 {
      let byte = r.u8(o + 4 + j)
      y[at + j] = d * Float(byte & 0x0F) + m
      y[at + j + 16] = d * Float(byte >> 4) + m
    }
  }

  // Q5_0 / Q5_1: d, (m), qh (u32: bit j is the fifth bit of element j), qs[16].
  private static func q5Block(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int,
    hasMin: Bool
  ) {
    let d = r.half(o)
    let m = hasMin ? r.half(o + 2) : 0
    let qhOffset = o + (hasMin ? 4 : 2)
    let qh = r.u32(qhOffset)
    for j in 0..<32 {
      let byte = r.u8(qhOffset + 4 + (j & 15))
      let low = j < 16 ? byte & 0x0F : byte >> 4
      let q = Int(low) | Int((qh >> UInt32(j)) & 1) << 4
      if hasMin {
        y[at + j] = d * Float(q) + m
      } else {
        y[at + j] = d * Float(q - 16)
      }
    }
  }

  // Q8_0: d (f16), qs[32] (int8); x = q·d.
  private static func q8_0Block(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let d = r.half(o)
    for j in 0..<32 { y[at + j] = Float(Int8(bitPattern: r.u8(o + 2 + j))) * d }
  }

  // Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2-bit), d, dmin (f16).
  private static func q2_KBlock(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let d = r.half(o + 80)
    let dmin = r.half(o + 82)
    for e in 0..<256 {
      let group = e >> 7
      let shift = (e >> 5) & 3
      let b = e & 31
      let q = (r.u8(o + 16 + group * 32 + b) >> UInt8(2 * shift)) & 3
      let sc = r.u8(o + (e >> 4))
      let dl = d * Float(sc & 0x0F)
      let ml = dmin * Float(sc >> 4)
      y[at + e] = dl * Float(q) - ml
    }
  }

  // Q3_K: hmask[32], qs[64], scales[12] (16 six-bit signed scales), d (f16).
  private static func q3_KBlock(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let d = r.half(o + 108)
    var dl = [Float](repeating: 0, count: 16)
    for i in 0..<16 {
      let low = i < 8 ? r.u8(o + 96 + i) & 0x0F : r.u8(o + 96 + i - 8) >> 4
      let high = (r.u8(o + 104 + (i & 3)) >> UInt8(2 * (i >> 2))) & 3
      let scale = Int(low | high << 4) - 32
      dl[i] = d * Float(scale)
    }
    for e in 0..<256 {
      let group = e >> 7
      let shift = (e >> 5) & 3
      let b = e & 31
      let low = Int((r.u8(o + 32 + group * 32 + b) >> UInt8(2 * shift)) & 3)
      let mask = Int((r.u8(o + b) >> UInt8(e >> 5)) & 1) ^ 1
      y[at + e] = dl[e >> 4] * Float(low - (mask << 2))
    }
  }

  /// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block.
  @inline(__always)
  static func scaleMinK4(_ r: UnsafeRawBufferPointer, _ s: Int, _ j: Int) -> (UInt8, UInt8) {
    if j < 4 {
      return (r.u8(s + j) & 63, r.u8(s + j + 4) & 63)
    }
    let packed = r.u8(s + j + 4)
    return (
      (packed & 0x0F) | ((r.u8(s + j - 4) >> 2) & 0x30), (packed >> 4) | ((r.u8(s + j) >> 2) & 0x30)
    )
  }

  // Q4_K: d, dmin (f16), scales[12], qs[128]; Q5_K adds qh[32] before qs.
  private static func q45_KBlock(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int,
    highBits: Bool
  ) {
    let d = r.half(o)
    let dmin = r.half(o + 2)
    let qsOffset = o + (highBits ? 48 : 16)
    for s in 0..<8 {
      let (sc, m) = scaleMinK4(r, o + 4, s)
      let dd = d * Float(sc)
      let dm = dmin * Float(m)
      let group = s >> 1
      let shift = UInt8(4 * (s & 1))
      for b in 0..<32 {
        var q = (r.u8(qsOffset + group * 32 + b) >> shift) & 0x0F
        if highBits { q |= ((r.u8(o + 16 + b) >> UInt8(s)) & 1) << 4 }
        y[at + s * 32 + b] = dd * Float(q) - dm
      }
    }
  }

  // Q6_K: ql[128], qh[64], scales[16] (int8), d (f16, last).
  private static func q6_KBlock(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let d = r.half(o + 208)
    for e in 0..<256 {
      let group = e >> 7
      let within = e & 127
      let half = within >> 6
      let c = within & 63
      let low = (r.u8(o + group * 64 + c) >> UInt8(4 * half)) & 0x0F
      let shift = within >> 5
      let b = within & 31
      let high = (r.u8(o + 128 + group * 32 + b) >> UInt8(2 * shift)) & 3
      let q = Int(low | high << 4) - 32
      let dd = d * Float(Int8(bitPattern: r.u8(o + 192 + (e >> 4))))
      y[at + e] = dd * Float(q)
    }
  }

  // IQ4_NL: d (f16), qs[16] indexing the non-linear codebook.
  private static func iq4_NLBlock(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let d = r.half(o)
    for j in 0..<16 {
      let byte = r.u8(o + 2 + j)
      y[at + j] = d * Float(iq4Values[Int(byte & 0x0F)])
      y[at + j + 16] = d * Float(iq4Values[Int(byte >> 4)])
    }
  }

  // IQ4_XS: d (f16), scales_h (u16), scales_l[4], qs[128]; 8 sub-blocks of 32.
  private static func iq4_XSBlock(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let d = r.half(o)
    let high = r.u16(o + 2)
    for s in 0..<8 {
      let low = (r.u8(o + 4 + s / 2) >> UInt8(4 * (s & 1))) & 0x0F
      let h = UInt8((high >> UInt16(2 * s)) & 3)
      let dl = d * Float(Int(low | h << 4) - 32)
      for k in 0..<32 {
        let byte = r.u8(o + 8 + s * 16 + (k & 15))
        let q = k < 16 ? byte & 0x0F : byte >> 4
        y[at + s * 32 + k] = dl * Float(iq4Values[Int(q)])
      }
    }
  }

  // MXFP4: e (E8M0 scale, halved), qs[16] indexing doubled e2m1 values.
  private static func mxfp4Block(
    _ r: UnsafeRawBufferPointer, _ o: Int, _ y: UnsafeMutableBufferPointer<Float>, _ at: Int
  ) {
    let e = UInt32(r.u8(o))
    let d = Float(bitPattern: e < 2 ? UInt32(0x0020_0000) << e : (e - 1) << 23)
    for j in 0..<16 {
      let byte = r.u8(o + 1 + j)
      y[at + j] = d * Float(mxfp4Values[Int(byte & 0x0F)])
      y[at + j + 16] = d * Float(mxfp4Values[Int(byte >> 4)])
    }
  }
}
