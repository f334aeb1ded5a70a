/// Bit-exact conversions between `Float` and the 16-bit float formats.
///
/// `F16` is IEEE 754 binary16; `BF16` is the upper half of a binary32. Narrowing rounds to
/// nearest, ties to even; widening is exact. NaNs stay NaNs (quieted when narrowed).
public enum HalfPrecision {
  /// Widens IEEE binary16 bits to a `Float` (exact; NaN payloads are kept).
  @inlinable
  public static func f16ToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = UInt32(h >> 10) & 0x1F
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0 {
      // Zero or subnormal: mantissa × 2^-24, exact in binary32.
      let magnitude = Float(mantissa) * 0x1p-24
      return Float(bitPattern: sign | magnitude.bitPattern)
    }
    if exponent == 0x1F {
      return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
  }

  /// Narrows a `Float` to IEEE binary16 bits, rounding to nearest, ties to even.
  /// Values of magnitude 65520 or more become infinity. A NaN keeps its sign and the top ten
  /// bits of its payload (a payload that would vanish becomes 1), as numpy does.
  @inlinable
  public static func floatToF16(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    let sign = UInt16(truncatingIfNeeded: (bits >> 16) & 0x8000)
    let magnitude = bits & 0x7FFF_FFFF
    if magnitude > 0x7F80_0000 {
      let payload = UInt16(truncatingIfNeeded: (magnitude >> 13) & 0x3FF)
      return sign | 0x7C00 | (payload == 0 ? 1 : payload)
    }
    if magnitude >= 0x477F_F000 { return sign | 0x7C00 }  // ≥ 65520 rounds to infinity
    if magnitude >= 0x3880_0000 {
      // Normal in binary16: rebias the exponent (127 → 15) and round away 13 mantissa bits.
      let rebased = magnitude &- 0x3800_0000
      let rounded = rebased &+ 0x0FFF &+ ((rebased >> 13) & 1)
      return sign | UInt16(truncatingIfNeeded: rounded >> 13)
    }
    if magnitude <= 0x3300_0000 { return sign }  // ≤ 2^-25: the tie at 2^-25 goes to even (zero)
    // Subnormal in binary16: the unit is 2^-24.
    let exponent = magnitude >> 23
    let significand = (magnitude & 0x7F_FFFF) | 0x80_0000
    let shift = 126 - exponent  // 14...23
    let quotient = significand >> shift
    let remainder = significand & ((1 << shift) - 1)
    let half = UInt32(1) << (shift - 1)
    let roundUp = remainder > half || (remainder == half && quotient & 1 == 1)
    return sign | UInt16(truncatingIfNeeded: quotient + (roundUp ? 1 : 0))
  }

  /// Widens bfloat16 bits to a `Float` (exact).
  @inlinable
  public static func bf16ToFloat(_ h: UInt16) -> Float {
    Float(bitPattern: UInt32(h) << 16)
  }

  /// Narrows a `Float` to bfloat16 bits, rounding to nearest, ties to even; a NaN becomes the
  /// canonical quiet NaN `0x7FC0` with its sign (as ml_dtypes and PyTorch do).
  @inlinable
  public static func floatToBF16(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
      return UInt16(truncatingIfNeeded: (bits >> 16) & 0x8000) | 0x7FC0
    }
    let rounding = 0x7FFF &+ ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
  }
}
