#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A read-only, memory-mapped file.
///
/// The mapping lives as long as the object; views handed out by ``bytes`` must not outlive it.
/// An empty file maps to an empty buffer. The corresponding C calls are `open`, `fstat`, `mmap`.
public final class MappedFile: @unchecked Sendable {
  // @unchecked Sendable: the mapping is read-only and immutable after init.
  public let path: String
  public let bytes: UnsafeRawBufferPointer
  private let base: UnsafeMutableRawPointer?
  private let length: Int

  /// Maps `path` read-only.
  /// - Throws: ``FlareError`` `.fileNotFound` or `.ioError` naming the path and the reason.
  public init(path: String) throws(FlareError) {
    self.path = path
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FlareError.io("cannot open", path: path, errno: errno) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else {
      throw FlareError.io("cannot stat", path: path, errno: errno)
    }
    guard (info.st_mode & S_IFMT) == S_IFREG else {
      throw FlareError("io", .ioError, "not a regular file", path: path)
    }
    guard let size = Int(exactly: info.st_size) else {
      throw FlareError("io", .ioError, "file size \(info.st_size) is not representable", path: path)
    }
    length = size
    if size == 0 {
      base = nil
      bytes = UnsafeRawBufferPointer(start: nil, count: 0)
      return
    }
    let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
    guard let mapped, mapped != MAP_FAILED else {
      throw FlareError.io("cannot map", path: path, errno: errno)
    }
    base = mapped
    bytes = UnsafeRawBufferPointer(start: mapped, count: size)
    MappedFileFaults.register(base: mapped, count: size, path: path)
  }

  /// The file size in bytes.
  public var count: Int { length }

  /// Tells the kernel the bytes in `range` are no longer needed (`madvise(MADV_DONTNEED)` on
  /// the whole pages inside it), so a pass over a large file does not keep it all resident.
  /// The mapping is read-only and private: a later read simply faults the pages back in.
  public func release(_ range: Range<Int>) {
    guard let base, range.lowerBound >= 0, range.upperBound <= length else { return }
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    guard page > 0 else { return }
    let start = (range.lowerBound + page - 1) / page * page
    let end = range.upperBound / page * page
    if end > start { _ = madvise(base + start, end - start, MADV_DONTNEED) }
  }

  deinit {
    if let base {
      MappedFileFaults.unregister(base: base)
      munmap(base, length)
    }
  }
}

/// Whether a file system object exists at `path` (following symbolic links).
public func fileExists(_ path: String) -> Bool {
  var info = stat()
  return stat(path, &info) == 0
}

/// The names in folder `path` (without `.` and `..`), unsorted; empty if it cannot be read.
public func folderEntries(_ path: String) -> [String] {
  guard let dir = opendir(path) else { return [] }
  defer { closedir(dir) }
  var names: [String] = []
  while let entry = readdir(dir) {
    let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
      String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
    if name != "." && name != ".." { names.append(name) }
  }
  return names
}

/// Whether `path` is a directory.
public func isDirectory(_ path: String) -> Bool {
  var info = stat()
  return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
}

/// Reads a whole (small) file into memory, refusing files larger than `limit` bytes.
/// - Throws: ``FlareError`` naming the path if the file cannot be read or is too large.
public func readSmallFile(_ path: String, limit: Int = 256 << 20) throws -> [UInt8] {
  let file = try MappedFile(path: path)
  guard file.count <= limit else {
    throw FlareError(
      "io", .ioError, "file is \(file.count) bytes, more than the \(limit)-byte limit", path: path)
  }
  return Array(file.bytes)
}
