import FlareCLI
import FlareCore
import FlareSafetensors

extension ProgressBar: ProgressReporter {}

extension InspectCommand {
  /// `--diff A B`: per-tensor differences plus missing, extra and mismatched tensors.
  /// Exit 1 when anything differs beyond the tolerance.
  static func runDiff(_ pathA: String, _ pathB: String, options: Options) throws -> ExitStatus {
    let a = try InspectInput.open(pathA)
    let b = try InspectInput.open(pathB)
    let namesB = Set(b.model.tensors.map(\.name))
    let namesA = Set(a.model.tensors.map(\.name))
    var pairs: [(TensorView, TensorView)] = []
    var mismatched: [(TensorView, TensorView)] = []
    var missing: [String] = []
    for view in a.model.tensors {
      guard let other = b.model.view(view.name) else {
        missing.append(view.name)
        continue
      }
      if view.shape != other.shape || view.dtype.floatsPerElement != other.dtype.floatsPerElement {
        mismatched.append((view, other))
      } else {
        pairs.append((view, other))
        if view.dtype != other.dtype { mismatched.append((view, other)) }
      }
    }
    let extra = b.model.tensors.map(\.name).filter { !namesA.contains($0) }
    _ = namesB
    let total = pairs.reduce(0) { $0 + $1.0.info.elementCount }
    let bar = ProgressBar(
      label: "diff", total: total, enabled: !options.quiet && total > 50_000_000)
    let differences = TensorDifference.compute(
      pairs: pairs.map { ($0.0.decodable, $0.1.decodable) }, progress: bar)
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
              ("dtype", .string(x.dtype.rawValue)), ("shape", .array(x.shape.map { .integer($0) })),
            ])
          ),
          (
            "b",
            .object([
              ("dtype", .string(y.dtype.rawValue)), ("shape", .array(y.shape.map { .integer($0) })),
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
        "diff \(pathA) (reference, \(a.model.tensors.count) tensors) vs \(pathB) (\(b.model.tensors.count) tensors), tolerance \(Format.number(options.tolerance))"
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
        "mismatch: \(x.name.escapedForMessage): \(x.dtype.rawValue) \(Format.shape(x.shape)) vs \(y.dtype.rawValue) \(Format.shape(y.shape))"
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
