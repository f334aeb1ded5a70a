import FlareAdapters
import Foundation

// The rank-r bottleneck of a FLARE-fused linear layer (`formats/flare-adapter.md`): with
// `S = A·drop(x_s)` and `T = A·drop(x_t)` for one sequence (`L×r` each, source and target padded
// to the same length and fused position by position), the layer adds `scale · f(S, T)·Bᵀ` to the
// frozen output. This file is `f` and its backward; the LoRA matrices around it are the caller's.

/// The `r×r` projections (with bias) of the `cross-attention` fusion, row-major `[out, in]` as
/// PyTorch's `nn.Linear` stores them: queries from the source, keys and values from the target.
public struct FusionAttentionWeights: Sendable, Equatable {
  public var queryWeight: [Float]
  public var queryBias: [Float]
  public var keyWeight: [Float]
  public var keyBias: [Float]
  public var valueWeight: [Float]
  public var valueBias: [Float]

  public init(
    queryWeight: [Float], queryBias: [Float], keyWeight: [Float], keyBias: [Float],
    valueWeight: [Float], valueBias: [Float]
  ) {
    self.queryWeight = queryWeight
    self.queryBias = queryBias
    self.keyWeight = keyWeight
    self.keyBias = keyBias
    self.valueWeight = valueWeight
    self.valueBias = valueBias
  }

  /// Zeros of the shapes for rank `r` (gradient accumulators).
  public static func zeros(rank r: Int) -> FusionAttentionWeights {
    let w = [Float](repeating: 0, count: r * r)
    let b = [Float](repeating: 0, count: r)
    return FusionAttentionWeights(
      queryWeight: w, queryBias: b, keyWeight: w, keyBias: b, valueWeight: w, valueBias: b)
  }
}

/// One fusion function over one sequence.
///
/// The element-wise fusions (`add`, `mul`, `add_relu`) combine position `j` of the source with
/// position `j` of the target. The sequence-mixing ones let every position read target positions:
/// `matmul` is `F = S·Tᵀ·T`, i.e. `F[j] = Σ_k (S[j]·T[k]) T[k]`, `matmul_relu` the same on
/// `relu(S)`, `relu(T)`, and `cross-attention` attends from queries `S·Wqᵀ + bq` to keys
/// `T·Wkᵀ + bk` and values `T·Wvᵀ + bv` with `heads` heads of `r/heads` values (scores scaled by
/// `1/√(r/heads)`, softmax, attention dropout, heads concatenated, no output projection). Which
/// target positions `k` position `j` reads: all of them in the reference's form; with
/// ``causal``, only `k ≤ j` (a decoder's position then never sees later tokens); with a key
/// mask, only real (unpadded) positions. A position that may read none gets `F[j] = 0`.
public struct FusionFunction: Sendable {
  public let fusion: FLAREConfig.Fusion
  public let rank: Int
  public let causal: Bool
  /// `cross-attention` heads (dividing ``rank``).
  public let heads: Int
  /// `cross-attention` dropout on the attention probabilities (training only).
  public let attentionDropout: Float

  public init(
    fusion: FLAREConfig.Fusion, rank: Int, causal: Bool = false, heads: Int = 1,
    attentionDropout: Float = 0
  ) {
    precondition(rank > 0 && heads > 0 && rank % heads == 0, "heads must divide the rank")
    self.fusion = fusion
    self.rank = rank
    self.causal = causal
    self.heads = heads
    self.attentionDropout = attentionDropout
  }

  /// What the backward pass needs of a forward: for `cross-attention` the projected queries,
  /// keys and values and the attention probabilities before dropout (`heads × L × L`).
  public struct Saved: Sendable {
    var queries: [Float] = []
    var keys: [Float] = []
    var values: [Float] = []
    var probabilities: [Float] = []
  }

  /// Whether position `j` may read target position `k`.
  @inline(__always)
  func visible(_ j: Int, _ k: Int, _ keyMask: [Bool]?) -> Bool {
    (!causal || k <= j) && (keyMask?[k] ?? true)
  }

