import FlareAdapters
import FlareCore
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareModels

/// FLARE's fused LoRA layer `y = x_t·Wᵀ + b + s·f(A·x_s, A·x_t)·Bᵀ`, composed here from
/// ``FusionFunction`` and plain matrix products, against PyTorch autograd in float64
/// (`Fixtures/fusion/make_fusion_goldens.py`, the reference's layer written from FLARE.md §2):
/// the output, the fusion's output `F`, and the gradients of `A` (from both paths), `B`, the
/// target input and the cross-attention weights, each within 2e-5 of the largest magnitude of
/// the expected tensor (float32 sums of at most a few dozen terms).
@Suite("FLARE fusion functions against PyTorch autograd")
struct FusionTests {
  static let tolerance = 2e-5

  struct Layer {
    let n, l, din, dout, r, heads: Int
    let causal: Bool
    let xt, xs, w, b, a, bm, dy: [Float]
    let mask: [Int]
    let attention: FusionAttentionWeights?
  }

  static func load(_ golden: BackwardGolden, _ name: String) throws -> Layer {
    let sizes = try golden.ints("\(name).sizes")
    let attention: FusionAttentionWeights? =
      name.hasPrefix("cross-attention")
      ? FusionAttentionWeights(
        queryWeight: try golden.floats("\(name).wq"), queryBias: try golden.floats("\(name).bq"),
        keyWeight: try golden.floats("\(name).wk"), keyBias: try golden.floats("\(name).bk"),
        valueWeight: try golden.floats("\(name).wv"), valueBias: try golden.floats("\(name).bv"))
      : nil
    return Layer(
      n: sizes[0], l: sizes[1], din: sizes[2], dout: sizes[3], r: sizes[4], heads: sizes[5],
      causal: sizes[6] != 0, xt: try golden.floats("\(name).x_t"),
      xs: try golden.floats("\(name).x_s"), w: try golden.floats("\(name).W"),
      b: try golden.floats("\(name).b"), a: try golden.floats("\(name).A"),
      bm: try golden.floats("\(name).B"), dy: try golden.floats("\(name).dy"),
      mask: try golden.ints("\(name).mask"), attention: attention)
  }

  /// `x[rows×k]·M[m×k]ᵀ`.
  static func timesTransposed(_ x: [Float], _ m: [Float], rows: Int, k: Int, m outs: Int)
    -> [Float]
  {
    var y = [Float](repeating: 0, count: rows * outs)
    for i in 0..<rows {
      for o in 0..<outs {
        var sum: Float = 0
        for c in 0..<k { sum += x[i * k + c] * m[o * k + c] }
        y[i * outs + o] = sum
      }
    }
    return y
  }

  static let cases = [
    "add", "mul", "add_relu", "matmul", "matmul_relu", "cross-attention",
    "cross-attention-1head", "matmul-causal", "matmul_relu-causal", "cross-attention-causal",
  ]

