import FlareCore
import FlareSafetensors

/// An adapter tensor: its name, its shape (outermost first) and its values, read on demand.
public struct AdapterTensor: Sendable {
  public let name: String
  public let shape: [Int]
  private let load: @Sendable () -> [Float]

  public init(name: String, shape: [Int], load: @escaping @Sendable () -> [Float]) {
    self.name = name
    self.shape = shape
    self.load = load
  }

  /// A tensor of a safetensors file.
  public init(_ view: TensorView) {
    self.init(name: view.name, shape: view.shape) { view.floats() }
  }

  /// The values as `Float`.
  public func floats() -> [Float] { load() }
}

/// One adapted module of a PEFT LoRA adapter, with everything needed to merge it.
public struct LoRAModule: @unchecked Sendable {
  // @unchecked Sendable: the views point into an immutable read-only mapping.
  /// The module path in the base model (`model.layers.0.self_attn.q_proj`).
  public var path: String
  /// `lora_A.weight` `(r, in)`, or `lora_embedding_A` `(r, num_embeddings)`.
  public var a: AdapterTensor
  /// `lora_B.weight` `(out, r)`, or `lora_embedding_B` `(embedding_dim, r)`.
  public var b: AdapterTensor
  /// `lora_B.bias` `(out,)`, with `lora_bias`.
  public var bBias: AdapterTensor?
  /// `lora_magnitude_vector` `(out,)`, with DoRA.
  public var magnitude: AdapterTensor?
  public var isEmbedding: Bool
  public var rank: Int
  public var alpha: Double
  /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
  public var scaling: Double
  /// B's rows are already in llama.cpp's RoPE order (llama.cpp LoRA GGUF adapters).
  public var rowsInGGUFOrder = false
}

/// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`), read with
/// every merge-relevant field of the config.
public struct PEFTAdapter: Sendable {
  public var path: String
  public var config: PEFTConfig
  public var modules: [LoRAModule]
  /// Whole tensors that replace the base's (`modules_to_save`, and biases with `bias` = `all` or
  /// `lora_only`), by base tensor name.
  public var replacements: [(name: String, view: TensorView)]
  /// `<module>.base_layer.weight` tensors PEFT saves for targeted embeddings: the base the
  /// module's delta is added to, by base tensor name.
  public var baseLayers: [(name: String, view: TensorView)]
  /// Keys the reader did not recognise (only kept with `allowUnknown`).
  public var unknownKeys: [String]
  /// The FLARE extension (`flare_config.json`), if the folder has one.
  public var flare: FLAREConfig?
  /// A FLARE adapter's `cross-attention` weights, by key without `base_model.model.`
  /// (`<module>.cross_attention.{q,k,v}.{weight,bias}`); empty for other adapters.
  public var fusionWeights: [String: AdapterTensor] = [:]

  static let prefix = "base_model.model."
  static let mutatingInits = ["pissa", "olora", "corda", "loftq", "lora_ga", "eva"]

