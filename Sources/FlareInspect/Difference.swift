import FlareCore

/// How two tensors of the same shape differ, value by value (after conversion to `Float`).
///
/// `maxAbs` is the largest `|a − b|`; `relativeFrobenius` is `‖a − b‖_F / ‖a‖_F` with `a` the
/// first (reference) tensor (0 when both norms are 0, infinity when only `a`'s is). A NaN
/// against a NaN, or an infinity against the same infinity, counts as equal; a NaN or an
/// infinity against anything else makes both measures infinite.
public struct TensorDifference: Equatable, Sendable {
  public var maxAbs: Double = 0
  public var relativeFrobenius: Double = 0
  /// Number of positions whose values differ at all.
  public var differing = 0
}

struct DifferencePartial: Sendable {
  var maxAbs = 0.0
  var diffSquares = 0.0
  var refSquares = 0.0
  var differing = 0
  var unmatchedSpecial = false

  mutating func merge(_ other: DifferencePartial) {
    maxAbs = Swift.max(maxAbs, other.maxAbs)
    diffSquares += other.diffSquares
    refSquares += other.refSquares
    differing += other.differing
    unmatchedSpecial = unmatchedSpecial || other.unmatchedSpecial
  }
}

extension TensorDifference {
  /// Differences of tensor pairs `(a, b)` with equal value counts, in parallel over chunks.
  public static func compute(
    pairs: [(DecodableTensor, DecodableTensor)], progress: ProgressReporter? = nil
  )
    -> [TensorDifference]
  {
    let references = pairs.map(\.0)
    let others = pairs.map(\.1)
    // Chunks of `a` start on multiples of the larger granularity (as before), and each decodes
    // the same range of its partner `b`.
    let aligned = zip(references, others).map { reference, other in
      var tensor = reference
      tensor.granularity = Swift.max(reference.granularity, other.granularity)
      return tensor
    }
    let partials = forEachChunk(of: aligned, empty: DifferencePartial(), progress: progress) {
      index, range, a in
      let partner = others[index]
      var b = [Float](repeating: 0, count: range.count)
      b.withUnsafeMutableBufferPointer { partner.decode(range, $0) }
      var partial = DifferencePartial()
      for i in 0..<a.count {
        let x = a[i]
        let y = b[i]
        if x.isFinite && y.isFinite {
          let d = Double(x) - Double(y)
          if d != 0 { partial.differing += 1 }
          partial.maxAbs = Swift.max(partial.maxAbs, abs(d))
          partial.diffSquares += d * d
          partial.refSquares += Double(x) * Double(x)
        } else if (x.isNaN && y.isNaN) || x == y {
          continue
        } else {
          partial.differing += 1
          partial.unmatchedSpecial = true
        }
      }
      return partial
    }
    return partials.map { chunks in
      var total = DifferencePartial()
      for chunk in chunks { total.merge(chunk) }
      var result = TensorDifference()
      result.differing = total.differing
      if total.unmatchedSpecial {
        result.maxAbs = .infinity
        result.relativeFrobenius = .infinity
        return result
      }
      result.maxAbs = total.maxAbs
      let diff = total.diffSquares.squareRoot()
      let ref = total.refSquares.squareRoot()
      result.relativeFrobenius = diff == 0 ? 0 : (ref == 0 ? .infinity : diff / ref)
      return result
    }
  }
}
