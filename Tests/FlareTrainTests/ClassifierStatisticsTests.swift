import FlareCore
import FlareTrain
import Foundation
import Testing
import _FlareTestSupport

/// The statistics of the cross-lingual benchmark: metrics on a known confusion matrix (values
/// worked out by hand, as scikit-learn's accuracy_score and f1_score(average="macro") define
/// them), Student's t intervals (tabulated quantiles), the paired bootstrap against its known
/// limits and the normal approximation, and `flare-eval significance` on classify results.
@Suite("classifier statistics")
struct ClassifierStatisticsTests {
  /// Truth and predictions with the confusion matrix [[3,1,0],[1,2,1],[0,0,2]] (rows: truth).
  static let confusion = [[3, 1, 0], [1, 2, 1], [0, 0, 2]]
  static var pairs: (truth: [Int], predictions: [Int]) {
    var truth: [Int] = []
    var predictions: [Int] = []
    for (t, row) in confusion.enumerated() {
      for (p, count) in row.enumerated() {
        truth += Array(repeating: t, count: count)
        predictions += Array(repeating: p, count: count)
      }
    }
    return (truth, predictions)
  }

  @Test("accuracy and macro-F1 of a known confusion matrix")
  func knownMatrix() {
    let (truth, predictions) = Self.pairs
    let accuracy = ClassifierStatistics.Metric.accuracy.value(
      predictions: predictions, truth: truth)
    #expect(accuracy == 0.7)
    // F1 per class: 2TP / (2TP + FP + FN) = 6/8, 4/7, 4/5.
    let f1 = ClassifierStatistics.Metric.macroF1.value(predictions: predictions, truth: truth)
    #expect(abs(f1 - (6.0 / 8 + 4.0 / 7 + 4.0 / 5) / 3) < 1e-15)
  }

  @Test("95 % intervals over seeds use Student's t")
  func intervals() {
    #expect(ClassifierStatistics.t975(degrees: 2) == 4.303)
    #expect(ClassifierStatistics.t975(degrees: 30) == 2.042)
    #expect(abs(ClassifierStatistics.t975(degrees: 60) - 2.000) < 1e-12)
    #expect(abs(ClassifierStatistics.t975(degrees: 100_000) - 1.960) < 1e-4)
    let (mean, half) = ClassifierStatistics.meanInterval([0.5, 0.6, 0.7])
    #expect(abs(mean - 0.6) < 1e-15)
    #expect(abs(half - 4.303 * 0.1 / 3.0.squareRoot()) < 1e-12)
    #expect(ClassifierStatistics.meanInterval([0.4]) == (0.4, 0))
  }

  @Test(
    "paired bootstrap: no difference gives p = 1; a clear one a small p and the normal interval")
  func bootstrap() {
    let (truth, predictions) = Self.pairs
    let same = ClassifierStatistics.pairedBootstrap(
      truth: truth, a: predictions, b: predictions, metric: .macroF1, resamples: 500)
    #expect(same.difference == 0 && same.low == 0 && same.high == 0 && same.pValue == 1)
    // 100 examples of 2 classes: A right on the first 50, B on those and 20 more.
    let truth2 = (0..<100).map { $0 % 2 }
    let a = truth2.enumerated().map { $0.offset < 50 ? $0.element : 1 - $0.element }
    let b = truth2.enumerated().map { $0.offset < 70 ? $0.element : 1 - $0.element }
    let result = ClassifierStatistics.pairedBootstrap(
      truth: truth2, a: a, b: b, metric: .accuracy, resamples: 10_000, seed: 7)
    #expect(abs(result.difference - 0.2) < 1e-12)
    // Per-example differences are 1 on 20 examples, 0 elsewhere: standard error 0.04, so
    // the 95 % interval is about 0.2 ± 0.078 (the bootstrap's is discrete, steps of 0.01).
    #expect(abs(result.low - (0.2 - 1.96 * 0.04)) <= 0.015, "\(result.low)")
    #expect(abs(result.high - (0.2 + 1.96 * 0.04)) <= 0.015, "\(result.high)")
    // Five standard errors from 0: no resample comes back that far.
    #expect(result.pValue < 0.001)
    let again = ClassifierStatistics.pairedBootstrap(
      truth: truth2, a: a, b: b, metric: .accuracy, resamples: 10_000, seed: 7)
    #expect(again == result)
    // Swapping the sides mirrors the difference and keeps the p-value.
    let swapped = ClassifierStatistics.pairedBootstrap(
      truth: truth2, a: b, b: a, metric: .accuracy, resamples: 10_000, seed: 7)
    #expect(swapped.difference == -result.difference && swapped.pValue == result.pValue)
  }

