import FlareCore
import Foundation

/// The package root, found by walking up from this source file.
public let packageRoot: String = {
  var url = URL(fileURLWithPath: #filePath)
  while url.path != "/" {
    url.deleteLastPathComponent()
    if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) {
      return url.path
    }
  }
  return FileManager.default.currentDirectoryPath
}()

/// Absolute path of `Fixtures/<relative>`.
public func fixturePath(_ relative: String) -> String { "\(packageRoot)/Fixtures/\(relative)" }

/// Parses the JSON file `Fixtures/<relative>` with Flare's strict parser.
public func loadFixtureJSON(_ relative: String) throws -> JSONValue {
  try JSONParser.parse(try readSmallFile(fixturePath(relative)))
}

/// The cache of fetched real models (`$FLARE_CACHE`, default `~/.cache/flare`).
public var modelCache: String {
  if let cache = ProcessInfo.processInfo.environment["FLARE_CACHE"], !cache.isEmpty { return cache }
  return NSHomeDirectory() + "/.cache/flare"
}

/// The real all-MiniLM-L6-v2 model folder fetched by `scripts/fetch-models.sh`.
public var miniLMFolder: String { "\(modelCache)/models/all-MiniLM-L6-v2" }

/// Whether tests that need fetched models may be skipped (`FLARE_OFFLINE=1` set on purpose).
public var offline: Bool { ProcessInfo.processInfo.environment["FLARE_OFFLINE"] == "1" }

/// A fresh temporary folder, removed by the caller with ``removeTree(_:)``.
public func makeTemporaryFolder() -> String {
  let path = NSTemporaryDirectory() + "flare-test-" + UUID().uuidString
  try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}

/// Removes a folder and its contents.
public func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

/// Names of the files in a folder, sorted.
public func folderContents(_ path: String) -> [String] {
  ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}

/// Reads a whole file.
public func fileBytes(_ path: String) -> [UInt8] {
  guard let data = FileManager.default.contents(atPath: path) else { return [] }
  return [UInt8](data)
}

