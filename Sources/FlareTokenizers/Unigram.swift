import FlareCore

/// A byte trie over the vocabulary pieces, stored flat: each node's children are contiguous and
/// sorted by label, so a lookup is a binary search (the root uses a 256-entry table).
struct ByteTrie: Sendable {
  private var values: [Int32] = []
  private var edgeStart: [Int32] = []
  private var edgeCount: [Int32] = []
  private var labels: [UInt8] = []
  private var targets: [Int32] = []
  private var root = [Int32](repeating: -1, count: 256)

  /// Builds the trie; when a key repeats, the later entry's value wins.
  init(_ entries: [(key: [UInt8], value: Int32)]) {
    // Sorted insertion: a node's matching child, if any, is always its newest one.
    let order = entries.indices.sorted { a, b in
      let x = entries[a].key
      let y = entries[b].key
      if x == y { return a < b }
      return x.lexicographicallyPrecedes(y)
    }
    var value: [Int32] = [-1]
    var label: [UInt8] = [0]
    var lastChild: [Int32] = [-1]
    var firstChild: [Int32] = [-1]
    var sibling: [Int32] = [-1]
    for index in order {
      var node = 0
      for byte in entries[index].key {
        let last = lastChild[node]
        if last >= 0 && label[Int(last)] == byte {
          node = Int(last)
          continue
        }
        let created = Int32(value.count)
        value.append(-1)
        label.append(byte)
        lastChild.append(-1)
        firstChild.append(-1)
        sibling.append(-1)
        if last >= 0 { sibling[Int(last)] = created } else { firstChild[node] = created }
        lastChild[node] = created
        node = Int(created)
      }
      value[node] = entries[index].value
    }
    values = value
    edgeStart = [Int32](repeating: 0, count: value.count)
    edgeCount = [Int32](repeating: 0, count: value.count)
    labels.reserveCapacity(value.count)
    targets.reserveCapacity(value.count)
    for node in 0..<value.count {
      edgeStart[node] = Int32(labels.count)
      var child = firstChild[node]
      while child >= 0 {
        labels.append(label[Int(child)])
        targets.append(child)
        child = sibling[Int(child)]
      }
      edgeCount[node] = Int32(labels.count) - edgeStart[node]
    }
    var child = firstChild[0]
    while child >= 0 {
      root[Int(label[Int(child)])] = child
      child = sibling[Int(child)]
    }
  }

  /// The child of `node` along `byte`, or `nil`.
  func child(_ node: Int32, _ byte: UInt8) -> Int32? {
    if node == 0 {
      let target = root[Int(byte)]
      return target >= 0 ? target : nil
    }
    var low = Int(edgeStart[Int(node)])
    var high = low + Int(edgeCount[Int(node)])
    while low < high {
      let mid = (low + high) / 2
      if labels[mid] < byte {
        low = mid + 1
      } else {
        high = mid
      }
    }
    return low < Int(edgeStart[Int(node)] + edgeCount[Int(node)]) && labels[low] == byte
      ? targets[low] : nil
  }

  /// Calls `visit(end, value)` for every key that is a prefix of `bytes[start..<limit]`,
  /// shortest first.
  func prefixes(
    of bytes: [UInt8], from start: Int, limit: Int, _ visit: (Int, Int32) -> Void
  ) {
    var node: Int32 = 0
    var position = start
    while position < limit, let next = child(node, bytes[position]) {
      node = next
      position += 1
      let value = values[Int(node)]
      if value >= 0 { visit(position, value) }
    }
  }

  /// The value of the key `bytes[range]`, or `nil`.
  func value<C: Collection>(of bytes: C) -> Int32? where C.Element == UInt8 {
    var node: Int32 = 0
    for byte in bytes {
      guard let next = child(node, byte) else { return nil }
      node = next
    }
    let value = values[Int(node)]
    return value >= 0 ? value : nil
  }

  /// The longest key that is a prefix of `bytes[start..<limit]`: its length and value.
  func longestPrefix(of bytes: [UInt8], from start: Int, limit: Int) -> (Int, Int32)? {
    var best: (Int, Int32)?
    prefixes(of: bytes, from: start, limit: limit) { end, value in best = (end - start, value) }
    return best
  }
}

/// SentencePiece's precompiled normalization map: a XOR-compressed compact double array of the
/// byte sequences to replace, then their NUL-terminated replacements (`precompiled_charsmap` in
/// GGUF and in `tokenizer.json`'s `Precompiled` normalizer).
struct PrecompiledCharsmap: Sendable {
  private let nodes: [UInt32]
  private let replacements: [UInt8]

