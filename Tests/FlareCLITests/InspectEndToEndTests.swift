import FlareCLI
import FlareCore
import Foundation
import Testing
import _FlareTestSupport

/// Runs the built `flare-inspect` and checks stdout, stderr and the exit status.
@Suite("flare-inspect end to end")
struct InspectEndToEndTests {
  static let statsGolden: JSONValue =
    (try? loadFixtureJSON("golden/safetensors-stats.json")) ?? .null

  func inspect(_ arguments: String...) throws -> ToolResult {
    try runTool("flare-inspect", arguments)
  }

  @Test("--help prints the overview, usage and every option to stdout and exits 0")
  func help() throws {
    let result = try inspect("--help")
    #expect(result.status == 0)
    #expect(result.stderr.isEmpty)
    #expect(result.stdout.hasPrefix("OVERVIEW: "))
    for option in [
      "--json", "--check", "--data", "--stats", "--diff <path> <path>", "--tolerance <tolerance>",
      "-q, --quiet", "-h, --help",
    ] {
      #expect(result.stdout.contains(option), "help lacks \(option)")
    }
  }

  struct UsageCase: Sendable, CustomTestStringConvertible {
    var arguments: [String]
    var message: String
    var testDescription: String { arguments.joined(separator: " ") }
  }

  static let usageCases = [
    UsageCase(
      arguments: ["--chek", "x"], message: "unknown option '--chek'. Did you mean '--check'?"),
    UsageCase(
      arguments: ["--jsn", "x"], message: "unknown option '--jsn'. Did you mean '--json'?"),
    UsageCase(arguments: [], message: "missing expected argument '<path>'"),
    UsageCase(arguments: ["--data", "x"], message: "'--data' needs '--check'"),
    UsageCase(arguments: ["--diff", "a"], message: "missing value for '--diff <path> <path>'"),
    UsageCase(
      arguments: ["--diff", "a", "b", "--tolerance", "abc"],
      message: "the value 'abc' is invalid for '--tolerance <tolerance>'"),
    UsageCase(arguments: ["x", "--tolerance", "1"], message: "'--tolerance' needs '--diff'"),
    UsageCase(arguments: ["--json=1", "x"], message: "option '--json' does not take a value"),
    UsageCase(
      arguments: ["--diff", "--quiet", "a", "b"],
      message: "missing value for '--diff <path> <path>'"),
    UsageCase(
      arguments: ["--diff", "a", "-q"], message: "missing value for '--diff <path> <path>'"),
  ]

