import FlareCore
import FlareGGUF

/// The listing of a GGUF file in gguf-dump's layout (text and JSON).
enum GGUFListing {
  /// One metadata field as gguf-dump sees it: the three `GGUF.*` pseudo-fields, then the file's.
  struct Field {
    var name: String
    var value: GGUFValue
    var offset: Int
  }

  static func fields(_ file: GGUFFile) -> [Field] {
    [
      Field(name: "GGUF.version", value: .uint32(file.version), offset: 4),
      Field(name: "GGUF.tensor_count", value: .uint64(UInt64(file.tensors.count)), offset: 8),
      Field(name: "GGUF.kv_count", value: .uint64(UInt64(file.metadata.count)), offset: 16),
    ] + file.metadata.map { Field(name: $0.key, value: $0.value, offset: $0.offset) }
  }

  static func typeName(_ value: GGUFValue) -> String {
    if case .array(let element, let elements) = value {
      // gguf-py records no element type for an empty array and prints plain ARRAY.
      return elements.isEmpty ? "ARRAY" : "[\(element.name)]"
    }
    return value.type.name
  }

  static func count(_ value: GGUFValue) -> Int {
    if case .array(_, let elements) = value { return elements.count }
    return 1
  }

  /// `str()` of a scalar as Python prints it (floats via `repr`, bools as True/False).
  static func python(_ value: GGUFValue) -> String {
    switch value {
    case .uint8(let v): String(v)
    case .int8(let v): String(v)
    case .uint16(let v): String(v)
    case .int16(let v): String(v)
    case .uint32(let v): String(v)
    case .int32(let v): String(v)
    case .uint64(let v): String(v)
    case .int64(let v): String(v)
    case .float32(let v): PythonRepr.float(Double(v))
    case .float64(let v): PythonRepr.float(v)
    case .bool(let v): v ? "True" : "False"
    case .string(let s): PythonRepr.string(s)
    case .array(_, let elements): "[" + elements.map(python).joined(separator: ", ") + "]"
    }
  }

  static func rightAligned(_ text: String, _ width: Int) -> String {
    String(repeating: " ", count: max(0, width - text.count)) + text
  }

  static func leftAligned(_ text: String, _ width: Int) -> String {
    text + String(repeating: " ", count: max(0, width - text.count))
  }

  /// gguf-dump's default text output, line for line.
  static func text(_ file: GGUFFile, tensors: Bool) -> [String] {
    let all = fields(file)
    var lines = [
      "* File is LITTLE endian, script is running on a LITTLE endian host.",
      "* Dumping \(all.count) key/value pair(s)",
    ]
    for (n, field) in all.enumerated() {
      var line =
        "  \(rightAligned(String(n + 1), 5)): \(leftAligned(typeName(field.value), 10)) | \(rightAligned(String(count(field.value)), 8)) | \(field.name)"
      switch field.value {
      case .string(let s):
        var content = s
        if s.unicodeScalars.count > 60 {
          var scalars = String.UnicodeScalarView()
          scalars.append(contentsOf: s.unicodeScalars.prefix(57))
          content = String(scalars) + "..."
        }
        line += " = " + PythonRepr.string(content)
      case .array(_, let elements):
        var content = "[" + elements.prefix(6).map(python).joined(separator: ", ") + "]"
        if elements.count > 6 { content = String(content.dropLast()) + ", ...]" }
        line += " = " + content
      default:
        line += " = " + python(field.value)
      }
      lines.append(line)
    }
    guard tensors else { return lines }
    lines.append("* Dumping \(file.tensors.count) tensor(s)")
    for (n, tensor) in file.tensors.enumerated() {
      let dims = (tensor.dims + Array(repeating: 1, count: max(0, 4 - tensor.dims.count)))
        .map { rightAligned(String($0), 5) }.joined(separator: ", ")
      lines.append(
        "  \(rightAligned(String(n + 1), 5)): \(rightAligned(String(tensor.elementCount), 10)) | \(dims) | \(leftAligned(tensor.type.name, 7)) | \(tensor.name)"
      )
    }
    return lines
  }

  static func json(_ value: GGUFValue) -> JSONValue {
    switch value {
    case .uint8(let v): .integer(v)
    case .int8(let v): .integer(v)
    case .uint16(let v): .integer(v)
    case .int16(let v): .integer(v)
    case .uint32(let v): .integer(v)
    case .int32(let v): .integer(v)
    case .uint64(let v): .integer(v)
    case .int64(let v): .integer(v)
    case .float32(let v): v.isFinite ? .number(PythonRepr.float(Double(v))) : .null
    case .float64(let v): v.isFinite ? .number(PythonRepr.float(v)) : .null
    case .bool(let v): .bool(v)
    case .string(let s): .string(s)
    case .array(_, let elements): .array(elements.map(json))
    }
  }

  /// gguf-dump's `--json` document (`filename`, `endian`, `metadata`, `tensors`), plus
  /// Flare's `format`, `alignment`, `data_offset` and per-tensor `n_bytes`/`data_offset`.
  static func document(_ file: GGUFFile, path: String, tensors: Bool, arrays: Bool) -> JSONValue {
    var metadata: [(String, JSONValue)] = []
    for (index, field) in fields(file).enumerated() {
      var entry: [(String, JSONValue)] = [
        ("index", .integer(index)), ("type", .string(field.value.type.name)),
        ("offset", .integer(field.offset)),
      ]
      if case .array(let element, let elements) = field.value {
        entry.append(("array_types", .array(elements.isEmpty ? [] : [.string(element.name)])))
        if arrays { entry.append(("value", json(field.value))) }
      } else {
        entry.append(("value", json(field.value)))
      }
      metadata.append((field.name, .object(entry)))
    }
    var tensorEntries: [(String, JSONValue)] = []
    if tensors {
      for (index, tensor) in file.tensors.enumerated() {
        tensorEntries.append(
          (
            tensor.name,
            .object([
              ("index", .integer(index)), ("shape", .array(tensor.dims.map { .integer($0) })),
              ("type", .string(tensor.type.name)), ("offset", .integer(tensor.infoOffset)),
              ("data_offset", .integer(tensor.offset)), ("n_bytes", .integer(tensor.byteCount)),
            ])
          ))
      }
    }
    return .object([
      ("filename", .string(path)), ("endian", .string("LITTLE")), ("metadata", .object(metadata)),
      ("tensors", .object(tensorEntries)), ("format", .string("gguf")),
      ("version", .integer(file.version)),
      ("alignment", .integer(file.alignment)), ("data_offset", .integer(file.dataStart)),
    ])
  }
}

extension GGUFFile {
  /// Each tensor as a source of dequantized `Float` values (types without a dequantizer are
  /// left out by the caller).
  func decodable(_ tensor: GGUFTensorInfo) -> DecodableTensor {
    let file = self
    let type = tensor.type
    return DecodableTensor(
      name: tensor.name, valueCount: tensor.elementCount, granularity: type.blockSize
    ) {
      range, buffer in
      let first = range.lowerBound / type.blockSize * type.typeSize
      let last = range.upperBound / type.blockSize * type.typeSize
      let raw = UnsafeRawBufferPointer(rebasing: file.bytes(of: tensor)[first..<last])
      try? type.dequantize(raw, count: range.count, into: buffer)
      file.releasePages(of: tensor, bytes: first..<last)
    }
  }
}
