import FlareCore
import FlareModels
import FlareTrain
import Foundation
import _FlareTestSupport

/// Floats of a JSON array.
func floats(_ value: JSONValue?) -> [Float] {
  (value?.arrayValue ?? []).map { Float($0.doubleValue ?? .nan) }
}

/// Integers of a JSON array.
func integers(_ value: JSONValue?) -> [Int] {
  (value?.arrayValue ?? []).map { $0.intValue ?? -1 }
}

/// `‖a − b‖ / ‖b‖` (Frobenius), in `Double`.
func relativeError(_ a: [Float], _ b: [Float]) -> Double {
  var difference = 0.0
  var norm = 0.0
  for (x, y) in zip(a, b) {
    difference += Double(x - y) * Double(x - y)
    norm += Double(y) * Double(y)
  }
  return a.count == b.count ? (difference / max(norm, 1e-300)).squareRoot() : .infinity
}

/// A word-level tokenizer folder (BERT `vocab.txt`) with the given words, for data tests.
func makeWordTokenizer(words: [String], in folder: String) throws -> String {
  let path = "\(folder)/tokenizer"
  try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  let vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
  writeBytes(Array((vocabulary.joined(separator: "\n") + "\n").utf8), to: "\(path)/vocab.txt")
  return path
}

/// Writes text to a file.
func writeText(_ text: String, to path: String) {
  writeBytes(Array(text.utf8), to: path)
}

/// The training examples of a golden case, as tokenized examples.
func goldenExamples(_ json: JSONValue?) -> [TokenizedExample] {
  (json?.arrayValue ?? []).enumerated().map { index, item in
    TokenizedExample(
      line: index + 1, tokens: integers(item["tokens"]), tokenTypes: nil,
      labels: item["labels"].map { integers($0) }, classIndex: item["class"]?.intValue,
      truncated: false)
  }
}
