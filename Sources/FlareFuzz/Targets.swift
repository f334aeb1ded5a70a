import FlareAdapters
import FlareArchitectures
import FlareCLI
import FlareConvert
import FlareCore
import FlareGGUF
import FlareInspect
import FlareModels
import FlareSafetensors
import FlareTokenizers
import FlareTrain

extension FuzzTarget {
  /// Every target, one per untrusted input (`Fixtures/fuzz/README.md` lists their corpora).
  public static let all: [FuzzTarget] = [
    FuzzTarget(
      "safetensors",
      "a .safetensors file: header, offsets, sizes and every value (flare-inspect --check --data)",
      seeds: [
        "Fixtures/safetensors", "Fixtures/safetensors/malformed", "Fixtures/safetensors/sharded",
        "Fixtures/safetensors/peft-adapter/adapter_model.safetensors",
        "Fixtures/peft/lora-plain/adapter_model.safetensors",
      ]
    ) { bytes, scratch in
      inspectCheck(scratch.write(bytes, to: "input.safetensors"))
    },
    FuzzTarget(
      "shard-index",
      "model.safetensors.index.json beside two valid shards (flare-inspect --check --data)",
      seeds: ["Fixtures/safetensors/sharded/model.safetensors.index.json"]
    ) { bytes, scratch in
      let folder = scratch.subfolder("sharded")
      for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        scratch.copyOnce("\(scratch.fixtures)/safetensors/sharded/\(shard)", to: "sharded/\(shard)")
      }
      scratch.write(bytes, to: "sharded/model.safetensors.index.json")
      return inspectCheck("\(folder)/model.safetensors.index.json")
    },
    FuzzTarget(
      "gguf",
      "a .gguf file: flare-inspect --check --data, then every tensor dequantized (accepted: the reader opens it and reads every tensor)",
      seeds: ["Fixtures/gguf", "Fixtures/gguf/malformed"]
    ) { bytes, scratch in
      let path = scratch.write(bytes, to: "input.gguf")
      _ = inspectCheck(path)
      guard let file = try? GGUFFile(path: path) else { return false }
      return file.tensors.allSatisfy { (try? file.floats($0)) != nil }
    },
    FuzzTarget(
      "gguf-model",
      "a .gguf model: the decoder hyperparameters and the tokenizer from its metadata",
      seeds: ["Fixtures/gguf/tiny-llama.gguf", "Fixtures/gguf/metadata-all-types.gguf"]
    ) { bytes, scratch in
      let path = scratch.write(bytes, to: "model.gguf")
      guard let file = try? GGUFFile(path: path) else { return false }
      let config = try? DecoderConfig(gguf: file)
      guard let tokenizer = try? Tokenizer.load(gguf: file) else { return false }
      exercise(tokenizer)
      return config != nil
    },
    FuzzTarget(
      "tokenizer-model",
      "a SentencePiece tokenizer.model in the tiny Gemma 3 folder Fixtures/families/spm-gemma3: flare-convert HF → GGUF (the model read, the vocabulary built and written), then the GGUF's tokenizer encodes and decodes",
      seeds: [
        "Fixtures/families/spm-gemma3/tokenizer.model",
        "Fixtures/families/spm-llama2/tokenizer.model",
      ]
    ) { bytes, scratch in
      let folder = scratch.subfolder("spm")
      for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        scratch.copyOnce("\(scratch.fixtures)/families/spm-gemma3/\(name)", to: "spm/\(name)")
      }
      scratch.write(bytes, to: "spm/tokenizer.model")
      let output = "\(scratch.folder)/spm.gguf"
      guard
        (try? Converter.hfToGGUF(
          folder: folder, output: output, outtype: .auto, tokenizerPre: nil, overwrite: true))
          != nil,
        let file = try? GGUFFile(path: output), let tokenizer = try? Tokenizer.load(gguf: file)
      else { return false }
      exercise(tokenizer)
      return true
    },
    FuzzTarget(
      "ggml-blocks",
      "ggml blocks: the first byte is the ggml type id, the rest whole blocks to dequantize"
    ) { bytes, _ in
      guard let first = bytes.first, let type = GGMLType.withID(UInt32(first)) else { return false }
      let rest = UnsafeRawBufferPointer(rebasing: bytes[1...])
      let count = rest.count / type.typeSize * type.blockSize
      var output = [Float](repeating: 0, count: count)
      return output.withUnsafeMutableBufferPointer { out in
        let raw = UnsafeRawBufferPointer(
          rebasing: rest[0..<(count / type.blockSize * type.typeSize)])
        return (try? type.dequantize(raw, count: count, into: out)) != nil
      }
    },
    FuzzTarget(
      "peft-adapter",
      "a PEFT adapter folder: 2 bytes (little-endian) give the length of adapter_config.json, the rest is adapter_model.safetensors"
    ) { bytes, scratch in
      let (config, weights) = split(bytes)
      _ = scratch.subfolder("adapter")
      let folder = "\(scratch.folder)/adapter"
      scratch.write(config, to: "adapter/adapter_config.json")
      scratch.write(weights, to: "adapter/adapter_model.safetensors")
      let checked = inspectCheck(folder)
      guard let adapter = try? PEFTAdapter(folder: folder) else { return false }
      touch(adapter)
      return checked
    },
    FuzzTarget(
      "peft-config", "adapter_config.json alone",
      seeds: [
        "Fixtures/peft/*/adapter_config.json",
        "Fixtures/safetensors/peft-adapter/adapter_config.json",
        "Fixtures/training/*/*/adapter_config.json", "Fixtures/encoders/*/adapter_config.json",
      ]
    ) { bytes, _ in
      (try? PEFTConfig(json: Array(bytes), path: "adapter_config.json")) != nil
    },
    FuzzTarget("flare-config", "flare_config.json (a FLARE adapter's fusion settings)") {
      bytes, scratch in
      (try? FLAREConfig(path: scratch.write(bytes, to: "flare_config.json"))) != nil
    },
    FuzzTarget(
      "gguf-lora", "a llama.cpp LoRA adapter GGUF (read as a PEFT adapter)",
      seeds: ["Fixtures/peft/smollm2-demo-lora.gguf"]
    ) { bytes, scratch in
      guard let adapter = try? PEFTAdapter(ggufAdapter: scratch.write(bytes, to: "adapter.gguf"))
      else { return false }
      touch(adapter)
      return true
    },
    FuzzTarget(
      "llama-config", "a decoder's config.json (any family of ModelFamily)",
      seeds: ["Fixtures/peft/*/config.json", "Fixtures/families/*/config.json"]
    ) {
      bytes, _ in
      guard let json = try? JSONParser.parse(bytes) else { return false }
      return (try? DecoderConfig(hfConfig: json, path: "config.json")) != nil
    },
    FuzzTarget(
      "bert-config", "a BERT / XLM-RoBERTa config.json", seeds: ["Fixtures/encoders/*/config.json"]
    ) { bytes, _ in
      guard let json = try? JSONParser.parse(bytes) else { return false }
      return (try? BERTConfig(hfConfig: json, path: "config.json")) != nil
    },
    FuzzTarget(
      "tokenizer-json",
      "a Hugging Face tokenizer.json (BPE, WordPiece or Unigram), then encode and decode"
    ) { bytes, scratch in
      let path = scratch.write(bytes, to: "tokenizer.json")
      guard let tokenizer = try? Tokenizer.load(tokenizerJSON: path) else { return false }
      exercise(tokenizer)
      return true
    },
    FuzzTarget(
      "json", "Flare's strict JSON parser; a parsed value must write and parse back to itself",
      seeds: [
        "Fixtures/peft/*/adapter_config.json", "Fixtures/encoders/*/config.json",
        "Fixtures/safetensors/sharded/model.safetensors.index.json", "Fixtures/fuzz/flare-config",
        "Fixtures/golden/gguf-dump-tiny-llama-array.json", "Fixtures/golden/convert-permute.json",
        "Fixtures/training/llama-run/trajectory.json",
      ]
    ) { bytes, _ in
      guard let value = try? JSONParser.parse(bytes) else { return false }
      let text = JSONWriter.compact(value)
      let again = try? JSONParser.parse(Array(text.utf8))
      precondition(again == value, "JSON round trip changed the value: \(text)")
      return true
    },
    FuzzTarget(
      "training-data",
      "a JSONL training file: the first byte picks the task (and FLARE's source field), then the label set"
    ) { bytes, _ in
      guard let first = bytes.first else { return false }
      let task: TrainingTask = first & 1 == 0 ? .causalLM : .classification
      let rest = Array(bytes.dropFirst())
      guard
        let examples = try? JSONLReader.parse(
          rest, path: "train.jsonl", task: task, source: first & 2 != 0)
      else { return false }
      return task == .causalLM || (try? LabelSet(training: examples, path: "train.jsonl")) != nil
    },
  ]

  /// `flare-inspect --check --data --json --quiet PATH` in this process (output discarded by
  /// the caller: the fuzzing process closes its standard output).
  static func inspectCheck(_ path: String) -> Bool {
    ToolMain.runReturningStatus(
      InspectCommand.spec, arguments: ["--check", "--data", "--json", "--quiet", path]
    ) { arguments in try InspectCommand.run(arguments) } == .success
  }

  /// Reads every tensor of `adapter` as a merge would.
  static func touch(_ adapter: PEFTAdapter) {
    for module in adapter.modules {
      _ = module.a.floats()
      _ = module.b.floats()
      _ = module.bBias?.floats()
      _ = module.magnitude?.floats()
    }
  }

  /// Encodes a text with every kind of character a tokenizer meets, decodes the ids, and
  /// looks up every piece.
  static func exercise(_ tokenizer: Tokenizer) {
    let text = "Hello, world! ¿Qué tal? 你好 \u{1F600}  tabs\tand\nnew lines 12345 <s></s>"
    let ids = tokenizer.encode(text, addSpecial: true, parseSpecial: true)
    for id in ids {
      precondition(id >= 0 && id < tokenizer.vocabularySize, "id \(id) out of range")
    }
    _ = tokenizer.decode(ids)
    _ = tokenizer.decode(ids, skipSpecial: true)
  }

  /// Splits `bytes` at the little-endian 16-bit length in its first two bytes.
  static func split(_ bytes: UnsafeRawBufferPointer) -> (
    UnsafeRawBufferPointer, UnsafeRawBufferPointer
  ) {
    guard bytes.count >= 2 else { return (bytes, UnsafeRawBufferPointer(rebasing: bytes[0..<0])) }
    let length = min(Int(bytes[0]) | Int(bytes[1]) << 8, bytes.count - 2)
    return (
      UnsafeRawBufferPointer(rebasing: bytes[2..<(2 + length)]),
      UnsafeRawBufferPointer(rebasing: bytes[(2 + length)...])
    )
  }
}
