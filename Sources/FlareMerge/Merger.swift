import Dispatch
import FlareAdapters
import FlareArchitectures
import FlareCore
import FlareGGUF
import FlareSafetensors
import FlareTensor

/// An adapter and the weight its deltas are multiplied by.
public struct WeightedAdapter: Sendable {
  public var adapter: PEFTAdapter
  public var weight: Double

  public init(adapter: PEFTAdapter, weight: Double = 1) {
    self.adapter = adapter
    self.weight = weight
  }
}

/// What happens to one base tensor.
public struct TensorChange: Sendable {
  public enum Kind: Sendable {
    /// `W + Σ wᵢ·sᵢ·Bᵢ·Aᵢ`.
    case lora
    /// `b + Σ wᵢ·sᵢ·lora_B.bias`.
    case bias
    /// Replaced by a saved module (`modules_to_save`, saved biases).
    case replace
  }

  public var tensor: String
  public var kind: Kind
  /// (adapter index, module) pairs contributing, in adapter order.
  public var sources: [(adapter: Int, module: LoRAModule)]
  public var replacement: TensorView?
  /// Output type name (dtype or ggml type).
  public var outputType: String
  /// The base tensor the merge starts from: `tensor` itself, or the embedding for a new untied
  /// output head.
  public var source: String = ""
  /// Whether `tensor` is new: the output head of a tied model, written untied.
  public var isNew = false
  /// Whether `tensor` is a classification-head tensor the base does not have (an encoder's
  /// `classifier.*`), written from the adapter's saved copy (`replacement`).
  public var isAddedHead = false
  /// The weights the adapter saved for this module's base layer (targeted embeddings), used as
  /// the base instead of the model's.
  public var baseOverride: TensorView?
}

/// The plan of a merge: which base tensors change and how, checked against the base's shapes.
public struct MergePlan: Sendable {
  public var changes: [TensorChange]
  public var untouched: Int
  public var notes: [String]
  /// When the merge adds a classification head to an encoder base: the label count and the
  /// adapter folder the head came from (its `flare_labels.json` names the labels).
  /// `config.json` gets the task model's `architectures` and the labels.
  public var addedHead: (labels: Int, adapter: String)?
}

/// Folds PEFT LoRA adapters into base weights exactly: ΔW in F32 with cblas, `W + ΔW`
/// accumulated in F32 and rounded once to the output type, one tensor at a time.
public enum Merger {
  /// A base model: safetensors (file, index or folder) or GGUF.
  public enum Base {
    case safetensors(SafetensorsModel, folder: String?)
    case gguf(GGUFFile)
  }

  /// Opens a base path.
  public static func openBase(_ path: String) throws -> Base {
    let isGGUF = !isDirectory(path) && path.lowercased().hasSuffix(".gguf")
    if isGGUF { return .gguf(try GGUFFile(path: path)) }
    let model = try SafetensorsModel.open(path)
    return .safetensors(model, folder: isDirectory(path) ? path : nil)
  }

  // MARK: Planning

  struct BaseTensor {
    var name: String
    /// Outermost-first shape (HF order; GGUF dims reversed).
    var shape: [Int]
    var typeName: String
  }

  static func baseTensors(_ base: Base) -> [BaseTensor] {
    switch base {
    case .safetensors(let model, _):
      return model.tensors.map {
        BaseTensor(name: $0.name, shape: $0.shape, typeName: $0.dtype.rawValue)
      }
    case .gguf(let file):
      return file.tensors.map {
        BaseTensor(name: $0.name, shape: $0.dims.reversed(), typeName: $0.type.name)
      }
    }
  }

  /// The base tensor name for an HF tensor name.
  static func baseName(_ hf: String, base: Base) -> String {
    if case .gguf(let file) = base { return family(of: file).ggufName(hf: hf) ?? hf }
    return hf
  }

  /// The family whose names a GGUF base uses: its architecture's, Llama's for an architecture
  /// outside the table (whose tensors then keep names adapters cannot target).
  static func family(of file: GGUFFile) -> ModelFamily {
    file.value("general.architecture")?.stringValue.flatMap(ModelFamily.gguf) ?? .llama
  }

