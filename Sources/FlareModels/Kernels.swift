import FlareTensor

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The forward functions every model is built from, in the style of llm.c: plain functions over
/// row-major F32 buffers (`N` rows of `C` values), each writing its output and, where a backward
/// pass will need it, the statistics it computed (`rstd`, `mean`, attention probabilities), so the
/// training code can add the matching backward functions without recomputing anything.
///
/// Callers size every buffer; the functions do no allocation except where noted.
public enum Kernels {
  /// `out[N×OC] = inp[N×C] · Wᵀ (+ bias)`, `W` row-major `[OC, C]` (PyTorch's `nn.Linear`
  /// layout). One row uses `sgemv`, more rows `sgemm`.
  public static func matmul(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>?, rows n: Int, inFeatures c: Int, outFeatures oc: Int
  ) {
    if n == 1 {
      BLAS.sgemv(
        transA: false, m: oc, n: c, alpha: 1, a: weight, lda: c, x: inp, beta: 0, y: out)
    } else {
      BLAS.sgemm(
        transA: false, transB: true, m: n, n: oc, k: c, alpha: 1, a: inp, lda: c, b: weight,
        ldb: c, beta: 0, c: out, ldc: oc)
    }
    if let bias {
      for row in 0..<n {
        let o = out + row * oc
        for j in 0..<oc { o[j] += bias[j] }
      }
    }
  }

  /// RMSNorm as transformers' `LlamaRMSNorm` computes it in F32:
  /// `out = weight · x / sqrt(mean(x²) + eps)`; `rstd[N]` receives `1/sqrt(mean(x²) + eps)`.
  public static func rmsnorm(
    out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>?, inp: UnsafePointer<Float>,
    weight: UnsafePointer<Float>, rows n: Int, channels c: Int, eps: Float
  ) {
    for row in 0..<n {
      let x = inp + row * c
      var lanes = SIMD8<Float>()
      var i = 0
      while i + 8 <= c {
        let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
        lanes += v * v
        i += 8
      }
      var sum = Double(lanes.sum())
      while i < c {
        sum += Double(x[i]) * Double(x[i])
        i += 1
      }
      let scale = Float(1 / (sum / Double(c) + Double(eps)).squareRoot())
      rstd?[row] = scale
      let o = out + row * c
      for i in 0..<c { o[i] = weight[i] * (x[i] * scale) }
    }
  }

  /// LayerNorm (biased variance, as PyTorch): `out = (x − mean)·rstd·weight + bias`;
  /// `mean[N]` and `rstd[N]` receive the row statistics.
  public static func layernorm(
    out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>?,
    rstd: UnsafeMutablePointer<Float>?, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>, rows n: Int, channels c: Int, eps: Float
  ) {
    for row in 0..<n {
      let x = inp + row * c
      var sum: Double = 0
      for i in 0..<c { sum += Double(x[i]) }
      let m = sum / Double(c)
      var variance: Double = 0
      for i in 0..<c {
        let d = Double(x[i]) - m
        variance += d * d
      }
      let s = 1 / (variance / Double(c) + Double(eps)).squareRoot()
      mean?[row] = Float(m)
      rstd?[row] = Float(s)
      let o = out + row * c
      for i in 0..<c { o[i] = Float((Double(x[i]) - m) * s) * weight[i] + bias[i] }
    }
  }

  /// How rotary embeddings pair the dimensions of a head.
  public enum RopeStyle: Sendable {
    /// transformers' `rotate_half`: dimension `i` pairs with `i + d/2` (HF checkpoints).
    case halves
    /// Adjacent pairs `(2i, 2i+1)`: llama.cpp's convention, which GGUF files' permuted Q/K
    /// rows are laid out for.
    case pairs
  }

