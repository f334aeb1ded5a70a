import FlareAdapters
import FlareCLI
import FlareCore
import FlareModels

/// A model that can grow a sequence-classification head to train in full (PEFT's
/// `modules_to_save`). Model families conform where their training pass handles the head.
public protocol ClassificationHeadProvider: TrainableModel {
  /// The head's module names as PEFT records them in `modules_to_save` for `SEQ_CLS`
  /// (`classifier`, `score`).
  var classificationModules: [String] { get }

  /// New head tensors for `classes` outputs, named as PEFT saves them
  /// (`base_model.model.classifier.weight`), initialised as transformers initialises a fresh
  /// head, drawing from `random`.
  func makeClassificationHead(classes: Int, random: inout SplitMix64) throws
    -> [TrainableTensor]
}

/// The LoRA settings of a run (PEFT's `LoraConfig` fields Flare trains with).
public struct LoRASettings: Sendable, Equatable {
  /// Module names or path suffixes, or `["all-linear"]`.
  public var targets: [String]
  public var rank: Int
  public var alpha: Double
  public var rslora: Bool
  /// `lora_dropout`.
  public var dropout: Double

  public init(targets: [String], rank: Int, alpha: Double, rslora: Bool, dropout: Double) {
    self.targets = targets
    self.rank = rank
    self.alpha = alpha
    self.rslora = rslora
    self.dropout = dropout
  }

  /// `alpha / r`, or `alpha / √r` with rsLoRA.
  public var scale: Double { PEFTConfig.scaling(alpha: alpha, r: rank, rslora: rslora) }
}

/// Which modules a LoRA run adapts, by PEFT's rules.
public struct LoRATargets: Sendable, Equatable {
  /// The modules that get LoRA layers, in model order.
  public var adapted: [String]
  /// What `adapter_config.json` records as `target_modules`: the names as given, or for
  /// `all-linear` the full paths PEFT resolves it to.
  public var recorded: [String]

  /// The PEFT key prefix of every saved tensor.
  public static let keyPrefix = "base_model.model."

  /// Resolves `targets` against the model's linear modules.
  ///
  /// A name matches a module whose path equals it or ends with `.` + name. `all-linear` is
  /// every linear module except the output layer (`lm_head`) and, for classification, the head
  /// module itself (PEFT's `_maybe_include_all_linear_layers`). Modules inside
  /// `modulesToSave` are trained in full and get no LoRA (PEFT skips them too).
  ///
  /// - Throws: ``FlareError`` `.unsupported` when a name targets the LM head or an
  ///   embedding (out of scope), `.invalidArgument` when a name matches no linear module or
  ///   nothing is left to adapt.
  public init(
    targets: [String], modules: [String], modulesToSave: [String] = [], classification: Bool
  ) throws {
    func isHeadOrEmbedding(_ name: String) -> Bool {
      let last = name.split(separator: ".").last.map(String.init) ?? name
      return last == "lm_head" || last.contains("embed") || last == "wte" || last == "wpe"
    }
    func insideSaved(_ path: String) -> Bool {
      // A saved module matches by name at any depth (PEFT's suffix rule); it and everything
      // below it are trained in full.
      path.split(separator: ".").contains { modulesToSave.contains(String($0)) }
    }
    let resolved: [String]
    if targets == ["all-linear"] {
      var excluded: Set<String> = []
      if classification, let head = ["classifier", "score"].first(where: modules.contains) {
        excluded.insert(head)
      }
      resolved = modules.filter { path in
        let last = path.split(separator: ".").last.map(String.init) ?? path
        return last != "lm_head" && !excluded.contains(path)
      }
    } else {
      for name in targets where isHeadOrEmbedding(name) {
        throw FlareError(
          "train", .unsupported,
          "target '\(name)' is the LM head or an embedding; training them is out of scope (LoRA on linear layers and classification heads only)"
        )
      }
      for name in targets
      where !modules.contains(where: { $0 == name || $0.hasSuffix(".\(name)") }) {
        let names = Set(modules.map { $0.split(separator: ".").last.map(String.init) ?? $0 })
        let near = names.min {
          ArgumentParser.editDistance($0, name) < ArgumentParser.editDistance($1, name)
        }
        var message = "target '\(name)' matches no linear module of the model"
        if let near, ArgumentParser.editDistance(near, name) <= 2 {
          message += "; did you mean '\(near)'?"
        }
        message += " (module names: \(names.sorted().joined(separator: ", ")))"
        throw FlareError("train", .invalidArgument, message)
      }
      resolved = modules.filter { path in
        targets.contains { path == $0 || path.hasSuffix(".\($0)") }
      }
    }
    recorded = targets == ["all-linear"] ? resolved : targets
    adapted = resolved.filter { !insideSaved($0) }
    guard !adapted.isEmpty else {
      throw FlareError(
        "train", .invalidArgument, "the target modules leave no linear module to adapt")
    }
  }
}

