import CFlareOpenBLAS

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension BLAS {
  /// The OpenBLAS kernel set in use ("Haswell", "SkylakeX", "Prescott", …).
  public static var coreName: String {
    guard let name = openblas_get_corename() else { return "unknown" }
    return String(cString: name)
  }

  /// The OpenBLAS kernel set this CPU's feature flags allow, from `/proc/cpuinfo`: "SkylakeX"
  /// with AVX-512 F/BW/DQ/VL, "Haswell" with AVX2 and FMA, otherwise `nil`.
  public static func kernelsForThisCPU(cpuinfo: String? = nil) -> String? {
    let text = cpuinfo ?? procText("/proc/cpuinfo")
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else {
      return nil
    }
    let flags = Set(line.split(separator: " ").map(String.init))
    if flags.isSuperset(of: ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"]) {
      return "SkylakeX"
    }
    if flags.isSuperset(of: ["avx2", "fma"]) { return "Haswell" }
    return nil
  }

  /// Makes sure OpenBLAS runs the kernels this CPU supports.
  ///
  /// OpenBLAS chooses its kernels by CPU model when the library loads; a CPU model newer than
  /// the library (Debian bookworm ships 0.3.21) gets the generic SSE3 ("Prescott") kernels even
  /// when it has AVX2 or AVX-512, which makes every matrix product about twice as slow. The
  /// choice can only be changed through `OPENBLAS_CORETYPE` before the library loads, so when
  /// the generic kernels were chosen on a CPU that supports better ones, this sets
  /// `OPENBLAS_CORETYPE` and re-executes the program once with the same arguments. It does
  /// nothing if `OPENBLAS_CORETYPE` is already set (by the user or by the first run), if
  /// `FLARE_BLAS_KERNELS=keep`, or if re-executing fails (the program then goes on as it is).
  /// Results differ between kernel sets only by float rounding; within one run they are fixed.
  public static func selectKernelsForThisCPU() {
    guard getenv("OPENBLAS_CORETYPE") == nil else { return }
    if let keep = getenv("FLARE_BLAS_KERNELS"), String(cString: keep) == "keep" { return }
    guard ["Prescott", "Core2", "Nehalem", "Sandybridge"].contains(coreName),
      let better = kernelsForThisCPU()
    else { return }
    #if os(Linux)
      setenv("OPENBLAS_CORETYPE", better, 1)
      execv("/proc/self/exe", CommandLine.unsafeArgv)
      // Still here: exec failed. Keep the kernels already loaded.
      unsetenv("OPENBLAS_CORETYPE")
    #endif
  }
}

/// The text of a `/proc` file (its size reads as 0, so it is read until end of file), at most
/// 4 MiB; empty if it cannot be read.
private func procText(_ path: String) -> String {
  let fd = open(path, O_RDONLY)
  guard fd >= 0 else { return "" }
  defer { close(fd) }
  var bytes: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 65536)
  while bytes.count < 4 << 20 {
    let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    if n < 0 && errno == EINTR { continue }
    guard n > 0 else { break }
    bytes.append(contentsOf: chunk[0..<n])
  }
  return String(decoding: bytes, as: UTF8.self)
}
