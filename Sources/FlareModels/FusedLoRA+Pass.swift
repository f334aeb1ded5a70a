import FlareAdapters
import FlareCore
import FlareTensor

// FLARE's fused LoRA layers inside a model's training or evaluation pass: the frozen layer on
// the target input plus `scale · f(S, T)·Bᵀ` with `S = A·drop(x_s)`, `T = A·drop(x_t)`
// (`formats/flare-adapter.md`, ``FusionFunction``), sequence by sequence.

/// The trainable `r×r` query/key/value projections (with bias) of one module's
/// `cross-attention` fusion, saved as `base_model.model.<module>.cross_attention.{q,k,v}.{weight,bias}`.
public struct TrainableFusionAttention: Sendable {
  public let query: TrainableTensor
  public let queryBias: TrainableTensor
  public let key: TrainableTensor
  public let keyBias: TrainableTensor
  public let value: TrainableTensor
  public let valueBias: TrainableTensor

  public init(
    query: TrainableTensor, queryBias: TrainableTensor, key: TrainableTensor,
    keyBias: TrainableTensor, value: TrainableTensor, valueBias: TrainableTensor
  ) {
    self.query = query
    self.queryBias = queryBias
    self.key = key
    self.keyBias = keyBias
    self.value = value
    self.valueBias = valueBias
  }

  /// The six tensors in saved order (q, k, v; weight then bias).
  public var tensors: [TrainableTensor] { [query, queryBias, key, keyBias, value, valueBias] }

  var weights: FusionAttentionWeights {
    FusionAttentionWeights(
      queryWeight: query.values, queryBias: queryBias.values, keyWeight: key.values,
      keyBias: keyBias.values, valueWeight: value.values, valueBias: valueBias.values)
  }

  /// Adds `share` to the gradients.
  func accumulate(_ share: FusionAttentionWeights) {
    for (tensor, values) in zip(
      tensors,
      [
        share.queryWeight, share.queryBias, share.keyWeight, share.keyBias, share.valueWeight,
        share.valueBias,
      ])
    {
      for i in values.indices { tensor.gradient[i] += values[i] }
    }
  }
}

/// The FLARE part of a training state: which modules fuse, how, and the cross-attention
/// weights of each fused module (for `cross-attention` only).
public struct TrainingFusion: Sendable {
  public var fusion: FLAREConfig.Fusion
  /// Module paths (as ``TrainingState/loras`` keys) whose LoRA fuses the source state.
  public var fusedModules: Set<String>
  /// Whether position `j` reads only target positions `k ≤ j` that are real tokens (the
  /// decoder variant); `false` is the reference's form (every position, padding included).
  public var causal: Bool
  public var heads: Int
  public var attentionDropout: Float
  /// Whether the source state is passed through the block's input norm first (the symmetric
  /// variant); `false` gives the raw residual stream, as the reference does.
  public var normalizeSource: Bool
  public var attention: [String: TrainableFusionAttention]
  /// Evaluation only, `add` only: the model's weights already hold the adapter folded in
  /// (`flare-merge` output, `W₂ = W₁ + s·B·A` on every adapted module). The target pass then
  /// adds only the source term `s·B·A·x_s` on the fused modules (no other LoRA), and the source
  /// pass recovers `W₁` by running every adapted module with its LoRA at scale `−s`.
  public var bakedTarget = false

  public init(
    fusion: FLAREConfig.Fusion, fusedModules: Set<String>, causal: Bool, heads: Int = 1,
    attentionDropout: Float = 0, normalizeSource: Bool = false,
    attention: [String: TrainableFusionAttention] = [:]
  ) {
    self.fusion = fusion
    self.fusedModules = fusedModules
    self.causal = causal
    self.heads = heads
    self.attentionDropout = attentionDropout
    self.normalizeSource = normalizeSource
    self.attention = attention
  }
}