  /// A classify --json result with these predictions (labels "x", "y", "z").
  static func result(_ truth: [Int], _ predictions: [Int], lines: [Int]? = nil) -> String {
    let labels = ["x", "y", "z"]
    let entries = zip(truth, predictions).enumerated().map { index, pair in
      JSONValue.object([
        ("line", .integer(lines?[index] ?? index + 1)), ("label", .string(labels[pair.0])),
        ("prediction", .string(labels[pair.1])),
      ])
    }
    return JSONWriter.compact(
      .object([
        ("labels", .array(labels.map { .string($0) })), ("predictions", .array(entries)),
      ]))
  }

  @Test("flare-eval significance reads classify results, pairs them and refuses other test sets")
  func tool() throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let (truth, predictions) = Self.pairs
    let better = truth  // every example right
    // Two of the three mistakes fixed: accuracy 0.9.
    var wrong = zip(truth, predictions).enumerated().filter { $0.element.0 != $0.element.1 }
    wrong.removeLast()
    var fewer = predictions
    for (index, pair) in wrong { fewer[index] = pair.0 }
    for (name, values) in [
      ("a1", predictions), ("a2", predictions), ("b1", better), ("b2", fewer),
    ] {
      writeBytes(Array(Self.result(truth, values).utf8), to: "\(work)/\(name).json")
    }
    let run = try runTool(
      "flare-eval",
      [
        "significance", "--a", "\(work)/a1.json", "--b", "\(work)/b1.json", "--a",
        "\(work)/a2.json", "--b", "\(work)/b2.json", "--resamples", "1000", "--json",
      ])
    try #require(run.status == 0, "\(run.stderr)")
    let json = try JSONParser.parse(Array(run.stdout.utf8))
    #expect(json["examples"]?.intValue == 10)
    #expect(json["metrics"]?["accuracy"]?["a"]?["mean"]?.doubleValue == 0.7)
    #expect(json["metrics"]?["accuracy"]?["a"]?["half_width"]?.doubleValue == 0)
    let b = json["metrics"]?["accuracy"]?["b"]?["mean"]?.doubleValue ?? 0
    #expect(abs(b - 0.95) < 1e-12, "\(b)")
    // Seed-level differences 0.3 and 0.2: mean 0.25, standard deviation √0.005, half-width
    // t(0.975, 1) · sd / √2 = 12.706 · 0.05 = 0.6353.
    let difference = json["metrics"]?["accuracy"]?["difference"]
    let mean = difference?["mean"]?.doubleValue ?? 0
    let half = difference?["half_width"]?.doubleValue ?? 0
    #expect(abs(mean - 0.25) < 1e-12, "\(mean)")
    #expect(abs(half - 0.6353) < 1e-9, "\(half)")
    let pair = json["pairs"]?.arrayValue?.first
    #expect(abs((pair?["accuracy"]?["difference"]?.doubleValue ?? 0) - 0.3) < 1e-12)
    // Accuracy: the per-example differences are 1 on 3 of 10 examples. A resample's difference
    // is X/10 with X ~ Binomial(10, 0.3); it is at least 0.3 away from 0.3 when X = 0 or X ≥ 6,
    // with probability 0.0755 (summed exactly); 1,000 resamples put p within ±0.025.
    let p = pair?["accuracy"]?["p"]?.doubleValue ?? 1
    #expect(abs(p - 0.0755) < 0.025, "\(p)")
    writeBytes(
      Array(Self.result(truth, better, lines: Array(2...11)).utf8), to: "\(work)/other.json")
    let mismatch = try runTool(
      "flare-eval", ["significance", "--a", "\(work)/a1.json", "--b", "\(work)/other.json"])
    #expect(mismatch.status == 1)
    #expect(mismatch.stderr.contains("other.json"), "\(mismatch.stderr)")
    let unpaired = try runTool("flare-eval", ["significance", "--a", "\(work)/a1.json"])
    #expect(unpaired.status == 64)
  }
}

