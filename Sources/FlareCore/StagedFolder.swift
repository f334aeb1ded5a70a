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
    CleanupOnSignal.removeStaleTemporaries(of: destination)
    let template = CleanupOnSignal.template(for: destination)
    guard let (made, _) = CleanupOnSignal.createTemporary(template: template, folder: true) else {
      throw FlareError.io(
        "cannot create a temporary folder in '\(parent)'", path: destination, errno: errno)
    }
    path = made
    _ = chmod(path, 0o777 & ~currentUmask())  // mkdtemp makes it 0700
    Self.register(staging: made, destination: destination)
  }

  // Staging folders and their destinations, so that errors about files being written inside a
  // staging folder name the output the user asked for (``outputPath(for:)``).
  nonisolated(unsafe) private static var stagings: [(staging: String, destination: String)] = []
  nonisolated(unsafe) private static var stagingsLock = pthread_mutex_t()

  private static func register(staging: String, destination: String) {
    pthread_mutex_lock(&stagingsLock)
    stagings.append((staging, destination))
    pthread_mutex_unlock(&stagingsLock)
  }

  private static func forget(staging: String) {
    pthread_mutex_lock(&stagingsLock)
    stagings.removeAll { $0.staging == staging }
    pthread_mutex_unlock(&stagingsLock)
  }

  /// `path` as the user knows it: a path inside a live staging folder becomes the same path in
  /// its destination (nested staging folders resolve in turn); other paths are unchanged.
  public static func outputPath(for path: String) -> String {
    pthread_mutex_lock(&stagingsLock)
    let table = stagings
    pthread_mutex_unlock(&stagingsLock)
    var result = path
    var changed = true
    while changed {
      changed = false
      for (staging, destination) in table where result == staging || result.hasPrefix(staging + "/")
      {
        result = destination + result.dropFirst(staging.count)
        changed = true
      }
    }
    return result
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

  /// Moves `files` into place, so that the destination holds at every moment either its
  /// previous content or the new one, whole (even if the process is killed meanwhile):
  /// - no destination yet: the staging folder is renamed to it;
  /// - an existing destination: everything in it that `files` does not replace (other files,
  ///   subfolders such as a training run's checkpoint) is hard-linked into the staging folder,
  ///   which then takes the destination's place in one `renameat2(RENAME_EXCHANGE)`; the old
  ///   folder, now at the staging path, is removed.
  /// Where the file system cannot exchange or hard-link (another file system inside the
  /// destination, a kernel without `RENAME_EXCHANGE`), each file is renamed into the
  /// destination instead: every file is then whole, but a kill between two renames leaves old
  /// and new files side by side.
  public func publish(files: [String]) throws {
    if !fileExists(destination) {
      guard rename(path, destination) == 0 else {
        throw FlareError.io("cannot move the output into place", path: destination, errno: errno)
      }
      CleanupOnSignal.unregister(path)
      published = true
      return
    }
    if exchangeWithDestination(keeping: Set(files)) {
      published = true
      CleanupOnSignal.unregister(path)
      // The staging path now holds the previous folder.
      removeFileTree(path)
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
    removeFileTree(path)
    CleanupOnSignal.unregister(path)
  }

  /// Links what the destination keeps into the staging folder, gives the staging folder the
  /// destination's permissions and exchanges the two; `false` (staging folder back to the new
  /// files only) if any step is not possible here.
  private func exchangeWithDestination(keeping replaced: Set<String>) -> Bool {
    guard let exchange = renameExchange else { return false }
    var kept: [String] = []
    for name in folderEntries(destination) where !replaced.contains(name) {
      kept.append(name)
      guard linkTree("\(destination)/\(name)", "\(path)/\(name)") else {
        for name in kept { removeFileTree("\(path)/\(name)") }
        return false
      }
    }
    var info = stat()
    if stat(destination, &info) == 0 { _ = chmod(path, info.st_mode & 0o7777) }
    guard exchange(AT_FDCWD, path, AT_FDCWD, destination, renameExchangeFlag) == 0 else {
      for name in kept { removeFileTree("\(path)/\(name)") }
      return false
    }
    syncFolder(AtomicFileWriter.parentFolder(of: destination))
    return true
  }

  deinit {
    if !published || isDirectory(path) { cleanUp() }
    Self.forget(staging: path)
  }
}

/// `renameat2(2)` (glibc 2.28+), looked up at run time: Swift's Glibc module does not declare
/// it. `nil` where the C library lacks it.
private let renameExchange:
  (@convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32)? = {
    #if os(Linux)
      guard let symbol = dlsym(nil, "renameat2") else { return nil }
      return unsafeBitCast(
        symbol,
        to: (@convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) ->
          Int32)
          .self)
    #else
      return nil
    #endif
  }()

/// `RENAME_EXCHANGE` (linux/fs.h): swap the two paths atomically.
private let renameExchangeFlag: UInt32 = 1 << 1

/// Recreates the tree at `source` at `target` with hard links (folders made anew with the same
/// permissions, symbolic links copied); `false` if something cannot be linked (another file
/// system, a special file).
func linkTree(_ source: String, _ target: String) -> Bool {
  var info = stat()
  guard lstat(source, &info) == 0 else { return false }
  switch info.st_mode & S_IFMT {
  case S_IFREG:
    return link(source, target) == 0
  case S_IFLNK:
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let count = readlink(source, &buffer, buffer.count - 1)
    guard count >= 0 else { return false }
    buffer[count] = 0
    return symlink(buffer, target) == 0
  case S_IFDIR:
    guard mkdir(target, info.st_mode & 0o7777) == 0 else { return false }
    return folderEntries(source).allSatisfy { linkTree("\(source)/\($0)", "\(target)/\($0)") }
  default:
    return false
  }
}

/// Removes `path`: a file, a symbolic link, or a folder with everything in it (symbolic links
/// are removed, never followed).
public func removeFileTree(_ path: String) {
  var info = stat()
  guard lstat(path, &info) == 0 else { return }
  if (info.st_mode & S_IFMT) == S_IFDIR {
    for name in folderEntries(path) { removeFileTree("\(path)/\(name)") }
    rmdir(path)
  } else {
    unlink(path)
  }
}

/// Removes folder `path` so that it never exists half-removed: it is first renamed, in one
/// step, to a temporary sibling (`.NAME.flare-tmp-PID-…`, which a later write removes if this
/// process is killed meanwhile), then removed. Falls back to removing in place if the rename
/// fails.
public func discardFolder(_ path: String) {
  guard fileExists(path) else { return }
  let template = CleanupOnSignal.template(for: path)
  guard let (temporary, _) = CleanupOnSignal.createTemporary(template: template, folder: true)
  else {
    removeFileTree(path)
    return
  }
  // mkdtemp made an empty folder there: a folder renamed onto an empty folder replaces it.
  if rename(path, temporary) == 0 {
    syncFolder(AtomicFileWriter.parentFolder(of: path))
    removeFileTree(temporary)
  } else {
    removeFileTree(temporary)
    removeFileTree(path)
  }
  CleanupOnSignal.unregister(temporary)
}

/// `fsync`s folder `path`, so a rename in it is durable.
func syncFolder(_ path: String) {
  let fd = open(path, O_RDONLY | O_DIRECTORY)
  guard fd >= 0 else { return }
  _ = fsync(fd)
  close(fd)
}

/// Copies a small file (configs, tokenizers) from `source` to `target`.
public func copySmallFile(_ source: String, to target: String) throws {
  try writeFileAtomically(try readSmallFile(source, limit: 1 << 30), to: target, overwrite: true)
}
