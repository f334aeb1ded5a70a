import Dispatch
import FlareTensor

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

// The backward function of every forward kernel, in llm.c's style: each takes the forward's
// inputs (and the statistics the forward saved: `rstd`, `mean`, attention probabilities) with
// the upstream gradient `dout`, and accumulates (`+=`) into the gradients of its inputs, which
// the caller zeroes once per optimizer step. Buffers are laid out exactly as in the forward.
//
// Frozen weights get no weight gradient: a frozen linear layer's backward is
// ``Kernels/matmulBackwardInput(dinp:dout:weight:rows:inFeatures:outFeatures:)`` alone (one
// GEMM); ``Kernels/matmulBackwardWeight(dweight:dbias:dout:inp:rows:inFeatures:outFeatures:)``
// is the separate GEMM for the small trainable matrices (heads), and
// ``Kernels/loraBackward(dinp:da:db:dbias:dout:inp:a:b:scale:rows:inFeatures:outFeatures:rank:)``
// covers a LoRA pair.
extension Kernels {
  // MARK: - Linear layers

  /// Backward of ``matmul(out:inp:weight:bias:rows:inFeatures:outFeatures:)`` with respect to
  /// its input: `dinp[N×C] += dout[N×OC] · W[OC×C]`. This is all a frozen layer needs. With
  /// `accumulate` false, `dinp` is overwritten instead (`=`; its old values are never read,
  /// which spares the caller zeroing it).
  public static func matmulBackwardInput(
    dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    rows n: Int, inFeatures c: Int, outFeatures oc: Int, accumulate: Bool = true
  ) {
    guard n > 0, c > 0 else { return }
    let beta: Float = accumulate ? 1 : 0
    guard oc > 0 else {
      if !accumulate { dinp.update(repeating: 0, count: n * c) }
      return
    }
    if n == 1 {
      // A GEMV's `beta = 0` may still multiply the old values (NaN · 0); zero them instead.
      if !accumulate { dinp.update(repeating: 0, count: c) }
      BLAS.sgemv(
        transA: true, m: oc, n: c, alpha: 1, a: weight, lda: c, x: dout, beta: 1, y: dinp)
    } else {
      BLAS.sgemm(
        transA: false, transB: false, m: n, n: c, k: oc, alpha: 1, a: dout, lda: oc, b: weight,
        ldb: c, beta: beta, c: dinp, ldc: c)
    }
  }

  /// Backward of ``matmul(out:inp:weight:bias:rows:inFeatures:outFeatures:)`` with respect to
  /// a trainable weight and bias: `dweight[OC×C] += doutᵀ · inp`, `dbias[OC] += Σ_rows dout`.
  public static func matmulBackwardWeight(
    dweight: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, rows n: Int, inFeatures c: Int,
    outFeatures oc: Int
  ) {
    guard n > 0, c > 0, oc > 0 else { return }
    BLAS.sgemm(
      transA: true, transB: false, m: oc, n: c, k: n, alpha: 1, a: dout, lda: oc, b: inp, ldb: c,
      beta: 1, c: dweight, ldc: c)
    if let dbias {
      for row in 0..<n {
        let g = dout + row * oc
        for j in 0..<oc { dbias[j] += g[j] }
      }
    }
  }

