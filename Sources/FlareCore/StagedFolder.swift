#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A temporary folder next to an output folder, whose files are moved into place only when all
/// of them are complete, so a failure leaves nothing at the destination.
public final class StagedFolder {
  public let destination: String
  public let path: String
  private var published = false

  /// Creates the staging folder beside `destination`.
  public init(for destination: String) throws {
    self.destination = destination
    if fileExists(destination) && !isDirectory(destination) {
      throw FlareError("io", .outputExists, "output exists and is not a folder", path: destination)
    }
    let parent = AtomicFileWriter.parentFolder(of: destination)
    let template = "\(parent)/.\(AtomicFileWriter.baseName(of: destination)).flare-tmp-XXXXXX"
    guard let (made, _) = CleanupOnSignal.createTemporary(template: template, folder: true) else {
      throw FlareError.io(
        "cannot create a temporary folder in '\(parent)'", path: destination, errno: errno)
    }
    path = made
    _ = chmod(path, 0o777 & ~currentUmask())  // mkdtemp makes it 0700
  }

  /// Refuses to start when any of `files` already exists at the destination (unless `overwrite`).
  public func checkDestination(files: [String], overwrite: Bool) throws {
    guard !overwrite else { return }
    for name in files where fileExists("\(destination)/\(name)") {
      throw FlareError(
        "io", .outputExists, "output already exists (use --force to overwrite)",
        path: "\(destination)/\(name)")
    }
  }

  /// Moves `files` into place: the whole folder is renamed when the destination does not exist
  /// yet, otherwise each file is renamed into it.
  public func publish(files: [String]) throws {
    if !fileExists(destination) {
      guard rename(path, destination) == 0 else {
        throw FlareError.io("cannot move the output into place", path: destination, errno: errno)
      }
      CleanupOnSignal.unregister(path)
      published = true
      return
    }
    for name in files {
      guard rename("\(path)/\(name)", "\(destination)/\(name)") == 0 else {
        throw FlareError.io("cannot move '\(name)' into place", path: destination, errno: errno)
      }
    }
    published = true
    cleanUp()
  }

  /// Removes the staging folder and whatever is left in it.
  public func cleanUp() {
    guard isDirectory(path) else { return }
    for name in folderEntries(path) { unlink("\(path)/\(name)") }
    rmdir(path)
    CleanupOnSignal.unregister(path)
  }

  deinit {
    if !published || isDirectory(path) { cleanUp() }
  }
}

/// Copies a small file (configs, tokenizers) from `source` to `target`.
public func copySmallFile(_ source: String, to target: String) throws {
  try writeFileAtomically(try readSmallFile(source, limit: 1 << 30), to: target, overwrite: true)
}
