import FlareCore

/// How close two models' logits are over a set of prompts (every position of every prompt).
public struct LogitComparison: Sendable {
  /// Positions compared.
  public var positions = 0
  /// The largest absolute logit difference, and where it was (prompt, position, token id).
  public var maxAbsDifference: Float = 0
  public var worst: (prompt: Int, position: Int, id: Int) = (0, 0, 0)
  /// The mean absolute difference over all logits of all positions.
  public var meanAbsDifference: Double {
    positions == 0 || vocabulary == 0 ? 0 : absoluteSum / Double(positions * vocabulary)
  }
  /// Positions whose argmax agrees.
  public var top1Agreements = 0
  private var absoluteSum = 0.0
  private var vocabulary = 0

  public init() {}

  /// `top1Agreements / positions`.
  public var top1Agreement: Double {
    positions == 0 ? 1 : Double(top1Agreements) / Double(positions)
  }

  /// Adds prompt `prompt`'s positions: `reference` and `candidate` hold `vocab` logits per
  /// position, the same number of positions each.
  public mutating func add(prompt: Int, reference: [Float], candidate: [Float], vocab: Int) {
    precondition(reference.count == candidate.count && reference.count % max(vocab, 1) == 0)
    vocabulary = vocab
    for position in 0..<(reference.count / vocab) {
      let rowA = reference[(position * vocab)..<((position + 1) * vocab)]
      let rowB = candidate[(position * vocab)..<((position + 1) * vocab)]
      for (i, j) in zip(rowA.indices, rowB.indices) {
        let difference = abs(rowA[i] - rowB[j])
        absoluteSum += Double(difference)
        if difference > maxAbsDifference || difference.isNaN {
          maxAbsDifference = difference
          worst = (prompt, position, i - rowA.startIndex)
        }
      }
      if Sampler.argmax(rowA) == Sampler.argmax(rowB) { top1Agreements += 1 }
      positions += 1
    }
  }
}

extension LlamaModel {
  /// Compares `self` (the reference) with `other` on every position of every prompt.
  /// - Throws: ``FlareError`` if the vocabularies differ or a prompt is invalid.
  public func compare(with other: LlamaModel, prompts: [[Int]]) throws -> LogitComparison {
    let vocab = config.vocabSize
    guard other.config.vocabSize == vocab else {
      throw FlareError(
        "compare", .invalidArgument,
        "the models' vocabularies differ (\(vocab) and \(other.config.vocabSize) tokens)")
    }
    var result = LogitComparison()
    for (p, ids) in prompts.enumerated() where !ids.isEmpty {
      let a = try forward(
        tokens: [ids], cache: makeCache(batch: 1, capacity: ids.count), logits: .all)
      let b = try other.forward(
        tokens: [ids], cache: other.makeCache(batch: 1, capacity: ids.count), logits: .all)
      result.add(prompt: p, reference: a, candidate: b, vocab: vocab)
    }
    return result
  }
}
