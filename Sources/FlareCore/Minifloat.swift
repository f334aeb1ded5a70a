/// A small binary floating-point format (4, 6 or 8 bits), decoded and encoded exactly.
///
/// Formats follow the OCP microscaling and FNUZ conventions that safetensors names:
///
/// | format | exp | mantissa | bias | infinity | NaN | negative zero |
/// |---|---|---|---|---|---|---|
/// | `e4m3fn` (`F8_E4M3`) | 4 | 3 | 7 | no | `S.1111.111` | yes |
/// | `e5m2` (`F8_E5M2`) | 5 | 2 | 15 | yes | IEEE | yes |
/// | `e4m3fnuz` (`F8_E4M3FNUZ`) | 4 | 3 | 8 | no | `0x80` only | no |
/// | `e5m2fnuz` (`F8_E5M2FNUZ`) | 5 | 2 | 16 | no | `0x80` only | no |
/// | `e8m0fnu` (`F8_E8M0`) | 8 | 0 | 127 | no | `0xFF` | unsigned, no zero |
/// | `e2m1fn` (`F4`) | 2 | 1 | 1 | no | no | yes |
/// | `e2m3fn` (`F6_E2M3`) | 2 | 3 | 1 | no | no | yes |
/// | `e3m2fn` (`F6_E3M2`) | 3 | 2 | 3 | no | no | yes |
///
/// Encoding follows ml_dtypes exactly (the oracle of Flare's tests); see ``encode(_:)``.
public struct Minifloat: Sendable, Hashable {
  public enum Specials: Sendable, Hashable {
    /// IEEE-style: the all-ones exponent holds infinities and NaNs.
    case ieee
    /// Finite except one NaN pattern per sign (all bits set but the sign).
    case finiteWithNaN
    /// Finite and unsigned-zero: the negative-zero pattern is the only NaN.
    case fnuz
    /// Every pattern is a finite number.
    case finiteOnly
    /// Unsigned powers of two; `0xFF` is NaN.
    case e8m0
  }

  public let exponentBits: Int
  public let mantissaBits: Int
  public let bias: Int
  public let specials: Specials

  public static let e4m3fn = Minifloat(
    exponentBits: 4, mantissaBits: 3, bias: 7, specials: .finiteWithNaN)
  public static let e5m2 = Minifloat(exponentBits: 5, mantissaBits: 2, bias: 15, specials: .ieee)
  public static let e4m3fnuz = Minifloat(exponentBits: 4, mantissaBits: 3, bias: 8, specials: .fnuz)
  public static let e5m2fnuz = Minifloat(
    exponentBits: 5, mantissaBits: 2, bias: 16, specials: .fnuz)
  public static let e8m0fnu = Minifloat(
    exponentBits: 8, mantissaBits: 0, bias: 127, specials: .e8m0)
  public static let e2m1fn = Minifloat(
    exponentBits: 2, mantissaBits: 1, bias: 1, specials: .finiteOnly)
  public static let e2m3fn = Minifloat(
    exponentBits: 2, mantissaBits: 3, bias: 1, specials: .finiteOnly)
  public static let e3m2fn = Minifloat(
    exponentBits: 3, mantissaBits: 2, bias: 3, specials: .finiteOnly)

  /// Total bits of a code, sign included (no sign bit for `e8m0`).
  public var bitWidth: Int { exponentBits + mantissaBits + (specials == .e8m0 ? 0 : 1) }

  private var signMask: UInt32 { specials == .e8m0 ? 0 : 1 << UInt32(exponentBits + mantissaBits) }
  private var maxExponentField: Int { (1 << exponentBits) - 1 }
  private var mantissaMask: UInt32 { (1 << UInt32(mantissaBits)) - 1 }

  /// The code of a NaN with the given sign (the canonical one).
  private func nanCode(negative: Bool) -> UInt32 {
    switch specials {
    case .ieee:
      let quiet: UInt32 = mantissaBits > 0 ? 1 << UInt32(mantissaBits - 1) : 0
      return (negative ? signMask : 0) | (UInt32(maxExponentField) << UInt32(mantissaBits)) | quiet
    case .finiteWithNaN:
      return (negative ? signMask : 0) | (signMask - 1)
    case .fnuz: return signMask
    case .e8m0: return 0xFF
    case .finiteOnly: return negative ? 0 : signMask  // ml_dtypes: a zero of the opposite sign
    }
  }

  /// Decodes one code (only the low ``bitWidth`` bits are used).
  public func decode(_ code: UInt32) -> Float {
    let code = code & ((1 << UInt32(bitWidth)) - 1)
    if specials == .e8m0 {
      if code == 0xFF { return .nan }
      return Float(sign: .plus, exponent: Int(code) - bias, significand: 1)
    }
    let negative = code & signMask != 0
    let exponent = Int((code >> UInt32(mantissaBits)) & UInt32(maxExponentField))
    let mantissa = code & mantissaMask
    switch specials {
    case .ieee where exponent == maxExponentField:
      return mantissa == 0 ? (negative ? -.infinity : .infinity) : (negative ? -.nan : .nan)
    case .finiteWithNaN where exponent == maxExponentField && mantissa == mantissaMask:
      return negative ? -.nan : .nan
    case .fnuz where code == signMask:
      return -.nan  // ml_dtypes decodes the FNUZ NaN with the sign bit set
    default: break
    }
    let magnitude: Float
    if exponent == 0 {
      magnitude =
        Float(mantissa) * Float(sign: .plus, exponent: 1 - bias - mantissaBits, significand: 1)
    } else {
      let significand = Float((1 << UInt32(mantissaBits)) | mantissa)
      magnitude =
        significand * Float(sign: .plus, exponent: exponent - bias - mantissaBits, significand: 1)
    }
    return negative ? -magnitude : magnitude
  }