  /// Backward of one LoRA term of ``Linear/forward(out:inp:rows:)``,
  /// `out += scale · (inp·Aᵀ)·Bᵀ + scale · loraBias`, with `A` `[r, in]` and `B` `[out, r]`
  /// (PEFT's layout). Accumulates `dA += scale · (dout·B)ᵀ·inp`, `dB += scale · doutᵀ·(inp·Aᵀ)`,
  /// `dbias += scale · Σ_rows dout` and `dinp += scale · (dout·B)·A`; each destination may be
  /// `nil`. The frozen base weight's share of `dinp` is
  /// ``matmulBackwardInput(dinp:dout:weight:rows:inFeatures:outFeatures:)``. With LoRA dropout,
  /// pass the dropped input as `inp` and run the returned `dinp` share through
  /// ``dropoutBackward(dinp:dout:mask:count:)`` (so pass a separate buffer as `dinp`).
  ///
  /// Allocates two `N×r` buffers (`inp·Aᵀ` is recomputed rather than saved).
  public static func loraBackward(
    dinp: UnsafeMutablePointer<Float>?, da: UnsafeMutablePointer<Float>?,
    db: UnsafeMutablePointer<Float>?, dbias: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, a: UnsafePointer<Float>,
    b: UnsafePointer<Float>, scale: Float, rows n: Int, inFeatures c: Int, outFeatures oc: Int,
    rank r: Int
  ) {
    guard n > 0, c > 0, oc > 0, r > 0 else { return }
    let hidden = UnsafeMutablePointer<Float>.allocate(capacity: 2 * n * r)
    defer { hidden.deallocate() }
    let dhidden = hidden + n * r
    if let db {
      BLAS.sgemm(
        transA: false, transB: true, m: n, n: r, k: c, alpha: 1, a: inp, lda: c, b: a, ldb: c,
        beta: 0, c: hidden, ldc: r)
      BLAS.sgemm(
        transA: true, transB: false, m: oc, n: r, k: n, alpha: scale, a: dout, lda: oc, b: hidden,
        ldb: r, beta: 1, c: db, ldc: r)
    }
    if let dbias {
      for row in 0..<n {
        let g = dout + row * oc
        for j in 0..<oc { dbias[j] += scale * g[j] }
      }
    }
    guard da != nil || dinp != nil else { return }
    BLAS.sgemm(
      transA: false, transB: false, m: n, n: r, k: oc, alpha: scale, a: dout, lda: oc, b: b,
      ldb: r, beta: 0, c: dhidden, ldc: r)
    if let da {
      BLAS.sgemm(
        transA: true, transB: false, m: r, n: c, k: n, alpha: 1, a: dhidden, lda: r, b: inp,
        ldb: c, beta: 1, c: da, ldc: c)
    }
    if let dinp {
      BLAS.sgemm(
        transA: false, transB: false, m: n, n: c, k: r, alpha: 1, a: dhidden, lda: r, b: a, ldb: c,
        beta: 1, c: dinp, ldc: c)
    }
  }

  // MARK: - Embeddings

  /// Backward of a token-embedding lookup (`out[n] = table[tokens[n]]`): scatter-adds
  /// `dtable[tokens[n]] += dout[n]` (a token that occurs twice gets both rows).
  public static func embeddingBackward(
    dtable: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int>, dout: UnsafePointer<Float>,
    rows n: Int, channels c: Int
  ) {
    for row in 0..<n {
      let d = dtable + tokens[row] * c
      let g = dout + row * c
      for i in 0..<c { d[i] += g[i] }
    }
  }

  /// Backward of ``embeddingSum(out:tokens:positions:types:word:position:tokenType:rows:channels:)``:
  /// each table that is given (not `nil`) gets `dout` scatter-added at its rows.
  public static func embeddingSumBackward(
    dword: UnsafeMutablePointer<Float>?, dposition: UnsafeMutablePointer<Float>?,
    dtokenType: UnsafeMutablePointer<Float>?, tokens: UnsafePointer<Int>,
    positions: UnsafePointer<Int>, types: UnsafePointer<Int>, dout: UnsafePointer<Float>,
    rows n: Int, channels c: Int
  ) {
    if let dword {
      embeddingBackward(dtable: dword, tokens: tokens, dout: dout, rows: n, channels: c)
    }
    if let dposition {
      embeddingBackward(dtable: dposition, tokens: positions, dout: dout, rows: n, channels: c)
    }
    if let dtokenType {
      embeddingBackward(dtable: dtokenType, tokens: types, dout: dout, rows: n, channels: c)
    }
  }

  // MARK: - Normalisation