  @Test(
    "usage errors exit 64 with the message, the usage line and a pointer to --help",
    arguments: usageCases)
  func usage(_ testCase: UsageCase) throws {
    let result = try runTool("flare-inspect", testCase.arguments)
    #expect(result.status == 64)
    #expect(result.stdout.isEmpty)
    let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false).map(
      String.init)
    #expect(lines.first == "flare-inspect: error: \(testCase.message)")
    #expect(lines.count >= 3 && lines[1].hasPrefix("Usage: flare-inspect "))
    #expect(lines.count >= 3 && lines[2] == "See 'flare-inspect --help' for more information.")
  }

  @Test("the listing shows metadata, one row per tensor and the totals")
  func listing() throws {
    let result = try inspect(fixturePath("safetensors/small.safetensors"))
    #expect(result.status == 0)
    #expect(result.stderr.isEmpty)
    let expected = """
      \(fixturePath("safetensors/small.safetensors")): safetensors, 234 bytes, header 8 + 200 bytes, data at 208
      metadata:
        format = pt
      tensors:
        #  name  dtype  shape   data offsets  bytes
        0  a     F32    [2, 2]  [0, 16)          16
        1  c     I32    [1]     [16, 20)          4
        2  b     F16    [3]     [20, 26)          6
      total: 3 tensors, 8 parameters, 26 bytes (26 bytes)

      """
    #expect(result.stdout == expected)
  }

  /// Oracle: `Fixtures/golden/safetensors-stats.json` (names, dtypes, shapes and offsets read by
  /// numpy/safetensors in file order).
  @Test(
    "--json lists every tensor in file order, as the oracle reads the file",
    arguments: [
      "dtypes.safetensors", "empty.safetensors", "unaligned.safetensors", "scalars.safetensors",
    ])
  func json(file: String) throws {
    let result = try inspect("--json", fixturePath("safetensors/\(file)"))
    #expect(result.status == 0)
    let document = try JSONParser.parse(Array(result.stdout.utf8))
    #expect(document["format"] == .string("safetensors"))
    let tensors = try #require(document["tensors"]?.arrayValue)
    let golden = try #require(Self.statsGolden[file]?["tensors"]?.arrayValue)
    #expect(tensors.count == golden.count)
    for (got, want) in zip(tensors, golden) {
      for key in ["name", "dtype", "shape", "data_offsets"] {
        #expect(got[key] == want[key], "\(key) of \(want["name"] ?? .null)")
      }
    }
  }

  @Test("sharded models list a file per tensor; PEFT adapters show r, alpha, scaling and targets")
  func shardsAndAdapters() throws {
    let sharded = try inspect(
      "--json", fixturePath("safetensors/sharded/model.safetensors.index.json"))
    #expect(sharded.status == 0)
    let document = try JSONParser.parse(Array(sharded.stdout.utf8))
    let files = try #require(document["tensors"]?.arrayValue).compactMap { $0["file"]?.stringValue }
    #expect(files.count == 5)
    #expect(Set(files) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])

    let adapter = try inspect(fixturePath("safetensors/peft-adapter"))
    #expect(adapter.status == 0)
    #expect(
      adapter.stdout.contains("adapter: PEFT LORA, r=4, lora_alpha=8, scaling lora_alpha/r = 2"))
    #expect(adapter.stdout.contains("target modules: q_proj, v_proj"))
    #expect(
      adapter.stdout.contains("rank_pattern: model.layers.1.self_attn.q_proj -> r=2, scaling 4"))
    let json = try JSONParser.parse(
      Array(try inspect("--json", fixturePath("safetensors/peft-adapter")).stdout.utf8))
    #expect(json["adapter"]?["scaling"]?.doubleValue == 2)
    #expect(json["adapter"]?["r"]?.intValue == 4)
  }

  @Test(
    "--check passes valid files and fails malformed ones naming the file, tensor and byte offset")
  func check() throws {
    let ok = try inspect("--check", fixturePath("safetensors/dtypes.safetensors"))
    #expect(ok.status == 0)
    #expect(ok.stdout.contains(": OK: safetensors file, 22 tensors"))
    let bad = fixturePath("safetensors/malformed/bad-offsets-overlap.safetensors")
    let failed = try inspect("--check", bad)
    #expect(failed.status == 1)
    #expect(failed.stdout.hasPrefix("\(bad): FAILED: \(bad): safetensors error: tensor '"))
    #expect(failed.stdout.contains("(at byte "))
    #expect(failed.stderr.hasPrefix("flare-inspect: error: \(bad): safetensors error: "))
    let json = try inspect("--check", "--json", bad)
    #expect(json.status == 1)
    let document = try JSONParser.parse(Array(json.stdout.utf8))
    #expect(document["error"]?["code"] == .string("invalidOffset"))
    #expect(document["error"]?["offset"]?.intValue != nil)
    // Several inputs: one failure makes the exit status 1 but the others are still checked.
    let mixed = try inspect("--check", fixturePath("safetensors/small.safetensors"), bad)
    #expect(mixed.status == 1)
    #expect(mixed.stdout.contains("small.safetensors: OK"))
  }

  @Test("--check --data finds NaN and Inf values and names the tensors")
  func checkData() throws {
    let result = try inspect("--check", "--data", fixturePath("safetensors/dtypes.safetensors"))
    #expect(result.status == 1)
    #expect(result.stdout.contains("tensor 'f32' has "))
    let clean = try inspect("--check", "--data", fixturePath("safetensors/small.safetensors"))
    #expect(clean.status == 0)
    #expect(clean.stdout.contains("no NaN or Inf in 2 float tensors"))
  }

  /// Oracle: numpy statistics in `Fixtures/golden/safetensors-stats.json` (float32 values,
  /// float64 mean and std, finite values only). Tolerance: min, max and counts exact; mean and
  /// std within 1e-9 relative (different summation orders in float64).
  @Test(
    "--stats --json matches numpy on every fixture tensor",
    arguments: [
      "dtypes.safetensors", "empty.safetensors", "scalars.safetensors", "unaligned.safetensors",
      "peft-adapter/adapter_model.safetensors",
    ])
  func stats(file: String) throws {
    let result = try inspect("--stats", "--json", fixturePath("safetensors/\(file)"))
    #expect(result.status == 0)
    try compareStats(result.stdout, golden: try #require(Self.statsGolden[file]))
  }

  func compareStats(_ output: String, golden: JSONValue) throws {
    let document = try JSONParser.parse(Array(output.utf8))
    let tensors = try #require(document["tensors"]?.arrayValue)
    let expected = try #require(golden["tensors"]?.arrayValue)
    #expect(tensors.count == expected.count)
    for (got, want) in zip(tensors, expected) {
      let name = want["name"]?.stringValue ?? "?"
      let stats = try #require(got["stats"])
      let oracle = try #require(want["stats"])
      for key in ["count", "finite", "nan", "inf"] {
        #expect(stats[key]?.intValue == oracle[key]?.intValue, "\(name).\(key)")
      }
      for key in ["min", "max"] {
        // float32 values, written as the shortest text that reads back: compare as Float, exactly.
        #expect(
          stats[key]?.doubleValue.map(Float.init) == oracle[key]?.doubleValue.map(Float.init),
          "\(name).\(key)")
      }
      for key in ["mean", "std"] {
        switch (stats[key]?.doubleValue, oracle[key]?.doubleValue) {
        case (nil, nil): break
        case (let a?, let b?):
          #expect(abs(a - b) <= 1e-9 * max(1, abs(b)), "\(name).\(key): \(a) vs \(b)")
        default:
          Issue.record(
            "\(name).\(key): \(String(describing: stats[key])) vs \(String(describing: oracle[key]))"
          )
        }
      }
    }
  }

  @Test("--diff finds nothing between a file and itself, and names the tensor that changed")
  func diff() throws {
    let small = fixturePath("safetensors/small.safetensors")
    let same = try inspect("--diff", small, small)
    #expect(same.status == 0)
    #expect(same.stdout.contains("result: identical within tolerance (3 tensors compared)"))
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    var bytes = fileBytes(small)
    let aOffset = 208 + 4  // tensor 'a' element 1 (F32)
    let changed: Float = 1234.5
    withUnsafeBytes(of: changed.bitPattern.littleEndian) {
      for (i, b) in $0.enumerated() { bytes[aOffset + i] = b }
    }
    let other = "\(folder)/changed.safetensors"
    writeBytes(bytes, to: other)
    let different = try inspect("--diff", small, other)
    #expect(different.status == 1)
    #expect(different.stdout.contains("DIFFERS"))
    let json = try JSONParser.parse(
      Array(try inspect("--diff", small, other, "--json").stdout.utf8))
    let rows = try #require(json["tensors"]?.arrayValue)
    let a = try #require(rows.first { $0["name"] == .string("a") })
    let original = try SafetensorsTestValues.floats(small, "a")
    #expect(a["max_abs"]?.doubleValue == Double(abs(changed - original[1])))
    #expect(
      rows.filter { $0["name"] != .string("a") }.allSatisfy { $0["max_abs"]?.doubleValue == 0 })
    let loose = try inspect("--diff", small, other, "--tolerance", "1e6")
    #expect(loose.status == 0)
    let mismatch = try inspect("--diff", small, fixturePath("safetensors/dtypes.safetensors"))
    #expect(mismatch.status == 1)
    #expect(mismatch.stdout.contains("only in \(small): a"))
  }

  @Test("missing and malformed inputs fail with exit 1 and a message naming the file")
  func failures() throws {
    let missing = try inspect("/nonexistent/model.safetensors")
    #expect(missing.status == 1)
    #expect(
      missing.stderr
        == "flare-inspect: error: /nonexistent/model.safetensors: io error: no such file or directory\n"
    )
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    // A GGUF cut short after its version: a GGUF error naming the field and the offset.
    writeBytes(Array("GGUF".utf8) + [3, 0, 0, 0, 1, 0], to: "\(folder)/m.gguf")
    let gguf = try inspect("\(folder)/m.gguf")
    #expect(gguf.status == 1)
    #expect(
      gguf.stderr.contains("m.gguf: gguf error: file ends inside the tensor count (at byte 8)"))
    let bad = fixturePath("safetensors/malformed/bad-shape-overflow.safetensors")
    let result = try inspect(bad)
    #expect(result.status == 1)
    #expect(result.stderr.contains("\(bad): safetensors error: tensor '"))
  }

  // MARK: - The real model

  /// Oracle: the real all-MiniLM-L6-v2 `model.safetensors`, read by the Python `safetensors`
  /// package and numpy (`Fixtures/golden/make_stats_golden.py`). Tolerances as for `stats`.
  @Test("the real MiniLM model: listing, totals, check and statistics match the oracle")
  func realModel() throws {
    let path = "\(miniLMFolder)/model.safetensors"
    if offline && !fileExists(path) { return }
    #expect(fileExists(path), "run scripts/fetch-models.sh (or make test) to fetch the real model")
    let golden = try #require(Self.statsGolden["minilm"])
    let listing = try inspect("--json", path)
    #expect(listing.status == 0)
    let document = try JSONParser.parse(Array(listing.stdout.utf8))
    #expect(document["metadata"] == golden["metadata"])
    #expect(document["header_length"]?.intValue == golden["header_length"]?.intValue)
    #expect(
      document["totals"]?["parameters"]?.intValue == golden["totals"]?["parameters"]?.intValue)
    #expect(document["totals"]?["bytes"]?.intValue == golden["totals"]?["bytes"]?.intValue)
    let tensors = try #require(document["tensors"]?.arrayValue)
    let expected = try #require(golden["tensors"]?.arrayValue)
    #expect(tensors.count == 104)
    for (got, want) in zip(tensors, expected) {
      for key in ["name", "dtype", "shape", "data_offsets"] { #expect(got[key] == want[key]) }
    }
    let text = try inspect(miniLMFolder)
    #expect(text.status == 0)
    #expect(
      text.stdout.contains("total: 104 tensors, 22713728 parameters, 90856960 bytes (86.6 MiB)"))
    let check = try inspect("--check", "--data", path)
    #expect(check.status == 0)
    #expect(check.stdout.contains("no NaN or Inf in 103 float tensors"))
    let stats = try inspect("--stats", "--json", "--quiet", path)
    #expect(stats.status == 0)
    try compareStats(stats.stdout, golden: golden)
  }
}

