import CFlareKernels
import FlareCore

/// A matrix whose rows stay in a ggml weight type (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
/// Q6_K, F16, BF16 or F32) in memory Flare does not copy, multiplied by F32 activations with
/// the quantized kernels: each activation row is quantized per block (Q8_0 / Q8_1 for the
/// 32-element types, Q8_K for the K-quants, as ggml does), and each output is the integer dot
/// product of a weight row with it, scaled per block.
///
/// Every output is one dot product computed the same way whichever rows a thread is given, so
/// results never depend on the thread count. The instruction set (``ISA``) is chosen once from
/// the CPU; results differ between instruction sets only in the order of float additions
/// across blocks.
public struct QuantizedMatrix: @unchecked Sendable {
  // @unchecked Sendable: the bytes are never written; `owner` keeps them alive.

  /// The weight types the kernels run, by ggml type id.
  public enum Format: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case bf16 = 30

    /// Elements per block (1 for F32, F16 and BF16).
    public var blockSize: Int { Int(flare_weight_block(rawValue)) }
    /// Bytes per block.
    public var blockBytes: Int { Int(flare_weight_block_bytes(rawValue)) }

    public var description: String {
      switch self {
      case .f32: "F32"
      case .f16: "F16"
      case .bf16: "BF16"
      case .q4_0: "Q4_0"
      case .q4_1: "Q4_1"
      case .q5_0: "Q5_0"
      case .q5_1: "Q5_1"
      case .q8_0: "Q8_0"
      case .q4_K: "Q4_K"
      case .q5_K: "Q5_K"
      case .q6_K: "Q6_K"
      }
    }

    /// Bytes of a row of `elements` elements, or `nil` if it is not a whole number of blocks.
    public func rowBytes(elements: Int) -> Int? {
      guard elements > 0, elements % blockSize == 0 else { return nil }
      let (bytes, overflow) = (elements / blockSize).multipliedReportingOverflow(by: blockBytes)
      return overflow ? nil : bytes
    }
  }

  /// An instruction set of the kernels.
  public enum ISA: Int32, Sendable, CaseIterable, CustomStringConvertible {
    /// Portable C: the definition the vector kernels are tested against.
    case scalar = 0
    /// AVX2 + FMA + F16C.
    case avx2 = 1
    /// AVX-512 (F, BW, VL) with VNNI: `vpdpbusd` on 256-bit vectors.
    case avx512 = 2

    /// The best one this CPU runs.
    public static var best: ISA { ISA(rawValue: flare_isa_best()) ?? .scalar }
    /// The one the kernels use: ``best`` unless the environment variable `FLARE_KERNELS`
    /// (`scalar`, `avx2`, `avx512`) names a lower one this CPU runs, read once.
    public static var active: ISA { ISA(rawValue: flare_isa_active()) ?? .scalar }
    /// Whether this CPU runs it.
    public var isAvailable: Bool { flare_isa_available(rawValue) != 0 }

    public var description: String {
      switch self {
      case .scalar: "scalar"
      case .avx2: "AVX2"
      case .avx512: "AVX-512 VNNI"
      }
    }
  }

  public let format: Format
  public let rows: Int
  public let cols: Int
  /// Bytes from one row to the next.
  public let rowBytes: Int
  /// The first row's first byte.
  public let base: UnsafeRawPointer
  let owner: AnyObject?

  /// A view of `rows × cols` values of `format` starting at `bytes` (row-major, rows packed).
  /// `owner` is kept alive with the view (the mapped file, or the buffer the bytes are in).
  /// - Throws: ``FlareError`` if `cols` is not a whole number of blocks or the bytes are fewer
  ///   than the matrix needs.
  public init(
    format: Format, rows: Int, cols: Int, bytes: UnsafeRawBufferPointer, owner: AnyObject?,
    name: String = "matrix"
  ) throws {
    guard rows > 0, let rowBytes = format.rowBytes(elements: cols), cols <= Int(Int32.max) else {
      throw FlareError(
        "tensor", .invalidArgument,
        "\(format) rows of \(cols) values are not a whole number of \(format.blockSize)-value blocks",
        tensor: name)
    }
    let (total, overflow) = rows.multipliedReportingOverflow(by: rowBytes)
    guard !overflow, let base = bytes.baseAddress, bytes.count >= total else {
      throw FlareError(
        "tensor", .invalidArgument,
        "\(rows)×\(cols) \(format) needs \(overflow ? "more" : "\(total)") bytes, \(bytes.count) given",
        tensor: name)
    }
    self.format = format
    self.rows = rows
    self.cols = cols
    self.rowBytes = rowBytes
    self.base = base
    self.owner = owner
  }

  /// The bytes of row `row`.
  public func row(_ row: Int) -> UnsafeRawPointer {
    precondition(row >= 0 && row < rows, "QuantizedMatrix: row \(row) of \(rows)")
    return base + row * rowBytes
  }

  /// Row `row` as F32 (exactly FlareGGUF's dequantization of those bytes).
  public func dequantize(row: Int, into out: UnsafeMutablePointer<Float>) {
    flare_dequantize_row(format.rawValue, self.row(row), Int32(cols), out)
  }

  /// `y += alpha · row` for row `row` (the backward pass through `Wᵀ`, one output at a time).
  public func addRow(_ row: Int, times alpha: Float, to y: UnsafeMutablePointer<Float>) {
    flare_axpy_row(format.rawValue, self.row(row), Int32(cols), alpha, y)
  }

  /// Activations quantized for this matrix's format.
  public func quantize(_ x: UnsafePointer<Float>, tokens: Int) -> QuantizedActivations {
    QuantizedActivations(format: format, x, tokens: tokens, cols: cols)
  }

  /// `out[t · outStride + r] = row r · activation t` for `r` in `rows` and every token.
  public func multiply(
    _ activations: QuantizedActivations, rows range: Range<Int>,
    into out: UnsafeMutablePointer<Float>,
    outStride: Int, isa: ISA = .active
  ) {
    precondition(
      activations.format == format && activations.cols == cols,
      "QuantizedMatrix: activations of another format or width")
    precondition(
      range.lowerBound >= 0 && range.upperBound <= rows, "QuantizedMatrix: rows out of range")
    precondition(isa.isAvailable, "QuantizedMatrix: \(isa) does not run on this CPU")
    guard !range.isEmpty, activations.tokens > 0 else { return }
    flare_matmul(
      isa.rawValue, format.rawValue, base + range.lowerBound * rowBytes, rowBytes,
      Int32(range.count), activations.storage.base, Int32(activations.tokens), Int32(cols),
      out + range.lowerBound, outStride)
  }

  /// The dot product of row `row` with activation `token` on `isa`.
  public func dot(row: Int, _ activations: QuantizedActivations, token: Int = 0, isa: ISA = .active)
    -> Float
  {
    precondition(
      activations.format == format && activations.cols == cols,
      "QuantizedMatrix: activations of another format or width")
    precondition(token >= 0 && token < activations.tokens && isa.isAvailable)
    return flare_dot(
      isa.rawValue, format.rawValue, self.row(row), activations.row(token), Int32(cols))
  }
}

