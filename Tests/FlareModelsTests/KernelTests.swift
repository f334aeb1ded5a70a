import Foundation
import Testing

@testable import FlareModels

@Suite("model kernels")
struct KernelTests {
  // Oracle: glibc's expf (correctly rounded to within 1 ulp). The vector exp must stay within
  // 4e-7 relative over the range softmax and SiLU use, and clamp instead of overflowing.
  @Test("the 8-lane exp agrees with expf")
  func vectorExp() {
    var worst: Float = 0
    var x: Float = -87
    while x < 88 {
      let lanes = SIMD8<Float>((0..<8).map { x + Float($0) * 0.001 })
      let got = Kernels.exp8(lanes)
      for i in 0..<8 {
        let expected = expf(lanes[i])
        worst = max(worst, abs(got[i] - expected) / expected)
      }
      x += 0.0173
    }
    #expect(worst < 4e-7, "worst relative error \(worst)")
    let extreme = Kernels.exp8(SIMD8<Float>(repeating: 1000))
    #expect(extreme[0].isFinite && extreme[0] > 1e38)
    #expect(Kernels.exp8(SIMD8<Float>(repeating: -1000))[0] == 0)
    #expect(Kernels.exp8(SIMD8<Float>(repeating: -.infinity))[0] == 0)
  }

  // Oracle: the scalar definitions silu(g)·u with expf, and softmax with expf (1e-6 relative).
  @Test("swiglu and softmax match their scalar definitions")
  func swigluSoftmax() {
    let count = 37
    let gate = (0..<count).map { Float($0) * 0.7 - 12 }
    let up = (0..<count).map { Float($0 % 5) - 2 }
    var out = [Float](repeating: 0, count: count)
    Kernels.swiglu(out: &out, gate: gate, up: up, count: count)
    for i in 0..<count {
      let expected = gate[i] / (1 + expf(-gate[i])) * up[i]
      #expect(abs(out[i] - expected) <= 1e-6 * max(1, abs(expected)), "\(i)")
    }
    var row = (0..<count).map { Float($0) * 0.31 - 4 }
    let largest = row.max() ?? 0
    let total = row.reduce(Float(0)) { $0 + expf($1 - largest) }
    let expected = row.map { expf($0 - largest) / total }
    Kernels.softmax(&row, rows: 1, channels: count)
    for i in 0..<count { #expect(abs(row[i] - expected[i]) <= 1e-6 * expected[i] + 1e-9) }
  }
}
