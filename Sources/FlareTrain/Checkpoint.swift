import FlareAdapters
import FlareCore
import FlareSafetensors

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Checkpoint folders of a run: `<output>/checkpoint-<step>/` with a loadable PEFT adapter
/// (`adapter_config.json`, `adapter_model.safetensors`), AdamW's moments
/// (`optimizer.safetensors`), `trainer_state.json` (step, data position, seed, the run's
/// settings, the log so far) and `training_log.jsonl`. Each folder is staged beside its
/// destination and renamed into place whole, so a checkpoint is either complete or absent;
/// older checkpoints are removed only after the new one is in place. The layout is described
/// in `formats/training.md`.
public enum CheckpointStore {
  public static let stateFile = "trainer_state.json"
  public static let optimizerFile = "optimizer.safetensors"
  public static let logFile = "training_log.jsonl"
  static let formatName = "flare-train checkpoint"
  static let formatVersion = 1

  /// `checkpoint-<step>`.
  public static func folderName(step: Int) -> String { "checkpoint-\(step)" }

  /// Writes a checkpoint into `output` and removes the run's older checkpoints.
  /// - Parameters:
  ///   - checkpoint: The state.
  ///   - output: The run's output folder (must exist).
  ///   - adapterConfig: The adapter's PEFT config.
  ///   - settings: The run's settings; a resume must present the same ones.
  ///   - plan: The run's data plan (for the recorded data position).
  /// - Returns: The checkpoint folder.
  @discardableResult
  public static func write(
    _ checkpoint: TrainerCheckpoint, into output: String, adapterConfig: PEFTLoRAConfig,
    settings: JSONValue, plan: TrainingPlan
  ) throws -> String {
    let name = folderName(step: checkpoint.step)
    let destination = "\(output)/\(name)"
    if fileExists(destination) { removeFlatFolder(destination) }
    let staging = try StagedFolder(for: destination)
    try PEFTWriter.writeFiles(
      into: staging.path, config: adapterConfig, tensors: checkpoint.parameters)
    var moments: [PEFTTensor] = []
    for (i, parameter) in checkpoint.parameters.enumerated() {
      moments.append(
        PEFTTensor(
          name: "\(parameter.name).exp_avg", shape: parameter.shape,
          values: checkpoint.firstMoments[i]))
      moments.append(
        PEFTTensor(
          name: "\(parameter.name).exp_avg_sq", shape: parameter.shape,
          values: checkpoint.secondMoments[i]))
    }
    try PEFTWriter.writeTensors(moments, to: "\(staging.path)/\(optimizerFile)")
    let state = stateJSON(checkpoint, settings: settings, plan: plan)
    try writeFileAtomically(
      Array((JSONWriter.pretty(state) + "\n").utf8), to: "\(staging.path)/\(stateFile)")
    try writeFileAtomically(logBytes(checkpoint.log), to: "\(staging.path)/\(logFile)")
    let files = PEFTWriter.fileNames + [optimizerFile, stateFile, logFile]
    try staging.publish(files: files)
    for old in checkpoints(in: output) where old.step != checkpoint.step {
      removeFlatFolder(old.path)
    }
    return destination
  }

  /// The `training_log.jsonl` bytes of `entries`.
  public static func logBytes(_ entries: [TrainingLogEntry]) -> [UInt8] {
    Array(entries.map { JSONWriter.compact($0.json) + "\n" }.joined().utf8)
  }

  static func stateJSON(_ checkpoint: TrainerCheckpoint, settings: JSONValue, plan: TrainingPlan)
    -> JSONValue
  {
    let step = checkpoint.step
    let epoch = step / plan.stepsPerEpoch
    let stepInEpoch = step % plan.stepsPerEpoch
    return .object([
      ("format", .string(formatName)), ("version", .integer(formatVersion)),
      ("step", .integer(step)), ("epoch", .exact(Double(step) / Double(plan.stepsPerEpoch))),
      (
        "data_position",
        .object([
          ("epoch", .integer(epoch)), ("step_in_epoch", .integer(stepInEpoch)),
          (
            "next_micro_batch",
            .integer(min(stepInEpoch * plan.gradientAccumulation, plan.microBatchesPerEpoch))
          ),
          ("examples", .integer(plan.exampleCount)),
          ("micro_batches_per_epoch", .integer(plan.microBatchesPerEpoch)),
          ("steps_per_epoch", .integer(plan.stepsPerEpoch)),
          ("total_steps", .integer(plan.totalSteps)),
        ])
      ),
      (
        "rng",
        .object([
          ("generator", .string("splitmix64")), ("seed", .integer(plan.seed)),
          ("shuffle_stream", .integer(Streams.shuffle)),
          ("dropout_stream", .integer(Streams.dropout)),
        ])
      ),
      ("parameters", .array(checkpoint.parameters.map { .string($0.name) })),
      ("settings", settings),
    ])
  }