extension FusionFunction {
  /// The fusion of `module` (a LoRA of rank `lora.rank`) in a pass, after checking the
  /// settings: the heads divide the rank, and a `cross-attention` module has its weights in
  /// the right shapes. Attention dropout applies in training only.
  /// - Throws: ``FlareError`` naming the module.
  init(checking fusion: TrainingFusion, module: String, lora: TrainableLoRA, training: Bool)
    throws
  {
    func bad(_ message: String) -> FlareError {
      FlareError("adapter", .invalidArgument, message, tensor: module)
    }
    let r = lora.rank
    guard fusion.heads >= 1, r % fusion.heads == 0 else {
      throw bad("\(fusion.heads) cross-attention heads do not divide \(module)'s rank \(r)")
    }
    guard fusion.attentionDropout >= 0 && fusion.attentionDropout < 1 else {
      throw bad("cross-attention dropout \(fusion.attentionDropout) is outside [0, 1)")
    }
    if fusion.fusion == .crossAttention {
      guard let weights = fusion.attention[module],
        zip(weights.tensors, [[r, r], [r], [r, r], [r], [r, r], [r]]).allSatisfy({
          $0.0.shape == $0.1
        })
      else {
        throw bad(
          "fused module \(module) needs cross-attention weights [\(r), \(r)] and biases [\(r)] for q, k and v"
        )
      }
    }
    self.init(
      fusion: fusion.fusion, rank: r, causal: fusion.causal, heads: fusion.heads,
      attentionDropout: training ? fusion.attentionDropout : 0)
  }
}

/// One fused LoRA layer in a pass.
struct FusedLoRA {
  let lora: TrainableLoRA
  let function: FusionFunction
  let attention: TrainableFusionAttention?
  /// `x_s` of this layer's block, `N×in` (the source pass's rows, aligned with the target's),
  /// or in evaluation passes `S = A·x_s` already projected, `N×r`: what FLARE.md §7.2 says to
  /// keep of the source side (training needs `x_s` itself for `A`'s gradient).
  let source: FusedSource
  /// Per sequence, which positions are real tokens (the key mask of the causal variant).
  let keyMask: [[Bool]]
  /// Whether the layer adds only the source term `s·B·S` (an `add` adapter whose target path
  /// is folded into the weights; evaluation only).
  var sourceOnly = false

  enum FusedSource {
    case states(UnsafePointer<Float>)
    case projected(UnsafePointer<Float>)
  }

  /// The seed of the source path's LoRA dropout: the same probability as the target's, an
  /// independent mask (the reference applies one dropout module to each input separately).
  static func sourceSeed(_ seed: UInt64?) -> UInt64? {
    seed.map { Kernels.mix64($0 ^ 0x5EED_F1A7_E500_0001) }
  }

