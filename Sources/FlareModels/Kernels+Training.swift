import FlareTensor

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

// The pieces only training needs, each with its forward and backward: dropout, pooling, and
// the losses (classification cross-entropy and the chunked LM head + cross-entropy).
extension Kernels {
  // MARK: - Dropout

  /// Fills `mask` with inverted-dropout keep multipliers, as PyTorch's `dropout` in training
  /// mode applies them: each element is `0` with probability `p` and `1/(1−p)` otherwise
  /// (all `0` when `p` is 1, all `1` when `p` is 0).
  ///
  /// Element `i` depends only on `seed` and `offset + i` (a counter-based generator: two
  /// rounds of the SplitMix64 finaliser), so a training step can regenerate a mask for its
  /// backward pass instead of keeping it, and the result does not depend on how work is split.
  /// The stream is Flare's own: bit-equality with PyTorch's generator is not a goal (exactness
  /// checks against PyTorch run with `p = 0`, or with a mask both sides share).
  public static func dropoutMask(
    _ mask: UnsafeMutablePointer<Float>, count: Int, probability p: Float, seed: UInt64,
    offset: UInt64 = 0
  ) {
    precondition(p >= 0 && p <= 1, "dropout probability \(p) is outside [0, 1]")
    guard p > 0 else {
      mask.update(repeating: 1, count: count)
      return
    }
    guard p < 1 else {
      mask.update(repeating: 0, count: count)
      return
    }
    let keep = 1 / (1 - p)
    let key = mix64(seed)
    for i in 0..<count {
      // Wrapping arithmetic is the generator's definition (a hash of the counter).
      let bits = mix64(key &+ (offset &+ UInt64(i)) &* 0x9E37_79B9_7F4A_7C15)
      let uniform = Float(bits >> 40) * 0x1p-24
      mask[i] = uniform < p ? 0 : keep
    }
  }

