import FlareCLI
import FlareCore
import FlareGGUF

/// `flare-convert`: HF Llama folders ↔ GGUF, and GGUF re-quantization.
public enum ConvertCommand {
  public static let spec = CommandSpec(
    name: "flare-convert",
    overview:
      "Convert Llama-family models between Hugging Face folders and GGUF, or re-quantize a GGUF.",
    positionals: [
      PositionalSpec(
        "input",
        help: "An HF model folder (config.json, safetensors, tokenizer.json) or a .gguf file."),
      PositionalSpec("output", help: "A .gguf file, or a folder for an HF model."),
    ],
    options: [
      OptionSpec(
        "--outtype", value: "type", default: "auto",
        help:
          "auto, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k or q6_k (1-D tensors stay F32)."
      ),
      OptionSpec(
        "--tokenizer-pre", value: "name",
        help: "HF to GGUF: name the pre-tokenizer (gpt-2, smollm, llama-bpe, qwen2)."),
      OptionSpec(
        "--pure",
        help:
          "Quantize every 2-D tensor to --outtype; by default the output head gets Q6_K, as llama.cpp does."
      ),
      OptionSpec(
        "--threads", value: "n",
        help: "Threads for (de)quantization (default: all cores; the output does not depend on it)."
      ),
      OptionSpec("--force", help: "Replace existing output files."),
      OptionSpec("--json", help: "Print a JSON summary."),
      OptionSpec("--quiet", short: "-q", help: "Print nothing on success; no progress bar."),
    ],
    discussion: """
      DIRECTIONS:
        folder -> file.gguf     HF to GGUF: llama keys, tokenizer keys, names, Q/K RoPE permutation
        file.gguf -> folder     GGUF to HF: dequantized f32 (or f16/bf16), Q/K un-permuted, tokenizer.json
        file.gguf -> file.gguf  re-quantize to --outtype, metadata kept

      EXIT STATUS:
        0 on success, 1 on a failure (nothing is left at the output), 64 on a usage error.
      """)

  public static func run(_ arguments: ParsedArguments) throws -> ExitStatus {
    let input = arguments.positionals[0]
    let output = arguments.positionals[1]
    let typeName = arguments.value("--outtype") ?? "auto"
    guard let outtype = OutputType(rawValue: typeName.lowercased()) else {
      throw UsageError("the value '\(typeName)' is invalid for '--outtype <type>'")
    }
    let force = arguments.flag("--force")
    let quiet = arguments.flag("--quiet")
    if let threads = try arguments.int("--threads", spec: spec) {
      guard threads >= 1 else {
        throw UsageError("the value '\(threads)' is invalid for '--threads <n>'")
      }
      GGMLParallelism.threads = threads
    }
    let bar = ProgressBar(label: "converting", total: 1, enabled: !quiet)
    let progress: Converter.Progress = { done, count in bar.set(done: done, of: count) }
    defer { bar.finish() }
    let inputIsGGUF =
      !isDirectory(input) && (input.lowercased().hasSuffix(".gguf") || hasGGUFMagic(input))
    let outputIsGGUF = output.lowercased().hasSuffix(".gguf")
    let report: ConversionReport
    if inputIsGGUF {
      let file = try GGUFFile(path: input)
      if outputIsGGUF {
        report = try Converter.requantize(
          file, output: output, outtype: outtype, overwrite: force, pure: arguments.flag("--pure"),
          progress: progress)
      } else {
        report = try Converter.ggufToHF(
          file, folder: output, outtype: outtype, overwrite: force, progress: progress)
      }
    } else {
      guard isDirectory(input) else {
        if !fileExists(input) {
          throw FlareError("io", .fileNotFound, "no such file or directory", path: input)
        }
        throw UsageError("the input must be an HF model folder or a .gguf file")
      }
      guard outputIsGGUF else {
        throw UsageError("converting an HF folder needs an output ending in .gguf")
      }
      report = try Converter.hfToGGUF(
        folder: input, output: output, outtype: outtype,
        tokenizerPre: arguments.value("--tokenizer-pre"),
        overwrite: force, pure: arguments.flag("--pure"), progress: progress)
    }
    bar.finish()
    if arguments.flag("--json") {
      Console.out(
        JSONWriter.compact(
          .object([
            ("output", .string(report.output)), ("files", .array(report.files.map { .string($0) })),
            ("tensors", .integer(report.tensors)),
            (
              "types",
              .object(report.types.sorted { $0.key < $1.key }.map { ($0.key, .integer($0.value)) })
            ),
            ("bytes", .integer(report.bytes)), ("notes", .array(report.notes.map { .string($0) })),
          ])) + "\n")
    } else if !quiet {
      let types = report.types.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(
        separator: ", ")
      Console.out(
        "wrote \(report.output): \(report.tensors) tensors (\(types)), \(report.bytes) bytes of tensor data\n"
      )
      for note in report.notes { Console.out("note: \(note)\n") }
    }
    return .success
  }

  static func hasGGUFMagic(_ path: String) -> Bool {
    guard let file = try? MappedFile(path: path), file.count >= 4 else { return false }
    return Array(file.bytes.prefix(4)) == Array("GGUF".utf8)
  }
}
