import FlareArchitectures
import FlareCLI
import FlareCore
import FlareGGUF
import FlareSafetensors

extension ProgressBar: ProgressReporter {}

extension InspectCommand {
  /// `--diff A B`: per-tensor differences plus missing, extra and mismatched tensors.
  /// Exit 1 when anything differs beyond the tolerance.
  static func runDiff(_ pathA: String, _ pathB: String, options: Options) throws -> ExitStatus {
    let aIsGGUF = InspectInput.isGGUF(pathA)
    let bIsGGUF = InspectInput.isGGUF(pathB)
    // Across formats, GGUF tensors are seen through HF names, shapes and row order.
    let a = try comparableTensors(pathA, asHF: aIsGGUF && !bIsGGUF)
    let b = try comparableTensors(pathB, asHF: bIsGGUF && !aIsGGUF)
    let indexB = Dictionary(
      b.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { first, _ in first })
    let namesA = Set(a.map(\.name))
    var pairs: [(ComparableTensor, ComparableTensor)] = []
    var mismatched: [(ComparableTensor, ComparableTensor)] = []
    var missing: [String] = []
    for x in a {
      guard let index = indexB[x.name] else {
        missing.append(x.name)
        continue
      }
      let y = b[index]
      if x.shape != y.shape || x.source.valueCount != y.source.valueCount {
        mismatched.append((x, y))
      } else {
        pairs.append((x, y))
        // Type names differ between formats by nature (F32 vs Q4_1); within a format they count.
        if x.typeName != y.typeName && aIsGGUF == bIsGGUF { mismatched.append((x, y)) }
      }
    }
    let extra = b.map(\.name).filter { !namesA.contains($0) }
    let total = pairs.reduce(0) { $0 + $1.0.source.valueCount }
    let bar = ProgressBar(
      label: "diff", total: total, enabled: !options.quiet && total > 50_000_000)
    let differences = TensorDifference.compute(
      pairs: pairs.map { ($0.0.source, $0.1.source) }, progress: bar)
    bar.finish()
    let beyond = zip(pairs, differences).filter { $0.1.maxAbs > options.tolerance }
    let identical = beyond.isEmpty && missing.isEmpty && extra.isEmpty && mismatched.isEmpty

    if options.json {
      var tensors: [JSONValue] = []
      for ((x, _), difference) in zip(pairs, differences) {
        tensors.append(
          .object([
            ("name", .string(x.name)), ("max_abs", .exact(difference.maxAbs)),
            ("rel_frobenius", .exact(difference.relativeFrobenius)),
            ("differing_values", .integer(difference.differing)),
            ("within_tolerance", .bool(difference.maxAbs <= options.tolerance)),
          ]))
      }
      let mismatchJSON = mismatched.map { x, y -> JSONValue in
        .object([
          ("name", .string(x.name)),
          (
            "a",
            .object([
              ("dtype", .string(x.typeName)), ("shape", .array(x.shape.map { .integer($0) })),
            ])
          ),
          (
            "b",
            .object([
              ("dtype", .string(y.typeName)), ("shape", .array(y.shape.map { .integer($0) })),
            ])
          ),
        ])
      }
      let document = JSONValue.object([
        ("a", .string(pathA)), ("b", .string(pathB)), ("tolerance", .exact(options.tolerance)),
        ("tensors", .array(tensors)), ("missing", .array(missing.map { .string($0) })),
        ("extra", .array(extra.map { .string($0) })), ("mismatched", .array(mismatchJSON)),
        ("identical", .bool(identical)),
      ])
      Console.out(JSONWriter.compact(document) + "\n")
      return identical ? .success : .failure
    }

    var lines: [String] = []
    if !options.quiet {
      lines.append(
        "diff \(pathA) (reference, \(a.count) tensors) vs \(pathB) (\(b.count) tensors), tolerance \(Format.number(options.tolerance))"
      )
      var rows: [[String]] = [["name", "max_abs", "rel_frobenius", "status"]]
      for ((x, _), difference) in zip(pairs, differences) {
        let status =
          difference.maxAbs == 0
          ? "equal" : (difference.maxAbs <= options.tolerance ? "within tolerance" : "DIFFERS")
        rows.append([
          x.name.escapedForMessage, Format.number(difference.maxAbs),
          Format.number(difference.relativeFrobenius), status,
        ])
      }
      if pairs.count > 0 { lines += Format.table(rows, rightAligned: [1, 2]) }
    }
    for name in missing { lines.append("only in \(pathA): \(name.escapedForMessage)") }
    for name in extra { lines.append("only in \(pathB): \(name.escapedForMessage)") }
    for (x, y) in mismatched {
      lines.append(
        "mismatch: \(x.name.escapedForMessage): \(x.typeName) \(Format.shape(x.shape)) vs \(y.typeName) \(Format.shape(y.shape))"
      )
    }
    let verdict =
      identical
      ? "result: identical within tolerance (\(pairs.count) tensors compared)"
      : "result: DIFFERENT: \(beyond.count) of \(pairs.count) compared tensors differ beyond tolerance, \(missing.count) missing, \(extra.count) extra, \(mismatched.count) mismatched"
    lines.append(verdict)
    Console.out(lines.joined(separator: "\n") + "\n")
    return identical ? .success : .failure
  }
}

