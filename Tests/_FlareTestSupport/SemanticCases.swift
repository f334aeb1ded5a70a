import FlareCore
import FlareGGUF
import FlareSafetensors
import Foundation

/// One case of a semantic corpus (`Fixtures/gguf/malformed/semantic.json`,
/// `Fixtures/llama/malformed-config.json`, `Fixtures/encoders/malformed-config.json`): a valid
/// base with some values set or dropped, and the verdict every consumer must give.
public struct SemanticCase: Sendable, CustomStringConvertible {
  public var name: String
  /// (key, value) pairs to set: for GGUF, `value` is `{"type": …, "value": …}`-decoded.
  public var set: [(key: String, value: JSONValue, type: String?)]
  public var drop: [String]
  /// A FlareError code name, or `ok`.
  public var expect: String
  /// The verdict of consumers that only need what is present (GGUF corpus only).
  public var expectPartial: String
  /// Verdicts of single consumers that differ from the above, by consumer name.
  public var expectBy: [String: String]
  /// The key the error names, if any.
  public var key: String?
  /// The tensor the error names, if any.
  public var tensor: String?
  public var description: String { "\(name) → \(expect)" }

  /// The cases of a corpus manifest.
  public static func load(_ relative: String) -> (base: String, cases: [SemanticCase]) {
    guard let manifest = try? loadFixtureJSON(relative) else { return ("", []) }
    let cases = (manifest["cases"]?.arrayValue ?? []).map { entry -> SemanticCase in
      var set: [(String, JSONValue, String?)] = []
      if let list = entry["set"]?.arrayValue {
        for item in list {
          set.append(
            (
              item["key"]?.stringValue ?? "", item["value"] ?? .null,
              item["type"]?.stringValue
            ))
        }
      } else if let members = entry["set"]?.objectMembers {
        set = members.map { ($0.0, $0.1, nil) }
      }
      let expect = entry["expect"]?.stringValue ?? ""
      return SemanticCase(
        name: entry["name"]?.stringValue ?? "", set: set,
        drop: entry["drop"]?.arrayValue?.compactMap(\.stringValue) ?? [],
        expect: expect, expectPartial: entry["expect_partial"]?.stringValue ?? expect,
        expectBy: Dictionary(
          (entry["expect_by"]?.objectMembers ?? []).compactMap { name, value in
            value.stringValue.map { (name, $0) }
          }, uniquingKeysWith: { first, _ in first }),
        key: entry["key"]?.stringValue, tensor: entry["tensor"]?.stringValue)
    }
    return (manifest["base"]?.stringValue ?? "", cases)
  }

  /// The manifest's `base_edits` (GGUF corpus), as `set` pairs.
  public static func baseEdits(_ relative: String) -> [(key: String, value: GGUFValue)] {
    guard let manifest = try? loadFixtureJSON(relative) else { return [] }
    return (manifest["base_edits"]?.arrayValue ?? []).compactMap { item in
      guard let key = item["key"]?.stringValue, let type = item["type"]?.stringValue,
        let value = ggufValue(type: type, json: item["value"] ?? .null)
      else { return nil }
      return (key, value)
    }
  }

  /// The case applied to GGUF metadata.
  public func edit(_ metadata: [GGUFKeyValue]) -> [GGUFKeyValue] {
    var pairs: [(key: String, value: GGUFValue)] = []
    for (key, json, type) in set {
      guard let type, let value = ggufValue(type: type, json: json) else { continue }
      pairs.append((key, value))
    }
    return editedMetadata(metadata, set: pairs, drop: drop)
  }

  /// The case applied to a JSON object (top-level members).
  public func edit(_ json: JSONValue) -> JSONValue {
    editedJSON(json, set: set.map { ($0.key, $0.value) }, drop: drop)
  }
}

/// `metadata` with `set` keys replaced (or appended) and `drop` keys removed.
public func editedMetadata(
  _ metadata: [GGUFKeyValue], set: [(key: String, value: GGUFValue)], drop: [String]
) -> [GGUFKeyValue] {
  var out = metadata.filter { !drop.contains($0.key) }
  for (key, value) in set {
    if let index = out.firstIndex(where: { $0.key == key }) {
      out[index].value = value
    } else {
      out.append(GGUFKeyValue(key: key, value: value))
    }
  }
  return out
}

/// A JSON object with `set` members replaced (or appended) and `drop` members removed.
public func editedJSON(_ json: JSONValue, set: [(String, JSONValue)], drop: [String]) -> JSONValue {
  var members = (json.objectMembers ?? []).filter { !drop.contains($0.0) }
  for (key, value) in set {
    if let index = members.firstIndex(where: { $0.0 == key }) {
      members[index].1 = value
    } else {
      members.append((key, value))
    }
  }
  return .object(members)
}

