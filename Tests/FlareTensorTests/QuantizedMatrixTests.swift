import FlareCore
import FlareGGUF
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareTensor

/// Bytes from a hex string.
private func unhex(_ text: String) -> [UInt8] {
  var bytes: [UInt8] = []
  bytes.reserveCapacity(text.utf8.count / 2)
  var high: UInt8 = 0
  for (i, c) in text.utf8.enumerated() {
    let v: UInt8 = c <= 57 ? c - 48 : (c | 0x20) - 87
    if i & 1 == 0 { high = v } else { bytes.append(high << 4 | v) }
  }
  return bytes
}

private func halfAt(_ b: [UInt8], _ o: Int) -> Float {
  HalfPrecision.f16ToFloat(UInt16(b[o]) | UInt16(b[o + 1]) << 8)
}

/// A matrix over bytes this value keeps.
private struct OwnedMatrix {
  let storage: [UInt8]
  let matrix: QuantizedMatrix
  let box: Box

  final class Box {
    let pointer: UnsafeMutableRawBufferPointer
    init(_ bytes: [UInt8]) {
      pointer = .allocate(byteCount: max(bytes.count, 1), alignment: 64)
      bytes.withUnsafeBytes { pointer.copyMemory(from: $0) }
    }
    deinit { pointer.deallocate() }
  }

  init(_ format: QuantizedMatrix.Format, rows: [[UInt8]], cols: Int) throws {
    storage = rows.flatMap { $0 }
    box = Box(storage)
    matrix = try QuantizedMatrix(
      format: format, rows: rows.count, cols: cols,
      bytes: UnsafeRawBufferPointer(start: box.pointer.baseAddress, count: storage.count),
      owner: box)
  }
}

/// FlareGGUF's dequantization (bit-identical to gguf-py's) of one row.
private func dequantized(_ type: GGMLType, _ bytes: [UInt8], count: Int) throws -> [Float] {
  var out = [Float](repeating: 0, count: count)
  try bytes.withUnsafeBytes { raw in
    try out.withUnsafeMutableBufferPointer { try type.dequantize(raw, count: count, into: $0) }
  }
  return out
}

private let availableISAs = QuantizedMatrix.ISA.allCases.filter(\.isAvailable)

/// Oracle: `Fixtures/golden/qdot-ggml.json`, made by `Fixtures/gguf/make_qdot_golden.py` from
/// ggml's own C (vendored in the pinned llama-cpp-python sdist, compiled with
/// `-ffp-contract=off`): `quantize_row_q8_0_ref`, `_q8_1_ref` and `_q8_K_ref` for activations,
/// `quantize_row_<type>_ref` for weights and `ggml_vec_dot_<type>_<q8>_generic` for the dots,
/// on seeded rows and two real SmolLM2 rows, against four activation rows (normal, outlier
/// features, a zero block, exact ties).
@Suite("Quantized kernels against ggml's own dot products")
struct QuantizedKernelGoldenTests {
  static let golden: JSONValue = (try? loadFixtureJSON("golden/qdot-ggml.json")) ?? .null

  static func activations() throws -> [[Float]] {
    let rows = try #require(golden["activations_f32_hex"]?.arrayValue).compactMap(\.stringValue)
    return rows.map { hex in
      let bytes = unhex(hex)
      return (0..<(bytes.count / 4)).map { i in
        Float(
          bitPattern: UInt32(bytes[4 * i]) | UInt32(bytes[4 * i + 1]) << 8
            | UInt32(bytes[4 * i + 2]) << 16 | UInt32(bytes[4 * i + 3]) << 24)
      }
    }
  }

