import FlareAdapters
import FlareCore
import FlareSafetensors
import Testing
import _FlareTestSupport

/// `flare_config.json` as `formats/flare-adapter.md` defines it: what Flare writes reads back
/// to the same settings, and `causal` (which form the sequence-mixing fusions use) is read,
/// absent as `false` (the reference's form), refused when not a boolean.
@Suite("flare_config.json: write and read back")
struct FLAREConfigTests {
  static let configs = [
    FLAREConfig(fusion: .addReLU, fusedModules: ["q_proj", "v_proj"]),
    FLAREConfig(
      fusion: .crossAttention, fusedModules: ["query", "value"], causal: false,
      paddingSide: "right", maxLength: 256, crossAttentionHeads: 2, crossAttentionDropout: 0.1),
    FLAREConfig(
      fusion: .matmul, fusedModules: ["model.layers.0.self_attn.q_proj"], causal: true,
      normalizeSource: true, maxLength: 64),
  ]

  @Test("every setting survives a write and a read", arguments: configs)
  func roundTrip(_ config: FLAREConfig) throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let path = "\(work)/flare_config.json"
    writeJSON(config.json, to: path)
    #expect(try FLAREConfig(path: path) == config)
  }

  @Test("causal: read, false when absent, refused when not a boolean")
  func causal() throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let path = "\(work)/flare_config.json"
    func read(_ text: String) throws -> FLAREConfig {
      writeBytes(Array(text.utf8), to: path)
      return try FLAREConfig(path: path)
    }
    let base = #""flare_version": 1, "fusion": "matmul", "fused_modules": ["q_proj"]"#
    #expect(try read("{\(base), \"causal\": true}").causal)
    #expect(try !read("{\(base)}").causal)
    #expect(throws: FlareError.self) { try read("{\(base), \"causal\": \"yes\"}") }
    do {
      _ = try read("{\(base), \"causal\": 1}")
      Issue.record("a number was accepted for causal")
    } catch let error as FlareError {
      #expect(error.description.contains("causal"), "\(error)")
    }
  }
}

/// FLARE adapter folders as `PEFTAdapter` reads them: a folder saved by the reference
/// implementation (its `adapter_config.json` carries `fuse_config`) is refused with a message
/// naming the missing `flare_config.json` and what it must hold, and read once that file is
/// written; a cross-attention weight without `flare_config.json` is refused naming the
/// tensor; with it, the weight is read as a fusion weight, not as a base-tensor replacement.
@Suite("FLARE adapter folders")
struct FLAREFolderTests {
  /// A rank-2 LoRA on q_proj of layer 0 (hidden 4), plus `extra` tensors.
  func write(_ folder: String, config: String, extra: [String: [Int]] = [:]) throws {
    let prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    var tensors: [(spec: TensorSpec, bytes: [UInt8])] = []
    var shapes = ["\(prefix).lora_A.weight": [2, 4], "\(prefix).lora_B.weight": [4, 2]]
    for (name, shape) in extra { shapes["\(prefix).\(name)"] = shape }
    for (name, shape) in shapes.sorted(by: { $0.key < $1.key }) {
      let count = shape.reduce(1, *)
      var bytes: [UInt8] = []
      for i in 0..<count {
        withUnsafeBytes(of: Float(i).bitPattern.littleEndian) { bytes += $0 }
      }
      tensors.append((TensorSpec(name: name, dtype: .f32, shape: shape), bytes))
    }
    try SafetensorsWriter.write(to: "\(folder)/adapter_model.safetensors", tensors: tensors)
    writeBytes(Array(config.utf8), to: "\(folder)/adapter_config.json")
  }

  func message(_ body: () throws -> Void) -> String {
    do {
      try body()
      return ""
    } catch {
      return "\(error)"
    }
  }

  @Test("a reference-saved folder is refused until flare_config.json is written")
  func referenceSaved() throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    try write(
      work,
      config:
        #"{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"],"fuse_config":{"fusion_fn":"add_relu"}}"#
    )
    let refused = message { _ = try PEFTAdapter(folder: work) }
    #expect(refused.contains("fuse_config") && refused.contains("flare_config.json"), "\(refused)")
    #expect(refused.contains("fusion") && refused.contains("fused_modules"))
    writeJSON(
      FLAREConfig(fusion: .addReLU, fusedModules: ["q_proj"]).json, to: "\(work)/flare_config.json")
    let adapter = try PEFTAdapter(folder: work)
    #expect(adapter.flare?.fusion == .addReLU && adapter.modules.count == 1)
  }

  @Test("cross-attention weights need flare_config.json and are read as fusion weights")
  func crossAttentionWeights() throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    try write(
      work, config: #"{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"]}"#,
      extra: ["cross_attention.q.weight": [2, 2]])
    let refused = message { _ = try PEFTAdapter(folder: work) }
    #expect(
      refused.contains("cross_attention.q.weight") && refused.contains("flare_config.json"),
      "\(refused)")
    writeJSON(
      FLAREConfig(fusion: .crossAttention, fusedModules: ["q_proj"]).json,
      to: "\(work)/flare_config.json")
    let adapter = try PEFTAdapter(folder: work)
    let key = "model.layers.0.self_attn.q_proj.cross_attention.q.weight"
    #expect(adapter.fusionWeights[key]?.shape == [2, 2])
    #expect(adapter.fusionWeights[key]?.floats() == [0, 1, 2, 3])
    #expect(adapter.replacements.isEmpty)
  }
}
