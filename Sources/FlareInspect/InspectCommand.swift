import FlareAdapters
import FlareCLI
import FlareCore
import FlareSafetensors

/// `flare-inspect`: lists, validates, summarises and compares model files.
public enum InspectCommand {
  public static let spec = CommandSpec(
    name: "flare-inspect",
    overview: "List, check, summarise and compare safetensors and GGUF models and PEFT adapters.",
    positionals: [
      PositionalSpec(
        "path",
        help:
          "A .safetensors file, a shard index (*.index.json), an HF model folder, or a PEFT adapter folder.",
        variadic: true, optional: true)
    ],
    options: [
      OptionSpec("--json", help: "Print one JSON object per input, one per line."),
      OptionSpec("--check", help: "Validate every rule and print a verdict line per input."),
      OptionSpec("--data", help: "With --check: also scan every value for NaN and Inf."),
      OptionSpec("--stats", help: "Print per-tensor min, max, mean, std, NaN and Inf counts."),
      OptionSpec(
        "--diff", value: "path", arity: 2,
        help: "Compare two models tensor by tensor (the first is the reference)."),
      OptionSpec(
        "--tolerance", value: "tolerance", default: "0",
        help: "With --diff: the largest absolute difference that still counts as equal."),
      OptionSpec("--no-tensors", help: "GGUF: list only the metadata, as gguf-dump --no-tensors."),
      OptionSpec(
        "--json-array", help: "GGUF with --json: include array values, as gguf-dump --json-array."),
      OptionSpec("--quiet", short: "-q", help: "Print only verdicts and errors; no progress bar."),
    ],
    discussion: """
      EXIT STATUS:
        0 on success, 1 if a file is invalid, a check or diff finds a problem, or I/O fails,
        64 on a usage error.
      """)

  struct Options {
    var json = false
    var check = false
    var data = false
    var stats = false
    var quiet = false
    var noTensors = false
    var jsonArray = false
    var diff: (String, String)?
    var tolerance = 0.0
    var paths: [String] = []
  }

  /// Runs the command on parsed arguments, writing to stdout and stderr.
  public static func run(_ arguments: ParsedArguments) throws -> ExitStatus {
    var options = Options()
    options.json = arguments.flag("--json")
    options.check = arguments.flag("--check")
    options.data = arguments.flag("--data")
    options.stats = arguments.flag("--stats")
    options.quiet = arguments.flag("--quiet")
    options.noTensors = arguments.flag("--no-tensors")
    options.jsonArray = arguments.flag("--json-array")
    if options.jsonArray && !options.json { throw UsageError("'--json-array' needs '--json'") }
    options.paths = arguments.positionals
    let diffPaths = arguments.allValues("--diff")
    if diffPaths.count > 2 { throw UsageError("'--diff <path> <path>' can be given only once") }
    if diffPaths.count == 2 { options.diff = (diffPaths[0], diffPaths[1]) }
    if let tolerance = try arguments.double("--tolerance", spec: spec) {
      guard options.diff != nil else { throw UsageError("'--tolerance' needs '--diff'") }
      guard tolerance >= 0 else {
        throw UsageError("the value '\(tolerance)' is invalid for '--tolerance <tolerance>'")
      }
      options.tolerance = tolerance
    }
    if options.data && !options.check { throw UsageError("'--data' needs '--check'") }
    if let diff = options.diff {
      guard options.paths.isEmpty else {
        throw UsageError(
          "'--diff' takes exactly two paths; unexpected argument '\(options.paths[0])'")
      }
      guard !options.check, !options.stats else {
        throw UsageError("'--diff' cannot be combined with '--check' or '--stats'")
      }
      return try runDiff(diff.0, diff.1, options: options)
    }
    guard !options.paths.isEmpty else { throw UsageError("missing expected argument '<path>'") }
    var status = ExitStatus.success
    for path in options.paths {
      if inspect(path, options: options) != .success { status = .failure }
    }
    return status
  }

  // MARK: - One input

  static func inspect(_ path: String, options: Options) -> ExitStatus {
    if InspectInput.isGGUF(path) { return inspectGGUF(path, options: options) }
    let input: InspectInput
    do {
      input = try InspectInput.open(path)
    } catch {
      let flare = (error as? FlareError) ?? FlareError("io", .ioError, "\(error)", path: path)
      report(failure: flare.inFile(path), path: path, options: options)
      return .failure
    }
    var status = ExitStatus.success
    var document = options.json ? listingJSON(input) : []
    var text: [String] = []
    if options.check {
      let (lines, json, ok) = check(input, options: options)
      text += lines
      document.append(("check", json))
      if !ok { status = .failure }
    } else if !options.json && !options.stats {
      text += listingText(input)
    }
    if options.stats {
      let stats = computeStats(input, options: options)
      if options.json {
        document = attachStats(document, stats: stats)
      } else {
        text += statsText(input, stats: stats)
      }
    }
    if options.json {
      Console.out(JSONWriter.compact(.object(document)) + "\n")
    } else if !text.isEmpty {
      Console.out(text.joined(separator: "\n") + "\n")
    }
    return status
  }

