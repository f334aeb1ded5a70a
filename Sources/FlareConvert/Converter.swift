import FlareArchitectures
import FlareCore
import FlareGGUF
import FlareSafetensors

/// The output type asked for with `--outtype`.
public enum OutputType: String, CaseIterable, Sendable {
  case auto, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k

  /// The ggml type for 2-D tensors, or `nil` for `auto`.
  var ggmlType: GGMLType? {
    switch self {
    case .auto: nil
    case .f32: .f32
    case .f16: .f16
    case .bf16: .bf16
    case .q8_0: .q8_0
    case .q4_0: .q4_0
    case .q4_1: .q4_1
    case .q5_0: .q5_0
    case .q5_1: .q5_1
    case .q4_k: .q4_K
    case .q5_k: .q5_K
    case .q6_k: .q6_K
    }
  }

  /// `general.file_type` (llama.cpp's `LlamaFileType`) for a file mostly of `type`.
  static func fileType(_ type: GGMLType) -> UInt32 {
    switch type.id {
    case 0: 0
    case 1: 1
    case 2: 2
    case 3: 3
    case 8: 7
    case 6: 8
    case 7: 9
    case 12: 14  // MOSTLY_Q4_K_S: every tensor Q4_K (the _M mixes use other types for some)
    case 13: 16  // MOSTLY_Q5_K_S
    case 14: 18
    case 30: 32
    default: 1024  // GUESSED
    }
  }
}

/// What a conversion did, for the summary line and `--json`.
public struct ConversionReport: Sendable {
  public var output: String
  public var files: [String] = []
  public var tensors = 0
  public var types: [String: Int] = [:]
  public var notes: [String] = []
  public var bytes = 0
}

/// Conversions between HF Llama folders and GGUF, streamed tensor by tensor.
public enum Converter {
  /// Receives per-tensor progress.
  public typealias Progress = @Sendable (Int, Int) -> Void

  // MARK: GGUF → HF

