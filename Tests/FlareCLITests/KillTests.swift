import FlareCore
import FlareModels
import Foundation
import Testing
import _FlareTestSupport

#if canImport(Glibc)
  import Glibc
#endif

/// Fault injection: each writing tool killed with SIGKILL at spread points of its run (no
/// handler runs). The output path must hold, after every kill, either its previous complete
/// content or the new complete content, never a mixture or a partial file; a killed training
/// run resumed from its last checkpoint must end with the uninterrupted run's adapter, bit for
/// bit. Oracles: the previous output and an uninterrupted run's output, byte for byte.
///
/// `make test` kills each case at 8 points; `FLARE_KILL_POINTS=50` (scripts/RELIABILITY.md)
/// at 50. The tiny fixtures run for tens of milliseconds; `FLARE_KILL_REAL=1` adds the real
/// SmolLM2 (a merge into an HF folder, a GGUF-to-HF conversion: seconds each, so the kills land
/// in every phase: reading, computing, writing, publishing). With `FLARE_KILL_REPORT=path`
/// each case appends a JSON line with its outcomes.
@Suite("SIGKILL at random points", .serialized)
struct KillTests {
  static let points = Int(ProcessInfo.processInfo.environment["FLARE_KILL_POINTS"] ?? "") ?? 8

