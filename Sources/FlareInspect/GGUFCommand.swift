import FlareArchitectures
import FlareCLI
import FlareCore
import FlareGGUF

extension InspectCommand {
  /// Lists, checks or summarises one GGUF file. The default text is gguf-dump's, line for line.
  static func inspectGGUF(_ path: String, options: Options) -> ExitStatus {
    let file: GGUFFile
    do {
      file = try GGUFFile(path: path)
    } catch {
      report(failure: error.inFile(path), path: path, options: options)
      return .failure
    }
    var status = ExitStatus.success
    var document: JSONValue = .null
    if options.json {
      document = GGUFListing.document(
        file, path: path, tensors: !options.noTensors, arrays: options.jsonArray)
    }
    var text: [String] = []
    if options.check {
      let unsupported = file.tensors.filter { !$0.type.canDequantize }
      var line =
        "\(path): OK: GGUF v\(file.version), \(file.metadata.count) keys, \(file.tensors.count) tensors; header, types, offsets and alignment (\(file.alignment)) valid"
      if let family = file.value("general.architecture")?.stringValue.flatMap(ModelFamily.gguf) {
        // The hyperparameters every tool runs the model with, checked as they would be.
        do {
          _ = try DecoderConfig(gguf: file)
        } catch {
          report(failure: error.inFile(path), path: path, options: options)
          return .failure
        }
        line += "; \(family) hyperparameters consistent with the tensors"
      }
      var problems: [String] = []
      var checkJSON: [(String, JSONValue)] = []
      if options.data {
        let tensors = file.tensors.filter { $0.type.canDequantize }
        let stats = computeStats(
          tensors.map { file.decodable($0) }, label: "scanning", options: options)
        var bad: [JSONValue] = []
        for (tensor, stat) in zip(tensors, stats) where stat.nanCount > 0 || stat.infCount > 0 {
          problems.append(
            "tensor '\(tensor.name.escapedForMessage)' has \(stat.nanCount) NaN and \(stat.infCount) Inf values"
          )
          bad.append(
            .object([
              ("name", .string(tensor.name)), ("nan", .integer(stat.nanCount)),
              ("inf", .integer(stat.infCount)),
            ]))
        }
        checkJSON.append(
          (
            "data",
            .object([("scanned_tensors", .integer(tensors.count)), ("non_finite", .array(bad))])
          ))
        if problems.isEmpty { line += "; no NaN or Inf in \(tensors.count) dequantized tensors" }
      }
      if problems.isEmpty {
        text.append(line)
      } else {
        status = .failure
        text.append("\(path): FAILED: \(problems.count) tensors hold NaN or Inf values")
        text += problems.map { "  \($0)" }
      }
      if !unsupported.isEmpty {
        text.append(
          "  note: \(unsupported.count) tensors have types Flare cannot dequantize (\(Set(unsupported.map(\.type.name)).sorted().joined(separator: ", ")))"
        )
      }
      checkJSON.insert(("ok", .bool(problems.isEmpty)), at: 0)
      document = merge(document, ("check", .object(checkJSON)))
    } else if !options.json && !options.stats {
      text += GGUFListing.text(file, tensors: !options.noTensors)
    }
    if options.stats {
      let tensors = file.tensors.filter { $0.type.canDequantize }
      let stats = computeStats(tensors.map { file.decodable($0) }, label: "stats", options: options)
      if options.json {
        let entries = zip(tensors, stats).map { tensor, stat -> (String, JSONValue) in
          (tensor.name, statsJSON(stat))
        }
        document = merge(document, ("stats", .object(entries)))
      } else {
        var rows: [[String]] = [["#", "name", "type", "min", "max", "mean", "std", "nan", "inf"]]
        for (i, (tensor, stat)) in zip(tensors, stats).enumerated() {
          rows.append([
            String(i), tensor.name.escapedForMessage, tensor.type.name,
            Format.number(stat.min.map(Double.init)),
            Format.number(stat.max.map(Double.init)), Format.number(stat.mean),
            Format.number(stat.std),
            String(stat.nanCount), String(stat.infCount),
          ])
        }
        text.append(
          "\(path): statistics of \(stats.count) dequantized tensors (finite values; std with ddof=0)"
        )
        text += Format.table(rows, rightAligned: [0, 3, 4, 5, 6, 7, 8])
      }
    }
    if options.json {
      Console.out(JSONWriter.compact(document) + "\n")
    } else if !text.isEmpty {
      Console.out(text.joined(separator: "\n") + "\n")
    }
    return status
  }

  static func merge(_ document: JSONValue, _ member: (String, JSONValue)) -> JSONValue {
    .object((document.objectMembers ?? []) + [member])
  }
}