  /// Writes an HF folder (`config.json`, `model.safetensors`, `tokenizer.json`,
  /// `tokenizer_config.json`, `generation_config.json`) from a llama GGUF file: tensors
  /// dequantized (F32, or F16/BF16 with `outtype`), renamed, Q/K rows un-permuted.
  public static func ggufToHF(
    _ file: GGUFFile, folder: String, outtype: OutputType, overwrite: Bool,
    progress: Progress? = nil
  ) throws -> ConversionReport {
    let config = try DecoderConfig(gguf: file)
    try config.checkTensors(config.hfShapes(of: file), complete: true)
    let family = config.family
    let tokenizer = try hfTokenizerFiles(gguf: file, gemma: family.sentencePieceInFileOrder)
    let dtype: DType
    switch outtype {
    case .auto, .f32: dtype = .f32
    case .f16: dtype = .f16
    case .bf16: dtype = .bf16
    default:
      throw FlareError(
        "convert", .invalidArgument,
        "an HF folder holds f32, f16 or bf16; '\(outtype.rawValue)' is not possible")
    }
    var pairs: [(hf: String, tensor: GGUFTensorInfo)] = []
    for tensor in file.tensors {
      guard let name = family.hfName(gguf: tensor.name) else {
        throw FlareError(
          "convert", .unsupported, "is not part of the \(family) layout", path: file.path,
          tensor: tensor.name)
      }
      guard tensor.type.canDequantize else {
        throw FlareError(
          "convert", .unsupported, "type \(tensor.type.name) cannot be dequantized",
          path: file.path, tensor: tensor.name)
      }
      pairs.append((name, tensor))
    }
    pairs.sort { hfOrder($0.hf, family) < hfOrder($1.hf, family) }
    let specs = pairs.map {
      TensorSpec(name: $0.hf, dtype: dtype, shape: $0.tensor.dims.reversed())
    }
    let otherFiles = tokenizer.hfOtherFiles()
    let names =
      [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "generation_config.json",
      ] + otherFiles.map(\.name)
    let destinations = names.map { "\(folder)/\($0)" }
    if !overwrite {
      for path in destinations where fileExists(path) {
        throw FlareError(
          "io", .outputExists, "output already exists (use --force to overwrite)", path: path)
      }
    }
    // Everything is written into a temporary sibling folder and moved into place at the end,
    // so a failure leaves nothing at the destination.
    let stage = try StagedFolder(for: folder)
    let staging = stage.path
    let byName = Dictionary(uniqueKeysWithValues: pairs.map { ($0.hf, $0.tensor) })
    var done = 0
    try SafetensorsWriter.write(
      to: "\(staging)/model.safetensors", tensors: specs,
      options: .init(metadata: [("format", "pt")])
    ) {
      sink in
      guard let tensor = byName[sink.spec.name] else { return }
      var values = try file.floats(tensor, releasing: true)
      if family.shiftsNorm(hf: sink.spec.name) {
        // Gemma: the GGUF holds 1 + w, the HF checkpoint w.
        for i in values.indices { values[i] -= 1 }
      }
      if let heads = family.ropeHeads(
        gguf: tensor.name, heads: config.headCount, kvHeads: config.headCountKV)
      {
        let rows = tensor.dims.count > 1 ? tensor.dims[1...].reduce(1, *) : tensor.dims[0]
        values = try permute(values, rows: rows, heads: heads, toGGUF: false, tensor: tensor.name)
      }
      try values.withUnsafeBufferPointer { try sink.write(floats: $0) }
      done += 1
      progress?(done, specs.count)
    }
    let dtypeName = dtype == .f32 ? "float32" : dtype == .f16 ? "float16" : "bfloat16"
    try writeJSON(config.hfConfig(dtype: dtypeName), to: "\(staging)/config.json", overwrite: false)
    try writeJSON(tokenizer.hfTokenizerJSON(), to: "\(staging)/tokenizer.json", overwrite: false)
    try writeJSON(
      tokenizer.hfTokenizerConfig(contextLength: config.contextLength),
      to: "\(staging)/tokenizer_config.json", overwrite: false)
    var generation: [(String, JSONValue)] = []
    if let bos = config.bosTokenID { generation.append(("bos_token_id", .integer(bos))) }
    if let eos = config.eosTokenID { generation.append(("eos_token_id", .integer(eos))) }
    if let pad = config.padTokenID { generation.append(("pad_token_id", .integer(pad))) }
    try writeJSON(.object(generation), to: "\(staging)/generation_config.json", overwrite: false)
    for file in otherFiles {
      try writeFileAtomically(file.bytes, to: "\(staging)/\(file.name)", overwrite: false)
    }
    try stage.publish(files: names)
    var report = ConversionReport(output: folder)
    report.files = destinations
    report.tensors = specs.count
    report.types = [dtype.rawValue: specs.count]
    report.bytes = specs.reduce(0) { $0 + ($1.byteCount ?? 0) }
    if config.tieWordEmbeddings {
      report.notes.append("no output.weight: tie_word_embeddings is true")
    }
    return report
  }

  // MARK: HF → GGUF

