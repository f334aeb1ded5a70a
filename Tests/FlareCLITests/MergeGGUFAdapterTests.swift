import FlareAdapters
import FlareCore
import FlareGGUF
import Foundation
import Testing
import _FlareTestSupport

/// llama.cpp LoRA GGUF adapters in `flare-merge`.
///
/// Oracle: `Fixtures/peft/smollm2-demo-lora.gguf`, made from the PEFT adapter beside it by
/// llama.cpp's own `convert_lora_to_gguf.py` (`Fixtures/peft/make_gguf_lora.sh`). It holds the
/// same A and B (B's query/key rows permuted by llama.cpp) and alpha, so merging it into a GGUF base
/// must give exactly what merging the PEFT adapter gives. Tolerance: none.
@Suite("llama.cpp LoRA GGUF adapters", .serialized)
struct MergeGGUFAdapterTests {
  static let base = "\(modelCache)/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
  static let ggufAdapter = fixturePath("peft/smollm2-demo-lora.gguf")

  @Test("the adapter reads as 60 rank-4 pairs with llama.cpp's scale alpha/r")
  func read() throws {
    let adapter = try PEFTAdapter(ggufAdapter: Self.ggufAdapter)
    #expect(adapter.modules.count == 60)
    #expect(adapter.modules.allSatisfy { $0.rank == 4 && $0.scaling == 2 && $0.rowsInGGUFOrder })
    #expect(adapter.modules.contains { $0.path == "blk.0.attn_q" })
    #expect(throws: FlareError.self) {
      try PEFTAdapter(ggufAdapter: fixturePath("gguf/tiny-llama.gguf"))
    }
  }

  @Test(
    "merging the GGUF adapter equals merging the PEFT adapter it came from; HF bases are refused")
  func merge() throws {
    if offline && !fileExists(Self.base) { return }
    #expect(
      fileExists(Self.base), "run scripts/fetch-models.sh (or make test) to fetch the real model")
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let fromGGUF = try runTool(
      "flare-merge",
      [
        "--base", Self.base, "--adapter", Self.ggufAdapter, "--output", "\(folder)/a.gguf",
        "--outtype", "f32", "--verify", "-q",
      ])
    #expect(fromGGUF.status == 0, "\(fromGGUF.stderr)")
    let fromPEFT = try runTool(
      "flare-merge",
      [
        "--base", Self.base, "--adapter", fixturePath("peft/smollm2-demo-lora"), "--output",
        "\(folder)/b.gguf", "--outtype", "f32", "-q",
      ])
    #expect(fromPEFT.status == 0)
    let a = try GGUFFile(path: "\(folder)/a.gguf")
    let b = try GGUFFile(path: "\(folder)/b.gguf")
    for tensor in a.tensors {
      let other = try #require(b.tensor(tensor.name))
      #expect(a.bytes(of: tensor).elementsEqual(b.bytes(of: other)), "\(tensor.name)")
    }
    let hf = try runTool(
      "flare-merge",
      [
        "--base", fixturePath("peft/base-llama"), "--adapter", Self.ggufAdapter, "--output",
        "\(folder)/c",
      ])
    #expect(hf.status == 1)
    #expect(hf.stderr.contains("merges into GGUF bases only"))
  }
}