  static func report(failure error: FlareError, path: String, options: Options) {
    if options.json {
      var fields: [(String, JSONValue)] = [
        ("code", .string(error.code.name)), ("message", .string(error.message)),
      ]
      fields.append(("file", error.path.map { .string($0) } ?? .null))
      fields.append(("tensor", error.tensor.map { .string($0) } ?? .null))
      fields.append(("key", error.key.map { .string($0) } ?? .null))
      fields.append(("offset", error.offset.map { .integer($0) } ?? .null))
      var document: [(String, JSONValue)] = [("path", .string(path))]
      if options.check { document.append(("check", .object([("ok", .bool(false))]))) }
      document.append(("error", .object(fields)))
      Console.out(JSONWriter.compact(.object(document)) + "\n")
    } else if options.check {
      Console.out("\(path): FAILED: \(error)\n")
    }
    Console.err("flare-inspect: error: \(error)\n")
  }

  // MARK: - Listing

  static func adapterLines(_ adapter: PEFTConfig) -> [String] {
    var lines: [String] = []
    let scale = Format.number(adapter.scaling)
    lines.append(
      "adapter: PEFT \(adapter.peftType), r=\(adapter.r), lora_alpha=\(Format.number(adapter.loraAlpha)), scaling \(adapter.scalingRule) = \(scale)"
    )
    switch adapter.targetModules {
    case .list(let names): lines.append("  target modules: \(names.joined(separator: ", "))")
    case .regex(let pattern): lines.append("  target modules (regex, full match): \(pattern)")
    case .none: lines.append("  target modules: none given")
    }
    for (pattern, rank) in adapter.rankPattern {
      let alpha = adapter.alphaPattern.first { $0.pattern == pattern }?.alpha ?? adapter.loraAlpha
      let s = PEFTConfig.scaling(alpha: alpha, r: rank, rslora: adapter.useRslora)
      lines.append("  rank_pattern: \(pattern) -> r=\(rank), scaling \(Format.number(s))")
    }
    for (pattern, alpha) in adapter.alphaPattern
    where !adapter.rankPattern.contains(where: { $0.pattern == pattern }) {
      let s = PEFTConfig.scaling(alpha: alpha, r: adapter.r, rslora: adapter.useRslora)
      lines.append(
        "  alpha_pattern: \(pattern) -> lora_alpha=\(Format.number(alpha)), scaling \(Format.number(s))"
      )
    }
    var flags: [String] = []
    if adapter.useDora { flags.append("DoRA") }
    if adapter.fanInFanOut { flags.append("fan_in_fan_out") }
    if adapter.bias != "none" { flags.append("bias=\(adapter.bias)") }
    if adapter.initLoraWeights != "true" && adapter.initLoraWeights != "false" {
      flags.append("init_lora_weights=\(adapter.initLoraWeights)")
    }
    if !flags.isEmpty { lines.append("  options: \(flags.joined(separator: ", "))") }
    if !adapter.modulesToSave.isEmpty {
      lines.append("  modules_to_save: \(adapter.modulesToSave.joined(separator: ", "))")
    }
    if let base = adapter.baseModel { lines.append("  base model: \(base)") }
    if let task = adapter.taskType { lines.append("  task type: \(task)") }
    return lines
  }

