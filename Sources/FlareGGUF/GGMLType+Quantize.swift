import Dispatch
import FlareCore

extension HalfPrecision {
  /// bfloat16 as ggml rounds it (`ggml_compute_fp32_to_bf16`): nearest, ties to even; a NaN
  /// keeps its upper bits and is forced quiet (`(bits >> 16) | 64`).
  @inlinable
  public static func floatToBF16GGML(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if bits & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(truncatingIfNeeded: bits >> 16) | 64 }
    return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
  }
}

extension GGMLType {
  /// Whether Flare can quantize to this type.
  public var canQuantize: Bool { [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30].contains(id) }

  /// Quantizes `values` (a whole number of blocks) into `output` (``rowBytes(elements:)`` bytes).
  ///
  /// Bit-identical to gguf-py's `gguf.quants.quantize`, itself bit-identical to ggml's
  /// reference quantizers for Q8_0 (round half away from zero) and following them for
  /// Q4_0/Q4_1/Q5_0/Q5_1; Q4_K, Q5_K and Q6_K are bit-identical to ggml's
  /// `quantize_row_q*_K_ref` (gguf-py has no K-quant quantizer); block scales are stored as F16
  /// rounded to nearest even; BF16 rounds as ggml does.
  /// - Throws: ``FlareError`` `.unsupported` for other types, `.invalidArgument` on sizes.
  public func quantize(
    _ values: UnsafeBufferPointer<Float>, into output: UnsafeMutableRawBufferPointer
  ) throws {
    try checkQuantize(values, into: output)
    let count = values.count
    let blocks = count / blockSize
    switch id {
    case 0:
      for i in 0..<count {
        output.storeBytes(
          of: values[i].bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
      }
    case 1:
      for i in 0..<count {
        output.storeBytes(
          of: HalfPrecision.floatToF16(values[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self
        )
      }
    case 30:
      for i in 0..<count {
        output.storeBytes(
          of: HalfPrecision.floatToBF16GGML(values[i]).littleEndian, toByteOffset: 2 * i,
          as: UInt16.self)
      }
    case 8: for b in 0..<blocks { Self.q8_0Block(values, b * 32, output, b * 34) }
    case 2: for b in 0..<blocks { Self.symmetricBlock(values, b * 32, output, b * 18, levels: 8) }
    case 6: for b in 0..<blocks { Self.symmetricBlock(values, b * 32, output, b * 22, levels: 16) }
    case 3: for b in 0..<blocks { Self.affineBlock(values, b * 32, output, b * 20, maxQ: 15) }
    case 7: for b in 0..<blocks { Self.affineBlock(values, b * 32, output, b * 24, maxQ: 31) }
    case 12: for b in 0..<blocks { Self.quantizeQ4_K(values, b * 256, output, b * 144) }
    case 13: for b in 0..<blocks { Self.quantizeQ5_K(values, b * 256, output, b * 176) }
    case 14: for b in 0..<blocks { Self.quantizeQ6_K(values, b * 256, output, b * 210) }
    default: break
    }
  }

  /// Throws unless this type quantizes and `values` fill whole blocks that fit `output`.
  func checkQuantize(
    _ values: UnsafeBufferPointer<Float>, into output: UnsafeMutableRawBufferPointer
  ) throws {
    guard canQuantize else {
      throw FlareError("gguf", .unsupported, "quantizing to \(name) is not supported")
    }
    guard values.count % blockSize == 0, let bytes = rowBytes(elements: values.count),
      output.count >= bytes
    else {
      throw FlareError(
        "gguf", .invalidArgument,
        "\(values.count) values do not fill whole \(name) blocks of \(output.count) bytes")
    }
  }

  @inline(__always)
  private static func storeHalf(_ value: Float, _ y: UnsafeMutableRawBufferPointer, _ at: Int) {
    y.storeBytes(
      of: HalfPrecision.floatToF16(value).littleEndian, toByteOffset: at, as: UInt16.self)
  }

  // Q8_0: d = amax/127, q = round-half-away(x · (1/d)).
  private static func q8_0Block(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ y: UnsafeMutableRawBufferPointer, _ o: Int
  ) {
    var amax: Float = 0
    for j in 0..<32 { amax = max(amax, abs(x[at + j])) }
    let d = amax / 127
    let id: Float = d == 0 ? 0 : 1 / d
    storeHalf(d, y, o)
    for j in 0..<32 {
      let q = (x[at + j] * id).rounded(.toNearestOrAwayFromZero)
      y[o + 2 + j] = UInt8(bitPattern: Int8(q))
    }
  }

  // Q4_0 (levels 8) and Q5_0 (levels 16): d = (value of largest magnitude) / −levels,
  // q = trunc(x · (1/d) + levels + 0.5) clipped to [0, 2·levels − 1].
  private static func symmetricBlock(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ y: UnsafeMutableRawBufferPointer, _ o: Int,
    levels: Int
  ) {
    var imax = 0
    var amax: Float = -1
    for j in 0..<32 where abs(x[at + j]) > amax {  // first index of the largest magnitude
      amax = abs(x[at + j])
      imax = j
    }
    let d = x[at + imax] / -Float(levels)
    let id: Float = d == 0 ? 0 : 1 / d
    let offset = Float(levels) + 0.5
    var q = [UInt8](repeating: 0, count: 32)
    for j in 0..<32 {
      let t = (x[at + j] * id + offset).rounded(.towardZero)
      q[j] = UInt8(min(Float(2 * levels - 1), max(0, t)))
    }
    storeHalf(d, y, o)
    storeCodes(q, y, o + 2, fiveBits: levels != 8)
  }

  /// Stores 32 codes after a block's header: two 4-bit codes per byte (`j` low, `j + 16`
  /// high), preceded for 5-bit codes by a little-endian `u32` of their fifth bits.
  private static func storeCodes(
    _ q: [UInt8], _ y: UnsafeMutableRawBufferPointer, _ o: Int, fiveBits: Bool
  ) {
    var at = o
    if fiveBits {
      var qh: UInt32 = 0
      for j in 0..<32 { qh |= UInt32(q[j] >> 4) << UInt32(j) }
      y.storeBytes(of: qh.littleEndian, toByteOffset: o, as: UInt32.self)
      at += 4
    }
    for j in 0..<16 { y[at + j] = (q[j] & 0x0F) | (q[j + 16] << 4) }
  }

  // Q4_1 (maxQ 15) and Q5_1 (maxQ 31): d = (max − min)/maxQ, m = min,
  // q = trunc((x − min) · (1/d) + 0.5) clipped to [0, maxQ].
  private static func affineBlock(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ y: UnsafeMutableRawBufferPointer, _ o: Int,
    maxQ: Int
  ) {
    var low = x[at]
    var high = x[at]
    for j in 1..<32 {
      low = min(low, x[at + j])
      high = max(high, x[at + j])
    }
    let d = (high - low) / Float(maxQ)
    let id: Float = d == 0 ? 0 : 1 / d
    var q = [UInt8](repeating: 0, count: 32)
    for j in 0..<32 {
      let t = ((x[at + j] - low) * id + 0.5).rounded(.towardZero)
      q[j] = UInt8(min(Float(maxQ), max(0, t)))
    }
    storeHalf(d, y, o)
    storeHalf(low, y, o + 2)
    storeCodes(q, y, o + 4, fiveBits: maxQ != 15)
  }
}

/// How many threads (de)quantization uses: 0 (the default) for all cores. The ranges do not
/// depend on it, so neither do the results.
public enum GGMLParallelism {
  nonisolated(unsafe) public static var threads = 0
}

/// Splits `0..<count` into contiguous ranges that start at multiples of `granularity` and
/// together cover every item, and runs `body` on them on all cores (or on
/// ``GGMLParallelism/threads`` workers, each taking every n-th range).
func parallelRanges(count: Int, granularity: Int, body: @Sendable (Range<Int>) -> Void) {
  let ranges = chunkRanges(count: count, granularity: granularity)
  let threads = GGMLParallelism.threads
  guard threads > 0 else {
    DispatchQueue.concurrentPerform(iterations: ranges.count) { i in body(ranges[i]) }
    return
  }
  let workers = min(threads, ranges.count)
  if workers <= 1 {
    for range in ranges { body(range) }
    return
  }
  DispatchQueue.concurrentPerform(iterations: workers) { worker in
    for i in stride(from: worker, to: ranges.count, by: workers) { body(ranges[i]) }
  }
}

/// The ranges ``parallelRanges(count:granularity:body:)`` uses: at most 8 per 64 units of
/// `granularity`, every one but the last a whole number of units long.
func chunkRanges(count: Int, granularity: Int) -> [Range<Int>] {
  guard count > 0 else { return [] }
  let unit = max(1, granularity)
  let units = (count + unit - 1) / unit  // rounded up: the tail is a unit too
  let pieces = min(units, (units / 64 + 1) * 8)
  let perPiece = (units + pieces - 1) / pieces * unit
  return stride(from: 0, to: count, by: perPiece).map { $0..<min(count, $0 + perPiece) }
}

extension GGMLType {
  /// ``dequantize(_:count:into:)`` split over blocks on all cores.
  public func dequantizeParallel(
    _ raw: UnsafeRawBufferPointer, count: Int, into output: UnsafeMutableBufferPointer<Float>
  ) throws {
    try checkDequantize(raw, count: count, into: output)
    let type = self
    nonisolated(unsafe) let source = raw
    nonisolated(unsafe) let target = output
    parallelRanges(count: count, granularity: blockSize * 256) { range in
      let first = range.lowerBound / type.blockSize * type.typeSize
      let last = range.upperBound / type.blockSize * type.typeSize
      try? type.dequantize(
        UnsafeRawBufferPointer(rebasing: source[first..<last]), count: range.count,
        into: UnsafeMutableBufferPointer(rebasing: target[range]))
    }
  }

  /// ``quantize(_:into:)`` split over blocks on all cores.
  public func quantizeParallel(
    _ values: UnsafeBufferPointer<Float>, into output: UnsafeMutableRawBufferPointer
  ) throws {
    try checkQuantize(values, into: output)
    let type = self
    nonisolated(unsafe) let source = values
    nonisolated(unsafe) let target = output
    parallelRanges(count: values.count, granularity: blockSize * 256) { range in
      let first = range.lowerBound / type.blockSize * type.typeSize
      let last = range.upperBound / type.blockSize * type.typeSize
      try? type.quantize(
        UnsafeBufferPointer(rebasing: source[range]),
        into: UnsafeMutableRawBufferPointer(rebasing: target[first..<last]))
    }
  }
}