  @Test("forward and gradients of the fused layer", arguments: cases)
  func fusedLayer(_ name: String) throws {
    let golden = try BackwardGolden(path: "fusion/goldens.safetensors")
    defer { golden.free() }
    let g = try Self.load(golden, name)
    let fusionName = name.replacingOccurrences(of: "-causal", with: "")
      .replacingOccurrences(of: "-1head", with: "")
    let fusion = FusionFunction(
      fusion: try #require(FLAREConfig.Fusion(rawValue: fusionName)), rank: g.r,
      causal: g.causal, heads: g.heads)
    let scale: Float = 2
    let (l, r, din, dout) = (g.l, g.r, g.din, g.dout)
    var y: [Float] = []
    var fs: [Float] = []
    var da = [Float](repeating: 0, count: r * din)
    var db = [Float](repeating: 0, count: dout * r)
    var dxt: [Float] = []
    var dattention = FusionAttentionWeights.zeros(rank: r)
    for seq in 0..<g.n {
      let rows = (seq * l * din)..<((seq + 1) * l * din)
      let xt = Array(g.xt[rows])
      let xs = Array(g.xs[rows])
      let dy = Array(g.dy[(seq * l * dout)..<((seq + 1) * l * dout)])
      let keyMask: [Bool]? = g.causal ? (0..<l).map { g.mask[seq * l + $0] != 0 } : nil
      let s = Self.timesTransposed(xs, g.a, rows: l, k: din, m: r)
      let t = Self.timesTransposed(xt, g.a, rows: l, k: din, m: r)
      let (f, saved) = fusion.forward(
        source: s, target: t, length: l, keyMask: keyMask, attention: g.attention)
      fs += f
      // y = x_t·Wᵀ + b + scale·F·Bᵀ
      let base = Self.timesTransposed(xt, g.w, rows: l, k: din, m: dout)
      let lora = Self.timesTransposed(f, g.bm, rows: l, k: r, m: dout)
      y += (0..<(l * dout)).map { base[$0] + g.b[$0 % dout] + scale * lora[$0] }
      // dF = scale·dy·B; dB += scale·dyᵀ·F
      var df = [Float](repeating: 0, count: l * r)
      for j in 0..<l {
        for o in 0..<dout {
          let gy = scale * dy[j * dout + o]
          for c in 0..<r {
            df[j * r + c] += gy * g.bm[o * r + c]
            db[o * r + c] += gy * f[j * r + c]
          }
        }
      }
      let (ds, dt) = fusion.backward(
        outputGradient: df, source: s, target: t, length: l, keyMask: keyMask,
        attention: g.attention, saved: saved, attentionGradients: &dattention)
      // dA += dSᵀ·x_s + dTᵀ·x_t; dx_t = dy·W + dT·A
      var dx = [Float](repeating: 0, count: l * din)
      for j in 0..<l {
        for c in 0..<r {
          for i in 0..<din {
            da[c * din + i] += ds[j * r + c] * xs[j * din + i] + dt[j * r + c] * xt[j * din + i]
            dx[j * din + i] += dt[j * r + c] * g.a[c * din + i]
          }
        }
        for o in 0..<dout {
          for i in 0..<din { dx[j * din + i] += dy[j * dout + o] * g.w[o * din + i] }
        }
      }
      dxt += dx
    }
    func check(_ got: [Float], _ key: String) throws {
      let expected = try golden.floats("\(name).\(key)")
      let error = relativeError(got, expected)
      #expect(error <= Self.tolerance, "\(name) \(key): \(error)")
    }
    try check(fs, "F")
    try check(y, "y")
    try check(da, "dA")
    try check(db, "dB")
    try check(dxt, "dx_t")
    if g.attention != nil {
      try check(dattention.queryWeight, "dwq")
      try check(dattention.queryBias, "dbq")
      try check(dattention.keyWeight, "dwk")
      // The key bias adds `q·b_k` to every score of a row, which softmax ignores: its gradient
      // is zero up to rounding (PyTorch's is ~1e-17), so it is checked against the scale of the
      // query bias's gradient instead.
      let scaleOfBias = try golden.floats("\(name).dbq").map { abs(Double($0)) }.max() ?? 1
      let keyBias = dattention.keyBias.map { abs(Double($0)) }.max() ?? 0
      #expect(keyBias <= Self.tolerance * scaleOfBias, "\(name) dbk: \(keyBias)")
      try check(dattention.valueWeight, "dwv")
      try check(dattention.valueBias, "dbv")
    }
  }