  /// The largest finite value.
  public var maxFinite: Double {
    switch specials {
    case .ieee:
      return Double(
        sign: .plus, exponent: maxExponentField - 1 - bias,
        significand: 2 - 0x1p0 / Double(1 << mantissaBits))
    case .finiteWithNaN:
      // The all-ones exponent is usable except its all-ones mantissa (NaN).
      let top = Double((1 << mantissaBits) + Int(mantissaMask) - 1)
      return top
        * Double(sign: .plus, exponent: maxExponentField - bias - mantissaBits, significand: 1)
    case .fnuz, .finiteOnly:
      let top = Double((1 << mantissaBits) + Int(mantissaMask))
      return top
        * Double(sign: .plus, exponent: maxExponentField - bias - mantissaBits, significand: 1)
    case .e8m0:
      return Double(sign: .plus, exponent: 254 - bias, significand: 1)
    }
  }

  /// Encodes `value`, rounding to nearest, ties to even, with ml_dtypes' conventions:
  ///
  /// - Out of range (after rounding): formats with infinity give ±infinity; `e4m3fn` gives
  ///   NaN with the sign; FNUZ formats give their NaN `0x80`; finite-only formats (`F4`, `F6_*`)
  ///   saturate to ±max. Infinities map the same way.
  /// - NaN gives the format's NaN; finite-only formats, which have none, give a zero of the
  ///   opposite sign (what ml_dtypes produces).
  /// - FNUZ formats have no negative zero: −0 and negative underflow give `0x00`.
  /// - `F8_E8M0` (unsigned powers of two) takes the binary32 exponent field and adds one when
  ///   the mantissa is at least half (ties up); a subnormal input becomes 2^-126 when its
  ///   mantissa exceeds half, else 2^-127; zero, negatives, infinities, NaN and overflow give
  ///   NaN `0xFF`.
  public func encode(_ value: Float) -> UInt32 {
    if specials == .e8m0 { return encodeE8M0(value) }
    let negative = value.sign == .minus
    let sign = negative ? signMask : 0
    if value.isNaN { return nanCode(negative: negative) }
    let magnitude = Double(value.magnitude)
    if magnitude.isInfinite || magnitude > maxFinite {
      return overflowCode(negative: negative, magnitude: magnitude)
    }
    if magnitude == 0 { return specials == .fnuz ? 0 : sign }
    let minNormalExponent = 1 - bias
    let exponent = max(Int(magnitude.exponent), minNormalExponent)
    let quantum = Double(sign: .plus, exponent: exponent - mantissaBits, significand: 1)
    var quotient = (magnitude / quantum).rounded(.toNearestOrEven)  // exact: power-of-two scale
    var field = exponent + bias
    if quotient >= Double(2 << mantissaBits) {  // rounded up into the next binade
      quotient /= 2
      field += 1
    }
    let q = UInt32(quotient)
    if q == 0 { return specials == .fnuz ? 0 : sign }
    if q < (1 << UInt32(mantissaBits)) {
      return sign | q  // subnormal: exponent field 0
    }
    let code = sign | (UInt32(field) << UInt32(mantissaBits)) | (q & mantissaMask)
    if field > maxExponentField { return overflowCode(negative: negative, magnitude: magnitude) }
    if specials == .finiteWithNaN && code & ~signMask == signMask - 1 {
      return overflowCode(negative: negative, magnitude: magnitude)
    }
    return code
  }

  private func overflowCode(negative: Bool, magnitude: Double) -> UInt32 {
    let sign = negative ? signMask : 0
    switch specials {
    case .ieee:
      if magnitude.isInfinite || roundsPastMax(magnitude) {
        return sign | (UInt32(maxExponentField) << UInt32(mantissaBits))
      }
      return sign | maxFiniteCode
    case .finiteWithNaN, .fnuz:
      if magnitude.isInfinite || roundsPastMax(magnitude) { return nanCode(negative: negative) }
      return sign | maxFiniteCode
    case .finiteOnly, .e8m0:
      return sign | maxFiniteCode
    }
  }

  /// Whether `magnitude` (above the largest finite value) rounds beyond it: at the midpoint to
  /// the next step, ties go to the even mantissa, so up when the largest mantissa is odd.
  private func roundsPastMax(_ magnitude: Double) -> Bool {
    let midpoint = maxFinite + halfUlpAtMax
    return magnitude > midpoint || (magnitude == midpoint && maxFiniteCode & 1 == 1)
  }

  private var maxFiniteCode: UInt32 {
    switch specials {
    case .ieee: return (UInt32(maxExponentField - 1) << UInt32(mantissaBits)) | mantissaMask
    case .finiteWithNaN: return signMask - 2
    case .fnuz, .finiteOnly: return signMask - 1
    case .e8m0: return 0xFE
    }
  }

  private var halfUlpAtMax: Double {
    let top: Int =
      switch specials {
      case .ieee: maxExponentField - 1
      default: maxExponentField
      }
    return Double(sign: .plus, exponent: top - bias - mantissaBits - 1, significand: 1)
  }

  private func encodeE8M0(_ value: Float) -> UInt32 {
    guard value.isFinite, value > 0 else { return 0xFF }
    // ml_dtypes works on the binary32 fields: the exponent field, plus one when the mantissa
    // is at least half (ties up). A subnormal input (exponent field 0) rounds up only when
    // its mantissa exceeds half.
    let bits = value.bitPattern
    let exponent = bits >> 23
    let mantissa = bits & 0x7F_FFFF
    if exponent == 0 { return mantissa > 0x40_0000 ? 1 : 0 }
    let field = exponent + (mantissa >= 0x40_0000 ? 1 : 0)
    return field > 254 ? 0xFF : field
  }
}
