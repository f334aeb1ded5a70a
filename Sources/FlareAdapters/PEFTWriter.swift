import FlareCore
import FlareSafetensors

/// The settings of a LoRA adapter as PEFT records them in `adapter_config.json`.
///
/// ``json`` lays the file out as PEFT 0.21.2's `LoraConfig.save_pretrained` does: every
/// `LoraConfig` field, keys sorted, two-space indent, PEFT's defaults for what Flare does not
/// use. Checked against a config PEFT itself wrote for the same settings
/// (`Fixtures/training/peft-config-*.json`, made by `Fixtures/training/check_peft_loads.py`).
public struct PEFTLoRAConfig: Sendable {
  /// `r`, the rank of modules without a `rank_pattern` entry.
  public var r: Int
  /// `lora_alpha`.
  public var loraAlpha: Double
  public var useRslora = false
  /// `target_modules`: module names or path suffixes (PEFT matches a name exactly or as the
  /// last dotted components of a module path). Written sorted.
  public var targetModules: [String]
  public var loraDropout: Double = 0
  /// `task_type`: `CAUSAL_LM`, `SEQ_CLS`, or `nil`.
  public var taskType: String?
  /// `modules_to_save` (PEFT adds `classifier` and `score` for `SEQ_CLS`), or `nil`.
  public var modulesToSave: [String]?
  /// `base_model_name_or_path`.
  public var baseModel: String?
  /// `rank_pattern`: module path pattern → rank, in order.
  public var rankPattern: [(pattern: String, rank: Int)] = []
  /// `alpha_pattern`: module path pattern → alpha, in order.
  public var alphaPattern: [(pattern: String, alpha: Double)] = []
  /// `auto_mapping`, which PEFT records only when `task_type` is `nil`: the base model's class
  /// and the transformers module that defines it.
  public var autoMapping: (baseModelClass: String, parentLibrary: String)?

  /// The PEFT version whose `adapter_config.json` layout Flare writes (`peft_version`).
  public static let peftVersion = "0.21.2"

  public init(
    r: Int, loraAlpha: Double, useRslora: Bool = false, targetModules: [String],
    loraDropout: Double = 0, taskType: String? = nil, modulesToSave: [String]? = nil,
    baseModel: String? = nil
  ) {
    self.r = r
    self.loraAlpha = loraAlpha
    self.useRslora = useRslora
    self.targetModules = targetModules
    self.loraDropout = loraDropout
    self.taskType = taskType
    self.modulesToSave = modulesToSave
    self.baseModel = baseModel
  }

  /// A number as Python's `json` writes it: integral values of integer fields as integers,
  /// floats with a fractional part or `.0`.
  static func pythonFloat(_ value: Double) -> JSONValue {
    value == value.rounded() && abs(value) < 1e15 ? .number("\(Int(value)).0") : .exact(value)
  }

  /// `lora_alpha` is an `int` in PEFT's signature; whole values are written as integers.
  static func alphaNumber(_ value: Double) -> JSONValue {
    value == value.rounded() && abs(value) < 1e15 ? .integer(Int(value)) : .exact(value)
  }

  /// The config as a JSON object, keys sorted as PEFT writes them.
  public var json: JSONValue {
    let none = JSONValue.null
    let autoMapping: JSONValue =
      self.autoMapping.map {
        .object([
          ("base_model_class", .string($0.baseModelClass)),
          ("parent_library", .string($0.parentLibrary)),
        ])
      } ?? none
    let members: [(String, JSONValue)] = [
      ("alora_invocation_tokens", none),
      ("alpha_pattern", .object(alphaPattern.map { ($0.pattern, Self.alphaNumber($0.alpha)) })),
      ("arrow_config", none),
      ("auto_mapping", taskType == nil ? autoMapping : none),
      ("base_model_name_or_path", baseModel.map { .string($0) } ?? none),
      ("bias", .string("none")),
      ("corda_config", none),
      ("ensure_weight_tying", .bool(false)),
      ("eva_config", none),
      ("exclude_modules", none),
      ("fan_in_fan_out", .bool(false)),
      ("inference_mode", .bool(true)),
      ("init_lora_weights", .bool(true)),
      ("kasa_config", none),
      ("layer_replication", none),
      ("layers_pattern", none),
      ("layers_to_transform", none),
      ("loftq_config", .object([])),
      ("lora_alpha", Self.alphaNumber(loraAlpha)),
      ("lora_bias", .bool(false)),
      ("lora_dropout", Self.pythonFloat(loraDropout)),
      ("lora_ga_config", none),
      ("megatron_config", none),
      ("megatron_core", .string("megatron.core")),
      ("modules_to_save", modulesToSave.map { .array($0.map { .string($0) }) } ?? none),
      ("monteclora_config", none),
      ("peft_type", .string("LORA")),
      ("peft_version", .string(Self.peftVersion)),
      ("qalora_group_size", .integer(16)),
      ("r", .integer(r)),
      ("rank_pattern", .object(rankPattern.map { ($0.pattern, .integer($0.rank)) })),
      ("revision", none),
      ("target_modules", .array(Array(Set(targetModules)).sorted().map { .string($0) })),
      ("target_parameters", none),
      ("task_type", taskType.map { .string($0) } ?? none),
      ("trainable_token_indices", none),
      ("use_bdlora", none),
      ("use_dora", .bool(false)),
      ("use_qalora", .bool(false)),
      ("use_rslora", .bool(useRslora)),
      ("velora_config", none),
    ]
    return .object(members)
  }
}

