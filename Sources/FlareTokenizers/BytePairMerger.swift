/// Applies BPE merges to a word, lowest rank first, as llama.cpp's `llm_tokenizer_bpe_session`
/// and HF `tokenizers`' `BPE::merge_word` do.
///
/// Symbols are token ids; a pair `(left, right)` that has a merge rule becomes the rule's result
/// token. Among pairs of equal rank the leftmost merges first. Symbols that are not in the
/// vocabulary (`-1`) never merge.
struct BytePairMerger: Sendable {
  /// `left << 32 | right` to `rank << 32 | result`, all non-negative `Int32` values.
  let rules: [UInt64: UInt64]

  init(rules: [UInt64: UInt64]) { self.rules = rules }

  static func key(_ left: Int32, _ right: Int32) -> UInt64 {
    UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
  }

  private struct Candidate: HeapOrdered {
    var rank: Int32
    var left: Int
    var right: Int
    var leftID: Int32
    var rightID: Int32
    var result: Int32

    /// Heap order: lower rank first, then the leftmost pair.
    func precedes(_ other: Candidate) -> Bool {
      rank != other.rank ? rank < other.rank : left < other.left
    }
  }

  /// The merged symbols of `word`, in order (`-1` for symbols outside the vocabulary).
  func merge(_ word: [Int32]) -> [Int32] { symbols(word).map(\.id) }

  /// The merged symbols of `word` with the index in `word` of each one's first symbol.
  func symbols(_ word: [Int32]) -> [(id: Int32, start: Int)] {
    guard word.count > 1 else { return word.enumerated().map { ($1, $0) } }
    var ids = word
    var next = Array(1...word.count)
    next[word.count - 1] = -1
    var previous = Array(-1..<(word.count - 1))
    var alive = [Bool](repeating: true, count: word.count)
    var heap = MinHeap<Candidate>()
    heap.reserveCapacity(word.count)

    func consider(_ left: Int, _ right: Int) {
      guard left >= 0, right >= 0 else { return }
      let a = ids[left]
      let b = ids[right]
      guard a >= 0, b >= 0, let rule = rules[BytePairMerger.key(a, b)] else { return }
      heap.push(
        Candidate(
          rank: Int32(truncatingIfNeeded: rule >> 32), left: left, right: right, leftID: a,
          rightID: b, result: Int32(truncatingIfNeeded: rule & 0xFFFF_FFFF)))
    }

    for i in 1..<word.count { consider(i - 1, i) }
    while let candidate = heap.pop() {
      let left = candidate.left
      let right = candidate.right
      // Skip pairs one of whose symbols has since merged into something else.
      guard alive[left], alive[right], ids[left] == candidate.leftID,
        ids[right] == candidate.rightID
      else { continue }
      ids[left] = candidate.result
      alive[right] = false
      let after = next[right]
      next[left] = after
      if after >= 0 { previous[after] = left }
      consider(previous[left], left)
      consider(left, after)
    }
    var result: [(id: Int32, start: Int)] = []
    result.reserveCapacity(word.count)
    var index = 0
    while index >= 0 {
      result.append((ids[index], index))
      index = next[index]
    }
    return result
  }
}
