import FlareCore
import FlareModels
import FlareTokenizers
import FlareTrain
import Foundation
import Testing
import _FlareTestSupport

/// Reading JSONL training files: every error names the file and the line.
@Suite("training data")
struct DataTests {
  /// One bad input, the task it is read for, the error code and the line it must name.
  struct BadCase: Sendable, CustomStringConvertible {
    var name: String
    var text: String
    var task: TrainingTask
    var code: TrainingDataError.Code
    var line: Int?
    var message: String
    var description: String { name }
  }

  static let badCases: [BadCase] = [
    BadCase(
      name: "malformed JSON", text: "{\"text\": \"a\"}\n{\"text\": \"b\"\n", task: .causalLM,
      code: .malformedJSON, line: 2, message: "malformed JSON"),
    BadCase(
      name: "not an object", text: "[\"text\"]\n", task: .causalLM, code: .notAnObject, line: 1,
      message: "must be a JSON object"),
    BadCase(
      name: "missing text", text: "{\"text\": \"a\"}\n\n{\"body\": \"b\"}\n", task: .causalLM,
      code: .missingField, line: 3, message: "missing field 'text'"),
    BadCase(
      name: "prompt without completion", text: "{\"prompt\": \"a\"}\n", task: .causalLM,
      code: .missingField, line: 1, message: "missing field 'completion'"),
    BadCase(
      name: "completion without prompt", text: "{\"completion\": \"a\"}\n", task: .causalLM,
      code: .missingField, line: 1, message: "missing field 'prompt'"),
    BadCase(
      name: "missing label", text: "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\"}\n",
      task: .classification, code: .missingField, line: 2, message: "missing field 'label'"),
    BadCase(
      name: "text not a string", text: "{\"text\": 5, \"label\": 1}\n", task: .classification,
      code: .wrongType, line: 1, message: "field 'text' is not a string"),
    BadCase(
      name: "label neither string nor integer", text: "{\"text\": \"a\", \"label\": 1.5}\n",
      task: .classification, code: .wrongType, line: 1, message: "neither a string nor an integer"),
    BadCase(
      name: "negative label", text: "{\"text\": \"a\", \"label\": -1}\n", task: .classification,
      code: .wrongType, line: 1, message: "negative"),
    BadCase(
      name: "empty file", text: "", task: .causalLM, code: .emptyFile, line: nil,
      message: "the file is empty"),
    BadCase(
      name: "only blank lines", text: "\n  \n\r\n", task: .classification, code: .emptyFile,
      line: nil, message: "no examples"),
  ]

