import CFlareOpenBLAS
import Synchronization

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
}

/// LAPACK through OpenBLAS.
public enum LAPACK {
  /// The thin SVD of a row-major `rows × cols` matrix: `M = U·diag(S)·Vt` with `U` `rows × p`,
  /// `Vt` `p × cols` (both row-major) and `S` descending, `p = min(rows, cols)`.
  /// - Returns: `nil` if LAPACK reports a failure (it did not converge).
  public static func svd(_ matrix: [Float], rows: Int, cols: Int) -> (
    u: [Float], s: [Float], vt: [Float]
  )? {
    precondition(matrix.count == rows * cols && rows > 0 && cols > 0, "svd: bad shape")
    // Row-major M is column-major Mᵀ (cols × rows). Mᵀ = Ux·S·Vxᵀ gives M = Vx·S·Uxᵀ.
    var a = matrix
    var m = Int32(cols)
    var n = Int32(rows)
    let p = min(rows, cols)
    var s = [Float](repeating: 0, count: p)
    var ux = [Float](repeating: 0, count: cols * p)  // cols × p, column-major
    var vxt = [Float](repeating: 0, count: p * rows)  // p × rows, column-major
    var lda = m
    var ldu = m
    var ldvt = Int32(p)
    var iwork = [Int32](repeating: 0, count: 8 * p)
    var info: Int32 = 0
    var jobz = CChar(UInt8(ascii: "S"))
    var query: Float = 0
    var lwork: Int32 = -1
    sgesdd_(&jobz, &m, &n, &a, &lda, &s, &ux, &ldu, &vxt, &ldvt, &query, &lwork, &iwork, &info, 1)
    guard info == 0 else { return nil }
    lwork = Int32(query)
    var work = [Float](repeating: 0, count: max(1, Int(lwork)))
    sgesdd_(&jobz, &m, &n, &a, &lda, &s, &ux, &ldu, &vxt, &ldvt, &work, &lwork, &iwork, &info, 1)
    guard info == 0 else { return nil }
    // U = Vx: U[i, j] = Vxᵀ[j, i] = vxt[j + i·p]. Vt = Uxᵀ: Vt[j, c] = Ux[c, j] = ux[c + j·cols].
    var u = [Float](repeating: 0, count: rows * p)
    for i in 0..<rows {
      for j in 0..<p { u[i * p + j] = vxt[j + i * p] }
    }
    var vt = [Float](repeating: 0, count: p * cols)
    for j in 0..<p {
      for c in 0..<cols { vt[j * cols + c] = ux[c + j * cols] }
    }
    return (u, s, vt)
  }
}

extension BLAS {
  /// `y = alpha · op(A)·x + beta · y` for a row-major `m × n` matrix `A` with row stride `lda`;
  /// `op(A)` is `A` (`y` has `m` values) or `Aᵀ` (`y` has `n`).
  public static func sgemv(
    transA: Bool, m: Int, n: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
    x: UnsafePointer<Float>, beta: Float, y: UnsafeMutablePointer<Float>
  ) {
    precondition(
      [m, n, lda].allSatisfy { $0 >= 0 && $0 <= Int(Int32.max) }, "sgemv: sizes exceed Int32")
    cblas_sgemv(
      CblasRowMajor, transA ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), alpha, a,
      Int32(max(lda, 1)), x, 1, beta, y, 1)
  }
}

extension BLAS {
  /// Open single-threaded sections and the thread count to restore when the last one ends.
  private static let sections = Mutex<(depth: Int, restore: Int)>((0, 1))

  /// Sets how many threads OpenBLAS uses for one call. Inside a single-threaded section (of
  /// any thread) the count takes effect when the last section ends.
  public static func setThreads(_ n: Int) {
    sections.withLock { state in
      if state.depth > 0 {
        state.restore = max(1, n)
      } else {
        openblas_set_num_threads(Int32(max(1, n)))
      }
    }
  }

  /// How many threads OpenBLAS uses for one call outside single-threaded sections.
  public static var threads: Int {
    sections.withLock { state in
      state.depth > 0 ? state.restore : Int(openblas_get_num_threads())
    }
  }

  /// Starts a section in which OpenBLAS runs single-threaded (code that splits its work over
  /// threads itself, so that results do not depend on OpenBLAS's split). Sections nest and
  /// overlap across threads: OpenBLAS stays single-threaded until every one has ended (a
  /// save-and-restore per caller would let one caller's restore switch threads back on under
  /// another's work). End each with ``endSingleThreaded()``.
  public static func beginSingleThreaded() {
    sections.withLock { state in
      if state.depth == 0 {
        state.restore = Int(openblas_get_num_threads())
        openblas_set_num_threads(1)
      }
      state.depth += 1
    }
  }

  /// Ends a section begun with ``beginSingleThreaded()``; the last one restores the count.
  public static func endSingleThreaded() {
    sections.withLock { state in
      precondition(state.depth > 0, "endSingleThreaded without beginSingleThreaded")
      state.depth -= 1
      if state.depth == 0 { openblas_set_num_threads(Int32(state.restore)) }
    }
  }
}
