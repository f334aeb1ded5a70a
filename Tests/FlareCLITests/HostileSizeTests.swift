import FlareCore
import Foundation
import Testing
import _FlareTestSupport

/// Hostile sizes never allocate: files that claim sizes far beyond what they hold are refused
/// before any allocation of that size. Each tool runs under a 1 GiB address-space limit
/// (`ulimit -v`), so an allocation the claim drives would fail and crash the tool (a signal,
/// not exit 1) and the test with it. Oracle: exit 1 with an error naming the claim.
@Suite("hostile sizes")
struct HostileSizeTests {
  /// Runs `tool` under a `kilobytes` address-space limit. Tools built with AddressSanitizer
  /// (`scripts/sanitize.sh` sets `FLARE_SANITIZED=address`) reserve terabytes of shadow address
  /// space and cannot start under `ulimit -v`; for them the same cap is ASan's largest single
  /// allocation (`max_allocation_size_mb`), and an allocation beyond it aborts with exit 99, so
  /// the oracle (exit 1 naming the claim) still tells a refused claim from an attempted one.
  func runCapped(_ tool: String, _ arguments: [String], kilobytes: Int = 1 << 20) throws
    -> ToolResult
  {
    let quoted = arguments.map { "'\($0.replacingOccurrences(of: "'", with: "'\\''"))'" }
    let cap: String
    if ProcessInfo.processInfo.environment["FLARE_SANITIZED"] == "address" {
      cap =
        "export ASAN_OPTIONS=\"${ASAN_OPTIONS:-}:max_allocation_size_mb=\(kilobytes >> 10):allocator_may_return_null=0:exitcode=99\""
    } else {
      cap = "ulimit -v \(kilobytes)"
    }
    return try runTool(
      "/bin/sh",
      [
        "-c",
        // One OpenBLAS thread and two malloc arenas: on a machine with many cores, per-thread
        // stacks and arenas alone would otherwise reserve more than the cap.
        "\(cap); export OPENBLAS_NUM_THREADS=1 MALLOC_ARENA_MAX=2; exec '\(productsFolder())/\(tool)' \(quoted.joined(separator: " "))",
      ])
  }

  @Test("a safetensors header claiming 2^62 x 4 elements")
  func safetensorsShape() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    var header = Array(
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}".utf8)
    while header.count % 8 != 0 { header.append(0x20) }
    let path = "\(scratch)/claim.safetensors"
    writeBytes(
      withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) } + header
        + [UInt8](repeating: 0, count: 16), to: path)
    let result = try runCapped("flare-inspect", ["--check", "--data", path])
    #expect(result.status == 1, "\(result.stderr)")
    #expect(result.stderr.contains("'w'"), "\(result.stderr)")
  }

  @Test("a GGUF tensor claiming 2^62 x 4 elements, and a vocabulary of 10^9 tokens")
  func ggufClaims() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    // GGUF v3, one tensor 'w' of dims [2^62, 4] F32 at offset 0, then 16 bytes of data.
    var bytes = Array("GGUF".utf8)
    func u32(_ v: UInt32) { bytes += withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    func u64(_ v: UInt64) { bytes += withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    u32(3)
    u64(1)
    u64(0)
    u64(1)
    bytes += Array("w".utf8)
    u32(2)
    u64(1 << 62)
    u64(4)
    u32(0)
    u64(0)
    while bytes.count % 32 != 0 { bytes.append(0) }
    bytes += [UInt8](repeating: 0, count: 16)
    let path = "\(scratch)/claim.gguf"
    writeBytes(bytes, to: path)
    let result = try runCapped("flare-inspect", ["--check", "--data", path])
    #expect(result.status == 1, "\(result.stderr)")
    #expect(result.stderr.contains("'w'"), "\(result.stderr)")
    // The committed malformed file whose token array claims more entries than the file holds.
    let vocabulary = try runCapped(
      "flare-inspect", [fixturePath("gguf/malformed/bad-array-count-huge.gguf")])
    #expect(vocabulary.status == 1, "\(vocabulary.stderr)")
  }

  /// The tiny Llama of Fixtures/peft with one config field set to a hostile size.
  @Test(
    "config.json claiming hidden_size 2^30, vocab_size 10^9 or 2^40 positions",
    arguments: [
      ("hidden_size", 1 << 30), ("vocab_size", 1_000_000_000),
      ("max_position_embeddings", 1 << 40), ("intermediate_size", 1 << 40),
    ])
  func configClaims(field: String, value: Int) throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let model = "\(scratch)/model"
    try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
    try FileManager.default.copyItem(
      atPath: fixturePath("peft/base-llama/model.safetensors"), toPath: "\(model)/model.safetensors"
    )
    try FileManager.default.copyItem(
      atPath: fixturePath("fuzz/tokenizer-json/seed-bpe-smollm2-64.json"),
      toPath: "\(model)/tokenizer.json")
    let config = try loadFixtureJSON("peft/base-llama/config.json")
    let members = (config.objectMembers ?? []).map { key, old in
      key == field ? (key, JSONValue.number(String(value))) : (key, old)
    }
    writeBytes(Array(JSONWriter.compact(.object(members)).utf8), to: "\(model)/config.json")
    let result = try runCapped("flare-eval", ["logits", "--model", model, "--prompt", "hi"])
    #expect(result.status == 1, "\(field) \(value): \(result.stderr)")
    #expect(result.stderr.contains(field), "\(result.stderr)")
  }

  @Test("a 1 GiB JSONL line is refused by its line number, without reading it into memory")
  func hugeTrainingLine() throws {
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    // Sparse: one line of 1 GiB after a real first line, no disk used.
    let data = "\(scratch)/train.jsonl"
    let first = Array("{\"text\": \"a short first line\"}\n{\"text\": \"".utf8)
    writeBytes(first, to: data)
    try #require(truncate(data, off_t(first.count + (1 << 30))) == 0)
    let result = try runCapped(
      "flare-train",
      [
        "lora", "--model", fixturePath("peft/base-llama"), "--data", data, "--output",
        "\(scratch)/out", "--max-steps", "1", "--threads", "1",
      ], kilobytes: 3 << 20)
    #expect(result.status == 1, "\(result.stderr)")
    #expect(
      result.stderr.contains("\(data):2: data error: the line is longer than 16 MiB"),
      "\(result.stderr)")
  }
}
