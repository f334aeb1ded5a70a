import FlareTensor

// A trainable LoRA pair inside a model's forward and backward pass. The frozen layer underneath
// is ``Linear/forward(out:inp:rows:)`` and, backward,
// ``Kernels/matmulBackwardInput(dinp:dout:weight:rows:inFeatures:outFeatures:)``; these add
// PEFT's LoRA term `scale · B·(A·dropout(x))` and its gradients.
//
// The LoRA dropout mask is not kept: element `i` of the `N×in` mask depends only on the seed
// and `i` (``Kernels/dropoutMask(_:count:probability:seed:offset:)``), so the backward pass
// draws it again, and a pass that splits its rows into chunks draws each chunk's part with
// its offset (`firstRow`).
extension TrainableLoRA {
  /// Adds the LoRA term to a linear layer's output for rows `firstRow ..< firstRow + N` of a
  /// pass: `out += scale · (drop(inp)·Aᵀ)·Bᵀ`, the dropout (probability ``dropout``) drawn
  /// from `dropoutSeed`; `nil` (evaluation) or a zero probability applies none.
  func forward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows n: Int,
    dropoutSeed: UInt64?, firstRow: Int = 0
  ) {
    let c = inFeatures
    let oc = outFeatures
    let r = rank
    guard n > 0, c > 0, oc > 0, r > 0 else { return }
    let dropped = droppedInput(inp, rows: n, seed: dropoutSeed, firstRow: firstRow)
    defer { dropped?.deallocate() }
    let source = dropped.map { UnsafePointer($0) } ?? inp
    let hidden = UnsafeMutablePointer<Float>.allocate(capacity: n * r)
    defer { hidden.deallocate() }
    a.values.withUnsafeBufferPointer { a in
      b.values.withUnsafeBufferPointer { b in
        BLAS.sgemm(
          transA: false, transB: true, m: n, n: r, k: c, alpha: 1, a: source, lda: c,
          b: a.baseAddress!, ldb: c, beta: 0, c: hidden, ldc: r)
        BLAS.sgemm(
          transA: false, transB: true, m: n, n: oc, k: r, alpha: scale, a: hidden, lda: r,
          b: b.baseAddress!, ldb: r, beta: 1, c: out, ldc: oc)
      }
    }
  }

  /// The LoRA term's backward for rows `firstRow ..< firstRow + N` of a pass, given the
  /// forward's input and seed: with `dinp`, its share of the input gradient,
  /// `dinp += ((scale · dout·B)·A) ⊙ mask` (the frozen weight's share is the caller's); with
  /// `da` and `db` (`[r×in]`, `[out×r]`), these rows' share of the weight gradients,
  /// `da += scale · (dout·B)ᵀ·drop(inp)`, `db += scale · doutᵀ·(drop(inp)·Aᵀ)`.
  func backward(
    dinp: UnsafeMutablePointer<Float>?, da: UnsafeMutablePointer<Float>?,
    db: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>,
    rows n: Int, dropoutSeed: UInt64?, firstRow: Int = 0
  ) {
    let c = inFeatures
    guard n > 0, c > 0, outFeatures > 0, rank > 0 else { return }
    // [drop(inp) | mask] with dropout active.
    let dropped = droppedInput(inp, rows: n, seed: dropoutSeed, firstRow: firstRow)
    defer { dropped?.deallocate() }
    // With dropout, the input gradient goes through the mask: computed into `masked`, then
    // multiplied in.
    let masked = dinp != nil && dropped != nil
    let scratch = masked ? UnsafeMutablePointer<Float>.allocate(capacity: n * c) : nil
    defer { scratch?.deallocate() }
    scratch?.initialize(repeating: 0, count: n * c)
    a.values.withUnsafeBufferPointer { a in
      b.values.withUnsafeBufferPointer { b in
        Kernels.loraBackward(
          dinp: scratch ?? dinp, da: da, db: db, dbias: nil, dout: dout,
          inp: dropped.map { UnsafePointer($0) } ?? inp, a: a.baseAddress!, b: b.baseAddress!,
          scale: scale, rows: n, inFeatures: c, outFeatures: outFeatures, rank: rank)
      }
    }
    if let scratch, let dinp, let dropped {
      Kernels.dropoutBackward(dinp: dinp, dout: scratch, mask: dropped + n * c, count: n * c)
    }
  }

  /// With dropout active, a new buffer holding `inp ⊙ mask` for rows `firstRow ..< firstRow + N`
  /// followed by the mask; `nil` without dropout. The caller deallocates it.
  private func droppedInput(
    _ inp: UnsafePointer<Float>, rows n: Int, seed: UInt64?, firstRow: Int
  ) -> UnsafeMutablePointer<Float>? {
    guard let seed, dropout > 0 else { return nil }
    let count = n * inFeatures
    let buffer = UnsafeMutablePointer<Float>.allocate(capacity: 2 * count)
    Kernels.dropoutMask(
      buffer + count, count: count, probability: dropout, seed: seed,
      offset: UInt64(firstRow * inFeatures))
    Kernels.dropout(out: buffer, inp: inp, mask: buffer + count, count: count)
    return buffer
  }
}

