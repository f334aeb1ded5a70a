import FlareAdapters
import FlareCore
import FlareModels
import FlareTokenizers

/// How a decoder's generated positions use the source while generating (FLARE.md §3.4).
public enum FLAREGenerationSource: String, Sendable, CaseIterable {
  /// Consistent with training (§3.4 option b): target and source padded as in training and
  /// fused position by position; a generated position beyond the padded width fuses the
  /// state of the source prompt's last real token. With left padding (the reference's for
  /// decoders) that is every generated position; with right padding generated positions keep
  /// fusing source position `j` while `j` is inside the width, as the answer tokens did in
  /// training.
  case aligned
  /// The reference implementation's behaviour (§3.4 option a): the model without the adapter
  /// first generates greedily from the source prompt; every target position, prompt and
  /// generated, fuses the states of the last position that source run fed to the model.
  case reference
}

/// A FLARE adapter's layers as an evaluation pass takes them.
public enum FLAREInference {
  /// The LoRA layers of `adapter` (a FLARE adapter folder) and its fusion, for `model`: the
  /// fused modules are those of `flare_config.json`, the cross-attention weights those saved
  /// beside the LoRA matrices.
  /// - Parameter baked: The model's weights already hold the adapter folded in (`flare-merge`
  ///   output; `add` only): see ``TrainingFusion/bakedTarget``.
  /// - Throws: ``FlareError`` for a folder without `flare_config.json`, fused modules the
  ///   adapter does not adapt, missing or misshapen cross-attention weights, and what
  ///   ``LoRAFactory/load(adapter:model:heads:dropout:)`` refuses.
  public static func load(
    adapter: PEFTAdapter, model: any TrainableModel, heads: [TrainableTensor] = [],
    baked: Bool = false
  ) throws -> (loras: [String: TrainableLoRA], heads: [TrainableTensor], fusion: TrainingFusion) {
    guard let config = adapter.flare else {
      throw FlareError(
        "eval", .invalidArgument, "not a FLARE adapter (no flare_config.json)", path: adapter.path)
    }
    if baked && config.fusion != .add {
      throw FlareError(
        "eval", .unsupported,
        "only an add adapter can be baked (its target path is linear); this one fuses with '\(config.fusion.rawValue)', which flare-merge refuses to fold",
        path: adapter.path)
    }
    let (loras, loadedHeads) = try LoRAFactory.load(
      adapter: adapter, model: model, heads: heads, dropout: 0)
    let fused = loras.keys.filter { config.isFused($0) }.sorted()
    for name in config.fusedModules
    where !fused.contains(where: { $0 == name || $0.hasSuffix(".\(name)") }) {
      throw FlareError(
        "adapter", .invalidAdapterConfig,
        "fused_modules names \(name), which the adapter does not adapt",
        path: "\(adapter.path)/flare_config.json", key: "fused_modules")
    }
    var attention: [String: TrainableFusionAttention] = [:]
    if config.fusion == .crossAttention {
      for module in fused {
        let r = loras[module]!.rank
        func tensor(_ part: String, _ shape: [Int]) throws -> TrainableTensor {
          let key = "\(module).cross_attention.\(part)"
          let name = LoRATargets.keyPrefix + key
          guard let saved = adapter.fusionWeights[key] else {
            throw FlareError(
              "adapter", .invalidArgument,
              "the cross-attention fusion needs this weight of the fused module, and the adapter has none",
              path: adapter.path, tensor: name)
          }
          guard saved.shape == shape else {
            throw FlareError(
              "adapter", .invalidArgument,
              "has shape \(saved.shape); a fused module of rank \(r) needs \(shape)",
              path: adapter.path, tensor: name)
          }
          return TrainableTensor(name: name, shape: shape, values: saved.floats())
        }
        attention[module] = TrainableFusionAttention(
          query: try tensor("q.weight", [r, r]), queryBias: try tensor("q.bias", [r]),
          key: try tensor("k.weight", [r, r]), keyBias: try tensor("k.bias", [r]),
          value: try tensor("v.weight", [r, r]), valueBias: try tensor("v.bias", [r]))
      }
    }
    var fusion = TrainingFusion(
      fusion: config.fusion, fusedModules: Set(fused), causal: config.causal,
      heads: config.crossAttentionHeads, attentionDropout: 0,
      normalizeSource: config.normalizeSource, attention: attention)
    fusion.bakedTarget = baked
    return (loras, loadedHeads, fusion)
  }

