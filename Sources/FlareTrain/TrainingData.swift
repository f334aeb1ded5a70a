import FlareCore
import FlareTokenizers

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// What the adapter is trained for.
public enum TrainingTask: String, CaseIterable, Sendable {
  /// Next-token prediction: `{"text"}` (loss on every token) or `{"prompt","completion"}`
  /// (loss on the completion only).
  case causalLM = "causal-lm"
  /// Sequence classification: `{"text","label"}` or `{"text","text_pair","label"}`.
  case classification
}

/// A problem with a training or validation file, naming the file and the line.
public struct TrainingDataError: Error, Equatable, CustomStringConvertible, Sendable {
  /// A stable identifier tests compare.
  public enum Code: String, Sendable {
    case unreadable, malformedJSON, notAnObject, missingField, wrongType, emptyFile, lineTooLong
    case unknownLabel, mixedLabels, labelOutOfRange, tokenizerMismatch
  }

  public var code: Code
  public var path: String
  /// The 1-based line, or `nil` for the file as a whole.
  public var line: Int?
  public var message: String

  public init(_ code: Code, path: String, line: Int?, _ message: String) {
    self.code = code
    self.path = path
    self.line = line
    self.message = message
  }

  public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }

  /// `file:line: data error: message`, as compilers report a position.
  public var description: String {
    "\(path)\(line.map { ":\($0)" } ?? ""): data error: \(message)"
  }
}

/// A classification label as written in the file: a string or an integer.
public enum ExampleLabel: Hashable, Sendable, CustomStringConvertible {
  case integer(Int)
  case string(String)

  public var description: String {
    switch self {
    case .integer(let value): String(value)
    case .string(let text): text
    }
  }

  var json: JSONValue {
    switch self {
    case .integer(let value): .integer(value)
    case .string(let text): .string(text)
    }
  }
}

/// One example as read from a JSONL line, before tokenization.
public struct RawExample: Sendable, Equatable {
  public enum Content: Sendable, Equatable {
    /// `{"text"}`: causal LM, loss on every token.
    case text(String)
    /// `{"prompt","completion"}`: causal LM, loss on the completion.
    case promptCompletion(prompt: String, completion: String)
    /// `{"text","label"}` or `{"text","text_pair","label"}`.
    case classification(text: String, pair: String?, label: ExampleLabel)
  }

  /// The 1-based line of the file.
  public var line: Int
  public var content: Content
  /// FLARE: the parallel English text (`"source"`).
  public var source: String?

  public init(line: Int, content: Content, source: String? = nil) {
    self.line = line
    self.content = content
    self.source = source
  }

  /// The input-level fusion baseline of the FLARE paper (`--input-fusion`): the source, a
  /// newline, then the example's own text, as one plain example without a source. A causal-LM
  /// source is a prompt (never scored): `{"text"}` becomes `{"prompt": source + "\n",
  /// "completion": text}` and a prompt gets the source in front; a classification text gets
  /// it in front. Without a source the example is returned unchanged.
  public func inputFused() -> RawExample {
    guard let source else { return self }
    let fused: Content
    switch content {
    case .text(let text):
      fused = .promptCompletion(prompt: source + "\n", completion: text)
    case .promptCompletion(let prompt, let completion):
      fused = .promptCompletion(prompt: source + "\n" + prompt, completion: completion)
    case .classification(let text, let pair, let label):
      fused = .classification(text: source + "\n" + text, pair: pair, label: label)
    }
    return RawExample(line: line, content: fused)
  }
}

/// Reads JSONL training files: one JSON object per line, blank lines ignored, the formats
/// mlx-lm and TRL use.
public enum JSONLReader {
  /// Reads `path` for `task`.
  /// - Throws: ``TrainingDataError`` naming the file and line: malformed JSON, a line that is
  ///   not an object, a missing or mistyped field, or a file with no examples.
  public static func read(path: String, task: TrainingTask, source: Bool = false)
    throws(TrainingDataError) -> [RawExample]
  {
    // Parsed from the mapping: a file is never copied whole, and a line is copied only once it
    // is known to be within the limit.
    let file: MappedFile
    do {
      file = try MappedFile(path: path)
    } catch {
      throw TrainingDataError(.unreadable, path: path, line: nil, error.message)
    }
    return try parse(file.bytes, path: path, task: task, source: source)
  }