/// The backward pass of one frozen linear layer (weight `[out, in]`) of a training pass, with
/// its trainable LoRA if it has one, over the pass's row chunks (``Parallel/rowChunk(_:)``)
/// spread over `workers` threads: each chunk's input gradient and its share of the LoRA's
/// weight gradients are computed together, and the shares are added to the LoRA's gradients
/// in chunk order afterwards, so every value depends on the row count only, never on the
/// thread count.
struct LinearBackward {
  let weight: FrozenMatrix
  let inFeatures: Int
  let outFeatures: Int
  let lora: TrainableLoRA?
  /// A FLARE-fused LoRA on the layer instead (never both).
  let fused: FusedLoRA?
  /// The LoRA's dropout seed in this pass (`nil`: no dropout).
  let dropoutSeed: UInt64?

  init(_ layer: Linear, lora: TrainableLoRA?, fused: FusedLoRA? = nil, dropoutSeed: UInt64?) {
    weight = layer.weight.frozen
    inFeatures = layer.inFeatures
    outFeatures = layer.outFeatures
    self.lora = lora
    self.fused = fused
    self.dropoutSeed = dropoutSeed
  }

  /// With `dinp`, its `N×in` input gradient (`+=` with `accumulate`, else `=`), and the
  /// LoRA's weight gradients (`+=`), from the output gradient `dout` and the forward's input
  /// `inp` of `N` rows, sequences of `length` rows (which a fused LoRA works on).
  func run(
    dinp: UnsafeMutablePointer<Float>?, accumulate: Bool, dout: UnsafePointer<Float>,
    inp: UnsafePointer<Float>, rows n: Int, length: Int, workers: Int
  ) {
    defer {
      fused?.backward(
        dinp: dinp, dout: dout, target: inp, batch: n / max(length, 1), length: length,
        dropoutSeed: dropoutSeed, workers: workers)
    }
    guard n > 0 else { return }
    let (c, oc) = (inFeatures, outFeatures)
    let size = Parallel.rowChunk(n)
    let chunks = (n + size - 1) / size
    // Per chunk: its share of dA (`r×in`), then of dB (`out×r`).
    let r = lora?.rank ?? 0
    let share = r * (c + oc)
    let shares = UnsafeMutablePointer<Float>.allocate(capacity: max(1, chunks * share))
    defer { shares.deallocate() }
    shares.initialize(repeating: 0, count: chunks * share)
    Parallel.forEach(chunks, workers: workers) { chunk in
      let first = chunk * size
      let rows = min(n, first + size) - first
      let dout = dout + first * oc
      if let dinp {
        weight.backwardInput(
          dinp: dinp + first * c, dout: dout, rows: rows, inFeatures: c, outFeatures: oc,
          accumulate: accumulate)
      }
      let da = shares + chunk * share
      lora?.backward(
        dinp: dinp.map { $0 + first * c }, da: da, db: da + r * c, dout: dout,
        inp: inp + first * c, rows: rows, dropoutSeed: dropoutSeed, firstRow: first)
    }
    guard let lora else { return }
    lora.a.gradient.withUnsafeMutableBufferPointer { da in
      lora.b.gradient.withUnsafeMutableBufferPointer { db in
        for chunk in 0..<chunks {
          let part = shares + chunk * share
          for i in 0..<(r * c) { da[i] += part[i] }
          for i in 0..<(oc * r) { db[i] += part[r * c + i] }
        }
      }
    }
  }
}
