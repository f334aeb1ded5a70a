import FlareCore
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// A merge stopped at a random moment (SIGTERM, SIGINT) leaves no output and no temporary file;
/// a merge that finished before the signal left a complete, valid output.
@Suite("interrupted merges")
struct MergeInterruptTests {
  @Test("SIGTERM or SIGINT at seeded random moments leaves nothing, or a complete output")
  func interrupt() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let rows = 2048
    let cols = 2048
    let rank = 32
    let base = "\(folder)/base.safetensors"
    try SafetensorsWriter.write(
      to: base,
      tensors: (0..<4).map {
        TensorSpec(
          name: "model.layers.\($0).self_attn.q_proj.weight", dtype: .f32, shape: [rows, cols])
      }
    ) { sink in
      try [Float](repeating: 0.25, count: rows * cols).withUnsafeBufferPointer {
        try sink.write(floats: $0)
      }
    }
    let adapter = "\(folder)/adapter"
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    var tensors: [(spec: TensorSpec, bytes: [UInt8])] = []
    for layer in 0..<4 {
      let prefix = "base_model.model.model.layers.\(layer).self_attn.q_proj"
      tensors.append(
        (
          TensorSpec(name: "\(prefix).lora_A.weight", dtype: .f32, shape: [rank, cols]),
          [UInt8](repeating: 0, count: rank * cols * 4)
        ))
      tensors.append(
        (
          TensorSpec(name: "\(prefix).lora_B.weight", dtype: .f32, shape: [rows, rank]),
          [UInt8](repeating: 0, count: rows * rank * 4)
        ))
    }
    try SafetensorsWriter.write(to: "\(adapter)/adapter_model.safetensors", tensors: tensors)
    writeBytes(
      Array(#"{"peft_type":"LORA","r":32,"lora_alpha":32}"#.utf8),
      to: "\(adapter)/adapter_config.json")

    var state: UInt64 = 0xF1A2_E000_0000_0042  // seed
    let outputs = "\(folder)/outputs"
    try FileManager.default.createDirectory(atPath: outputs, withIntermediateDirectories: true)
    for round in 0..<6 {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      let delay = Double(state >> 40) / Double(1 << 24) * 0.4
      let process = Process()
      process.executableURL = URL(fileURLWithPath: "\(productsFolder())/flare-merge")
      let out = "\(outputs)/merged.safetensors"
      process.arguments = ["--base", base, "--adapter", adapter, "--output", out, "--force", "-q"]
      try process.run()
      Thread.sleep(forTimeInterval: delay)
      if round % 2 == 0 { process.terminate() } else { kill(process.processIdentifier, SIGINT) }
      process.waitUntilExit()
      let left = folderContents(outputs)
      if process.terminationStatus == 0 {
        #expect(left == ["merged.safetensors"], "round \(round): \(left)")
        #expect(try SafetensorsFile(path: out).tensors.count == 4)
        removeTree(out)
      } else {
        #expect(
          [143, 130, 15, 2].contains(process.terminationStatus),
          "round \(round) seed 0xF1A2E00000000042")
        #expect(left.isEmpty, "round \(round) (delay \(delay) s) left \(left)")
      }
    }
  }
}
