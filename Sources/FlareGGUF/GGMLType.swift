/// A ggml tensor element type: its id in GGUF files, block size and bytes per block.
///
/// The table matches ggml's `ggml.h` enum and gguf-py's `GGML_QUANT_SIZES`. Ids that ggml has
/// removed are listed in ``removedIDs`` and rejected by the reader.
public struct GGMLType: Hashable, Sendable, CustomStringConvertible {
  public let id: UInt32
  public let name: String
  /// Elements per block (1 for plain types).
  public let blockSize: Int
  /// Bytes per block.
  public let typeSize: Int

  public var description: String { name }

  /// Whether the type is a block-quantized type (not F32/F16/BF16/integers/F64).
  public var isQuantized: Bool { blockSize > 1 }

  public static let f32 = GGMLType(id: 0, name: "F32", blockSize: 1, typeSize: 4)
  public static let f16 = GGMLType(id: 1, name: "F16", blockSize: 1, typeSize: 2)
  public static let q4_0 = GGMLType(id: 2, name: "Q4_0", blockSize: 32, typeSize: 18)
  public static let q4_1 = GGMLType(id: 3, name: "Q4_1", blockSize: 32, typeSize: 20)
  public static let q5_0 = GGMLType(id: 6, name: "Q5_0", blockSize: 32, typeSize: 22)
  public static let q5_1 = GGMLType(id: 7, name: "Q5_1", blockSize: 32, typeSize: 24)
  public static let q8_0 = GGMLType(id: 8, name: "Q8_0", blockSize: 32, typeSize: 34)
  public static let q8_1 = GGMLType(id: 9, name: "Q8_1", blockSize: 32, typeSize: 40)
  public static let q2_K = GGMLType(id: 10, name: "Q2_K", blockSize: 256, typeSize: 84)
  public static let q3_K = GGMLType(id: 11, name: "Q3_K", blockSize: 256, typeSize: 110)
  public static let q4_K = GGMLType(id: 12, name: "Q4_K", blockSize: 256, typeSize: 144)
  public static let q5_K = GGMLType(id: 13, name: "Q5_K", blockSize: 256, typeSize: 176)
  public static let q6_K = GGMLType(id: 14, name: "Q6_K", blockSize: 256, typeSize: 210)
  public static let q8_K = GGMLType(id: 15, name: "Q8_K", blockSize: 256, typeSize: 292)
  public static let iq4_NL = GGMLType(id: 20, name: "IQ4_NL", blockSize: 32, typeSize: 18)
  public static let iq4_XS = GGMLType(id: 23, name: "IQ4_XS", blockSize: 256, typeSize: 136)
  public static let i8 = GGMLType(id: 24, name: "I8", blockSize: 1, typeSize: 1)
  public static let i16 = GGMLType(id: 25, name: "I16", blockSize: 1, typeSize: 2)
  public static let i32 = GGMLType(id: 26, name: "I32", blockSize: 1, typeSize: 4)
  public static let i64 = GGMLType(id: 27, name: "I64", blockSize: 1, typeSize: 8)
  public static let f64 = GGMLType(id: 28, name: "F64", blockSize: 1, typeSize: 8)
  public static let bf16 = GGMLType(id: 30, name: "BF16", blockSize: 1, typeSize: 2)
  public static let mxfp4 = GGMLType(id: 39, name: "MXFP4", blockSize: 32, typeSize: 17)

  /// Every type ggml currently defines, by id.
  public static let all: [GGMLType] = [
    .f32, .f16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K,
    GGMLType(id: 16, name: "IQ2_XXS", blockSize: 256, typeSize: 66),
    GGMLType(id: 17, name: "IQ2_XS", blockSize: 256, typeSize: 74),
    GGMLType(id: 18, name: "IQ3_XXS", blockSize: 256, typeSize: 98),
    GGMLType(id: 19, name: "IQ1_S", blockSize: 256, typeSize: 50),
    .iq4_NL,
    GGMLType(id: 21, name: "IQ3_S", blockSize: 256, typeSize: 110),
    GGMLType(id: 22, name: "IQ2_S", blockSize: 256, typeSize: 82),
    .iq4_XS, .i8, .i16, .i32, .i64, .f64,
    GGMLType(id: 29, name: "IQ1_M", blockSize: 256, typeSize: 56),
    .bf16,
    GGMLType(id: 34, name: "TQ1_0", blockSize: 256, typeSize: 54),
    GGMLType(id: 35, name: "TQ2_0", blockSize: 256, typeSize: 66),
    .mxfp4,
    GGMLType(id: 40, name: "NVFP4", blockSize: 64, typeSize: 36),
    GGMLType(id: 41, name: "Q1_0", blockSize: 128, typeSize: 18),
  ]

  private static let byID: [UInt32: GGMLType] = Dictionary(
    uniqueKeysWithValues: all.map { ($0.id, $0) })
  private static let byName: [String: GGMLType] = Dictionary(
    uniqueKeysWithValues: all.map { ($0.name.lowercased(), $0) })

  /// Ids ggml once used and has removed (Q4_2, Q4_3, the Q4_0_4_4 family, the IQ4_NL_4_4 family).
  public static let removedIDs: Set<UInt32> = [4, 5, 31, 32, 33, 36, 37, 38]

  /// The type with id `id`, or `nil` if ggml defines none (or removed it).
  public static func withID(_ id: UInt32) -> GGMLType? { byID[id] }

  /// The type named `name` (case-insensitive), or `nil`.
  public static func named(_ name: String) -> GGMLType? { byName[name.lowercased()] }

  /// Bytes of a row of `elements` elements, or `nil` if `elements` is not a whole number of
  /// blocks or the size overflows.
  public func rowBytes(elements: Int) -> Int? {
    guard elements >= 0, elements % blockSize == 0 else { return nil }
    let (bytes, overflow) = (elements / blockSize).multipliedReportingOverflow(by: typeSize)
    return overflow ? nil : bytes
  }
}
