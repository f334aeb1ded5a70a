import FlareCLI
import FlareCore
import FlareFuzz

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

// flare-fuzz: Flare's fuzz targets (developer tool; see scripts/RELIABILITY.md).
//
// Built with libFuzzer (`make fuzz`: -sanitize=fuzzer,address -DFLARE_LIBFUZZER) it is
//   flare-fuzz TARGET [libFuzzer options] [corpus folders]
// Built plainly (every `swift build`) it replays inputs without the fuzzer:
//   flare-fuzz replay TARGET [FILE|FOLDER...]  (no paths: the target's committed corpus)
//   flare-fuzz corpus TARGET                  (the corpus files, one per line)
//   flare-fuzz list

let usage = """
  usage: flare-fuzz TARGET [libFuzzer options] [corpus...]   (a build with -DFLARE_LIBFUZZER)
         flare-fuzz replay TARGET [--root DIR] [FILE|FOLDER...]
         flare-fuzz corpus TARGET [--root DIR]
         flare-fuzz list

  Runs one of Flare's fuzz targets. Each target feeds bytes to the reader a tool uses; a
  refused input is the normal outcome, a trap or a sanitizer report is a finding. `replay`
  without paths runs the committed corpus (Fixtures/fuzz/TARGET and the target's seeds among
  the other fixtures); paths are relative to the repository's root, the current folder
  unless --root names it.

  """

/// Runs `target` over one input in `scratch`.
@discardableResult
func runOne(
  _ target: FuzzTarget, _ data: UnsafePointer<UInt8>?, _ size: Int, _ scratch: FuzzScratch
)
  -> Bool
{
  target.run(UnsafeRawBufferPointer(start: data, count: size), scratch)
}

/// Points standard output at /dev/null (the tools' readers print their verdicts there).
func silenceStandardOutput() {
  let null = open("/dev/null", O_WRONLY)
  if null >= 0 {
    dup2(null, 1)
    close(null)
  }
}

func listTargets() {
  for target in FuzzTarget.all {
    Console.out(
      "\(target.name.padding(toLength: 16, withPad: " ", startingAt: 0)) \(target.summary)\n")
  }
}

func fail(_ message: String, status: Int32) -> Never {
  Console.err("flare-fuzz: \(message)\n")
  exit(status)
}

func findTarget(_ name: String) -> FuzzTarget {
  guard let target = FuzzTarget.named(name) else {
    fail("unknown target '\(name)' (flare-fuzz list names them)", status: 64)
  }
  return target
}

/// `arguments` without `--root DIR`, after changing to DIR.
func applyRoot(_ arguments: [String]) -> [String] {
  guard let at = arguments.firstIndex(of: "--root") else { return arguments }
  guard at + 1 < arguments.count else { fail("--root needs a folder", status: 64) }
  guard chdir(arguments[at + 1]) == 0 else {
    fail("cannot change to \(arguments[at + 1])", status: 1)
  }
  var rest = arguments
  rest.removeSubrange(at...(at + 1))
  return rest
}

/// `flare-fuzz list` and `flare-fuzz corpus TARGET`, in either build; exits when handled.
func runCommonCommand(_ arguments: [String]) {
  if arguments.first == "list" {
    listTargets()
    exit(0)
  }
  if arguments.first == "corpus" {
    guard arguments.count == 2 else { fail("usage: flare-fuzz corpus TARGET", status: 64) }
    for file in findTarget(arguments[1]).corpusFiles() { Console.out("\(file)\n") }
    exit(0)
  }
}

func makeScratch() -> FuzzScratch {
  do { return try FuzzScratch(fixtures: "Fixtures") } catch {
    fail("\(error)", status: 1)
  }
}

#if FLARE_LIBFUZZER
  typealias FuzzCallback = @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
  @_silgen_name("LLVMFuzzerRunDriver")
  func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: FuzzCallback
  ) -> Int32

  // libFuzzer's driver calls a C function; it reaches the target and scratch through these.
  nonisolated(unsafe) var activeTarget: FuzzTarget? = nil
  nonisolated(unsafe) var activeScratch: FuzzScratch? = nil

  // libFuzzer also wants LLVMFuzzerTestOneInput defined (its own main references it).
  @_cdecl("LLVMFuzzerTestOneInput")
  public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    runOne(activeTarget!, data, size, activeScratch!)
    return 0
  }

  @main
  struct FuzzMain {
    static func main() {
      let arguments = CommandLine.arguments
      guard arguments.count >= 2, !arguments[1].hasPrefix("-") else {
        Console.err(usage)
        listTargets()
        exit(64)
      }
      runCommonCommand(applyRoot(Array(arguments.dropFirst())))
      activeTarget = findTarget(arguments[1])
      let scratch = makeScratch()
      activeScratch = scratch
      silenceStandardOutput()
      // libFuzzer sees the program name and the arguments after the target's name.
      var argc = CommandLine.argc - 1
      let argv = CommandLine.unsafeArgv
      argv[1] = argv[0]
      var shifted: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv + 1
      let status = LLVMFuzzerRunDriver(&argc, &shifted) { data, size in
        fuzzOneInput(data, size)
      }
      scratch.remove()
      exit(status)
    }
  }
#else
  @main
  struct FuzzMain {
    static func main() {
      let arguments = applyRoot(Array(CommandLine.arguments.dropFirst()))
      if arguments.first == "--help" || arguments.first == "-h" {
        Console.out(usage)
        listTargets()
        exit(0)
      }
      runCommonCommand(arguments)
      guard arguments.count >= 2, arguments[0] == "replay" else {
        Console.err(usage)
        exit(64)
      }
      let target = findTarget(arguments[1])
      var inputs: [String] = arguments.count == 2 ? target.corpusFiles() : []
      for path in arguments.dropFirst(2) {
        if isDirectory(path) {
          inputs += folderEntries(path).sorted().map { "\(path)/\($0)" }.filter { !isDirectory($0) }
        } else {
          inputs.append(path)
        }
      }
      let scratch = makeScratch()
      defer { scratch.remove() }
      silenceStandardOutput()
      // The tools print errors on standard error; keep them out of the replay's report.
      let savedError = dup(2)
      var accepted: [String] = []
      for input in inputs {
        let file: MappedFile
        do { file = try MappedFile(path: input) } catch {
          fail("\(error)", status: 1)
        }
        let null = open("/dev/null", O_WRONLY)
        dup2(null, 2)
        close(null)
        let ok = runOne(
          target, file.bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), file.count, scratch)
        dup2(savedError, 2)
        if ok { accepted.append(input) }
      }
      // One line per accepted input, then the count: a test tells a reader that accepts
      // nothing (or everything) from one that works.
      for input in accepted { Console.err("accepted \(input)\n") }
      Console.err(
        "flare-fuzz: \(target.name): \(inputs.count) inputs replayed, \(accepted.count) accepted, none trapped\n"
      )
    }
  }
#endif
