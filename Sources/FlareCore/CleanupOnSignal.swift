#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Temporary outputs to remove if the process is interrupted (SIGINT, SIGTERM, SIGHUP), so an
/// interrupted tool leaves neither its output nor its temporary files behind.
///
/// Paths are kept as C strings in a fixed table the signal handler reads without allocating.
/// (SIGKILL cannot be caught; then the temporary file, never the output, is left, with a
/// `.flare-tmp-` name.)
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
  }

  /// Registers a temporary file (or folder) to remove on interruption.
  public static func register(_ path: String, folder: Bool = false) {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    guard let slot = table.firstIndex(where: { $0 == nil }) else { return }
    table[slot] = strdup(path)
    isFolder[slot] = folder
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
  _exit(128 + sig)
}
