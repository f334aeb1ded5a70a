import FlareCore
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// Llama sequence classification end to end on the real SmolLM2-135M (F32 folder): flare-train
/// trains LoRA on q_proj/v_proj and `LlamaForSequenceClassification`'s `score` head,
/// `flare-eval classify` evaluates the adapter, `flare-merge --verify` bakes it, against
/// `Fixtures/training/make_llama_classify.py` (PEFT and transformers on the adapter and the
/// merged folder the same commands wrote there). Data: the sentiment examples of
/// `Fixtures/training/encoder-run/`.
@Suite(
  "flare-train classification on SmolLM2: PEFT, flare-eval classify and the merged model agree")
struct LlamaClassifyRunTests {
  static let oracle = "training/llama-cls/oracle.json"

  /// Oracles: PEFT (`PeftModel.from_pretrained` on transformers'
  /// `LlamaForSequenceClassification`) with the adapter the script's run of the same command
  /// wrote: `flare-eval classify` gives its logits within 1e-3 absolute, the same predictions,
  /// confusion matrix, accuracy and macro-F1 (scikit-learn), and its mean cross-entropy within
  /// 1e-5; transformers alone on the folder `flare-merge --verify` wrote: `flare-eval classify`
  /// on our merged folder gives its logits within 1e-3, and the merge's own checks pass
  /// (stored tensors = base + ΔW; merged vs base + adapter class logits within 1e-3).
  @Test(
    "a trained Llama classifier: PEFT loads it, flare-eval classify and the merged folder agree")
  func classifier() throws {
    guard let model = try smolLM2HFFolder() else { return }
    let golden = try loadFixtureJSON(Self.oracle)
    let scratch = makeTemporaryFolder()
    defer { removeTree(scratch) }
    let adapter = "\(scratch)/adapter"
    let arguments = try #require(golden["flare_train_arguments"]?.arrayValue).map {
      ($0.stringValue ?? "").replacing("{model}", with: model)
        .replacing("{data}", with: EncoderRunTests.data).replacing("{output}", with: adapter)
    }
    _ = try EncoderRunTests.run("flare-train", arguments + ["--threads", "2"])
    let config = try JSONParser.parse(try readSmallFile("\(adapter)/adapter_config.json"))
    #expect(config["task_type"] == .string("SEQ_CLS"))
    #expect(config["modules_to_save"] == .array([.string("classifier"), .string("score")]))
    let saved = try SafetensorsFile(path: "\(adapter)/adapter_model.safetensors").views.map(\.name)
    #expect(saved.contains("base_model.model.score.weight"))
    #expect(saved.count == 30 * 2 * 2 + 1)

    let bytes = fileBytes("\(adapter)/adapter_model.safetensors")
    let sameBytes = golden["flare_adapter_crc32"]?.intValue == Int(CRC32.checksum(bytes))
    let tolerance = try #require(golden["tolerance"])
    let peft = try #require(golden["test_peft_with_flare_adapter"])
    let report = try EncoderRunTests.classify(model: model, adapter: adapter)
    let worst = try EncoderRunTests.compareLogits(report, peft, tolerance: tolerance)
    #expect(
      EncoderRunTests.matrix(report["confusion"]) == EncoderRunTests.matrix(peft["confusion"]))
    for (key, limit) in [("accuracy", 1e-12), ("macro_f1", 1e-12), ("loss", 1e-5)] {
      let got = try #require(report[key]?.doubleValue)
      let expected = try #require(peft[key]?.doubleValue)
      #expect(abs(got - expected) <= limit, "\(key): \(got), scikit-learn/PEFT \(expected)")
    }
    #expect(report["labels"] == golden["labels"])
    print(
      "SmolLM2 classifier: flare-eval classify vs PEFT with flare-train's adapter (\(sameBytes ? "the same bytes the script evaluated" : "bytes differ from the script's run")): logits worst absolute difference \(worst)"
    )

    let merged = "\(scratch)/merged"
    let mergeArguments = try #require(golden["flare_merge_arguments"]?.arrayValue).map {
      ($0.stringValue ?? "").replacing("{model}", with: model)
        .replacing("{adapter}", with: adapter).replacing("{output}", with: merged)
    }
    let merge = try JSONParser.parse(
      Array(try EncoderRunTests.run("flare-merge", mergeArguments).stdout.utf8))
    #expect(merge["verified"]?.doubleValue == 0, "stored tensors differ from base + ΔW")
    let forward = try #require(merge["forward"])
    #expect(forward["checked"] == .bool(true) && forward["bounded"] == .bool(true))
    let difference = try #require(forward["max_abs_diff"]?.doubleValue)
    #expect(difference <= 1e-3)
    let transformers = try #require(golden["merged"])
    let mergedConfig = try JSONParser.parse(try readSmallFile("\(merged)/config.json"))
    #expect(mergedConfig["architectures"] == transformers["architectures"])
    let classified = try EncoderRunTests.classify(model: merged, adapter: nil)
    let worstMerged = try EncoderRunTests.compareLogits(
      classified, transformers, tolerance: tolerance)
    print(
      "flare-merge --verify: merged vs base + adapter \(difference); flare-eval classify on the merged folder vs transformers on it: logits worst absolute difference \(worstMerged)"
    )
  }
}
