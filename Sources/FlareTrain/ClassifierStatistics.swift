import FlareModels

/// Statistics for comparing classifiers (the cross-lingual benchmark): intervals over seeds and
/// a per-example paired bootstrap over a test set.
public enum ClassifierStatistics {
  /// A classifier metric of predictions against the truth.
  public enum Metric: String, Sendable, CaseIterable {
    case accuracy
    case macroF1 = "macro_f1"

    public func value(predictions: [Int], truth: [Int]) -> Double {
      switch self {
      case .accuracy: Trainer.accuracy(predictions: predictions, truth: truth)
      case .macroF1: Trainer.macroF1(predictions: predictions, truth: truth)
      }
    }
  }

  /// The two-sided 97.5 % quantile of Student's t with `degrees` degrees of freedom (the
  /// factor of a 95 % interval): tabulated for 1–30, the normal 1.96 beyond 120, and
  /// interpolated in 1/degrees between.
  public static func t975(degrees: Int) -> Double {
    precondition(degrees >= 1, "at least one degree of freedom")
    let table: [Double] = [
      12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
      2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
      2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ]
    if degrees <= table.count { return table[degrees - 1] }
    // 40: 2.021, 60: 2.000, 120: 1.980, ∞: 1.960, linear in 1/degrees between those points.
    let points: [(Double, Double)] = [
      (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (.infinity, 1.960),
    ]
    let d = Double(degrees)
    for (low, high) in zip(points, points.dropFirst()) where d <= high.0 {
      let (x0, x1) = (1 / low.0, high.0.isInfinite ? 0 : 1 / high.0)
      let f = (1 / d - x0) / (x1 - x0)
      return low.1 + f * (high.1 - low.1)
    }
    return 1.960
  }

  /// The mean of `values` (one per seed) and the half-width of its 95 % interval, Student's t
  /// with n − 1 degrees of freedom times the sample standard deviation over √n; the half-width
  /// is 0 for a single value.
  public static func meanInterval(_ values: [Double]) -> (mean: Double, halfWidth: Double) {
    guard !values.isEmpty else { return (.nan, .nan) }
    let n = Double(values.count)
    let mean = values.reduce(0, +) / n
    guard values.count > 1 else { return (mean, 0) }
    let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)
    return (mean, t975(degrees: values.count - 1) * (variance / n).squareRoot())
  }

  /// The result of ``pairedBootstrap(truth:a:b:metric:resamples:seed:)``.
  public struct PairedComparison: Sendable, Equatable {
    public var metric: Metric
    public var a: Double
    public var b: Double
    /// `b − a` on the whole test set.
    public var difference: Double
    /// The 2.5 % and 97.5 % percentiles of the resampled differences.
    public var low: Double
    public var high: Double
    /// Two-sided, for "no difference": `(1 + k) / (R + 1)` with `k` the resampled differences
    /// at least as far from the observed one as the observed one is from 0 (the bootstrap
    /// distribution shifted to the null).
    public var pValue: Double
    public var resamples: Int
  }

  /// A per-example paired bootstrap of `metric(b) − metric(a)`: `resamples` test sets of the
  /// same size drawn with replacement (the same examples for both classifiers), from a
  /// SplitMix64 generator seeded with `seed`, so the result is reproducible.
  public static func pairedBootstrap(
    truth: [Int], a: [Int], b: [Int], metric: Metric, resamples: Int = 10_000, seed: UInt64 = 0
  ) -> PairedComparison {
    precondition(truth.count == a.count && truth.count == b.count, "paired predictions")
    precondition(!truth.isEmpty && resamples > 0, "examples and resamples")
    let n = truth.count
    let valueA = metric.value(predictions: a, truth: truth)
    let valueB = metric.value(predictions: b, truth: truth)
    let observed = valueB - valueA
    var random = SplitMix64(seed: seed)
    var differences: [Double] = []
    differences.reserveCapacity(resamples)
    var sampleTruth = [Int](repeating: 0, count: n)
    var sampleA = sampleTruth
    var sampleB = sampleTruth
    for _ in 0..<resamples {
      for i in 0..<n {
        let j = Int(random.next() % UInt64(n))
        sampleTruth[i] = truth[j]
        sampleA[i] = a[j]
        sampleB[i] = b[j]
      }
      differences.append(
        metric.value(predictions: sampleB, truth: sampleTruth)
          - metric.value(predictions: sampleA, truth: sampleTruth))
    }
    let sorted = differences.sorted()
    func percentile(_ q: Double) -> Double {
      // Linear interpolation between order statistics (numpy's default).
      let position = q * Double(sorted.count - 1)
      let below = Int(position.rounded(.down))
      let above = min(below + 1, sorted.count - 1)
      return sorted[below] + (position - Double(below)) * (sorted[above] - sorted[below])
    }
    let extreme = differences.filter { abs($0 - observed) >= abs(observed) - 1e-12 }.count
    return PairedComparison(
      metric: metric, a: valueA, b: valueB, difference: observed, low: percentile(0.025),
      high: percentile(0.975), pValue: min(1, Double(1 + extreme) / Double(resamples + 1)),
      resamples: resamples)
  }
}
