import FlareCore

/// The FLARE extension of a LoRA adapter (`flare_config.json`; see `formats/flare-adapter.md`).
public struct FLAREConfig: Sendable, Equatable {
  public enum Fusion: String, Sendable, CaseIterable {
    case add, mul
    case addReLU = "add_relu"
    case matmul
    case matmulReLU = "matmul_relu"
    case crossAttention = "cross-attention"

    /// Whether the target path of a fused module can be folded exactly (only `add`).
    public var targetPathIsLinear: Bool { self == .add }
  }

  public var fusion: Fusion
  /// `target_modules`-style names of the modules that receive the source state.
  public var fusedModules: [String]
  public var sourceState = "block_input"
  public var normalizeSource = false
  public var paddingSide = "left"
  public var maxLength = 128
  public var crossAttentionHeads = 1
  public var crossAttentionDropout = 0.0

  /// Whether module `path` is fused (exact name, or a suffix after a dot, as PEFT matches lists).
  public func isFused(_ path: String) -> Bool {
    fusedModules.contains { path == $0 || path.hasSuffix(".\($0)") }
  }

  /// Reads `flare_config.json`.
  /// - Throws: ``FlareError`` `.invalidAdapterConfig` naming the field; unknown fields and
  ///   versions other than 1 are errors.
  public init(path: String) throws {
    func bad(_ message: String) -> FlareError {
      FlareError("adapter", .invalidAdapterConfig, message, path: path)
    }
    let json = try JSONParser.parse(try readSmallFile(path, limit: 1 << 20))
    guard let members = json.objectMembers else { throw bad("not a JSON object") }
    let known: Set = ["flare_version", "fusion", "fused_modules", "source", "cross_attention"]
    if let unknown = members.first(where: { !known.contains($0.0) }) {
      throw bad("unknown field '\(unknown.0.escapedForMessage)'")
    }
    guard json["flare_version"]?.intValue == 1 else { throw bad("flare_version must be 1") }
    guard let name = json["fusion"]?.stringValue, let fusion = Fusion(rawValue: name) else {
      throw bad("fusion must be one of \(Fusion.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    self.fusion = fusion
    guard let modules = json["fused_modules"]?.arrayValue, !modules.isEmpty else {
      throw bad("fused_modules must be a non-empty list of module names")
    }
    fusedModules = try modules.map { value in
      guard let text = value.stringValue else { throw bad("fused_modules holds a non-string") }
      return text
    }
    if let source = json["source"], source != .null {
      guard let fields = source.objectMembers else { throw bad("source must be an object") }
      for (key, value) in fields {
        switch key {
        case "state":
          guard value.stringValue == "block_input" else {
            throw bad("source.state must be 'block_input'")
          }
        case "normalize":
          guard let flag = value.boolValue else { throw bad("source.normalize must be a boolean") }
          normalizeSource = flag
        case "padding_side":
          guard let side = value.stringValue, ["left", "right"].contains(side) else {
            throw bad("source.padding_side must be 'left' or 'right'")
          }
          paddingSide = side
        case "max_length":
          guard let length = value.intValue, length > 0 else {
            throw bad("source.max_length must be positive")
          }
          maxLength = length
        case "weights":
          guard value.stringValue == "without_adapter" else {
            throw bad("source.weights must be 'without_adapter'")
          }
        default: throw bad("unknown field 'source.\(key.escapedForMessage)'")
        }
      }
    }
    if let attention = json["cross_attention"], attention != .null {
      crossAttentionHeads = attention["heads"]?.intValue ?? 1
      crossAttentionDropout = attention["dropout"]?.doubleValue ?? 0
    }
  }
}
