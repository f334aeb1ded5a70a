import FlareCore
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareModels

/// A run of F32 values owned by a ``BackwardGolden`` (valid until its `free()`).
struct Buffer {
  let pointer: UnsafeMutablePointer<Float>
  let count: Int

  var values: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
}

/// `Fixtures/backward/goldens.safetensors`, written by `Fixtures/backward/make_goldens.py`:
/// PyTorch autograd (float64) on seeded F32 inputs. It also owns the buffers a test passes to
/// the kernels; a test frees them with `defer { golden.free() }`.
final class BackwardGolden {
  let source: WeightSource
  private var allocations: [UnsafeMutablePointer<Float>] = []

  init(path: String = "backward/goldens.safetensors") throws {
    source = try WeightSource(path: fixturePath(path))
  }

  func free() {
    for pointer in allocations { pointer.deallocate() }
    allocations = []
  }

  func floats(_ name: String) throws -> [Float] {
    // The values of a decoded (non-F32) tensor live as long as its Weight.
    let weight = try source.weight(name)
    return withExtendedLifetime(weight) { Array(weight.values) }
  }
  func ints(_ name: String) throws -> [Int] { try floats(name).map { Int($0) } }
  func int(_ name: String) throws -> Int { try #require(try ints(name).first) }
  func shape(_ name: String) throws -> [Int] { try source.weight(name).shape }

  /// A new buffer holding `values`.
  func buffer(_ values: [Float]) -> Buffer {
    let pointer = UnsafeMutablePointer<Float>.allocate(capacity: max(values.count, 1))
    pointer.initialize(repeating: 0, count: max(values.count, 1))
    for (i, value) in values.enumerated() { pointer[i] = value }
    allocations.append(pointer)
    return Buffer(pointer: pointer, count: values.count)
  }

  /// A new buffer holding the golden tensor `name`.
  func buffer(_ name: String) throws -> Buffer { buffer(try floats(name)) }

  /// A new buffer of `count` copies of `value`.
  func filled(_ value: Float, count: Int) -> Buffer {
    buffer([Float](repeating: value, count: count))
  }
}

/// The largest absolute difference, relative to the largest magnitude of `expected`.
func relativeError(_ got: [Float], _ expected: [Float]) -> Double {
  precondition(got.count == expected.count, "\(got.count) vs \(expected.count) values")
  let scale = expected.reduce(0) { max($0, abs(Double($1))) }
  let worst = zip(got, expected).reduce(0) { max($0, abs(Double($1.0) - Double($1.1))) }
  return worst / max(scale, 1e-30)
}

/// Checks `got` against the golden `name` (plus `offset`, the value the gradient buffer held
/// before the kernel accumulated into it).
func expectClose(
  _ got: [Float], _ golden: BackwardGolden, _ name: String, tolerance: Double, offset: Float = 0,
  sourceLocation: SourceLocation = #_sourceLocation
) throws {
  let expected = try golden.floats(name).map { $0 + offset }
  let error = relativeError(got, expected)
  #expect(
    error <= tolerance, "\(name): relative error \(error) > \(tolerance)",
    sourceLocation: sourceLocation)
}

// Oracle: PyTorch autograd in float64 (make_goldens.py). Error figure: the largest absolute
// difference over a tensor divided by the tensor's largest magnitude. The tolerances hold F32
// arithmetic to a few ulp of accumulated rounding; each gradient buffer starts at `prior` to
// check that the kernels accumulate (`+=`) rather than overwrite.
@Suite("backward kernels against PyTorch autograd")
struct BackwardTests {
  /// Elementwise kernels and gathers (measured worst 4.9e-7: SwiGLU's gate gradient, through
  /// the 8-lane exp).
  static let elementwise = 2e-6
  /// Reductions over a row: norms, softmax, pooling, cross-entropy (measured worst 1.4e-7).
  static let rowwise = 1e-6
  /// Matrix products and attention, F32 BLAS (measured worst 1.7e-7).
  static let products = 1e-6
  static let prior: Float = 0.25

  @Test("matmul: input gradient (frozen weight), weight and bias gradients (trainable)")
  func matmul() throws {
    let g = try BackwardGolden()
    defer { g.free() }
    for name in ["matmul", "matmul1"] {
      let (n, c) = (try g.shape("\(name).x")[0], try g.shape("\(name).x")[1])
      let oc = try g.shape("\(name).w")[0]
      let (x, w, b, dy) = (
        try g.buffer("\(name).x"), try g.buffer("\(name).w"), try g.buffer("\(name).b"),
        try g.buffer("\(name).dy")
      )
      let out = g.filled(0, count: n * oc)
      Kernels.matmul(
        out: out.pointer, inp: x.pointer, weight: w.pointer, bias: b.pointer, rows: n,
        inFeatures: c, outFeatures: oc)
      try expectClose(out.values, g, "\(name).out", tolerance: Self.products)
      let dx = g.filled(Self.prior, count: n * c)
      Kernels.matmulBackwardInput(
        dinp: dx.pointer, dout: dy.pointer, weight: w.pointer, rows: n, inFeatures: c,
        outFeatures: oc)
      try expectClose(dx.values, g, "\(name).dx", tolerance: Self.products, offset: Self.prior)
      let dw = g.filled(Self.prior, count: oc * c)
      let db = g.filled(Self.prior, count: oc)
      Kernels.matmulBackwardWeight(
        dweight: dw.pointer, dbias: db.pointer, dout: dy.pointer, inp: x.pointer, rows: n,
        inFeatures: c, outFeatures: oc)
      try expectClose(dw.values, g, "\(name).dw", tolerance: Self.products, offset: Self.prior)
      try expectClose(db.values, g, "\(name).db", tolerance: Self.products, offset: Self.prior)
    }
  }