  /// The cosine and sine tables for `positions`: `[P × d/2]` each, angle `p · θ^(−2i/d)`,
  /// computed in double precision.
  public static func ropeTables(positions: [Int], headDim d: Int, theta: Float) -> (
    cos: [Float], sin: [Float]
  ) {
    let half = d / 2
    var cosines = [Float](repeating: 0, count: positions.count * half)
    var sines = cosines
    for (row, position) in positions.enumerated() {
      for i in 0..<half {
        // transformers computes inv_freq in F32; rounding it first keeps the angles identical.
        let inverse = Float(1 / pow(Double(theta), Double(2 * i) / Double(d)))
        let angle = Double(position) * Double(inverse)
        cosines[row * half + i] = Float(Glibc.cos(angle))
        sines[row * half + i] = Float(Glibc.sin(angle))
      }
    }
    return (cosines, sines)
  }

  /// Rotates every head of `x` (`N` rows of `heads × d` values, row stride `stride`) in place by
  /// row `r`'s angles (`cos`/`sin` rows from ``ropeTables(positions:headDim:theta:)``).
  public static func rope(
    _ x: UnsafeMutablePointer<Float>, rows n: Int, stride: Int, heads: Int, headDim d: Int,
    cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, style: RopeStyle
  ) {
    let half = d / 2
    for row in 0..<n {
      let c = cos + row * half
      let s = sin + row * half
      for head in 0..<heads {
        let v = x + row * stride + head * d
        for i in 0..<half {
          let (a, b) = style == .halves ? (i, i + half) : (2 * i, 2 * i + 1)
          let x0 = v[a]
          let x1 = v[b]
          v[a] = x0 * c[i] - x1 * s[i]
          v[b] = x1 * c[i] + x0 * s[i]
        }
      }
    }
  }

  /// Softmax of each of `N` rows of `C` values, in place (max subtracted first).
  public static func softmax(_ x: UnsafeMutablePointer<Float>, rows n: Int, channels c: Int) {
    for row in 0..<n {
      let v = x + row * c
      var largest = -Float.infinity
      for i in 0..<c where v[i] > largest { largest = v[i] }
      guard largest > -Float.infinity else {
        for i in 0..<c { v[i] = 0 }
        continue
      }
      var sum: Float = 0
      var i = 0
      var lanes = SIMD8<Float>()
      let shift = SIMD8<Float>(repeating: largest)
      while i + 8 <= c {
        let e = exp8(UnsafeRawPointer(v + i).loadUnaligned(as: SIMD8<Float>.self) - shift)
        UnsafeMutableRawPointer(v + i).storeBytes(of: e, as: SIMD8<Float>.self)
        lanes += e
        i += 8
      }
      sum = lanes.sum()
      while i < c {
        let e = expf(v[i] - largest)
        v[i] = e
        sum += e
        i += 1
      }
      let inverse = 1 / sum
      for i in 0..<c { v[i] *= inverse }
    }
  }

  /// Scaled dot-product attention of one sequence and one query head against its key/value
  /// head: `out[T×d] = softmax(Q·Kᵀ/√d + mask)·V`, where `Q` is `T` rows (stride `qStride`),
  /// `K` and `V` are `S` rows (stride `kvStride`), and `allowed(t, s)` says whether query `t`
  /// may see key `s`. `probs[T×S]` receives the attention probabilities (a backward pass needs
  /// them). Masked-out keys get probability 0; a query that sees no key gets zeros.
  ///
  /// `dropout`, when given, holds `T×S` keep multipliers (``dropoutMask(_:count:probability:seed:offset:)``)
  /// applied to the probabilities before they mix `V`, as BERT's attention dropout in training;
  /// `probs` still receives the probabilities before dropout. It costs a `T×S` allocation.
  public static func attentionHead(
    out: UnsafeMutablePointer<Float>, outStride: Int, q: UnsafePointer<Float>, qStride: Int,
    k: UnsafePointer<Float>, v: UnsafePointer<Float>, kvStride: Int, queries t: Int, keys s: Int,
    headDim d: Int, probs: UnsafeMutablePointer<Float>, dropout: UnsafePointer<Float>? = nil,
    allowed: (Int, Int) -> Bool
  ) {
    attention(
      out: out, outStride: outStride, q: q, qStride: qStride, k: k, v: v, kvStride: kvStride,
      queries: t, keys: s, headDim: d, probs: probs, dropout: dropout
    ) { scores in
      for query in 0..<t {
        let row = scores + query * s
        for key in 0..<s where !allowed(query, key) { row[key] = -Float.infinity }
      }
    }
  }