  /// Backward of ``rmsnorm(out:rstd:inp:weight:rows:channels:eps:)`` given the forward's `rstd`:
  /// `dinp += r·w⊙dout − r³/C · (Σ w⊙dout⊙x) · x` per row, and `dweight += dout⊙x·r` when
  /// `dweight` is given.
  public static func rmsnormBackward(
    dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    rstd: UnsafePointer<Float>, rows n: Int, channels c: Int
  ) {
    for row in 0..<n {
      let x = inp + row * c
      let g = dout + row * c
      let d = dinp + row * c
      let r = rstd[row]
      var dot: Double = 0
      for i in 0..<c { dot += Double(weight[i] * g[i]) * Double(x[i]) }
      let k = Float(dot / Double(c) * Double(r) * Double(r) * Double(r))
      for i in 0..<c { d[i] += r * (weight[i] * g[i]) - k * x[i] }
      if let dweight {
        for i in 0..<c { dweight[i] += g[i] * (x[i] * r) }
      }
    }
  }

  /// Backward of ``layernorm(out:mean:rstd:inp:weight:bias:rows:channels:eps:)`` given the
  /// forward's `mean` and `rstd` (llm.c's `layernorm_backward`): with `x̂ = (x − mean)·rstd`
  /// and `g = w⊙dout`, `dinp += rstd·(g − mean(g) − x̂·mean(g⊙x̂))`; `dweight += dout⊙x̂` and
  /// `dbias += dout` when given.
  public static func layernormBackward(
    dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?,
    dbias: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
    weight: UnsafePointer<Float>, mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
    rows n: Int, channels c: Int
  ) {
    for row in 0..<n {
      let x = inp + row * c
      let g = dout + row * c
      let d = dinp + row * c
      let m = mean[row]
      let s = rstd[row]
      var sumG: Double = 0
      var sumGX: Double = 0
      for i in 0..<c {
        let wg = Double(weight[i] * g[i])
        sumG += wg
        sumGX += wg * Double((x[i] - m) * s)
      }
      let meanG = Float(sumG / Double(c))
      let meanGX = Float(sumGX / Double(c))
      for i in 0..<c {
        let normed = (x[i] - m) * s
        d[i] += s * (weight[i] * g[i] - meanG - normed * meanGX)
      }
      if let dweight {
        for i in 0..<c { dweight[i] += g[i] * ((x[i] - m) * s) }
      }
      if let dbias {
        for i in 0..<c { dbias[i] += g[i] }
      }
    }
  }

  // MARK: - Rotary embeddings

  /// Backward of ``rope(_:rows:stride:heads:headDim:cos:sin:style:)``, in place like the
  /// forward: the gradient `dx` with respect to the rotated values becomes the gradient with
  /// respect to the values before rotation (each pair is rotated back by its angle). Same
  /// tables, layout and ``RopeStyle`` as the forward.
  public static func ropeBackward(
    _ dx: UnsafeMutablePointer<Float>, rows n: Int, stride: Int, heads: Int, headDim d: Int,
    cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, style: RopeStyle
  ) {
    let half = d / 2
    for row in 0..<n {
      let c = cos + row * half
      let s = sin + row * half
      for head in 0..<heads {
        let v = dx + row * stride + head * d
        for i in 0..<half {
          let (a, b) = style == .halves ? (i, i + half) : (2 * i, 2 * i + 1)
          let g0 = v[a]
          let g1 = v[b]
          v[a] = g0 * c[i] + g1 * s[i]
          v[b] = g1 * c[i] - g0 * s[i]
        }
      }
    }
  }

  // MARK: - Softmax and attention

  /// Backward of ``softmax(_:rows:channels:)`` given its output `probs`:
  /// `dinp += p⊙(dout − Σ p⊙dout)` per row.
  public static func softmaxBackward(
    dinp: UnsafeMutablePointer<Float>, probs: UnsafePointer<Float>, dout: UnsafePointer<Float>,
    rows n: Int, channels c: Int
  ) {
    for row in 0..<n {
      let p = probs + row * c
      let g = dout + row * c
      let d = dinp + row * c
      var dot: Float = 0
      for i in 0..<c { dot += p[i] * g[i] }
      for i in 0..<c { d[i] += p[i] * (g[i] - dot) }
    }
  }

