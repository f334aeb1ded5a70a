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

#if arch(x86_64)
  let isX86_64 = true
#else
  let isX86_64 = false
#endif

@Suite("OpenBLAS kernel choice")
struct BLASKernelTests {
  // Oracle: OpenBLAS's own kernel requirements (SkylakeX needs AVX-512 F/BW/DQ/VL, Haswell
  // needs AVX2 and FMA); the flags lines are abridged from real /proc/cpuinfo files.
  @Test("the kernel set follows the CPU's feature flags")
  func choice() {
    let emerald =
      "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 fma avx avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16\n"
    #expect(BLAS.kernelsForThisCPU(cpuinfo: emerald) == "SkylakeX")
    let haswell = "flags\t\t: fpu sse sse2 ssse3 fma avx avx2\n"
    #expect(BLAS.kernelsForThisCPU(cpuinfo: haswell) == "Haswell")
    let noFMA = "flags\t\t: fpu sse sse2 avx avx2 avx512f avx512dq avx512bw avx512vl\n"
    #expect(BLAS.kernelsForThisCPU(cpuinfo: noFMA) == nil)
    #expect(BLAS.kernelsForThisCPU(cpuinfo: "processor\t: 0\n") == nil)
  }

  // Oracle: the x86-64 kernel-set names of OpenBLAS's dynamic architecture table (the strings in
  // Debian's libopenblas0 0.3.21, plus the two later releases added). `coreName` reports
  // "unknown" when OpenBLAS gives no name and OpenBLAS itself says "Unknown" when it matched no
  // kernel set: both fail here.
  @Test(
    "the kernel set in use is one OpenBLAS names, not unknown",
    .enabled(if: isX86_64, "the names are OpenBLAS's x86-64 kernel sets"))
  func coreName() {
    let known: Set = [
      "Katmai", "Coppermine", "Northwood", "Prescott", "Banias", "Atom", "Core2", "Penryn",
      "Dunnington", "Nehalem", "Athlon", "Opteron", "Opteron(SSE3)", "Barcelona", "Nano",
      "Sandybridge", "Bobcat", "Bulldozer", "Piledriver", "Haswell", "Steamroller", "Excavator",
      "Zen", "SkylakeX", "Cooperlake", "SapphireRapids",
    ]
    #expect(known.contains(BLAS.coreName), "OpenBLAS reports '\(BLAS.coreName)'")
  }
}