  /// SplitMix64's output function, a bijective 64-bit mix.
  @inline(__always)
  static func mix64(_ value: UInt64) -> UInt64 {
    var z = value &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// Dropout forward with a mask from ``dropoutMask(_:count:probability:seed:offset:)``:
  /// `out = inp ⊙ mask` (`out` may be `inp`).
  public static func dropout(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, mask: UnsafePointer<Float>,
    count: Int
  ) {
    for i in 0..<count { out[i] = inp[i] * mask[i] }
  }

  /// Dropout backward: `dinp += dout ⊙ mask`.
  public static func dropoutBackward(
    dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, mask: UnsafePointer<Float>,
    count: Int
  ) {
    for i in 0..<count { dinp[i] += dout[i] * mask[i] }
  }

  // MARK: - Pooling

  /// Mean pooling over each sequence's real tokens (sentence-transformers' `mean` pooling):
  /// `out[b] = Σ_{t: mask[b·T+t]} inp[b·T+t] / max(count, 1e-9)` for `B` sequences of `T` rows
  /// of `C` values (sums in double precision). A sequence without real tokens gets zeros.
  public static func meanPool(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, mask: UnsafePointer<Bool>,
    batch: Int, length t: Int, channels c: Int
  ) {
    var sum = [Double](repeating: 0, count: c)
    for b in 0..<batch {
      for i in 0..<c { sum[i] = 0 }
      var count = 0
      for column in 0..<t where mask[b * t + column] {
        let h = inp + (b * t + column) * c
        for i in 0..<c { sum[i] += Double(h[i]) }
        count += 1
      }
      // sentence-transformers clamps the token count at 1e-9.
      let scale = 1 / max(Double(count), 1e-9)
      let o = out + b * c
      for i in 0..<c { o[i] = Float(sum[i] * scale) }
    }
  }

  /// Backward of ``meanPool(out:inp:mask:batch:length:channels:)``: every real token of
  /// sequence `b` gets `dinp += dout[b] / count`.
  public static func meanPoolBackward(
    dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, mask: UnsafePointer<Bool>,
    batch: Int, length t: Int, channels c: Int
  ) {
    for b in 0..<batch {
      var count = 0
      for column in 0..<t where mask[b * t + column] { count += 1 }
      guard count > 0 else { continue }
      let scale = Float(1 / Double(count))
      let g = dout + b * c
      for column in 0..<t where mask[b * t + column] {
        let d = dinp + (b * t + column) * c
        for i in 0..<c { d[i] += g[i] * scale }
      }
    }
  }

  /// Copies rows `indices[0..<count]` of `inp` (rows of `C` values) to `out`: CLS pooling
  /// (`indices[b] = b·T`) and last-token pooling (`LlamaForSequenceClassification`).
  public static func gatherRows(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, indices: UnsafePointer<Int>,
    count: Int, channels c: Int
  ) {
    for row in 0..<count { (out + row * c).update(from: inp + indices[row] * c, count: c) }
  }

  /// Backward of ``gatherRows(out:inp:indices:count:channels:)``: `dinp[indices[i]] += dout[i]`.
  public static func gatherRowsBackward(
    dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, indices: UnsafePointer<Int>,
    count: Int, channels c: Int
  ) {
    embeddingBackward(dtable: dinp, tokens: indices, dout: dout, rows: count, channels: c)
  }

  // MARK: - Losses

  /// The label PyTorch's `cross_entropy` ignores (`ignore_index`) and transformers puts on
  /// prompt and padding positions.
  public static let ignoreIndex = -100

  /// Labels for a causal LM, as transformers' `ForCausalLMLoss` shifts them: position `t` of
  /// each of the `batch` sequences of `length` tokens gets label `t + 1`, the last position
  /// ``ignoreIndex``.
  public static func shiftedLabels(_ labels: [Int], batch: Int, length t: Int) -> [Int] {
    precondition(labels.count == batch * t, "shiftedLabels: \(labels.count) for \(batch)×\(t)")
    var shifted = [Int](repeating: ignoreIndex, count: labels.count)
    for b in 0..<batch where t > 1 {
      for i in 0..<(t - 1) { shifted[b * t + i] = labels[b * t + i + 1] }
    }
    return shifted
  }

  /// Softmax cross-entropy of one row of logits, in place: returns `logsumexp(z) − z[label]`
  /// (in double precision) and leaves `scale · (softmax(z) − onehot(label))` in `z`.
  static func crossEntropyRowInPlace(
    _ z: UnsafeMutablePointer<Float>, classes v: Int, label: Int, scale: Float
  ) -> Double {
    var largest = -Float.infinity
    for i in 0..<v where z[i] > largest { largest = z[i] }
    let target = z[label]
    var lanes = SIMD8<Float>()
    let shift = SIMD8<Float>(repeating: largest)
    var sum: Double = 0
    var i = 0
    while i + 8 <= v {
      let e = exp8(UnsafeRawPointer(z + i).loadUnaligned(as: SIMD8<Float>.self) - shift)
      UnsafeMutableRawPointer(z + i).storeBytes(of: e, as: SIMD8<Float>.self)
      lanes += e
      i += 8
      // Float lanes over a whole vocabulary (49,152 values) lose ~1e-5 of the sum: flush them
      // into the double-precision total every 256 values.
      if i % 256 == 0 {
        sum += Double(lanes.sum())
        lanes = SIMD8<Float>()
      }
    }
    sum += Double(lanes.sum())
    while i < v {
      let e = expf(z[i] - largest)
      z[i] = e
      sum += Double(e)
      i += 1
    }
    let factor = Float(Double(scale) / sum)
    for j in 0..<v { z[j] *= factor }
    z[label] -= scale
    return Double(largest) + log(sum) - Double(target)
  }

  /// Softmax cross-entropy of `N` rows of `K` logits against `labels` (PyTorch's
  /// `cross_entropy` with `ignore_index` −100): rows labelled ``ignoreIndex`` are skipped.
  ///
  /// The caller normalises: `gradientScale` is `1/count` for a mean over the rows given, or
  /// `1/(examples of the optimizer step)` when a step's micro-batches are averaged together.
  /// - Parameters:
  ///   - dlogits: Receives `+= gradientScale · (softmax − onehot)` per labelled row, or `nil`
  ///     for the loss alone.
  ///   - labels: `−100`, or a class in `0..<K` (checked by the caller).
  /// - Returns: The sum of the labelled rows' losses (not normalised) and their number.
  public static func crossEntropy(
    dlogits: UnsafeMutablePointer<Float>?, logits: UnsafePointer<Float>,
    labels: UnsafePointer<Int>, rows n: Int, classes k: Int, gradientScale: Float
  ) -> (loss: Double, count: Int) {
    let row = UnsafeMutablePointer<Float>.allocate(capacity: max(k, 1))
    defer { row.deallocate() }
    var total: Double = 0
    var count = 0
    for r in 0..<n where labels[r] != ignoreIndex {
      precondition(labels[r] >= 0 && labels[r] < k, "label \(labels[r]) outside 0..<\(k)")
      row.update(from: logits + r * k, count: k)
      total += crossEntropyRowInPlace(row, classes: k, label: labels[r], scale: gradientScale)
      count += 1
      if let dlogits { add(dlogits + r * k, row, count: k) }
    }
    return (total, count)
  }

  /// The LM head and its cross-entropy, fused and chunked: for every row `r` of `inp`
  /// (`[N×C]`, the final norm's output) whose label is not ``ignoreIndex``, the logits
  /// `inp[r]·Wᵀ (+ bias)` (``matmul(out:inp:weight:bias:rows:inFeatures:outFeatures:)``, the
  /// inference head), their cross-entropy, and `dinp[r] += (gradientScale·(softmax −
  /// onehot))·W` through the frozen head.
  ///
  /// Labelled rows are gathered `chunk` at a time, so at most `chunk × V` logits exist at once
  /// (never `N × V`), and rows without a label cost nothing. For transformers' loss, pass
  /// ``shiftedLabels(_:batch:length:)`` and `gradientScale = 1/N_step`, `N_step` the label
  /// count of all micro-batches of the optimizer step; the step's loss is the sum of the
  /// returned losses times `gradientScale`.
  ///
  /// Works in `workspace`, at least `chunk × (V + 2C)` values, or allocates that much.
  /// - Parameters:
  ///   - dinp: Receives the input gradient, or `nil` to compute the loss alone (evaluation).
  ///   - weight: The head, `[V×C]` (the embedding matrix when tied).
  ///   - labels: `N` labels, each `−100` or a token id in `0..<V` (checked by the caller).
  /// - Returns: The sum of the labelled rows' losses (not normalised) and their number.
  public static func lmHeadCrossEntropy(
    dinp: UnsafeMutablePointer<Float>?, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    bias: UnsafePointer<Float>?, labels: UnsafePointer<Int>, rows n: Int, channels c: Int,
    vocab v: Int, chunk: Int, gradientScale: Float, workspace: UnsafeMutablePointer<Float>? = nil
  ) -> (loss: Double, count: Int) {
    lmHeadCrossEntropy(
      dinp: dinp, inp: inp, frozen: .f32(weight), bias: bias, labels: labels, rows: n,
      channels: c, vocab: v, chunk: chunk, gradientScale: gradientScale, workspace: workspace)
  }

  /// ``lmHeadCrossEntropy(dinp:inp:weight:bias:labels:rows:channels:vocab:chunk:gradientScale:workspace:)``
  /// for a head that may be kept quantized.
  static func lmHeadCrossEntropy(
    dinp: UnsafeMutablePointer<Float>?, inp: UnsafePointer<Float>, frozen weight: FrozenMatrix,
    bias: UnsafePointer<Float>?, labels: UnsafePointer<Int>, rows n: Int, channels c: Int,
    vocab v: Int, chunk: Int, gradientScale: Float, workspace: UnsafeMutablePointer<Float>? = nil,
    softcap: Float? = nil
  ) -> (loss: Double, count: Int) {
    let labelled = (0..<n).filter { labels[$0] != ignoreIndex }
    guard !labelled.isEmpty, c > 0, v > 0 else { return (0, 0) }
    for r in labelled {
      precondition(labels[r] >= 0 && labels[r] < v, "label \(labels[r]) outside 0..<\(v)")
    }
    let step = max(1, min(chunk, labelled.count))
    let owned =
      workspace == nil ? UnsafeMutablePointer<Float>.allocate(capacity: step * (v + 2 * c)) : nil
    defer { owned?.deallocate() }
    let buffer = workspace ?? owned!
    let rows = buffer
    let gradients = buffer + step * c
    let logits = buffer + 2 * step * c
    // Gemma 2's soft-capped logits `cap·tanh(z/cap)`: their derivative `1 − tanh²` per value.
    let slopes = softcap.map { _ in UnsafeMutablePointer<Float>.allocate(capacity: step * v) }
    defer { slopes?.deallocate() }
    var total: Double = 0
    var start = 0
    while start < labelled.count {
      let m = min(step, labelled.count - start)
      for i in 0..<m { (rows + i * c).update(from: inp + labelled[start + i] * c, count: c) }
      weight.forward(out: logits, inp: rows, bias: bias, rows: m, inFeatures: c, outFeatures: v)
      if let cap = softcap, let slopes {
        for i in 0..<(m * v) {
          let t = tanhf(logits[i] / cap)
          logits[i] = cap * t
          slopes[i] = 1 - t * t
        }
      }
      for i in 0..<m {
        total += crossEntropyRowInPlace(
          logits + i * v, classes: v, label: labels[labelled[start + i]], scale: gradientScale)
      }
      if let dinp {
        if let slopes {
          for i in 0..<(m * v) { logits[i] *= slopes[i] }
        }
        weight.backwardInput(
          dinp: gradients, dout: logits, rows: m, inFeatures: c, outFeatures: v, accumulate: false)
        for i in 0..<m { add(dinp + labelled[start + i] * c, gradients + i * c, count: c) }
      }
      start += m
    }
    return (total, labelled.count)
  }
}
