import FlareCore

/// The tensors of a safetensors model: one file, or the shards named by an index
/// (`model.safetensors.index.json`).
public final class SafetensorsModel: @unchecked Sendable {
  // @unchecked Sendable: immutable after init.
  /// The index path for a sharded model, else the single file's path.
  public let path: String
  /// The files, in the order their tensors are listed (shard order).
  public let files: [SafetensorsFile]
  /// `metadata` of the index (e.g. `total_size`), for sharded models.
  public let indexMetadata: [(String, JSONValue)]?
  /// Every tensor, shard by shard, each shard in file order.
  public let tensors: [TensorView]
  /// Problems that do not stop reading (e.g. a `total_size` that disagrees with the shards).
  public let warnings: [String]
  private let byName: [String: Int]

  /// Whether the model came from a shard index.
  public var isSharded: Bool { indexMetadata != nil }

  /// Opens one `.safetensors` file.
  public init(file path: String) throws(FlareError) {
    let file = try SafetensorsFile(path: path)
    self.path = path
    files = [file]
    indexMetadata = nil
    tensors = file.views
    warnings = []
    byName = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
  }

  /// Opens a sharded model through its index file.
  ///
  /// The index must be a JSON object with a `weight_map` object (tensor name → shard file name
  /// in the index's folder) and optionally a `metadata` object. Every shard is opened and
  /// validated; every tensor of the map must be in its shard, and every tensor of a shard in
  /// the map.
  /// - Throws: ``FlareError`` `.invalidIndex`, `.duplicateKey`, or any error of a shard.
  public init(index indexPath: String) throws(FlareError) {
    path = indexPath
    let bytes: [UInt8]
    do {
      bytes = try readSmallFile(indexPath, limit: 512 << 20)
    } catch let error as FlareError {
      throw error
    } catch {
      throw FlareError("io", .ioError, "\(error)", path: indexPath)
    }
    func bad(_ message: String, tensor: String? = nil) -> FlareError {
      FlareError("safetensors", .invalidIndex, message, path: indexPath, tensor: tensor)
    }
    let json: JSONValue
    do {
      json = try JSONParser.parse(bytes)
    } catch {
      throw FlareError(
        "safetensors", .invalidJSON, "index is not valid JSON: \(error.message)", path: indexPath,
        offset: error.offset)
    }
    guard let top = json.objectMembers else { throw bad("index is not a JSON object") }
    var weightMap: [(String, String)] = []
    var metadata: [(String, JSONValue)] = []
    for (key, value) in top {
      switch key {
      case "weight_map":
        guard let members = value.objectMembers else { throw bad("'weight_map' is not an object") }
        var seen = Set<String>()
        for (tensor, file) in members {
          guard seen.insert(tensor).inserted else {
            throw FlareError(
              "safetensors", .duplicateKey, "appears twice in 'weight_map'", path: indexPath,
              tensor: tensor)
          }
          guard let name = file.stringValue else {
            throw bad("shard name is not a string", tensor: tensor)
          }
          guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw bad(
              "shard name '\(name.escapedForMessage)' is not a plain file name", tensor: tensor)
          }
          weightMap.append((tensor, name))
        }
      case "metadata":
        guard let members = value.objectMembers else { throw bad("'metadata' is not an object") }
        metadata = members
      default: break  // other keys are informational
      }
    }
    guard top.contains(where: { $0.0 == "weight_map" }) else {
      throw bad("index has no 'weight_map'")
    }
    let folder = AtomicFileWriter.parentFolder(of: indexPath)
    var shardNames: [String] = []
    for (_, name) in weightMap where !shardNames.contains(name) { shardNames.append(name) }
    shardNames.sort()
    var files: [SafetensorsFile] = []
    for name in shardNames { files.append(try SafetensorsFile(path: "\(folder)/\(name)")) }
    var expected: [String: String] = [:]
    for (tensor, name) in weightMap { expected[tensor] = name }
    var views: [TensorView] = []
    var owner: [String: String] = [:]
    for (file, name) in zip(files, shardNames) {
      for view in file.views {
        if let other = owner[view.name] {
          throw FlareError(
            "safetensors", .duplicateKey, "is stored in both '\(other)' and '\(name)'",
            path: indexPath,
            tensor: view.name)
        }
        owner[view.name] = name
        guard let mapped = expected[view.name] else {
          throw bad("is in shard '\(name)' but not in 'weight_map'", tensor: view.name)
        }
        guard mapped == name else {
          throw bad("is in shard '\(name)' but 'weight_map' says '\(mapped)'", tensor: view.name)
        }
        views.append(view)
      }
    }
    for (tensor, name) in weightMap where owner[tensor] == nil {
      throw bad("is mapped to '\(name)' but that shard does not hold it", tensor: tensor)
    }
    var warnings: [String] = []
    let totalBytes = views.reduce(0) { $0 + $1.info.byteCount }
    if let declared = metadata.last(where: { $0.0 == "total_size" })?.1 {
      if let value = declared.uint64Value ?? declared.doubleValue.flatMap({ UInt64(exactly: $0) }) {
        if value != UInt64(totalBytes) {
          warnings.append(
            "index metadata total_size is \(value) but the tensors hold \(totalBytes) bytes")
        }
      } else {
        warnings.append("index metadata total_size is not a non-negative integer")
      }
    }
    self.files = files
    self.indexMetadata = metadata
    self.tensors = views
    self.warnings = warnings
    byName = Dictionary(uniqueKeysWithValues: views.enumerated().map { ($1.name, $0) })
  }

  /// Opens a `.safetensors` file, a shard index (`*.json`), or a model folder holding
  /// `model.safetensors.index.json` or `model.safetensors`.
  public static func open(_ path: String) throws(FlareError) -> SafetensorsModel {
    if isDirectory(path) {
      let index = "\(path)/model.safetensors.index.json"
      if fileExists(index) { return try SafetensorsModel(index: index) }
      let single = "\(path)/model.safetensors"
      if fileExists(single) { return try SafetensorsModel(file: single) }
      throw FlareError(
        "safetensors", .fileNotFound,
        "folder has neither model.safetensors.index.json nor model.safetensors",
        path: path)
    }
    if path.hasSuffix(".json") { return try SafetensorsModel(index: path) }
    return try SafetensorsModel(file: path)
  }

  /// The tensor named `name`, or `nil`.
  public func view(_ name: String) -> TensorView? { byName[name].map { tensors[$0] } }

  /// Total bytes of tensor data.
  public var totalBytes: Int { tensors.reduce(0) { $0 + $1.info.byteCount } }
}

