import FlareCore
import Foundation
import Testing
import _FlareTestSupport

#if canImport(Glibc)
  import Glibc
#endif

/// Outputs under hostile conditions: a full disk and a read-only file system (small tmpfs
/// mounts the test makes; root is needed, so without it these two are skipped with a note),
/// an output that is a folder, the same path as input and output, two processes writing one
/// output. Each gets a clear error naming the path (exit 1) or a correct result; the previous
/// output is never damaged and no temporary file stays. Oracles: the previous output's bytes
/// and an undisturbed run's output.
@Suite("output faults", .serialized)
struct OutputFaultTests {
  let base = fixturePath("peft/base-llama/model.safetensors")
  let adapter = fixturePath("peft/lora-plain")
  let otherAdapter = fixturePath("peft/lora-plain-2")

  /// Mounts a tmpfs of `kilobytes` at a fresh folder (read-only after `prepare` when
  /// `readOnly`); `nil` when not root.
  func withTmpfs(
    kilobytes: Int, readOnly: Bool = false, prepare: (String) throws -> Void = { _ in },
    _ body: (String) throws -> Void
  ) throws {
    guard getuid() == 0 else {
      print("note: not root, the tmpfs cases are skipped")
      return
    }
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    try #require(shell("/bin/mount", ["-t", "tmpfs", "-o", "size=\(kilobytes)k", "tmpfs", folder]))
    defer { _ = shell("/bin/umount", [folder]) }
    try prepare(folder)
    if readOnly {
      try #require(shell("/bin/mount", ["-o", "remount,ro", folder]))
    }
    try body(folder)
  }