  /// Writes a GGUF from an HF folder of a family in ``ModelFamily``: the family's metadata,
  /// tokenizer metadata, tensors renamed, Q/K rows permuted for RoPE where llama.cpp does
  /// (Llama), 1-D tensors F32, others `outtype` (`auto`: the source's 16- or
  /// 32-bit float type, lossless).
  public static func hfToGGUF(
    folder: String, output: String, outtype: OutputType, tokenizerPre: String?, overwrite: Bool,
    pure: Bool = false, progress: Progress? = nil
  ) throws -> ConversionReport {
    let configPath = "\(folder)/config.json"
    let configJSON = try readJSON(configPath)
    let config = try DecoderConfig(hfConfig: configJSON, path: configPath)
    let family = config.family
    var report = ConversionReport(output: output)
    let tokenizerKeys: [GGUFKeyValue]
    let sentencePiecePath = "\(folder)/tokenizer.model"
    if fileExists(sentencePiecePath) {
      // llama.cpp's converter takes a SentencePiece model whenever the folder has one (and for
      // Gemma 2 needs one; Flare reads a byte-level tokenizer.json for it as for the others).
      if let tokenizerPre {
        report.notes.append(
          "--tokenizer-pre \(tokenizerPre) is ignored: the vocabulary is SentencePiece's (tokenizer.model), whose pre-tokenizer is 'default'"
        )
      }
      let vocabulary = try SentencePieceVocabulary(
        folder: folder, vocabSize: config.vocabSize, family: family, modelConfig: configJSON)
      report.notes += vocabulary.notes
      tokenizerKeys = vocabulary.ggufKeys()
    } else {
      let tokenizerPath = "\(folder)/tokenizer.json"
      let tokenizerConfigPath = "\(folder)/tokenizer_config.json"
      let tokenizerConfig =
        fileExists(tokenizerConfigPath) ? try readJSON(tokenizerConfigPath) : nil
      var tokenizer = try BPETokenizer(
        tokenizerJSON: try readJSON(tokenizerPath), config: tokenizerConfig,
        vocabSize: config.vocabSize,
        preOverride: tokenizerPre, path: tokenizerPath)
      if tokenizer.bosID == nil { tokenizer.bosID = config.bosTokenID }
      if tokenizer.eosID == nil { tokenizer.eosID = config.eosTokenID }
      tokenizerKeys = try tokenizer.ggufKeys()
    }
    let model = try SafetensorsModel.open(folder)
    // The rows of Q and K are permuted per head below: the shapes must be the config's.
    try config.checkTensors(model.tensors.map { ($0.name, $0.shape) }, complete: true)
    var entries: [(view: TensorView, spec: GGUFTensorSpec, heads: Int?, shift: Bool)] = []
    var sourceTypes = Set<DType>()
    for view in model.tensors {
      if view.name.hasSuffix("rotary_emb.inv_freq") { continue }  // derived, not a weight
      if view.name == "lm_head.weight" && config.tieWordEmbeddings { continue }
      guard let name = family.ggufName(hf: view.name) else {
        throw FlareError(
          "convert", .unsupported, "is not part of the \(family) layout", path: view.file.path,
          tensor: view.name)
      }
      guard view.dtype.isFloatingPoint, view.dtype != .c64, view.shape.count <= 4 else {
        throw FlareError(
          "convert", .unsupported, "\(view.dtype.rawValue) tensors cannot be converted",
          path: view.file.path, tensor: view.name)
      }
      sourceTypes.insert(view.dtype)
      let dims = Array(view.shape.reversed())
      var type: GGMLType = .f32
      if dims.count > 1 {
        type = tensorType(
          name: name, rowLength: dims.first ?? 0, target: outtype.ggmlType ?? autoType(view.dtype),
          tiedHead: config.tieWordEmbeddings, pure: pure, notes: &report.notes)
      }
      let heads = family.ropeHeads(
        gguf: name, heads: config.headCount, kvHeads: config.headCountKV)
      entries.append(
        (
          view, GGUFTensorSpec(name: name, dims: dims, type: type), heads,
          family.shiftsNorm(hf: view.name)
        ))
    }
    let mainType =
      outtype.ggmlType ?? autoType(sourceTypes.count == 1 ? sourceTypes.first ?? .f32 : .f32)
    var metadata = [
      GGUFKeyValue(key: "general.architecture", value: .string(family.name)),
      GGUFKeyValue(key: "general.type", value: .string("model")),
      GGUFKeyValue(key: "general.name", value: .string(AtomicFileWriter.baseName(of: folder))),
    ]
    let familyKeys = try config.ggufKeys(fileType: OutputType.fileType(mainType))
    metadata += familyKeys.beforeFileType
    metadata.append(
      GGUFKeyValue(key: "general.file_type", value: .uint32(OutputType.fileType(mainType))))
    metadata += familyKeys.afterFileType
    metadata += tokenizerKeys
    metadata.append(GGUFKeyValue(key: "general.quantization_version", value: .uint32(2)))
    var done = 0
    let byName = Dictionary(uniqueKeysWithValues: entries.map { ($0.spec.name, $0) })
    try GGUFWriter.write(
      to: output, metadata: metadata, tensors: entries.map(\.spec), overwrite: overwrite
    ) { sink in
      guard let entry = byName[sink.spec.name] else { return }
      let view = entry.view
      let rows =
        entry.spec.dims.count > 1 ? entry.spec.dims[1...].reduce(1, *) : entry.spec.dims.first ?? 1
      let sameType =
        (view.dtype == .f32 && entry.spec.type == .f32)
        || (view.dtype == .f16 && entry.spec.type == .f16)
        || (view.dtype == .bf16 && entry.spec.type == .bf16)
      if sameType && !entry.shift {
        // Lossless: copy the bytes, permuting whole rows where RoPE needs it.
        if let heads = entry.heads {
          var permuted = [UInt8](repeating: 0, count: view.info.byteCount)
          permuted.withUnsafeMutableBytes {
            LlamaLayout.permuteRows(
              view.rawBytes, into: $0, rows: rows, rowBytes: view.info.byteCount / max(rows, 1),
              heads: heads, toGGUF: true)
          }
          try permuted.withUnsafeBytes { try sink.write($0) }
        } else {
          try sink.write(view.rawBytes)
        }
      } else {
        var values = view.floats()
        if entry.shift {
          // Gemma: llama.cpp's converter stores the norm as applied, 1 + w.
          for i in values.indices { values[i] += 1 }
        }
        if let heads = entry.heads {
          values = try permute(values, rows: rows, heads: heads, toGGUF: true, tensor: view.name)
        }
        try values.withUnsafeBufferPointer { try sink.write(floats: $0) }
      }
      done += 1
      progress?(done, entries.count)
    }
    report.files = [output]
    report.tensors = entries.count
    for entry in entries { report.types[entry.spec.type.name, default: 0] += 1 }
    report.bytes = entries.reduce(0) { $0 + ($1.spec.byteCount ?? 0) }
    return report
  }

