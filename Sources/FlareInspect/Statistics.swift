import Dispatch
import FlareCore

/// Summary statistics of a tensor's values, computed in `Float` after conversion, accumulated
/// in `Double`.
///
/// `min`, `max`, `mean` and `std` (population, ddof = 0) are over the finite values only;
/// NaNs and infinities are counted separately. All four are `nil` when no value is finite.
public struct TensorStatistics: Equatable, Sendable {
  public var count = 0
  public var finite = 0
  public var nanCount = 0
  public var infCount = 0
  public var min: Float?
  public var max: Float?
  public var mean: Double?
  public var std: Double?
}

/// A tensor whose values can be decoded to `Float` in element ranges.
public struct DecodableTensor: Sendable {
  public var name: String
  /// Number of `Float` values the tensor decodes to.
  public var valueCount: Int
  /// Ranges passed to `decode` start at multiples of this (keeps sub-byte types byte-aligned).
  public var granularity: Int
  /// Decodes values `range` into the buffer (which holds exactly `range.count` values).
  public var decode: @Sendable (Range<Int>, UnsafeMutableBufferPointer<Float>) -> Void

  public init(
    name: String, valueCount: Int, granularity: Int = 8,
    decode: @escaping @Sendable (Range<Int>, UnsafeMutableBufferPointer<Float>) -> Void
  ) {
    self.name = name
    self.valueCount = valueCount
    self.granularity = granularity
    self.decode = decode
  }
}

/// A slot array written from concurrent workers, each worker to its own indices.
final class ConcurrentSlots<T>: @unchecked Sendable {
  // @unchecked Sendable: every index is written by exactly one worker, and read only after
  // `concurrentPerform` returns.
  var values: [T]
  init(repeating value: T, count: Int) { values = Array(repeating: value, count: count) }
}

/// Splits tensors into chunks and runs `work` over them on all cores; results come back in
/// chunk order per tensor, whatever order the chunks finished in.
func forEachChunk<Partial: Sendable>(
  of tensors: [DecodableTensor], chunkSize: Int = 1 << 20, empty: Partial,
  progress: ProgressReporter? = nil,
  work: @escaping @Sendable (Int, Range<Int>, UnsafeBufferPointer<Float>) -> Partial
) -> [[Partial]] {
  var items: [(tensor: Int, range: Range<Int>)] = []
  for (t, tensor) in tensors.enumerated() {
    let step = Swift.max(tensor.granularity, chunkSize / tensor.granularity * tensor.granularity)
    var start = 0
    while start < tensor.valueCount {
      let end = Swift.min(tensor.valueCount, start + step)
      items.append((t, start..<end))
      start = end
    }
  }
  let slots = ConcurrentSlots(repeating: empty, count: items.count)
  let frozenItems = items
  DispatchQueue.concurrentPerform(iterations: frozenItems.count) { i in
    let item = frozenItems[i]
    let tensor = tensors[item.tensor]
    var scratch = [Float](repeating: 0, count: item.range.count)
    scratch.withUnsafeMutableBufferPointer { buffer in
      tensor.decode(item.range, buffer)
    }
    slots.values[i] = scratch.withUnsafeBufferPointer { work(item.tensor, item.range, $0) }
    progress?.advance(by: item.range.count)
  }
  var result = [[Partial]](repeating: [], count: tensors.count)
  for (i, item) in frozenItems.enumerated() { result[item.tensor].append(slots.values[i]) }
  return result
}

/// Something that hears how many values were processed.
public protocol ProgressReporter: Sendable {
  func advance(by units: Int)
}

/// Partial sums of one chunk, merged with Chan et al.'s pairwise update.
struct MomentPartial: Sendable {
  var count = 0
  var finite = 0
  var nan = 0
  var inf = 0
  var min = Float.infinity
  var max = -Float.infinity
  var mean = 0.0
  var m2 = 0.0

  static func of(_ values: UnsafeBufferPointer<Float>) -> MomentPartial {
    var partial = MomentPartial()
    partial.count = values.count
    var shift: Double?
    var sum = 0.0
    var sumSquares = 0.0
    var low = Float.infinity
    var high = -Float.infinity
    for value in values {
      if value.isNaN {
        partial.nan += 1
        continue
      }
      if value.isInfinite {
        partial.inf += 1
        continue
      }
      partial.finite += 1
      low = Swift.min(low, value)
      high = Swift.max(high, value)
      // Sums of values shifted by the first finite value keep the variance well conditioned.
      let k = shift ?? Double(value)
      shift = k
      let d = Double(value) - k
      sum += d
      sumSquares += d * d
    }
    partial.min = low
    partial.max = high
    if partial.finite > 0, let k = shift {
      let n = Double(partial.finite)
      partial.mean = k + sum / n
      partial.m2 = Swift.max(0, sumSquares - sum * sum / n)
    }
    return partial
  }

  mutating func merge(_ other: MomentPartial) {
    count += other.count
    nan += other.nan
    inf += other.inf
    min = Swift.min(min, other.min)
    max = Swift.max(max, other.max)
    guard other.finite > 0 else { return }
    if finite == 0 {
      finite = other.finite
      mean = other.mean
      m2 = other.m2
      return
    }
    let n = Double(finite + other.finite)
    let delta = other.mean - mean
    mean += delta * Double(other.finite) / n
    m2 += other.m2 + delta * delta * Double(finite) * Double(other.finite) / n
    finite += other.finite
  }
}

extension TensorStatistics {
  /// Statistics of every tensor, computed in parallel over chunks of about a million values.
  public static func compute(_ tensors: [DecodableTensor], progress: ProgressReporter? = nil)
    -> [TensorStatistics]
  {
    let partials = forEachChunk(of: tensors, empty: MomentPartial(), progress: progress) {
      _, _, values in
      MomentPartial.of(values)
    }
    return partials.map { chunks in
      var total = MomentPartial()
      for chunk in chunks { total.merge(chunk) }
      var stats = TensorStatistics()
      stats.count = total.count
      stats.finite = total.finite
      stats.nanCount = total.nan
      stats.infCount = total.inf
      if total.finite > 0 {
        stats.min = total.min
        stats.max = total.max
        stats.mean = total.mean
        stats.std = (total.m2 / Double(total.finite)).squareRoot()
      }
      return stats
    }
  }
}