  /// Backward of one head of
  /// ``attentionHead(out:outStride:q:qStride:k:v:kvStride:queries:keys:headDim:probs:dropout:allowed:)``
  /// or ``causalAttentionHead(out:outStride:q:qStride:k:v:kvStride:queries:keys:headDim:probs:causalOffset:padding:)``,
  /// given the probabilities the forward saved. The mask needs no argument: hidden keys have
  /// probability 0, so they get no gradient, and a query that saw no key gets none either.
  ///
  /// Accumulates into `dq` (layout of `q`, stride `qStride`) and into `dk`, `dv` (layout of `k`,
  /// `v`, stride `kvStride`); `dout` has stride `outStride`. With grouped-query attention,
  /// call it for every query head of a group with the same `dk`/`dv`: their gradients add up.
  /// - Parameters:
  ///   - dropout: The keep multipliers (`0` or `1/(1−p)`, `[T×S]`) the forward applied to the
  ///     probabilities, or `nil`.
  ///   - scratch: `T×S` values of working space.
  public static func attentionHeadBackward(
    dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
    dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, outStride: Int,
    q: UnsafePointer<Float>, qStride: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    kvStride: Int, queries t: Int, keys s: Int, headDim d: Int, probs: UnsafePointer<Float>,
    dropout: UnsafePointer<Float>?, scratch: UnsafeMutablePointer<Float>, scale: Float? = nil,
    softcap: Float? = nil
  ) {
    guard t > 0, s > 0, d > 0 else { return }
    let scale = scale ?? 1 / Float(d).squareRoot()
    let count = t * s
    // dV += (P⊙M)ᵀ·dout, the probabilities as the forward mixed them.
    var mixed = probs
    if let dropout {
      for i in 0..<count { scratch[i] = probs[i] * dropout[i] }
      mixed = UnsafePointer(scratch)
    }
    BLAS.sgemm(
      transA: true, transB: false, m: s, n: d, k: t, alpha: 1, a: mixed, lda: s, b: dout,
      ldb: outStride, beta: 1, c: dv, ldc: kvStride)
    // dP = (dout·Vᵀ)⊙M, then the softmax backward in place: dS = P⊙(dP − Σ P⊙dP).
    BLAS.sgemm(
      transA: false, transB: true, m: t, n: s, k: d, alpha: 1, a: dout, lda: outStride, b: v,
      ldb: kvStride, beta: 0, c: scratch, ldc: s)
    if let dropout {
      for i in 0..<count { scratch[i] *= dropout[i] }
    }
    for query in 0..<t {
      let p = probs + query * s
      let g = scratch + query * s
      var dot: Float = 0
      for key in 0..<s { dot += p[key] * g[key] }
      for key in 0..<s { g[key] = p[key] * (g[key] - dot) }
    }
    if let cap = softcap {
      // Scores were cap·tanh(z/cap) of z = Q·Kᵀ·scale: times 1 − tanh², z computed again.
      let z = UnsafeMutablePointer<Float>.allocate(capacity: count)
      defer { z.deallocate() }
      BLAS.sgemm(
        transA: false, transB: true, m: t, n: s, k: d, alpha: scale, a: q, lda: qStride, b: k,
        ldb: kvStride, beta: 0, c: z, ldc: s)
      for i in 0..<count {
        let th = tanhf(z[i] / cap)
        scratch[i] *= 1 - th * th
      }
    }
    // Scores were Q·Kᵀ·scale: dQ += dS·K·scale, dK += dSᵀ·Q·scale.
    BLAS.sgemm(
      transA: false, transB: false, m: t, n: d, k: s, alpha: scale, a: scratch, lda: s, b: k,
      ldb: kvStride, beta: 1, c: dq, ldc: qStride)
    BLAS.sgemm(
      transA: true, transB: false, m: s, n: d, k: t, alpha: scale, a: scratch, lda: s, b: q,
      ldb: qStride, beta: 1, c: dk, ldc: kvStride)
  }