  // MARK: GGUF → GGUF

  /// Re-encodes a GGUF file's tensors as `outtype` (1-D tensors stay F32), keeping its
  /// metadata, with `general.file_type` updated.
  public static func requantize(
    _ file: GGUFFile, output: String, outtype: OutputType, overwrite: Bool, pure: Bool = false,
    progress: Progress? = nil
  ) throws -> ConversionReport {
    guard let target = outtype.ggmlType else {
      throw FlareError("convert", .invalidArgument, "GGUF to GGUF needs an explicit --outtype")
    }
    var report = ConversionReport(output: output)
    let tiedHead = file.tensor("output.weight") == nil
    let specs = file.tensors.map { tensor -> GGUFTensorSpec in
      var type: GGMLType = .f32
      if tensor.dims.count > 1 {
        type = tensorType(
          name: tensor.name, rowLength: tensor.dims.first ?? 0, target: target, tiedHead: tiedHead,
          pure: pure,
          notes: &report.notes)
      }
      return GGUFTensorSpec(name: tensor.name, dims: tensor.dims, type: type)
    }
    var metadata = file.metadata
    if let index = metadata.firstIndex(where: { $0.key == "general.file_type" }) {
      metadata[index].value = .uint32(OutputType.fileType(target))
    }
    // A pre-tokenizer name llama.cpp refuses (`gpt2`, as earlier Flare versions wrote it) is
    // written under the name llama.cpp knows; every other value is kept as it is.
    if let index = metadata.firstIndex(where: { $0.key == "tokenizer.ggml.pre" }),
      let name = metadata[index].value.stringValue, let canonical = BPETokenizer.preAliases[name]
    {
      metadata[index].value = .string(canonical)
      report.notes.append("tokenizer.ggml.pre '\(name)' written as '\(canonical)'")
    }
    var done = 0
    try GGUFWriter.write(
      to: output, metadata: metadata, tensors: specs, alignment: file.alignment,
      overwrite: overwrite
    ) { sink in
      guard let tensor = file.tensor(sink.spec.name) else { return }
      if tensor.type == sink.spec.type {
        try sink.write(file.bytes(of: tensor))
      } else {
        guard tensor.type.canDequantize else {
          throw FlareError(
            "convert", .unsupported, "type \(tensor.type.name) cannot be dequantized",
            path: file.path, tensor: tensor.name)
        }
        let values = try file.floats(tensor, releasing: true)
        try values.withUnsafeBufferPointer { try sink.write(floats: $0) }
      }
      done += 1
      progress?(done, specs.count)
    }
    report.files = [output]
    report.tensors = specs.count
    for spec in specs { report.types[spec.type.name, default: 0] += 1 }
    report.bytes = specs.reduce(0) { $0 + ($1.byteCount ?? 0) }
    return report
  }