  static func listingText(_ input: InspectInput) -> [String] {
    let model = input.model
    var lines: [String] = []
    let fileSize = model.files.reduce(0) { $0 + $1.fileSize }
    if model.isSharded {
      lines.append("\(input.path): safetensors, \(model.files.count) shards, \(fileSize) bytes")
    } else if let file = model.files.first {
      lines.append(
        "\(input.path): safetensors, \(file.fileSize) bytes, header 8 + \(file.header.headerLength) bytes, data at \(file.header.dataStart)"
      )
    }
    if let adapter = input.adapter { lines += adapterLines(adapter) }
    let metadata = model.files.first?.metadata
    if let metadata {
      lines.append("metadata:")
      for (key, value) in metadata {
        lines.append("  \(key.escapedForMessage) = \(value.escapedForMessage)")
      }
    } else {
      lines.append("metadata: none")
    }
    if let indexMetadata = model.indexMetadata {
      lines.append("index metadata:")
      for (key, value) in indexMetadata {
        lines.append("  \(key.escapedForMessage) = \(JSONWriter.compact(value))")
      }
    }
    var rows: [[String]] = [["#", "name", "dtype", "shape", "data offsets", "bytes"]]
    var lastFile: String?
    var parameters = 0
    var unaligned = 0
    var tableLines: [String] = []
    func flush() {
      tableLines += Format.table(rows, rightAligned: [0, 5])
      rows = []
    }
    for (i, view) in model.tensors.enumerated() {
      if model.isSharded && view.file.path != lastFile {
        flush()
        lastFile = view.file.path
        tableLines.append("shard \(AtomicFileWriter.baseName(of: view.file.path)):")
        rows = [["#", "name", "dtype", "shape", "data offsets", "bytes"]]
      }
      let mark = view.isAligned ? "" : " *"
      if !view.isAligned { unaligned += 1 }
      parameters += view.info.elementCount
      rows.append([
        String(i), view.name.escapedForMessage, view.dtype.rawValue, Format.shape(view.shape),
        "[\(view.info.dataOffsets.lowerBound), \(view.info.dataOffsets.upperBound))",
        String(view.info.byteCount) + mark,
      ])
    }
    flush()
    lines.append("tensors:")
    lines += tableLines
    let bytes = model.totalBytes
    lines.append(
      "total: \(model.tensors.count) tensors, \(parameters) parameters, \(bytes) bytes (\(Format.bytes(bytes)))"
    )
    if unaligned > 0 {
      lines.append(
        "note: \(unaligned) tensors (marked *) are not aligned for their dtype and are read by copying"
      )
    }
    for warning in model.warnings { lines.append("warning: \(warning)") }
    return lines
  }

  static func listingJSON(_ input: InspectInput) -> [(String, JSONValue)] {
    let model = input.model
    var document: [(String, JSONValue)] = [
      ("format", .string("safetensors")), ("path", .string(input.path)),
      ("kind", .string(input.kind.rawValue)),
    ]
    if let metadata = model.files.first?.metadata {
      document.append(("metadata", .object(metadata.map { ($0.key, .string($0.value)) })))
    } else {
      document.append(("metadata", .null))
    }
    if let indexMetadata = model.indexMetadata {
      document.append(("index_metadata", .object(indexMetadata)))
    }
    if let adapter = input.adapter { document.append(("adapter", adapterJSON(adapter))) }
    if let file = model.files.first, !model.isSharded {
      document.append(("header_length", .integer(file.header.headerLength)))
      document.append(("file_size", .integer(file.fileSize)))
    }
    var tensors: [JSONValue] = []
    for view in model.tensors {
      var entry: [(String, JSONValue)] = [
        ("name", .string(view.name)), ("dtype", .string(view.dtype.rawValue)),
        ("shape", .array(view.shape.map { .integer($0) })),
        (
          "data_offsets",
          .array([
            .integer(view.info.dataOffsets.lowerBound), .integer(view.info.dataOffsets.upperBound),
          ])
        ),
      ]
      if model.isSharded {
        entry.append(("file", .string(AtomicFileWriter.baseName(of: view.file.path))))
      }
      if !view.isAligned { entry.append(("aligned", .bool(false))) }
      tensors.append(.object(entry))
    }
    document.append(("tensors", .array(tensors)))
    let parameters = model.tensors.reduce(0) { $0 + $1.info.elementCount }
    document.append(
      (
        "totals",
        .object([
          ("tensors", .integer(model.tensors.count)), ("parameters", .integer(parameters)),
          ("bytes", .integer(model.totalBytes)),
        ])
      ))
    if !model.warnings.isEmpty {
      document.append(("warnings", .array(model.warnings.map { .string($0) })))
    }
    return document
  }

  static func adapterJSON(_ adapter: PEFTConfig) -> JSONValue {
    let targets: JSONValue =
      switch adapter.targetModules {
      case .list(let names): .array(names.map { .string($0) })
      case .regex(let pattern): .string(pattern)
      case .none: .null
      }
    return .object([
      ("peft_type", .string(adapter.peftType)), ("r", .integer(adapter.r)),
      ("lora_alpha", .exact(adapter.loraAlpha)), ("use_rslora", .bool(adapter.useRslora)),
      ("scaling_rule", .string(adapter.scalingRule)), ("scaling", .exact(adapter.scaling)),
      ("target_modules", targets),
      ("rank_pattern", .object(adapter.rankPattern.map { ($0.pattern, .integer($0.rank)) })),
      ("alpha_pattern", .object(adapter.alphaPattern.map { ($0.pattern, .exact($0.alpha)) })),
      ("use_dora", .bool(adapter.useDora)), ("fan_in_fan_out", .bool(adapter.fanInFanOut)),
      ("bias", .string(adapter.bias)),
      ("modules_to_save", .array(adapter.modulesToSave.map { .string($0) })),
      ("base_model_name_or_path", adapter.baseModel.map { .string($0) } ?? .null),
      ("task_type", adapter.taskType.map { .string($0) } ?? .null),
    ])
  }