  /// Reads an adapter folder.
  ///
  /// - Throws: ``FlareError`` for a missing or malformed config, a non-LoRA adapter, an adapter
  ///   whose initialisation changed the base weights (`pissa`, `olora`, `corda`, `loftq`,
  ///   `lora_ga`, `eva`), an aLoRA adapter, a module with only one of A and B, shapes that
  ///   disagree, or unknown tensor keys (unless `allowUnknown`).
  public init(folder: String, allowUnknown: Bool = false) throws {
    path = folder
    let configPath = "\(folder)/adapter_config.json"
    guard fileExists(configPath) else {
      throw FlareError(
        "adapter", .fileNotFound, "no adapter_config.json in the adapter folder", path: folder)
    }
    let configBytes = try readSmallFile(configPath, limit: 16 << 20)
    config = try PEFTConfig(json: configBytes, path: configPath)
    let json = try JSONParser.parse(configBytes)
    func refuse(_ message: String) -> FlareError {
      FlareError("adapter", .unsupported, message, path: configPath)
    }
    guard config.peftType == "LORA" else {
      throw refuse("peft_type \(config.peftType) is not LoRA; flare-merge folds LoRA adapters")
    }
    let initMethod = config.initLoraWeights.lowercased()
    if let method = Self.mutatingInits.first(where: { initMethod.hasPrefix($0) }) {
      throw refuse(
        "init_lora_weights '\(config.initLoraWeights)' (\(method)) changed the base weights at initialisation; merging it into the original base would be wrong (convert it to a plain LoRA first, e.g. with PEFT's path_initial_model_for_weight_conversion)"
      )
    }
    if let tokens = json["alora_invocation_tokens"], tokens != .null {
      throw refuse(
        "aLoRA adapters (alora_invocation_tokens) cannot be merged: they act only after their invocation tokens"
      )
    }
    if let parameters = json["target_parameters"], parameters != .null,
      parameters.arrayValue?.isEmpty == false
    {
      throw refuse("target_parameters (LoRA on raw parameters) is not supported")
    }
    let weightsPath = "\(folder)/adapter_model.safetensors"
    guard fileExists(weightsPath) else {
      if fileExists("\(folder)/adapter_model.bin") {
        throw refuse(
          "only adapter_model.bin (a pickle) is present; Flare reads adapter_model.safetensors only"
        )
      }
      throw FlareError(
        "adapter", .fileNotFound, "no adapter_model.safetensors beside the config", path: folder)
    }
    let flarePath = "\(folder)/flare_config.json"
    let hasFLAREConfig = fileExists(flarePath)
    if let fuse = json["fuse_config"], fuse != .null, !hasFLAREConfig {
      // The reference implementation's LoraConfig.fuse_config: its field names and the keys
      // of its cross-attention weights are not a documented format, so they are not guessed.
      throw refuse(
        "the config carries fuse_config (an adapter saved by the FLARE reference implementation), but the folder has no flare_config.json; Flare reads the FLARE settings from that file: write it beside the adapter (formats/flare-adapter.md) with at least flare_version 1, fusion, fused_modules, causal (false for the reference's form) and source.max_length of the training run, and for cross-attention name the weights <module>.cross_attention.{q,k,v}.{weight,bias}"
      )
    }
    let file = try SafetensorsFile(path: weightsPath)
    var fusionWeights: [String: AdapterTensor] = [:]
    var parts: [String: [String: TensorView]] = [:]
    var replacements: [(String, TensorView)] = []
    var baseLayers: [(String, TensorView)] = []
    var unknown: [String] = []
    let loraSuffixes = [
      ".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_embedding_A", ".lora_embedding_B",
      ".lora_magnitude_vector", ".lora_magnitude_vector.weight",
    ]
    for view in file.views {
      guard view.name.hasPrefix(Self.prefix) else {
        unknown.append(view.name)
        continue
      }
      let key = String(view.name.dropFirst(Self.prefix.count))
      if let suffix = loraSuffixes.first(where: { key.hasSuffix($0) }) {
        let module = String(key.dropLast(suffix.count))
        let part = suffix == ".lora_magnitude_vector.weight" ? ".lora_magnitude_vector" : suffix
        parts[module, default: [:]][part] = view
        continue
      }
      if key.contains(".cross_attention.") {
        guard hasFLAREConfig else {
          throw FlareError(
            "adapter", .unsupported,
            "a FLARE cross-attention weight, but the folder has no flare_config.json to say how it is used (formats/flare-adapter.md)",
            path: weightsPath, tensor: view.name)
        }
        // FLARE cross-attention weights act on the source path only; never folded.
        fusionWeights[key] = AdapterTensor(view)
        continue
      }
      if key.contains(".lora_") {
        unknown.append(view.name)
        continue
      }
      if key.hasSuffix(".base_layer.weight") {
        baseLayers.append((String(key.dropLast(".base_layer.weight".count)) + ".weight", view))
        continue
      }
      // modules_to_save copies and saved biases replace the base tensor of the same name.
      let name = key.replacing(".base_layer.", with: ".")
      let savedModule = config.modulesToSave.contains {
        name.hasPrefix("\($0).") || name.contains(".\($0).")
      }
      if savedModule || (config.bias != "none" && name.hasSuffix(".bias")) {
        replacements.append((name, view))
      } else {
        unknown.append(view.name)
      }
    }
    if !unknown.isEmpty && !allowUnknown {
      throw FlareError(
        "adapter", .unsupported,
        "\(unknown.count) tensor keys are not LoRA weights Flare understands (first: '\(unknown[0].escapedForMessage)'); pass --allow-unknown to ignore them",
        path: weightsPath, tensor: unknown[0])
    }
    var modules: [LoRAModule] = []
    for (module, found) in parts.sorted(by: { $0.key < $1.key }) {
      let embedding = found[".lora_embedding_A"] != nil || found[".lora_embedding_B"] != nil
      let aKey = embedding ? ".lora_embedding_A" : ".lora_A.weight"
      let bKey = embedding ? ".lora_embedding_B" : ".lora_B.weight"
      guard let a = found[aKey], let b = found[bKey] else {
        throw FlareError(
          "adapter", .invalidArgument, "module has only one of its LoRA A and B matrices",
          path: weightsPath,
          tensor: "\(Self.prefix)\(module)")
      }
      guard a.shape.count == 2, b.shape.count == 2, a.shape[0] == b.shape[1], a.shape[0] > 0 else {
        throw FlareError(
          "adapter", .invalidArgument, "A \(a.shape) and B \(b.shape) do not share a rank",
          path: weightsPath,
          tensor: a.name)
      }
      for view in [a, b]
        + [found[".lora_B.bias"], found[".lora_magnitude_vector"]].compactMap({ $0 })
      where !view.dtype.isFloatingPoint || view.dtype == .c64 {
        throw FlareError(
          "adapter", .invalidArgument, "is \(view.dtype.rawValue), not a float type",
          path: weightsPath, tensor: view.name)
      }
      let rank = a.shape[0]
      let patternRank = Self.patternValue(
        config.rankPattern.map { ($0.pattern, Double($0.rank)) }, module: module)
      let alpha =
        Self.patternValue(config.alphaPattern.map { ($0.pattern, $0.alpha) }, module: module)
        ?? config.loraAlpha
      if let patternRank, patternRank != Double(rank) {
        let given = Int(exactly: patternRank).map(String.init) ?? "\(patternRank)"
        throw FlareError(
          "adapter", .invalidArgument,
          "rank_pattern gives r=\(given) but the tensors have rank \(rank)",
          path: weightsPath, tensor: a.name)
      }
      if patternRank == nil && rank != config.r {
        throw FlareError(
          "adapter", .invalidArgument,
          "config r=\(config.r) but the tensors have rank \(rank) and no rank_pattern entry matches",
          path: weightsPath, tensor: a.name)
      }
      modules.append(
        LoRAModule(
          path: module, a: AdapterTensor(a), b: AdapterTensor(b),
          bBias: found[".lora_B.bias"].map(AdapterTensor.init),
          magnitude: found[".lora_magnitude_vector"].map(AdapterTensor.init),
          isEmbedding: embedding, rank: rank, alpha: alpha,
          scaling: PEFTConfig.scaling(alpha: alpha, r: rank, rslora: config.useRslora)))
    }
    self.modules = modules
    self.replacements = replacements
    flare = hasFLAREConfig ? try FLAREConfig(path: flarePath) : nil
    self.fusionWeights = fusionWeights
    if let flare, flare.fusion == .crossAttention {
      // Cross-attention splits each fused module's rank into heads of r/heads.
      for module in modules where flare.isFused(module.path) {
        guard module.rank % flare.crossAttentionHeads == 0 else {
          throw FlareError(
            "adapter", .invalidAdapterConfig,
            "is \(flare.crossAttentionHeads), which does not divide the rank \(module.rank) of \(module.path)",
            path: flarePath, key: "cross_attention.heads")
        }
      }
    }
    self.baseLayers = baseLayers
    unknownKeys = unknown
  }

  /// PEFT's pattern rule (`get_pattern_key`): the first key, in file order, such that the module
  /// path full-matches `(.*\.)?(key)$`; its value, or `nil`.
  public static func patternValue(_ patterns: [(String, Double)], module: String) -> Double? {
    for (key, value) in patterns {
      if let regex = try? Regex("(.*\\.)?(\(key))$"), (try? regex.wholeMatch(in: module)) != nil {
        return value
      }
    }
    return nil
  }
}
