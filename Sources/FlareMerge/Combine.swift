import FlareAdapters
import FlareCore
import FlareTensor

/// Combining several adapters into one (`--combine cat`).
extension Merger {
  /// Writes one PEFT adapter equal to `Σ wᵢ·sᵢ·Bᵢ·Aᵢ` for every module, exactly: per module
  /// `A = [w₁s₁A₁; w₂s₂A₂; …]` (stacked rows), `B = [B₁ B₂ …]` (side by side), rank `Σ rᵢ`,
  /// `lora_alpha` = rank so the scaling is 1. Modules that only some adapters adapt keep only
  /// those adapters' parts.
  ///
  /// - Throws: ``FlareError`` for DoRA, `lora_bias`, embedding LoRA, saved modules or
  ///   `fan_in_fan_out` (not expressible as one plain LoRA), or an existing output.
  public static func concatenate(_ adapters: [WeightedAdapter], output: String, overwrite: Bool)
    throws -> [String]
  {
    try combine(adapters, svdRank: nil, output: output, overwrite: overwrite, threads: 1).files
  }

  /// Like ``concatenate(_:output:overwrite:)``, or with `svdRank`, a rank-`K` adapter per module:
  /// the exact weighted sum `ΔW` is factored with LAPACK's SVD, `B = U_K·diag(S_K)`, `A = Vt_K`
  /// (scaling 1). Returns the files and, for SVD, each module's discarded energy
  /// `Σ_{i>K} Sᵢ² / Σ Sᵢ²`.
  public static func combine(
    _ adapters: [WeightedAdapter], svdRank: Int?, output: String, overwrite: Bool, threads: Int
  ) throws -> (files: [String], discarded: [(module: String, energy: Double)]) {
    // OpenBLAS single-threaded (each call's summation order fixed; the work is split into
    // fixed blocks here), restored on return.
    BLAS.beginSingleThreaded()
    defer { BLAS.endSingleThreaded() }
    var discarded: [(module: String, energy: Double)] = []
    var parts: [String: [(module: LoRAModule, scale: Float)]] = [:]
    var order: [String] = []
    for input in adapters {
      let adapter = input.adapter
      guard adapter.replacements.isEmpty, adapter.baseLayers.isEmpty, !adapter.config.fanInFanOut
      else {
        throw FlareError(
          "merge", .unsupported,
          "--combine cat needs plain LoRA adapters (no modules_to_save, saved base layers or fan_in_fan_out)",
          path: adapter.path)
      }
      for module in adapter.modules {
        guard module.magnitude == nil, module.bBias == nil, !module.isEmbedding else {
          throw FlareError(
            "merge", .unsupported,
            "--combine cat cannot express DoRA, lora_bias or embedding LoRA in one plain LoRA",
            path: adapter.path, tensor: module.path)
        }
        if parts[module.path] == nil { order.append(module.path) }
        parts[module.path, default: []].append((module, Float(input.weight * module.scaling)))
      }
    }
    var tensors: [PEFTTensor] = []
    var ranks: [String: Int] = [:]
    for path in order {
      guard let pieces = parts[path], let first = pieces.first else { continue }
      let rows = first.module.b.shape[0]
      let cols = first.module.a.shape[1]
      guard pieces.allSatisfy({ $0.module.b.shape[0] == rows && $0.module.a.shape[1] == cols })
      else {
        throw FlareError(
          "merge", .invalidArgument, "the adapters disagree on the shape of this module",
          tensor: path)
      }
      var rank = pieces.reduce(0) { $0 + $1.module.rank }
      var a: [Float] = []
      a.reserveCapacity(rank * cols)
      var b = [Float](repeating: 0, count: rows * rank)
      var offset = 0
      for (module, scale) in pieces {
        a += module.a.floats().map { $0 * scale }
        let piece = module.b.floats()
        for row in 0..<rows {
          for k in 0..<module.rank { b[row * rank + offset + k] = piece[row * module.rank + k] }
        }
        offset += module.rank
      }
      if let svdRank {
        // ΔW = B·A of the concatenation (exact), then its best rank-K approximation.
        var delta = [Float](repeating: 0, count: rows * cols)
        addProduct(
          into: &delta, rows: rows, cols: cols, rank: rank, a: a, b: b, scale: 1, transposed: false,
          threads: threads)
        guard let (u, sigma, vt) = LAPACK.svd(delta, rows: rows, cols: cols) else {
          throw FlareError("merge", .invalidArgument, "the SVD did not converge", tensor: path)
        }
        let p = sigma.count
        let k = min(svdRank, p)
        let total = sigma.reduce(0.0) { $0 + Double($1) * Double($1) }
        let kept = sigma.prefix(k).reduce(0.0) { $0 + Double($1) * Double($1) }
        discarded.append((path, total > 0 ? max(0, (total - kept) / total) : 0))
        b = [Float](repeating: 0, count: rows * k)
        for i in 0..<rows {
          for j in 0..<k { b[i * k + j] = u[i * p + j] * sigma[j] }
        }
        a = Array(vt.prefix(k * cols))
        rank = k
      }
      let prefix = "base_model.model.\(path)"
      tensors.append(PEFTTensor(name: "\(prefix).lora_A.weight", shape: [rank, cols], values: a))
      tensors.append(PEFTTensor(name: "\(prefix).lora_B.weight", shape: [rows, rank], values: b))
      ranks[path] = rank
    }
    // The most common rank is the default; the others go to rank_pattern/alpha_pattern with the
    // module path as an anchored, escaped pattern.
    var counts: [Int: Int] = [:]
    for rank in ranks.values { counts[rank, default: 0] += 1 }
    let common = counts.max { ($0.value, -$0.key) < ($1.value, -$1.key) }?.key ?? 1
    let targets = Array(Set(order.map { $0.split(separator: ".").last.map(String.init) ?? $0 }))
    var config = PEFTLoRAConfig(
      r: common, loraAlpha: Double(common), targetModules: targets,
      taskType: adapters.first?.adapter.config.taskType,
      baseModel: adapters.first?.adapter.config.baseModel)
    for path in order where ranks[path] != common {
      let escaped = path.replacing(".", with: "\\.")
      let rank = ranks[path] ?? common
      config.rankPattern.append((escaped, rank))
      config.alphaPattern.append((escaped, Double(rank)))
    }
    let files = try PEFTWriter.write(
      folder: output, config: config, tensors: tensors, overwrite: overwrite)
    return (files, discarded)
  }
}
