import FlareCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Writing to the standard streams without Foundation.
public enum Console {
  /// Writes `text` to standard output.
  public static func out(_ text: String) {
    var text = text
    text.withUTF8 { writeAll(1, UnsafeRawBufferPointer($0)) }
  }

  /// Writes `text` to standard error.
  public static func err(_ text: String) {
    var text = text
    text.withUTF8 { writeAll(2, UnsafeRawBufferPointer($0)) }
  }

  /// Whether file descriptor `fd` is a terminal.
  public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

  private static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
    guard let base = bytes.baseAddress else { return }
    var done = 0
    while done < bytes.count {
      let n = write(fd, base + done, bytes.count - done)
      if n < 0 {
        if errno == EINTR { continue }
        return
      }
      done += n
    }
  }
}

/// A progress bar on standard error, drawn only when standard error is a terminal and the
/// user did not ask for `--quiet`. Thread-safe; redraws at most ten times a second.
public final class ProgressBar: @unchecked Sendable {
  // @unchecked Sendable: all mutable state is guarded by `lock`.
  private let label: String
  private var total: Int
  private let enabled: Bool
  private var done = 0
  private var lastDraw: Double = 0
  private let started = monotonicSeconds()
  /// Show a rate in bytes per second (the units are bytes).
  public var showsByteRate = false
  private var detail = ""
  private var lock = pthread_mutex_t()

  /// A bar for `total` units of work; `enabled` is further limited to terminals.
  public init(label: String, total: Int, enabled: Bool = true) {
    self.label = label
    self.total = max(total, 1)
    self.enabled = enabled && Console.isTerminal(2)
    pthread_mutex_init(&lock, nil)
  }

  deinit { pthread_mutex_destroy(&lock) }

  /// Records `units` more units of work done.
  public func advance(by units: Int = 1) {
    guard enabled else { return }
    pthread_mutex_lock(&lock)
    done += units
    let now = monotonicSeconds()
    if now - lastDraw >= 0.1 || done >= total {
      lastDraw = now
      draw()
    }
    pthread_mutex_unlock(&lock)
  }

  /// Sets the progress to `done` of `total` units.
  public func set(done newDone: Int, of newTotal: Int) {
    guard enabled else { return }
    pthread_mutex_lock(&lock)
    done = newDone
    total = max(newTotal, 1)
    let now = monotonicSeconds()
    if now - lastDraw >= 0.1 || done >= total {
      lastDraw = now
      draw()
    }
    pthread_mutex_unlock(&lock)
  }

  /// Sets the progress and a short status shown after the bar (`step 3/10 loss 2.1 …`).
  public func set(done newDone: Int, of newTotal: Int, detail newDetail: String) {
    guard enabled else { return }
    pthread_mutex_lock(&lock)
    detail = newDetail
    pthread_mutex_unlock(&lock)
    set(done: newDone, of: newTotal)
  }

  /// Clears the bar.
  public func finish() {
    guard enabled else { return }
    Console.err("\r\u{1B}[2K")
  }

  private func draw() {
    let fraction = min(1, Double(done) / Double(total))
    let width = 30
    let filled = Int(fraction * Double(width))
    let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
    var line = "\r\u{1B}[2K\(label) [\(bar)] \(Int(fraction * 100))%"
    let elapsed = monotonicSeconds() - started
    if showsByteRate && elapsed > 0 {
      let rate = Double(done) / elapsed / 1_048_576
      line += " \(Int(rate)) MiB/s"
    }
    if !detail.isEmpty { line += " \(detail)" }
    Console.err(line)
  }
}

/// Seconds from a monotonic clock.
public func monotonicSeconds() -> Double {
  var spec = timespec()
  clock_gettime(CLOCK_MONOTONIC, &spec)
  return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}
