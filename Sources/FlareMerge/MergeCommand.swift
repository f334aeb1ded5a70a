import FlareAdapters
import FlareCLI
import FlareCore

/// `flare-merge`: bake PEFT LoRA adapters into base weights.
public enum MergeCommand {
  public static let spec = CommandSpec(
    name: "flare-merge",
    overview: "Bake LoRA adapters into base weights, exactly: F32 deltas, one rounding, streamed.",
    positionals: [],
    options: [
      OptionSpec(
        "--base", value: "path",
        help: "A .safetensors file, shard index, HF model folder or .gguf file."),
      OptionSpec(
        "--adapter", value: "path[:weight]",
        help: "A PEFT LoRA adapter folder, optionally weighted (repeatable)."),
      OptionSpec(
        "--output", value: "path",
        help: "Where to write: a .safetensors file, a folder, or a .gguf file."),
      OptionSpec(
        "--outtype", value: "type",
        help:
          "Type of the merged tensors (f32, f16, bf16; for GGUF also q8_0, q4_0, …); default: each keeps its own."
      ),
      OptionSpec(
        "--combine", value: "method", default: "sum",
        help:
          "sum: merge the weighted sum into the base; cat: write one combined adapter to --output (exact)."
      ),
      OptionSpec(
        "--rank", value: "k", help: "With --combine svd: the rank of the combined adapter."),
      OptionSpec(
        "--threads", value: "n", help: "Threads for the delta products (default: all cores)."),
      OptionSpec(
        "--allow-unknown",
        help: "Ignore adapter tensors that are not LoRA weights instead of failing."),
      OptionSpec(
        "--flare-target-only",
        help:
          "FLARE adapters with a non-linear fusion: fold the plain-LoRA fallback, with a warning."),
      OptionSpec("--dry-run", help: "Print the plan and write nothing."),
      OptionSpec(
        "--verify", help: "Re-read the output and check every merged tensor against base + ΔW."),
      OptionSpec("--json", help: "Print a JSON report."),
      OptionSpec("--force", help: "Replace an existing output."),
      OptionSpec("--quiet", short: "-q", help: "Print nothing on success; no progress bar."),
    ],
    discussion: """
      EXIT STATUS:
        0 on success, 1 on a failure (nothing is written), 64 on a usage error.
      """)