  /// `S`, `T` (each `t×r`) and the dropped inputs of sequence `i` (`nil` without dropout).
  private func project(
    target: UnsafePointer<Float>, sequence i: Int, length t: Int, dropoutSeed: UInt64?
  ) -> (s: [Float], t: [Float], xs: [Float]?, xt: [Float]?, mask: [Float]?) {
    let c = lora.inFeatures
    let r = lora.rank
    let first = i * t
    func dropped(_ x: UnsafePointer<Float>, seed: UInt64?) -> ([Float]?, [Float]?) {
      guard let seed, lora.dropout > 0 else { return (nil, nil) }
      var mask = [Float](repeating: 0, count: t * c)
      mask.withUnsafeMutableBufferPointer {
        Kernels.dropoutMask(
          $0.baseAddress!, count: t * c, probability: lora.dropout, seed: seed,
          offset: UInt64(first * c))
      }
      return ((0..<(t * c)).map { x[first * c + $0] * mask[$0] }, mask)
    }
    func times(_ x: [Float]?, _ raw: UnsafePointer<Float>) -> [Float] {
      var out = [Float](repeating: 0, count: t * r)
      lora.a.values.withUnsafeBufferPointer { a in
        out.withUnsafeMutableBufferPointer { o in
          func run(_ p: UnsafePointer<Float>) {
            BLAS.sgemm(
              transA: false, transB: true, m: t, n: r, k: c, alpha: 1, a: p, lda: c,
              b: a.baseAddress!, ldb: c, beta: 0, c: o.baseAddress!, ldc: r)
          }
          if let x {
            x.withUnsafeBufferPointer { run($0.baseAddress!) }
          } else {
            run(raw + first * c)
          }
        }
      }
      return out
    }
    let states: UnsafePointer<Float>
    switch source {
    case .projected(let projected):
      // Evaluation: no dropout, `S` given.
      let s = Array(UnsafeBufferPointer(start: projected + first * r, count: t * r))
      let (xt, mask) = dropped(target, seed: dropoutSeed)
      return (s, times(xt, target), nil, xt, mask)
    case .states(let pointer): states = pointer
    }
    let (xs, _) = dropped(states, seed: Self.sourceSeed(dropoutSeed))
    let (xt, mask) = dropped(target, seed: dropoutSeed)
    return (times(xs, states), times(xt, target), xs, xt, mask)
  }

  private func fuse(
    _ s: [Float], _ t: [Float], sequence i: Int, length: Int, dropoutSeed: UInt64?
  ) -> ([Float], FusionFunction.Saved) {
    if sourceOnly { return (s, FusionFunction.Saved()) }
    return function.forward(
      source: s, target: t, length: length, keyMask: function.causal ? keyMask[i] : nil,
      attention: attention?.weights, dropoutSeed: dropoutSeed.map { Kernels.mix64($0 ^ 0xA77E) },
      dropoutOffset: UInt64(i * function.heads * length * length))
  }

  /// `out += scale · f(S, T)·Bᵀ` for `batch` sequences of `length` rows (the frozen layer's
  /// output is already in `out`).
  func forward(
    out: UnsafeMutablePointer<Float>, target: UnsafePointer<Float>, batch: Int, length t: Int,
    dropoutSeed: UInt64?, workers: Int
  ) {
    let oc = lora.outFeatures
    let r = lora.rank
    nonisolated(unsafe) let out = out
    Parallel.forEach(batch, workers: workers) { i in
      let (s, tt, _, _, _) = project(
        target: target, sequence: i, length: t, dropoutSeed: dropoutSeed)
      let (f, _) = fuse(s, tt, sequence: i, length: t, dropoutSeed: dropoutSeed)
      f.withUnsafeBufferPointer { f in
        lora.b.values.withUnsafeBufferPointer { b in
          BLAS.sgemm(
            transA: false, transB: true, m: t, n: oc, k: r, alpha: lora.scale, a: f.baseAddress!,
            lda: r, b: b.baseAddress!, ldb: r, beta: 1, c: out + i * t * oc, ldc: oc)
        }
      }
    }
  }