  /// The longest line a training file may have (16 MiB; a long training example is a few
  /// hundred KiB). Longer lines are refused before they are copied or parsed.
  public static let maxLineBytes = 16 << 20

  /// Parses JSONL text (`path` is used in errors only).
  /// With `source`, every line also needs `"source"` (FLARE's parallel English text) and may
  /// not have `text_pair`.
  public static func parse(_ bytes: [UInt8], path: String, task: TrainingTask, source: Bool = false)
    throws(TrainingDataError) -> [RawExample]
  {
    let result: Result<[RawExample], TrainingDataError> = bytes.withUnsafeBytes { raw in
      do throws(TrainingDataError) {
        return .success(try parse(raw, path: path, task: task, source: source))
      } catch {
        return .failure(error)
      }
    }
    return try result.get()
  }

  /// Parses JSONL text in memory (`path` is used in errors only).
  public static func parse(
    _ bytes: UnsafeRawBufferPointer, path: String, task: TrainingTask, source: Bool = false
  ) throws(TrainingDataError) -> [RawExample] {
    var examples: [RawExample] = []
    var lineNumber = 0
    var start = 0
    while start < bytes.count {
      lineNumber += 1
      let limit = min(bytes.count, start + maxLineBytes + 2)
      var end = start
      if let base = bytes.baseAddress,
        let newline = memchr(base + start, Int32(UInt8(ascii: "\n")), limit - start)
      {
        end = base.distance(to: UnsafeRawPointer(newline))
      } else {
        end = limit
      }
      var last = end
      if last > start && bytes[last - 1] == UInt8(ascii: "\r") { last -= 1 }
      guard last - start <= maxLineBytes else {
        throw TrainingDataError(
          .lineTooLong, path: path, line: lineNumber,
          "the line is longer than \(maxLineBytes >> 20) MiB (a training example of that size is not text Flare reads)"
        )
      }
      let line = UnsafeRawBufferPointer(rebasing: bytes[start..<last])
      start = end + 1
      if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
      examples.append(
        try parseLine(Array(line), number: lineNumber, path: path, task: task, source: source))
    }
    guard !examples.isEmpty else {
      throw TrainingDataError(
        .emptyFile, path: path, line: nil,
        bytes.isEmpty ? "the file is empty" : "the file has no examples (only blank lines)")
    }
    return examples
  }

  static func parseLine(
    _ line: [UInt8], number: Int, path: String, task: TrainingTask, source: Bool = false
  ) throws(TrainingDataError) -> RawExample {
    func fail(_ code: TrainingDataError.Code, _ message: String) -> TrainingDataError {
      TrainingDataError(code, path: path, line: number, message)
    }
    let json: JSONValue
    do {
      json = try JSONParser.parse(line)
    } catch {
      throw fail(.malformedJSON, "malformed JSON: \(error.message) (column \(error.offset + 1))")
    }
    guard json.objectMembers != nil else {
      throw fail(.notAnObject, "each line must be a JSON object")
    }
    var example = try example(json, number: number, path: path, task: task)
    guard source else { return example }
    guard let value = json["source"], value != .null else {
      throw fail(
        .missingField, "missing field 'source' (FLARE lines carry the parallel English text)")
    }
    guard let text = value.stringValue else {
      throw fail(.wrongType, "field 'source' is not a string")
    }
    if case .classification(_, let pair, _) = example.content, pair != nil {
      throw fail(.wrongType, "FLARE lines are single texts: 'text_pair' is not supported")
    }
    example.source = text
    return example
  }

