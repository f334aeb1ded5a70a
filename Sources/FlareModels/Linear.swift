import FlareAdapters
import FlareArchitectures
import FlareCore
import FlareGGUF
import FlareTensor
import Synchronization

/// A LoRA pair applied at run time, unmerged: `y += scale · B·(A·x)`.
public struct RuntimeLoRA: Sendable {
  /// `A`, row-major `[r, in]`.
  public let a: Weight
  /// `B`, row-major `[out, r]`.
  public let b: Weight
  /// `weight · alpha / r` (or `/√r` with rsLoRA), PEFT's scaling times the adapter's weight.
  public let scale: Float
  /// `lora_B.bias` (`lora_bias`), added scaled like the product.
  public let bias: Weight?
  /// The adapter folder it came from.
  public let source: String
}

/// A linear layer `y = x·Wᵀ + b` in PyTorch's layout (`W` is `[out, in]`), with any number of
/// LoRA adapters applied unmerged.
public struct Linear: Sendable {
  /// The module path in HF naming (`model.layers.0.self_attn.q_proj`), which adapters target.
  public let path: String
  public let weight: Weight
  public let bias: Weight?
  public var adapters: [RuntimeLoRA] = []

  public var inFeatures: Int { weight.cols }
  public var outFeatures: Int { weight.rows }

  public init(path: String, weight: Weight, bias: Weight? = nil) {
    self.path = path
    self.weight = weight
    self.bias = bias
  }

  /// `out[N×out] = inp[N×in]·Wᵀ + b + Σ scale·(inp·Aᵀ)·Bᵀ`. A weight kept quantized is
  /// multiplied by the quantized kernels with its output rows spread over `workers` threads
  /// (each output is one dot product, so the result does not depend on `workers`), or, with
  /// `exact` (training and evaluation passes), in F32 on dequantized tiles
  /// (``FrozenMatrix``); an F32 weight uses BLAS with BLAS's own threads.
  public func forward(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows n: Int, workers: Int = 1,
    exact: Bool = false
  ) {
    let c = inFeatures
    let oc = outFeatures
    if exact, weight.quantized != nil {
      weight.frozen.forward(
        out: out, inp: inp, bias: bias?.values.baseAddress, rows: n, inFeatures: c,
        outFeatures: oc)
    } else if let matrix = weight.quantized {
      Self.multiply([matrix], outs: [out], inp: inp, rows: n, workers: workers)
      addBias(out: out, rows: n)
    } else {
      guard let w = weight.values.baseAddress else { return }
      Kernels.matmul(
        out: out, inp: inp, weight: w, bias: bias?.values.baseAddress, rows: n, inFeatures: c,
        outFeatures: oc)
    }
    addAdapters(out: out, inp: inp, rows: n)
  }

  /// ``forward(out:inp:rows:workers:exact:)`` of several layers that read the same input (a
  /// block's q, k and v; gate and up), when all are kept quantized: the input is quantized
  /// once per weight format and every layer's rows are shared out in one parallel loop (one
  /// hand-over between threads instead of one per layer). Returns false (having done nothing)
  /// when a layer is not kept quantized.
  static func forward(
    _ layers: [Linear], outs: [UnsafeMutablePointer<Float>], inp: UnsafePointer<Float>,
    rows n: Int, workers: Int
  ) -> Bool {
    let matrices = layers.compactMap(\.weight.quantized)
    guard matrices.count == layers.count, let first = matrices.first,
      matrices.allSatisfy({ $0.cols == first.cols })
    else { return false }
    multiply(matrices, outs: outs, inp: inp, rows: n, workers: workers)
    for (layer, out) in zip(layers, outs) {
      layer.addBias(out: out, rows: n)
      layer.addAdapters(out: out, inp: inp, rows: n)
    }
    return true
  }

  private func addBias(out: UnsafeMutablePointer<Float>, rows n: Int) {
    guard let bias = bias?.values else { return }
    let oc = outFeatures
    for row in 0..<n {
      for j in 0..<oc { out[row * oc + j] += bias[j] }
    }
  }

  /// `out += Σ scale·(inp·Aᵀ)·Bᵀ (+ scale·lora_bias)` over the attached adapters.
  private func addAdapters(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows n: Int
  ) {
    let c = inFeatures
    let oc = outFeatures
    for lora in adapters {
      guard let a = lora.a.values.baseAddress, let b = lora.b.values.baseAddress else { continue }
      let r = lora.a.rows
      let hidden = UnsafeMutablePointer<Float>.allocate(capacity: max(n * r, 1))
      defer { hidden.deallocate() }
      BLAS.sgemm(
        transA: false, transB: true, m: n, n: r, k: c, alpha: 1, a: inp, lda: c, b: a, ldb: c,
        beta: 0, c: hidden, ldc: r)
      BLAS.sgemm(
        transA: false, transB: true, m: n, n: oc, k: r, alpha: lora.scale, a: hidden, lda: r, b: b,
        ldb: r, beta: 1, c: out, ldc: oc)
      if let bias = lora.bias?.values {
        for row in 0..<n {
          for j in 0..<oc { out[row * oc + j] += lora.scale * bias[j] }
        }
      }
    }
  }
}