  /// `F = f(S, T)` for one sequence of `length` positions (`S`, `T`, `F`: `length × rank`).
  /// - Parameters:
  ///   - keyMask: Per target position, whether it is a real token (`nil`: all are).
  ///   - attention: The `cross-attention` weights (required for it, ignored otherwise).
  ///   - dropoutSeed: The attention dropout's seed in training (`nil`: no dropout); element
  ///     `(h·L + j)·L + k` of the mask is drawn at `dropoutOffset` plus that index.
  public func forward(
    source: [Float], target: [Float], length: Int, keyMask: [Bool]? = nil,
    attention: FusionAttentionWeights? = nil, dropoutSeed: UInt64? = nil,
    dropoutOffset: UInt64 = 0
  ) -> (output: [Float], saved: Saved) {
    let r = rank
    let n = length * r
    precondition(source.count == n && target.count == n, "S and T must be length × rank")
    var saved = Saved()
    switch fusion {
    case .add:
      return ((0..<n).map { source[$0] + target[$0] }, saved)
    case .mul:
      return ((0..<n).map { source[$0] * target[$0] }, saved)
    case .addReLU:
      return ((0..<n).map { max(source[$0], 0) + max(target[$0], 0) }, saved)
    case .matmul, .matmulReLU:
      let relu = fusion == .matmulReLU
      let s = relu ? source.map { max($0, 0) } : source
      let t = relu ? target.map { max($0, 0) } : target
      var out = [Float](repeating: 0, count: n)
      for j in 0..<length {
        for k in 0..<length where visible(j, k, keyMask) {
          var p: Float = 0
          for c in 0..<r { p += s[j * r + c] * t[k * r + c] }
          for c in 0..<r { out[j * r + c] += p * t[k * r + c] }
        }
      }
      return (out, saved)
    case .crossAttention:
      guard let w = attention else { preconditionFailure("cross-attention needs its weights") }
      saved.queries = Self.project(source, w.queryWeight, w.queryBias, rows: length, rank: r)
      saved.keys = Self.project(target, w.keyWeight, w.keyBias, rows: length, rank: r)
      saved.values = Self.project(target, w.valueWeight, w.valueBias, rows: length, rank: r)
      saved.probabilities = [Float](repeating: 0, count: heads * length * length)
      let mask = dropoutMask(length: length, seed: dropoutSeed, offset: dropoutOffset)
      var out = [Float](repeating: 0, count: n)
      let d = r / heads
      let scale = 1 / Float(d).squareRoot()
      for h in 0..<heads {
        for j in 0..<length {
          let row = (h * length + j) * length
          var largest = -Float.infinity
          for k in 0..<length where visible(j, k, keyMask) {
            var score: Float = 0
            for c in (h * d)..<((h + 1) * d) {
              score += saved.queries[j * r + c] * saved.keys[k * r + c]
            }
            score *= scale
            saved.probabilities[row + k] = score
            largest = max(largest, score)
          }
          guard largest > -Float.infinity else { continue }  // no visible key: F[j] = 0
          var sum: Float = 0
          for k in 0..<length where visible(j, k, keyMask) {
            let e = expf(saved.probabilities[row + k] - largest)
            saved.probabilities[row + k] = e
            sum += e
          }
          for k in 0..<length where visible(j, k, keyMask) {
            saved.probabilities[row + k] /= sum
            let p = saved.probabilities[row + k] * (mask?[row + k] ?? 1)
            for c in (h * d)..<((h + 1) * d) { out[j * r + c] += p * saved.values[k * r + c] }
          }
        }
      }
      return (out, saved)
    }
  }

