#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A file being written atomically: bytes go to a temporary file in the destination's folder,
/// and ``commit()`` makes them durable (`fsync`) and renames the file into place.
///
/// If the writer is dropped without ``commit()`` (an error, a thrown validation), the temporary
/// file is removed, so no partial output is ever left at the destination. An existing
/// destination is refused unless `overwrite` is `true`.
public final class AtomicFileWriter {
  public let destination: String
  public let temporaryPath: String
  private var fd: Int32
  private var buffer: [UInt8] = []
  private let bufferLimit = 1 << 20
  private var committed = false

  /// Creates the temporary file next to `destination`.
  /// - Throws: ``FlareError`` `.outputExists` if `destination` exists and `overwrite` is
  ///   `false`, or an I/O error naming the folder.
  public init(destination: String, overwrite: Bool = false) throws {
    self.destination = destination
    if !overwrite && fileExists(destination) {
      throw FlareError(
        "io", .outputExists, "output already exists (use --force to overwrite)", path: destination)
    }
    if isDirectory(destination) {
      throw FlareError("io", .outputExists, "output is a directory", path: destination)
    }
    CleanupOnSignal.removeStaleTemporaries(of: destination)
    guard
      let (path, descriptor) = CleanupOnSignal.createTemporary(
        template: CleanupOnSignal.template(for: destination), folder: false)
    else {
      throw FlareError.io(
        "cannot create a temporary file beside it", path: StagedFolder.outputPath(for: destination),
        errno: errno)
    }
    fd = descriptor
    // mkstemp creates the file 0600; give it the mode a plain create would (0666 minus umask).
    _ = fchmod(descriptor, 0o666 & ~currentUmask())
    temporaryPath = path
    buffer.reserveCapacity(bufferLimit)
  }

  /// Appends `bytes`.
  public func write(_ bytes: UnsafeRawBufferPointer) throws {
    if bytes.count >= bufferLimit {
      try flush()
      try writeAll(bytes)
    } else {
      if buffer.count + bytes.count > bufferLimit { try flush() }
      buffer.append(contentsOf: bytes)
    }
  }

  /// Appends `bytes`.
  public func write(_ bytes: [UInt8]) throws {
    try bytes.withUnsafeBytes { try write($0) }
  }

  /// Appends `count` zero bytes.
  public func writeZeros(_ count: Int) throws {
    guard count > 0 else { return }
    try write([UInt8](repeating: 0, count: count))
  }

  /// Flushes, `fsync`s, closes and renames the temporary file to the destination, then
  /// `fsync`s the folder so the rename is durable.
  public func commit() throws {
    try finish()
    try publish()
  }

  /// First phase of a commit: flushes, `fsync`s and closes the temporary file, leaving the
  /// destination untouched. Multi-file outputs finish every file before publishing any.
  public func finish() throws {
    guard fd >= 0 else { return }
    try flush()
    guard fsync(fd) == 0 else {
      throw FlareError.io(
        "cannot sync", path: StagedFolder.outputPath(for: destination), errno: errno)
    }
    guard close(fd) == 0 else {
      throw FlareError.io(
        "cannot close", path: StagedFolder.outputPath(for: destination), errno: errno)
    }
    fd = -1
  }

  /// Second phase of a commit: renames the finished temporary file into place.
  public func publish() throws {
    guard rename(temporaryPath, destination) == 0 else {
      throw FlareError.io(
        "cannot rename into place", path: StagedFolder.outputPath(for: destination), errno: errno)
    }
    committed = true
    CleanupOnSignal.unregister(temporaryPath)
    let folderFD = open(AtomicFileWriter.parentFolder(of: destination), O_RDONLY | O_DIRECTORY)
    if folderFD >= 0 {
      _ = fsync(folderFD)
      close(folderFD)
    }
  }

  /// Removes the temporary file without touching the destination.
  public func abandon() {
    if fd >= 0 {
      close(fd)
      fd = -1
    }
    if !committed {
      unlink(temporaryPath)
      CleanupOnSignal.unregister(temporaryPath)
    }
  }

  deinit { abandon() }

  private func flush() throws {
    guard !buffer.isEmpty else { return }
    try buffer.withUnsafeBytes { try writeAll($0) }
    buffer.removeAll(keepingCapacity: true)
  }

  private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
    guard let start = bytes.baseAddress else { return }
    var done = 0
    while done < bytes.count {
      let n = Glibc.write(fd, start + done, bytes.count - done)
      if n < 0 {
        if errno == EINTR { continue }
        throw FlareError.io(
          "cannot write", path: StagedFolder.outputPath(for: destination), errno: errno)
      }
      done += n
    }
  }

  public static func parentFolder(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    let folder = String(path[..<slash])
    return folder.isEmpty ? "/" : folder
  }

  public static func baseName(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return path }
    return String(path[path.index(after: slash)...])
  }
}

/// The process's file-creation mask.
public func currentUmask() -> mode_t {
  let mask = umask(0o022)
  umask(mask)
  return mask
}

/// Writes `bytes` to `path` atomically (temporary file, `fsync`, rename).
public func writeFileAtomically(_ bytes: [UInt8], to path: String, overwrite: Bool = false) throws {
  let writer = try AtomicFileWriter(destination: path, overwrite: overwrite)
  try writer.write(bytes)
  try writer.commit()
}