  public static func run(_ arguments: ParsedArguments) throws -> ExitStatus {
    guard let basePath = arguments.value("--base") else {
      throw UsageError("missing expected option '--base <path>'")
    }
    let adapterSpecs = arguments.allValues("--adapter")
    guard !adapterSpecs.isEmpty else {
      throw UsageError("missing expected option '--adapter <path[:weight]>'")
    }
    let dryRun = arguments.flag("--dry-run")
    let output = arguments.value("--output")
    guard output != nil || dryRun else {
      throw UsageError("missing expected option '--output <path>'")
    }
    let combine = arguments.value("--combine") ?? "sum"
    guard ["sum", "cat", "svd"].contains(combine) else {
      throw UsageError("the value '\(combine)' is invalid for '--combine <method>'")
    }
    let svdRank = try arguments.int("--rank", spec: spec)
    if combine == "svd" {
      guard let svdRank, svdRank > 0 else {
        throw UsageError("'--combine svd' needs '--rank <k>' (a positive rank)")
      }
    } else if svdRank != nil {
      throw UsageError("'--rank' needs '--combine svd'")
    }
    let threads = try arguments.int("--threads", spec: spec) ?? ProcessorCount.online
    guard threads > 0 else {
      throw UsageError("the value '\(threads)' is invalid for '--threads <n>'")
    }
    let quiet = arguments.flag("--quiet")
    let outtype = arguments.value("--outtype")?.lowercased()

    let base = try Merger.openBase(basePath)
    var adapters: [WeightedAdapter] = []
    for text in adapterSpecs {
      let (path, weight) = PEFTAdapter.splitWeight(text)
      let adapter = try PEFTAdapter.open(path, allowUnknown: arguments.flag("--allow-unknown"))
      adapters.append(WeightedAdapter(adapter: adapter, weight: weight))
    }
    if case .gguf = base, let output, !output.lowercased().hasSuffix(".gguf") {
      throw UsageError("a GGUF base needs an output ending in .gguf")
    }
    let plan = try Merger.plan(
      base: base, adapters: adapters, outtype: outtype,
      flareTargetOnly: arguments.flag("--flare-target-only"))

    if dryRun {
      printPlan(plan, adapters: adapters, json: arguments.flag("--json"))
      return .success
    }
    guard let output else { return .usage }
    if combine != "sum" {
      let (files, discarded) = try Merger.combine(
        adapters, svdRank: combine == "svd" ? svdRank : nil, output: output,
        overwrite: arguments.flag("--force"), threads: threads)
      let worst = discarded.max { $0.energy < $1.energy }
      if arguments.flag("--json") {
        Console.out(
          JSONWriter.compact(
            .object([
              ("output", .string(output)), ("files", .array(files.map { .string($0) })),
              ("discarded_energy", .object(discarded.map { ($0.module, .exact($0.energy)) })),
            ])) + "\n")
      } else if !quiet {
        if let worst {
          Console.out(
            "wrote a rank-\(svdRank ?? 0) adapter to \(output): \(discarded.count) modules; discarded energy (share of the squared norm of each delta dropped) at most \(worst.energy) (\(worst.module))\n"
          )
        } else {
          Console.out(
            "wrote a combined adapter to \(output): \(plan.changes.count) modules, rank = the sum of the adapters' ranks, scaling 1 (exactly the weighted sum)\n"
          )
        }
      }
      return .success
    }
    let bar = ProgressBar(label: "merging", total: 1, enabled: !quiet)
    bar.showsByteRate = true
    let report = try Merger.merge(
      base: base, basePath: basePath, adapters: adapters, plan: plan, output: output,
      outtype: outtype,
      overwrite: arguments.flag("--force"), threads: threads,
      progress: { done, total in bar.set(done: done, of: total) })
    bar.finish()
    var verified: Float?
    var forward: (check: ForwardCheck?, reason: String?) = (nil, nil)
    if arguments.flag("--verify") {
      verified = try Merger.verify(
        output: output, base: base, adapters: adapters, plan: plan, threads: threads)
      forward = try Merger.verifyForward(
        output: output, basePath: basePath, adapters: adapters, report: report)
    }
    if arguments.flag("--json") {
      var json = reportJSON(report, verified: verified)
      if arguments.flag("--verify"), case .object(var members) = json {
        members.append(("forward", forwardJSON(forward)))
        json = .object(members)
      }
      Console.out(JSONWriter.compact(json) + "\n")
    } else if !quiet {
      Console.out(
        "merged \(report.tensors.count) tensors from \(adapters.count) adapter\(adapters.count == 1 ? "" : "s") into \(output) (\(report.untouched) copied unchanged, \(report.bytes) bytes of tensor data)\n"
      )
      for tensor in report.tensors {
        let scales = tensor.sources.map { "r=\($0.2) scale=\(formatScale($0.1))" }.joined(
          separator: ", ")
        Console.out(
          "  \(tensor.name): \(tensor.kind) \(scales) -> \(tensor.outputType), max |change| \(tensor.maxChange)\n"
        )
      }
      for note in report.notes { Console.out("note: \(note)\n") }
      if let verified {
        Console.out(
          "verified: every merged tensor equals base + ΔW rounded once (max |stored − F32 merge| \(verified))\n"
        )
      }
      if let check = forward.check {
        let c = check.comparison
        Console.out(
          "verified forward pass: merged vs base + adapters unmerged on \(check.prompts) prompts (\(c.positions) positions): max |\(check.quantity == "logits" ? "logit" : "hidden-state") difference| \(c.maxAbsDifference), mean \(c.meanAbsDifference), top-1 agreement \(c.top1Agreements)/\(c.positions)\(check.exact ? " (F32 output: bound \(ForwardCheck.exactTolerance))" : " (rounded output: reported, not bounded)")\n"
        )
      } else if let reason = forward.reason {
        Console.out("note: no forward-pass check: \(reason)\n")
      }
    }
    return .success
  }