  /// Parses the blob.
  /// - Throws: ``FlareError`` `.invalidValue` if the header does not fit the blob.
  init(_ blob: [UInt8], path: String?, key: String) throws {
    guard blob.count >= 4 else {
      throw FlareError.tokenizer(
        .invalidValue, "precompiled charsmap of \(blob.count) bytes has no header", path: path,
        key: key)
    }
    let size = Int(blob[0]) | Int(blob[1]) << 8 | Int(blob[2]) << 16 | Int(blob[3]) << 24
    guard size + 4 < blob.count else {
      throw FlareError.tokenizer(
        .invalidValue,
        "precompiled charsmap declares \(size) bytes of trie in a blob of \(blob.count)",
        path: path, key: key)
    }
    nodes = stride(from: 4, to: 4 + size / 4 * 4, by: 4).map { i in
      UInt32(blob[i]) | UInt32(blob[i + 1]) << 8 | UInt32(blob[i + 2]) << 16
        | UInt32(blob[i + 3]) << 24
    }
    replacements = Array(blob[(4 + size)...])
  }

  /// Replacements for every prefix of `bytes[start..<limit]` the map knows, shortest first:
  /// the prefix length and the replacement bytes. A NUL byte ends the walk.
  func matches(_ bytes: [UInt8], from start: Int, limit: Int) -> [(Int, ArraySlice<UInt8>)] {
    func node(_ index: UInt32) -> UInt32? { Int(index) < nodes.count ? nodes[Int(index)] : nil }
    func base(_ unit: UInt32) -> UInt32 { (unit >> 10) << ((unit & (1 << 9)) >> 6) }
    var found: [(Int, ArraySlice<UInt8>)] = []
    guard let rootUnit = node(0) else { return found }
    var index = base(rootUnit)
    var position = start
    while position < limit {
      let byte = bytes[position]
      if byte == 0 { break }
      index ^= UInt32(byte)
      guard let unit = node(index), unit & ((1 << 31) | 0xFF) == UInt32(byte) else { break }
      let isLeaf = (unit >> 8) & 1 == 1
      index ^= base(unit)
      position += 1
      if isLeaf, let leaf = node(index) {
        let offset = Int(leaf & ((1 << 31) - 1))
        if let replacement = replacement(at: offset) {
          found.append((position - start, replacement))
        }
      }
    }
    return found
  }

  /// The NUL-terminated replacement at `offset`, or `nil` if it runs off the blob.
  private func replacement(at offset: Int) -> ArraySlice<UInt8>? {
    guard offset < replacements.count else { return nil }
    guard let end = replacements[offset...].firstIndex(of: 0) else { return nil }
    return replacements[offset..<end]
  }
}

/// The Viterbi search of a SentencePiece Unigram model, as llama.cpp's
/// `llm_tokenizer_ugm_session::tokenize` and HF `tokenizers`' `Unigram::encode_optimized` do.
///
/// Every vocabulary piece that starts at a code-point boundary is an edge scored by its log
/// probability; a code point no single piece covers may be the unknown token, scored
/// `min score - 10`. The best path wins (ties keep the earlier candidate); runs of unknown tokens
/// become one.
struct UnigramModel: Sendable {
  let trie: ByteTrie
  let scores: [Double]
  let unknownID: Int32
  let unknownScore: Double
  /// HF `byte_fallback`: unknown pieces are spelled as `<0xXX>` tokens (ids by byte).
  let byteTokens: [Int32]?

  /// Appends the best segmentation of `text` (UTF-8) to `output`.
  func encode(_ text: [UInt8], into output: inout [Int]) {
    let count = text.count
    guard count > 0 else { return }
    var bestScore = [Double](repeating: -.infinity, count: count + 1)
    var bestStart = [Int](repeating: -1, count: count + 1)
    var bestID = [Int32](repeating: unknownID, count: count + 1)
    bestScore[0] = 0
    var start = 0
    while start < count {
      let lead = text[start]
      let length = min(lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4, count - start)
      let base = bestScore[start]
      var coversCodepoint = false
      trie.prefixes(of: text, from: start, limit: count) { end, id in
        if end - start == length { coversCodepoint = true }
        let score = base + scores[Int(id)]
        if bestStart[end] < 0 || score > bestScore[end] {
          bestScore[end] = score
          bestStart[end] = start
          bestID[end] = id
        }
      }
      if !coversCodepoint {
        let end = start + length
        let score = base + unknownScore
        if bestStart[end] < 0 || score > bestScore[end] {
          bestScore[end] = score
          bestStart[end] = start
          bestID[end] = unknownID
        }
      }
      start += length
    }
    var pieces: [(Int32, Range<Int>)] = []
    var end = count
    var previousUnknown = false
    while end > 0 {
      let from = bestStart[end]
      guard from >= 0 else { break }  // unreachable: every code point has an edge
      let id = bestID[end]
      let unknown = id == unknownID
      if unknown && previousUnknown, let last = pieces.indices.last {
        pieces[last].1 = from..<pieces[last].1.upperBound
      } else {
        pieces.append((id, from..<end))
      }
      previousUnknown = unknown
      end = from
    }
    for (id, range) in pieces.reversed() {
      if id == unknownID, let byteTokens {
        for byte in text[range] where byteTokens[Int(byte)] >= 0 {
          output.append(Int(byteTokens[Int(byte)]))
        }
      } else {
        output.append(Int(id))
      }
    }
  }
}
