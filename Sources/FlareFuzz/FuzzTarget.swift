import FlareCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// One untrusted input Flare reads, as a fuzz target: `run` feeds the bytes to the same reader
/// a tool uses and returns normally whatever the bytes are. Errors are the expected outcome of
/// bad input; a trap, a sanitizer report, a hang or an allocation beyond the cap is a finding.
public struct FuzzTarget: Sendable {
  /// The target's name (`flare-fuzz NAME`, the corpus folder `Fixtures/fuzz/NAME`).
  public let name: String
  /// What the bytes are and which reader they reach.
  public let summary: String
  /// Seed inputs among the other fixtures, relative to the repository's root: files, or
  /// folders (their files, not recursively, without `.py`, `.sh` and `.md` files); a `*`
  /// component matches every entry. The
  /// target's own seeds and reproducers are in `Fixtures/fuzz/NAME`.
  public let seeds: [String]
  /// Runs one input and tells whether the reader accepted it (`false`: refused with an error,
  /// the normal outcome of bad input). A broken invariant traps, so that the fuzzer keeps the
  /// input.
  public let run: @Sendable (UnsafeRawBufferPointer, FuzzScratch) -> Bool

  public init(
    _ name: String, _ summary: String, seeds: [String] = [],
    _ run: @escaping @Sendable (UnsafeRawBufferPointer, FuzzScratch) -> Bool
  ) {
    self.name = name
    self.summary = summary
    self.seeds = seeds
    self.run = run
  }

  /// The files of the target's corpus, under the repository folder `root`: `Fixtures/fuzz/NAME`
  /// and every seed, sorted, each once.
  public func corpusFiles(root: String = ".") -> [String] {
    var files: [String] = []
    for pattern in ["Fixtures/fuzz/\(name)"] + seeds {
      for path in Self.expand(pattern, root: root) {
        if isDirectory(path) {
          // A folder's files, without the scripts and notes that made or describe them.
          files += folderEntries(path).filter { name in
            !name.hasPrefix(".") && ![".py", ".sh", ".md"].contains { name.hasSuffix($0) }
          }.map { "\(path)/\($0)" }.filter { !isDirectory($0) }
        } else if fileExists(path) {
          files.append(path)
        }
      }
    }
    return Array(Set(files)).sorted()
  }

  /// The paths `pattern` names under `root` (`*` components match every entry).
  static func expand(_ pattern: String, root: String) -> [String] {
    var paths = [root]
    for component in pattern.split(separator: "/").map(String.init) {
      if component == "*" {
        paths = paths.flatMap { path in folderEntries(path).sorted().map { "\(path)/\($0)" } }
      } else {
        paths = paths.map { "\($0)/\(component)" }
      }
    }
    return paths.map { $0.hasPrefix("./") ? String($0.dropFirst(2)) : $0 }
  }

  /// The target named `name`, or `nil`.
  public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }
}

/// A private folder for the files a target writes (the readers under test map files), on a
/// memory file system when there is one; removed by ``remove()``.
public final class FuzzScratch: @unchecked Sendable {
  // @unchecked Sendable: one fuzzing process runs one input at a time.
  /// The folder.
  public let folder: String
  /// The repository's `Fixtures` folder (the shard target copies its shards from there).
  public let fixtures: String

  /// Makes a fresh folder under `/dev/shm` (else the system's temporary folder).
  public init(fixtures: String) throws {
    self.fixtures = fixtures
    let root =
      fileExists("/dev/shm") ? "/dev/shm" : (getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp")
    var template = Array("\(root)/flare-fuzz-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    guard made != nil else {
      throw FlareError.io("cannot make a scratch folder", path: root, errno: errno)
    }
    folder = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
  }

  /// Writes `bytes` to `name` in the folder (replacing it) and returns its path. A write that
  /// fails (the memory file system full) traps: it is the harness's fault, not the input's.
  @discardableResult
  public func write(_ bytes: UnsafeRawBufferPointer, to name: String) -> String {
    let path = "\(folder)/\(name)"
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    precondition(fd >= 0, "flare-fuzz: cannot write \(path)")
    defer { close(fd) }
    var done = 0
    while done < bytes.count {
      let n = systemWrite(fd, bytes.baseAddress! + done, bytes.count - done)
      if n < 0 && errno == EINTR { continue }
      precondition(n > 0, "flare-fuzz: cannot write \(path)")
      done += n
    }
    return path
  }

  /// Makes folder `name` in the scratch folder (if missing) and returns its path.
  public func subfolder(_ name: String) -> String {
    let path = "\(folder)/\(name)"
    if !fileExists(path) { _ = mkdir(path, 0o700) }
    return path
  }

  /// Copies file `source` to `name` in the scratch folder unless it is already there.
  public func copyOnce(_ source: String, to name: String) {
    let path = "\(folder)/\(name)"
    guard !fileExists(path) else { return }
    let file: MappedFile
    do { file = try MappedFile(path: source) } catch {
      preconditionFailure("flare-fuzz: cannot read \(source) (run from the repository's root)")
    }
    write(file.bytes, to: name)
  }

  /// Removes the folder and everything in it.
  public func remove() {
    removeFileTree(folder)
  }
}

/// `write(2)` (a method of the scratch folder has the same name).
private func systemWrite(_ fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
  write(fd, bytes, count)
}