  // MARK: Helpers

  /// The ggml type a 2-D tensor gets for `target`, following llama.cpp's quantizer unless
  /// `pure`: the output head (`output.weight`, or `token_embd.weight` when the head is tied to
  /// it) gets Q6_K when `target` is a quantized type other than Q8_0; a row that is not a whole
  /// number of blocks falls back as llama.cpp does (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0),
  /// else to F16.
  static func tensorType(
    name: String, rowLength: Int, target: GGMLType, tiedHead: Bool, pure: Bool,
    notes: inout [String]
  ) -> GGMLType {
    var type = target
    let isHead = name == "output.weight" || (tiedHead && name == "token_embd.weight")
    if !pure && isHead && target.isQuantized && target != .q8_0 { type = .q6_K }
    if rowLength % type.blockSize != 0 {
      let fallback: GGMLType =
        switch type.id {
        case 12: .q5_0
        case 13: .q5_1
        case 14: .q8_0
        default: .f16
        }
      let chosen = rowLength % fallback.blockSize == 0 ? fallback : .f16
      notes.append(
        "\(name): row length \(rowLength) is not a multiple of \(type.blockSize); written as \(chosen.name)"
      )
      type = chosen
    } else if type != target {
      notes.append(
        "\(name): the output head is written as \(type.name), as llama.cpp does (--pure to keep \(target.name))"
      )
    }
    return type
  }

  static func autoType(_ dtype: DType) -> GGMLType {
    switch dtype {
    case .f16: .f16
    case .bf16: .bf16
    default: .f32
    }
  }

  /// Sort key putting HF tensors in the usual order: embeddings, layers by index (parts in the
  /// family's order, a bias after its weight), norm, head.
  static func hfOrder(_ name: String, _ family: ModelFamily) -> (Int, Int, Int, String) {
    if name.hasPrefix("model.embed_tokens") { return (0, 0, 0, name) }
    if name.hasPrefix("model.layers.") {
      let rest = name.dropFirst("model.layers.".count)
      let layer = Int(rest.prefix { $0.isNumber }) ?? 0
      let parts = family.blockParts.map(\.hf)
      let part = parts.firstIndex { rest.contains(".\($0).") } ?? parts.count
      return (1, layer, part, name)
    }
    if name.hasPrefix("model.norm") { return (2, 0, 0, name) }
    return (3, 0, 0, name)
  }

  static func permute(_ values: [Float], rows: Int, heads: Int, toGGUF: Bool, tensor: String) throws
    -> [Float]
  {
    guard heads > 0, rows % heads == 0, (rows / heads) % 2 == 0, rows > 0, values.count % rows == 0
    else {
      throw FlareError(
        "convert", .invalidArgument, "\(rows) rows do not split into \(heads) heads of even size",
        tensor: tensor)
    }
    return LlamaLayout.permuted(values, rows: rows, heads: heads, toGGUF: toGGUF)
  }

  static func readJSON(_ path: String) throws -> JSONValue {
    try JSONParser.parse(file: path, domain: "convert", limit: 512 << 20)
  }

  static func writeJSON(_ value: JSONValue, to path: String, overwrite: Bool) throws {
    try writeFileAtomically(
      Array((JSONWriter.pretty(value) + "\n").utf8), to: path, overwrite: overwrite)
  }
}

#if canImport(Glibc)
  import Glibc
#endif
