/// The element types of the safetensors format, with their sizes and float conversions.
///
/// Raw values are the names used in safetensors headers.
public enum DType: String, CaseIterable, Sendable, Hashable {
  case bool = "BOOL"
  case f4 = "F4"
  case f6E2M3 = "F6_E2M3"
  case f6E3M2 = "F6_E3M2"
  case u8 = "U8"
  case i8 = "I8"
  case f8E5M2 = "F8_E5M2"
  case f8E4M3 = "F8_E4M3"
  case f8E8M0 = "F8_E8M0"
  case f8E4M3FNUZ = "F8_E4M3FNUZ"
  case f8E5M2FNUZ = "F8_E5M2FNUZ"
  case i16 = "I16"
  case u16 = "U16"
  case f16 = "F16"
  case bf16 = "BF16"
  case i32 = "I32"
  case u32 = "U32"
  case f32 = "F32"
  case c64 = "C64"
  case f64 = "F64"
  case i64 = "I64"
  case u64 = "U64"

  /// Bits per element (4 and 6 for the packed sub-byte types).
  public var bitWidth: Int {
    switch self {
    case .f4: 4
    case .f6E2M3, .f6E3M2: 6
    case .bool, .u8, .i8, .f8E5M2, .f8E4M3, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ: 8
    case .i16, .u16, .f16, .bf16: 16
    case .i32, .u32, .f32: 32
    case .c64, .f64, .i64, .u64: 64
    }
  }

  /// The alignment, in bytes, a tensor of this type needs to be viewed in place: the size of
  /// its scalar (4 for `C64`, a pair of `F32`), 1 for byte and sub-byte types.
  public var alignment: Int {
    switch self {
    case .c64: 4
    default: max(1, bitWidth / 8)
    }
  }

  /// Whether the type is a packed sub-byte type (several elements per byte).
  public var isSubByte: Bool { bitWidth < 8 }

  /// Whether the type holds floating-point (or complex) values.
  public var isFloatingPoint: Bool {
    switch self {
    case .bool, .u8, .i8, .i16, .u16, .i32, .u32, .i64, .u64: false
    default: true
    }
  }

  /// Whether the type is an integer or boolean type.
  public var isInteger: Bool { !isFloatingPoint }

  /// The minifloat format, for the 4-, 6- and 8-bit float types.
  public var minifloat: Minifloat? {
    switch self {
    case .f8E4M3: .e4m3fn
    case .f8E5M2: .e5m2
    case .f8E8M0: .e8m0fnu
    case .f8E4M3FNUZ: .e4m3fnuz
    case .f8E5M2FNUZ: .e5m2fnuz
    case .f4: .e2m1fn
    case .f6E2M3: .e2m3fn
    case .f6E3M2: .e3m2fn
    default: nil
    }
  }

  /// Byte count of `elements` elements, or `nil` on overflow or if the bits do not fill a whole
  /// number of bytes (sub-byte types).
  public func byteCount(elements: Int) -> Int? {
    let (bits, overflow) = elements.multipliedReportingOverflow(by: bitWidth)
    guard !overflow, bits % 8 == 0 else { return nil }
    return bits / 8
  }

  /// Number of `Float` values ``DType/decode(_:count:into:)`` produces per element
  /// (2 for `C64`: real and imaginary parts).
  public var floatsPerElement: Int { self == .c64 ? 2 : 1 }
}

/// Number of elements in a tensor of `shape`, or `nil` if the product overflows `Int`
/// or a dimension is negative.
public func elementCount<S: Sequence>(_ shape: S) -> Int? where S.Element == Int {
  var count = 1
  for dim in shape {
    guard dim >= 0 else { return nil }
    let (product, overflow) = count.multipliedReportingOverflow(by: dim)
    guard !overflow else { return nil }
    count = product
  }
  return count
}
