import FlareCore
import Testing
import _FlareTestSupport

@testable import FlareModels

/// A golden of `Fixtures/encoders/`: the JSON description and its F32 arrays (a safetensors
/// file with the same stem), both written by `Fixtures/encoders/make_goldens.py`.
struct EncoderGolden {
  let json: JSONValue
  let arrays: WeightSource

  init(_ stem: String) throws {
    json = try loadFixtureJSON("encoders/\(stem).json")
    arrays = try WeightSource(path: fixturePath("encoders/\(stem).safetensors"))
  }

  /// The array named by the JSON string at `key` (or named `key` itself).
  func array(_ name: String) throws -> [Float] {
    Array(try arrays.weight(name).values)
  }

  /// Rows of integers under `value`.
  static func intRows(_ value: JSONValue?) throws -> [[Int]] {
    try #require(value?.arrayValue).map { row in
      try #require(row.arrayValue).map { try #require($0.intValue) }
    }
  }

  /// Rows of 0/1 flags under `value`, as booleans.
  static func maskRows(_ value: JSONValue?) throws -> [[Bool]] {
    try intRows(value).map { $0.map { $0 != 0 } }
  }

  func tolerance(_ key: String) throws -> Double {
    try #require(json["tolerance"]?[key]?.doubleValue)
  }
}

/// Comparison figures for two equally shaped vectors.
struct Agreement {
  var maxAbs: Double = 0
  var minCosine: Double = 1

  static func cosine(_ a: [Float], _ b: [Float]) -> Double {
    var dot: Double = 0
    var na: Double = 0
    var nb: Double = 0
    for (x, y) in zip(a, b) {
      dot += Double(x) * Double(y)
      na += Double(x) * Double(x)
      nb += Double(y) * Double(y)
    }
    return dot / max((na * nb).squareRoot(), 1e-30)
  }

  static func maxAbs(_ a: [Float], _ b: [Float]) -> Double {
    zip(a, b).reduce(0) { max($0, abs(Double($1.0) - Double($1.1))) }
  }

  /// Row-wise figures for `rows` of `width` values.
  init(_ a: [Float], _ b: [Float], width: Int) {
    maxAbs = Self.maxAbs(a, b)
    let rows = a.count / max(width, 1)
    for row in 0..<rows {
      let range = row * width..<(row + 1) * width
      minCosine = min(minCosine, Self.cosine(Array(a[range]), Array(b[range])))
    }
  }
}

/// Loads a fetched model folder, or returns `nil` to skip when `FLARE_OFFLINE=1` and the folder
/// is missing; otherwise a missing folder fails the test with the script to run.
func loadEncoder(_ folder: String, fetchedBy script: String) throws -> BERTModel? {
  if offline && !fileExists("\(folder)/config.json") { return nil }
  try #require(
    fileExists("\(folder)/config.json"),
    "\(folder) is missing: run scripts/\(script) to fetch it")
  return try BERTModel.load(path: folder)
}

/// The multilingual-e5-small folder made by `scripts/fetch-encoders.sh`.
var e5Folder: String { "\(modelCache)/models/multilingual-e5-small" }
