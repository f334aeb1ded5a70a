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

  /// The LoRA term's share of the input gradient for rows `firstRow ..< firstRow + N`:
  /// `dinp += ((scale · dout·B)·A) ⊙ mask` (the frozen weight's share is the caller's). Rows
  /// are independent, so a pass may split them in chunks.
  func backwardInput(
    dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, rows n: Int,
    dropoutSeed: UInt64?, firstRow: Int = 0
  ) {
    let c = inFeatures
    guard n > 0, c > 0, outFeatures > 0, rank > 0 else { return }
    let masked = dropoutSeed != nil && dropout > 0
    // [gradient before the mask | mask]
    let scratch = masked ? UnsafeMutablePointer<Float>.allocate(capacity: 2 * n * c) : nil
    defer { scratch?.deallocate() }
    if let scratch, let dropoutSeed {
      scratch.update(repeating: 0, count: n * c)
      Kernels.dropoutMask(
        scratch + n * c, count: n * c, probability: dropout, seed: dropoutSeed,
        offset: UInt64(firstRow * c))
    }
    a.values.withUnsafeBufferPointer { a in
      b.values.withUnsafeBufferPointer { b in
        // With only `dinp` requested, the kernel reads neither the input nor dA/dB.
        Kernels.loraBackward(
          dinp: scratch ?? dinp, da: nil, db: nil, dbias: nil, dout: dout, inp: a.baseAddress!,
          a: a.baseAddress!, b: b.baseAddress!, scale: scale, rows: n, inFeatures: c,
          outFeatures: outFeatures, rank: rank)
      }
    }
    if let scratch {
      Kernels.dropoutBackward(dinp: dinp, dout: scratch, mask: scratch + n * c, count: n * c)
    }
  }

  /// Accumulates the gradients of `A` and `B` over all `N` rows of a pass, given the forward's
  /// input and seed: `dA += scale · (dout·B)ᵀ·drop(inp)`, `dB += scale · doutᵀ·(drop(inp)·Aᵀ)`.
  /// A sum over rows, so it runs unsplit (its result must not depend on a thread count).
  func backwardWeights(
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, rows n: Int, dropoutSeed: UInt64?
  ) {
    let c = inFeatures
    guard n > 0, c > 0, outFeatures > 0, rank > 0 else { return }
    let dropped = droppedInput(inp, rows: n, seed: dropoutSeed, firstRow: 0)
    defer { dropped?.deallocate() }
    let source = dropped.map { UnsafePointer($0) } ?? inp
    a.values.withUnsafeBufferPointer { a in
      b.values.withUnsafeBufferPointer { b in
        self.a.gradient.withUnsafeMutableBufferPointer { da in
          self.b.gradient.withUnsafeMutableBufferPointer { db in
            Kernels.loraBackward(
              dinp: nil, da: da.baseAddress!, db: db.baseAddress!, dbias: nil, dout: dout,
              inp: source, a: a.baseAddress!, b: b.baseAddress!, scale: scale, rows: n,
              inFeatures: c, outFeatures: outFeatures, rank: rank)
          }
        }
      }
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