/// Rows of F32 activations quantized for one weight format (see ``QuantizedMatrix``), in a
/// 64-byte aligned buffer this value owns.
public struct QuantizedActivations: @unchecked Sendable {
  // @unchecked Sendable: written once in init.
  final class Storage {
    let base: UnsafeMutableRawPointer
    init(bytes: Int) {
      base = .allocate(byteCount: max(bytes, 64), alignment: 64)
    }
    deinit { base.deallocate() }
  }

  public let format: QuantizedMatrix.Format
  public let tokens: Int
  public let cols: Int
  /// Bytes of one quantized row.
  public let rowBytes: Int
  let storage: Storage

  /// Quantizes `tokens` rows of `cols` F32 values (`cols` a whole number of the format's
  /// blocks) on `isa` (every instruction set writes the same bytes).
  public init(
    format: QuantizedMatrix.Format, _ x: UnsafePointer<Float>, tokens: Int, cols: Int,
    isa: QuantizedMatrix.ISA = .active
  ) {
    precondition(cols > 0 && cols % format.blockSize == 0 && tokens >= 0 && isa.isAvailable)
    self.format = format
    self.tokens = tokens
    self.cols = cols
    rowBytes = Int(flare_act_bytes(format.rawValue, Int32(cols)))
    storage = Storage(bytes: rowBytes * tokens)
    for t in 0..<tokens {
      flare_act_quantize(
        isa.rawValue, format.rawValue, x + t * cols, Int32(cols), storage.base + t * rowBytes)
    }
  }

  func row(_ token: Int) -> UnsafeRawPointer { UnsafeRawPointer(storage.base + token * rowBytes) }

  // The parts of a quantized row (the layout kernels.c writes), for tests and diagnostics.
  private var blockSize: Int { format.blockSize }

  /// The int8 values of row `token` (empty for F32/F16/BF16 formats, which keep F32 rows).
  public func values(token: Int) -> [Int8] {
    guard blockSize > 1 else { return [] }
    let p = row(token).assumingMemoryBound(to: Int8.self)
    return Array(UnsafeBufferPointer(start: p, count: cols))
  }

  /// The scale of each block of row `token` (32 values, or 256 for the K-quants).
  public func scales(token: Int) -> [Float] {
    guard blockSize > 1 else { return [] }
    let p = (row(token) + cols).assumingMemoryBound(to: Float.self)
    return Array(UnsafeBufferPointer(start: p, count: cols / blockSize))
  }

  /// `scale · Σ values` rounded to F16 per 32-value block (ggml's Q8_1 `s`); empty for K.
  public func scaledSums(token: Int) -> [Float] {
    guard blockSize == 32 else { return [] }
    let p = (row(token) + cols + 4 * (cols / 32)).assumingMemoryBound(to: Float.self)
    return Array(UnsafeBufferPointer(start: p, count: cols / 32))
  }

  /// The integer sums of row `token`'s values: per 32-value block, or per 16 values (ggml's
  /// Q8_K `bsums`) for the K-quants.
  public func sums(token: Int) -> [Int] {
    switch blockSize {
    case 32:
      let p = (row(token) + cols + 8 * (cols / 32)).assumingMemoryBound(to: Int32.self)
      return UnsafeBufferPointer(start: p, count: cols / 32).map { Int($0) }
    case 256:
      let p = (row(token) + cols + 4 * (cols / 256)).assumingMemoryBound(to: Int16.self)
      return UnsafeBufferPointer(start: p, count: cols / 16).map { Int($0) }
    default: return []
    }
  }
}