/// Creating and loading the trainable LoRA layers of a run.
public enum LoRAFactory {
  /// The saved key of a module's `A` or `B`.
  public static func key(_ module: String, _ part: String) -> String {
    "\(LoRATargets.keyPrefix)\(module).\(part).weight"
  }

  /// Fresh LoRA layers with PEFT's default initialisation: `A` Kaiming-uniform with
  /// `a = √5`, i.e. uniform on `[−1/√in, 1/√in)`, `B` zero.
  ///
  /// Each module draws from its own ``SplitMix64`` stream, `derive(seed, FNV-1a(path))`, so a
  /// module's initial `A` depends only on the seed and its path.
  public static func create(
    model: any TrainableModel, modules: [String], settings: LoRASettings, seed: UInt64
  ) throws -> [String: TrainableLoRA] {
    var result: [String: TrainableLoRA] = [:]
    for module in modules {
      guard let shape = model.linearShape(module) else {
        throw FlareError("train", .invalidArgument, "the model has no linear module '\(module)'")
      }
      var random = SplitMix64(seed: SplitMix64.derive(seed, fnv1a(module)))
      let bound = 1 / Float(shape.inFeatures).squareRoot()
      let a = (0..<(settings.rank * shape.inFeatures)).map { _ in random.symmetric(bound) }
      result[module] = TrainableLoRA(
        module: module,
        a: TrainableTensor(
          name: key(module, "lora_A"), shape: [settings.rank, shape.inFeatures], values: a),
        b: TrainableTensor(
          name: key(module, "lora_B"), shape: [shape.outFeatures, settings.rank],
          values: [Float](repeating: 0, count: shape.outFeatures * settings.rank)),
        scale: Float(settings.scale), dropout: Float(settings.dropout))
    }
    return result
  }

