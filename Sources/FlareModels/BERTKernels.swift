#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

// Forward functions the encoders need beyond the shared ones, in the same style: plain loops
// over row-major F32 buffers sized by the caller.
extension Kernels {
  /// BERT's input embedding before its LayerNorm:
  /// `out[n] = word[tokens[n]] + position[positions[n]] + tokenType[types[n]]` for `N` rows of
  /// `C` values. The caller has checked every index against its table.
  public static func embeddingSum(
    out: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int>, positions: UnsafePointer<Int>,
    types: UnsafePointer<Int>, word: UnsafePointer<Float>, position: UnsafePointer<Float>,
    tokenType: UnsafePointer<Float>, rows n: Int, channels c: Int
  ) {
    for row in 0..<n {
      let o = out + row * c
      let w = word + tokens[row] * c
      let p = position + positions[row] * c
      let t = tokenType + types[row] * c
      // transformers adds in this order: (word + token type) + position.
      for i in 0..<c { o[i] = (w[i] + t[i]) + p[i] }
    }
  }

  /// `tanh`, in place over `count` values (BERT's pooler and RoBERTa's classification head).
  public static func tanh(_ x: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { x[i] = tanhf(x[i]) }
  }
}