/// Small helpers reading fixture values through the library (used as a cross-check only).
enum SafetensorsTestValues {
  static func floats(_ path: String, _ name: String) throws -> [Float] {
    let bytes = fileBytes(path)
    let length = Int(
      bytes.prefix(8).enumerated().reduce(UInt64(0)) {
        $0 | UInt64($1.element) << (8 * UInt64($1.offset))
      })
    let header = try JSONParser.parse(Array(bytes[8..<(8 + length)]))
    let offsets = try #require(header[name]?["data_offsets"]?.arrayValue).compactMap(\.intValue)
    let data = Array(bytes[(8 + length + offsets[0])..<(8 + length + offsets[1])])
    return stride(from: 0, to: data.count, by: 4).map { i in
      Float(
        bitPattern: UInt32(data[i]) | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2]) << 16 | UInt32(
          data[i + 3]) << 24)
    }
  }
}

/// `flare-inspect` on GGUF against gguf-dump's recorded output
/// (`Fixtures/golden/gguf-dump-*.txt` and `.json`, made by `Fixtures/gguf/make_fixtures.py`).
@Suite("flare-inspect on GGUF, against gguf-dump")
struct InspectGGUFTests {
  static let smolLM2 = "\(modelCache)/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

  static func target(_ name: String) -> String? {
    switch name {
    case "smollm2": offline && !fileExists(smolLM2) ? nil : smolLM2
    default: fixturePath("gguf/\(name).gguf")
    }
  }

