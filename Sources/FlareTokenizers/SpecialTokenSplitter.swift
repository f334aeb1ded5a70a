/// A piece of input text: either raw text still to tokenize (a byte range of the UTF-8 input)
/// or a special token already recognised.
enum Fragment: Equatable {
  case text(Range<Int>)
  case token(Int)
}

/// Splits special and added tokens out of text before the model sees it.
///
/// Two references, two orders:
/// - llama.cpp (`tokenizer_st_partition`) takes the tokens longest first and splits every
///   occurrence of each in the remaining text;
/// - HF `tokenizers` (`AddedVocabulary`) scans left to right and takes the longest token that
///   starts at the leftmost position.
/// Control (special) tokens are split only when asked to; user-defined (added, non-special)
/// tokens always are. `lstrip`/`rstrip` tokens swallow the ASCII whitespace next to them.
struct SpecialTokenSplitter: Sendable {
  enum Order: Sendable {
    case longestFirst
    case leftmostLongest
  }

  struct Entry: Sendable {
    var id: Int
    var bytes: [UInt8]
    var control: Bool
    var lstrip: Bool
    var rstrip: Bool
  }

  let order: Order
  /// Longest first, then by id.
  let entries: [Entry]
  /// Entries by first byte, each list longest first.
  private let byFirstByte: [[Int]]

  init(order: Order, entries: [Entry]) {
    self.order = order
    let sorted = entries.filter { !$0.bytes.isEmpty }.sorted {
      $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id
    }
    self.entries = sorted
    var table = [[Int]](repeating: [], count: 256)
    for (index, entry) in sorted.enumerated() { table[Int(entry.bytes[0])].append(index) }
    byFirstByte = table
  }

  /// Whether `entry` occurs in `text` at `position`.
  private func matches(_ entry: Entry, _ text: [UInt8], at position: Int, limit: Int) -> Bool {
    guard position + entry.bytes.count <= limit else { return false }
    var i = 0
    for byte in entry.bytes {
      if text[position + i] != byte { return false }
      i += 1
    }
    return true
  }

  private static func isSpace(_ byte: UInt8) -> Bool {
    byte == 0x20 || (0x09...0x0D).contains(byte)
  }

  /// The fragments of `text`.
  func split(_ text: [UInt8], parseSpecial: Bool) -> [Fragment] {
    guard !text.isEmpty else { return [] }
    guard !entries.isEmpty else { return [.text(0..<text.count)] }
    switch order {
    case .leftmostLongest: return splitLeftmost(text, parseSpecial: parseSpecial)
    case .longestFirst: return splitLongestFirst(text, parseSpecial: parseSpecial)
    }
  }

  private func splitLeftmost(_ text: [UInt8], parseSpecial: Bool) -> [Fragment] {
    var fragments: [Fragment] = []
    var textStart = 0
    var position = 0
    var pendingRstrip = false
    while position < text.count {
      let candidates = byFirstByte[Int(text[position])]
      guard
        let index = candidates.first(where: {
          (parseSpecial || !entries[$0].control)
            && matches(entries[$0], text, at: position, limit: text.count)
        })
      else {
        position += 1
        continue
      }
      let entry = entries[index]
      var end = position
      if entry.lstrip {
        while end > textStart && Self.isSpace(text[end - 1]) { end -= 1 }
      }
      if pendingRstrip {
        while textStart < end && Self.isSpace(text[textStart]) { textStart += 1 }
      }
      if textStart < end { fragments.append(.text(textStart..<end)) }
      fragments.append(.token(entry.id))
      position += entry.bytes.count
      textStart = position
      pendingRstrip = entry.rstrip
    }
    if pendingRstrip {
      while textStart < text.count && Self.isSpace(text[textStart]) { textStart += 1 }
    }
    if textStart < text.count { fragments.append(.text(textStart..<text.count)) }
    return fragments
  }

  private func splitLongestFirst(_ text: [UInt8], parseSpecial: Bool) -> [Fragment] {
    // Which entries occur at all, so that only those are searched for one by one.
    var present = Set<Int>()
    for position in text.indices {
      for index in byFirstByte[Int(text[position])]
      where (parseSpecial || !entries[index].control)
        && matches(entries[index], text, at: position, limit: text.count)
      {
        present.insert(index)
      }
    }
    var fragments: [Fragment] = [.text(0..<text.count)]
    for index in present.sorted() {
      let entry = entries[index]
      var next: [Fragment] = []
      for fragment in fragments {
        guard case .text(var range) = fragment else {
          next.append(fragment)
          continue
        }
        var position = range.lowerBound
        while position < range.upperBound {
          guard matches(entry, text, at: position, limit: range.upperBound) else {
            position += 1
            continue
          }
          var leftEnd = position
          if entry.lstrip {
            while leftEnd > range.lowerBound && Self.isSpace(text[leftEnd - 1]) { leftEnd -= 1 }
          }
          if leftEnd > range.lowerBound { next.append(.text(range.lowerBound..<leftEnd)) }
          next.append(.token(entry.id))
          var rightStart = position + entry.bytes.count
          if entry.rstrip {
            while rightStart < range.upperBound && Self.isSpace(text[rightStart]) {
              rightStart += 1
            }
          }
          range = rightStart..<range.upperBound
          position = rightStart
        }
        if !range.isEmpty { next.append(.text(range)) }
      }
      fragments = next
    }
    return fragments
  }
}
