import FlareAdapters
import FlareCore
import FlareModels
import FlareSafetensors
import FlareTrain
import Foundation
import Testing
import _FlareTestSupport

/// `flare-merge` adding a sequence-classification head to an encoder checkpoint that has none
/// (the MiniLM case, against PyTorch + PEFT and transformers, is in ``EncoderRunTests``).
@Suite("flare-merge: classification heads into headless encoders")
struct EncoderMergeTests {
  /// A base encoder made from a tiny task checkpoint of `Fixtures/encoders`: the tensors
  /// `keep` accepts, renamed by `rename`, and its config without the task fields.
  static func base(
    _ fixture: String, in folder: String, keep: (String) -> Bool, rename: (String) -> String
  ) throws -> String {
    let source = try SafetensorsFile(
      path: fixturePath("encoders/\(fixture)/model.safetensors"))
    let path = "\(folder)/base"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    try PEFTWriter.writeTensors(
      source.views.filter { keep($0.name) }.map {
        PEFTTensor(name: rename($0.name), shape: $0.shape, values: $0.floats())
      }, to: "\(path)/model.safetensors")
    let config = try loadFixtureJSON("encoders/\(fixture)/config.json")
    let members = (config.objectMembers ?? []).filter {
      !["architectures", "id2label", "label2id"].contains($0.0)
    }
    writeText(JSONWriter.pretty(.object(members)) + "\n", to: "\(path)/config.json")
    return path
  }

  /// A SEQ_CLS adapter with LoRA on the query layers and the given saved head tensors.
  static func adapter(
    in folder: String, modules: [String], hidden: Int, heads: [(String, [Int])], labels: [String]
  ) throws -> String {
    var random = SplitMix64(seed: 41)
    func values(_ count: Int) -> [Float] { (0..<count).map { _ in random.symmetric(0.3) } }
    var tensors: [PEFTTensor] = []
    for module in modules {
      tensors.append(
        PEFTTensor(
          name: "base_model.model.\(module).lora_A.weight", shape: [2, hidden],
          values: values(2 * hidden)))
      tensors.append(
        PEFTTensor(
          name: "base_model.model.\(module).lora_B.weight", shape: [hidden, 2],
          values: values(2 * hidden)))
    }
    for (name, shape) in heads {
      tensors.append(
        PEFTTensor(
          name: "base_model.model.\(name)", shape: shape, values: values(shape.reduce(1, *))))
    }
    let path = "\(folder)/adapter"
    let labelsJSON = JSONValue.object([("labels", .array(labels.map { .string($0) }))])
    _ = try PEFTWriter.write(
      folder: path,
      config: PEFTLoRAConfig(
        r: 2, loraAlpha: 4, targetModules: ["query"], taskType: "SEQ_CLS",
        modulesToSave: ["classifier", "score"]),
      tensors: tensors,
      extraFiles: [("flare_labels.json", Array((JSONWriter.pretty(labelsJSON) + "\n").utf8))],
      overwrite: false)
    return path
  }

  /// Oracle: the merge's own checks — every stored tensor is base + ΔW (or the saved copy), and
  /// the merged folder's class logits equal the base's with the adapter's LoRA unmerged and its
  /// saved head (the unmerged path is the one checked against PEFT in EncoderTrainingTests),
  /// within 1e-3 for F32. An adapter named for `XLMRobertaForSequenceClassification`
  /// (`roberta.` prefix) merges into a prefix-less checkpoint (as multilingual-e5-small is), and
  /// the folder becomes an `XLMRobertaForSequenceClassification` with the adapter's labels.
  @Test("an XLM-R head is added, the config names it, --verify compares class logits")
  func robertaHead() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let base = try Self.base(
      "tiny-xlmr-cls", in: folder, keep: { !$0.hasPrefix("classifier.") },
      rename: { String($0.dropFirst("roberta.".count)) })
    let adapter = try Self.adapter(
      in: folder,
      modules: (0..<2).map { "roberta.encoder.layer.\($0).attention.self.query" }, hidden: 16,
      heads: [
        ("classifier.dense.weight", [16, 16]), ("classifier.dense.bias", [16]),
        ("classifier.out_proj.weight", [3, 16]), ("classifier.out_proj.bias", [3]),
      ], labels: ["sad", "calm", "glad"])
    let merged = "\(folder)/merged"
    let result = try runTool(
      "flare-merge",
      ["--base", base, "--adapter", adapter, "--output", merged, "--verify", "--json"])
    try #require(result.status == 0, "\(result.stderr)")
    let report = try JSONParser.parse(Array(result.stdout.utf8))
    #expect(report["verified"]?.doubleValue == 0)
    let forward = try #require(report["forward"])
    #expect(forward["checked"] == .bool(true) && forward["bounded"] == .bool(true))
    #expect(forward["compared"] == .string("logits"))
    #expect((forward["max_abs_diff"]?.doubleValue ?? 1) <= 1e-3)
    let stored = try SafetensorsFile(path: "\(merged)/model.safetensors")
    for name in [
      "classifier.dense.weight", "classifier.out_proj.bias",
      "encoder.layer.1.attention.self.query.weight",
    ] {
      #expect(stored.info(name) != nil, "\(name) is not in the merged file")
    }
    let config = try JSONParser.parse(try readSmallFile("\(merged)/config.json"))
    #expect(config["architectures"] == .array([.string("XLMRobertaForSequenceClassification")]))
    #expect(
      config["id2label"]
        == .object([("0", .string("sad")), ("1", .string("calm")), ("2", .string("glad"))]))
    #expect(config["label2id"]?["glad"]?.intValue == 2)
  }

  /// BERT's classifier reads the pooler: a base and an adapter without one are refused before
  /// anything is written, naming the missing tensor.
  @Test("a BERT head without a pooler is refused")
  func bertWithoutPooler() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let base = try Self.base(
      "tiny-bert-cls", in: folder,
      keep: { !$0.hasPrefix("classifier.") && !$0.contains("pooler.") }, rename: { $0 })
    let adapter = try Self.adapter(
      in: folder, modules: [], hidden: 16,
      heads: [("classifier.weight", [3, 16]), ("classifier.bias", [3])], labels: ["a", "b", "c"])
    let merged = "\(folder)/merged"
    let result = try runTool(
      "flare-merge", ["--base", base, "--adapter", adapter, "--output", merged])
    #expect(result.status == 1)
    #expect(result.stderr.contains("classifier sits on the pooler"), "\(result.stderr)")
    #expect(!fileExists(merged))
  }
}