  // Tolerance: none. Values, scales and sums must equal ggml's exactly (ggml stores the
  // Q8_0/Q8_1 scale and Q8_1's scaled sum in F16; Flare keeps the F16 value as F32).
  @Test(
    "activations quantize exactly as ggml's Q8_0, Q8_1 and Q8_K reference quantizers",
    arguments: [("q8_0", QuantizedMatrix.Format.q4_0), ("q8_1", .q4_1), ("q8_K", .q4_K)])
  func activationQuantization(kind: String, format: QuantizedMatrix.Format) throws {
    let n = try #require(Self.golden["length"]?.intValue)
    let rows = try Self.activations()
    let expected = try #require(Self.golden["activations_quantized_hex"]?[kind]?.arrayValue)
      .compactMap(\.stringValue)
    try #require(rows.count == 4 && expected.count == 4)
    for (t, x) in rows.enumerated() {
      try #require(x.count == n)
      let act = x.withUnsafeBufferPointer {
        QuantizedActivations(format: format, $0.baseAddress!, tokens: 1, cols: n)
      }
      let ggml = unhex(expected[t])
      let values = act.values(token: 0)
      let scales = act.scales(token: 0)
      switch kind {
      case "q8_K":
        let sums = act.sums(token: 0)
        for b in 0..<(n / 256) {
          let o = 292 * b
          let d = Float(
            bitPattern: UInt32(ggml[o]) | UInt32(ggml[o + 1]) << 8 | UInt32(ggml[o + 2]) << 16
              | UInt32(ggml[o + 3]) << 24)
          #expect(scales[b].bitPattern == d.bitPattern, "row \(t) block \(b) scale")
          let qs = (0..<256).map { Int8(bitPattern: ggml[o + 4 + $0]) }
          #expect(Array(values[(256 * b)..<(256 * b + 256)]) == qs, "row \(t) block \(b) values")
          let bsums = (0..<16).map {
            Int(
              Int16(
                bitPattern: UInt16(ggml[o + 260 + 2 * $0]) | UInt16(ggml[o + 261 + 2 * $0]) << 8))
          }
          #expect(Array(sums[(16 * b)..<(16 * b + 16)]) == bsums, "row \(t) block \(b) sums")
        }
      default:
        let size = kind == "q8_1" ? 36 : 34
        let at = kind == "q8_1" ? 4 : 2
        let scaled = act.scaledSums(token: 0)
        for b in 0..<(n / 32) {
          let o = size * b
          #expect(scales[b] == halfAt(ggml, o), "row \(t) block \(b) scale")
          if kind == "q8_1" { #expect(scaled[b] == halfAt(ggml, o + 2), "row \(t) block \(b) s") }
          let qs = (0..<32).map { Int8(bitPattern: ggml[o + at + $0]) }
          #expect(Array(values[(32 * b)..<(32 * b + 32)]) == qs, "row \(t) block \(b) values")
        }
      }
    }
  }

  // Tolerance: 1e-5 of Σ|wᵢ·xᵢ| (wᵢ FlareGGUF's dequantized weight, xᵢ the F32 activation):
  // both sides sum the same exact per-block integer products, in a different float order; the
  // error of the quantization itself is about a thousand times larger.
  @Test(
    "every instruction set's dot products equal ggml's on the same bytes",
    arguments: ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
  func dots(name: String) throws {
    let n = try #require(Self.golden["length"]?.intValue)
    let entry = try #require(Self.golden["types"]?[name])
    let type = try #require(GGMLType.named(name))
    let format = try #require(QuantizedMatrix.Format(rawValue: Int32(type.id)))
    let weights = try #require(entry["weights_hex"]?.arrayValue).compactMap(\.stringValue).map(
      unhex)
    let dots = try #require(entry["dots_f32_bits"]?.arrayValue).map {
      ($0.arrayValue ?? []).compactMap(\.uint64Value).map { Float(bitPattern: UInt32($0)) }
    }
    let rows = try Self.activations()
    try #require(weights.count == 6 && dots.count == 6 && rows.count == 4)
    let owned = try OwnedMatrix(format, rows: weights, cols: n)
    let flat = rows.flatMap { $0 }
    let act = flat.withUnsafeBufferPointer { owned.matrix.quantize($0.baseAddress!, tokens: 4) }
    var worst: Float = 0
    for r in 0..<weights.count {
      let w = try dequantized(type, weights[r], count: n)
      for t in 0..<4 {
        let magnitude = zip(w, rows[t]).reduce(Float(0)) { $0 + abs($1.0 * $1.1) }
        for isa in availableISAs {
          let mine = owned.matrix.dot(row: r, act, token: t, isa: isa)
          let error = abs(mine - dots[r][t])
          worst = max(worst, error / max(magnitude, .leastNormalMagnitude))
          #expect(
            error <= 1e-5 * magnitude, "\(name) row \(r) act \(t) \(isa): \(mine) vs \(dots[r][t])")
        }
      }
    }
    #expect(worst < 1e-5)
  }
}