  /// The note printed when a FLARE adapter runs without a source (FLARE.md §8.3).
  public static func targetOnlyNote(_ config: FLAREConfig) -> String {
    let exact =
      config.fusion == .add
      ? "for add this is the trained target path without the source term"
      : "for \(config.fusion.rawValue) this is not the function the adapter was trained for"
    return
      "note: no source given: the FLARE adapter runs target-only, its fused modules as plain LoRA W + s*B*A (the reference's inference_mode; \(exact))"
  }
}

/// A Llama model with a FLARE adapter, run as in training: a source pass over the parallel
/// English prompt without the adapter, then the target pass with the fused layers. Prompts are
/// padded as in training (both to the adapter's `max_length`, on its padding side) and fused
/// position by position; with no source, the adapter runs target-only (fused modules as plain
/// LoRA, FLARE.md §8.3).
public struct FLAREDecoder {
  public let model: LlamaModel
  public let config: FLAREConfig
  let loras: [String: TrainableLoRA]
  let fusion: TrainingFusion
  let padID: Int

  /// - Parameter baked: `model` holds the adapter folded in (`add` only).
  /// - Throws: ``FlareError`` as ``FLAREInference/load(adapter:model:heads:baked:)``.
  public init(model: LlamaModel, tokenizer: Tokenizer, adapter: PEFTAdapter, baked: Bool = false)
    throws
  {
    self.model = model
    let loaded = try FLAREInference.load(adapter: adapter, model: model, baked: baked)
    config = adapter.flare!
    loras = loaded.loras
    fusion = loaded.fusion
    padID = tokenizer.pad ?? tokenizer.eos ?? 0
  }

  /// The source prompt as training prepares it: at most `max_length` tokens (the first ones).
  public func sourceTokens(_ ids: [Int]) -> [Int] { Array(ids.prefix(config.maxLength)) }

  /// The target (`prompt`, then `generated`) and source rows of one evaluation pass.
  func batch(
    prompt: [Int], generated: [Int], source: [Int]?, mode: FLAREGenerationSource,
    sourceRun: [Int]
  ) throws -> TrainingBatch {
    let width = config.maxLength
    let left = config.paddingSide != "right"
    guard prompt.count <= width || source == nil else {
      throw FlareError(
        "eval", .invalidArgument,
        "the prompt has \(prompt.count) tokens; the adapter was trained with prompts padded to \(width) (flare_config.json source.max_length)"
      )
    }
    var tokens = prompt + generated
    var mask = [Bool](repeating: true, count: tokens.count)
    guard let source else {
      return TrainingBatch(
        tokens: [tokens], mask: [mask],
        targets: .tokens([[Int](repeating: Kernels.ignoreIndex, count: tokens.count)]))
    }
    let src = sourceTokens(source)
    var sourceIDs = src
    var sourceMask = [Bool](repeating: true, count: src.count)
    let padding = width - prompt.count
    let sourcePadding = width - src.count
    if left {
      tokens = [Int](repeating: padID, count: padding) + tokens
      mask = [Bool](repeating: false, count: padding) + mask
      sourceIDs = [Int](repeating: padID, count: sourcePadding) + sourceIDs
      sourceMask = [Bool](repeating: false, count: sourcePadding) + sourceMask
    } else {
      sourceIDs += [Int](repeating: padID, count: sourcePadding)
      sourceMask += [Bool](repeating: false, count: sourcePadding)
    }
    let lastReal = left ? width - 1 : max(0, src.count - 1)
    var rows: [Int]
    switch mode {
    case .aligned:
      rows = (0..<tokens.count).map { $0 < width ? $0 : lastReal }
    case .reference:
      // The source run's fed tokens follow the padded source prompt; every position fuses
      // the last of them.
      if left || src.count == width {
        sourceIDs += sourceRun
        sourceMask += [Bool](repeating: true, count: sourceRun.count)
      } else {
        sourceIDs = src + sourceRun
        sourceMask = [Bool](repeating: true, count: sourceIDs.count)
      }
      let last = sourceMask.lastIndex(of: true) ?? 0
      rows = [Int](repeating: last, count: tokens.count)
    }
    var batch = TrainingBatch(
      tokens: [tokens], mask: [mask],
      targets: .tokens([[Int](repeating: Kernels.ignoreIndex, count: tokens.count)]),
      source: [sourceIDs], sourceMask: [sourceMask])
    batch.sourceRows = [rows]
    return batch
  }

