#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A graceful stop on Ctrl-C for long-running loops (training): the first SIGINT only sets a
/// flag the loop polls between units of work, so it can save its state and exit 130 itself; a
/// second SIGINT falls back to the handler that was installed before (``CleanupOnSignal``'s:
/// remove temporary files, exit 130 at once).
///
/// Install it after ``CleanupOnSignal/install()``. The flag lives in memory allocated at
/// installation, so the handler neither allocates nor locks.
public enum InterruptRequest {
  nonisolated(unsafe) static var flag: UnsafeMutablePointer<sig_atomic_t>?
  nonisolated(unsafe) static var previous: sighandler_t?

  /// Routes the next SIGINT to the flag (once per process; later calls re-arm it).
  public static func install() {
    if flag == nil {
      let storage = UnsafeMutablePointer<sig_atomic_t>.allocate(capacity: 1)
      storage.initialize(to: 0)
      flag = storage
    }
    flag?.pointee = 0
    let old = signal(SIGINT, onInterrupt)
    // Re-arming must not record this handler as the one to fall back to.
    if previous == nil { previous = old }
  }

  /// Whether a SIGINT arrived since ``install()``.
  public static var isRequested: Bool { (flag?.pointee ?? 0) != 0 }

  /// Sets the flag as a SIGINT would (for tests and for callers that stop for other reasons).
  public static func request() { flag?.pointee = 1 }
}

/// Records the request and restores the previous handler, so a second Ctrl-C stops at once.
private func onInterrupt(_ sig: Int32) {
  InterruptRequest.flag?.pointee = 1
  if let previous = InterruptRequest.previous {
    signal(sig, previous)
  } else {
    signal(sig, SIG_DFL)
  }
}