extension SafetensorsWriter {
  /// The shard file name for shard `index` (1-based) of `count`, e.g. `model-00001-of-00003.safetensors`.
  public static func shardName(_ index: Int, of count: Int, base: String = "model") -> String {
    func five(_ n: Int) -> String {
      let digits = String(n)
      return String(repeating: "0", count: max(0, 5 - digits.count)) + digits
    }
    return "\(base)-\(five(index))-of-\(five(count)).safetensors"
  }

  /// Splits tensors into shards of at most `maxShardBytes` bytes of data each (a tensor larger
  /// than that gets a shard of its own), keeping order.
  public static func planShards(_ specs: [TensorSpec], maxShardBytes: Int) -> [[Int]] {
    var shards: [[Int]] = []
    var current: [Int] = []
    var size = 0
    for (i, spec) in specs.enumerated() {
      let bytes = spec.byteCount ?? 0
      if !current.isEmpty && size + bytes > maxShardBytes {
        shards.append(current)
        current = []
        size = 0
      }
      current.append(i)
      size += bytes
    }
    if !current.isEmpty || shards.isEmpty { shards.append(current) }
    return shards
  }

  /// Writes a model into `folder` as shards of at most `maxShardBytes` bytes of tensor data:
  /// `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`
  /// (`{"metadata": {"total_size": …}, "weight_map": {…}}`, keys sorted, indented by 2); a model
  /// that fits in one shard is written as a plain `model.safetensors` without an index.
  ///
  /// All files are written to temporary files first and renamed into place only when every one
  /// is complete, so a failure leaves nothing at the destination.
  /// - Returns: The paths written, the index last.
  @discardableResult
  public static func writeSharded(
    folder: String, tensors specs: [TensorSpec], maxShardBytes: Int,
    options: SafetensorsWriteOptions = .init(), base: String = "model",
    body: (TensorSink) throws -> Void
  ) throws -> [String] {
    guard maxShardBytes > 0 else {
      throw FlareError("safetensors", .invalidArgument, "shard size must be positive")
    }
    let plan = planShards(specs, maxShardBytes: maxShardBytes)
    let single = plan.count == 1
    let names =
      single
      ? ["\(base).safetensors"] : plan.indices.map { shardName($0 + 1, of: plan.count, base: base) }
    let indexPath = "\(folder)/\(base).safetensors.index.json"
    var destinations = names.map { "\(folder)/\($0)" }
    if !single { destinations.append(indexPath) }
    if !options.overwrite {
      for path in destinations where fileExists(path) {
        throw FlareError(
          "io", .outputExists, "output already exists (use --force to overwrite)", path: path)
      }
    }
    var staged: [AtomicFileWriter] = []
    do {
      var weightMap: [(String, JSONValue)] = []
      var total = 0
      for (shard, name) in zip(plan, names) {
        let shardSpecs = shard.map { specs[$0] }
        let order = layoutOrder(shardSpecs, alignment: options.alignment).map { shardSpecs[$0] }
        let (header, ranges) = try header(
          for: order, metadata: options.metadata, alignment: options.alignment ?? 8)
        let path = "\(folder)/\(name)"
        let writer = try AtomicFileWriter(destination: path, overwrite: true)
        staged.append(writer)
        try writer.write(header)
        try streamTensors(order, ranges: ranges, into: writer, body: body)
        for (spec, range) in zip(order, ranges) {
          weightMap.append((spec.name, .string(name)))
          total += range.count
        }
        try writer.finish()
      }
      if !single {
        weightMap.sort { $0.0 < $1.0 }
        let index = JSONValue.object([
          ("metadata", .object([("total_size", .integer(total))])),
          ("weight_map", .object(weightMap)),
        ])
        let writer = try AtomicFileWriter(destination: indexPath, overwrite: true)
        staged.append(writer)
        try writer.write(Array((JSONWriter.pretty(index) + "\n").utf8))
        try writer.finish()
      }
      for writer in staged { try writer.publish() }
    } catch {
      for writer in staged { writer.abandon() }
      throw error
    }
    return destinations
  }
}
