/// Elements a ``MinHeap`` can order: `precedes` is a strict order (smallest first).
protocol HeapOrdered {
  func precedes(_ other: Self) -> Bool
}

/// A binary min-heap: push in O(log n), pop the element that precedes all others in O(log n).
/// The BPE mergers use it to pick the next merge.
struct MinHeap<Element: HeapOrdered> {
  private var items: [Element] = []

  var isEmpty: Bool { items.isEmpty }

  mutating func reserveCapacity(_ count: Int) { items.reserveCapacity(count) }

  mutating func push(_ item: Element) {
    items.append(item)
    var child = items.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      guard items[child].precedes(items[parent]) else { break }
      items.swapAt(child, parent)
      child = parent
    }
  }

  mutating func pop() -> Element? {
    guard let first = items.first else { return nil }
    let last = items.removeLast()
    if !items.isEmpty {
      items[0] = last
      var parent = 0
      while true {
        let left = 2 * parent + 1
        let right = left + 1
        var best = parent
        if left < items.count && items[left].precedes(items[best]) { best = left }
        if right < items.count && items[right].precedes(items[best]) { best = right }
        if best == parent { break }
        items.swapAt(parent, best)
        parent = best
      }
    }
    return first
  }
}
