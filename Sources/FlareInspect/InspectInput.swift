import FlareAdapters
import FlareCore
import FlareSafetensors

/// A path given to `flare-inspect`, opened and validated.
public struct InspectInput: Sendable {
  public enum Kind: String, Sendable {
    case file
    case shardedIndex = "sharded"
    case modelFolder = "folder"
    case adapterFolder = "peft-adapter"
  }

  public var path: String
  public var kind: Kind
  public var model: SafetensorsModel
  public var adapter: PEFTConfig?

  /// Opens a `.safetensors` file, a shard index, an HF model folder, or a PEFT adapter folder
  /// (`adapter_config.json` + `adapter_model.safetensors`).
  /// - Throws: ``FlareError`` naming the file, tensor and offset of the first problem.
  public static func open(_ path: String) throws -> InspectInput {
    if isDirectory(path) {
      let config = "\(path)/adapter_config.json"
      let weights = "\(path)/adapter_model.safetensors"
      if fileExists(config) {
        let adapter = try PEFTConfig(path: config)
        guard fileExists(weights) else {
          if fileExists("\(path)/adapter_model.bin") {
            throw FlareError(
              "adapter", .unsupported,
              "only adapter_model.bin (a pickle) is present; Flare reads adapter_model.safetensors only",
              path: path)
          }
          throw FlareError(
            "adapter", .fileNotFound,
            "adapter_config.json has no adapter_model.safetensors beside it", path: path)
        }
        return InspectInput(
          path: path, kind: .adapterFolder, model: try SafetensorsModel(file: weights),
          adapter: adapter)
      }
      let model = try SafetensorsModel.open(path)
      return InspectInput(
        path: path, kind: model.isSharded ? .shardedIndex : .modelFolder, model: model, adapter: nil
      )
    }
    if !fileExists(path) {
      throw FlareError("io", .fileNotFound, "no such file or directory", path: path)
    }
    let model = try SafetensorsModel.open(path)
    return InspectInput(
      path: path, kind: model.isSharded ? .shardedIndex : .file, model: model, adapter: nil)
  }

  /// Whether `path` is to be read as GGUF: its name ends in `.gguf`, or it starts with the
  /// GGUF magic.
  public static func isGGUF(_ path: String) -> Bool {
    if path.lowercased().hasSuffix(".gguf") && !isDirectory(path) { return true }
    guard !isDirectory(path), let head = try? MappedFile(path: path), head.count >= 4 else {
      return false
    }
    return Array(head.bytes.prefix(4)) == Array("GGUF".utf8)
  }

  /// The tensors as decodable sources, in listing order.
  public var decodables: [DecodableTensor] {
    model.tensors.map { $0.decodable }
  }
}

extension TensorView {
  /// This tensor as a source of `Float` values (`C64` yields real and imaginary parts).
  public var decodable: DecodableTensor {
    let view = self
    let perElement = info.dtype.floatsPerElement
    return DecodableTensor(
      name: name, valueCount: info.elementCount * perElement, granularity: 8 * perElement
    ) { range, buffer in
      let elements = (range.lowerBound / perElement)..<(range.upperBound / perElement)
      view.decode(elements: elements, into: buffer)
      // One pass over the data: drop the mapped pages so a large file is not kept resident.
      view.releasePages(elements: elements)
    }
  }
}