/// Oracles: FlareGGUF's dequantizer (bit-identical to gguf-py's, see GoldenTests) for row
/// dequantization and the F32 product; the scalar kernel (the definition) for the vector
/// kernels; the real SmolLM2 Q4_1 GGUF for rows (its Q4_1 and Q8_0 tensors as stored, and its
/// dequantized rows re-quantized by FlareGGUF, byte-identical to ggml, for the other types).
@Suite("Quantized matrices on real SmolLM2 rows")
struct QuantizedMatrixTests {
  /// `count` rows of the tensor `name` of the SmolLM2 GGUF, as stored.
  static func realRows(_ name: String, count: Int) throws -> (GGMLType, Int, [[UInt8]])? {
    guard FileManager.default.fileExists(atPath: smolLM2GGUF) else {
      if offline { return nil }
      throw MissingModel(description: "SmolLM2 is missing: run scripts/fetch-models.sh")
    }
    let file = try GGUFFile(path: smolLM2GGUF)
    let tensor = try #require(file.tensor(name))
    let cols = Int(tensor.dims[0])
    let rowBytes = try #require(tensor.type.rowBytes(elements: cols))
    let raw = file.bytes(of: tensor)
    let rows = (0..<count).map { r in Array(raw[(r * rowBytes)..<((r + 1) * rowBytes)]) }
    return (tensor.type, cols, rows)
  }

  /// Real rows in `type`: stored ones for Q4_1 and Q8_0, else SmolLM2's `blk.0.ffn_down` rows
  /// (1536 values) dequantized and re-quantized by FlareGGUF.
  static func rows(_ type: GGMLType, count: Int) throws -> (Int, [[UInt8]])? {
    if type == .q4_1 || type == .q8_0 {
      let name = type == .q4_1 ? "blk.0.ffn_down.weight" : "token_embd.weight"
      guard let (stored, cols, rows) = try realRows(name, count: count) else { return nil }
      try #require(stored == type)
      return (cols, rows)
    }
    return try requantized(type, count: count)
  }

  /// SmolLM2's `blk.0.ffn_down` rows (1536 values) dequantized and re-quantized to `type` by
  /// FlareGGUF.
  static func requantized(_ type: GGMLType, count: Int) throws -> (Int, [[UInt8]])? {
    guard let (stored, cols, rows) = try realRows("blk.0.ffn_down.weight", count: count) else {
      return nil
    }
    let size = try #require(type.rowBytes(elements: cols))
    return (
      cols,
      try rows.map { bytes in
        let values = try dequantized(stored, bytes, count: cols)
        var out = [UInt8](repeating: 0, count: size)
        try values.withUnsafeBufferPointer { v in
          try out.withUnsafeMutableBytes { try type.quantize(v, into: $0) }
        }
        return out
      }
    )
  }

  /// Activation-like rows: normal values with a few large features, seeded.
  static func activations(cols: Int, tokens: Int, seed: UInt64) -> [Float] {
    var state = seed
    func next() -> Float {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Float(Int64(bitPattern: state >> 11) % 2_000_001 - 1_000_000) / 1_000_000
    }
    var x = (0..<(cols * tokens)).map { _ in next() + next() + next() }
    for t in 0..<tokens { x[t * cols + (t * 37 + 5) % cols] *= 40 }
    return x
  }