extension Linear {
  /// `outs[i][N×rows] = inp[N×cols]·Wᵢᵀ` for quantized matrices of one width: the `N` input
  /// rows are quantized once per weight format, then the output rows of all the matrices are
  /// computed in chunks (about four per thread, whole multiples of 16) over `workers` threads.
  /// Every output is one dot product, so the split never changes a value.
  static func multiply(
    _ matrices: [QuantizedMatrix], outs: [UnsafeMutablePointer<Float>],
    inp: UnsafePointer<Float>, rows n: Int, workers: Int
  ) {
    guard n > 0, !matrices.isEmpty else { return }
    var activations: [QuantizedActivations] = []
    for matrix in matrices {
      activations.append(
        activations.first { $0.format == matrix.format } ?? matrix.quantize(inp, tokens: n))
    }
    let workers = max(1, workers)
    let total = matrices.reduce(0) { $0 + $1.rows }
    let chunk = max(16, (total + 4 * workers - 1) / (4 * workers) + 15) / 16 * 16
    // (matrix, rows) of every chunk, in order.
    var tasks: [(Int, Range<Int>)] = []
    for (index, matrix) in matrices.enumerated() {
      for start in stride(from: 0, to: matrix.rows, by: chunk) {
        tasks.append((index, start..<min(matrix.rows, start + chunk)))
      }
    }
    nonisolated(unsafe) let outs = outs
    // Threads claim chunks as they come (a thread that starts late finds fewer left); which
    // thread computes a chunk never changes its values.
    let next = Atomic<Int>(0)
    let threads = min(workers, tasks.count)
    Parallel.forEach(threads, workers: threads) { _ in
      while true {
        let task = next.add(1, ordering: .relaxed).oldValue
        guard task < tasks.count else { return }
        let (index, rows) = tasks[task]
        let matrix = matrices[index]
        matrix.multiply(
          activations[index], rows: rows, into: outs[index], outStride: matrix.rows)
      }
    }
  }
}

/// Attaches PEFT LoRA adapters to a model's linear layers, unmerged.
public enum RuntimeAdapters {
  /// Adds each adapter's LoRA pairs to the layers they target (matched by HF module path).
  ///
  /// `permuteRows(path)` returns the RoPE head count for layers whose output rows are stored in
  /// GGUF's permuted order (Q and K of a GGUF Llama), so `B`'s rows are permuted the same way.
  /// - Throws: ``FlareError`` for adapters Flare cannot apply at run time (DoRA, embedding
  ///   LoRA, fan_in_fan_out, modules_to_save, FLARE fusion), for a module this model does not
  ///   have, and for shapes that do not fit.
  public static func attach(
    _ adapters: [(adapter: PEFTAdapter, weight: Double)], to layers: inout [Linear],
    permuteRows: (String) -> Int? = { _ in nil }
  ) throws {
    var index: [String: Int] = [:]
    for (i, layer) in layers.enumerated() { index[layer.path] = i }
    for (adapter, weight) in adapters {
      func refuse(_ message: String) -> FlareError {
        FlareError("adapter", .unsupported, message, path: adapter.path)
      }
      if adapter.flare != nil {
        throw refuse(
          "FLARE adapters need the source-language input; run-time application supports plain LoRA (flare-eval generate, logits, compare and classify run FLARE adapters)"
        )
      }
      if !adapter.replacements.isEmpty {
        throw refuse(
          "modules_to_save tensors cannot be applied at run time; merge the adapter with flare-merge"
        )
      }
      if adapter.config.fanInFanOut {
        throw refuse("fan_in_fan_out adapters target Conv1D layers, which these models do not have")
      }
      for module in adapter.modules {
        if module.magnitude != nil {
          throw refuse(
            "DoRA module \(module.path) cannot be applied unmerged; merge it with flare-merge")
        }
        if module.isEmbedding {
          throw refuse(
            "embedding LoRA (\(module.path)) is not applied at run time; merge it with flare-merge")
        }
        guard let slot = index[module.path] else {
          throw FlareError(
            "adapter", .invalidArgument,
            "adapter targets \(module.path), which this model does not have (or is not a linear layer)",
            path: adapter.path)
        }
        let layer = layers[slot]
        let r = module.rank
        guard module.a.shape == [r, layer.inFeatures], module.b.shape == [layer.outFeatures, r]
        else {
          throw FlareError(
            "adapter", .invalidArgument,
            "adapter does not fit this model: tensor \(module.path), expected A [\(r), \(layer.inFeatures)] and B [\(layer.outFeatures), \(r)], got A \(module.a.shape) and B \(module.b.shape)",
            path: adapter.path, tensor: module.path)
        }
        var b = module.b.floats()
        var biasValues = module.bBias?.floats()
        if let heads = permuteRows(module.path), !module.rowsInGGUFOrder {
          b = LlamaLayout.permuted(b, rows: layer.outFeatures, heads: heads, toGGUF: true)
          biasValues = biasValues.map {
            LlamaLayout.permuted($0, rows: layer.outFeatures, heads: heads, toGGUF: true)
          }
        }
        let bias = biasValues.map {
          Weight(name: "\(module.path).lora_B.bias", shape: [layer.outFeatures], values: $0)
        }
        layers[slot].adapters.append(
          RuntimeLoRA(
            a: Weight(
              name: "\(module.path).lora_A.weight", shape: [r, layer.inFeatures],
              values: module.a.floats()),
            b: Weight(
              name: "\(module.path).lora_B.weight", shape: [layer.outFeatures, r], values: b),
            scale: Float(weight * module.scaling), bias: bias, source: adapter.path))
      }
    }
  }
}