  @Test("LoRA on a frozen linear layer: Linear's forward, dA, dB, bias and input gradients")
  func lora() throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let (n, c) = (try g.shape("lora.x")[0], try g.shape("lora.x")[1])
    let (oc, r) = (try g.shape("lora.b")[0], try g.shape("lora.b")[1])
    let scale = try #require(try g.floats("lora.scale").first)
    var layer = Linear(
      path: "q", weight: Weight(name: "w", shape: [oc, c], values: try g.floats("lora.w")))
    layer.adapters = [
      RuntimeLoRA(
        a: Weight(name: "a", shape: [r, c], values: try g.floats("lora.a")),
        b: Weight(name: "b", shape: [oc, r], values: try g.floats("lora.b")), scale: scale,
        bias: Weight(name: "bias", shape: [oc], values: try g.floats("lora.bias")), source: "test")
    ]
    let (x, w, a, b, dy) = (
      try g.buffer("lora.x"), try g.buffer("lora.w"), try g.buffer("lora.a"),
      try g.buffer("lora.b"), try g.buffer("lora.dy")
    )
    let out = g.filled(0, count: n * oc)
    layer.forward(out: out.pointer, inp: x.pointer, rows: n)
    try expectClose(out.values, g, "lora.out", tolerance: Self.products)
    let dx = g.filled(Self.prior, count: n * c)
    let da = g.filled(Self.prior, count: r * c)
    let db = g.filled(Self.prior, count: oc * r)
    let dbias = g.filled(Self.prior, count: oc)
    Kernels.matmulBackwardInput(
      dinp: dx.pointer, dout: dy.pointer, weight: w.pointer, rows: n, inFeatures: c,
      outFeatures: oc)
    Kernels.loraBackward(
      dinp: dx.pointer, da: da.pointer, db: db.pointer, dbias: dbias.pointer, dout: dy.pointer,
      inp: x.pointer, a: a.pointer, b: b.pointer, scale: scale, rows: n, inFeatures: c,
      outFeatures: oc, rank: r)
    try expectClose(dx.values, g, "lora.dx", tolerance: Self.products, offset: Self.prior)
    try expectClose(da.values, g, "lora.da", tolerance: Self.products, offset: Self.prior)
    try expectClose(db.values, g, "lora.db", tolerance: Self.products, offset: Self.prior)
    try expectClose(dbias.values, g, "lora.dbias", tolerance: Self.products, offset: Self.prior)
  }

  @Test("embedding lookups: scatter-add of repeated tokens, BERT's three tables")
  func embeddings() throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let tokens = try g.ints("embedding.tokens")
    let (v, c) = (try g.shape("embedding.table")[0], try g.shape("embedding.table")[1])
    let dy = try g.buffer("embedding.dy")
    let dtable = g.filled(Self.prior, count: v * c)
    Kernels.embeddingBackward(
      dtable: dtable.pointer, tokens: tokens, dout: dy.pointer, rows: tokens.count, channels: c)
    try expectClose(
      dtable.values, g, "embedding.dtable", tolerance: Self.elementwise, offset: Self.prior)

    let (ids, positions, types) = (
      try g.ints("embsum.tokens"), try g.ints("embsum.positions"), try g.ints("embsum.types")
    )
    let (word, pos, type) = (
      try g.buffer("embsum.word"), try g.buffer("embsum.pos"), try g.buffer("embsum.type")
    )
    let n = ids.count
    let out = g.filled(0, count: n * c)
    Kernels.embeddingSum(
      out: out.pointer, tokens: ids, positions: positions, types: types, word: word.pointer,
      position: pos.pointer, tokenType: type.pointer, rows: n, channels: c)
    try expectClose(out.values, g, "embsum.out", tolerance: Self.elementwise)
    let grads = [word.count, pos.count, type.count].map { g.filled(Self.prior, count: $0) }
    let dsum = try g.buffer("embsum.dy")
    Kernels.embeddingSumBackward(
      dword: grads[0].pointer, dposition: grads[1].pointer, dtokenType: grads[2].pointer,
      tokens: ids, positions: positions, types: types, dout: dsum.pointer, rows: n, channels: c)
    for (grad, name) in zip(grads, ["dword", "dpos", "dtype"]) {
      try expectClose(
        grad.values, g, "embsum.\(name)", tolerance: Self.elementwise, offset: Self.prior)
    }
  }

  @Test("RMSNorm and LayerNorm: outputs, saved statistics, input and weight gradients")
  func norms() throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let (n, c) = (try g.shape("rmsnorm.x")[0], try g.shape("rmsnorm.x")[1])
    let (x, w, dy) = (
      try g.buffer("rmsnorm.x"), try g.buffer("rmsnorm.w"), try g.buffer("rmsnorm.dy")
    )
    let out = g.filled(0, count: n * c)
    let rstd = g.filled(0, count: n)
    Kernels.rmsnorm(
      out: out.pointer, rstd: rstd.pointer, inp: x.pointer, weight: w.pointer, rows: n,
      channels: c, eps: try g.floats("rmsnorm.eps")[0])
    try expectClose(out.values, g, "rmsnorm.out", tolerance: Self.rowwise)
    try expectClose(rstd.values, g, "rmsnorm.rstd", tolerance: Self.rowwise)
    let dx = g.filled(Self.prior, count: n * c)
    let dw = g.filled(Self.prior, count: c)
    Kernels.rmsnormBackward(
      dinp: dx.pointer, dweight: dw.pointer, dout: dy.pointer, inp: x.pointer, weight: w.pointer,
      rstd: rstd.pointer, rows: n, channels: c)
    try expectClose(dx.values, g, "rmsnorm.dx", tolerance: Self.rowwise, offset: Self.prior)
    try expectClose(dw.values, g, "rmsnorm.dw", tolerance: Self.rowwise, offset: Self.prior)

    let (lx, lw, lb, ldy) = (
      try g.buffer("layernorm.x"), try g.buffer("layernorm.w"), try g.buffer("layernorm.b"),
      try g.buffer("layernorm.dy")
    )
    let lout = g.filled(0, count: n * c)
    let mean = g.filled(0, count: n)
    let lrstd = g.filled(0, count: n)
    Kernels.layernorm(
      out: lout.pointer, mean: mean.pointer, rstd: lrstd.pointer, inp: lx.pointer,
      weight: lw.pointer, bias: lb.pointer, rows: n, channels: c,
      eps: try g.floats("layernorm.eps")[0])
    try expectClose(lout.values, g, "layernorm.out", tolerance: Self.rowwise)
    try expectClose(mean.values, g, "layernorm.mean", tolerance: Self.rowwise)
    try expectClose(lrstd.values, g, "layernorm.rstd", tolerance: Self.rowwise)
    let ldx = g.filled(Self.prior, count: n * c)
    let ldw = g.filled(Self.prior, count: c)
    let ldb = g.filled(Self.prior, count: c)
    Kernels.layernormBackward(
      dinp: ldx.pointer, dweight: ldw.pointer, dbias: ldb.pointer, dout: ldy.pointer,
      inp: lx.pointer, weight: lw.pointer, mean: mean.pointer, rstd: lrstd.pointer, rows: n,
      channels: c)
    try expectClose(ldx.values, g, "layernorm.dx", tolerance: Self.rowwise, offset: Self.prior)
    try expectClose(ldw.values, g, "layernorm.dw", tolerance: Self.rowwise, offset: Self.prior)
    try expectClose(ldb.values, g, "layernorm.db", tolerance: Self.rowwise, offset: Self.prior)
  }

  // Oracle for the tables: float64 angles from transformers' F32 inv_freq, checked in the
  // script against LlamaRotaryEmbedding for the real tokens. Positions count real tokens
  // (left padding starts the sequence at 0), as LlamaModel.forward assigns them.
  @Test(
    "RoPE in both conventions: tables, rotation and its backward", arguments: ["halves", "pairs"])
  func rope(convention: String) throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let (heads, d) = (try g.int("rope.heads"), try g.int("rope.head_dim"))
    let positions = try g.ints("rope.positions")
    let n = positions.count
    let tables = Kernels.ropeTables(
      positions: positions, headDim: d, theta: try g.floats("rope.theta")[0])
    #expect(relativeError(tables.cos, try g.floats("rope.cos")) <= 1e-6)
    #expect(relativeError(tables.sin, try g.floats("rope.sin")) <= 1e-6)
    let (cos, sin) = (try g.buffer("rope.cos"), try g.buffer("rope.sin"))
    let style: Kernels.RopeStyle = convention == "halves" ? .halves : .pairs
    let x = try g.buffer("rope.x")
    Kernels.rope(
      x.pointer, rows: n, stride: heads * d, heads: heads, headDim: d, cos: cos.pointer,
      sin: sin.pointer, style: style)
    try expectClose(x.values, g, "rope.out_\(convention)", tolerance: Self.elementwise)
    let dx = try g.buffer("rope.dy")
    Kernels.ropeBackward(
      dx.pointer, rows: n, stride: heads * d, heads: heads, headDim: d, cos: cos.pointer,
      sin: sin.pointer, style: style)
    try expectClose(dx.values, g, "rope.dx_\(convention)", tolerance: Self.elementwise)
  }

  /// Runs one attention golden through the forward kernels (per head, as the models call them)
  /// and the layer backward with `workers` threads; returns out, probs, dq, dk, dv.
  static func runAttention(_ g: BackwardGolden, _ name: String, causal: Bool, workers: Int) throws
    -> [[Float]]
  {
    let shape = try g.shape("\(name).q")
    let (batch, t) = (shape[0], shape[1])
    let (heads, kvHeads, d) = (
      try g.int("\(name).heads"), try g.int("\(name).kv_heads"), try g.int("\(name).head_dim")
    )
    let mask = try g.ints("\(name).mask").map { $0 != 0 }
    let keep = g.source.contains("\(name).keep") ? try g.buffer("\(name).keep") : nil
    let (q, k, v, dy) = (
      try g.buffer("\(name).q"), try g.buffer("\(name).k"), try g.buffer("\(name).v"),
      try g.buffer("\(name).dy")
    )
    let (qDim, kvDim, group) = (heads * d, kvHeads * d, heads / kvHeads)
    let out = g.filled(0, count: batch * t * qDim)
    let probs = g.filled(0, count: batch * heads * t * t)
    for b in 0..<batch {
      let padding = (0..<t).filter { !mask[b * t + $0] }
      for head in 0..<heads {
        let qOffset = b * t * qDim + head * d
        let kvOffset = b * t * kvDim + (head / group) * d
        let pOffset = (b * heads + head) * t * t
        if causal {
          Kernels.causalAttentionHead(
            out: out.pointer + qOffset, outStride: qDim, q: q.pointer + qOffset, qStride: qDim,
            k: k.pointer + kvOffset, v: v.pointer + kvOffset, kvStride: kvDim, queries: t,
            keys: t, headDim: d, probs: probs.pointer + pOffset, causalOffset: 0,
            padding: padding)
        } else {
          Kernels.attentionHead(
            out: out.pointer + qOffset, outStride: qDim, q: q.pointer + qOffset, qStride: qDim,
            k: k.pointer + kvOffset, v: v.pointer + kvOffset, kvStride: kvDim, queries: t,
            keys: t, headDim: d, probs: probs.pointer + pOffset,
            dropout: keep.map { UnsafePointer($0.pointer + pOffset) }
          ) { _, key in mask[b * t + key] }
        }
      }
    }
    let dq = g.filled(prior, count: q.count)
    let dk = g.filled(prior, count: k.count)
    let dv = g.filled(prior, count: v.count)
    Kernels.attentionBackward(
      dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, dout: dy.pointer, q: q.pointer,
      k: k.pointer, v: v.pointer, probs: probs.pointer,
      dropout: keep.map { UnsafePointer($0.pointer) },
      batch: batch, length: t, heads: heads, kvHeads: kvHeads, headDim: d, workers: workers)
    return [out.values, probs.values, dq.values, dk.values, dv.values]
  }

  // attn_causal: 4 query heads over 2 key/value heads (transformers' repeat_kv), one sequence
  // left-padded by 2 (its first two queries see no key: zero output, no gradient), one
  // right-padded. attn_bidir: the encoder's padding mask, left and right. attn_dropout: the
  // same with a keep mask (p 0.3) shared with the oracle.
  @Test(
    "attention: causal + GQA + left/right padding, bidirectional with padding, attention dropout",
    arguments: [("attn_causal", true), ("attn_bidir", false), ("attn_dropout", false)])
  func attention(name: String, causal: Bool) throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let one = try Self.runAttention(g, name, causal: causal, workers: 1)
    for (values, key) in zip(one, ["out", "probs"]) {
      try expectClose(values, g, "\(name).\(key)", tolerance: Self.products)
    }
    for (values, key) in zip(one.dropFirst(2), ["dq", "dk", "dv"]) {
      try expectClose(values, g, "\(name).\(key)", tolerance: Self.products, offset: Self.prior)
    }
    // Threads split the work by (sequence, key/value head): identical results.
    let two = try Self.runAttention(g, name, causal: causal, workers: 2)
    #expect(one == two)
  }

  @Test("softmax, SwiGLU, exact-erf GELU, tanh, residual add and dropout")
  func elementwise() throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let sx = try g.buffer("softmax.x")
    let (rows, channels) = (try g.shape("softmax.x")[0], try g.shape("softmax.x")[1])
    Kernels.softmax(sx.pointer, rows: rows, channels: channels)
    try expectClose(sx.values, g, "softmax.out", tolerance: Self.rowwise)
    let sdx = g.filled(Self.prior, count: sx.count)
    Kernels.softmaxBackward(
      dinp: sdx.pointer, probs: sx.pointer, dout: try g.buffer("softmax.dy").pointer, rows: rows,
      channels: channels)
    try expectClose(sdx.values, g, "softmax.dx", tolerance: Self.rowwise, offset: Self.prior)

    let (gate, up, dy) = (
      try g.buffer("swiglu.gate"), try g.buffer("swiglu.up"), try g.buffer("swiglu.dy")
    )
    let count = gate.count
    let out = g.filled(0, count: count)
    Kernels.swiglu(out: out.pointer, gate: gate.pointer, up: up.pointer, count: count)
    try expectClose(out.values, g, "swiglu.out", tolerance: Self.elementwise)
    let dgate = g.filled(Self.prior, count: count)
    let dup = g.filled(Self.prior, count: count)
    Kernels.swigluBackward(
      dgate: dgate.pointer, dup: dup.pointer, gate: gate.pointer, up: up.pointer,
      dout: dy.pointer, count: count)
    try expectClose(
      dgate.values, g, "swiglu.dgate", tolerance: Self.elementwise, offset: Self.prior)
    try expectClose(dup.values, g, "swiglu.dup", tolerance: Self.elementwise, offset: Self.prior)

    for name in ["gelu", "tanh"] {
      let x = try g.buffer("\(name).x")
      let y = try g.buffer("\(name).x")
      if name == "gelu" {
        Kernels.gelu(y.pointer, count: y.count)
      } else {
        Kernels.tanh(y.pointer, count: y.count)
      }
      try expectClose(y.values, g, "\(name).out", tolerance: Self.elementwise)
      let dx = g.filled(Self.prior, count: x.count)
      let dout = try g.buffer("\(name).dy")
      if name == "gelu" {
        Kernels.geluBackward(dinp: dx.pointer, inp: x.pointer, dout: dout.pointer, count: x.count)
      } else {
        Kernels.tanhBackward(dinp: dx.pointer, out: y.pointer, dout: dout.pointer, count: x.count)
      }
      try expectClose(dx.values, g, "\(name).dx", tolerance: Self.elementwise, offset: Self.prior)
    }

    let rdy = try g.buffer("residual.dy")
    let da = g.filled(Self.prior, count: rdy.count)
    let db = g.filled(Self.prior, count: rdy.count)
    Kernels.residualBackward(da: da.pointer, db: db.pointer, dout: rdy.pointer, count: rdy.count)
    try expectClose(da.values, g, "residual.da", tolerance: Self.elementwise, offset: Self.prior)
    try expectClose(db.values, g, "residual.db", tolerance: Self.elementwise, offset: Self.prior)

    let (dxIn, keep, ddy) = (
      try g.buffer("dropout.x"), try g.buffer("dropout.keep"), try g.buffer("dropout.dy")
    )
    let dropped = g.filled(0, count: dxIn.count)
    Kernels.dropout(out: dropped.pointer, inp: dxIn.pointer, mask: keep.pointer, count: dxIn.count)
    try expectClose(dropped.values, g, "dropout.out", tolerance: Self.elementwise)
    let ddx = g.filled(Self.prior, count: dxIn.count)
    Kernels.dropoutBackward(
      dinp: ddx.pointer, dout: ddy.pointer, mask: keep.pointer, count: dxIn.count)
    try expectClose(ddx.values, g, "dropout.dx", tolerance: Self.elementwise, offset: Self.prior)
  }

  @Test("pooling: masked mean (left and right padding) and row gathers (CLS, last token)")
  func pooling() throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let shape = try g.shape("meanpool.h")
    let (batch, t, c) = (shape[0], shape[1], shape[2])
    let mask = try g.ints("meanpool.mask").map { $0 != 0 }
    let h = try g.buffer("meanpool.h")
    let out = g.filled(0, count: batch * c)
    Kernels.meanPool(
      out: out.pointer, inp: h.pointer, mask: mask, batch: batch, length: t, channels: c)
    try expectClose(out.values, g, "meanpool.out", tolerance: Self.rowwise)
    let dh = g.filled(Self.prior, count: h.count)
    Kernels.meanPoolBackward(
      dinp: dh.pointer, dout: try g.buffer("meanpool.dy").pointer, mask: mask, batch: batch,
      length: t, channels: c)
    try expectClose(dh.values, g, "meanpool.dh", tolerance: Self.rowwise, offset: Self.prior)

    let indices = try g.ints("gather.indices")
    let gathered = g.filled(0, count: indices.count * c)
    let gh = try g.buffer("gather.h")
    Kernels.gatherRows(
      out: gathered.pointer, inp: gh.pointer, indices: indices, count: indices.count, channels: c)
    try expectClose(gathered.values, g, "gather.out", tolerance: 0)
    let gdh = g.filled(Self.prior, count: gh.count)
    Kernels.gatherRowsBackward(
      dinp: gdh.pointer, dout: try g.buffer("gather.dy").pointer, indices: indices,
      count: indices.count, channels: c)
    try expectClose(gdh.values, g, "gather.dh", tolerance: Self.elementwise, offset: Self.prior)
  }

  @Test("classification cross-entropy: mean over the examples and its gradient")
  func classification() throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let (n, k) = (try g.shape("classify.logits")[0], try g.shape("classify.logits")[1])
    let labels = try g.ints("classify.labels")
    let dlogits = g.filled(Self.prior, count: n * k)
    let (loss, count) = Kernels.crossEntropy(
      dlogits: dlogits.pointer, logits: try g.buffer("classify.logits").pointer, labels: labels,
      rows: n, classes: k, gradientScale: 1 / Float(n))
    #expect(count == n)
    try expectClose([Float(loss / Double(n))], g, "classify.loss", tolerance: Self.rowwise)
    try expectClose(
      dlogits.values, g, "classify.dlogits", tolerance: Self.rowwise, offset: Self.prior)
  }

  // Oracle: F.cross_entropy(reduction="sum") / num_items_in_batch in float64, checked in the
  // script against transformers' ForCausalLMLoss (shift and normalisation).
  @Test(
    "LM head + cross-entropy, chunked: shifted labels, -100, step normalisation",
    arguments: [1, 3, 64])
  func lmHead(chunk: Int) throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let shape = try g.shape("lmhead.hidden")
    let (batch, t, c) = (shape[0], shape[1], shape[2])
    let vocab = try g.shape("lmhead.head")[0]
    let labels = Kernels.shiftedLabels(try g.ints("lmhead.labels"), batch: batch, length: t)
    #expect(labels == (try g.ints("lmhead.shifted")))
    let items = try g.int("lmhead.items")
    let (hidden, head) = (try g.buffer("lmhead.hidden"), try g.buffer("lmhead.head"))
    let dh = g.filled(Self.prior, count: hidden.count)
    let (loss, count) = Kernels.lmHeadCrossEntropy(
      dinp: dh.pointer, inp: hidden.pointer, weight: head.pointer, bias: nil, labels: labels,
      rows: batch * t, channels: c, vocab: vocab, chunk: chunk, gradientScale: 1 / Float(items))
    #expect(count == labels.filter { $0 != Kernels.ignoreIndex }.count)
    try expectClose([Float(loss / Double(items))], g, "lmhead.loss", tolerance: Self.rowwise)
    try expectClose(dh.values, g, "lmhead.dhidden", tolerance: Self.products, offset: Self.prior)
    // Evaluation (no gradient) gives the same loss.
    let (again, _) = Kernels.lmHeadCrossEntropy(
      dinp: nil, inp: hidden.pointer, weight: head.pointer, bias: nil, labels: labels,
      rows: batch * t, channels: c, vocab: vocab, chunk: chunk, gradientScale: 1 / Float(items))
    #expect(again == loss)
  }
}