  /// The checkpoint folders in `folder`, by step.
  public static func checkpoints(in folder: String) -> [(step: Int, path: String)] {
    folderEntries(folder).compactMap { name -> (Int, String)? in
      guard name.hasPrefix("checkpoint-"), let step = Int(name.dropFirst("checkpoint-".count)),
        fileExists("\(folder)/\(name)/\(stateFile)")
      else { return nil }
      return (step, "\(folder)/\(name)")
    }.sorted { $0.0 < $1.0 }
  }

  /// A checkpoint folder, or the newest checkpoint inside a run's output folder.
  /// - Throws: ``FlareError`` `.fileNotFound` when there is none.
  public static func locate(_ path: String) throws -> String {
    if fileExists("\(path)/\(stateFile)") { return path }
    guard let newest = checkpoints(in: path).last else {
      throw FlareError(
        "train", .fileNotFound,
        "no checkpoint here (a checkpoint folder has \(stateFile); an output folder has checkpoint-<step> folders)",
        path: path)
    }
    return newest.path
  }

  /// Reads a checkpoint folder.
  /// - Returns: The state and the settings it was saved with.
  /// - Throws: ``FlareError`` for a missing or malformed file.
  public static func read(_ folder: String) throws -> (
    checkpoint: TrainerCheckpoint, settings: JSONValue
  ) {
    let statePath = "\(folder)/\(stateFile)"
    func bad(_ message: String) -> FlareError {
      FlareError("train", .invalidArgument, message, path: statePath)
    }
    let state = try JSONParser.parse(file: statePath, domain: "train")
    guard state["format"]?.stringValue == formatName else {
      throw bad("not a flare-train checkpoint (no \"format\": \"\(formatName)\")")
    }
    guard state["version"]?.intValue == formatVersion else {
      throw bad(
        "checkpoint version \(state["version"].map(JSONWriter.compact) ?? "?") is not \(formatVersion)"
      )
    }
    guard let step = state["step"]?.intValue, step >= 0,
      let names = state["parameters"]?.arrayValue?.compactMap(\.stringValue),
      let settings = state["settings"]
    else { throw bad("'step', 'parameters' or 'settings' is missing") }
    let adapter = try SafetensorsFile(path: "\(folder)/adapter_model.safetensors")
    let optimizer = try SafetensorsFile(path: "\(folder)/\(optimizerFile)")
    func view(_ file: SafetensorsFile, _ name: String) throws -> TensorView {
      guard let view = file.views.first(where: { $0.name == name }), view.dtype == .f32 else {
        throw FlareError(
          "train", .invalidArgument, "missing or not F32", path: file.path, tensor: name)
      }
      return view
    }
    var parameters: [PEFTTensor] = []
    var first: [[Float]] = []
    var second: [[Float]] = []
    for name in names {
      let values = try view(adapter, name)
      parameters.append(PEFTTensor(name: name, shape: values.shape, values: values.floats()))
      first.append(try view(optimizer, "\(name).exp_avg").floats())
      second.append(try view(optimizer, "\(name).exp_avg_sq").floats())
    }
    let logPath = "\(folder)/\(logFile)"
    var log: [TrainingLogEntry] = []
    let text = try readSmallFile(logPath, limit: 1 << 30)
    for (index, line) in text.split(separator: UInt8(ascii: "\n")).enumerated() {
      guard let json = try? JSONParser.parse(Array(line)), let entry = TrainingLogEntry(json: json)
      else {
        throw FlareError(
          "train", .invalidArgument, "line \(index + 1) is not a log entry", path: logPath)
      }
      log.append(entry)
    }
    return (
      TrainerCheckpoint(
        step: step, parameters: parameters, firstMoments: first, secondMoments: second, log: log),
      settings
    )
  }

  /// The settings whose values differ between a checkpoint and the run resuming it.
  public static func differences(saved: JSONValue, current: JSONValue) -> [String] {
    let a = saved.objectMembers ?? []
    let b = current.objectMembers ?? []
    var keys = a.map(\.0)
    for (key, _) in b where !keys.contains(key) { keys.append(key) }
    return keys.filter { key in saved[key] != current[key] }
  }

  /// Removes a folder of plain files (checkpoints hold no subfolders).
  static func removeFlatFolder(_ path: String) {
    discardFolder(path)
  }
}