/// Writes bytes to a file (not atomically; for building test inputs).
public func writeBytes(_ bytes: [UInt8], to path: String) {
  _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

/// The result of running a built tool.
public struct ToolResult: Sendable {
  public var status: Int32
  public var stdout: String
  public var stderr: String
}

/// Runs the built executable `name` (from the same products folder as the tests; or the
/// program at `name` when it is an absolute path) with `arguments`, capturing its output.
public func runTool(_ name: String, _ arguments: [String], environment: [String: String]? = nil)
  throws -> ToolResult
{
  let products = productsFolder()
  let process = Process()
  // An absolute path runs that program instead (a shell, for instance).
  process.executableURL = URL(fileURLWithPath: name.hasPrefix("/") ? name : "\(products)/\(name)")
  process.arguments = arguments
  if let environment { process.environment = environment }
  let out = Pipe()
  let err = Pipe()
  process.standardOutput = out
  process.standardError = err
  try process.run()
  // Drain both pipes concurrently so a large output cannot block the child.
  nonisolated(unsafe) var errData = Data()
  let group = DispatchGroup()
  group.enter()
  DispatchQueue.global().async {
    errData = err.fileHandleForReading.readDataToEndOfFile()
    group.leave()
  }
  let outData = out.fileHandleForReading.readDataToEndOfFile()
  group.wait()
  process.waitUntilExit()
  return ToolResult(
    status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
    stderr: String(decoding: errData, as: UTF8.self))
}

/// The folder holding the built products (`.build/<triple>/debug`).
public func productsFolder() -> String {
  let bundle = Bundle.main.bundleURL
  if FileManager.default.fileExists(atPath: bundle.appendingPathComponent("flare-inspect").path) {
    return bundle.path
  }
  for candidate in ["\(packageRoot)/.build/debug", "\(packageRoot)/.build/release"]
  where FileManager.default.fileExists(atPath: "\(candidate)/flare-inspect") {
    return candidate
  }
  return bundle.path
}

/// The real SmolLM2-135M-Instruct GGUF (Q4_1) fetched by `scripts/fetch-models.sh`.
public var smolLM2GGUF: String {
  "\(modelCache)/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
}

/// A model the tests need is not in the cache.
public struct MissingModel: Error, CustomStringConvertible {
  public var description: String
  public init(description: String) { self.description = description }
}

/// An F32 HF folder of SmolLM2 made by `flare-convert` from ``smolLM2GGUF``, under the model
/// cache; made on first use (flare-convert writes it atomically, so a concurrent or interrupted
/// run never leaves half a folder).
/// - Returns: `nil` only when the GGUF is missing and ``offline`` is set (the test is skipped).
/// - Throws: ``MissingModel`` when the GGUF is missing otherwise, or if the conversion fails.
public func smolLM2HFFolder() throws -> String? {
  let folder = "\(modelCache)/models/smollm2-hf"
  if FileManager.default.fileExists(atPath: "\(folder)/model.safetensors") { return folder }
  guard FileManager.default.fileExists(atPath: smolLM2GGUF) else {
    if offline { return nil }
    throw MissingModel(
      description: "SmolLM2 is missing: run scripts/fetch-models.sh (or make models)")
  }
  let result = try runTool("flare-convert", [smolLM2GGUF, folder, "-q"])
  guard result.status == 0 || FileManager.default.fileExists(atPath: "\(folder)/model.safetensors")
  else {
    throw MissingModel(description: "flare-convert could not make \(folder): \(result.stderr)")
  }
  return folder
}

/// The real Gemma 3 270M GGUF (Q4_K_M) fetched by `scripts/fetch-models.sh`.
public var gemma3GGUF: String { "\(modelCache)/models/gemma3-270m/gemma-3-270m-q4_k_m.gguf" }

/// ``gemma3GGUF``, or `nil` when it is missing and ``offline`` is set (the test is skipped).
/// - Throws: ``MissingModel`` when it is missing otherwise.
public func requireGemma3GGUF() throws -> String? {
  if FileManager.default.fileExists(atPath: gemma3GGUF) { return gemma3GGUF }
  if offline { return nil }
  throw MissingModel(
    description: "Gemma 3 270M is missing: run scripts/fetch-models.sh (or make models)")
}

/// An F32 HF folder of Gemma 3 270M made by `flare-convert` from ``gemma3GGUF`` (tokenizer.json
/// rebuilt from its SentencePiece vocabulary, tokenizer.model written), under the model cache;
/// made on first use, and again when the folder there was written by an earlier flare-convert
/// (its tokenizer.json is not the one `Fixtures/families/gemma3-270m.json` was made from, or it
/// has no tokenizer.model).
/// - Returns: `nil` only when the GGUF is missing and ``offline`` is set (the test is skipped).
/// - Throws: ``MissingModel`` when the GGUF is missing otherwise, or if the conversion fails.
public func gemma3HFFolder() throws -> String? {
  let folder = "\(modelCache)/models/gemma3-hf"
  let expected = try loadFixtureJSON("families/gemma3-270m.json")["converted"]?[
    "tokenizer_json_crc32"]?.uint64Value
  func current() -> Bool {
    guard FileManager.default.fileExists(atPath: "\(folder)/tokenizer.model"),
      let bytes = try? readSmallFile("\(folder)/tokenizer.json")
    else { return false }
    return UInt64(CRC32.checksum(bytes)) == expected
  }
  if current() { return folder }
  guard let gguf = try requireGemma3GGUF() else { return nil }
  if FileManager.default.fileExists(atPath: "\(folder)/model.safetensors") {
    // Written by an earlier flare-convert: remade.
    let result = try runTool("flare-convert", [gguf, folder, "-q", "--force"])
    guard result.status == 0 else {
      throw MissingModel(description: "flare-convert could not remake \(folder): \(result.stderr)")
    }
    return folder
  }
  let result = try runTool("flare-convert", [gguf, folder, "-q"])
  guard result.status == 0 || FileManager.default.fileExists(atPath: "\(folder)/model.safetensors")
  else {
    throw MissingModel(description: "flare-convert could not make \(folder): \(result.stderr)")
  }
  return folder
}