  static func formatScale(_ value: Double) -> String {
    value == value.rounded() && abs(value) < 1e9 ? String(Int(value)) : "\(value)"
  }

  static func printPlan(_ plan: MergePlan, adapters: [WeightedAdapter], json: Bool) {
    if json {
      let tensors = plan.changes.map { change -> JSONValue in
        .object([
          ("name", .string(change.tensor)),
          (
            "kind",
            .string(change.kind == .lora ? "lora" : change.kind == .bias ? "lora_bias" : "replace")
          ),
          ("output_type", .string(change.outputType)),
          (
            "sources",
            .array(
              change.sources.map { source in
                .object([
                  ("adapter", .string(adapters[source.adapter].adapter.path)),
                  ("module", .string(source.module.path)),
                  ("rank", .integer(source.module.rank)), ("alpha", .exact(source.module.alpha)),
                  ("scaling", .exact(source.module.scaling)),
                  ("weight", .exact(adapters[source.adapter].weight)),
                ])
              })
          ),
        ])
      }
      Console.out(
        JSONWriter.compact(
          .object([
            ("dry_run", .bool(true)), ("tensors", .array(tensors)),
            ("untouched", .integer(plan.untouched)),
            ("notes", .array(plan.notes.map { .string($0) })),
          ])) + "\n")
      return
    }
    Console.out(
      "plan: \(plan.changes.count) tensors change, \(plan.untouched) are copied unchanged\n")
    for change in plan.changes {
      let sources = change.sources.map { source -> String in
        let input = adapters[source.adapter]
        let scale = formatScale(input.weight * source.module.scaling)
        return
          "\(AtomicFileWriter.baseName(of: input.adapter.path)) r=\(source.module.rank) alpha=\(formatScale(source.module.alpha)) scale=\(scale)"
      }
      let kind = change.kind == .replace ? "replaced" : change.kind == .bias ? "bias +=" : "+="
      Console.out(
        "  \(change.tensor) \(kind) \(sources.joined(separator: " + ")) -> \(change.outputType)\n")
    }
    for note in plan.notes { Console.out("note: \(note)\n") }
  }

  static func forwardJSON(_ forward: (check: ForwardCheck?, reason: String?)) -> JSONValue {
    guard let check = forward.check else {
      return .object([("checked", .bool(false)), ("reason", .string(forward.reason ?? ""))])
    }
    let c = check.comparison
    return .object([
      ("checked", .bool(true)), ("compared", .string(check.quantity)),
      ("prompts", .integer(check.prompts)),
      ("positions", .integer(c.positions)), ("max_abs_diff", .float(c.maxAbsDifference)),
      ("mean_abs_diff", .exact(c.meanAbsDifference)), ("top1_agreement", .exact(c.top1Agreement)),
      ("bounded", .bool(check.exact)),
    ])
  }

  static func reportJSON(_ report: MergeReport, verified: Float?) -> JSONValue {
    .object([
      ("output", .string(report.output)), ("files", .array(report.files.map { .string($0) })),
      (
        "tensors",
        .array(
          report.tensors.map { tensor in
            .object([
              ("name", .string(tensor.name)), ("kind", .string(tensor.kind)),
              ("output_type", .string(tensor.outputType)),
              ("max_change", .exact(Double(tensor.maxChange))),
              (
                "sources",
                .array(
                  tensor.sources.map {
                    .object([
                      ("adapter", .string($0.0)), ("scale", .exact($0.1)), ("rank", .integer($0.2)),
                    ])
                  })
              ),
            ])
          })
      ),
      ("untouched", .integer(report.untouched)), ("bytes", .integer(report.bytes)),
      ("notes", .array(report.notes.map { .string($0) })),
      ("verified", verified.map { .exact(Double($0)) } ?? .null),
    ])
  }
}

/// The number of online processors.
public enum ProcessorCount {
  public static var online: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
}

#if canImport(Glibc)
  import Glibc
#endif
