/// SentencePiece BPE as llama.cpp's `llm_tokenizer_spm_session` runs it (Llama 2, Phi-3).
///
/// The text (spaces already escaped to "▁") starts as one symbol per UTF-8 character; the
/// adjacent pair whose concatenation is the vocabulary piece with the highest score merges
/// first (ties: the leftmost), until no pair forms a piece. Symbols left that are not pieces are
/// spelled as byte tokens (`<0xXX>`).
struct SentencePieceBPE: Sendable {
  let scores: [Float]

  private struct Candidate: HeapOrdered {
    var score: Float
    var left: Int
    var right: Int
    var size: Int

    /// Heap order: higher score first, then the leftmost pair.
    func precedes(_ other: Candidate) -> Bool {
      score != other.score ? score > other.score : left < other.left
    }
  }

  /// Tokenizes `text` (UTF-8), appending ids to `output`.
  ///
  /// - Parameters:
  ///   - lookup: The id of a piece, or `nil`.
  ///   - byteToken: The token for a byte that no piece covers, or `nil` to drop it.
  func encode(
    _ text: [UInt8], lookup: (ArraySlice<UInt8>) -> Int32?, byteToken: (UInt8) -> Int32?,
    into output: inout [Int]
  ) {
    guard !text.isEmpty else { return }
    // One symbol per UTF-8 character (llama.cpp's `unicode_len_utf8` on the lead byte).
    var starts: [Int] = []
    var lengths: [Int] = []
    var offset = 0
    while offset < text.count {
      let lead = text[offset]
      let length = lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
      let n = min(length, text.count - offset)
      starts.append(offset)
      lengths.append(n)
      offset += n
    }
    let count = starts.count
    var next = Array(1...count)
    next[count - 1] = -1
    var previous = Array(-1..<(count - 1))
    var heap = MinHeap<Candidate>()
    func consider(_ left: Int, _ right: Int) {
      guard left >= 0, right >= 0 else { return }
      let start = starts[left]
      let size = lengths[left] + lengths[right]
      guard let id = lookup(text[start..<(start + size)]), id >= 0, Int(id) < scores.count
      else { return }
      heap.push(Candidate(score: scores[Int(id)], left: left, right: right, size: size))
    }

    for i in 1..<count { consider(i - 1, i) }
    while let candidate = heap.pop() {
      let left = candidate.left
      let right = candidate.right
      // A pair is stale once either side has merged with something else.
      guard lengths[left] > 0, lengths[right] > 0,
        lengths[left] + lengths[right] == candidate.size
      else { continue }
      lengths[left] += lengths[right]
      lengths[right] = 0
      let after = next[right]
      next[left] = after
      if after >= 0 { previous[after] = left }
      consider(previous[left], left)
      consider(left, after)
    }

    var index = 0
    while index >= 0 {
      let start = starts[index]
      let range = start..<(start + lengths[index])
      if let id = lookup(text[range]) {
        output.append(Int(id))
      } else {
        for byte in text[range] {
          if let id = byteToken(byte) { output.append(Int(id)) }
        }
      }
      index = next[index]
    }
  }
}