  /// The backward of ``forward(source:target:length:keyMask:attention:dropoutSeed:dropoutOffset:)``
  /// given `dF` (`length × rank`): returns `dS` and `dT`, and adds the `cross-attention` weights'
  /// gradients to `attentionGradients` (same seed and offset as the forward).
  public func backward(
    outputGradient dF: [Float], source: [Float], target: [Float], length: Int,
    keyMask: [Bool]? = nil, attention: FusionAttentionWeights? = nil, saved: Saved,
    attentionGradients: inout FusionAttentionWeights, dropoutSeed: UInt64? = nil,
    dropoutOffset: UInt64 = 0
  ) -> (source: [Float], target: [Float]) {
    let r = rank
    let n = length * r
    switch fusion {
    case .add:
      return (dF, dF)
    case .mul:
      return ((0..<n).map { dF[$0] * target[$0] }, (0..<n).map { dF[$0] * source[$0] })
    case .addReLU:
      return (
        (0..<n).map { source[$0] > 0 ? dF[$0] : 0 }, (0..<n).map { target[$0] > 0 ? dF[$0] : 0 }
      )
    case .matmul, .matmulReLU:
      let relu = fusion == .matmulReLU
      let s = relu ? source.map { max($0, 0) } : source
      let t = relu ? target.map { max($0, 0) } : target
      var ds = [Float](repeating: 0, count: n)
      var dt = [Float](repeating: 0, count: n)
      // F[j] = Σ_k P[j,k]·T[k] with P[j,k] = S[j]·T[k]:
      // dP[j,k] = dF[j]·T[k], dS[j] += dP·T[k], dT[k] += dP·S[j] + P·dF[j].
      for j in 0..<length {
        for k in 0..<length where visible(j, k, keyMask) {
          var p: Float = 0
          var dp: Float = 0
          for c in 0..<r {
            p += s[j * r + c] * t[k * r + c]
            dp += dF[j * r + c] * t[k * r + c]
          }
          for c in 0..<r {
            ds[j * r + c] += dp * t[k * r + c]
            dt[k * r + c] += dp * s[j * r + c] + p * dF[j * r + c]
          }
        }
      }
      if relu {
        for i in 0..<n {
          if source[i] <= 0 { ds[i] = 0 }
          if target[i] <= 0 { dt[i] = 0 }
        }
      }
      return (ds, dt)
    case .crossAttention:
      guard let w = attention else { preconditionFailure("cross-attention needs its weights") }
      let mask = dropoutMask(length: length, seed: dropoutSeed, offset: dropoutOffset)
      let d = r / heads
      let scale = 1 / Float(d).squareRoot()
      var dq = [Float](repeating: 0, count: n)
      var dk = [Float](repeating: 0, count: n)
      var dv = [Float](repeating: 0, count: n)
      var dp = [Float](repeating: 0, count: length)
      for h in 0..<heads {
        let cs = (h * d)..<((h + 1) * d)
        for j in 0..<length {
          let row = (h * length + j) * length
          // dPdropped[k] = dF[j]·V[k]; dV[k] += Pdropped[j,k]·dF[j]; dP = dPdropped ⊙ mask.
          var dot: Float = 0
          for k in 0..<length {
            dp[k] = 0
            guard visible(j, k, keyMask) else { continue }
            let m = mask?[row + k] ?? 1
            var g: Float = 0
            for c in cs { g += dF[j * r + c] * saved.values[k * r + c] }
            let p = saved.probabilities[row + k]
            for c in cs { dv[k * r + c] += p * m * dF[j * r + c] }
            dp[k] = g * m
            dot += p * dp[k]
          }
          // Softmax backward, then the scaled scores' gradient into Q and K.
          for k in 0..<length where visible(j, k, keyMask) {
            let dscore = saved.probabilities[row + k] * (dp[k] - dot) * scale
            guard dscore != 0 else { continue }
            for c in cs {
              dq[j * r + c] += dscore * saved.keys[k * r + c]
              dk[k * r + c] += dscore * saved.queries[j * r + c]
            }
          }
        }
      }
      var ds = [Float](repeating: 0, count: n)
      var dt = [Float](repeating: 0, count: n)
      Self.projectBackward(
        dq, input: source, weight: w.queryWeight, dinp: &ds,
        dweight: &attentionGradients.queryWeight,
        dbias: &attentionGradients.queryBias, rows: length, rank: r)
      Self.projectBackward(
        dk, input: target, weight: w.keyWeight, dinp: &dt, dweight: &attentionGradients.keyWeight,
        dbias: &attentionGradients.keyBias, rows: length, rank: r)
      Self.projectBackward(
        dv, input: target, weight: w.valueWeight, dinp: &dt,
        dweight: &attentionGradients.valueWeight, dbias: &attentionGradients.valueBias,
        rows: length, rank: r)
      return (ds, dt)
    }
  }

  /// The attention dropout mask (`heads × L × L`, kept values scaled by `1/(1 − p)`), or `nil`
  /// without dropout.
  func dropoutMask(length: Int, seed: UInt64?, offset: UInt64) -> [Float]? {
    guard let seed, attentionDropout > 0 else { return nil }
    var mask = [Float](repeating: 0, count: heads * length * length)
    mask.withUnsafeMutableBufferPointer {
      Kernels.dropoutMask(
        $0.baseAddress!, count: $0.count, probability: attentionDropout, seed: seed,
        offset: offset)
    }
    return mask
  }

  /// `x·Wᵀ + b` for `rows` rows of `rank` values.
  static func project(_ x: [Float], _ w: [Float], _ b: [Float], rows: Int, rank r: Int) -> [Float] {
    var y = [Float](repeating: 0, count: rows * r)
    for i in 0..<rows {
      for o in 0..<r {
        var sum = b[o]
        for c in 0..<r { sum += x[i * r + c] * w[o * r + c] }
        y[i * r + o] = sum
      }
    }
    return y
  }

  /// Backward of ``project(_:_:_:rows:rank:)``: `dinp += dy·W`, `dW += dyᵀ·x`, `db += Σ dy`.
  static func projectBackward(
    _ dy: [Float], input x: [Float], weight w: [Float], dinp: inout [Float],
    dweight: inout [Float], dbias: inout [Float], rows: Int, rank r: Int
  ) {
    for i in 0..<rows {
      for o in 0..<r {
        let g = dy[i * r + o]
        guard g != 0 else { continue }
        dbias[o] += g
        for c in 0..<r {
          dinp[i * r + c] += g * w[o * r + c]
          dweight[o * r + c] += g * x[i * r + c]
        }
      }
    }
  }
}