// Oracle: the binomial distribution. Flare's dropout stream is its own (not PyTorch's), so it
// is checked for what training relies on: the drop rate, the inverted-dropout scale,
// independence of neighbours, determinism per (seed, offset) and distinct streams per seed.
@Suite("dropout masks")
struct DropoutMaskTests {
  static func mask(_ count: Int, _ p: Float, seed: UInt64, offset: UInt64 = 0) -> [Float] {
    var values = [Float](repeating: -1, count: count)
    Kernels.dropoutMask(&values, count: count, probability: p, seed: seed, offset: offset)
    return values
  }

  @Test("rate, scale and neighbour independence within 5 standard deviations")
  func statistics() {
    let n = 200_000
    let p: Float = 0.3
    let values = Self.mask(n, p, seed: 42)
    let keep: Float = 1 / (1 - p)
    #expect(values.allSatisfy { $0 == 0 || $0 == keep })
    let dropped = values.map { $0 == 0 }
    let rate = Double(dropped.filter { $0 }.count) / Double(n)
    let sigma = (Double(p) * (1 - Double(p)) / Double(n)).squareRoot()
    #expect(abs(rate - Double(p)) < 5 * sigma, "drop rate \(rate)")
    let pairs = (1..<n).filter { dropped[$0] && dropped[$0 - 1] }.count
    let both = Double(pairs) / Double(n - 1)
    let pairSigma = (Double(p * p) * (1 - Double(p * p)) / Double(n)).squareRoot()
    #expect(abs(both - Double(p * p)) < 5 * pairSigma, "neighbours both dropped: \(both)")
  }

