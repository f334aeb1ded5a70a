import FlareCore
import FlareTrain
import Testing
import _FlareTestSupport

/// The committed cross-lingual data (Fixtures/data/bible, made by scripts/build-bible-data.py
/// from the Debian SWORD Bibles and Apertium). Oracle: the rules the data must keep — read by
/// flare-train's own reader, counts as the manifest states, six balanced classes, whole chapters
/// per split, no neighbouring verse across splits, no test verse (or its English parallel) in
/// training.
@Suite("Bible cross-lingual data")
struct BibleDataTests {
  static let folder = fixturePath("data/bible")
  static let classification = [
    "train.en", "valid.en", "train.es-mt", "valid.es-mt", "test.es", "test.es-oracle",
    "test.en-mt", "test.en",
  ]

  /// Each line's `ref` (and `source`, where present), in file order.
  func rows(_ name: String) throws -> [(ref: String, text: String, source: String?)] {
    let bytes = try readSmallFile("\(Self.folder)/\(name)", limit: 64 << 20)
    var out: [(String, String, String?)] = []
    for line in bytes.split(separator: 0x0A) where !line.isEmpty {
      let json = try JSONParser.parse(Array(line))
      let ref = try #require(json["ref"]?.stringValue, "\(name): a line without ref")
      let text = try #require(json["text"]?.stringValue)
      out.append((ref, text, json["source"]?.stringValue))
    }
    return out
  }

  @Test("flare-train reads every file; counts and classes as the manifest says")
  func countsAndClasses() throws {
    let manifest = try JSONParser.parse(file: "\(Self.folder)/manifest.json", domain: "test")
    let labelValues = try #require(manifest["labels"]?.arrayValue)
    let labels = labelValues.compactMap { $0.stringValue }
    #expect(labels.count == 6)
    for name in Self.classification {
      let examples = try JSONLReader.read(path: "\(Self.folder)/\(name)", task: .classification)
      #expect(examples.count == manifest["counts"]?[name]?.intValue, "\(name)")
      var perClass: [String: Int] = [:]
      for example in examples {
        guard case .classification(let text, _, .string(let label)) = example.content else {
          Issue.record("\(name):\(example.line): not a string-labelled example")
          continue
        }
        #expect(!text.isEmpty && !text.contains("<") && !text.contains("\u{b6}"))
        perClass[label, default: 0] += 1
      }
      #expect(Set(perClass.keys) == Set(labels), "\(name)")
      #expect(Set(perClass.values).count == 1, "\(name) is not balanced: \(perClass)")
    }
    for name in ["lm-train.jsonl", "lm-valid.jsonl"] {
      let examples = try JSONLReader.read(path: "\(Self.folder)/\(name)", task: .causalLM)
      #expect(examples.count == manifest["counts"]?[name]?.intValue, "\(name)")
    }
  }

  /// `Book C:V` → (book and chapter, verse).
  func chapter(_ ref: String) -> (String, Int) {
    let colon = ref.lastIndex(of: ":")!
    return (String(ref[..<colon]), Int(ref[ref.index(after: colon)...])!)
  }

  @Test("splits are whole chapters with no neighbouring verse across them")
  func splitsAreDisjoint() throws {
    var splitOf: [String: String] = [:]
    var refsOf: [String: Set<String>] = [:]
    for (split, file) in [("train", "train.en"), ("valid", "valid.en"), ("test", "test.es")] {
      for row in try rows(file) {
        let (ch, _) = chapter(row.ref)
        if let other = splitOf[ch], other != split {
          Issue.record("chapter \(ch) is in \(other) and \(split)")
        }
        splitOf[ch] = split
        refsOf[split, default: []].insert(row.ref)
      }
    }
    // The chapter table agrees with the files.
    let table = String(decoding: try readSmallFile("\(Self.folder)/chapters.tsv"), as: UTF8.self)
    var tableSplit: [String: String] = [:]
    for line in table.split(separator: "\n").dropFirst() {
      let cols = line.split(separator: "\t").map(String.init)
      tableSplit["\(cols[0]) \(cols[1])"] = cols[3]
    }
    for (ch, split) in splitOf { #expect(tableSplit[ch] == split, "\(ch)") }
    // A verse's neighbours (in this chapter or the ones beside it) are never in another split.
    let all = refsOf.flatMap { split, refs in refs.map { ($0, split) } }
    let lookup = Dictionary(uniqueKeysWithValues: all)
    for (ref, split) in all {
      let (ch, verse) = chapter(ref)
      let space = ch.lastIndex(of: " ")!
      let book = String(ch[..<space])
      let number = Int(ch[ch.index(after: space)...])!
      for neighbour in ["\(ch):\(verse - 1)", "\(ch):\(verse + 1)"] {
        if let other = lookup[neighbour] { #expect(other == split, "\(ref) ~ \(neighbour)") }
      }
      // Across a chapter boundary every neighbouring pair holds verse 1 of the later chapter:
      // where the chapter before lies in another split, verse 1 is in no file.
      if verse == 1, let prev = tableSplit["\(book) \(number - 1)"] {
        #expect(prev == split, "\(ref) follows a chapter of the \(prev) split")
      }
    }
  }

  @Test("test verses and their English parallels never appear in training")
  func noLeak() throws {
    let train = try rows("train.en")
    let trainRefs = Set(train.map(\.ref))
    let trainTexts = Set(train.map(\.text))
    let test = try rows("test.en")
    let sameVerse = test.filter { trainRefs.contains($0.ref) }.map(\.ref)
    let sameText = test.filter { trainTexts.contains($0.text) }.map(\.ref)
    #expect(sameVerse.isEmpty, "test verses in training: \(sameVerse.prefix(5))")
    #expect(sameText.isEmpty, "test verses with an English text in training: \(sameText.prefix(5))")
    let spanishTrain = Set(try rows("train.es-mt").map(\.text))
    #expect(try rows("test.es").filter { spanishTrain.contains($0.text) }.isEmpty)
    // The Spanish test files carry, line by line, the same verses; the oracle source is the
    // human English, the default source the Apertium English.
    let es = try rows("test.es")
    let oracle = try rows("test.es-oracle")
    let mt = try rows("test.en-mt")
    #expect(es.map(\.ref) == test.map(\.ref))
    #expect(oracle.map(\.source) == test.map(\.text))
    #expect(es.map(\.source) == mt.map(\.text))
    #expect(try rows("train.es-mt").map(\.source) == train.map(\.text))
  }
}