  func shell(_ tool: String, _ arguments: [String]) -> Bool {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: tool)
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return false }
    process.waitUntilExit()
    return process.terminationStatus == 0
  }

  func temporaries(in folder: String) -> [String] {
    folderContents(folder).filter { $0.contains(".flare-tmp-") }
  }

  @Test("a full disk: exit 1 naming the output, the previous output intact, nothing staged left")
  func diskFull() throws {
    // 160 KiB: room for one 92 KiB merged model, not for a second one beside it.
    try withTmpfs(kilobytes: 160) { folder in
      let output = "\(folder)/merged.safetensors"
      let merge = ["--base", base, "--output", output, "--force", "-q"]
      try #require(try runTool("flare-merge", merge + ["--adapter", otherAdapter]).status == 0)
      let previous = fileBytes(output)
      let result = try runTool("flare-merge", merge + ["--adapter", adapter])
      #expect(result.status == 1)
      #expect(result.stderr.contains(output), "\(result.stderr)")
      #expect(result.stderr.lowercased().contains("no space left"), "\(result.stderr)")
      #expect(fileBytes(output) == previous)
      #expect(temporaries(in: folder).isEmpty, "\(temporaries(in: folder))")
    }
    // A folder output (flare-convert to an HF folder), same rules.
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let gguf = try FaultModels.tinyLlamaGGUF(in: scratch)
    try withTmpfs(kilobytes: 160) { folder in
      let output = "\(folder)/hf"
      try #require(
        try runTool("flare-convert", [gguf, output, "--outtype", "f16", "-q"]).status == 0)
      let previous = folderSnapshot(output)
      let result = try runTool("flare-convert", [gguf, output, "--force", "-q"])
      #expect(result.status == 1)
      #expect(result.stderr.contains(output), "\(result.stderr)")
      #expect(folderSnapshot(output) == previous)
      #expect(temporaries(in: folder).isEmpty, "\(temporaries(in: folder))")
    }
  }

  /// Training on a disk that fills up: a checkpoint that does not fit stops the run with an
  /// error naming the file, the previous checkpoint stays whole, and once there is room
  /// `--resume` finishes with the uninterrupted run's adapter.
  @Test("a full disk while checkpointing: exit 1, the last checkpoint whole and resumable")
  func diskFullWhileTraining() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let model = try FaultModels.tinyBERT(in: scratch)
    let straight = "\(scratch)/straight"
    try #require(
      try runTool(
        "flare-train", FaultModels.trainArguments(model: model, output: straight, steps: 12)
      )
      .status == 0)
    let expected = fileBytes("\(straight)/adapter_model.safetensors")
    try withTmpfs(kilobytes: 512) { folder in
      // Leave room for about two checkpoints (one is published before the previous one goes).
      let checkpoint = folderContents(straight).first { $0.hasPrefix("checkpoint-") } ?? ""
      let size = folderContents("\(straight)/\(checkpoint)").reduce(0) {
        $0 + fileBytes("\(straight)/\(checkpoint)/\($1)").count
      }
      try #require(size > 0)
      let filler = "\(folder)/filler"
      writeBytes([UInt8](repeating: 1, count: 512 * 1024 - 5 * size / 2 - 8192), to: filler)
      let output = "\(folder)/out"
      let arguments = FaultModels.trainArguments(model: model, output: output, steps: 12)
      let result = try runTool("flare-train", arguments)
      #expect(result.status == 1, "\(result.stderr)")
      #expect(result.stderr.contains(output), "\(result.stderr)")
      #expect(result.stderr.lowercased().contains("no space left"), "\(result.stderr)")
      let checkpoints = folderContents(output).filter { $0.hasPrefix("checkpoint-") }
      try #require(!checkpoints.isEmpty, "no checkpoint fitted: \(folderContents(output))")
      for name in checkpoints {
        #expect(
          folderContents("\(output)/\(name)") == [
            "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
            "trainer_state.json", "training_log.jsonl",
          ], "\(name)")
      }
      #expect(temporaries(in: output).isEmpty && temporaries(in: folder).isEmpty)
      unlink(filler)
      let resumed = try runTool("flare-train", arguments + ["--resume", output])
      #expect(resumed.status == 0, "\(resumed.stderr)")
      #expect(fileBytes("\(output)/adapter_model.safetensors") == expected)
    }
  }

  @Test("a read-only file system: exit 1 naming the output, the previous output intact")
  func readOnly() throws {
    var previous: [UInt8] = []
    try withTmpfs(
      kilobytes: 512, readOnly: true,
      prepare: { folder in
        let made = try runTool(
          "flare-merge",
          [
            "--base", base, "--adapter", otherAdapter, "--output", "\(folder)/merged.safetensors",
            "-q",
          ])
        try #require(made.status == 0)
        previous = fileBytes("\(folder)/merged.safetensors")
      }
    ) { folder in
      let output = "\(folder)/merged.safetensors"
      let result = try runTool(
        "flare-merge", ["--base", base, "--adapter", adapter, "--output", output, "--force", "-q"])
      #expect(result.status == 1)
      #expect(result.stderr.contains(output), "\(result.stderr)")
      #expect(result.stderr.lowercased().contains("read-only"), "\(result.stderr)")
      #expect(fileBytes(output) == previous)
    }
  }

  @Test("an output path that is a folder is refused by name for a file output")
  func outputIsAFolder() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let folder = "\(scratch)/taken"
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    writeBytes([7], to: "\(folder)/keep.txt")
    let result = try runTool(
      "flare-merge", ["--base", base, "--adapter", adapter, "--output", folder, "--force", "-q"])
    #expect(result.status == 1)
    #expect(
      result.stderr.contains("\(folder): io error: output is a directory"), "\(result.stderr)")
    #expect(folderContents(folder) == ["keep.txt"])
    let gguf = try runTool(
      "flare-convert",
      [
        fixturePath("gguf/tiny-llama.gguf"), "\(scratch)/taken", "--outtype", "q8_0", "--force",
        "-q",
      ])
    #expect(gguf.status != 0)
    #expect(folderContents(folder) == ["keep.txt"])
  }

  @Test("the same path as input and output gives the result of a separate output")
  func sameInputAndOutput() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let separate = "\(scratch)/separate.safetensors"
    try #require(
      try runTool(
        "flare-merge", ["--base", base, "--adapter", adapter, "--output", separate, "-q"]
      )
      .status == 0)
    // A file merged onto itself (the base stays mapped from the old file while the new one is
    // staged and renamed over it).
    let inPlace = "\(scratch)/in-place.safetensors"
    try FileManager.default.copyItem(atPath: base, toPath: inPlace)
    let result = try runTool(
      "flare-merge",
      ["--base", inPlace, "--adapter", adapter, "--output", inPlace, "--force", "-q"])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(fileBytes(inPlace) == fileBytes(separate))
    #expect(temporaries(in: scratch).isEmpty)
    // A folder merged onto itself: the untouched files stay, the weights are the merged ones.
    let folder = "\(scratch)/model"
    try FileManager.default.copyItem(atPath: fixturePath("peft/base-llama"), toPath: folder)
    let config = fileBytes("\(folder)/config.json")
    let folderResult = try runTool(
      "flare-merge", ["--base", folder, "--adapter", adapter, "--output", folder, "--force", "-q"])
    #expect(folderResult.status == 0, "\(folderResult.stderr)")
    #expect(fileBytes("\(folder)/model.safetensors") == fileBytes(separate))
    #expect(fileBytes("\(folder)/config.json") == config)
    #expect(temporaries(in: scratch).isEmpty)
  }

  @Test("two processes writing one output: it ends as one of the two complete outputs")
  func concurrentWriters() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    var expected: [[UInt8]] = []
    for (i, source) in [adapter, otherAdapter].enumerated() {
      let path = "\(scratch)/expected-\(i).safetensors"
      try #require(
        try runTool("flare-merge", ["--base", base, "--adapter", source, "--output", path, "-q"])
          .status == 0)
      expected.append(fileBytes(path))
    }
    for output in ["\(scratch)/shared.safetensors", "\(scratch)/shared-folder"] {
      let isFolder = !output.hasSuffix(".safetensors")
      let baseInput = isFolder ? fixturePath("peft/base-llama") : base
      for round in 0..<5 {
        let processes = [adapter, otherAdapter].map { source -> Process in
          let process = Process()
          process.executableURL = URL(fileURLWithPath: "\(productsFolder())/flare-merge")
          process.arguments = [
            "--base", baseInput, "--adapter", source, "--output", output, "--force", "-q",
          ]
          process.standardError = FileHandle.nullDevice
          return process
        }
        for process in processes { try process.run() }
        for process in processes { process.waitUntilExit() }
        for process in processes { #expect(process.terminationStatus == 0, "round \(round)") }
        let weights = isFolder ? "\(output)/model.safetensors" : output
        #expect(expected.contains(fileBytes(weights)), "round \(round): a mixed or partial output")
        #expect(temporaries(in: scratch).isEmpty, "round \(round): \(temporaries(in: scratch))")
      }
    }
  }

  /// A 512 MiB safetensors file (sparse: no disk used) truncated by another program while
  /// `flare-inspect --check --data` scans it: the read past the new end raises SIGBUS, which
  /// the tools turn into an error naming the file and exit 1. Retried with a later cut when
  /// the cut came before the file was mapped (then the size check refuses it, also exit 1).
  @Test("an input truncated while it is mapped: exit 1 naming the file, no crash")
  func truncatedWhileMapped() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let path = "\(scratch)/big.safetensors"
    let count = 128 << 20
    var header = Array(
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[\(count)],\"data_offsets\":[0,\(4 * count)]}}".utf8)
    while header.count % 8 != 0 { header.append(0x20) }
    var sawBusError = false
    for delay in [0.3, 0.6, 1.2] where !sawBusError {
      var bytes = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) }
      bytes += header
      writeBytes(bytes, to: path)
      try #require(truncate(path, off_t(bytes.count + 4 * count)) == 0)
      let process = Process()
      process.executableURL = URL(fileURLWithPath: "\(productsFolder())/flare-inspect")
      process.arguments = ["--check", "--data", "--quiet", path]
      let errors = Pipe()
      process.standardError = errors
      process.standardOutput = FileHandle.nullDevice
      try process.run()
      usleep(useconds_t(delay * 1e6))
      #expect(truncate(path, 100_000_000) == 0)
      let stderr = String(
        decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
      process.waitUntilExit()
      #expect(process.terminationReason == .exit, "killed by signal \(process.terminationStatus)")
      #expect(process.terminationStatus == 1, "\(stderr)")
      sawBusError = stderr.contains("\(path): io error: the file changed size while it was read")
    }
    #expect(sawBusError, "the cut never came while the file was being scanned")
  }

  /// Every file of a folder with its bytes.
  func folderSnapshot(_ folder: String) -> [String: [UInt8]] {
    Dictionary(
      uniqueKeysWithValues: folderContents(folder).map { ($0, fileBytes("\(folder)/\($0)")) })
  }
}
