import FlareTensor
import Testing

@Suite("OpenBLAS wrappers")
struct BLASTests {
  // Oracle: hand-computed products; exact in Float (small integers).
  @Test("sgemm multiplies row-major matrices")
  func sgemm() {
    let a: [Float] = [1, 2, 3, 4]
    let b: [Float] = [5, 6, 7, 8]
    var c = [Float](repeating: 0, count: 4)
    a.withUnsafeBufferPointer { a in
      b.withUnsafeBufferPointer { b in
        c.withUnsafeMutableBufferPointer { c in BLAS.sgemm(m: 2, n: 2, k: 2, a: a, b: b, c: c) }
      }
    }
    #expect(c == [19, 22, 43, 50])
  }

  @Test("sdot and saxpy agree with plain arithmetic on a non-square case")
  func dotAndAxpy() {
    let x: [Float] = (0..<37).map { Float($0) * 0.5 }
    var y: [Float] = (0..<37).map { Float(37 - $0) }
    let expectedDot = zip(x, y).reduce(Float(0)) { $0 + $1.0 * $1.1 }
    let dot = x.withUnsafeBufferPointer { x in y.withUnsafeBufferPointer { BLAS.sdot(x, $0) } }
    #expect(abs(dot - expectedDot) <= 1e-3)
    x.withUnsafeBufferPointer { x in y.withUnsafeMutableBufferPointer { BLAS.saxpy(2, x, $0) } }
    #expect(y[10] == 27 + 10)
  }
}
