import FlareCore
import FlareGGUF
import FlareSafetensors
import FlareTensor
import Synchronization

/// F32 values owned by the process (decoded, dequantized or computed at load).
final class FloatStorage: @unchecked Sendable {
  // @unchecked Sendable: written once at load, read-only afterwards.
  let buffer: UnsafeMutableBufferPointer<Float>

  init(count: Int) {
    buffer = .allocate(capacity: max(count, 1))
    buffer.initialize(repeating: 0)
  }

  convenience init(_ values: [Float]) {
    self.init(count: values.count)
    _ = buffer.initialize(from: values)
  }

  deinit { buffer.deallocate() }
}

/// Float buffers kept between the passes of one model, so a training run allocates (and the
/// kernel zero-fills) its activations once instead of every micro-batch. A pass takes a buffer
/// of at least the size it needs (the smallest cached one that fits) and gives it back when it
/// is done; a request no cached buffer fits drops the smaller ones first, so the pool holds
/// about one buffer of the largest size asked for (plus smaller ones, such as an evaluation
/// pass's). Reused buffers are not cleared: passes write every value before reading it.
final class StoragePool: Sendable {
  private let cached = Mutex<[FloatStorage]>([])

  /// A buffer of at least `count` floats.
  func take(count: Int) -> FloatStorage {
    let count = max(count, 1)
    let reused = cached.withLock { pool -> FloatStorage? in
      let fitting = pool.indices.filter { pool[$0].buffer.count >= count }
      guard let best = fitting.min(by: { pool[$0].buffer.count < pool[$1].buffer.count }) else {
        pool.removeAll { $0.buffer.count < count }
        return nil
      }
      return pool.remove(at: best)
    }
    return reused ?? FloatStorage(count: count)
  }

  /// Returns a buffer for later passes.
  func give(_ storage: FloatStorage) {
    cached.withLock { $0.append(storage) }
  }
}

/// How a model computes with the matrices of a quantized GGUF file.
public enum ComputeMode: String, Sendable, CaseIterable {
  /// Keep quantized (and F16/BF16) matrices as the file stores them, mapped, and multiply them
  /// with the quantized kernels (``QuantizedMatrix``): the memory of the file, llama.cpp's
  /// arithmetic. F32 tensors, norms and safetensors models are F32 either way.
  case quantized
  /// Dequantize every tensor to F32 once at load and compute in F32 (exact, four to eight
  /// times the memory of a quantized file).
  case f32
}

/// One model tensor in row-major order (outermost dimension first; a linear layer's weight is
/// `[out, in]` whatever the file's convention): F32 values, or, for a matrix kept quantized
/// (``ComputeMode/quantized``), the file's own rows in ``quantized`` and no F32 values.
///
/// F32 tensors stored little-endian and 4-byte aligned point straight into the memory-mapped
/// file; every other type is decoded (or dequantized) once at load into memory the weight owns,
/// unless it is kept quantized.
public struct Weight: @unchecked Sendable {
  // @unchecked Sendable: the values are never written after load; `owner` keeps them alive.
  public let name: String
  public let shape: [Int]
  /// The F32 values (empty when the weight is kept quantized).
  public let values: UnsafeBufferPointer<Float>
  /// The file's rows, for a matrix kept quantized.
  public let quantized: QuantizedMatrix?
  /// Whether the values (or quantized rows) are the mapped file's own bytes.
  public let isMapped: Bool
  let owner: AnyObject

  /// Rows of the row-major matrix view (the first dimension).
  public var rows: Int { shape.first ?? 1 }
  /// Columns of the row-major matrix view (the product of the other dimensions).
  public var cols: Int { shape.dropFirst().reduce(1, *) }
  public var count: Int { values.count }
  /// The first value (weights are never empty: shapes come from checked configs).
  public var pointer: UnsafePointer<Float> {
    // Every consumer of a matrix that may be kept quantized (Linear, the embedding lookup, the
    // training passes' products) checks `quantized` first.
    precondition(quantized == nil, "\(name) is kept quantized and has no F32 values")
    return values.baseAddress ?? UnsafePointer(Weight.empty)
  }
  nonisolated(unsafe) private static let empty = UnsafeMutablePointer<Float>.allocate(capacity: 1)

