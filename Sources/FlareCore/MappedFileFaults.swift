#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A mapped file that shrinks while Flare reads it (truncated in place by another program)
/// makes the kernel send SIGBUS on the first read past its new end. Tools install this
/// handler (through ``CleanupOnSignal/install()``): it names the file the faulting address
/// belongs to, removes the temporary outputs, and exits with status 1, so the user gets an
/// error instead of a crash and no partial output is left.
///
/// A file replaced by a rename keeps its old content for the reader (the mapping holds the old
/// inode); a file rewritten in place with the same size cannot be noticed this way.
public enum MappedFileFaults {
  static let capacity = 512
  // The table the handler reads: address ranges and the message to print for each. Written
  // under `lock`; the handler reads it without locking (at worst it misses an entry being
  // changed, and the bus error takes its default course).
  nonisolated(unsafe) static var starts = [UInt](repeating: 0, count: capacity)
  nonisolated(unsafe) static var ends = [UInt](repeating: 0, count: capacity)
  nonisolated(unsafe) static var messages = [UnsafeMutablePointer<CChar>?](
    repeating: nil, count: capacity)
  nonisolated(unsafe) static var lock = pthread_mutex_t()
  nonisolated(unsafe) static var installed = false
  nonisolated(unsafe) static var toolName = "flare"

  /// Installs the SIGBUS handler (once).
  static func install() {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    guard !installed else { return }
    installed = true
    if let first = CommandLine.arguments.first, !first.isEmpty {
      toolName = String(first.split(separator: "/").last ?? Substring(first))
    }
    _ = starts.count
    _ = ends.count
    _ = messages.count
    var action = sigaction()
    action.__sigaction_handler.sa_sigaction = handleBusError
    action.sa_flags = SA_SIGINFO
    sigemptyset(&action.sa_mask)
    sigaction(SIGBUS, &action, nil)
  }

  /// Records that `count` bytes at `base` map `path`.
  static func register(base: UnsafeRawPointer, count: Int, path: String) {
    let message = strdup(
      "\(toolName): error: \(path): io error: the file changed size while it was read (truncated by another program?); stopped, no output written\n"
    )
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    guard let slot = messages.firstIndex(where: { $0 == nil }) else {
      free(message)
      return
    }
    starts[slot] = UInt(bitPattern: base)
    ends[slot] = UInt(bitPattern: base) + UInt(count)
    messages[slot] = message
  }

  /// Forgets the mapping at `base`.
  static func unregister(base: UnsafeRawPointer) {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    let address = UInt(bitPattern: base)
    for slot in 0..<capacity where messages[slot] != nil && starts[slot] == address {
      let message = messages[slot]
      messages[slot] = nil
      starts[slot] = 0
      ends[slot] = 0
      free(message)
    }
  }
}

/// Prints which file the faulting address maps, removes the temporaries, exits 1. A bus error
/// outside every registered mapping is not an input problem: the default action is restored
/// and the faulting access runs again, so the process stops as it would have without Flare's
/// handler.
private func handleBusError(
  _ sig: Int32, _ info: UnsafeMutablePointer<siginfo_t>?, _ context: UnsafeMutableRawPointer?
) {
  var message: UnsafeMutablePointer<CChar>? = nil
  if let info {
    let address = UInt(bitPattern: info.pointee._sifields._sigfault.si_addr)
    for slot in 0..<MappedFileFaults.capacity {
      if let candidate = MappedFileFaults.messages[slot], address >= MappedFileFaults.starts[slot],
        address < MappedFileFaults.ends[slot]
      {
        message = candidate
        break
      }
    }
  }
  guard let message else {
    signal(SIGBUS, SIG_DFL)
    return
  }
  _ = write(2, message, strlen(message))
  removeRegisteredTemporaries()
  _exit(1)
}