  /// The causal variants: `F[j]` does not change when target positions after `j` change.
  @Test(
    "causal fusions: position j does not see later target positions",
    arguments: [
      FLAREConfig.Fusion.matmul, .matmulReLU, .crossAttention,
    ])
  func causality(_ kind: FLAREConfig.Fusion) {
    let (l, r) = (6, 4)
    var generator = SplitMix64(seed: 7)
    let s = (0..<(l * r)).map { _ in generator.nextSigned() }
    let t = (0..<(l * r)).map { _ in generator.nextSigned() }
    let attention = FusionAttentionWeights.random(rank: r, &generator)
    for causal in [true, false] {
      let fusion = FusionFunction(fusion: kind, rank: r, causal: causal, heads: 2)
      let before = fusion.forward(source: s, target: t, length: l, attention: attention).output
      var changed = t
      for i in (3 * r)..<(l * r) { changed[i] += 1 }  // positions 3, 4, 5
      let after = fusion.forward(source: s, target: changed, length: l, attention: attention)
        .output
      let early = 0..<(3 * r)
      if causal {
        #expect(Array(before[early]) == Array(after[early]), "\(kind) causal")
      } else {
        // The reference's form mixes all positions: early outputs do change.
        #expect(Array(before[early]) != Array(after[early]), "\(kind) non-causal")
      }
    }
  }

  /// Attention dropout: a seeded mask, the same in forward and backward; the gradients match
  /// central finite differences of the (deterministic) dropped forward within 2e-3 relative.
  @Test("cross-attention dropout: gradients match finite differences")
  func dropoutGradients() {
    let (l, r) = (4, 4)
    var generator = SplitMix64(seed: 11)
    let s = (0..<(l * r)).map { _ in generator.nextSigned() }
    let t = (0..<(l * r)).map { _ in generator.nextSigned() }
    let df = (0..<(l * r)).map { _ in generator.nextSigned() }
    let w = FusionAttentionWeights.random(rank: r, &generator)
    let fusion = FusionFunction(
      fusion: .crossAttention, rank: r, heads: 2, attentionDropout: 0.3)
    func loss(_ s: [Float], _ t: [Float]) -> Double {
      let f = fusion.forward(source: s, target: t, length: l, attention: w, dropoutSeed: 5)
        .output
      return zip(f, df).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
    }
    let (f, saved) = fusion.forward(source: s, target: t, length: l, attention: w, dropoutSeed: 5)
    let plain = fusion.forward(source: s, target: t, length: l, attention: w).output
    #expect(f != plain, "the mask drops something")
    var dw = FusionAttentionWeights.zeros(rank: r)
    let (ds, dt) = fusion.backward(
      outputGradient: df, source: s, target: t, length: l, attention: w, saved: saved,
      attentionGradients: &dw, dropoutSeed: 5)
    let h: Float = 1e-2
    /// The central difference of the loss in element `i` of the source (or the target).
    func numeric(_ i: Int, source: Bool) -> Double {
      var (plus, minus) = source ? (s, s) : (t, t)
      plus[i] += h
      minus[i] -= h
      let (up, down) =
        source ? (loss(plus, t), loss(minus, t)) : (loss(s, plus), loss(s, minus))
      return (up - down) / Double(2 * h)
    }
    var worst = 0.0
    for i in 0..<(l * r) {
      worst = max(worst, abs(numeric(i, source: true) - Double(ds[i])))
      worst = max(worst, abs(numeric(i, source: false) - Double(dt[i])))
    }
    let largest = (ds + dt).map { abs(Double($0)) }.max() ?? 1
    #expect(worst / largest <= 2e-3, "finite differences: \(worst / largest)")
  }
}

extension SplitMix64 {
  /// A test input in [−1, 1).
  mutating func nextSigned() -> Float { Float(2 * nextUnit() - 1) }
}

extension FusionAttentionWeights {
  /// Weights and biases drawn from `generator` in [−1, 1).
  static func random(rank r: Int, _ generator: inout SplitMix64) -> FusionAttentionWeights {
    func draw(_ count: Int) -> [Float] { (0..<count).map { _ in generator.nextSigned() } }
    return FusionAttentionWeights(
      queryWeight: draw(r * r), queryBias: draw(r), keyWeight: draw(r * r), keyBias: draw(r),
      valueWeight: draw(r * r), valueBias: draw(r))
  }
}