  /// The example of one line's JSON object (without its FLARE source).
  static func example(_ json: JSONValue, number: Int, path: String, task: TrainingTask)
    throws(TrainingDataError) -> RawExample
  {
    func fail(_ code: TrainingDataError.Code, _ message: String) -> TrainingDataError {
      TrainingDataError(code, path: path, line: number, message)
    }
    func string(_ key: String) throws(TrainingDataError) -> String? {
      guard let value = json[key], value != .null else { return nil }
      guard let text = value.stringValue else {
        throw fail(.wrongType, "field '\(key)' is not a string")
      }
      return text
    }
    switch task {
    case .causalLM:
      if let prompt = try string("prompt") {
        guard let completion = try string("completion") else {
          throw fail(.missingField, "missing field 'completion' (a line with 'prompt' needs it)")
        }
        return RawExample(
          line: number, content: .promptCompletion(prompt: prompt, completion: completion))
      }
      if let text = try string("text") {
        return RawExample(line: number, content: .text(text))
      }
      if try string("completion") != nil {
        throw fail(.missingField, "missing field 'prompt' (a line with 'completion' needs it)")
      }
      throw fail(
        .missingField,
        "missing field 'text' (causal-lm lines are {\"text\": …} or {\"prompt\": …, \"completion\": …})"
      )
    case .classification:
      guard let text = try string("text") else {
        throw fail(
          .missingField,
          "missing field 'text' (classification lines are {\"text\": …, \"label\": …}, optionally with \"text_pair\")"
        )
      }
      let pair = try string("text_pair")
      guard let value = json["label"], value != .null else {
        throw fail(.missingField, "missing field 'label'")
      }
      let label: ExampleLabel
      if let text = value.stringValue {
        label = .string(text)
      } else if let number = value.intValue {
        guard number >= 0 else {
          throw fail(.wrongType, "integer label \(number) is negative (class ids start at 0)")
        }
        label = .integer(number)
      } else {
        throw fail(.wrongType, "field 'label' is neither a string nor an integer")
      }
      return RawExample(
        line: number, content: .classification(text: text, pair: pair, label: label))
    }
  }
}

/// The classes of a classification run, taken from the training file.
///
/// Integer labels are class ids (`0…max`, so label `k` is class `k`); string labels are sorted
/// by their Unicode scalars and numbered in that order. One file cannot mix the two.
public struct LabelSet: Sendable, Equatable {
  /// The label of each class id.
  public let labels: [ExampleLabel]
  /// Integer labels are class ids below this.
  public static let maximumClassID = 1 << 16

  public init(labels: [ExampleLabel]) { self.labels = labels }

  /// The label set of the training examples.
  /// - Throws: ``TrainingDataError`` `.mixedLabels` naming the first line whose label kind
  ///   differs from the first example's.
  public init(training examples: [RawExample], path: String) throws(TrainingDataError) {
    var integers: [Int] = []
    var strings: Set<String> = []
    var firstKindIsInteger: Bool?
    for example in examples {
      guard case .classification(_, _, let label) = example.content else { continue }
      let isInteger: Bool
      switch label {
      case .integer(let value):
        guard value < Self.maximumClassID else {
          throw TrainingDataError(
            .labelOutOfRange, path: path, line: example.line,
            "integer label \(value) is too large for a class id (integer labels are class ids below \(Self.maximumClassID); use strings for other labels)"
          )
        }
        integers.append(value)
        isInteger = true
      case .string(let text):
        strings.insert(text)
        isInteger = false
      }
      if let firstKindIsInteger, firstKindIsInteger != isInteger {
        throw TrainingDataError(
          .mixedLabels, path: path, line: example.line,
          "label '\(label)' is \(isInteger ? "an integer" : "a string") but earlier labels are \(firstKindIsInteger ? "integers" : "strings")"
        )
      }
      firstKindIsInteger = isInteger
    }
    if let largest = integers.max() {
      labels = (0...largest).map { .integer($0) }
    } else {
      labels = strings.sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
        .map { .string($0) }
    }
  }

  public var count: Int { labels.count }

  /// The class id of `label`, or `nil` if the training file does not have it.
  public func index(of label: ExampleLabel) -> Int? {
    switch label {
    case .integer(let value):
      return labels.indices.contains(value) && labels[value] == label ? value : nil
    case .string:
      return labels.firstIndex(of: label)
    }
  }

  /// `{"labels": [...]}` as written beside the adapter (`flare_labels.json`).
  public var json: JSONValue {
    .object([
      (
        "id2label",
        .object(labels.enumerated().map { (String($0.offset), .string("\($0.element)")) })
      ),
      ("labels", .array(labels.map(\.json))),
    ])
  }

  /// Reads the labels back from ``json``.
  public init?(json: JSONValue) {
    guard let items = json["labels"]?.arrayValue else { return nil }
    var labels: [ExampleLabel] = []
    for item in items {
      if let text = item.stringValue {
        labels.append(.string(text))
      } else if let value = item.intValue {
        labels.append(.integer(value))
      } else {
        return nil
      }
    }
    self.labels = labels
  }
}
