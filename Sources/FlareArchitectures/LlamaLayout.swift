/// llama.cpp's Q/K row permutation for Llama checkpoints (``ModelFamily/ggufPermutesQueryKey``):
/// within each head, HF pairs dimension `i` with `i + d/2` for RoPE, llama.cpp's converter
/// reorders the rows so that RoPE rotates adjacent pairs.
public enum LlamaLayout {
  /// The GGUF row that HF row `row` lands on: within each head, HF pairs dimension `i` with
  /// `i + d/2` (rotate-half), llama.cpp pairs `2i` with `2i + 1`, so the rows of a head viewed as
  /// `(2, d/2)` are transposed to `(d/2, 2)`.
  @inlinable
  public static func ggufRow(hf row: Int, headDim: Int) -> Int {
    let half = headDim / 2
    let head = row / headDim
    let within = row % headDim
    let j = within / half  // 0: first half, 1: second half
    let i = within % half
    return head * headDim + i * 2 + j
  }

  /// `values` (row-major, `rows` rows) with its rows reordered from HF to GGUF RoPE order
  /// (`toGGUF`) or back.
  /// - Precondition: as ``permuteRows(_:into:rows:rowBytes:heads:toGGUF:)``.
  public static func permuted(_ values: [Float], rows: Int, heads: Int, toGGUF: Bool) -> [Float] {
    var out = values
    let rowBytes = values.count / max(rows, 1) * MemoryLayout<Float>.size
    values.withUnsafeBytes { source in
      out.withUnsafeMutableBytes { target in
        permuteRows(
          source, into: target, rows: rows, rowBytes: rowBytes, heads: heads, toGGUF: toGGUF)
      }
    }
    return out
  }

  /// Reorders the rows of a row-major `rows × rowBytes` tensor from HF to GGUF order
  /// (`toGGUF`) or back, for `heads` heads of `rows / heads` rows each.
  /// - Precondition: `rows` is a multiple of `heads` and the head dimension is even.
  public static func permuteRows(
    _ source: UnsafeRawBufferPointer, into target: UnsafeMutableRawBufferPointer, rows: Int,
    rowBytes: Int,
    heads: Int, toGGUF: Bool
  ) {
    precondition(
      heads > 0 && rows % heads == 0 && (rows / heads) % 2 == 0, "rows do not split into heads")
    precondition(source.count >= rows * rowBytes && target.count >= rows * rowBytes)
    let headDim = rows / heads
    guard let from = source.baseAddress, let to = target.baseAddress else { return }
    for hfRow in 0..<rows {
      let ggufRow = ggufRow(hf: hfRow, headDim: headDim)
      let (src, dst) = toGGUF ? (hfRow, ggufRow) : (ggufRow, hfRow)
      (to + dst * rowBytes).copyMemory(from: from + src * rowBytes, byteCount: rowBytes)
    }
  }
}