  /// Attention as ``attentionHead(out:outStride:q:qStride:k:v:kvStride:queries:keys:headDim:probs:dropout:allowed:)``
  /// with the mask every decoder uses: query `t` sees keys `0...causalOffset + t`, except the
  /// slots listed in `padding`.
  public static func causalAttentionHead(
    out: UnsafeMutablePointer<Float>, outStride: Int, q: UnsafePointer<Float>, qStride: Int,
    k: UnsafePointer<Float>, v: UnsafePointer<Float>, kvStride: Int, queries t: Int, keys s: Int,
    headDim d: Int, probs: UnsafeMutablePointer<Float>, causalOffset: Int, padding: [Int],
    scale: Float? = nil, window: Int? = nil, softcap: Float? = nil, fixedOrder: Bool = false
  ) {
    // The keys a query can see (the mask below hides the rest).
    let visibleKeys: (Int) -> Range<Int> = { query in
      let visible = min(s, causalOffset + query + 1)
      return max(0, window.map { visible - $0 } ?? 0)..<visible
    }
    attention(
      out: out, outStride: outStride, q: q, qStride: qStride, k: k, v: v, kvStride: kvStride,
      queries: t, keys: s, headDim: d, probs: probs, scale: scale, softcap: softcap,
      fixedOrder: fixedOrder ? visibleKeys : nil
    ) { scores in
      for query in 0..<t {
        let row = scores + query * s
        let visible = min(s, causalOffset + query + 1)
        if visible < s { (row + visible).update(repeating: -Float.infinity, count: s - visible) }
        for key in padding where key < visible { row[key] = -Float.infinity }
        // A sliding window: only the last `window` slots, the query's own included.
        if let window, visible > window {
          row.update(repeating: -Float.infinity, count: visible - window)
        }
      }
    }
  }

  /// Scores `Q·Kᵀ·scale` (`1/√d` unless given) into `probs`, soft-capped as
  /// `cap·tanh(x/cap)` when `softcap` is given (Gemma 2), lets `mask` set −∞ where a key is
  /// hidden, applies softmax per row (and the dropout multipliers, if any) and mixes `V` into
  /// `out`. With `fixedOrder` the two products are Flare's own (``fixedOrderScores`` and
  /// ``fixedOrderMix``), whose sums run in one order on every CPU, instead of BLAS's, whose
  /// kernels (and so the order of their sums) depend on the CPU.
  private static func attention(
    out: UnsafeMutablePointer<Float>, outStride: Int, q: UnsafePointer<Float>, qStride: Int,
    k: UnsafePointer<Float>, v: UnsafePointer<Float>, kvStride: Int, queries t: Int, keys s: Int,
    headDim d: Int, probs: UnsafeMutablePointer<Float>, dropout: UnsafePointer<Float>? = nil,
    scale: Float? = nil, softcap: Float? = nil, fixedOrder: ((Int) -> Range<Int>)? = nil,
    mask: (UnsafeMutablePointer<Float>) -> Void
  ) {
    let scale = scale ?? 1 / Float(d).squareRoot()
    let visibleKeys = dropout == nil ? fixedOrder : nil
    if let visibleKeys {
      fixedOrderScores(
        probs, q: q, qStride: qStride, k: k, kvStride: kvStride, queries: t, keys: s, headDim: d,
        scale: scale, keys: visibleKeys)
    } else {
      BLAS.sgemm(
        transA: false, transB: true, m: t, n: s, k: d, alpha: scale, a: q, lda: qStride, b: k,
        ldb: kvStride, beta: 0, c: probs, ldc: s)
    }
    if let cap = softcap { Kernels.softcap(probs, count: t * s, cap: cap) }
    mask(probs)
    softmax(probs, rows: t, channels: s)
    if visibleKeys != nil {
      fixedOrderMix(
        out, outStride: outStride, probs: probs, v: v, kvStride: kvStride, queries: t, keys: s,
        headDim: d)
      return
    }
    var mixed = UnsafePointer(probs)
    var dropped: UnsafeMutablePointer<Float>?
    if let dropout {
      let buffer = UnsafeMutablePointer<Float>.allocate(capacity: max(t * s, 1))
      for i in 0..<(t * s) { buffer[i] = probs[i] * dropout[i] }
      mixed = UnsafePointer(buffer)
      dropped = buffer
    }
    defer { dropped?.deallocate() }
    BLAS.sgemm(
      transA: false, transB: false, m: t, n: d, k: s, alpha: 1, a: mixed, lda: s, b: v,
      ldb: kvStride, beta: 0, c: out, ldc: outStride)
  }