  init(
    name: String, shape: [Int], values: UnsafeBufferPointer<Float>, mapped: Bool, owner: AnyObject
  ) {
    self.name = name
    self.shape = shape
    self.values = values
    self.quantized = nil
    self.isMapped = mapped
    self.owner = owner
  }

  /// A matrix kept in the file's quantized rows.
  init(name: String, shape: [Int], quantized: QuantizedMatrix, owner: AnyObject) {
    self.name = name
    self.shape = shape
    self.values = UnsafeBufferPointer(start: nil, count: 0)
    self.quantized = quantized
    self.isMapped = true
    self.owner = owner
  }

  /// Row `row` of the matrix view as F32 into `out` (`cols` values), from the F32 values or by
  /// dequantizing the quantized row.
  public func copyRow(_ row: Int, into out: UnsafeMutablePointer<Float>) {
    if let quantized {
      quantized.dequantize(row: row, into: out)
    } else {
      out.update(from: pointer + row * cols, count: cols)
    }
  }

  /// A weight that owns `values` (used for tensors computed at load and in tests).
  public init(name: String, shape: [Int], values: [Float]) {
    let storage = FloatStorage(values)
    self.init(
      name: name, shape: shape, values: UnsafeBufferPointer(storage.buffer), mapped: false,
      owner: storage)
  }
}

/// The tensors of a model: an HF folder (`config.json` and `.safetensors` files, sharded or
/// not), a single `.safetensors` file, or a GGUF file.
public final class WeightSource: @unchecked Sendable {
  // @unchecked Sendable: immutable after init.
  enum Backing {
    case safetensors(SafetensorsModel)
    case gguf(GGUFFile)
  }

  /// The path given (folder or file).
  public let path: String
  /// The folder holding `config.json` and tokenizer files, for folder inputs.
  public let folder: String?
  let backing: Backing

  /// Opens `path`: a `.gguf` file, a `.safetensors` file or shard index, or a folder with
  /// `model.safetensors` or `model.safetensors.index.json`.
  /// - Throws: ``FlareError`` if nothing loadable is found or a file is malformed.
  public init(path: String) throws {
    self.path = path
    if path.hasSuffix(".gguf") {
      backing = .gguf(try GGUFFile(path: path))
      folder = nil
      return
    }
    if isDirectory(path) {
      folder = path
      for name in ["model.safetensors.index.json", "model.safetensors"]
      where fileExists("\(path)/\(name)") {
        backing = .safetensors(try SafetensorsModel.open("\(path)/\(name)"))
        return
      }
      let ggufs = folderEntries(path).filter { $0.hasSuffix(".gguf") }.sorted()
      if ggufs.count == 1, let only = ggufs.first {
        backing = .gguf(try GGUFFile(path: "\(path)/\(only)"))
        return
      }
      throw FlareError(
        "model", .invalidArgument,
        "no model.safetensors, model.safetensors.index.json or single .gguf file in the folder",
        path: path)
    }
    folder = nil
    backing = .safetensors(try SafetensorsModel.open(path))
  }

  /// The folder whose `config.json` and tokenizer files go with the tensors (for a single
  /// `.safetensors` file, its folder).
  public var configFolder: String { folder ?? AtomicFileWriter.parentFolder(of: path) }

  /// The parsed `config.json` of an HF model.
  /// - Throws: ``FlareError`` if it is missing or not JSON.
  public func config() throws -> JSONValue {
    let configPath = "\(configFolder)/config.json"
    guard fileExists(configPath) else {
      throw FlareError(
        "model", .invalidArgument, "not a model: no config.json next to the weights", path: path)
    }
    return try JSONParser.parse(file: configPath, domain: "config")
  }

  /// The model family: a GGUF's `general.architecture`, or `model_type` of `config.json`
  /// (`llama`, `bert`, `xlm-roberta`, …).
  public func architecture() throws -> String {
    if let gguf { return gguf.value("general.architecture")?.stringValue ?? "unknown" }
    return try config()["model_type"]?.stringValue ?? "unknown"
  }

  /// The GGUF file, for GGUF inputs.
  public var gguf: GGUFFile? {
    if case .gguf(let file) = backing { return file }
    return nil
  }

