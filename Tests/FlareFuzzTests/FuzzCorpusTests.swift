import FlareFuzz
import Testing
import _FlareTestSupport

/// The fuzz targets replayed over their committed corpora (`Fixtures/fuzz/NAME` plus their
/// seeds among the other fixtures) with the plain build of `flare-fuzz`: every reproducer a
/// campaign found stays fixed, and the targets reach their readers. `make fuzz-regress` (part
/// of `make test`) replays the same corpora under AddressSanitizer with libFuzzer.
@Suite struct FuzzCorpusTests {
  /// The inputs `flare-fuzz replay` reports as accepted (relative paths), and its status.
  func replay(_ target: String) throws -> (status: Int32, accepted: Set<String>, summary: String) {
    let result = try runTool("flare-fuzz", ["replay", target, "--root", packageRoot])
    let lines = result.stderr.split(separator: "\n").map(String.init)
    let accepted = Set(lines.filter { $0.hasPrefix("accepted ") }.map { String($0.dropFirst(9)) })
    return (result.status, accepted, lines.last ?? "")
  }

  @Test(arguments: FuzzTarget.all.map(\.name))
  func corpusReplaysWithoutATrap(target: String) throws {
    let files = FuzzTarget.named(target)!.corpusFiles(root: packageRoot)
    #expect(files.count >= 1, "\(target) has no corpus")
    let (status, accepted, summary) = try replay(target)
    #expect(status == 0, "\(summary)")
    let expected = "flare-fuzz: \(target): \(files.count) inputs replayed"
    #expect(summary.hasPrefix(expected), "\(summary)")
    // Every target reaches its reader: some input gets through every check.
    #expect(!accepted.isEmpty, "\(target): no input accepted")
  }

  /// The malformed fixtures stay refused and the well-formed ones accepted when they reach the
  /// readers through the fuzz targets (oracle: each fixture's name, `bad-*` or `ok-*`).
  @Test(arguments: ["safetensors", "gguf"])
  func malformedCorporaKeepTheirVerdicts(target: String) throws {
    let folder = target == "gguf" ? "Fixtures/gguf/malformed" : "Fixtures/safetensors/malformed"
    let (status, accepted, _) = try replay(target)
    #expect(status == 0)
    let files = folderContents("\(packageRoot)/\(folder)").filter { !$0.hasSuffix(".json") }
    let bad = files.filter { $0.hasPrefix("bad-") }
    let good = files.filter { $0.hasPrefix("ok-") }
    #expect(bad.count >= 20 && good.count >= 3)
    for name in bad { #expect(!accepted.contains("\(folder)/\(name)"), "\(name) accepted") }
    for name in good { #expect(accepted.contains("\(folder)/\(name)"), "\(name) refused") }
  }

  /// The JSON target's invariant (a parsed value writes and parses back to itself) holds on
  /// every JSON fixture, and the seeds of the other targets reach their readers.
  @Test func realSeedsAreAccepted() throws {
    let checks: [(String, String)] = [
      ("gguf-model", "Fixtures/gguf/tiny-llama.gguf"),
      ("gguf-model", "Fixtures/fuzz/gguf-model/seed-tiny-qwen3-q8_0.gguf"),
      ("gguf-model", "Fixtures/fuzz/gguf-model/seed-tiny-gemma2-q8_0.gguf"),
      ("llama-config", "Fixtures/families/tiny-gemma3/config.json"),
      ("gguf-lora", "Fixtures/peft/smollm2-demo-lora.gguf"),
      ("shard-index", "Fixtures/safetensors/sharded/model.safetensors.index.json"),
      ("peft-adapter", "Fixtures/fuzz/peft-adapter/seed-lora-plain"),
      ("tokenizer-json", "Fixtures/fuzz/tokenizer-json/seed-unigram-xlmr.json"),
      ("tokenizer-json", "Fixtures/fuzz/tokenizer-json/seed-bpe-smollm2.json"),
      ("tokenizer-json", "Fixtures/fuzz/tokenizer-json/seed-wordpiece-minilm.json"),
      ("training-data", "Fixtures/fuzz/training-data/seed-bible-train-es-mt"),
      ("llama-config", "Fixtures/peft/base-llama/config.json"),
      ("bert-config", "Fixtures/encoders/tiny-xlmr-cls/config.json"),
    ]
    for (target, file) in checks {
      let (status, accepted, summary) = try replay(target)
      #expect(status == 0, "\(summary)")
      #expect(accepted.contains(file), "\(target) refused \(file)")
    }
  }
}
