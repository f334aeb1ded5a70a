import Dispatch
import Foundation
import Synchronization
import Testing

@testable import FlareModels

/// The passes' worker pool: every index of a loop runs exactly once, index `i` on worker
/// `i % workers`, loops inside loops and loops started from several threads at once (which
/// fall back to `concurrentPerform`) complete, and a loop follows another after the helpers
/// went to sleep.
@Suite("WorkerPool: persistent helper threads of Parallel.forEach")
struct WorkerPoolTests {
  /// Runs one loop recording, per index, how often it ran and on which thread.
  static func loop(count: Int, workers: Int) -> (runs: [Int], threads: [UInt]) {
    var runs = [Int](repeating: 0, count: count)
    var threads = [UInt](repeating: 0, count: count)
    runs.withUnsafeMutableBufferPointer { runs in
      threads.withUnsafeMutableBufferPointer { threads in
        nonisolated(unsafe) let (r, t) = (runs.baseAddress!, threads.baseAddress!)
        Parallel.forEach(count, workers: workers) { i in
          r[i] += 1
          t[i] = UInt(pthread_self())
        }
      }
    }
    return (runs, threads)
  }

  @Test("each index once, index i on worker i % workers, over many loop shapes")
  func shapes() {
    for (count, workers) in [(1, 4), (2, 2), (7, 3), (64, 2), (5, 8), (1000, 4), (3, 1), (0, 2)] {
      for _ in 0..<200 {
        let (runs, threads) = Self.loop(count: count, workers: workers)
        #expect(runs.allSatisfy { $0 == 1 }, "count \(count), workers \(workers)")
        let used = max(1, min(workers, count))
        for i in 0..<count where i >= used {
          #expect(threads[i] == threads[i % used], "index \(i) left worker \(i % used)")
        }
      }
    }
  }

  @Test("a loop inside a loop's body and loops from several threads at once complete")
  func nestedAndConcurrent() {
    let total = Mutex(0)
    DispatchQueue.concurrentPerform(iterations: 4) { _ in
      for _ in 0..<50 {
        var sums = [Int](repeating: 0, count: 6)
        sums.withUnsafeMutableBufferPointer { sums in
          nonisolated(unsafe) let s = sums.baseAddress!
          Parallel.forEach(6, workers: 3) { i in
            var inner = [Int](repeating: 0, count: 10)
            inner.withUnsafeMutableBufferPointer { inner in
              nonisolated(unsafe) let p = inner.baseAddress!
              Parallel.forEach(10, workers: 2) { j in p[j] = i * 10 + j }
            }
            s[i] = inner.reduce(0, +)
          }
        }
        total.withLock { $0 += sums.reduce(0, +) }
      }
    }
    // Σ over i < 6, j < 10 of 10i + j = 10·10·15 + 6·45, per loop; 4 threads × 50 loops.
    #expect(total.withLock { $0 } == 200 * (1500 + 270))
  }

  @Test("a loop after the helpers have gone to sleep")
  func afterSleep() throws {
    _ = Self.loop(count: 4, workers: 2)
    Thread.sleep(forTimeInterval: Double(WorkerPool.spinNanoseconds) * 5e-9)
    let (runs, _) = Self.loop(count: 4, workers: 2)
    #expect(runs == [1, 1, 1, 1])
  }
}