  /// The checked configuration of a GGUF base of a family in ``ModelFamily``, whose head counts
  /// order the rows of a Llama base's query and key tensors (and with them the rows of an
  /// adapter's B); `nil` for other architectures.
  /// - Throws: ``FlareError`` naming the file and key for a configuration that is invalid or
  ///   disagrees with the tensors' shapes.
  public static func decoderConfig(_ file: GGUFFile) throws -> DecoderConfig? {
    guard let name = file.value("general.architecture")?.stringValue,
      ModelFamily.gguf(name) != nil
    else { return nil }
    return try DecoderConfig(gguf: file)
  }

  /// Checks every adapter against the base and lists the changes.
  /// - Throws: ``FlareError`` "adapter does not fit this base" naming the tensor and both shapes,
  ///   for a missing target, a shape mismatch, or conflicting replacements.
  public static func plan(
    base: Base, adapters: [WeightedAdapter], outtype: String?, flareTargetOnly: Bool = false
  ) throws -> MergePlan {
    let tensors = baseTensors(base)
    let byName = Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0) })
    var changes: [String: TensorChange] = [:]
    var order: [String] = []
    var notes: [String] = []
    var isGGUFBase = false
    if case .gguf(let file) = base {
      isGGUFBase = true
      _ = try decoderConfig(file)  // refused here, before anything is computed
    }
    let headName = isGGUFBase ? "output.weight" : "lm_head.weight"
    let embeddingName = isGGUFBase ? "token_embd.weight" : "model.embed_tokens.weight"
    // BERT / XLM-R bases: the checkpoint's prefix ("", "bert." or "roberta."). Adapters trained
    // on the task model name modules `bert.encoder…`; a base encoder checkpoint has `encoder…`.
    let encoderPrefix = ["", "bert.", "roberta."].first {
      !isGGUFBase && byName["\($0)embeddings.word_embeddings.weight"] != nil
    }
    // The base's name for an adapter's tensor name: itself, or for an encoder base, the same
    // tensor with the base's prefix instead of the adapter's.
    func canonical(_ name: String) -> String {
      guard let prefix = encoderPrefix, byName[name] == nil else { return name }
      let bare =
        ["bert.", "roberta."].first(where: name.hasPrefix).map { String(name.dropFirst($0.count)) }
        ?? name
      return byName[prefix + bare] != nil ? prefix + bare : name
    }
    var addedHead: (labels: Int, adapter: String)?
    // The base tensor for `name`, or for the missing output head of a tied model, the embedding.
    func resolve(_ name: String) -> (BaseTensor, String)? {
      if let tensor = byName[name] { return (tensor, name) }
      if name == headName, let embedding = byName[embeddingName] {
        return (embedding, embeddingName)
      }
      return nil
    }
    func fail(_ adapter: PEFTAdapter, _ message: String, tensor: String) -> FlareError {
      FlareError(
        "merge", .invalidArgument, "adapter does not fit this base: \(message)", path: adapter.path,
        tensor: tensor)
    }
    for (index, input) in adapters.enumerated() {
      let adapter = input.adapter
      if adapter.isGGUF && !isGGUFBase {
        throw FlareError(
          "merge", .unsupported,
          "a llama.cpp LoRA GGUF stores B in llama.cpp's RoPE row order and names tensors the GGUF way, so it merges into GGUF bases only; convert the base with flare-convert, or use the PEFT adapter",
          path: adapter.path)
      }
      if let flare = adapter.flare {
        let fused = adapter.modules.filter { flare.isFused($0.path) }
        if !fused.isEmpty && flare.fusion.targetPathIsLinear {
          notes.append(
            "FLARE fusion 'add' on \(fused.count) modules: their target path W + s*B*A is folded exactly; the source term s*B*A*x_s is left out (it needs the source pass at inference)"
          )
        } else if !fused.isEmpty && !flareTargetOnly {
          throw FlareError(
            "merge", .unsupported,
            "FLARE fusion '\(flare.fusion.rawValue)' on \(fused.count) modules (first: \(fused[0].path)) is not linear in the target input, so it cannot be folded into the weights; keep the adapter as a side path, or pass --flare-target-only to fold the plain-LoRA fallback W + s*B*A (the deployed function then differs from the trained one)",
            path: adapter.path)
        } else if !fused.isEmpty {
          notes.append(
            "warning: --flare-target-only folds the plain-LoRA fallback of \(fused.count) modules fused with '\(flare.fusion.rawValue)'; the merged model does not compute the function the adapter was trained for"
          )
        }
      }
      for module in adapter.modules {
        let name = canonical(baseName("\(module.path).weight", base: base))
        guard let (target, source) = resolve(name) else {
          throw fail(adapter, "the base has no tensor for module '\(module.path)'", tensor: name)
        }
        let a = module.a.shape
        let b = module.b.shape
        let expected: [Int]
        if module.isEmbedding {
          expected = [a[1], b[0]]  // (num_embeddings, embedding_dim)
        } else if adapter.config.fanInFanOut {
          expected = [a[1], b[0]]  // Conv1D stores (in, out)
        } else {
          expected = [b[0], a[1]]  // (out, in)
        }
        guard target.shape == expected else {
          throw fail(
            adapter, "tensor \(name), expected \(expected) from the adapter, got \(target.shape)",
            tensor: name)
        }
        if module.magnitude != nil {
          guard !adapter.config.fanInFanOut, !module.isEmbedding else {
            throw FlareError(
              "merge", .unsupported, "DoRA with fan_in_fan_out or on embeddings is not supported",
              path: adapter.path, tensor: name)
          }
          guard input.weight == 1 else {
            throw FlareError(
              "merge", .unsupported,
              "a DoRA adapter cannot be weighted (its magnitude is not linear)", path: adapter.path,
              tensor: name)
          }
        }
        if changes[name] == nil {
          order.append(name)
          changes[name] = TensorChange(
            tensor: name, kind: .lora, sources: [], replacement: nil,
            outputType: outtype ?? target.typeName, source: source, isNew: source != name)
        }
        guard changes[name]?.kind == .lora else {
          throw FlareError(
            "merge", .invalidArgument, "is both replaced and adapted", path: adapter.path,
            tensor: name)
        }
        changes[name]?.sources.append((index, module))
        if module.bBias != nil {
          let biasName = canonical(baseName("\(module.path).bias", base: base))
          guard let bias = byName[biasName] else {
            throw fail(
              adapter, "lora_bias needs a bias in the base, and '\(biasName)' does not exist",
              tensor: biasName)
          }
          guard bias.shape == [b[0]] else {
            throw fail(
              adapter, "tensor \(biasName), expected [\(b[0])], got \(bias.shape)", tensor: biasName
            )
          }
          if changes[biasName] == nil {
            order.append(biasName)
            changes[biasName] = TensorChange(
              tensor: biasName, kind: .bias, sources: [], replacement: nil,
              outputType: outtype ?? bias.typeName)
          }
          changes[biasName]?.sources.append((index, module))
        }
      }
      for (hfName, view) in adapter.replacements {
        let name = canonical(baseName(hfName, base: base))
        guard let (target, source) = resolve(name) else {
          if let prefix = encoderPrefix, name.hasPrefix("classifier.") {
            // A sequence-classification head for an encoder checkpoint that has none.
            let head = try addedHeadChange(
              name: name, view: view, adapter: adapter, prefix: prefix, byName: byName,
              replaced: Set(adapter.replacements.map { canonical(baseName($0.name, base: base)) }),
              outtype: outtype)
            guard changes[name] == nil else {
              throw FlareError(
                "merge", .invalidArgument, "is added by more than one adapter", path: adapter.path,
                tensor: name)
            }
            if let labels = head.labels {
              guard addedHead == nil || addedHead?.adapter == adapter.path else {
                throw FlareError(
                  "merge", .invalidArgument,
                  "two adapters add a classification head; merge one of them", path: adapter.path,
                  tensor: name)
              }
              addedHead = (labels, adapter.path)
            }
            order.append(name)
            changes[name] = head.change
            continue
          }
          if name == "score.weight", let embedding = byName[embeddingName] {
            // LlamaForSequenceClassification's head for a Llama checkpoint that has none.
            guard !isGGUFBase else {
              throw fail(
                adapter,
                "a GGUF base cannot take a sequence-classification head (score); merge into the HF folder",
                tensor: name)
            }
            let hidden = embedding.shape.last ?? 0
            guard view.shape.count == 2, view.shape[0] > 0, view.shape[1] == hidden else {
              throw fail(
                adapter,
                "the saved head tensor has shape \(view.shape); the model's score head takes [labels, \(hidden)]",
                tensor: name)
            }
            guard addedHead == nil || addedHead?.adapter == adapter.path, changes[name] == nil
            else {
              throw FlareError(
                "merge", .invalidArgument,
                "two adapters add a classification head; merge one of them", path: adapter.path,
                tensor: name)
            }
            addedHead = (view.shape[0], adapter.path)
            var change = TensorChange(
              tensor: name, kind: .replace, sources: [], replacement: view,
              outputType: outtype ?? embedding.typeName, source: name, isNew: false)
            change.isAddedHead = true
            order.append(name)
            changes[name] = change
            continue
          }
          throw fail(adapter, "the base has no tensor '\(name)' for a saved module", tensor: name)
        }
        guard target.shape == view.shape else {
          throw fail(
            adapter, "tensor \(name), expected \(target.shape), got \(view.shape)", tensor: name)
        }
        guard changes[name] == nil else {
          throw FlareError(
            "merge", .invalidArgument, "is replaced by more than one adapter or also adapted",
            path: adapter.path, tensor: name)
        }
        order.append(name)
        changes[name] = TensorChange(
          tensor: name, kind: .replace, sources: [], replacement: view,
          outputType: outtype ?? target.typeName, source: source, isNew: source != name)
        notes.append(
          "\(name) is replaced by the adapter's saved copy (modules_to_save), not added to")
      }
    }
    for input in adapters {
      for (hfName, view) in input.adapter.baseLayers {
        let name = canonical(baseName(hfName, base: base))
        guard let (target, _) = resolve(name) else {
          throw fail(
            input.adapter, "the base has no tensor '\(name)' for a saved base layer", tensor: name)
        }
        guard target.shape == view.shape else {
          throw fail(
            input.adapter,
            "tensor \(name), expected \(target.shape), got \(view.shape) (resized embeddings are not supported)",
            tensor: name)
        }
        if changes[name] != nil {
          changes[name]?.baseOverride = view
        } else {
          order.append(name)
          changes[name] = TensorChange(
            tensor: name, kind: .replace, sources: [], replacement: view,
            outputType: outtype ?? target.typeName,
            source: name, isNew: false)
        }
      }
    }
    var result = order.compactMap { changes[$0] }
    for index in result.indices where result[index].source.isEmpty {
      result[index].source = result[index].tensor
    }
    if let head = result.first(where: \.isNew) {
      notes.append(
        "the output head was tied to the embeddings and the merge changes it: \(head.tensor) is written untied (from \(head.source))"
          + (isGGUFBase ? "" : "; config.json gets tie_word_embeddings=false"))
    }
    if let addedHead {
      let names = result.filter(\.isAddedHead).map(\.tensor).joined(separator: ", ")
      notes.append(
        "the base has no classification head: \(names) are added from the adapter's saved copy (modules_to_save)"
          + "; config.json gets the task model's architectures and \(addedHead.labels) labels")
    }
    let untouched = tensors.count - result.filter { !$0.isNew && !$0.isAddedHead }.count
    return MergePlan(
      changes: result, untouched: untouched, notes: notes, addedHead: addedHead)
  }

  /// The change that adds head tensor `name` (`classifier.weight`, `classifier.out_proj.bias`,
  /// …) from an adapter to an encoder base without a head, with its checked shape; `labels` is
  /// the label count when `name` is the head's output weight.
  /// - Throws: ``FlareError`` for a shape that does not fit the encoder's width, or a BERT
  ///   classifier without a pooler in the base or the adapter.
  static func addedHeadChange(
    name: String, view: TensorView, adapter: PEFTAdapter, prefix: String,
    byName: [String: BaseTensor], replaced: Set<String>, outtype: String?
  ) throws -> (change: TensorChange, labels: Int?) {
    guard let embedding = byName["\(prefix)embeddings.word_embeddings.weight"] else {
      throw FlareError("merge", .invalidArgument, "no word embeddings", tensor: name)
    }
    let hidden = embedding.shape.last ?? 0
    let isRoberta = name.hasPrefix("classifier.dense.") || name.hasPrefix("classifier.out_proj.")
    let isOutput = name == "classifier.weight" || name == "classifier.out_proj.weight"
    let expected: [Int]?
    switch name {
    case "classifier.weight", "classifier.out_proj.weight":
      expected = view.shape.count == 2 && view.shape[0] > 0 ? [view.shape[0], hidden] : nil
    case "classifier.bias", "classifier.out_proj.bias":
      expected = view.shape.count == 1 && view.shape[0] > 0 ? view.shape : nil
    case "classifier.dense.weight": expected = [hidden, hidden]
    case "classifier.dense.bias": expected = [hidden]
    default: expected = nil
    }
    guard let expected, view.shape == expected else {
      throw FlareError(
        "merge", .invalidArgument,
        "adapter does not fit this base: the saved head tensor has shape \(view.shape); the encoder's head takes \(expected.map { "\($0)" } ?? "no tensor of this name") (hidden size \(hidden))",
        path: adapter.path, tensor: name)
    }
    if !isRoberta {
      let pooler = "\(prefix)pooler.dense.weight"
      guard byName[pooler] != nil || replaced.contains(pooler) else {
        throw FlareError(
          "merge", .invalidArgument,
          "adapter does not fit this base: BERT's classifier sits on the pooler, which neither the base nor the adapter has",
          path: adapter.path, tensor: pooler)
      }
    }
    var change = TensorChange(
      tensor: name, kind: .replace, sources: [], replacement: view,
      outputType: outtype ?? embedding.typeName, source: name, isNew: false)
    change.isAddedHead = true
    return (change, isOutput ? view.shape[0] : nil)
  }

  // MARK: Computing merged tensors

  /// Rows per block: OpenBLAS runs single-threaded on fixed blocks, so the result does not
  /// depend on the thread count.
  static let blockRows = 64

  /// The merged values of one changed tensor, in F32, in the base's layout (GGUF row order for
  /// GGUF bases).
  static func mergedValues(
    _ change: TensorChange, base: consuming [Float], shape: [Int], adapters: [WeightedAdapter],
    ropeHeads: Int?, threads: Int
  ) throws -> [Float] {
    switch change.kind {
    case .replace:
      guard let view = change.replacement else { return base }
      return view.floats()
    case .bias:
      var out = base
      for (index, module) in change.sources {
        guard let bias = module.bBias?.floats() else { continue }
        let scale = Float(adapters[index].weight * module.scaling)
        var values = bias
        if let ropeHeads { values = permute(values, rows: values.count, heads: ropeHeads) }
        for i in 0..<out.count { out[i] += scale * values[i] }
      }
      return out
    case .lora:
      var out: [Float]
      if let override = change.baseOverride { out = override.floats() } else { out = consume base }
      let rows = shape[0]
      let cols = shape.count > 1 ? shape[1] : 1
      for (index, module) in change.sources {
        let input = adapters[index]
        let scale = Float(input.weight * module.scaling)
        let a = module.a.floats()
        var b = module.b.floats()
        let r = module.rank
        if let ropeHeads, !module.isEmbedding, !module.rowsInGGUFOrder {
          b = permute(b, rows: module.b.shape[0], heads: ropeHeads)
        }
        if let magnitude = module.magnitude {
          out = try dora(
            base: out, a: a, b: b, rank: r, rows: rows, cols: cols, scale: scale,
            magnitude: magnitude.floats(), threads: threads)
          continue
        }
        let fanInFanOut = input.adapter.config.fanInFanOut
        let transposed = module.isEmbedding || fanInFanOut
        // ΔW = s·B·A (rows×cols), or s·Aᵀ·Bᵀ when the base stores the transpose.
        addProduct(
          into: &out, rows: rows, cols: cols, rank: r, a: a, b: b, scale: scale,
          transposed: transposed, threads: threads)
      }
      return out
    }
  }

  /// `out += scale · B·A` (or `scale · Aᵀ·Bᵀ` when `transposed`), block by block.
  static func addProduct(
    into out: inout [Float], rows: Int, cols: Int, rank: Int, a: [Float], b: [Float], scale: Float,
    transposed: Bool,
    threads: Int
  ) {
    let blocks = (rows + blockRows - 1) / blockRows
    a.withUnsafeBufferPointer { aBuffer in
      b.withUnsafeBufferPointer { bBuffer in
        out.withUnsafeMutableBufferPointer { outBuffer in
          guard let aStart = aBuffer.baseAddress, let bStart = bBuffer.baseAddress,
            let cStart = outBuffer.baseAddress
          else {
            return
          }
          // The buffers outlive runBlocks, which returns only when every block is done, and each
          // block writes its own rows of C.
          nonisolated(unsafe) let aBase = aStart
          nonisolated(unsafe) let bBase = bStart
          nonisolated(unsafe) let c = cStart
          runBlocks(blocks, threads: threads) { block in
            let first = block * blockRows
            let count = min(blockRows, rows - first)
            if transposed {
              // C[first..] = s · Aᵀ[first.., :] · Bᵀ, A stored (rank × rows), B stored (cols × rank).
              BLAS.sgemm(
                transA: true, transB: true, m: count, n: cols, k: rank, alpha: scale,
                a: aBase + first, lda: rows,
                b: bBase, ldb: rank, beta: 1, c: c + first * cols, ldc: cols)
            } else {
              // C[first..] = s · B[first.., :] · A, B stored (rows × rank), A stored (rank × cols).
              BLAS.sgemm(
                transA: false, transB: false, m: count, n: cols, k: rank, alpha: scale,
                a: bBase + first * rank,
                lda: rank, b: aBase, ldb: cols, beta: 1, c: c + first * cols, ldc: cols)
            }
          }
        }
      }
    }
  }

  /// DoRA (PEFT's merge): `V = W + s·B·A`, then each output row scaled by `m / ‖V row‖₂`.
  static func dora(
    base: [Float], a: [Float], b: [Float], rank: Int, rows: Int, cols: Int, scale: Float,
    magnitude: [Float],
    threads: Int
  ) throws -> [Float] {
    var v = base
    addProduct(
      into: &v, rows: rows, cols: cols, rank: rank, a: a, b: b, scale: scale, transposed: false,
      threads: threads)
    guard magnitude.count == rows else {
      throw FlareError(
        "merge", .invalidArgument, "DoRA magnitude has \(magnitude.count) entries for \(rows) rows")
    }
    for row in 0..<rows {
      var sum = 0.0
      for col in 0..<cols {
        let x = Double(v[row * cols + col])
        sum += x * x
      }
      let norm = Float(sum.squareRoot())
      let factor = magnitude[row] / norm
      for col in 0..<cols { v[row * cols + col] = factor * v[row * cols + col] }
    }
    return v
  }

  /// Runs `body(block)` for every block, spread over `threads` threads in fixed contiguous groups.
  static func runBlocks(_ blocks: Int, threads: Int, body: @Sendable (Int) -> Void) {
    let workers = max(1, min(threads, blocks))
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
      var block = worker
      while block < blocks {
        body(block)
        block += workers
      }
    }
  }

  /// Rows reordered from HF to GGUF RoPE order (`rows` rows of `values.count / rows` values).
  static func permute(_ values: [Float], rows: Int, heads: Int) -> [Float] {
    LlamaLayout.permuted(values, rows: rows, heads: heads, toGGUF: true)
  }

  /// The first tensor holding NaN or infinity, as an error.
  static func checkFinite(_ values: [Float], tensor: String) throws {
    if let index = values.firstIndex(where: { !$0.isFinite }) {
      throw FlareError(
        "merge", .invalidArgument,
        "the merged tensor has a non-finite value (\(values[index])) at element \(index); the adapter seems broken, nothing was written",
        tensor: tensor)
    }
  }
}
