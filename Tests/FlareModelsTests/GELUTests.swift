import Foundation
import Testing

@testable import FlareModels

/// The vectorised GELU (erf form) and its derivative against a double-precision reference
/// (glibc's `erf` and `exp` in `Double`) on a dense grid over [−10, 10] and around 0.
@Suite("GELU: vectorised Φ against double precision")
struct GELUTests {
  static let grid: [Float] =
    stride(from: -10.0, through: 10.0, by: 1.0 / 1024).map { Float($0) }
    + stride(from: -1e-3, through: 1e-3, by: 1e-6).map { Float($0) }

  /// Tolerances: GELU within 5e-7 relative where |GELU(x)| ≥ 1e-6 and 1e-12 absolute in the
  /// far negative tail (where the scalar form `1 + erff(x/√2)` keeps no digits at all); the
  /// derivative `Φ(x) + x·φ(x)` within 5e-7 of the size of its two terms
  /// (they cancel near x ≈ −0.75, where no float evaluation does better).
  @Test("gelu and geluBackward match double precision")
  func againstDouble() throws {
    let count = Self.grid.count - Self.grid.count % 8  // the SIMD path only
    let values = Array(Self.grid.prefix(count))
    var out = values
    out.withUnsafeMutableBufferPointer { Kernels.gelu($0.baseAddress!, count: count) }
    var dinp = [Float](repeating: 0, count: count)
    let ones = [Float](repeating: 1, count: count)
    values.withUnsafeBufferPointer { x in
      ones.withUnsafeBufferPointer { g in
        dinp.withUnsafeMutableBufferPointer { d in
          Kernels.geluBackward(
            dinp: d.baseAddress!, inp: x.baseAddress!, dout: g.baseAddress!, count: count)
        }
      }
    }
    var worstRelative = 0.0
    var worstTail = 0.0
    var worstDerivative = 0.0
    for (i, xf) in values.enumerated() {
      let x = Double(xf)
      let cdf = 0.5 * erfc(-x / 2.0.squareRoot())
      let pdf = exp(-0.5 * x * x) / (2 * Double.pi).squareRoot()
      let value = x * cdf
      let error = abs(Double(out[i]) - value)
      if abs(value) >= 1e-6 {
        worstRelative = max(worstRelative, error / abs(value))
      } else {
        worstTail = max(worstTail, error)
      }
      let derivativeError = abs(Double(dinp[i]) - (cdf + x * pdf))
      worstDerivative = max(worstDerivative, derivativeError / (abs(cdf) + abs(x * pdf)))
    }
    print(
      "GELU: worst relative error \(worstRelative), tail absolute \(worstTail), derivative \(worstDerivative)"
    )
    #expect(worstRelative <= 5e-7)
    #expect(worstTail <= 1e-12)
    #expect(worstDerivative <= 5e-7)
  }
}
