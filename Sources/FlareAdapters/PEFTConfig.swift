import FlareCore

/// The merge-relevant fields of a PEFT `adapter_config.json`.
///
/// Defaults are PEFT's `LoraConfig` defaults for fields the file leaves out.
public struct PEFTConfig: Sendable {
  /// `target_modules`: a list (exact name or suffix match on the module path), a regex string
  /// (full match), or `all-linear`.
  public enum TargetModules: Sendable, Equatable {
    case list([String])
    case regex(String)
    case none
  }

  public var peftType: String = "LORA"
  public var r: Int = 8
  public var loraAlpha: Double = 8
  public var useRslora = false
  public var useDora = false
  public var fanInFanOut = false
  public var bias = "none"
  public var targetModules: TargetModules = .none
  public var rankPattern: [(pattern: String, rank: Int)] = []
  public var alphaPattern: [(pattern: String, alpha: Double)] = []
  public var modulesToSave: [String] = []
  public var baseModel: String?
  public var taskType: String?
  /// `init_lora_weights` as written (`true`, `false`, or a method name such as `pissa`).
  public var initLoraWeights = "true"

  /// The scale `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
  public static func scaling(alpha: Double, r: Int, rslora: Bool) -> Double {
    guard r > 0 else { return 0 }
    return rslora ? alpha / Double(r).squareRoot() : alpha / Double(r)
  }

  /// The default scale of this adapter.
  public var scaling: Double { Self.scaling(alpha: loraAlpha, r: r, rslora: useRslora) }

  /// `alpha/r` or `alpha/sqrt(r)`.
  public var scalingRule: String { useRslora ? "lora_alpha/sqrt(r)" : "lora_alpha/r" }

  /// Parses `adapter_config.json` text.
  /// - Throws: ``FlareError`` `.invalidAdapterConfig` naming the field that is wrong.
  public init(json bytes: [UInt8], path: String) throws(FlareError) {
    func bad(_ message: String) -> FlareError {
      FlareError("adapter", .invalidAdapterConfig, message, path: path)
    }
    let json: JSONValue
    do {
      json = try JSONParser.parse(bytes)
    } catch {
      throw FlareError(
        "adapter", .invalidAdapterConfig, "not valid JSON: \(error.message)", path: path,
        offset: error.offset)
    }
    guard let members = json.objectMembers else { throw bad("not a JSON object") }
    var seen = Set<String>()
    for (key, _) in members where !seen.insert(key).inserted {
      throw bad("key '\(key.escapedForMessage)' appears twice")
    }
    func boolField(_ key: String) throws(FlareError) -> Bool? {
      guard let value = json[key], value != .null else { return nil }
      guard let flag = value.boolValue else { throw bad("'\(key)' is not a boolean") }
      return flag
    }
    if let value = json["peft_type"], value != .null {
      guard let text = value.stringValue else { throw bad("'peft_type' is not a string") }
      peftType = text
    }
    if let value = json["r"] {
      guard let rank = value.intValue, rank > 0 else { throw bad("'r' is not a positive integer") }
      r = rank
    }
    if let value = json["lora_alpha"] {
      guard let alpha = value.doubleValue else { throw bad("'lora_alpha' is not a number") }
      loraAlpha = alpha
    }
    if let flag = try boolField("use_rslora") { useRslora = flag }
    if let flag = try boolField("use_dora") { useDora = flag }
    if let flag = try boolField("fan_in_fan_out") { fanInFanOut = flag }
    if let value = json["bias"], value != .null {
      guard let text = value.stringValue else { throw bad("'bias' is not a string") }
      bias = text
    }
    if let value = json["target_modules"] {
      switch value {
      case .null: targetModules = .none
      case .string(let text):
        targetModules = text == "all-linear" ? .list(["all-linear"]) : .regex(text)
      case .array(let items):
        var names: [String] = []
        for item in items {
          guard let name = item.stringValue else {
            throw bad("'target_modules' holds a non-string")
          }
          names.append(name)
        }
        targetModules = .list(names)
      default: throw bad("'target_modules' is neither a list nor a string")
      }
    }
    if let value = json["rank_pattern"], value != .null {
      guard let entries = value.objectMembers else { throw bad("'rank_pattern' is not an object") }
      for (pattern, rank) in entries {
        guard let rank = rank.intValue, rank > 0 else {
          throw bad("'rank_pattern' entry '\(pattern.escapedForMessage)' is not a positive integer")
        }
        rankPattern.append((pattern, rank))
      }
    }
    if let value = json["alpha_pattern"], value != .null {
      guard let entries = value.objectMembers else { throw bad("'alpha_pattern' is not an object") }
      for (pattern, alpha) in entries {
        guard let alpha = alpha.doubleValue else {
          throw bad("'alpha_pattern' entry '\(pattern.escapedForMessage)' is not a number")
        }
        alphaPattern.append((pattern, alpha))
      }
    }
    if let value = json["modules_to_save"], value != .null {
      guard let items = value.arrayValue else { throw bad("'modules_to_save' is not a list") }
      modulesToSave = items.compactMap(\.stringValue)
    }
    baseModel = json["base_model_name_or_path"]?.stringValue
    taskType = json["task_type"]?.stringValue
    if let value = json["init_lora_weights"] {
      switch value {
      case .bool(let flag): initLoraWeights = flag ? "true" : "false"
      case .string(let text): initLoraWeights = text
      default: break
      }
    }
  }

  /// Reads `adapter_config.json` from `path`.
  public init(path: String) throws {
    try self.init(json: try readSmallFile(path, limit: 16 << 20), path: path)
  }
}

extension FlareError.Code {
  /// An `adapter_config.json` is malformed.
  public static let invalidAdapterConfig: Self = "invalidAdapterConfig"
}
