import FlareAdapters
import FlareCore
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