  /// Oracle: the rules of the data section (each error names the file and the line).
  @Test("bad files are refused with the file and line", arguments: badCases)
  func refused(_ bad: BadCase) throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let path = "\(folder)/train.jsonl"
    writeText(bad.text, to: path)
    do {
      _ = try JSONLReader.read(path: path, task: bad.task)
      Issue.record("\(bad.name) was accepted")
    } catch {
      #expect(error.code == bad.code, "\(bad.name): \(error)")
      #expect(error.line == bad.line, "\(bad.name): \(error)")
      #expect(error.message.contains(bad.message), "\(bad.name): \(error)")
      let position = bad.line.map { "\(path):\($0): " } ?? "\(path): "
      #expect("\(error)".hasPrefix(position + "data error: "), "\(error)")
    }
  }

  @Test("a missing file is reported with its path")
  func missingFile() {
    #expect(throws: TrainingDataError(.unreadable, path: "", line: nil, "")) {
      try JSONLReader.read(path: "/nonexistent/train.jsonl", task: .causalLM)
    }
  }

  @Test("the formats of both tasks are read, CRLF and blank lines included")
  func formats() throws {
    let text =
      "{\"text\": \"hello\"}\r\n\n{\"prompt\": \"q\", \"completion\": \"a\", \"extra\": 1}\n"
    let causal = try JSONLReader.parse(Array(text.utf8), path: "t", task: .causalLM)
    #expect(
      causal == [
        RawExample(line: 1, content: .text("hello")),
        RawExample(line: 3, content: .promptCompletion(prompt: "q", completion: "a")),
      ])
    let pairs =
      "{\"text\": \"a\", \"text_pair\": \"b\", \"label\": \"yes\"}\n{\"text\": \"c\", \"label\": \"no\"}"
    let examples = try JSONLReader.parse(Array(pairs.utf8), path: "t", task: .classification)
    #expect(
      examples == [
        RawExample(line: 1, content: .classification(text: "a", pair: "b", label: .string("yes"))),
        RawExample(line: 2, content: .classification(text: "c", pair: nil, label: .string("no"))),
      ])
  }

  /// Oracle: the label rules of the data section: integers are class ids (`0…max`), strings
  /// sorted; one file cannot mix them; a validation label must be a training label.
  @Test("labels: integers are class ids, strings sorted, kinds not mixed")
  func labels() throws {
    func examples(_ labels: [ExampleLabel]) -> [RawExample] {
      labels.enumerated().map {
        RawExample(
          line: $0.offset + 1, content: .classification(text: "t", pair: nil, label: $0.element))
      }
    }
    let ints = try LabelSet(training: examples([.integer(2), .integer(0)]), path: "t")
    #expect(ints.labels == [.integer(0), .integer(1), .integer(2)])
    #expect(ints.index(of: .integer(2)) == 2)
    #expect(ints.index(of: .integer(3)) == nil)
    let strings = try LabelSet(
      training: examples([.string("positive"), .string("negative"), .string("Neutral")]),
      path: "t")
    #expect(strings.labels == [.string("Neutral"), .string("negative"), .string("positive")])
    #expect(LabelSet(json: strings.json) == strings)
    #expect(throws: TrainingDataError(.mixedLabels, path: "", line: 2, "")) {
      try LabelSet(training: examples([.string("a"), .integer(1)]), path: "t")
    }
    #expect(throws: TrainingDataError(.labelOutOfRange, path: "", line: 2, "")) {
      try LabelSet(training: examples([.integer(1), .integer(1 << 40)]), path: "t")
    }
  }

  /// A validation label the training file lacks, and a token id outside the model's
  /// vocabulary (a tokenizer that is not the model's), are refused at their line.
  @Test("unknown validation labels and tokenizer/model mismatches name the line")
  func encodingErrors() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let tokenizer = try Tokenizer.load(
      folder: try makeWordTokenizer(words: ["good", "bad", "film", "long"], in: folder))
    let encoder = ExampleEncoder(
      tokenizer: tokenizer, layout: .bert, maxLength: 16, vocabularySize: 100)
    let labels = LabelSet(labels: [.string("neg"), .string("pos")])
    let valid = [
      RawExample(
        line: 1, content: .classification(text: "good film", pair: nil, label: .string("pos"))),
      RawExample(line: 4, content: .classification(text: "bad", pair: nil, label: .string("meh"))),
    ]
    do {
      _ = try encoder.encode(valid, path: "valid.jsonl", labels: labels)
      Issue.record("an unknown label was accepted")
    } catch {
      #expect(error.code == .unknownLabel)
      #expect("\(error)".hasPrefix("valid.jsonl:4: data error: label 'meh' is not one of"))
    }
    let small = ExampleEncoder(
      tokenizer: tokenizer, layout: .bert, maxLength: 16, vocabularySize: 6)
    do {
      _ = try small.encode(Array(valid.prefix(1)), path: "train.jsonl", labels: labels)
      Issue.record("a token outside the vocabulary was accepted")
    } catch {
      #expect(error.code == .tokenizerMismatch)
      #expect(error.line == 1)
      #expect(error.message.contains("the tokenizer does not belong to this model"))
    }
  }

  /// Oracle: the definitions: right or left padding to the longest row, padding masked,
  /// `-100` labels on padding, token types padded with 0.
  @Test("batches pad on the family's side")
  func collation() {
    let examples = [
      TokenizedExample(line: 1, tokens: [5, 6, 7], tokenTypes: [0, 0, 1], labels: [5, 6, 7]),
      TokenizedExample(line: 2, tokens: [8], labels: [-100]),
    ]
    let right = Collator(padID: 0, side: .right).batch(examples)
    #expect(right.tokens == [[5, 6, 7], [8, 0, 0]])
    #expect(right.mask == [[true, true, true], [true, false, false]])
    #expect(right.tokenTypes == [[0, 0, 1], [0, 0, 0]])
    guard case .tokens(let labels) = right.targets else {
      Issue.record("causal examples gave class targets")
      return
    }
    #expect(labels == [[5, 6, 7], [-100, -100, -100]])
    let left = Collator(padID: 9, side: .left).batch(examples)
    #expect(left.tokens == [[5, 6, 7], [9, 9, 8]])
    #expect(left.mask[1] == [false, false, true])
  }

  static let golden: JSONValue? = try? loadFixtureJSON("training/data-golden.json")

  static var goldenModels: [String] { (golden?["models"]?.objectMembers ?? []).map(\.0) }

  static func folder(of model: String) -> String {
    switch model {
    case "minilm": "\(modelCache)/models/all-MiniLM-L6-v2"
    case "e5": "\(modelCache)/models/multilingual-e5-small"
    default: "\(modelCache)/models/smollm2-hf"
    }
  }

  /// Oracle: transformers' tokenizers (`tokenizer(text, text_pair, truncation=True,
  /// max_length=…)`) and TRL's SFT tokenization (EOS appended, completion mask, keep-start
  /// truncation), on the real tokenizers of MiniLM (BERT), multilingual-e5 (XLM-R) and
  /// SmolLM2 (`Fixtures/training/make_data_golden.py`). Exact ids, token types and labels.
  @Test("examples tokenize as transformers and TRL build them", arguments: goldenModels)
  func matchesTransformers(model: String) throws {
    let path = Self.folder(of: model)
    guard fileExists(path) || !offline else { return }
    let entry = try #require(Self.golden?["models"]?[model])
    let tokenizer = try Tokenizer.load(folder: path)
    let layout = SequenceLayout(architecture: entry["architecture"]?.stringValue ?? "")
    let labels = LabelSet(labels: [.integer(0)])
    for item in entry["classification"]?.arrayValue ?? [] {
      let encoder = ExampleEncoder(
        tokenizer: tokenizer, layout: layout, maxLength: item["max_length"]?.intValue ?? 0,
        vocabularySize: nil)
      let raw = RawExample(
        line: 1,
        content: .classification(
          text: item["text"]?.stringValue ?? "", pair: item["text_pair"]?.stringValue,
          label: .integer(0)))
      let encoded = try encoder.encode([raw], path: "golden", labels: labels)
      let got = try #require(encoded.examples.first)
      let want = integers(item["input_ids"])
      #expect(got.tokens == want, "\(model) \(JSONWriter.compact(item["text"] ?? .null))")
      if let types = item["token_type_ids"], types != .null {
        #expect(
          (got.tokenTypes ?? [Int](repeating: 0, count: got.tokens.count)) == integers(types),
          "\(model) token types")
      }
      #expect(got.truncated == (encoded.truncatedCount == 1))
    }
    for item in entry["causal"]?.arrayValue ?? [] {
      let encoder = ExampleEncoder(
        tokenizer: tokenizer, layout: layout, maxLength: item["max_length"]?.intValue ?? 0,
        vocabularySize: nil)
      let content: RawExample.Content =
        if let prompt = item["prompt"]?.stringValue {
          .promptCompletion(prompt: prompt, completion: item["completion"]?.stringValue ?? "")
        } else {
          .text(item["text"]?.stringValue ?? "")
        }
      let encoded = try encoder.encode(
        [RawExample(line: 1, content: content)], path: "golden", labels: nil)
      let wantLabels = integers(item["labels"])
      if wantLabels.dropFirst().allSatisfy({ $0 == -100 }) {
        #expect(encoded.droppedLines == [1], "\(model): nothing to learn, dropped")
        continue
      }
      let got = try #require(encoded.examples.first)
      #expect(got.tokens == integers(item["input_ids"]), "\(model) \(content)")
      #expect(got.labels == wantLabels, "\(model) labels \(content)")
    }
  }
}
