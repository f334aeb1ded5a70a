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
  /// Whether the sequence-mixing fusions (`matmul`, `matmul_relu`, `cross-attention`) let
  /// position `j` read only real target positions `k ≤ j` (Flare's decoder form); `false` is
  /// the reference's form, every position reading every position. Absent in a file: `false`.
  public var causal = false
  public var sourceState = "block_input"
  public var normalizeSource = false
  public var paddingSide = "left"
  public var maxLength = 128
  public var crossAttentionHeads = 1
  public var crossAttentionDropout = 0.0

  public init(
    fusion: Fusion, fusedModules: [String], causal: Bool = false, normalizeSource: Bool = false,
    paddingSide: String = "left", maxLength: Int = 128, crossAttentionHeads: Int = 1,
    crossAttentionDropout: Double = 0
  ) {
    self.fusion = fusion
    self.fusedModules = fusedModules
    self.causal = causal
    self.normalizeSource = normalizeSource
    self.paddingSide = paddingSide
    self.maxLength = maxLength
    self.crossAttentionHeads = crossAttentionHeads
    self.crossAttentionDropout = crossAttentionDropout
  }

  /// The `flare_config.json` object (every field written, `cross_attention` only for that
  /// fusion), which ``init(path:)`` reads back to an equal value.
  public var json: JSONValue {
    var members: [(String, JSONValue)] = [
      ("flare_version", .integer(1)), ("fusion", .string(fusion.rawValue)),
      ("fused_modules", .array(fusedModules.map { .string($0) })), ("causal", .bool(causal)),
      (
        "source",
        .object([
          ("state", .string(sourceState)), ("normalize", .bool(normalizeSource)),
          ("padding_side", .string(paddingSide)), ("max_length", .integer(maxLength)),
          ("weights", .string("without_adapter")),
        ])
      ),
    ]
    if fusion == .crossAttention {
      members.append(
        (
          "cross_attention",
          .object([
            ("heads", .integer(crossAttentionHeads)),
            ("dropout", .exact(crossAttentionDropout)),
          ])
        ))
    }
    return .object(members)
  }

  /// Whether module `path` is fused (exact name, or a suffix after a dot, as PEFT matches lists).
  public func isFused(_ path: String) -> Bool {
    fusedModules.contains { path == $0 || path.hasSuffix(".\($0)") }
  }

  /// Reads `flare_config.json`.
  /// - Throws: ``FlareError`` `.invalidAdapterConfig` naming the file and the field; text that
  ///   is not JSON, unknown fields (at any level), versions other than 1 and out-of-range values
  ///   (`cross_attention.heads` from 1, `dropout` from 0 up to 1) are errors.
  public init(path: String) throws {
    let json = try JSONParser.parse(
      file: path, domain: "adapter", code: .invalidAdapterConfig, limit: 1 << 20)
    let fields = ConfigFields(
      json: json, path: path, domain: "adapter", code: .invalidAdapterConfig)
    guard let members = json.objectMembers else {
      throw FlareError("adapter", .invalidAdapterConfig, "not a JSON object", path: path)
    }
    /// Refuses members of `object` (named `prefix…`) that are not in `known`.
    func refuseUnknown(_ object: [(String, JSONValue)], known: [String], prefix: String) throws {
      if let unknown = object.first(where: { !known.contains($0.0) }) {
        throw fields.error("\(prefix)\(unknown.0)", "is an unknown field")
      }
    }
    try refuseUnknown(
      members,
      known: ["flare_version", "fusion", "fused_modules", "causal", "source", "cross_attention"],
      prefix: "")
    guard try fields.count("flare_version", default: 0, minimum: 0) == 1 else {
      throw fields.error("flare_version", "must be 1")
    }
    let fusionName = try fields.string("fusion")
    guard let fusion = fusionName.flatMap(Fusion.init(rawValue:)) else {
      throw fields.error(
        "fusion", "must be one of \(Fusion.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    self.fusion = fusion
    causal = try fields.bool("causal", default: false)
    guard case .list(let modules) = fields.value("fused_modules")?.kind, !modules.isEmpty else {
      throw fields.error("fused_modules", "must be a non-empty list of module names")
    }
    fusedModules = try modules.map { value in
      guard case .string(let text) = value.kind else {
        throw fields.error("fused_modules", "holds \(value.typeName) \(value.text), not a name")
      }
      return text
    }
    if let source = json["source"], source != .null {
      guard let members = source.objectMembers else {
        throw fields.error("source", "must be an object")
      }
      try refuseUnknown(
        members, known: ["state", "normalize", "padding_side", "max_length", "weights"],
        prefix: "source.")
      guard (try fields.string("source.state") ?? "block_input") == "block_input" else {
        throw fields.error("source.state", "must be 'block_input'")
      }
      normalizeSource = try fields.bool("source.normalize", default: false)
      paddingSide = try fields.string("source.padding_side") ?? "left"
      guard ["left", "right"].contains(paddingSide) else {
        throw fields.error("source.padding_side", "must be 'left' or 'right'")
      }
      maxLength = try fields.count("source.max_length", default: 128)
      guard (try fields.string("source.weights") ?? "without_adapter") == "without_adapter" else {
        throw fields.error("source.weights", "must be 'without_adapter'")
      }
    }
    if let attention = json["cross_attention"], attention != .null {
      guard let members = attention.objectMembers else {
        throw fields.error("cross_attention", "must be an object")
      }
      try refuseUnknown(members, known: ["heads", "dropout"], prefix: "cross_attention.")
      crossAttentionHeads = try fields.count("cross_attention.heads", default: 1)
      crossAttentionDropout = try fields.number("cross_attention.dropout", default: 0, in: 0..<1)
    }
  }
}
