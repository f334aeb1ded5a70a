import FlareCore
import Foundation
import Testing
import _FlareTestSupport

/// Every writer's output is byte-identical across runs and thread counts, on the real SmolLM2
/// files: dequantizing its Q4_1 GGUF to an HF folder, re-quantizing it to Q8_0 (the output head
/// to Q6_K, a K-quant), and merging the demo adapter into it with a Q4_1 GGUF output (the
/// compute-ahead merge and parallel quantization). Each case runs with --threads 1, 2 and 4
/// (three separate runs). Oracle: the single-threaded run's bytes. Training: EncoderRunTests
/// (MiniLM, --threads 1, 2 and 4 and a resume, bit for bit); merge with more threads than
/// tensors: MergeEndToEndTests.
@Suite("byte-identical outputs across thread counts", .serialized)
struct DeterminismTests {
  /// The bytes of `output` (every file of a folder, by name) after `tool` ran with each thread
  /// count.
  func outputs(_ tool: String, output: String, arguments: (String) -> [String]) throws
    -> [[String: [UInt8]]]
  {
    var results: [[String: [UInt8]]] = []
    for threads in ["1", "2", "4"] {
      removeTree(output)
      let result = try runTool(tool, arguments(threads) + ["--threads", threads])
      try #require(result.status == 0, "\(tool) --threads \(threads): \(result.stderr)")
      if isDirectory(output) {
        results.append(
          Dictionary(
            uniqueKeysWithValues: folderContents(output).map { ($0, fileBytes("\(output)/\($0)")) })
        )
      } else {
        results.append(["": fileBytes(output)])
      }
    }
    return results
  }

  @Test("flare-convert: Q4_1 GGUF to an HF folder, and re-quantized to Q8_0 with a Q6_K head")
  func convert() throws {
    guard fileExists(smolLM2GGUF) || !offline else { return }
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let folder = "\(scratch)/hf"
    let dequantized = try outputs("flare-convert", output: folder) { _ in
      [smolLM2GGUF, folder, "-q"]
    }
    #expect(dequantized[0]["model.safetensors"]?.count ?? 0 > 500_000_000)
    #expect(dequantized[1] == dequantized[0], "--threads 2 differs from 1")
    #expect(dequantized[2] == dequantized[0], "--threads 4 differs from 1")
    let gguf = "\(scratch)/q8.gguf"
    let quantized = try outputs("flare-convert", output: gguf) { _ in
      [smolLM2GGUF, gguf, "--outtype", "q8_0", "-q"]
    }
    #expect(quantized[0][""]?.count ?? 0 > 100_000_000)
    #expect(quantized[1] == quantized[0], "--threads 2 differs from 1")
    #expect(quantized[2] == quantized[0], "--threads 4 differs from 1")
  }

  @Test("flare-merge: the demo adapter into SmolLM2, written as a Q4_1 GGUF")
  func merge() throws {
    guard fileExists(smolLM2GGUF) || !offline else { return }
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let output = "\(scratch)/merged.Q4_1.gguf"
    let merged = try outputs("flare-merge", output: output) { _ in
      [
        "--base", smolLM2GGUF, "--adapter", fixturePath("peft/smollm2-demo-lora"), "--output",
        output, "-q",
      ]
    }
    #expect(merged[0][""]?.count ?? 0 > 90_000_000)
    // The merge changed the model (the comparison is not between copies of the base).
    #expect(merged[0][""] != fileBytes(smolLM2GGUF))
    #expect(merged[1] == merged[0], "--threads 2 differs from 1")
    #expect(merged[2] == merged[0], "--threads 4 differs from 1")
  }
}