/// `scripts/crosslingual.sh --tiny` end to end with the built tools (12 training verses, one
/// seed): every row runs and reaches the report, and the report's numbers are the classify
/// results' (accuracy recomputed from the per-example predictions). Not the results: the tiny
/// slice cannot learn the task.
@Suite("cross-lingual grid, tiny slice")
struct CrosslingualTinyTests {
  @Test("scripts/crosslingual.sh --tiny runs every row and reports them (e5-small)")
  func tiny() throws {
    let folder = "\(modelCache)/models/multilingual-e5-small"
    guard fileExists("\(folder)/config.json") else { return }
    try run(model: "e5")
  }

  @Test("scripts/crosslingual.sh --tiny --model smollm2: the decoder rows")
  func tinyDecoder() throws {
    guard try smolLM2HFFolder() != nil else { return }
    try run(model: "smollm2")
  }

  func run(model: String) throws {
    let work = makeTemporaryFolder()
    defer { removeTree(work) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = [
      "\(packageRoot)/scripts/crosslingual.sh", "--tiny", "--model", model, "--out", work,
    ]
    var environment = ProcessInfo.processInfo.environment
    environment["FLARE_BIN"] = productsFolder()
    environment["FLARE_CACHE"] = modelCache
    process.environment = environment
    let errors = Pipe()
    process.standardError = errors
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let stderr = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    try #require(
      process.terminationStatus == 0, "\(String(decoding: stderr, as: UTF8.self))")
    let summary = try JSONParser.parse(fileBytes("\(work)/summary.json"))
    let rows = summary["rows"]?.arrayValue ?? []
    #expect(
      rows.compactMap { $0["name"]?.stringValue } == [
        "zero-shot", "translate-test", "lora-tt", "input-fusion", "flare-add_relu",
        "flare-add_relu-oracle", "flare-add_relu-target-only",
      ])
    for row in rows {
      let name = row["name"]?.stringValue ?? ""
      let result = try JSONParser.parse(fileBytes("\(work)/eval/\(name)-s0.json"))
      let predictions = result["predictions"]?.arrayValue ?? []
      #expect(predictions.count == 12, "\(name)")
      let right = predictions.filter { $0["label"] == $0["prediction"] }.count
      #expect(row["accuracy"]?["mean"]?.doubleValue == Double(right) / 12, "\(name)")
    }
    #expect(rows[2]["train_wall_s"]?.doubleValue ?? 0 > 0)
    #expect(rows[4]["vs_lora_tt"]?.arrayValue?.count == 1)
    // One seed: the seed-level difference is the single pair's, with no interval.
    let pair = rows[4]["vs_lora_tt"]?.arrayValue?.first?["accuracy"]?["difference"]?.doubleValue
    let seeds = rows[4]["vs_lora_tt_seeds"]?["accuracy"]
    #expect(pair != nil && seeds?["mean"]?.doubleValue == pair)
    #expect(seeds?["half_width"]?.doubleValue == 0)
    let report = try String(contentsOfFile: "\(work)/report.md", encoding: .utf8)
    #expect(report.contains("| flare-add_relu-target-only |") && report.contains("pipeline check"))
    #expect(report.contains("- flare-add_relu: ") && report.contains("## Verdict"))
    let described = model == "e5" ? "multilingual-e5-small" : "SmolLM2-135M-Instruct"
    #expect(report.contains(described), "\(model)")
    #expect(fileExists("\(work)/accuracy.svg") && fileExists("\(work)/curves.svg"))
  }
}