  @Test(
    "the text listing equals gguf-dump's stdout line for line",
    arguments: ["smollm2", "tiny-llama", "metadata-all-types"])
  func text(name: String) throws {
    guard let path = Self.target(name) else { return }
    let result = try runTool("flare-inspect", [path])
    #expect(result.status == 0)
    #expect(result.stderr.isEmpty)
    let expected = String(
      decoding: fileBytes(fixturePath("golden/gguf-dump-\(name).txt")), as: UTF8.self)
    #expect(!expected.isEmpty)
    let got = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
    let want = expected.split(separator: "\n", omittingEmptySubsequences: false)
    #expect(got.count == want.count)
    for (i, (a, b)) in zip(got, want).enumerated() where a != b {
      Issue.record("line \(i + 1): \(a) != \(b)")
      break
    }
  }

  /// The same document structure as `gguf-dump --json` (extra members allowed); `filename`
  /// is the path as given.
  @Test(
    "--json (and --json-array) give gguf-dump's document",
    arguments: [
      "smollm2", "tiny-llama", "tiny-llama-array", "metadata-all-types", "metadata-all-types-array",
    ])
  func json(name: String) throws {
    let arrays = name.hasSuffix("-array")
    guard let path = Self.target(arrays ? String(name.dropLast(6)) : name) else { return }
    let result = try runTool("flare-inspect", ["--json", path] + (arrays ? ["--json-array"] : []))
    #expect(result.status == 0)
    let got = try JSONParser.parse(Array(result.stdout.utf8))
    let want = try loadFixtureJSON("golden/gguf-dump-\(name).json")
    #expect(got["filename"] == .string(path))
    #expect(got["endian"] == want["endian"])
    for section in ["metadata", "tensors"] {
      let ours = try #require(got[section]?.objectMembers)
      let theirs = try #require(want[section]?.objectMembers)
      #expect(ours.map(\.0) == theirs.map(\.0), "\(section) keys")
      for ((key, a), (_, b)) in zip(ours, theirs) {
        for (field, value) in try #require(b.objectMembers) {
          #expect(Self.same(a[field], value), "\(section) \(key).\(field)")
        }
      }
    }
  }

  /// Numbers compare by value (Flare writes floats as Python does; JSON text may differ in
  /// form, e.g. `1e+300`), everything else exactly.
  static func same(_ a: JSONValue?, _ b: JSONValue) -> Bool {
    guard let a else { return false }
    switch (a, b) {
    case (.number(let x), .number(let y)):
      return x == y || (Double(x) != nil && Double(x) == Double(y))
    case (.array(let x), .array(let y)):
      return x.count == y.count && zip(x, y).allSatisfy { same($0, $1) }
    default: return a == b
    }
  }

  @Test("--no-tensors, --check --data and --stats work on GGUF")
  func modes() throws {
    let path = fixturePath("gguf/tiny-llama.gguf")
    let noTensors = try runTool("flare-inspect", ["--no-tensors", path])
    #expect(noTensors.status == 0)
    #expect(
      !noTensors.stdout.contains("* Dumping" + " 11 tensor(s)")
        && !noTensors.stdout.contains("tensor(s)"))
    let check = try runTool("flare-inspect", ["--check", "--data", path])
    #expect(check.status == 0)
    #expect(check.stdout.contains(": OK: GGUF v3, "))
    let stats = try runTool("flare-inspect", ["--stats", "--json", path])
    #expect(stats.status == 0)
    let document = try JSONParser.parse(Array(stats.stdout.utf8))
    #expect((document["stats"]?.objectMembers?.count ?? 0) > 0)
    let bad = fixturePath("gguf/malformed/bad-duplicate-tensor.gguf")
    let failed = try runTool("flare-inspect", ["--check", bad])
    #expect(failed.status == 1)
    #expect(failed.stdout.hasPrefix("\(bad): FAILED: \(bad): gguf error: tensor '"))
    let usage = try runTool("flare-inspect", ["--json-array", path])
    #expect(usage.status == 64)
  }
}