/// One tensor of `adapter_model.safetensors`: its key as PEFT saves it (no adapter name, e.g.
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), its shape and F32 values.
public struct PEFTTensor: Sendable, Equatable {
  public var name: String
  public var shape: [Int]
  public var values: [Float]

  public init(name: String, shape: [Int], values: [Float]) {
    self.name = name
    self.shape = shape
    self.values = values
  }
}

/// Writes PEFT adapter folders (`adapter_config.json` + `adapter_model.safetensors`) that
/// `PeftModel.from_pretrained` loads unchanged.
public enum PEFTWriter {
  /// The file names of a PEFT LoRA folder.
  public static let fileNames = ["adapter_config.json", "adapter_model.safetensors"]

  /// Writes a PEFT folder atomically: every file goes to a staging folder beside `folder` and
  /// is moved into place only when all are complete, so a failure leaves the destination as it
  /// was.
  ///
  /// - Parameters:
  ///   - folder: The adapter folder (created if missing).
  ///   - config: The adapter's settings.
  ///   - tensors: The tensors, written as F32 in safetensors' order (by dtype, then name).
  ///   - extraFiles: More small files to publish with the adapter (name, bytes).
  ///   - overwrite: Replace files that already exist in `folder`.
  /// - Returns: The paths written.
  /// - Throws: ``FlareError`` `.outputExists` when a file exists and `overwrite` is `false`,
  ///   `.invalidArgument` when a tensor's values do not fill its shape, or an I/O error.
  @discardableResult
  public static func write(
    folder: String, config: PEFTLoRAConfig, tensors: [PEFTTensor],
    extraFiles: [(name: String, bytes: [UInt8])] = [], overwrite: Bool
  ) throws -> [String] {
    let staging = try StagedFolder(for: folder)
    let names = fileNames + extraFiles.map(\.name)
    try staging.checkDestination(files: names, overwrite: overwrite)
    try writeFiles(into: staging.path, config: config, tensors: tensors)
    for file in extraFiles {
      try writeFileAtomically(file.bytes, to: "\(staging.path)/\(file.name)")
    }
    try staging.publish(files: names)
    return names.map { "\(folder)/\($0)" }
  }

  /// Writes `adapter_config.json` and `adapter_model.safetensors` into an existing folder
  /// (each file atomically), for callers that stage a larger folder themselves (checkpoints).
  /// - Throws: ``FlareError`` `.invalidArgument` when a tensor's values do not fill its shape,
  ///   `.duplicateKey` for a repeated name, or an I/O error.
  public static func writeFiles(into folder: String, config: PEFTLoRAConfig, tensors: [PEFTTensor])
    throws
  {
    for tensor in tensors where tensor.shape.reduce(1, *) != tensor.values.count {
      throw FlareError(
        "adapter", .invalidArgument,
        "has \(tensor.values.count) values for shape \(tensor.shape)", tensor: tensor.name)
    }
    var seen = Set<String>()
    for tensor in tensors where !seen.insert(tensor.name).inserted {
      throw FlareError("adapter", .duplicateKey, "appears twice", tensor: tensor.name)
    }
    try writeFileAtomically(
      Array((JSONWriter.pretty(config.json) + "\n").utf8),
      to: "\(folder)/adapter_config.json", overwrite: true)
    try writeTensors(tensors, to: "\(folder)/adapter_model.safetensors")
  }

  /// Writes F32 tensors to a safetensors file atomically (PEFT's `{"format": "pt"}` metadata).
  public static func writeTensors(_ tensors: [PEFTTensor], to path: String) throws {
    let byName = Dictionary(tensors.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    try SafetensorsWriter.write(
      to: path,
      tensors: tensors.map { TensorSpec(name: $0.name, dtype: .f32, shape: $0.shape) },
      options: SafetensorsWriteOptions(overwrite: true)
    ) { sink in
      try (byName[sink.spec.name]?.values ?? []).withUnsafeBufferPointer {
        try sink.write(floats: $0)
      }
    }
  }
}
