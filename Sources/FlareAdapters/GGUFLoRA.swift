import FlareCore
import FlareGGUF
import FlareSafetensors

extension PEFTAdapter {
  /// Whether this adapter came from a llama.cpp LoRA GGUF (module paths are GGUF names, B rows
  /// in llama.cpp's RoPE order).
  public var isGGUF: Bool { path.lowercased().hasSuffix(".gguf") }

  /// Reads a llama.cpp LoRA adapter GGUF (`general.type` = `adapter`, `adapter.type` = `lora`):
  /// pairs `<base tensor>.lora_a` (`[in, r]`, PEFT's A `(r, in)`) and `<base tensor>.lora_b`
  /// (`[r, out]`, B `(out, r)`); scale `adapter.lora.alpha / r` per tensor, as llama.cpp applies.
  ///
  /// - Throws: ``FlareError`` if the file is not a LoRA adapter, a pair is incomplete, ranks
  ///   disagree, the embedding is adapted (its A is stored transposed; not supported), or other
  ///   tensors are present (unless `allowUnknown`).
  public init(ggufAdapter path: String, allowUnknown: Bool = false) throws {
    let file = try GGUFFile(path: path)
    func bad(_ message: String, tensor: String? = nil) -> FlareError {
      FlareError("adapter", .invalidAdapterConfig, message, path: path, tensor: tensor)
    }
    guard file.value("general.type")?.stringValue == "adapter",
      file.value("adapter.type")?.stringValue == "lora"
    else {
      throw bad("not a LoRA adapter GGUF (general.type must be 'adapter' and adapter.type 'lora')")
    }
    let alpha: Double
    switch file.value("adapter.lora.alpha") {
    case .float32(let value): alpha = Double(value)
    case .float64(let value): alpha = value
    case nil: alpha = 0
    default: throw bad("adapter.lora.alpha is not a float")
    }
    var pairs: [String: (a: GGUFTensorInfo?, b: GGUFTensorInfo?)] = [:]
    var order: [String] = []
    var unknown: [String] = []
    for tensor in file.tensors {
      let isA = tensor.name.hasSuffix(".lora_a")
      let isB = tensor.name.hasSuffix(".lora_b")
      guard isA || isB else {
        unknown.append(tensor.name)
        continue
      }
      let base = String(tensor.name.dropLast(7))
      if pairs[base] == nil { order.append(base) }
      if isA {
        pairs[base, default: (nil, nil)].a = tensor
      } else {
        pairs[base, default: (nil, nil)].b = tensor
      }
    }
    if !unknown.isEmpty && !allowUnknown {
      throw bad(
        "\(unknown.count) tensors are not LoRA pairs (first: '\(unknown[0].escapedForMessage)'); pass --allow-unknown to ignore them",
        tensor: unknown[0])
    }
    var modules: [LoRAModule] = []
    for base in order {
      guard let a = pairs[base]?.a, let b = pairs[base]?.b else {
        throw bad("has only one of lora_a and lora_b", tensor: base)
      }
      guard !base.hasPrefix("token_embd") else {
        throw FlareError(
          "adapter", .unsupported, "embedding LoRA in GGUF adapters is not supported", path: path,
          tensor: base)
      }
      guard a.dims.count == 2, b.dims.count == 2, a.dims[1] == b.dims[0], a.type.canDequantize,
        b.type.canDequantize
      else {
        throw bad(
          "lora_a \(a.dims) and lora_b \(b.dims) do not share a rank (or cannot be read)",
          tensor: base)
      }
      let rank = b.dims[0]
      let load = { @Sendable (tensor: GGUFTensorInfo) -> [Float] in (try? file.floats(tensor)) ?? []
      }
      let aTensor = AdapterTensor(name: a.name, shape: [a.dims[1], a.dims[0]]) { load(a) }
      let bTensor = AdapterTensor(name: b.name, shape: [b.dims[1], b.dims[0]]) { load(b) }
      let path = base.hasSuffix(".weight") ? String(base.dropLast(7)) : base
      var module = LoRAModule(
        path: path, a: aTensor, b: bTensor, bBias: nil, magnitude: nil, isEmbedding: false,
        rank: rank,
        alpha: alpha, scaling: alpha == 0 ? 1 : alpha / Double(rank))
      module.rowsInGGUFOrder = true
      modules.append(module)
    }
    let rank = modules.first?.rank ?? 1
    let configText = #"{"peft_type":"LORA","r":\#(rank),"lora_alpha":\#(alpha)}"#
    self.init(
      path: path, config: try PEFTConfig(json: Array(configText.utf8), path: path),
      modules: modules,
      replacements: [], baseLayers: [], unknownKeys: unknown, flare: nil)
  }

  init(
    path: String, config: PEFTConfig, modules: [LoRAModule],
    replacements: [(name: String, view: TensorView)],
    baseLayers: [(name: String, view: TensorView)], unknownKeys: [String], flare: FLAREConfig?
  ) {
    self.path = path
    self.config = config
    self.modules = modules
    self.replacements = replacements
    self.baseLayers = baseLayers
    self.unknownKeys = unknownKeys
    self.flare = flare
  }
}

extension PEFTAdapter {
  /// Splits a command-line `path[:weight]`; a suffix that is not a finite number is part of the
  /// path (weight 1).
  public static func splitWeight(_ text: String) -> (path: String, weight: Double) {
    if let colon = text.lastIndex(of: ":"), let weight = Double(text[text.index(after: colon)...]),
      weight.isFinite
    {
      return (String(text[..<colon]), weight)
    }
    return (text, 1)
  }

  /// Opens `path`: a llama.cpp LoRA GGUF when it ends in `.gguf`, otherwise a PEFT folder.
  public static func open(_ path: String, allowUnknown: Bool = false) throws -> PEFTAdapter {
    path.lowercased().hasSuffix(".gguf")
      ? try PEFTAdapter(ggufAdapter: path, allowUnknown: allowUnknown)
      : try PEFTAdapter(folder: path, allowUnknown: allowUnknown)
  }
}
