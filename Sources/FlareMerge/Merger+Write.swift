import FlareAdapters
import FlareArchitectures
import FlareCore
import FlareGGUF
import FlareSafetensors
import FlareTensor

#if canImport(Glibc)
  import Glibc
#endif

/// What a merge wrote.
public struct MergeReport: Sendable {
  public struct Tensor: Sendable {
    public var name: String
    public var kind: String
    public var outputType: String
    /// (adapter path, scale applied = weight × scaling, rank).
    public var sources: [(String, Double, Int)]
    public var maxChange: Float
  }

  public var output: String
  public var files: [String] = []
  public var tensors: [Tensor] = []
  public var untouched = 0
  public var bytes = 0
  public var notes: [String] = []
}

extension Merger {
  /// Merges `adapters` into `base` and writes the result to `output`: a `.safetensors` file for
  /// a single-file base, a folder (same shards, config and tokenizer files copied) for a folder
  /// base, a `.gguf` file for a GGUF base. Untouched tensors are copied byte for byte; merged
  /// ones are rounded once to their output type. Nothing is left at `output` on failure.
  public static func merge(
    base: Base, basePath: String, adapters: [WeightedAdapter], plan: MergePlan, output: String,
    outtype: String?,
    overwrite: Bool, threads: Int, progress: (@Sendable (Int, Int) -> Void)? = nil
  ) throws -> MergeReport {
    // OpenBLAS single-threaded (each call's summation order fixed; the work is split into
    // fixed blocks here), restored on return.
    BLAS.beginSingleThreaded()
    defer { BLAS.endSingleThreaded() }
    var report = MergeReport(output: output)
    report.untouched = plan.untouched
    report.notes = plan.notes
    let changes = Dictionary(uniqueKeysWithValues: plan.changes.map { ($0.tensor, $0) })
    nonisolated(unsafe) var done = 0
    // Progress is measured in bytes of source tensor data (a byte rate is shown).
    let total: Int
    switch base {
    case .safetensors(let model, _): total = model.totalBytes
    case .gguf(let file): total = file.tensors.reduce(0) { $0 + $1.byteCount }
    }
    var summaries: [String: MergeReport.Tensor] = [:]

    @Sendable func summary(_ change: TensorChange, base: UnsafeRawBufferPointer, merged: [Float])
      throws -> MergeReport.Tensor
    {
      // One pass: the finite check (nothing is published if it fails) and the largest change.
      let (maxChange, finite) = changeAndFinite(base: base, merged: merged)
      if !finite { try checkFinite(merged, tensor: change.tensor) }
      let kind =
        switch change.kind {
        case .lora: "lora"
        case .bias: "lora_bias"
        case .replace: "replace"
        }
      let sources = change.sources.map {
        (
          adapters[$0.adapter].adapter.path, adapters[$0.adapter].weight * $0.module.scaling,
          $0.module.rank
        )
      }
      return MergeReport.Tensor(
        name: change.tensor, kind: kind, outputType: change.outputType, sources: sources,
        maxChange: maxChange)
    }

    switch base {
    case .safetensors(let model, let folder):
      let outputType: DType? = try outtype.map { name in
        guard let dtype = DType(rawValue: name.uppercased()), [.f32, .f16, .bf16].contains(dtype)
        else {
          throw FlareError(
            "merge", .invalidArgument, "a safetensors output holds f32, f16 or bf16, not '\(name)'")
        }
        return dtype
      }
      func spec(_ view: TensorView) -> TensorSpec {
        let dtype = changes[view.name] != nil ? (outputType ?? view.dtype) : view.dtype
        return TensorSpec(name: view.name, dtype: dtype, shape: view.shape)
      }
      let newTensors = plan.changes.filter(\.isNew)
      let addedHeads = plan.changes.filter(\.isAddedHead)
      // A new untied head goes into the file that holds the embedding it starts from; an added
      // classification head into the first file.
      func specs(_ file: SafetensorsFile) -> [TensorSpec] {
        var list = file.views.map(spec)
        for change in newTensors where file.info(change.source) != nil {
          guard let source = model.view(change.source) else { continue }
          list.append(
            TensorSpec(name: change.tensor, dtype: outputType ?? source.dtype, shape: source.shape))
        }
        if file === model.files.first {
          for change in addedHeads {
            list.append(
              TensorSpec(
                name: change.tensor,
                dtype: outputType ?? DType(rawValue: change.outputType.uppercased()) ?? .f32,
                shape: change.replacement?.shape ?? []))
          }
        }
        return list
      }
      // Merged tensors in the order they are written, computed one ahead of the writer.
      let source = model
      let order = model.files.flatMap { specs($0).map(\.name) }.filter { changes[$0] != nil }
      let ahead = ComputeAhead<([Float], MergeReport.Tensor)>(order: order) { name in
        if let change = changes[name], change.isAddedHead, let replacement = change.replacement {
          // No base tensor: the change is measured from zero.
          let values = replacement.floats()
          let zeros = [Float](repeating: 0, count: values.count)
          return (
            values, try zeros.withUnsafeBytes { try summary(change, base: $0, merged: values) }
          )
        }
        guard let change = changes[name], let view = source.view(change.source) else {
          throw FlareError("merge", .invalidArgument, "no base tensor for '\(name)'")
        }
        // The base is decoded straight into the buffer the deltas are added to; the largest
        // change is measured against the mapped F32 base (or a second decode of another type).
        let merged = try mergedValues(
          change, base: view.floats(), shape: view.shape, adapters: adapters, ropeHeads: nil,
          threads: threads)
        defer { view.releasePages(elements: 0..<view.info.elementCount) }
        if view.dtype == .f32 && UInt32(littleEndian: 1) == 1 && !change.isNew {
          return (merged, try summary(change, base: view.rawBytes, merged: merged))
        }
        let baseValues = view.floats()
        return (
          merged, try baseValues.withUnsafeBytes { try summary(change, base: $0, merged: merged) }
        )
      }
      func body(_ sink: TensorSink) throws {
        let change = changes[sink.spec.name]
        if let change, change.isAddedHead {
          let (values, tensorSummary) = try ahead.value(for: change.tensor)
          summaries[change.tensor] = tensorSummary
          try values.withUnsafeBufferPointer { try sink.write(floats: $0) }
          return
        }
        guard let view = model.view(change?.source ?? sink.spec.name) else { return }
        guard let change else {
          // Copied in 8 MiB pieces, each piece's mapped pages dropped once written, so copying
          // a large tensor does not keep it resident.
          let raw = view.rawBytes
          var offset = 0
          while offset < raw.count {
            let end = min(raw.count, offset + (8 << 20))
            try sink.write(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
            view.releasePages(bytes: offset..<end)
            offset = end
          }
          done += raw.count
          progress?(done, total)
          return
        }
        let (merged, tensorSummary) = try ahead.value(for: change.tensor)
        summaries[change.tensor] = tensorSummary
        try merged.withUnsafeBufferPointer { try sink.write(floats: $0) }
        done += view.info.byteCount
        progress?(done, total)
      }
      if let folder {
        let staging = try StagedFolder(for: output)
        var names: [String] = []
        var weightMap: [(String, JSONValue)] = []
        var totalSize = 0
        for file in model.files {
          let name = AtomicFileWriter.baseName(of: file.path)
          names.append(name)
          let specs = specs(file)
          for s in specs {
            weightMap.append((s.name, .string(name)))
            totalSize += s.byteCount ?? 0
          }
          try SafetensorsWriter.write(
            to: "\(staging.path)/\(name)", tensors: specs, options: .init(metadata: file.metadata),
            body: body)
        }
        if model.isSharded {
          let indexName = AtomicFileWriter.baseName(of: model.path)
          var metadata = (model.indexMetadata ?? []).filter { $0.0 != "total_size" }
          metadata.insert(("total_size", .integer(totalSize)), at: 0)
          weightMap.sort { $0.0 < $1.0 }
          let index = JSONValue.object([
            ("metadata", .object(metadata)), ("weight_map", .object(weightMap)),
          ])
          try writeFileAtomically(
            Array((JSONWriter.pretty(index) + "\n").utf8), to: "\(staging.path)/\(indexName)")
          names.append(indexName)
        }
        for name in folderFiles(folder)
        where !names.contains(name) && !name.hasSuffix(".safetensors") {
          if name == "config.json" && (!newTensors.isEmpty || plan.addedHead != nil) {
            let config = try JSONParser.parse(file: "\(folder)/\(name)", domain: "merge")
            var members = config.objectMembers ?? []
            if !newTensors.isEmpty {
              // The head is its own tensor now: the model must not tie it back to the
              // embeddings.
              members = members.filter { $0.0 != "tie_word_embeddings" }
              members.append(("tie_word_embeddings", .bool(false)))
            }
            if let head = plan.addedHead {
              members = try classifierConfig(members, labels: head.labels, adapter: head.adapter)
            }
            try writeFileAtomically(
              Array((JSONWriter.pretty(.object(members)) + "\n").utf8),
              to: "\(staging.path)/\(name)")
          } else {
            try copySmallFile("\(folder)/\(name)", to: "\(staging.path)/\(name)")
          }
          names.append(name)
        }
        try staging.checkDestination(files: names, overwrite: overwrite)
        try staging.publish(files: names)
        report.files = names.map { "\(output)/\($0)" }
      } else {
        guard let file = model.files.first else { return report }
        try SafetensorsWriter.write(
          to: output, tensors: specs(file),
          options: .init(metadata: file.metadata, overwrite: overwrite), body: body)
        report.files = [output]
        if !newTensors.isEmpty {
          report.notes.append(
            "a single .safetensors file carries no config: load it with tie_word_embeddings=false")
        }
        if let head = plan.addedHead {
          report.notes.append(
            "a single .safetensors file carries no config: load it as the sequence-classification model with \(head.labels) labels"
          )
        }
      }
      report.bytes = model.files.flatMap { specs($0) }.reduce(0) { $0 + ($1.byteCount ?? 0) }

    case .gguf(let file):
      let config = try decoderConfig(file)
      let forced: GGMLType? = try outtype.map { name in
        guard let type = GGMLType.named(name), type.canQuantize else {
          throw FlareError("merge", .invalidArgument, "'\(name)' is not a type Flare can write")
        }
        return type
      }
      var specs: [GGUFTensorSpec] = []
      for tensor in file.tensors {
        var type = tensor.type
        if changes[tensor.name] != nil {
          type = forced ?? tensor.type
          if tensor.dims.count == 1 && type.isQuantized { type = .f32 }
          guard type.canQuantize, tensor.type.canDequantize else {
            throw FlareError(
              "merge", .unsupported,
              "\(tensor.type.name) cannot be re-quantized by Flare; pass --outtype (e.g. f16 or q8_0) for the merged tensors",
              path: file.path, tensor: tensor.name)
          }
          if (tensor.dims.first ?? 0) % type.blockSize != 0 { type = .f16 }
        }
        specs.append(GGUFTensorSpec(name: tensor.name, dims: tensor.dims, type: type))
      }
      for change in plan.changes where change.isNew {
        guard let source = file.tensor(change.source) else { continue }
        var type = forced ?? source.type
        if !type.canQuantize { type = .f16 }
        specs.append(GGUFTensorSpec(name: change.tensor, dims: source.dims, type: type))
      }
      try GGUFWriter.write(
        to: output, metadata: file.metadata, tensors: specs, alignment: file.alignment,
        overwrite: overwrite
      ) { sink in
        guard let tensor = file.tensor(changes[sink.spec.name]?.source ?? sink.spec.name) else {
          return
        }
        guard var change = changes[sink.spec.name] else {
          let raw = file.bytes(of: tensor)
          var offset = 0
          while offset < raw.count {
            let end = min(raw.count, offset + (8 << 20))
            try sink.write(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
            file.releasePages(of: tensor, bytes: offset..<end)
            offset = end
          }
          done += raw.count
          progress?(done, total)
          return
        }
        change.outputType = sink.spec.type.name
        let baseValues = try file.floats(tensor, releasing: true)
        let ropeHeads = config.flatMap {
          $0.family.ropeHeads(gguf: tensor.name, heads: $0.headCount, kvHeads: $0.headCountKV)
        }
        let merged = try mergedValues(
          change, base: baseValues, shape: tensor.dims.reversed(), adapters: adapters,
          ropeHeads: ropeHeads, threads: threads)
        summaries[change.tensor] = try baseValues.withUnsafeBytes {
          try summary(change, base: $0, merged: merged)
        }
        try merged.withUnsafeBufferPointer { try sink.write(floats: $0) }
        done += tensor.byteCount
        progress?(done, total)
      }
      report.files = [output]
      report.bytes = specs.reduce(0) { $0 + ($1.byteCount ?? 0) }
      if forced == nil
        && plan.changes.contains(where: { change in
          file.tensor(change.tensor)?.type.isQuantized == true
        })
      {
        report.notes.append(
          "quantized base tensors were dequantized, merged in F32 and re-quantized to their own types (--outtype to choose)"
        )
      }
    }
    report.tensors = plan.changes.compactMap { summaries[$0.tensor] }
    return report
  }

  /// The largest `|merged − base|` and whether every merged value is finite, in one vectorised
  /// pass (8 lanes, masks instead of NaN-aware max; `x·0` is NaN exactly when `x` is not finite).
  /// `base` holds F32 values in native byte order, at any alignment.
  static func changeAndFinite(base old: UnsafeRawBufferPointer, merged: [Float]) -> (Float, Bool) {
    merged.withUnsafeBufferPointer { new in
      let count = min(old.count / 4, new.count)
      guard let o = old.baseAddress, let n = new.baseAddress else { return (0, true) }
      var largest = SIMD8<Float>(repeating: 0)
      var poison = SIMD8<Float>(repeating: 0)
      var i = 0
      while i + 8 <= count {
        let x = UnsafeRawPointer(n + i).loadUnaligned(as: SIMD8<Float>.self)
        let y = o.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        let d = x - y
        let magnitude = d.replacing(with: -d, where: d .< 0)
        largest.replace(with: magnitude, where: magnitude .> largest)
        poison += x * 0
        i += 8
      }
      var result = largest.max()
      var finite = !poison.indices.contains { poison[$0].isNaN }
      while i < count {
        result = max(result, abs(n[i] - o.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)))
        finite = finite && n[i].isFinite
        i += 1
      }
      return (result, finite)
    }
  }

  /// `config.json` members for a model that gained a `labels`-way classification head: the
  /// task model's `architectures` (`BertForSequenceClassification`,
  /// `XLMRobertaForSequenceClassification`, `RobertaForSequenceClassification`,
  /// `LlamaForSequenceClassification`, `Qwen2ForSequenceClassification`, … by `model_type`)
  /// and `id2label` / `label2id`, named by the adapter's `flare_labels.json` (written by
  /// flare-train) when it has one, else by the config's own `id2label` when that has `labels`
  /// entries, else `LABEL_<i>` as transformers names them.
  static func classifierConfig(
    _ members: [(String, JSONValue)], labels: Int, adapter: String
  ) throws -> [(String, JSONValue)] {
    let config = JSONValue.object(members)
    let architecture =
      switch config["model_type"]?.stringValue {
      case "xlm-roberta": "XLMRobertaForSequenceClassification"
      case "roberta": "RobertaForSequenceClassification"
      case let type? where ModelFamily.named(type) != nil:
        (ModelFamily.named(type)?.displayName ?? "Llama") + "ForSequenceClassification"
      default: "BertForSequenceClassification"
      }
    var names = (0..<labels).map { "LABEL_\($0)" }
    let labelFile = "\(adapter)/flare_labels.json"
    if fileExists(labelFile) {
      let json = try JSONParser.parse(file: labelFile, domain: "merge")
      if let items = json["labels"]?.arrayValue, items.count == labels {
        names = items.map { $0.stringValue ?? $0.intValue.map(String.init) ?? "" }
      }
    } else if let own = config["id2label"]?.objectMembers, own.count == labels {
      for (key, value) in own {
        if let id = Int(key), names.indices.contains(id), let name = value.stringValue {
          names[id] = name
        }
      }
    }
    var result = members.filter {
      !["architectures", "id2label", "label2id", "num_labels"].contains($0.0)
    }
    result.append(("architectures", .array([.string(architecture)])))
    if architecture == "LlamaForSequenceClassification", config["pad_token_id"]?.intValue == nil,
      let eos = config["eos_token_id"]?.intValue
    {
      // transformers finds each row's last token by pad_token_id and refuses batches without
      // one; Flare pads with EOS when the tokenizer has no pad token.
      result = result.filter { $0.0 != "pad_token_id" }
      result.append(("pad_token_id", .integer(eos)))
    }
    result.append(
      ("id2label", .object(names.enumerated().map { (String($0.offset), .string($0.element)) })))
    result.append(
      ("label2id", .object(names.enumerated().map { ($0.element, .integer($0.offset)) })))
    return result
  }

  /// Regular files in a folder (not sub-folders), sorted.
  static func folderFiles(_ folder: String) -> [String] {
    folderEntries(folder).filter { !$0.hasPrefix(".") && !isDirectory("\(folder)/\($0)") }.sorted()
  }

  /// Re-reads a merged output and checks every changed tensor against base + ΔW rounded once
  /// to its output type. Returns the largest absolute difference between the stored values and
  /// the F32 merge.
  /// - Throws: ``FlareError`` naming the first tensor whose stored bytes differ.
  public static func verify(
    output: String, base: Base, adapters: [WeightedAdapter], plan: MergePlan, threads: Int
  ) throws -> Float {
    // OpenBLAS single-threaded (each call's summation order fixed; the work is split into
    // fixed blocks here), restored on return.
    BLAS.beginSingleThreaded()
    defer { BLAS.endSingleThreaded() }
    var worst: Float = 0
    switch base {
    case .safetensors(let model, _):
      let merged = try SafetensorsModel.open(output)
      for change in plan.changes {
        let source = model.view(change.source)
        guard let stored = merged.view(change.tensor), source != nil || change.isAddedHead else {
          throw FlareError(
            "merge", .invalidArgument, "is missing from the output", path: output,
            tensor: change.tensor)
        }
        let expected: [Float]
        if let source {
          expected = try mergedValues(
            change, base: source.floats(), shape: source.shape, adapters: adapters,
            ropeHeads: nil, threads: threads)
        } else {
          expected = change.replacement?.floats() ?? []
        }
        var encoded = [UInt8](repeating: 0, count: stored.info.byteCount)
        try expected.withUnsafeBufferPointer { values in
          try encoded.withUnsafeMutableBytes { try stored.dtype.encode(values, into: $0) }
        }
        guard encoded.elementsEqual(stored.rawBytes) else {
          throw FlareError(
            "merge", .invalidArgument,
            "stored values differ from base + ΔW rounded to \(stored.dtype.rawValue)", path: output,
            tensor: change.tensor)
        }
        for (x, y) in zip(stored.floats(), expected) { worst = max(worst, abs(x - y)) }
      }
    case .gguf(let file):
      let merged = try GGUFFile(path: output)
      let config = try decoderConfig(file)
      for change in plan.changes {
        guard let source = file.tensor(change.source), let stored = merged.tensor(change.tensor)
        else {
          throw FlareError(
            "merge", .invalidArgument, "is missing from the output", path: output,
            tensor: change.tensor)
        }
        let ropeHeads = config.flatMap {
          $0.family.ropeHeads(gguf: source.name, heads: $0.headCount, kvHeads: $0.headCountKV)
        }
        let expected = try mergedValues(
          change, base: try file.floats(source), shape: source.dims.reversed(), adapters: adapters,
          ropeHeads: ropeHeads, threads: threads)
        var encoded = [UInt8](repeating: 0, count: stored.byteCount)
        try expected.withUnsafeBufferPointer { values in
          try encoded.withUnsafeMutableBytes { try stored.type.quantizeParallel(values, into: $0) }
        }
        guard encoded.elementsEqual(merged.bytes(of: stored)) else {
          throw FlareError(
            "merge", .invalidArgument,
            "stored values differ from base + ΔW quantized to \(stored.type.name)", path: output,
            tensor: change.tensor)
        }
        for (x, y) in zip(try merged.floats(stored), expected) { worst = max(worst, abs(x - y)) }
      }
    }
    return worst
  }
}
