import CFlareOpenBLAS

/// Thin, checked wrappers over OpenBLAS's CBLAS interface (row-major).
///
/// OpenBLAS on Debian uses 32-bit integers for sizes (`blasint` is `int`), so every size is
/// checked to fit `Int32`.
public enum BLAS {
  /// `C = alpha · A·B + beta · C` for row-major `A` (m×k), `B` (k×n), `C` (m×n).
  public static func sgemm(
    m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafeBufferPointer<Float>,
    b: UnsafeBufferPointer<Float>, beta: Float = 0, c: UnsafeMutableBufferPointer<Float>
  ) {
    precondition(
      a.count >= m * k && b.count >= k * n && c.count >= m * n, "sgemm: buffers too small")
    precondition(m <= Int32.max && n <= Int32.max && k <= Int32.max, "sgemm: sizes exceed Int32")
    cblas_sgemm(
      CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha, a.baseAddress,
      Int32(max(k, 1)), b.baseAddress, Int32(max(n, 1)), beta, c.baseAddress, Int32(max(n, 1)))
  }

  /// The dot product of `x` and `y` (equal lengths).
  public static func sdot(_ x: UnsafeBufferPointer<Float>, _ y: UnsafeBufferPointer<Float>) -> Float
  {
    precondition(x.count == y.count && x.count <= Int32.max, "sdot: lengths differ or exceed Int32")
    return cblas_sdot(Int32(x.count), x.baseAddress, 1, y.baseAddress, 1)
  }

  /// `y += alpha · x`.
  public static func saxpy(
    _ alpha: Float, _ x: UnsafeBufferPointer<Float>, _ y: UnsafeMutableBufferPointer<Float>
  ) {
    precondition(
      x.count == y.count && x.count <= Int32.max, "saxpy: lengths differ or exceed Int32")
    cblas_saxpy(Int32(x.count), alpha, x.baseAddress, 1, y.baseAddress, 1)
  }
}

extension BLAS {
  /// `C = alpha · op(A)·op(B) + beta · C`, row-major, where `op(X)` is `X` or `Xᵀ`; `lda` and
  /// `ldb` are the row strides of A and B as stored.
  public static func sgemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>,
    lda: Int,
    b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    precondition(
      [m, n, k, lda, ldb, ldc].allSatisfy { $0 >= 0 && $0 <= Int(Int32.max) },
      "sgemm: sizes exceed Int32")
    cblas_sgemm(
      CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
      Int32(m), Int32(n),
      Int32(k), alpha, a, Int32(max(lda, 1)), b, Int32(max(ldb, 1)), beta, c, Int32(max(ldc, 1)))
  }

  /// Makes OpenBLAS single-threaded, so each call's summation order is fixed; callers split work
  /// into fixed blocks themselves, which keeps results bit-identical for any thread count.
  public static func useSingleThread() {
    openblas_set_num_threads(1)
  }
}
