import FlareCore
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// A merge interrupted while it writes (SIGTERM, SIGINT) leaves no output and no temporary
/// file, and exits with 128 + the signal number.
///
/// The interruption is made certain, not left to a random delay: the test waits until the
/// merge's temporary file appears, stops the process (SIGSTOP), checks that the temporary file is
/// there and the output is not (so the merge is caught mid-write), then sends the signal and
/// lets it continue. Stopping as soon as the file appears also hits the moment it is created,
/// which is why temporary files are registered before they exist. A round in which the merge
/// finished before it could be stopped is not counted; the test needs four interrupted rounds.
@Suite("interrupted merges")
struct MergeInterruptTests {
  @Test("SIGTERM or SIGINT while the output is being written leaves nothing behind")
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

    var interrupted = 0
    var attempts = 0
    while interrupted < 4 && attempts < 12 {
      attempts += 1
      // A fresh folder each round, so nothing a round left can be taken for the next one's file.
      let outputs = "\(folder)/outputs-\(attempts)"
      try FileManager.default.createDirectory(atPath: outputs, withIntermediateDirectories: true)
      let out = "\(outputs)/merged.safetensors"
      let signal = interrupted % 2 == 0 ? SIGTERM : SIGINT
      let process = Process()
      process.executableURL = URL(fileURLWithPath: "\(productsFolder())/flare-merge")
      process.arguments = ["--base", base, "--adapter", adapter, "--output", out, "--force", "-q"]
      try process.run()
      // Wait (at most 60 s) for the temporary file, then freeze the merge where it is.
      let deadline = Date().addingTimeInterval(60)
      var caught = false
      while process.isRunning && Date() < deadline {
        if folderContents(outputs).contains(where: { $0.contains(".flare-tmp-") }) {
          kill(process.processIdentifier, SIGSTOP)
          let left = folderContents(outputs)
          caught =
            process.isRunning && left.contains { $0.contains(".flare-tmp-") }
            && !left.contains("merged.safetensors")
          break
        }
        usleep(200)
      }
      if caught {
        kill(process.processIdentifier, signal)
        kill(process.processIdentifier, SIGCONT)
      } else {
        kill(process.processIdentifier, SIGCONT)
      }
      process.waitUntilExit()
      let left = folderContents(outputs)
      if caught {
        interrupted += 1
        #expect(
          process.terminationStatus == 128 + signal,
          "signal \(signal): exit \(process.terminationStatus)")
        #expect(left.isEmpty, "signal \(signal) left \(left)")
      } else {
        // Finished before it could be stopped: the output must be complete.
        #expect(process.terminationStatus == 0)
        #expect(left == ["merged.safetensors"], "\(left)")
        #expect(try SafetensorsFile(path: out).tensors.count == 4)
      }
      removeTree(out)
    }
    #expect(interrupted == 4, "only \(interrupted) of \(attempts) merges were caught mid-write")
  }
}