  /// LoRA layers (and head tensors) taken from a PEFT folder (`--init-adapter`, and the
  /// adapter `flare-eval classify` evaluates): every module
  /// of the adapter, with its own rank and scale, and the values of its saved heads.
  ///
  /// - Parameters:
  ///   - adapter: The PEFT adapter.
  ///   - model: The model it must fit.
  ///   - heads: Fresh head tensors whose values the adapter's saved copies replace (every head
  ///     must be in the adapter).
  ///   - dropout: `lora_dropout` for training.
  /// - Throws: ``FlareError`` for DoRA, `lora_bias`, embedding LoRA or `fan_in_fan_out`
  ///   adapters, a module the model lacks, a shape that does not fit, or a missing head.
  public static func load(
    adapter: PEFTAdapter, model: any TrainableModel, heads: [TrainableTensor], dropout: Double
  ) throws -> (loras: [String: TrainableLoRA], heads: [TrainableTensor]) {
    func refuse(_ message: String, tensor: String? = nil) -> FlareError {
      FlareError("train", .unsupported, message, path: adapter.path, tensor: tensor)
    }
    guard !adapter.config.fanInFanOut, !adapter.config.useDora else {
      throw refuse(
        "--init-adapter and flare-eval classify take plain LoRA adapters (no DoRA, no fan_in_fan_out)"
      )
    }
    guard !adapter.modules.isEmpty else { throw refuse("the adapter has no LoRA modules") }
    var loras: [String: TrainableLoRA] = [:]
    for module in adapter.modules {
      guard module.magnitude == nil, module.bBias == nil, !module.isEmbedding else {
        throw refuse(
          "--init-adapter and flare-eval classify take plain LoRA modules, not DoRA, lora_bias or embedding LoRA",
          tensor: module.path)
      }
      guard let shape = model.linearShape(module.path) else {
        throw FlareError(
          "train", .invalidArgument, "the model has no linear module of this name",
          path: adapter.path, tensor: module.path)
      }
      guard module.a.shape == [module.rank, shape.inFeatures],
        module.b.shape == [shape.outFeatures, module.rank]
      else {
        throw FlareError(
          "train", .invalidArgument,
          "A \(module.a.shape) and B \(module.b.shape) do not fit the model's [\(shape.outFeatures), \(shape.inFeatures)] layer",
          path: adapter.path, tensor: module.path)
      }
      loras[module.path] = TrainableLoRA(
        module: module.path,
        a: TrainableTensor(
          name: key(module.path, "lora_A"), shape: module.a.shape, values: module.a.floats()),
        b: TrainableTensor(
          name: key(module.path, "lora_B"), shape: module.b.shape, values: module.b.floats()),
        scale: Float(module.scaling), dropout: Float(dropout))
    }
    var saved: [String: (shape: [Int], values: [Float])] = [:]
    for (name, view) in adapter.replacements {
      saved[LoRATargets.keyPrefix + name] = (view.shape, view.floats())
    }
    var loaded: [TrainableTensor] = []
    for head in heads {
      guard let copy = saved[head.name] else {
        throw FlareError(
          "train", .invalidArgument,
          "the adapter has no saved copy of this head tensor (modules_to_save)", path: adapter.path,
          tensor: head.name)
      }
      guard copy.shape == head.shape else {
        throw FlareError(
          "train", .invalidArgument,
          "the adapter's head has shape \(copy.shape); the model's has \(head.shape) (a different label count?)",
          path: adapter.path, tensor: head.name)
      }
      loaded.append(TrainableTensor(name: head.name, shape: head.shape, values: copy.values))
    }
    return (loras, loaded)
  }

  /// The PEFT config of the adapter being trained: the most common rank and alpha are the
  /// defaults, other modules get `rank_pattern` / `alpha_pattern` entries (anchored paths).
  public static func peftConfig(
    loras: [String: TrainableLoRA], alphas: [String: Double], recordedTargets: [String],
    rslora: Bool, dropout: Double, task: TrainingTask, modulesToSave: [String]?,
    baseModel: String?
  ) -> PEFTLoRAConfig {
    var counts: [Int: Int] = [:]
    for lora in loras.values { counts[lora.rank, default: 0] += 1 }
    let rank = counts.max { ($0.value, -$0.key) < ($1.value, -$1.key) }?.key ?? 8
    var alphaCounts: [Double: Int] = [:]
    for alpha in alphas.values { alphaCounts[alpha, default: 0] += 1 }
    let alpha = alphaCounts.max { ($0.value, -$0.key) < ($1.value, -$1.key) }?.key ?? Double(rank)
    var config = PEFTLoRAConfig(
      r: rank, loraAlpha: alpha, useRslora: rslora, targetModules: recordedTargets,
      loraDropout: dropout, taskType: task == .causalLM ? "CAUSAL_LM" : "SEQ_CLS",
      modulesToSave: modulesToSave, baseModel: baseModel)
    for module in loras.keys.sorted() {
      guard let lora = loras[module] else { continue }
      let pattern = module.replacing(".", with: "\\.")
      if lora.rank != rank { config.rankPattern.append((pattern, lora.rank)) }
      if let own = alphas[module], own != alpha { config.alphaPattern.append((pattern, own)) }
    }
    return config
  }

  /// 64-bit FNV-1a of a string's UTF-8 bytes (stream labels).
  public static func fnv1a(_ text: String) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for byte in text.utf8 {
      hash ^= UInt64(byte)
      hash &*= 0x0000_0100_0000_01B3
    }
    return hash
  }
}
