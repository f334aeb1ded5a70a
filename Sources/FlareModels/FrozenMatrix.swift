import FlareTensor

/// A frozen weight matrix `[out, in]` as the training and evaluation passes use it: F32 values,
/// or the quantized rows of a GGUF kept as stored (QLoRA: no F32 copy of `W`).
///
/// Quantized rows are dequantized a tile at a time (``tileRows`` rows, FlareGGUF's exact
/// dequantization) into a scratch buffer that BLAS multiplies, so a pass computes the same F32
/// arithmetic as on the dequantized model, in the memory of one tile per thread. Passes run
/// BLAS single-threaded and the tiles in a fixed order, so results do not depend on the
/// thread count.
enum FrozenMatrix {
  case f32(UnsafePointer<Float>)
  case quantized(QuantizedMatrix)

  /// Rows of `W` dequantized at a time.
  static let tileRows = 64

  /// `out[N×out] = inp[N×in]·Wᵀ + bias`.
  func forward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    rows n: Int, inFeatures c: Int, outFeatures oc: Int
  ) {
    switch self {
    case .f32(let weight):
      Kernels.matmul(
        out: out, inp: inp, weight: weight, bias: bias, rows: n, inFeatures: c, outFeatures: oc)
    case .quantized(let matrix):
      guard n > 0 else { return }
      Self.tiles(matrix) { first, count, tile in
        BLAS.sgemm(
          transA: false, transB: true, m: n, n: count, k: c, alpha: 1, a: inp, lda: c, b: tile,
          ldb: c, beta: 0, c: out + first, ldc: oc)
      }
      if let bias {
        for row in 0..<n {
          for j in 0..<oc { out[row * oc + j] += bias[j] }
        }
      }
    }
  }

  /// `dinp[N×in] (+)= dout[N×out]·W` (added with `accumulate`, else overwritten).
  func backwardInput(
    dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, rows n: Int,
    inFeatures c: Int, outFeatures oc: Int, accumulate: Bool
  ) {
    switch self {
    case .f32(let weight):
      Kernels.matmulBackwardInput(
        dinp: dinp, dout: dout, weight: weight, rows: n, inFeatures: c, outFeatures: oc,
        accumulate: accumulate)
    case .quantized(let matrix):
      guard n > 0, c > 0 else { return }
      if !accumulate { dinp.update(repeating: 0, count: n * c) }
      Self.tiles(matrix) { first, count, tile in
        BLAS.sgemm(
          transA: false, transB: false, m: n, n: c, k: count, alpha: 1, a: dout + first, lda: oc,
          b: tile, ldb: c, beta: 1, c: dinp, ldc: c)
      }
    }
  }

  /// Calls `body(first row, rows, F32 tile)` for consecutive tiles of `matrix`'s rows, in order.
  private static func tiles(
    _ matrix: QuantizedMatrix, _ body: (Int, Int, UnsafePointer<Float>) -> Void
  ) {
    let cols = matrix.cols
    let tile = UnsafeMutablePointer<Float>.allocate(capacity: tileRows * cols)
    defer { tile.deallocate() }
    var first = 0
    while first < matrix.rows {
      let count = min(tileRows, matrix.rows - first)
      for r in 0..<count { matrix.dequantize(row: first + r, into: tile + r * cols) }
      body(first, count, tile)
      first += count
    }
  }
}

extension Weight {
  /// The matrix as the training passes use it.
  var frozen: FrozenMatrix {
    if let quantized { return .quantized(quantized) }
    return .f32(pointer)
  }
}