  /// `scores[i·s + j] = scale · (q_i · k_j)` for the keys `keys(i)` of query `i` (the others,
  /// which the mask hides, are set to 0): each dot product in eight lanes over the head
  /// dimension (a scalar tail), the lanes summed as ((0+1)+(2+3))+((4+5)+(6+7)), then scaled;
  /// no fused multiply-adds, so the bits are the same on every CPU. Four keys at a time, each
  /// with its own lanes (the order of each sum is that of one key alone).
  static func fixedOrderScores(
    _ scores: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, qStride: Int,
    k: UnsafePointer<Float>, kvStride: Int, queries t: Int, keys s: Int, headDim d: Int,
    scale: Float, keys visible: (Int) -> Range<Int>
  ) {
    let vectors = d / 8
    @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
      UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) func total(_ l: SIMD8<Float>) -> Float {
      ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
    }
    for i in 0..<t {
      let qi = q + i * qStride
      let row = scores + i * s
      let range = visible(i).clamped(to: 0..<s)
      row.update(repeating: 0, count: s)
      var j = range.lowerBound
      while j + 4 <= range.upperBound {
        let (k0, k1, k2, k3) = (
          k + j * kvStride, k + (j + 1) * kvStride, k + (j + 2) * kvStride,
          k + (j + 3) * kvStride
        )
        var (l0, l1, l2, l3) = (
          SIMD8<Float>(repeating: 0), SIMD8<Float>(repeating: 0), SIMD8<Float>(repeating: 0),
          SIMD8<Float>(repeating: 0)
        )
        for c in 0..<vectors {
          let a = load(qi + 8 * c)
          l0 = l0 + a * load(k0 + 8 * c)
          l1 = l1 + a * load(k1 + 8 * c)
          l2 = l2 + a * load(k2 + 8 * c)
          l3 = l3 + a * load(k3 + 8 * c)
        }
        var dots = (total(l0), total(l1), total(l2), total(l3))
        for c in (8 * vectors)..<d {
          dots.0 = dots.0 + qi[c] * k0[c]
          dots.1 = dots.1 + qi[c] * k1[c]
          dots.2 = dots.2 + qi[c] * k2[c]
          dots.3 = dots.3 + qi[c] * k3[c]
        }
        row[j] = scale * dots.0
        row[j + 1] = scale * dots.1
        row[j + 2] = scale * dots.2
        row[j + 3] = scale * dots.3
        j += 4
      }
      while j < range.upperBound {
        let kj = k + j * kvStride
        var lanes = SIMD8<Float>(repeating: 0)
        for c in 0..<vectors { lanes = lanes + load(qi + 8 * c) * load(kj + 8 * c) }
        var dot = total(lanes)
        for c in (8 * vectors)..<d { dot = dot + qi[c] * kj[c] }
        row[j] = scale * dot
        j += 1
      }
    }
  }

  /// `out_i = Σ_j probs[i·s + j] · v_j`, each output summed over the keys in order from 0
  /// (keys of probability 0, the masked ones, add nothing and are skipped); the same bits on
  /// every CPU. Eight columns at a time, kept in a register over the keys.
  static func fixedOrderMix(
    _ out: UnsafeMutablePointer<Float>, outStride: Int, probs: UnsafePointer<Float>,
    v: UnsafePointer<Float>, kvStride: Int, queries t: Int, keys s: Int, headDim d: Int
  ) {
    let vectors = d / 8
    for i in 0..<t {
      let row = probs + i * s
      let oi = out + i * outStride
      var first = 0
      var last = s
      while first < last && row[first] == 0 { first += 1 }
      while last > first && row[last - 1] == 0 { last -= 1 }
      for c in 0..<vectors {
        var sum = SIMD8<Float>(repeating: 0)
        for j in first..<last where row[j] != 0 {
          let column = UnsafeRawPointer(v + j * kvStride + 8 * c)
          sum = sum + SIMD8<Float>(repeating: row[j]) * column.loadUnaligned(as: SIMD8<Float>.self)
        }
        UnsafeMutableRawPointer(oi + 8 * c).storeBytes(of: sum, as: SIMD8<Float>.self)
      }
      for c in (8 * vectors)..<d {
        var sum: Float = 0
        for j in first..<last where row[j] != 0 { sum = sum + row[j] * v[j * kvStride + c] }
        oi[c] = sum
      }
    }
  }

  /// `e^x` for 8 lanes: Cody–Waite range reduction to `|r| ≤ ln2/2` and a degree-7 Taylor
  /// polynomial (checked against `expf` to a few ulp by the tests). Above 88.3 `x` is clamped
  /// (a large finite result); below −87.3 the result is 0.
  @inline(__always)
  static func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
    var v = x
    let underflow = v .< -87.3
    v.replace(with: SIMD8(repeating: -87.3), where: underflow)
    v.replace(with: SIMD8(repeating: 88.3), where: v .> 88.3)
    // Adding 1.5·2²³ rounds to the nearest integer and leaves it in the low mantissa bits.
    let magic = SIMD8<Float>(repeating: 12_582_912)
    let shifted = v * 1.442_695_04 + magic
    let n = shifted - magic
    let r = v - n * 0.693_145_75 - n * 1.428_606_8e-6
    var p = SIMD8<Float>(repeating: 1.0 / 5040)
    p = p * r + 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let shiftedBits = unsafeBitCast(shifted, to: SIMD8<UInt32>.self)
    let magicBits = unsafeBitCast(magic, to: SIMD8<UInt32>.self)
    let exponent = (shiftedBits &- magicBits &+ 127) &<< 23
    // Below the clamp the result is exactly 0, as expf gives for −∞ (masked attention scores):
    // tiny non-zero weights would become subnormal probabilities, which make matrix products
    // crawl.
    return (p * unsafeBitCast(exponent, to: SIMD8<Float>.self)).replacing(with: 0, where: underflow)
  }

  /// Soft-capping in place (Gemma 2's attention scores and logits): `x = cap·tanh(x/cap)`.
  public static func softcap(_ values: UnsafeMutablePointer<Float>, count: Int, cap: Float) {
    for i in 0..<count { values[i] = cap * tanhf(values[i] / cap) }
  }

  /// GeGLU: `out = gelu_tanh(gate) · up`, elementwise over `count` values, with PyTorch's tanh
  /// approximation `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`; or, with `ggmlF16`, as ggml
  /// computes it on the CPU (GGML_GELU_FP16): the gate rounded to F16, its GELU in ggml's form
  /// `0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))` rounded to F16 as ggml's table holds it, a
  /// gate ≤ −10 giving 0 and one ≥ 10 itself; times `up` in F32 either way.
  public static func geglu(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
    count: Int, ggmlF16: Bool = false
  ) {
    let beta = Float((2 / Double.pi).squareRoot())
    let kappa: Float = 0.044715
    for i in 0..<count {
      let x = gate[i]
      let g: Float
      if !ggmlF16 {
        g = 0.5 * x * (1 + tanhf(beta * (x + kappa * x * x * x)))
      } else if x <= -10 {
        g = 0
      } else if x >= 10 {
        g = x
      } else {
        let h = Float(Float16(x))
        g = Float(Float16(0.5 * h * (1 + tanhf(beta * h * (1 + kappa * h * h)))))
      }
      out[i] = g * up[i]
    }
  }

  /// SwiGLU: `out = silu(gate) · up = gate / (1 + e^−gate) · up`, elementwise over `count`
  /// values (8 lanes at a time).
  public static func swiglu(
    out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
    count: Int
  ) {
    var i = 0
    while i + 8 <= count {
      let g = UnsafeRawPointer(gate + i).loadUnaligned(as: SIMD8<Float>.self)
      let u = UnsafeRawPointer(up + i).loadUnaligned(as: SIMD8<Float>.self)
      let value = g / (1 + exp8(-g)) * u
      UnsafeMutableRawPointer(out + i).storeBytes(of: value, as: SIMD8<Float>.self)
      i += 8
    }
    while i < count {
      let g = gate[i]
      out[i] = g / (1 + expf(-g)) * up[i]
      i += 1
    }
  }

  /// GELU with the exact error function (PyTorch's default `gelu`), in place.
  public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
    var i = 0
    while i + 8 <= count {
      let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
      UnsafeMutableRawPointer(x + i).storeBytes(of: v * normal8(v).cdf, as: SIMD8<Float>.self)
      i += 8
    }
    while i < count {
      let v = x[i]
      x[i] = 0.5 * v * (1 + erff(v * 0.707_106_77))
      i += 1
    }
  }

  /// The standard normal CDF `Φ(x) = ½·erfc(−x/√2)` and density `φ(x) = e^(−x²/2)/√(2π)` of
  /// 8 lanes. `erfc` is the Chebyshev fit of Numerical Recipes (§6.2, fractional error below
  /// 1.2e-7 for every argument) on `z = |x|/√2`, with ``exp8(_:)``: `Φ = ½·erfc(z)` for negative
  /// `x` and `1 − ½·erfc(z)` otherwise, so neither side loses digits to cancellation; the
  /// Gaussian factor comes from `x²` and its rounding error (an FMA), not from the rounded `z`,
  /// since in the tails the exponent is large and its rounding would show. Measured in
  /// `GELUTests`: GELU within 4e-7 relative of double precision, its derivative within 5e-7.
  @inline(__always)
  static func normal8(_ x: SIMD8<Float>) -> (cdf: SIMD8<Float>, density: SIMD8<Float>) {
    let z = x.replacing(with: -x, where: x .< 0) * 0.707_106_77
    let t = 1 / (1 + 0.5 * z)
    var p = SIMD8<Float>(repeating: 0.170_872_77)
    p = p * t - 0.822_152_23
    p = p * t + 1.488_515_87
    p = p * t - 1.135_203_98
    p = p * t + 0.278_868_07
    p = p * t - 0.186_288_06
    p = p * t + 0.096_784_18
    p = p * t + 0.374_091_96
    p = p * t + 1.000_023_68
    p = p * t - 1.265_512_23
    let xx = x * x
    let xxError = (-xx).addingProduct(x, x)  // fma(x, x, −xx), exact
    let gauss = exp8(-0.5 * xx) * (1 - 0.5 * xxError)
    let half = 0.5 * t * exp8(p) * gauss
    let one = SIMD8<Float>(repeating: 1)
    return ((one - half).replacing(with: half, where: x .< 0), gauss * 0.398_942_28)
  }

  /// `x += y` over `count` values.
  public static func add(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, count: Int) {
    for i in 0..<count { x[i] += y[i] }
  }
}
