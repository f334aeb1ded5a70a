import FlareCore

/// How close two models' logits are over a set of prompts (every position of every prompt).
public struct LogitComparison: Sendable {
  /// Positions compared.
  public var positions = 0
  /// The largest absolute logit difference, and where it was (prompt, position, token id).
  public var maxAbsDifference: Float = 0
  public var worst: (prompt: Int, position: Int, id: Int) = (0, 0, 0)
  /// The mean absolute difference over all logits of all positions.
  public var meanAbsDifference: Double = 0
  /// Positions whose argmax agrees.
  public var top1Agreements = 0

  public init() {}

  /// `top1Agreements / positions`.
  public var top1Agreement: Double {
    positions == 0 ? 1 : Double(top1Agreements) / Double(positions)
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
    var sum = 0.0
    for (p, ids) in prompts.enumerated() where !ids.isEmpty {
      let a = try forward(
        tokens: [ids], cache: makeCache(batch: 1, capacity: ids.count), logits: .all)
      let b = try other.forward(
        tokens: [ids], cache: other.makeCache(batch: 1, capacity: ids.count), logits: .all)
      for position in 0..<ids.count {
        let rowA = a[(position * vocab)..<((position + 1) * vocab)]
        let rowB = b[(position * vocab)..<((position + 1) * vocab)]
        for (i, j) in zip(rowA.indices, rowB.indices) {
          let difference = abs(rowA[i] - rowB[j])
          sum += Double(difference)
          if difference > result.maxAbsDifference || difference.isNaN {
            result.maxAbsDifference = difference
            result.worst = (p, position, i - rowA.startIndex)
          }
        }
        if Sampler.argmax(rowA) == Sampler.argmax(rowB) { result.top1Agreements += 1 }
        result.positions += 1
      }
    }
    result.meanAbsDifference = result.positions == 0 ? 0 : sum / Double(result.positions * vocab)
    return result
  }
}
