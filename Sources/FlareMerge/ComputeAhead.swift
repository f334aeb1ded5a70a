import Dispatch

/// Computes the merged tensors one step ahead of the writer: while tensor *i* is being written
/// (kernel time: copying into the page cache), tensor *i+1*'s delta products, checks and
/// encoding run on another thread.
///
/// At most one tensor is computed ahead, so memory stays bounded by two merged tensors. Results
/// do not depend on the overlap: the same function runs on the same inputs either way, and the
/// block decomposition inside it is fixed. A value that is asked for out of order (or that was
/// not started) is computed in place.
final class ComputeAhead<Value>: @unchecked Sendable {
  private final class Slot: @unchecked Sendable {
    let index: Int
    let group = DispatchGroup()
    var result: Result<Value, any Error>?
    init(index: Int) { self.index = index }
  }

  private let order: [String]
  private let position: [String: Int]
  private let compute: @Sendable (String) throws -> Value
  private var pending: Slot?

  /// - Parameters:
  ///   - order: the names of the tensors to compute, in the order the writer asks for them.
  ///   - compute: the work for one tensor; it must be safe to run on another thread.
  init(order: [String], compute: @escaping @Sendable (String) throws -> Value) {
    self.order = order
    var position: [String: Int] = [:]
    for (index, name) in order.enumerated() where position[name] == nil { position[name] = index }
    self.position = position
    self.compute = compute
  }

  /// The value for `name`, waiting for it if it is being computed ahead; then starts the next
  /// name in the order in the background.
  func value(for name: String) throws -> Value {
    let result: Result<Value, any Error>
    if let slot = pending, order[slot.index] == name {
      slot.group.wait()
      pending = nil
      result = slot.result ?? .failure(CancellationError())
    } else {
      drain()
      result = Result { try compute(name) }
    }
    if let index = position[name], index + 1 < order.count, case .success = result {
      start(index + 1)
    }
    return try result.get()
  }

  private func start(_ index: Int) {
    let slot = Slot(index: index)
    let compute = self.compute
    let name = order[index]
    slot.group.enter()
    DispatchQueue.global().async {
      slot.result = Result { try compute(name) }
      slot.group.leave()
    }
    pending = slot
  }

  /// Waits for any work in flight (its result is dropped).
  func drain() {
    pending?.group.wait()
    pending = nil
  }

  deinit { drain() }
}