  /// The attention backward of a whole layer without a cache (training): `B` sequences of `T`
  /// tokens, `H` query heads over `KV` key/value heads (query head `h` reads key/value head
  /// `h / (H/KV)`, as ``LlamaModel`` and transformers' `repeat_kv`), every query seeing the `T`
  /// keys of its own sequence through the saved probabilities.
  ///
  /// Layouts: `q`, `dq`, `dout` are `[B·T × H·d]`; `k`, `v`, `dk`, `dv` are `[B·T × KV·d]`;
  /// `probs` (and `dropout`, if given) are `[B × H × T × T]`. Work is split over `workers`
  /// threads by (sequence, key/value head), so the heads of a group, which share `dk`/`dv`,
  /// stay on one thread and the result does not depend on the split. Allocates `T×T` values
  /// per worker.
  public static func attentionBackward(
    dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
    dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, q: UnsafePointer<Float>,
    k: UnsafePointer<Float>, v: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    dropout: UnsafePointer<Float>?, batch: Int, length t: Int, heads: Int, kvHeads: Int,
    headDim d: Int, workers: Int = 1, scale: Float? = nil, softcap: Float? = nil
  ) {
    precondition(kvHeads > 0 && heads % kvHeads == 0, "attentionBackward: \(heads) over \(kvHeads)")
    let qDim = heads * d
    let kvDim = kvHeads * d
    let group = heads / kvHeads
    let pairs = batch * kvHeads
    guard pairs > 0, t > 0 else { return }
    let workers = max(1, min(workers, pairs))
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: workers * t * t)
    defer { scratch.deallocate() }
    nonisolated(unsafe) let (dqs, dks, dvs, douts, qs, ks, vs, ps, ms, work) = (
      dq, dk, dv, dout, q, k, v, probs, dropout, scratch
    )
    let run: @Sendable (Int) -> Void = { worker in
      var pair = worker
      while pair < pairs {
        let b = pair / kvHeads
        let kvHead = pair % kvHeads
        let kvOffset = b * t * kvDim + kvHead * d
        for head in (kvHead * group)..<((kvHead + 1) * group) {
          let qOffset = b * t * qDim + head * d
          let pOffset = (b * heads + head) * t * t
          attentionHeadBackward(
            dq: dqs + qOffset, dk: dks + kvOffset, dv: dvs + kvOffset, dout: douts + qOffset,
            outStride: qDim, q: qs + qOffset, qStride: qDim, k: ks + kvOffset, v: vs + kvOffset,
            kvStride: kvDim, queries: t, keys: t, headDim: d, probs: ps + pOffset,
            dropout: ms.map { $0 + pOffset }, scratch: work + worker * t * t, scale: scale,
            softcap: softcap)
        }
        pair += workers
      }
    }
    if workers == 1 {
      run(0)
      return
    }
    BLAS.beginSingleThreaded()
    Parallel.forEach(workers, workers: workers, run)
    BLAS.endSingleThreaded()
  }

  // MARK: - Activations

  /// Backward of ``geglu(out:gate:up:count:ggmlF16:)`` (PyTorch's tanh GELU): with
  /// `u = √(2/π)·(g + 0.044715·g³)`, `gelu(g) = 0.5·g·(1 + tanh u)`,
  /// `dgate += dout·up·(0.5·(1 + tanh u) + 0.5·g·(1 − tanh² u)·√(2/π)·(1 + 3·0.044715·g²))`
  /// and `dup += dout·gelu(g)`.
  public static func gegluBackward(
    dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
    gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dout: UnsafePointer<Float>, count: Int
  ) {
    let beta = Float((2 / Double.pi).squareRoot())
    let kappa: Float = 0.044715
    for i in 0..<count {
      let g = gate[i]
      let th = tanhf(beta * (g + kappa * g * g * g))
      let derivative = 0.5 * (1 + th) + 0.5 * g * (1 - th * th) * beta * (1 + 3 * kappa * g * g)
      dgate[i] += dout[i] * up[i] * derivative
      dup[i] += dout[i] * 0.5 * g * (1 + th)
    }
  }

  /// Backward of ``swiglu(out:gate:up:count:)``: with `σ = 1/(1+e^−g)`,
  /// `dgate += dout·u·σ·(1 + g·(1−σ))` and `dup += dout·g·σ`.
  public static func swigluBackward(
    dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
    gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dout: UnsafePointer<Float>, count: Int
  ) {
    var i = 0
    while i + 8 <= count {
      let g = UnsafeRawPointer(gate + i).loadUnaligned(as: SIMD8<Float>.self)
      let u = UnsafeRawPointer(up + i).loadUnaligned(as: SIMD8<Float>.self)
      let o = UnsafeRawPointer(dout + i).loadUnaligned(as: SIMD8<Float>.self)
      let sigma = 1 / (1 + exp8(-g))
      let dg = UnsafeRawPointer(dgate + i).loadUnaligned(as: SIMD8<Float>.self)
      let du = UnsafeRawPointer(dup + i).loadUnaligned(as: SIMD8<Float>.self)
      UnsafeMutableRawPointer(dgate + i).storeBytes(
        of: dg + o * u * sigma * (1 + g * (1 - sigma)), as: SIMD8<Float>.self)
      UnsafeMutableRawPointer(dup + i).storeBytes(of: du + o * g * sigma, as: SIMD8<Float>.self)
      i += 8
    }
    while i < count {
      let g = gate[i]
      let sigma = 1 / (1 + expf(-g))
      dgate[i] += dout[i] * up[i] * sigma * (1 + g * (1 - sigma))
      dup[i] += dout[i] * g * sigma
      i += 1
    }
  }

  /// Backward of ``gelu(_:count:)`` (exact erf) given the forward's input `inp`:
  /// `dinp += dout · (Φ(x) + x·φ(x))`, `Φ(x) = ½(1 + erf(x/√2))`, `φ(x) = e^(−x²/2)/√(2π)`.
  public static func geluBackward(
    dinp: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, dout: UnsafePointer<Float>,
    count: Int
  ) {
    var i = 0
    while i + 8 <= count {
      let x = UnsafeRawPointer(inp + i).loadUnaligned(as: SIMD8<Float>.self)
      let g = UnsafeRawPointer(dout + i).loadUnaligned(as: SIMD8<Float>.self)
      let d = UnsafeRawPointer(dinp + i).loadUnaligned(as: SIMD8<Float>.self)
      let (cdf, pdf) = normal8(x)
      UnsafeMutableRawPointer(dinp + i).storeBytes(
        of: d + g * (cdf + x * pdf), as: SIMD8<Float>.self)
      i += 8
    }
    while i < count {
      let x = inp[i]
      let cdf = 0.5 * (1 + erff(x * 0.707_106_77))
      let pdf = expf(-0.5 * x * x) * 0.398_942_28
      dinp[i] += dout[i] * (cdf + x * pdf)
      i += 1
    }
  }

  /// Backward of ``tanh(_:count:)`` given the forward's output `out`: `dinp += dout·(1 − y²)`.
  public static func tanhBackward(
    dinp: UnsafeMutablePointer<Float>, out: UnsafePointer<Float>, dout: UnsafePointer<Float>,
    count: Int
  ) {
    for i in 0..<count { dinp[i] += dout[i] * (1 - out[i] * out[i]) }
  }

  /// Backward of a residual connection `out = a + b` (``add(_:_:count:)``): both inputs receive
  /// the upstream gradient, `da += dout`, `db += dout`.
  public static func residualBackward(
    da: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
    count: Int
  ) {
    for i in 0..<count {
      da[i] += dout[i]
      db[i] += dout[i]
    }
  }
}