  static let formats: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K]

  // Tolerance: none. The kernels' row dequantization is FlareGGUF's, bit for bit.
  @Test("dequantize(row:) and addRow equal FlareGGUF's dequantizer bit for bit", arguments: formats)
  func dequantizeRow(type: GGMLType) throws {
    guard let (cols, rows) = try Self.rows(type, count: 4) else { return }
    let format = try #require(QuantizedMatrix.Format(rawValue: Int32(type.id)))
    let owned = try OwnedMatrix(format, rows: rows, cols: cols)
    for r in 0..<rows.count {
      let expected = try dequantized(type, rows[r], count: cols)
      var mine = [Float](repeating: .nan, count: cols)
      mine.withUnsafeMutableBufferPointer { owned.matrix.dequantize(row: r, into: $0.baseAddress!) }
      #expect(mine.map(\.bitPattern) == expected.map(\.bitPattern), "\(type) row \(r)")
      var y = (0..<cols).map { Float($0) * 0.25 }
      let want = zip(y, expected).map { $0 + Float(-0.75) * $1 }
      y.withUnsafeMutableBufferPointer { owned.matrix.addRow(r, times: -0.75, to: $0.baseAddress!) }
      #expect(y.map(\.bitPattern) == want.map(\.bitPattern), "\(type) row \(r) axpy")
    }
  }

  /// The bound on |kernel − Σ ŵᵢ·xᵢ| that quantizing the activations allows: each activation
  /// moves by at most half its block's step `d` plus 127 times the F16 rounding of `d`
  /// (Q8_0/Q8_1), which multiplies the magnitude of the weight's parts (`|d·q|` plus the
  /// block minimum `M`); Q8_1's F16 sum adds `M·|s|·2⁻¹¹`; float rounding adds 1e-5 of Σ|ŵᵢxᵢ|.
  static func bound(
    _ type: GGMLType, row: [UInt8], weights w: [Float], x: [Float], act: QuantizedActivations
  ) -> Float {
    let cols = x.count
    let block = type.blockSize == 256 ? 256 : 32
    let scales = act.scales(token: 0)
    let scaled = act.scaledSums(token: 0)
    var total: Float = 0
    for b in 0..<(cols / block) {
      let d = abs(scales[b])  // Q8_K's scale carries the sign of the largest value
      // The step before its F16 rounding is amax/127 (32-value formats), within 2⁻¹¹ of d.
      let step = block == 32 ? 0.5 * d + 127 * d * 0x1p-11 + 1e-30 : 0.5 * d * (1 + 1e-6)
      var minimum: Float = 0
      let o = b * type.typeSize
      switch type {
      case .q4_1, .q5_1: minimum = abs(halfAt(row, o + 2))
      case .q4_K, .q5_K: minimum = abs(halfAt(row, o + 2)) * 63
      default: break
      }
      var part: Float = 0
      for i in (b * block)..<((b + 1) * block) { part += (abs(w[i]) + 2 * minimum) * step }
      total += part
      if block == 32 { total += minimum * abs(scaled[b]) * 0x1p-10 }
    }
    return total + 1e-5 * zip(w, x).reduce(Float(0)) { $0 + abs($1.0 * $1.1) }
  }

  // Tolerance: ``bound(_:row:weights:x:act:)``, derived from the activations' quantization
  // step; the observed relative error (printed) is reported in scripts/BENCHMARKS.md.
  @Test(
    "every dot product is within the activation-quantization bound of the F32 product",
    arguments: formats)
  func withinBoundOfF32(type: GGMLType) throws {
    guard let (cols, rows) = try Self.rows(type, count: 8) else { return }
    let format = try #require(QuantizedMatrix.Format(rawValue: Int32(type.id)))
    let owned = try OwnedMatrix(format, rows: rows, cols: cols)
    var worst = 0.0
    for t in 0..<3 {
      let x = Self.activations(cols: cols, tokens: 1, seed: UInt64(t + 1))
      let act = x.withUnsafeBufferPointer { owned.matrix.quantize($0.baseAddress!, tokens: 1) }
      for r in 0..<rows.count {
        let w = try dequantized(type, rows[r], count: cols)
        let exact = zip(w, x).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        let limit = Self.bound(type, row: rows[r], weights: w, x: x, act: act)
        let norm = zip(w, x).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
        for isa in availableISAs {
          let mine = Double(owned.matrix.dot(row: r, act, isa: isa))
          #expect(abs(mine - exact) <= Double(limit), "\(type) row \(r) \(isa)")
          worst = max(worst, abs(mine - exact) / norm)
        }
      }
    }
    print("\(type): largest |kernel − F32| / Σ|w·x| = \(worst)")
  }

  // Tolerance: none. Each instruction set's dot kernel computes the block sums exactly and
  // then the scalar definition's float operations in its order.
  @Test("AVX2 and AVX-512 dot products equal the scalar definition bit for bit", arguments: formats)
  func crossISA(type: GGMLType) throws {
    guard let (cols, rows) = try Self.rows(type, count: 8) else { return }
    let format = try #require(QuantizedMatrix.Format(rawValue: Int32(type.id)))
    let owned = try OwnedMatrix(format, rows: rows, cols: cols)
    let x = Self.activations(cols: cols, tokens: 2, seed: 99)
    let act = x.withUnsafeBufferPointer { owned.matrix.quantize($0.baseAddress!, tokens: 2) }
    for r in 0..<rows.count {
      for t in 0..<2 {
        let reference = owned.matrix.dot(row: r, act, token: t, isa: .scalar)
        for isa in availableISAs {
          let value = owned.matrix.dot(row: r, act, token: t, isa: isa)
          #expect(value.bitPattern == reference.bitPattern, "\(type) row \(r) token \(t) \(isa)")
        }
      }
    }
  }

  /// The product of `m` with every token of `act`, one `multiply` call per range of `split`
  /// (row boundaries from 0 to `m.rows`).
  static func product(
    _ m: QuantizedMatrix, _ act: QuantizedActivations, split: [Int], isa: QuantizedMatrix.ISA
  ) -> [Float] {
    var out = [Float](repeating: .nan, count: act.tokens * m.rows)
    out.withUnsafeMutableBufferPointer { o in
      for k in 0..<(split.count - 1) {
        m.multiply(
          act, rows: split[k]..<split[k + 1], into: o.baseAddress!, outStride: m.rows, isa: isa)
      }
    }
    return out
  }

  // Tolerance: none. Every output is one dot product, whatever rows a call covers and however
  // the vector kernels group rows and tokens (one token: tiles of 4 rows, or 2 and 1 for the
  // K-quants on AVX2; two or more: packed groups of 16 rows on AVX-512 and 8 on AVX2, K-quant
  // tiles on AVX2), on every instruction set.
  @Test("matrix products are bit-identical for any row split and token count", arguments: formats)
  func matrixProduct(type: GGMLType) throws {
    guard let (cols, rows) = try Self.rows(type, count: 24) else { return }
    let format = try #require(QuantizedMatrix.Format(rawValue: Int32(type.id)))
    let owned = try OwnedMatrix(format, rows: rows, cols: cols)
    let m = owned.matrix
    for tokens in [1, 3, 4, 9, 17] {
      let x = Self.activations(cols: cols, tokens: tokens, seed: UInt64(tokens))
      let act = x.withUnsafeBufferPointer { m.quantize($0.baseAddress!, tokens: tokens) }
      for isa in availableISAs {
        let whole = Self.product(m, act, split: [0, m.rows], isa: isa)
        for split in [[0, 7, 24], [0, 1, 2, 13, 24], [0, 23, 24], [0, 5, 10, 15, 24]] {
          let parts = Self.product(m, act, split: split, isa: isa)
          #expect(
            parts.map(\.bitPattern) == whole.map(\.bitPattern), "\(type) \(tokens) \(split) \(isa)")
        }
        for t in 0..<tokens {
          for r in 0..<m.rows {
            #expect(
              whole[t * m.rows + r].bitPattern == m.dot(row: r, act, token: t, isa: isa).bitPattern,
              "\(type) row \(r) token \(t) \(isa)")
          }
        }
      }
    }
  }

  // Oracle: the portable definition (flare_dot_scalar: each block's exact integer sums, then
  // its float products and sums in block order). Tolerance: none. Every instruction set runs
  // the same float operations in the same order, in the tile kernels (one token) and in the
  // packed products (AVX-512: 16 rows a vector, chunks of 32 or 4 blocks, 8/4/2/1 tokens a
  // pass; AVX2: 8 rows, 32-value types, 4/2/1 tokens). 1536 values make two chunks, 40 rows
  // partial row groups, the splits partial groups of their own. (Checked: a fused multiply-add
  // for the integer term, or Q4_1's minimum term added after the integer term instead of with
  // it, fails it.)
  @Test("vector kernels equal the portable definition bit for bit", arguments: formats)
  func portableExact(type: GGMLType) throws {
    let isas = availableISAs.filter { $0 != .scalar }
    guard !isas.isEmpty else { return }
    let format = try #require(QuantizedMatrix.Format(rawValue: Int32(type.id)))
    var sources = [try Self.requantized(type, count: 40)]
    if type == .q4_1 || type == .q8_0 { sources.append(try Self.rows(type, count: 40)) }
    for found in sources {
      guard let (cols, rows) = found else { return }
      let owned = try OwnedMatrix(format, rows: rows, cols: cols)
      let m = owned.matrix
      for tokens in [1, 2, 3, 4, 7, 8, 13, 33] {
        let x = Self.activations(cols: cols, tokens: tokens, seed: UInt64(100 + tokens))
        let act = x.withUnsafeBufferPointer { m.quantize($0.baseAddress!, tokens: tokens) }
        for isa in isas {
          for split in [[0, 40], [0, 5, 21, 40], [0, 16, 17, 40]] {
            let out = Self.product(m, act, split: split, isa: isa)
            var mismatches = 0
            for t in 0..<tokens {
              for r in 0..<m.rows {
                let scalar = m.dot(row: r, act, token: t, isa: .scalar)
                if out[t * m.rows + r].bitPattern != scalar.bitPattern { mismatches += 1 }
              }
            }
            #expect(
              mismatches == 0, "\(type) \(isa) \(cols) values, \(tokens) tokens, split \(split)")
          }
        }
      }
    }
  }

  // Oracle: the portable quantizers (themselves equal to ggml's reference quantizers, see
  // QuantizedKernelGoldenTests); tolerance: none, every byte. Rows: seeded values, exact ties
  // at .5 after scaling (amax 127 makes the scale 1), equal magnitudes of both signs, NaN,
  // infinities, zeros, and a subnormal maximum (Q8_K's scale −127/max overflows to infinity).
  @Test("every instruction set quantizes activations to the same bytes")
  func quantizersAgree() throws {
    let cols = 512
    var rows: [[Float]] = (0..<3).map { Self.activations(cols: cols, tokens: 1, seed: 40 + $0) }
    rows.append((0..<cols).map { i in i % 32 == 0 ? 127 : Float(i % 64) * 0.5 - 16 })
    rows.append((0..<cols).map { i in Float(i % 5) - 2.5 })
    rows.append((0..<cols).map { i in i % 7 == 0 ? -3 : (i % 11 == 0 ? 3 : 0.25) })
    var hostile = Self.activations(cols: cols, tokens: 1, seed: 7)
    hostile[3] = .nan
    hostile[40] = .infinity
    hostile[300] = -.infinity
    for i in 64..<96 { hostile[i] = 0 }
    for i in 256..<512 {
      hostile[i] = i == 300 ? -.infinity : Float(bitPattern: UInt32(i % 3) * 7000)
    }
    rows.append(hostile)
    rows.append((0..<cols).map { i in i < 256 ? Float(bitPattern: UInt32(i % 2) * 70000) : .nan })
    for format in QuantizedMatrix.Format.allCases where format.blockSize > 1 {
      for (k, row) in rows.enumerated() {
        let bytes = availableISAs.map { isa in
          let act = row.withUnsafeBufferPointer {
            QuantizedActivations(format: format, $0.baseAddress!, tokens: 1, cols: cols, isa: isa)
          }
          // The bytes the layout uses (the padding to 64 is never read).
          let used =
            format.blockSize == 32
            ? cols + 12 * (cols / 32) : cols + 4 * (cols / 256) + 2 * (cols / 16)
          return Array(UnsafeRawBufferPointer(start: act.row(0), count: used))
        }
        for (isa, b) in zip(availableISAs, bytes) {
          let first = b.indices.first { b[$0] != bytes[0][$0] }
          #expect(first == nil, "\(format) row \(k) \(isa): byte \(first ?? 0) differs from scalar")
        }
      }
    }
  }

  // Oracle: Double-precision sums of FlareGGUF's decoding; tolerance 1e-6 of Σ|wᵢ·xᵢ|
  // (activations stay F32 for these types).
  @Test("F32, F16 and BF16 rows multiply F32 activations", arguments: [GGMLType.f32, .f16, .bf16])
  func floatRows(type: GGMLType) throws {
    guard let (cols, rows) = try Self.rows(.q4_1, count: 4) else { return }
    let format = try #require(QuantizedMatrix.Format(rawValue: Int32(type.id)))
    let converted = try rows.map { bytes -> [UInt8] in
      let values = try dequantized(.q4_1, bytes, count: cols)
      var out = [UInt8](repeating: 0, count: try #require(type.rowBytes(elements: cols)))
      try values.withUnsafeBufferPointer { v in
        try out.withUnsafeMutableBytes { try type.quantize(v, into: $0) }
      }
      return out
    }
    let owned = try OwnedMatrix(format, rows: converted, cols: cols)
    let x = Self.activations(cols: cols, tokens: 1, seed: 5)
    let act = x.withUnsafeBufferPointer { owned.matrix.quantize($0.baseAddress!, tokens: 1) }
    for r in 0..<converted.count {
      let w = try dequantized(type, converted[r], count: cols)
      let exact = zip(w, x).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
      let norm = zip(w, x).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
      for isa in availableISAs {
        let mine = Double(owned.matrix.dot(row: r, act, isa: isa))
        #expect(abs(mine - exact) <= 1e-6 * norm, "\(type) row \(r) \(isa)")
      }
    }
  }

  // Oracle: the checks of QuantizedMatrix.init (no kernel runs on bad sizes).
  @Test("rows that are not whole blocks, and too few bytes, are refused")
  func refusals() throws {
    let bytes = [UInt8](repeating: 0, count: 4096)
    try bytes.withUnsafeBytes { raw in
      #expect(throws: FlareError.self) {
        try QuantizedMatrix(format: .q4_0, rows: 2, cols: 48, bytes: raw, owner: nil)
      }
      #expect(throws: FlareError.self) {
        try QuantizedMatrix(format: .q4_K, rows: 1, cols: 576, bytes: raw, owner: nil)
      }
      #expect(throws: FlareError.self) {
        try QuantizedMatrix(format: .q8_0, rows: 200, cols: 64, bytes: raw, owner: nil)
      }
      #expect(throws: FlareError.self) {
        try QuantizedMatrix(format: .q8_0, rows: Int.max / 2, cols: 64, bytes: raw, owner: nil)
      }
      let fits = try QuantizedMatrix(format: .q8_0, rows: 60, cols: 64, bytes: raw, owner: nil)
      #expect(fits.rowBytes == 68)
    }
  }

  // Oracle: ggml's rules for the activation scale (amax/127; 0 for a zero block) and Flare's
  // for non-finite inputs (zero values instead of undefined conversions).
  @Test("zero, NaN and infinite activations quantize without traps")
  func hostileActivations() throws {
    for format in [QuantizedMatrix.Format.q4_0, .q4_K] {
      var x = [Float](repeating: 0, count: 512)
      x[3] = .nan
      x[300] = .infinity
      let act = x.withUnsafeBufferPointer {
        QuantizedActivations(format: format, $0.baseAddress!, tokens: 1, cols: 512)
      }
      let values = act.values(token: 0)
      #expect(values.count == 512)
      #expect(values[3] == 0)
      let zeros = [Float](repeating: 0, count: 512)
      let zero = zeros.withUnsafeBufferPointer {
        QuantizedActivations(format: format, $0.baseAddress!, tokens: 1, cols: 512)
      }
      #expect(zero.values(token: 0).allSatisfy { $0 == 0 })
      #expect(zero.scales(token: 0).allSatisfy { $0 == 0 })
    }
  }
}
