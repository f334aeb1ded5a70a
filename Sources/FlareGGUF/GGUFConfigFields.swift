import FlareCore

extension ConfigFields {
  /// The metadata keys of a GGUF file, each with its type name (`UINT32`, `FLOAT32`, …) and the
  /// byte offset of its key/value pair.
  public init(gguf file: GGUFFile) {
    self.init(ggufMetadata: file.metadata, path: file.path)
  }

  /// GGUF metadata read from `path`.
  public init(ggufMetadata metadata: [GGUFKeyValue], path: String) {
    let entries = Dictionary(
      metadata.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
    self.init(path: path) { key in
      guard let entry = entries[key] else { return nil }
      return ConfigValue(gguf: entry.value, offset: entry.offset)
    }
  }
}

extension ConfigValue {
  /// A GGUF metadata value.
  public init(gguf value: GGUFValue, offset: Int?) {
    let kind: Kind
    let text: String
    switch value {
    case .uint64(let v):
      kind = Int(exactly: v).map(Kind.integer) ?? .number(Double(v))
      text = String(v)
    case .float32(let v):
      kind = .number(Double(v))
      text = "\(v)"
    case .float64(let v):
      kind = .number(v)
      text = "\(v)"
    case .bool(let flag):
      kind = .bool(flag)
      text = "\(flag)"
    case .string(let string):
      kind = .string(string)
      text = ConfigValue.quoted(string)
    case .array(let type, let elements):
      kind = .list(elements.map { ConfigValue(gguf: $0, offset: offset) })
      text = "[\(elements.count) × \(type.name)]"
    case .uint8(let v): (kind, text) = (.integer(Int(v)), String(v))
    case .int8(let v): (kind, text) = (.integer(Int(v)), String(v))
    case .uint16(let v): (kind, text) = (.integer(Int(v)), String(v))
    case .int16(let v): (kind, text) = (.integer(Int(v)), String(v))
    case .uint32(let v): (kind, text) = (.integer(Int(v)), String(v))
    case .int32(let v): (kind, text) = (.integer(Int(v)), String(v))
    case .int64(let v): (kind, text) = (.integer(Int(v)), String(v))
    }
    self.init(kind: kind, typeName: value.type.name, text: text, offset: offset)
  }
}