  @Test("deterministic per (seed, offset); seeds give different streams; p = 0 and p = 1")
  func streams() {
    let whole = Self.mask(6000, 0.5, seed: 7)
    #expect(whole == Self.mask(6000, 0.5, seed: 7))
    #expect(Array(whole[1000...]) == Self.mask(5000, 0.5, seed: 7, offset: 1000))
    let other = Self.mask(6000, 0.5, seed: 8)
    let differing = zip(whole, other).filter { $0 != $1 }.count
    // Independent streams differ in about half the places at p = 0.5.
    #expect(differing > 2700 && differing < 3300, "\(differing) of 6000 differ")
    #expect(Self.mask(100, 0, seed: 1).allSatisfy { $0 == 1 })
    #expect(Self.mask(100, 1, seed: 1).allSatisfy { $0 == 0 })
  }
}

// Oracle: central finite differences of the kernels' own forward pass (no PyTorch): a Llama
// attention block with LoRA on q, grouped-query attention, HF RoPE and a left- and a
// right-padded sequence, `out = x + o_proj(attention(rope(q(h)), rope(k(h)), v(h)))` with
// `h = rmsnorm(x)`, and the loss `Σ out ⊙ R`. The backward chain's directional derivatives
// along random directions must match the five-point difference quotient of the F32 forward
// (ε = 1e-2) within 5e-4 relative (measured worst 8e-5, the norm weight's).
@Suite("backward chain against finite differences")
struct FiniteDifferenceTests {
  struct Generator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
      state &+= 1
      return Kernels.mix64(state)
    }
  }

  static let (batch, length, channels, heads, kvHeads, headDim, rank) = (2, 5, 16, 4, 2, 4, 2)
  static let mask: [[Bool]] = [[false, true, true, true, true], [true, true, true, true, false]]

  /// The block's parameters and the loss weights, seeded.
  struct Block {
    var x, norm, wq, wk, wv, wo, a, b, r: [Float]

    init() {
      var g = Generator(state: 2026)
      func normal(_ count: Int, _ scale: Float) -> [Float] {
        (0..<count).map { _ in
          // Box-Muller on two uniforms.
          let u = Float.random(in: Float.ulpOfOne..<1, using: &g)
          let v = Float.random(in: 0..<1, using: &g)
          return scale * (-2 * logf(u)).squareRoot() * cosf(2 * .pi * v)
        }
      }
      let (n, c) = (batch * length, channels)
      let (qDim, kvDim) = (heads * headDim, kvHeads * headDim)
      x = normal(n * c, 1)
      norm = normal(c, 0.2).map { $0 + 1 }
      wq = normal(qDim * c, 0.4)
      wk = normal(kvDim * c, 0.4)
      wv = normal(kvDim * c, 0.4)
      wo = normal(c * qDim, 0.4)
      a = normal(rank * c, 0.4)
      b = normal(qDim * rank, 0.4)
      r = normal(n * c, 1)
    }
  }

  static let loraScale: Float = 1.5

  /// The forward pass with the inference kernels; returns the loss and the saved values.
  static func forward(_ p: Block, _ g: BackwardGolden) -> (loss: Double, saved: [String: Buffer]) {
    let (n, c, d) = (batch * length, channels, headDim)
    let (qDim, kvDim, group) = (heads * d, kvHeads * d, heads / kvHeads)
    let x = g.buffer(p.x)
    let norm = g.buffer(p.norm)
    let h = g.filled(0, count: n * c)
    let rstd = g.filled(0, count: n)
    Kernels.rmsnorm(
      out: h.pointer, rstd: rstd.pointer, inp: x.pointer, weight: norm.pointer, rows: n,
      channels: c, eps: 1e-5)
    var qLayer = Linear(path: "q", weight: Weight(name: "wq", shape: [qDim, c], values: p.wq))
    qLayer.adapters = [
      RuntimeLoRA(
        a: Weight(name: "a", shape: [rank, c], values: p.a),
        b: Weight(name: "b", shape: [qDim, rank], values: p.b), scale: loraScale, bias: nil,
        source: "test")
    ]
    let q = g.filled(0, count: n * qDim)
    let k = g.filled(0, count: n * kvDim)
    let v = g.filled(0, count: n * kvDim)
    qLayer.forward(out: q.pointer, inp: h.pointer, rows: n)
    let (wk, wv, wo) = (g.buffer(p.wk), g.buffer(p.wv), g.buffer(p.wo))
    Kernels.matmul(
      out: k.pointer, inp: h.pointer, weight: wk.pointer, bias: nil, rows: n, inFeatures: c,
      outFeatures: kvDim)
    Kernels.matmul(
      out: v.pointer, inp: h.pointer, weight: wv.pointer, bias: nil, rows: n, inFeatures: c,
      outFeatures: kvDim)
    // Positions count real tokens, as LlamaModel.forward assigns them.
    var positions: [Int] = []
    for row in mask {
      var next = 0
      for real in row {
        positions.append(next)
        if real { next += 1 }
      }
    }
    let tables = Kernels.ropeTables(positions: positions, headDim: d, theta: 10_000)
    let (cos, sin) = (g.buffer(tables.cos), g.buffer(tables.sin))
    Kernels.rope(
      q.pointer, rows: n, stride: qDim, heads: heads, headDim: d, cos: cos.pointer,
      sin: sin.pointer, style: .halves)
    Kernels.rope(
      k.pointer, rows: n, stride: kvDim, heads: kvHeads, headDim: d, cos: cos.pointer,
      sin: sin.pointer, style: .halves)
    let attention = g.filled(0, count: n * qDim)
    let probs = g.filled(0, count: batch * heads * length * length)
    for sequence in 0..<batch {
      let padding = (0..<length).filter { !mask[sequence][$0] }
      for head in 0..<heads {
        let qOffset = sequence * length * qDim + head * d
        let kvOffset = sequence * length * kvDim + (head / group) * d
        Kernels.causalAttentionHead(
          out: attention.pointer + qOffset, outStride: qDim, q: q.pointer + qOffset,
          qStride: qDim, k: k.pointer + kvOffset, v: v.pointer + kvOffset, kvStride: kvDim,
          queries: length, keys: length, headDim: d,
          probs: probs.pointer + (sequence * heads + head) * length * length, causalOffset: 0,
          padding: padding)
      }
    }
    let out = g.filled(0, count: n * c)
    Kernels.matmul(
      out: out.pointer, inp: attention.pointer, weight: wo.pointer, bias: nil, rows: n,
      inFeatures: qDim, outFeatures: c)
    Kernels.add(out.pointer, x.pointer, count: n * c)
    var loss: Double = 0
    for (i, weight) in p.r.enumerated() { loss += Double(out.pointer[i]) * Double(weight) }
    let saved = [
      "x": x, "norm": norm, "h": h, "rstd": rstd, "q": q, "k": k, "v": v, "cos": cos, "sin": sin,
      "attention": attention, "probs": probs, "wk": wk, "wv": wv, "wo": wo,
    ]
    return (loss, saved)
  }

  /// The gradients of the loss with respect to `x`, the norm weight and LoRA's `A` and `B`.
  static func backward(_ p: Block, _ g: BackwardGolden) -> [String: [Float]] {
    let (n, c, d) = (batch * length, channels, headDim)
    let (qDim, kvDim) = (heads * d, kvHeads * d)
    let s = forward(p, g).saved
    func at(_ name: String) -> UnsafeMutablePointer<Float> { s[name]!.pointer }
    let r = g.buffer(p.r)
    let dx = g.filled(0, count: n * c)
    let dprojected = g.filled(0, count: n * c)
    Kernels.residualBackward(da: dx.pointer, db: dprojected.pointer, dout: r.pointer, count: n * c)
    let dattention = g.filled(0, count: n * qDim)
    Kernels.matmulBackwardInput(
      dinp: dattention.pointer, dout: dprojected.pointer, weight: at("wo"), rows: n,
      inFeatures: qDim, outFeatures: c)
    let dq = g.filled(0, count: n * qDim)
    let dk = g.filled(0, count: n * kvDim)
    let dv = g.filled(0, count: n * kvDim)
    Kernels.attentionBackward(
      dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, dout: dattention.pointer, q: at("q"),
      k: at("k"), v: at("v"), probs: at("probs"), dropout: nil, batch: batch, length: length,
      heads: heads, kvHeads: kvHeads, headDim: d)
    Kernels.ropeBackward(
      dq.pointer, rows: n, stride: qDim, heads: heads, headDim: d, cos: at("cos"), sin: at("sin"),
      style: .halves)
    Kernels.ropeBackward(
      dk.pointer, rows: n, stride: kvDim, heads: kvHeads, headDim: d, cos: at("cos"),
      sin: at("sin"), style: .halves)
    let dh = g.filled(0, count: n * c)
    let (wq, a, b) = (g.buffer(p.wq), g.buffer(p.a), g.buffer(p.b))
    let da = g.filled(0, count: rank * c)
    let db = g.filled(0, count: qDim * rank)
    Kernels.matmulBackwardInput(
      dinp: dh.pointer, dout: dq.pointer, weight: wq.pointer, rows: n, inFeatures: c,
      outFeatures: qDim)
    Kernels.loraBackward(
      dinp: dh.pointer, da: da.pointer, db: db.pointer, dbias: nil, dout: dq.pointer,
      inp: at("h"), a: a.pointer, b: b.pointer, scale: loraScale, rows: n, inFeatures: c,
      outFeatures: qDim, rank: rank)
    Kernels.matmulBackwardInput(
      dinp: dh.pointer, dout: dk.pointer, weight: at("wk"), rows: n, inFeatures: c,
      outFeatures: kvDim)
    Kernels.matmulBackwardInput(
      dinp: dh.pointer, dout: dv.pointer, weight: at("wv"), rows: n, inFeatures: c,
      outFeatures: kvDim)
    let dnorm = g.filled(0, count: c)
    Kernels.rmsnormBackward(
      dinp: dx.pointer, dweight: dnorm.pointer, dout: dh.pointer, inp: at("x"),
      weight: at("norm"), rstd: at("rstd"), rows: n, channels: c)
    return ["x": dx.values, "norm": dnorm.values, "a": da.values, "b": db.values]
  }

  @Test("directional derivatives of an attention block", arguments: ["x", "norm", "a", "b"])
  func directional(parameter: String) throws {
    let g = try BackwardGolden()
    defer { g.free() }
    let block = Block()
    let gradient = try #require(Self.backward(block, g)[parameter])
    var generator = Generator(state: 99)
    let direction = (0..<gradient.count).map { _ in Float.random(in: -1...1, using: &generator) }
    let analytic = zip(gradient, direction).reduce(0) { $0 + Double($1.0) * Double($1.1) }
    let epsilon: Float = 1e-2
    func loss(_ sign: Float) -> Double {
      var moved = block
      func move(_ values: inout [Float]) {
        for i in values.indices { values[i] += sign * epsilon * direction[i] }
      }
      switch parameter {
      case "x": move(&moved.x)
      case "norm": move(&moved.norm)
      case "a": move(&moved.a)
      default: move(&moved.b)
      }
      return Self.forward(moved, g).loss
    }
    // The five-point stencil: truncation error O(ε⁴), so ε can be large against F32 rounding.
    let numeric = (8 * (loss(1) - loss(-1)) - (loss(2) - loss(-2))) / (12 * Double(epsilon))
    let error = abs(numeric - analytic) / max(abs(analytic), 1)
    #expect(error <= 5e-4, "\(parameter): analytic \(analytic), numeric \(numeric), error \(error)")
  }
}