/// A tensor as `--diff` compares it: a name, a shape (outermost first), a type label and its
/// values.
struct ComparableTensor {
  var name: String
  var shape: [Int]
  var typeName: String
  var source: DecodableTensor
}

extension InspectCommand {
  /// The tensors of `path` for `--diff`. With `asHF`, a llama GGUF is presented with HF names,
  /// outermost-first shapes and the query/key rows un-permuted, so it compares with an HF model.
  static func comparableTensors(_ path: String, asHF: Bool) throws -> [ComparableTensor] {
    if InspectInput.isGGUF(path) {
      let file = try GGUFFile(path: path)
      // Un-permuting Q and K needs the head counts, checked against the tensors' shapes.
      let family = file.value("general.architecture")?.stringValue.flatMap(ModelFamily.gguf)
      let config = asHF && family != nil ? try DecoderConfig(gguf: file) : nil
      return file.tensors.filter { $0.type.canDequantize }.map { tensor in
        guard asHF else {
          return ComparableTensor(
            name: tensor.name, shape: tensor.dims.reversed(), typeName: tensor.type.name,
            source: file.decodable(tensor))
        }
        let name = (family ?? .llama).hfName(gguf: tensor.name) ?? tensor.name
        var source = file.decodable(tensor)
        if let config,
          let ropeHeads = config.family.ropeHeads(
            gguf: tensor.name, heads: config.headCount, kvHeads: config.headCountKV)
        {
          source = file.unpermutedDecodable(tensor, heads: ropeHeads)
        }
        return ComparableTensor(
          name: name, shape: tensor.dims.reversed(), typeName: tensor.type.name, source: source)
      }
    }
    let input = try InspectInput.open(path)
    return input.model.tensors.map {
      ComparableTensor(
        name: $0.name, shape: $0.shape, typeName: $0.dtype.rawValue, source: $0.decodable)
    }
  }
}

extension GGUFFile {
  /// A query/key tensor's values in HF row order: HF row `r` is GGUF row
  /// `LlamaLayout.ggufRow(hf: r, headDim:)`. Ranges asked for start on whole rows.
  func unpermutedDecodable(_ tensor: GGUFTensorInfo, heads: Int) -> DecodableTensor {
    let file = self
    let rowLength = tensor.dims.first ?? 1
    let rows = tensor.elementCount / max(rowLength, 1)
    let type = tensor.type
    let rowBytes = type.rowBytes(elements: rowLength) ?? 0
    let headDim = heads > 0 && rows % heads == 0 ? rows / heads : 0
    return DecodableTensor(
      name: tensor.name, valueCount: tensor.elementCount, granularity: rowLength
    ) { range, buffer in
      let raw = file.bytes(of: tensor)
      var offset = 0
      var row = range.lowerBound / rowLength
      while offset < range.count {
        let source = headDim > 1 ? LlamaLayout.ggufRow(hf: row, headDim: headDim) : row
        let bytes = UnsafeRawBufferPointer(
          rebasing: raw[(source * rowBytes)..<((source + 1) * rowBytes)])
        try? type.dequantize(
          bytes, count: rowLength,
          into: UnsafeMutableBufferPointer(rebasing: buffer[offset..<(offset + rowLength)]))
        offset += rowLength
        row += 1
      }
    }
  }
}