  // MARK: - Check

  static func check(_ input: InspectInput, options: Options) -> (
    lines: [String], json: JSONValue, ok: Bool
  ) {
    let model = input.model
    var lines: [String] = []
    var ok = true
    let unaligned = model.tensors.filter { !$0.isAligned }.map(\.name)
    var summary =
      "\(input.path): OK: safetensors \(input.kind.rawValue), \(model.tensors.count) tensors in \(model.files.count) file\(model.files.count == 1 ? "" : "s"); header, offsets, sizes and coverage valid"
    var dataJSON: JSONValue = .null
    var problems: [String] = []
    if options.data {
      let tensors = model.tensors.filter { $0.dtype.isFloatingPoint }
      let stats = computeStats(tensors.map(\.decodable), label: "scanning", options: options)
      var bad: [JSONValue] = []
      for (view, stat) in zip(tensors, stats) where stat.nanCount > 0 || stat.infCount > 0 {
        problems.append(
          "tensor '\(view.name.escapedForMessage)' has \(stat.nanCount) NaN and \(stat.infCount) Inf values"
        )
        bad.append(
          .object([
            ("name", .string(view.name)), ("nan", .integer(stat.nanCount)),
            ("inf", .integer(stat.infCount)),
          ]))
      }
      dataJSON = .object([
        ("scanned_tensors", .integer(tensors.count)), ("non_finite", .array(bad)),
      ])
      if bad.isEmpty {
        summary += "; no NaN or Inf in \(tensors.count) float tensors"
      } else {
        ok = false
      }
    }
    if ok {
      lines.append(summary)
    } else {
      lines.append("\(input.path): FAILED: \(problems.count) tensors hold NaN or Inf values")
      lines += problems.map { "  \($0)" }
    }
    if !unaligned.isEmpty {
      lines.append(
        "  note: \(unaligned.count) tensors are not aligned for their dtype (read by copying)")
    }
    for warning in model.warnings { lines.append("  warning: \(warning)") }
    let json = JSONValue.object([
      ("ok", .bool(ok)), ("unaligned", .array(unaligned.map { .string($0) })),
      ("warnings", .array(model.warnings.map { .string($0) })), ("data", dataJSON),
    ])
    return (lines, json, ok)
  }

  // MARK: - Statistics

  static func computeStats(_ input: InspectInput, options: Options) -> [TensorStatistics] {
    computeStats(input.decodables, label: "stats", options: options)
  }

  static func computeStats(_ tensors: [DecodableTensor], label: String, options: Options)
    -> [TensorStatistics]
  {
    let total = tensors.reduce(0) { $0 + $1.valueCount }
    let bar = ProgressBar(label: label, total: total, enabled: !options.quiet && total > 50_000_000)
    defer { bar.finish() }
    return TensorStatistics.compute(tensors, progress: bar)
  }

  static func statsJSON(_ stats: TensorStatistics) -> JSONValue {
    .object([
      ("count", .integer(stats.count)), ("finite", .integer(stats.finite)),
      ("min", .float(stats.min)),
      ("max", .float(stats.max)), ("mean", .exact(stats.mean)), ("std", .exact(stats.std)),
      ("nan", .integer(stats.nanCount)), ("inf", .integer(stats.infCount)),
    ])
  }

  static func attachStats(_ document: [(String, JSONValue)], stats: [TensorStatistics]) -> [(
    String, JSONValue
  )] {
    document.map { key, value in
      guard key == "tensors", let tensors = value.arrayValue else { return (key, value) }
      let merged = zip(tensors, stats).map { tensor, stat -> JSONValue in
        .object((tensor.objectMembers ?? []) + [("stats", statsJSON(stat))])
      }
      return (key, .array(merged))
    }
  }

  static func statsText(_ input: InspectInput, stats: [TensorStatistics]) -> [String] {
    var rows: [[String]] = [["#", "name", "dtype", "min", "max", "mean", "std", "nan", "inf"]]
    for (i, (view, stat)) in zip(input.model.tensors, stats).enumerated() {
      rows.append([
        String(i), view.name.escapedForMessage, view.dtype.rawValue,
        Format.number(stat.min.map(Double.init)),
        Format.number(stat.max.map(Double.init)), Format.number(stat.mean), Format.number(stat.std),
        String(stat.nanCount), String(stat.infCount),
      ])
    }
    return ["\(input.path): statistics of \(stats.count) tensors (finite values; std with ddof=0)"]
      + Format.table(rows, rightAligned: [0, 3, 4, 5, 6, 7, 8])
  }
}