/// A GGUF value of the type gguf-py names `type` (`UINT32`, `FLOAT32`, `ARRAY[UINT32]`, …) from a
/// manifest value: a JSON number, string or bool, or `"nan"`, `"inf"`, `"-inf"` for floats.
public func ggufValue(type: String, json: JSONValue) -> GGUFValue? {
  if type.hasPrefix("ARRAY[") && type.hasSuffix("]") {
    let inner = String(type.dropFirst(6).dropLast())
    guard let element = GGUFValueType.allCases.first(where: { $0.name == inner }),
      let items = json.arrayValue
    else { return nil }
    let values = items.compactMap { ggufValue(type: inner, json: $0) }
    return values.count == items.count ? .array(element, values) : nil
  }
  func float() -> Double? {
    switch json.stringValue {
    case "nan": .nan
    case "inf": .infinity
    case "-inf": -.infinity
    default: json.doubleValue
    }
  }
  let int = json.intValue
  switch type {
  case "UINT8": return int.flatMap(UInt8.init(exactly:)).map { .uint8($0) }
  case "INT8": return int.flatMap(Int8.init(exactly:)).map { .int8($0) }
  case "UINT16": return int.flatMap(UInt16.init(exactly:)).map { .uint16($0) }
  case "INT16": return int.flatMap(Int16.init(exactly:)).map { .int16($0) }
  case "UINT32": return int.flatMap(UInt32.init(exactly:)).map { .uint32($0) }
  case "INT32": return int.flatMap(Int32.init(exactly:)).map { .int32($0) }
  case "UINT64": return json.uint64Value.map { .uint64($0) }
  case "INT64": return int.map { .int64(Int64($0)) }
  case "FLOAT32": return float().map { .float32(Float($0)) }
  case "FLOAT64": return float().map { .float64($0) }
  case "BOOL": return json.boolValue.map { .bool($0) }
  case "STRING": return json.stringValue.map { .string($0) }
  default: return nil
  }
}

/// Writes `file`'s tensors byte for byte with `metadata` to `path` (overwriting).
public func writeGGUF(copying file: GGUFFile, metadata: [GGUFKeyValue], to path: String) throws {
  let specs = file.tensors.map { GGUFTensorSpec(name: $0.name, dims: $0.dims, type: $0.type) }
  try GGUFWriter.write(
    to: path, metadata: metadata, tensors: specs, alignment: file.alignment, overwrite: true
  ) { sink in
    guard let tensor = file.tensor(sink.spec.name) else { return }
    try sink.write(file.bytes(of: tensor))
  }
}

/// Writes a JSON value to `path` (pretty-printed).
public func writeJSON(_ value: JSONValue, to path: String) {
  writeBytes(Array((JSONWriter.pretty(value) + "\n").utf8), to: path)
}

/// A small byte-level BPE `tokenizer.json` (7 tokens, the first two special, `gpt2`
/// pre-tokenizer), for HF folders whose tokenizer does not matter.
public func syntheticBPETokenizerJSON() -> String {
  """
  {"version":"1.0","added_tokens":[{"id":0,"content":"<s>","special":true},{"id":1,"content":"</s>","special":true}],
  "normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
  "post_processor":null,"decoder":{"type":"ByteLevel"},
  "model":{"type":"BPE","vocab":{"<s>":0,"</s>":1,"a":2,"b":3,"ab":4,"Ġ":5,"Ġa":6},"merges":["a b","Ġ a"]}}
  """
}

/// A PEFT LoRA folder (rank 2, F32) for the Q and K projections of layer 0 of a Llama model with
/// hidden size `hidden`, query width `qRows` and key width `kRows`; A and B hold small seeded
/// values.
public func writeTinyLlamaLoRA(folder: String, hidden: Int, qRows: Int, kRows: Int) throws {
  try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
  func floats(_ count: Int, seed: Int) -> [UInt8] {
    var bytes: [UInt8] = []
    for i in 0..<count {
      let value = Float((i * 37 + seed * 11) % 17 - 8) / 64
      withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes += $0 }
    }
    return bytes
  }
  var tensors: [(spec: TensorSpec, bytes: [UInt8])] = []
  for (index, (module, rows)) in [("q_proj", qRows), ("k_proj", kRows)].enumerated() {
    let prefix = "base_model.model.model.layers.0.self_attn.\(module)"
    tensors.append(
      (
        TensorSpec(name: "\(prefix).lora_A.weight", dtype: .f32, shape: [2, hidden]),
        floats(2 * hidden, seed: index)
      ))
    tensors.append(
      (
        TensorSpec(name: "\(prefix).lora_B.weight", dtype: .f32, shape: [rows, 2]),
        floats(rows * 2, seed: index + 5)
      ))
  }
  try SafetensorsWriter.write(to: "\(folder)/adapter_model.safetensors", tensors: tensors)
  writeBytes(
    Array(#"{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj","k_proj"]}"#.utf8),
    to: "\(folder)/adapter_config.json")
}