  func state(withSource: Bool) -> TrainingState {
    TrainingState(loras: loras, fusion: withSource ? fusion : nil)
  }

  /// Refuses an empty prompt, and a baked adapter without a source.
  func check(prompt: [Int], source: [Int]?) throws {
    guard !prompt.isEmpty else {
      throw FlareError("eval", .invalidArgument, "the prompt has no tokens")
    }
    if source == nil && fusion.bakedTarget {
      throw FlareError(
        "eval", .invalidArgument,
        "a baked FLARE adapter needs a source (without one, run the merged model alone)")
    }
  }

  /// The logits of every position of `prompt` (`prompt.count × vocab`), or of its last one.
  /// - Parameter source: The parallel English prompt's ids; `nil` runs target-only.
  public func logits(prompt: [Int], source: [Int]?, lastOnly: Bool) throws -> [Float] {
    try check(prompt: prompt, source: source)
    let batch = try self.batch(
      prompt: prompt, generated: [], source: source, mode: .aligned, sourceRun: [])
    let all = try model.evaluationLogits(
      batch: batch, state: state(withSource: source != nil), rows: lastOnly ? .last : .all)
    if lastOnly { return all }
    // Drop the left padding's rows.
    let vocab = model.config.vocabSize
    let skip = batch.tokens[0].count - prompt.count
    return Array(all[(skip * vocab)...])
  }

  /// Generates up to `maxTokens` tokens after `prompt`, stopping after any of `stop` or at
  /// the end of the model's context. The source pass runs once (its `S = A·x_s` kept); each
  /// step runs the whole target sequence again (no KV cache: the sequence-mixing fusions read
  /// the target's bottleneck rows of earlier positions, which a cache of keys and values does
  /// not hold).
  /// - Parameters:
  ///   - source: The parallel English prompt's ids; `nil` runs target-only.
  ///   - mode: How generated positions use the source.
  /// - Returns: The generated ids, and for ``FLAREGenerationSource/reference`` the ids the
  ///   source run generated.
  public func generate(
    prompt: [Int], source: [Int]?, mode: FLAREGenerationSource, maxTokens: Int,
    sampling: SamplingOptions, stop: Set<Int>, onToken: (Int) -> Bool = { _ in true }
  ) throws -> (generated: [Int], sourceGenerated: [Int]) {
    try check(prompt: prompt, source: source)
    var sourceGenerated: [Int] = []
    var sourceRun: [Int] = []
    if let source, mode == .reference {
      guard !fusion.bakedTarget else {
        throw FlareError(
          "eval", .unsupported,
          "the reference generation mode runs the model without the adapter; a baked adapter's weights hold it (use --source-mode aligned)"
        )
      }
      // The model without the adapter (no LoRA attached) generates greedily from the source.
      let src = sourceTokens(source)
      sourceGenerated = try model.generate(
        prompt: src, maxTokens: maxTokens, sampling: SamplingOptions(), stop: stop)
      sourceRun = Array(sourceGenerated.dropLast())
    }
    let padded = source == nil ? 0 : max(0, config.maxLength - prompt.count)
    let limit = min(max(maxTokens, 0), model.config.contextLength - prompt.count - padded)
    var sampler = Sampler(sampling)
    var out: [Int] = []
    let state = state(withSource: source != nil)
    // The source side does not change while generating: one source pass, its S = A·x_s kept.
    var projections: [String: [Float]]?
    while out.count < limit {
      var batch = try self.batch(
        prompt: prompt, generated: out, source: source, mode: mode, sourceRun: sourceRun)
      if source != nil {
        if projections == nil {
          projections = try model.sourceProjections(batch: batch, state: state)
        }
        batch.sourceProjections = projections
      }
      let logits = try model.evaluationLogits(batch: batch, state: state, rows: .last)
      let next = sampler.next(logits[...])
      out.append(next)
      if stop.contains(next) || !onToken(next) { break }
    }
    return (out, sourceGenerated)
  }
}
