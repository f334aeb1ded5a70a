/// How Hugging Face Llama checkpoints map onto llama.cpp's GGUF layout.
public enum LlamaLayout {
  private static let blockParts: [(hf: String, gguf: String)] = [
    ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
  ]
  private static let globalParts: [(hf: String, gguf: String)] = [
    ("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output"),
  ]

  /// The GGUF name of an HF tensor name (`model.layers.3.self_attn.q_proj.weight` →
  /// `blk.3.attn_q.weight`), or `nil` if it is not part of the llama layout.
  public static func ggufName(hf name: String) -> String? {
    let (stem, suffix) = splitSuffix(name)
    guard let suffix else { return nil }
    if let part = globalParts.first(where: { $0.hf == stem }) { return "\(part.gguf).\(suffix)" }
    let prefix = "model.layers."
    guard stem.hasPrefix(prefix) else { return nil }
    let rest = stem.dropFirst(prefix.count)
    guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0 else {
      return nil
    }
    let module = String(rest[rest.index(after: dot)...])
    guard let part = blockParts.first(where: { $0.hf == module }) else { return nil }
    return "blk.\(layer).\(part.gguf).\(suffix)"
  }

  /// The HF name of a GGUF tensor name, or `nil`.
  public static func hfName(gguf name: String) -> String? {
    let (stem, suffix) = splitSuffix(name)
    guard let suffix else { return nil }
    if let part = globalParts.first(where: { $0.gguf == stem }) { return "\(part.hf).\(suffix)" }
    let prefix = "blk."
    guard stem.hasPrefix(prefix) else { return nil }
    let rest = stem.dropFirst(prefix.count)
    guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0 else {
      return nil
    }
    let module = String(rest[rest.index(after: dot)...])
    guard let part = blockParts.first(where: { $0.gguf == module }) else { return nil }
    return "model.layers.\(layer).\(part.hf).\(suffix)"
  }

  private static func splitSuffix(_ name: String) -> (String, String?) {
    for suffix in ["weight", "bias"] where name.hasSuffix(".\(suffix)") {
      return (String(name.dropLast(suffix.count + 1)), suffix)
    }
    return (name, nil)
  }

  /// Whether a GGUF tensor is a query or key projection (weight or bias), whose rows the llama
  /// layout permutes for RoPE, and with how many heads.
  public static func ropeHeads(gguf name: String, heads: Int, kvHeads: Int) -> Int? {
    if name.hasSuffix(".attn_q.weight") || name.hasSuffix(".attn_q.bias") { return heads }
    if name.hasSuffix(".attn_k.weight") || name.hasSuffix(".attn_k.bias") { return kvHeads }
    return nil
  }

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