  /// Runs `tool` and sends SIGKILL `delay` seconds after its start; whether it was killed
  /// (rather than finished first, with status 0).
  func runKilled(_ tool: String, _ arguments: [String], after delay: Double) throws -> Bool {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "\(productsFolder())/\(tool)")
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    usleep(useconds_t(delay * 1e6))
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
    if process.terminationReason == .uncaughtSignal { return true }
    #expect(
      process.terminationStatus == 0, "\(tool) \(arguments) exited \(process.terminationStatus)")
    return false
  }

  /// Every file under `path` (or the file itself, as ""), by relative path, with its bytes;
  /// folders as "name/".
  func snapshot(_ path: String) -> [String: [UInt8]] {
    var result: [String: [UInt8]] = [:]
    func walk(_ full: String, _ relative: String) {
      if isDirectory(full) {
        if !relative.isEmpty { result[relative + "/"] = [] }
        for name in folderContents(full) {
          walk("\(full)/\(name)", relative.isEmpty ? name : "\(relative)/\(name)")
        }
      } else if fileExists(full) {
        result[relative] = fileBytes(full)
      }
    }
    walk(path, "")
    return result
  }

  /// The staging entries (`.NAME.flare-tmp-PID-…`) beside and inside `path`.
  func leftovers(of path: String) -> [String] {
    [AtomicFileWriter.parentFolder(of: path), path].filter(isDirectory).flatMap { folder in
      folderContents(folder).filter { $0.contains(".flare-tmp-") }
    }
  }

  /// Kill delays spread over `duration` (one per point, each at a random place in its slice,
  /// seeded), reaching 20 % past it so that some runs finish.
  func delays(over duration: Double) -> [Double] {
    var random = SplitMix64(seed: 20_261_204)
    return (0..<Self.points).map { i in
      (Double(i) + random.nextUnit()) / Double(Self.points) * duration * 1.2
    }
  }

  /// Times one run of `tool` (seconds).
  func timed(_ tool: String, _ arguments: [String]) throws -> Double {
    let start = Date()
    let result = try runTool(tool, arguments)
    try #require(result.status == 0, "\(tool) \(arguments): \(result.stderr)")
    return Date().timeIntervalSince(start)
  }

  func report(_ fields: [(String, JSONValue)]) {
    guard let path = ProcessInfo.processInfo.environment["FLARE_KILL_REPORT"] else { return }
    let line = JSONWriter.compact(.object(fields)) + "\n"
    if let handle = FileHandle(forWritingAtPath: path) {
      handle.seekToEndOfFile()
      handle.write(Data(line.utf8))
      handle.closeFile()
    } else {
      writeBytes(Array(line.utf8), to: path)
    }
  }

  /// One writing tool: `previous` arguments make the old output, `next` the new one (both
  /// write `output`, with --force); each kill must leave one of the two, whole.
  func killCase(
    _ name: String, tool: String, output: String, previous: [String], next: [String],
    scratch: String
  ) throws {
    try #require(try runTool(tool, next).status == 0)
    let new = snapshot(output)
    removeTree(output)
    let duration = try timed(tool, previous)
    let old = snapshot(output)
    try #require(!old.isEmpty && old != new, "\(name): the two outputs must differ")
    var outcomes = ["old": 0, "new": 0]
    var killed = 0
    var leftBehind = 0
    for delay in delays(over: duration) {
      if try runKilled(tool, next, after: delay) { killed += 1 }
      let now = snapshot(output)
      if now == old {
        outcomes["old", default: 0] += 1
      } else if now == new {
        outcomes["new", default: 0] += 1
      } else {
        Issue.record("\(name): killed at \(delay) s, the output is neither the old nor the new one")
      }
      leftBehind += leftovers(of: output).count
      // Back to the old output for the next point; that write removes what the killed
      // process left beside it.
      removeTree(output)
      try #require(try runTool(tool, previous).status == 0)
      #expect(leftovers(of: output).isEmpty, "\(name): \(leftovers(of: output)) left")
    }
    #expect(killed >= 2, "\(name): only \(killed) of \(Self.points) runs were killed")
    report([
      ("case", .string(name)), ("points", .integer(Self.points)), ("killed", .integer(killed)),
      ("old", .integer(outcomes["old"] ?? 0)), ("new", .integer(outcomes["new"] ?? 0)),
      ("staging_left_by_kills", .integer(leftBehind)),
      ("run_seconds", .number(String(format: "%.3f", duration))),
    ])
  }

  @Test("flare-merge into an existing folder and into an existing file")
  func merge() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let base = fixturePath("peft/base-llama")
    for output in ["\(scratch)/merged", "\(scratch)/merged.safetensors"] {
      let common = ["--base", base, "--output", output, "--force", "--quiet"]
      try killCase(
        "flare-merge -> \(output.hasSuffix(".safetensors") ? "file" : "folder")",
        tool: "flare-merge", output: output,
        previous: common + ["--adapter", fixturePath("peft/lora-plain-2")],
        next: common + ["--adapter", fixturePath("peft/lora-plain")], scratch: scratch)
    }
  }

  static var real: Bool { ProcessInfo.processInfo.environment["FLARE_KILL_REAL"] == "1" }

  @Test("on the real SmolLM2: merge into an existing folder, convert to an existing folder")
  func realModel() throws {
    guard Self.real, let model = try smolLM2HFFolder() else { return }
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let merged = "\(scratch)/merged"
    let adapter = fixturePath("peft/smollm2-demo-lora")
    let common = ["--base", model, "--output", merged, "--force", "--quiet"]
    try killCase(
      "flare-merge -> folder, SmolLM2", tool: "flare-merge", output: merged,
      previous: common + ["--adapter", "\(adapter):0.5"], next: common + ["--adapter", adapter],
      scratch: scratch)
    let folder = "\(scratch)/hf"
    try killCase(
      "flare-convert -> folder, SmolLM2", tool: "flare-convert", output: folder,
      previous: [smolLM2GGUF, folder, "--outtype", "f16", "--force", "-q"],
      next: [smolLM2GGUF, folder, "--force", "-q"], scratch: scratch)
  }

  @Test("flare-convert GGUF to an existing HF folder and HF to an existing GGUF file")
  func convert() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let model = try FaultModels.tinyLlama(in: scratch)
    let file = "\(scratch)/model.gguf"
    try killCase(
      "flare-convert -> file", tool: "flare-convert", output: file,
      previous: [model, file, "--outtype", "f16", "--force", "-q"],
      next: [model, file, "--outtype", "f32", "--force", "-q"], scratch: scratch)
    let gguf = "\(scratch)/source.gguf"
    try #require(try runTool("flare-convert", [model, gguf, "-q"]).status == 0)
    let folder = "\(scratch)/hf"
    try killCase(
      "flare-convert -> folder", tool: "flare-convert", output: folder,
      previous: [gguf, folder, "--outtype", "f16", "--force", "-q"],
      next: [gguf, folder, "--force", "-q"], scratch: scratch)
  }

  /// A tiny real BERT classifier (Fixtures/encoders/tiny-bert-cls with a word vocabulary),
  /// trained with a checkpoint every step.
  @Test("flare-train killed while checkpointing resumes to the uninterrupted run's adapter")
  func train() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let model = try FaultModels.tinyBERT(in: scratch)
    func arguments(_ output: String) -> [String] {
      FaultModels.trainArguments(model: model, output: output)
    }
    let straight = "\(scratch)/straight"
    let duration = try timed("flare-train", arguments(straight))
    let expected = fileBytes("\(straight)/adapter_model.safetensors")
    try #require(!expected.isEmpty)
    let output = "\(scratch)/out"
    var killed = 0
    var resumed = 0
    var leftBehind = 0
    for delay in delays(over: duration) {
      removeTree(output)
      if try runKilled("flare-train", arguments(output), after: delay) { killed += 1 }
      leftBehind += leftovers(of: output).count
      // Every checkpoint present is whole: a PEFT folder with its optimizer state.
      let checkpoints = folderContents(output).filter { $0.hasPrefix("checkpoint-") }
      // The newest and, when the kill came between publishing it and removing the previous
      // one, that previous one.
      #expect(checkpoints.count <= 2, "\(checkpoints)")
      for checkpoint in checkpoints {
        #expect(
          folderContents("\(output)/\(checkpoint)") == [
            "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
            "trainer_state.json", "training_log.jsonl",
          ], "\(checkpoint) is incomplete")
        let state = try? JSONParser.parse(fileBytes("\(output)/\(checkpoint)/trainer_state.json"))
        #expect(state?["step"]?.intValue == Int(checkpoint.dropFirst("checkpoint-".count)))
      }
      // The final adapter is there whole or not at all.
      let final = fileExists("\(output)/adapter_model.safetensors")
      #expect(final == fileExists("\(output)/adapter_config.json"))
      if final {
        #expect(fileBytes("\(output)/adapter_model.safetensors") == expected)
        continue
      }
      let again =
        checkpoints.isEmpty
        ? try runTool("flare-train", arguments(output) + ["--force"])
        : try runTool("flare-train", arguments(output) + ["--resume", output])
      #expect(again.status == 0, "\(again.stderr)")
      if !checkpoints.isEmpty { resumed += 1 }
      #expect(
        fileBytes("\(output)/adapter_model.safetensors") == expected,
        "killed at \(delay) s: the finished adapter differs from the uninterrupted run's")
      // The finishing run removed what the killed one left.
      #expect(leftovers(of: output).isEmpty, "\(leftovers(of: output)) left")
    }
    #expect(killed >= 2, "only \(killed) of \(Self.points) runs were killed")
    #expect(resumed >= 1, "no kill left a checkpoint to resume from")
    report([
      ("case", .string("flare-train checkpoints")), ("points", .integer(Self.points)),
      ("killed", .integer(killed)), ("resumed", .integer(resumed)),
      ("staging_left_by_kills", .integer(leftBehind)),
      ("run_seconds", .number(String(format: "%.3f", duration))),
    ])
  }
}
