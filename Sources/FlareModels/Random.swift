#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Flare's one seeded generator: SplitMix64 (Steele, Lea and Flood, 2014), a 64-bit state
/// advanced by the golden-ratio increment and passed through a bijective mix. Sampling in
/// generation, head and adapter initialisation and the trainer's streams all use it.
///
/// Everything random in a training run draws from generators derived from the run's seed with
/// ``derive(_:_:)``: the LoRA `A` initialisation (one stream per module), the data order (one
/// stream per epoch) and the dropout masks (one seed per micro-batch). A stream depends only on
/// the seed and its label, never on what ran before, so a resumed run draws exactly what an
/// uninterrupted run draws. The streams are Flare's own; they are not PyTorch's.
public struct SplitMix64: Sendable, Equatable {
  /// The generator's whole state.
  public var state: UInt64

  public init(seed: UInt64) { state = seed }

  /// The next 64 random bits.
  public mutating func next() -> UInt64 {
    // Wrapping arithmetic is SplitMix64's definition.
    state &+= 0x9E37_79B9_7F4A_7C15
    return Self.mix(state)
  }

  /// SplitMix64's output function (a bijective mix of 64 bits).
  public static func mix(_ value: UInt64) -> UInt64 {
    var z = value
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// A seed for the stream `label` of the run seeded `seed` (`mix(mix(seed) ^ label)`, with the
  /// label itself mixed so nearby labels give unrelated streams).
  public static func derive(_ seed: UInt64, _ label: UInt64) -> UInt64 {
    mix(mix(seed &+ 0x9E37_79B9_7F4A_7C15) ^ mix(label &+ 0x632B_E59B_D9B4_E019))
  }

  /// A uniform value in `[0, 1)` with 53 random bits.
  public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }

  /// A uniform `Float` in `[0, 1)` from the top 24 bits (every value a multiple of 2⁻²⁴).
  public mutating func unitFloat() -> Float { Float(next() >> 40) * 0x1p-24 }

  /// A uniform `Float` in `[-bound, bound)`: `(2u − 1)·bound` with `u` from ``unitFloat()``.
  public mutating func symmetric(_ bound: Float) -> Float { (2 * unitFloat() - 1) * bound }

  /// A normal deviate with mean `mean` and standard deviation `std` (Box–Muller on two
  /// 53-bit uniforms, the cosine branch).
  public mutating func normal(mean: Float = 0, std: Float = 1) -> Float {
    let u1 = (Double(next() >> 11) + 1) * 0x1p-53  // (0, 1]: log stays finite
    let u2 = Double(next() >> 11) * 0x1p-53
    let z = (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    return mean + std * Float(z)
  }

  /// `count` draws of `N(0, std²)`: Box–Muller on pairs of 53-bit uniforms, both branches
  /// (the cosine value, then the sine value, of each pair).
  public mutating func normals(count: Int, std: Float) -> [Float] {
    var values = [Float](repeating: 0, count: count)
    var i = 0
    while i < count {
      let u1 = 1 - nextUnit()  // (0, 1]: the logarithm stays finite
      let u2 = nextUnit()
      let radius = (-2 * log(u1)).squareRoot() * Double(std)
      values[i] = Float(radius * cos(2 * Double.pi * u2))
      if i + 1 < count { values[i + 1] = Float(radius * sin(2 * Double.pi * u2)) }
      i += 2
    }
    return values
  }

  /// A uniform integer in `0..<bound` (rejection sampling, so no value is favoured).
  public mutating func below(_ bound: Int) -> Int {
    precondition(bound > 0, "bound must be positive")
    let n = UInt64(bound)
    // The largest multiple of n that fits: draws at or above it are rejected.
    let limit = UInt64.max - UInt64.max % n
    while true {
      let x = next()
      if x < limit { return Int(x % n) }
    }
  }

  /// `0..<count` in a uniformly random order (Fisher–Yates, from the last position down).
  public mutating func permutation(_ count: Int) -> [Int] {
    var order = Array(0..<count)
    var i = count - 1
    while i > 0 {
      let j = below(i + 1)
      order.swapAt(i, j)
      i -= 1
    }
    return order
  }
}
