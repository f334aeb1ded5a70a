#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Temporary outputs to remove if the process is interrupted (SIGINT, SIGTERM, SIGHUP), so an
/// interrupted tool leaves neither its output nor its temporary files behind. Temporary files
/// and folders are made with ``createTemporary(template:folder:)``, which registers them before
/// they exist.
///
/// Paths are kept as C strings in a fixed table the signal handler reads without allocating.
/// (SIGKILL cannot be caught; then the temporary file, never the output, is left, with a
/// `.NAME.flare-tmp-PID-` name, and the next write of the same output removes it.)
public enum CleanupOnSignal {
  static let capacity = 64
  nonisolated(unsafe) static var table = [UnsafeMutablePointer<CChar>?](
    repeating: nil, count: capacity)
  nonisolated(unsafe) static var isFolder = [Bool](repeating: false, count: capacity)
  nonisolated(unsafe) static var lock = pthread_mutex_t()
  nonisolated(unsafe) static var installed = false

  /// Installs the handlers (once) and unblocks the three signals in the calling thread; tools
  /// call this at start, on the main thread.
  ///
  /// A process inherits its parent's signal mask, and a parent that starts a tool from a thread
  /// with these signals blocked (a thread pool's worker, for instance) would otherwise leave them
  /// pending for the whole run: the tool could not be interrupted and would finish as if nothing
  /// happened.
  public static func install() {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    guard !installed else { return }
    installed = true
    // Touch the tables so they are allocated before any signal arrives.
    _ = table.count
    _ = isFolder.count
    var signals = sigset_t()
    sigemptyset(&signals)
    for sig in [SIGINT, SIGTERM, SIGHUP] {
      signal(sig, handle)
      sigaddset(&signals, sig)
    }
    pthread_sigmask(SIG_UNBLOCK, &signals, nil)
    MappedFileFaults.install()
  }

  /// Registers a temporary file (or folder) to remove on interruption.
  public static func register(_ path: String, folder: Bool = false) {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    guard let slot = table.firstIndex(where: { $0 == nil }) else { return }
    table[slot] = strdup(path)
    isFolder[slot] = folder
  }

  /// Creates a temporary file (`mkstemp`) or folder (`mkdtemp`) from `template` (ending in
  /// `XXXXXX`), registered before it exists: the table holds the very buffer `mkstemp` fills in,
  /// so an interruption at any moment, even while it is being created, removes it.
  /// - Returns: The path and, for a file, its open descriptor (−1 for a folder); `nil` if it
  ///   could not be created (`errno` says why).
  public static func createTemporary(template: String, folder: Bool) -> (
    path: String, descriptor: Int32
  )? {
    guard let buffer = strdup(template) else { return nil }
    pthread_mutex_lock(&lock)
    let slot = table.firstIndex { $0 == nil }
    if let slot {
      isFolder[slot] = folder
      table[slot] = buffer
    }
    pthread_mutex_unlock(&lock)
    var descriptor: Int32 = -1
    let made: Bool
    if folder {
      made = mkdtemp(buffer) != nil
    } else {
      descriptor = mkstemp(buffer)
      made = descriptor >= 0
    }
    let path = String(cString: buffer)
    guard made else {
      let code = errno
      if let slot {
        pthread_mutex_lock(&lock)
        table[slot] = nil
        pthread_mutex_unlock(&lock)
      }
      free(buffer)
      errno = code
      return nil
    }
    if slot == nil { free(buffer) }  // the table is full: created, but not removed on a signal
    return (path, descriptor)
  }

  /// The `createTemporary` template for an output at `destination`: a hidden sibling named
  /// after it and this process, `.NAME.flare-tmp-PID-XXXXXX`.
  public static func template(for destination: String) -> String {
    let folder = AtomicFileWriter.parentFolder(of: destination)
    let name = AtomicFileWriter.baseName(of: destination)
    return "\(folder)/.\(name).flare-tmp-\(getpid())-XXXXXX"
  }

  /// Removes the temporary files and folders that killed Flare processes left (SIGKILL runs no
  /// handler) in the folder of `destination`: `.NAME.flare-tmp-PID-…` entries whose process no
  /// longer exists. Others, and names without a process id, are left alone.
  /// - Returns: The paths removed.
  @discardableResult
  public static func removeStaleTemporaries(of destination: String) -> [String] {
    let folder = AtomicFileWriter.parentFolder(of: destination)
    let marker = ".flare-tmp-"
    var removed: [String] = []
    for entry in folderEntries(folder) where entry.hasPrefix(".") {
      guard let range = entry.firstRange(of: marker) else { continue }
      let rest = entry[range.upperBound...]
      guard let dash = rest.firstIndex(of: "-"), let pid = Int32(rest[..<dash]), pid > 0,
        pid != getpid()
      else { continue }
      guard kill(pid, 0) == -1 && errno == ESRCH else { continue }
      removeFileTree("\(folder)/\(entry)")
      removed.append("\(folder)/\(entry)")
    }
    return removed
  }

  /// Forgets a path (it was published or already removed).
  public static func unregister(_ path: String) {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    for slot in 0..<capacity {
      guard let entry = table[slot], String(cString: entry) == path else { continue }
      table[slot] = nil
      free(entry)
    }
  }
}

/// Removes every registered path and exits with 128 + the signal number.
private func handle(_ sig: Int32) {
  removeRegisteredTemporaries()
  _exit(128 + sig)
}

/// Removes every registered temporary path (in a signal handler: no allocation by Swift
/// strings, no locks).
func removeRegisteredTemporaries() {
  for slot in 0..<CleanupOnSignal.capacity {
    guard let path = CleanupOnSignal.table[slot] else { continue }
    if CleanupOnSignal.isFolder[slot], let dir = opendir(path) {
      // Best effort: the staged folder holds only files Flare wrote.
      while let entry = readdir(dir) {
        var name = entry.pointee.d_name
        let isDot = withUnsafeBytes(of: &name) { raw in
          raw[0] == UInt8(ascii: ".")
            && (raw[1] == 0 || (raw[1] == UInt8(ascii: ".") && raw[2] == 0))
        }
        if isDot { continue }
        // path + "/" + name, built without allocation-heavy String work.
        var full = [CChar](repeating: 0, count: Int(PATH_MAX) + 2)
        let pathLength = strlen(path)
        withUnsafeBytes(of: &name) { raw in
          let nameLength = strnlen(raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
          guard pathLength + 1 + nameLength < Int(PATH_MAX) else { return }
          full.withUnsafeMutableBytes { target in
            target.baseAddress!.copyMemory(from: path, byteCount: pathLength)
            target[pathLength] = UInt8(ascii: "/")
            (target.baseAddress! + pathLength + 1).copyMemory(
              from: raw.baseAddress!, byteCount: nameLength)
          }
        }
        unlink(full)
      }
      closedir(dir)
      rmdir(path)
    } else {
      unlink(path)
    }
  }
}
