import Dispatch
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Persistent worker threads for the training passes' parallel loops (``Parallel/forEach(_:workers:_:)``).
///
/// A training step runs about a thousand short parallel loops (one per row-wise operation and
/// linear layer). With `DispatchQueue.concurrentPerform` each loop put its helper thread to
/// sleep and woke it again, and on a virtual machine a sleeping virtual CPU can take from
/// microseconds to milliseconds to wake: a SmolLM2 step made 1,500 such context switches and
/// its time varied by 30 % between runs of the same binary. Like OpenMP's and OpenBLAS's
/// threads, these helpers wait for the next loop by polling (yielding the CPU between polls)
/// for up to ``spinNanoseconds`` before they block.
///
/// One loop runs at a time; a loop started while another runs (another model training on
/// another thread, or a loop inside a loop's body) runs on `concurrentPerform` instead.
/// Index `i` of a loop always runs on worker `i % workers` (the caller is worker 0), as with
/// `concurrentPerform` in ``Parallel/forEach(_:workers:_:)`` before: which thread runs an
/// index never changes a result.
final class WorkerPool: @unchecked Sendable {
  // @unchecked Sendable: `body`, `count`, `workers` and `helpers` are written only by the
  // caller that holds `busy`, before it publishes them through `generation` (release) and
  // after every helper has reported back through `pending` (acquire).
  static let shared = WorkerPool()

  /// How long an idle helper polls for the next loop before it blocks.
  static let spinNanoseconds: UInt64 = 1_000_000
  /// The most helper threads the pool starts.
  static let maxHelpers = 63

  private let busy = Atomic<Bool>(false)
  private let generation = Atomic<Int>(0)
  private let pending = Atomic<Int>(0)
  private var body: ((Int) -> Void)?
  private var count = 0
  private var workers = 0
  private var helpers = 0
  private let mutex: UnsafeMutablePointer<pthread_mutex_t>
  private let condition: UnsafeMutablePointer<pthread_cond_t>
  /// Helpers blocked on `condition` (under `mutex`).
  private var sleepers = 0

  private init() {
    mutex = .allocate(capacity: 1)
    condition = .allocate(capacity: 1)
    pthread_mutex_init(mutex, nil)
    pthread_cond_init(condition, nil)
  }

  /// Runs `body(i)` for `i` in `0..<count` on `workers` threads (index `i` on worker
  /// `i % workers`, the calling thread being worker 0) and returns when all have run.
  func run(_ count: Int, workers: Int, _ body: (Int) -> Void) {
    let workers = max(1, min(workers, count, Self.maxHelpers + 1))
    guard workers > 1 else {
      for i in 0..<count { body(i) }
      return
    }
    guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
    else {
      withoutActuallyEscaping(body) { body in
        nonisolated(unsafe) let body = body
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
          for i in stride(from: worker, to: count, by: workers) { body(i) }
        }
      }
      return
    }
    defer { busy.store(false, ordering: .releasing) }
    while helpers < workers - 1 { startHelper(index: helpers + 1) }
    withoutActuallyEscaping(body) { body in
      self.body = body
      self.count = count
      self.workers = workers
      // Every helper reports back, also those this loop does not use, so none can read the
      // next loop's fields while still handling this one.
      pending.store(helpers, ordering: .relaxed)
      generation.add(1, ordering: .releasing)
      pthread_mutex_lock(mutex)
      if sleepers > 0 { pthread_cond_broadcast(condition) }
      pthread_mutex_unlock(mutex)
      for i in stride(from: 0, to: count, by: workers) { body(i) }
      while pending.load(ordering: .acquiring) > 0 { sched_yield() }
      self.body = nil
    }
  }

  private func startHelper(index: Int) {
    helpers += 1
    // The helper waits for the generation after the current one (a helper that read the
    // counter itself could miss the loop about to be published).
    let context = Unmanaged.passRetained(
      HelperContext(pool: self, index: index, seen: generation.load(ordering: .relaxed))
    ).toOpaque()
    var thread = pthread_t()
    let started = pthread_create(
      &thread, nil,
      { context in
        let helper = Unmanaged<HelperContext>.fromOpaque(context!).takeRetainedValue()
        helper.pool.helperLoop(index: helper.index, seen: helper.seen)
      }, context)
    precondition(started == 0, "cannot start a worker thread (pthread_create: \(started))")
    pthread_detach(thread)
  }

  private final class HelperContext {
    let pool: WorkerPool
    let index: Int
    let seen: Int
    init(pool: WorkerPool, index: Int, seen: Int) {
      self.pool = pool
      self.index = index
      self.seen = seen
    }
  }

  private func helperLoop(index: Int, seen: Int) -> Never {
    var seen = seen
    while true {
      seen = waitForLoop(after: seen)
      // Published before `generation` moved on; the caller waits for this helper before it
      // changes them again.
      let (count, workers) = (self.count, self.workers)
      if index < workers, let body {
        for i in stride(from: index, to: count, by: workers) { body(i) }
      }
      pending.subtract(1, ordering: .releasing)
    }
  }

  /// The generation after `seen`, polled for ``spinNanoseconds`` and then waited for.
  private func waitForLoop(after seen: Int) -> Int {
    let start = Self.nanoseconds()
    var polls = 0
    while true {
      let now = generation.load(ordering: .acquiring)
      if now != seen { return now }
      polls += 1
      if polls % 16 == 0, Self.nanoseconds() - start > Self.spinNanoseconds { break }
      sched_yield()
    }
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    while generation.load(ordering: .acquiring) == seen {
      sleepers += 1
      pthread_cond_wait(condition, mutex)
      sleepers -= 1
    }
    return generation.load(ordering: .acquiring)
  }

  private static func nanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
  }
}