  /// The fused term's backward: `dinp += (dT·A) ⊙ mask` if `dinp` is given, and the gradients
  /// of `A` (from both paths), `B` and the cross-attention weights, each sequence's share
  /// computed on its own and the shares added in sequence order.
  func backward(
    dinp: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
    target: UnsafePointer<Float>, batch: Int, length t: Int, dropoutSeed: UInt64?, workers: Int
  ) {
    let c = lora.inFeatures
    let oc = lora.outFeatures
    let r = lora.rank
    let scale = lora.scale
    var shareA = [[Float]](repeating: [], count: batch)
    var shareB = [[Float]](repeating: [], count: batch)
    var shareAttention = [FusionAttentionWeights](
      repeating: .zeros(rank: r), count: attention == nil ? 0 : batch)
    nonisolated(unsafe) let dinp = dinp
    shareA.withUnsafeMutableBufferPointer { shareA in
      shareB.withUnsafeMutableBufferPointer { shareB in
        shareAttention.withUnsafeMutableBufferPointer { shareAttention in
          nonisolated(unsafe) let (sa, sb, sat) = (shareA, shareB, shareAttention)
          Parallel.forEach(batch, workers: workers) { i in
            let first = i * t
            let (s, tt, xs, xt, mask) = project(
              target: target, sequence: i, length: t, dropoutSeed: dropoutSeed)
            let (f, saved) = fuse(s, tt, sequence: i, length: t, dropoutSeed: dropoutSeed)
            let g = dout + first * oc
            // dF = scale · dout·B; dB = scale · doutᵀ·F
            var df = [Float](repeating: 0, count: t * r)
            var db = [Float](repeating: 0, count: oc * r)
            lora.b.values.withUnsafeBufferPointer { b in
              BLAS.sgemm(
                transA: false, transB: false, m: t, n: r, k: oc, alpha: scale, a: g, lda: oc,
                b: b.baseAddress!, ldb: r, beta: 0, c: &df, ldc: r)
            }
            f.withUnsafeBufferPointer { f in
              BLAS.sgemm(
                transA: true, transB: false, m: oc, n: r, k: t, alpha: scale, a: g, lda: oc,
                b: f.baseAddress!, ldb: r, beta: 0, c: &db, ldc: r)
            }
            var attentionShare = FusionAttentionWeights.zeros(rank: r)
            let (ds, dt) = function.backward(
              outputGradient: df, source: s, target: tt, length: t,
              keyMask: function.causal ? keyMask[i] : nil, attention: attention?.weights,
              saved: saved, attentionGradients: &attentionShare,
              dropoutSeed: dropoutSeed.map { Kernels.mix64($0 ^ 0xA77E) },
              dropoutOffset: UInt64(i * function.heads * t * t))
            // dA = dSᵀ·drop(x_s) + dTᵀ·drop(x_t)
            var da = [Float](repeating: 0, count: r * c)
            func addInput(_ d: [Float], _ x: [Float]?, _ raw: UnsafePointer<Float>) {
              func run(_ p: UnsafePointer<Float>) {
                BLAS.sgemm(
                  transA: true, transB: false, m: r, n: c, k: t, alpha: 1, a: d, lda: r, b: p,
                  ldb: c, beta: 1, c: &da, ldc: c)
              }
              if let x {
                x.withUnsafeBufferPointer { run($0.baseAddress!) }
              } else {
                run(raw + first * c)
              }
            }
            guard case .states(let states) = source else {
              preconditionFailure("a backward pass needs the source states")
            }
            addInput(ds, xs, states)
            addInput(dt, xt, target)
            if let dinp {
              // dx_t += (dT·A) ⊙ mask
              var dx = [Float](repeating: 0, count: t * c)
              lora.a.values.withUnsafeBufferPointer { a in
                BLAS.sgemm(
                  transA: false, transB: false, m: t, n: c, k: r, alpha: 1, a: dt, lda: r,
                  b: a.baseAddress!, ldb: c, beta: 0, c: &dx, ldc: c)
              }
              let rows = dinp + first * c
              if let mask {
                for j in 0..<(t * c) { rows[j] += dx[j] * mask[j] }
              } else {
                for j in 0..<(t * c) { rows[j] += dx[j] }
              }
            }
            sa[i] = da
            sb[i] = db
            if !sat.isEmpty { sat[i] = attentionShare }
          }
        }
      }
    }
    lora.a.gradient.withUnsafeMutableBufferPointer { ga in
      lora.b.gradient.withUnsafeMutableBufferPointer { gb in
        for i in 0..<batch {
          for j in 0..<(r * c) { ga[j] += shareA[i][j] }
          for j in 0..<(oc * r) { gb[j] += shareB[i][j] }
        }
      }
    }
    if let attention { for share in shareAttention { attention.accumulate(share) } }
  }
}