  /// Every tensor's name and shape (row-major, outermost first; GGUF dimensions reversed).
  public var tensorShapes: [(name: String, shape: [Int])] {
    switch backing {
    case .safetensors(let model): model.tensors.map { ($0.name, $0.shape) }
    case .gguf(let file): file.tensors.map { ($0.name, Array($0.dims.reversed())) }
    }
  }

  /// Whether a tensor of this name exists.
  public func contains(_ name: String) -> Bool {
    switch backing {
    case .safetensors(let model): model.view(name) != nil
    case .gguf(let file): file.tensor(name) != nil
    }
  }

  /// The tensor `name`, checked to have `shape` (row-major) when given: as F32, or, with
  /// `compute` `.quantized`, a GGUF matrix whose type the quantized kernels run (and whose rows
  /// are whole blocks) kept as the file's rows.
  /// - Throws: ``FlareError`` naming the file and tensor if it is missing, has another shape,
  ///   or has a type Flare cannot decode.
  public func weight(
    _ name: String, shape expected: [Int]? = nil, compute: ComputeMode = .f32
  ) throws -> Weight {
    switch backing {
    case .safetensors(let model):
      guard let view = model.view(name) else {
        throw FlareError("model", .tensorNotFound, "is missing", path: path, tensor: name)
      }
      try check(view.shape, expected, name: name, file: view.file.path)
      guard view.dtype != .bool else {
        throw FlareError(
          "model", .unsupported, "\(view.dtype) cannot be used as model weights",
          path: view.file.path, tensor: name)
      }
      let count = view.info.elementCount
      if view.dtype == .f32 && view.isAligned && UInt32(littleEndian: 1) == 1,
        let base = view.rawBytes.baseAddress
      {
        let pointer = base.assumingMemoryBound(to: Float.self)
        return Weight(
          name: name, shape: view.shape, values: UnsafeBufferPointer(start: pointer, count: count),
          mapped: true, owner: view.file)
      }
      let storage = FloatStorage(count: count * view.dtype.floatsPerElement)
      view.decode(elements: 0..<count, into: storage.buffer)
      return Weight(
        name: name, shape: view.shape, values: UnsafeBufferPointer(storage.buffer), mapped: false,
        owner: storage)
    case .gguf(let file):
      guard let tensor = file.tensor(name) else {
        throw FlareError("model", .tensorNotFound, "is missing", path: path, tensor: name)
      }
      let shape = Array(tensor.dims.reversed())
      try check(shape, expected, name: name, file: file.path)
      let count = tensor.elementCount
      let raw = file.bytes(of: tensor)
      if compute == .quantized, shape.count == 2, tensor.type != .f32,
        let format = QuantizedMatrix.Format(rawValue: Int32(tensor.type.id)),
        shape[1] % format.blockSize == 0
      {
        let matrix = try QuantizedMatrix(
          format: format, rows: shape[0], cols: shape[1], bytes: raw, owner: file, name: name)
        return Weight(name: name, shape: shape, quantized: matrix, owner: file)
      }
      if tensor.type == .f32 && UInt32(littleEndian: 1) == 1, let base = raw.baseAddress,
        Int(bitPattern: base) % 4 == 0
      {
        let pointer = base.assumingMemoryBound(to: Float.self)
        return Weight(
          name: name, shape: shape, values: UnsafeBufferPointer(start: pointer, count: count),
          mapped: true, owner: file)
      }
      guard tensor.type.canDequantize else {
        throw FlareError(
          "model", .unsupported, "\(tensor.type.name) cannot be dequantized by Flare",
          path: file.path, tensor: name)
      }
      let storage = FloatStorage(count: count)
      try tensor.type.dequantizeParallel(raw, count: count, into: storage.buffer)
      return Weight(
        name: name, shape: shape, values: UnsafeBufferPointer(storage.buffer), mapped: false,
        owner: storage)
    }
  }

  private func check(_ shape: [Int], _ expected: [Int]?, name: String, file: String) throws {
    guard let expected, shape != expected else { return }
    throw FlareError(
      "model", .invalidArgument,
      "tensor has shape \(shape), the model's config needs \(expected)", path: file, tensor: name)
  }
}
