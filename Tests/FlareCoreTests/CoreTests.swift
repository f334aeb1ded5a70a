import FlareCore
import Foundation
import Testing
import _FlareTestSupport

@Suite("byte cursor")
struct ByteReaderTests {
  @Test("every truncated prefix of a length-prefixed string fails and the cursor stays put")
  func truncation() {
    let full: [UInt8] = [5, 0, 0, 0, 0, 0, 0, 0] + Array("hello".utf8)
    for n in 0..<full.count {
      Array(full.prefix(n)).withUnsafeBytes { raw in
        var reader = ByteReader(raw)
        #expect(reader.readLengthPrefixedString() == nil)
        #expect(reader.offset == 0)
      }
    }
    full.withUnsafeBytes { raw in
      var reader = ByteReader(raw)
      #expect(reader.readLengthPrefixedString() == "hello")
      #expect(reader.remaining == 0)
    }
  }

  @Test("a length that does not fit Int or the buffer is refused without allocating")
  func hugeLength() {
    let bytes: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x41]
    bytes.withUnsafeBytes { raw in
      var reader = ByteReader(raw)
      #expect(reader.readLengthPrefixedString() == nil)
      #expect(reader.readBytes(-1) == nil)
      #expect(reader.read(UInt64.self) == UInt64.max)
      #expect(reader.read(UInt16.self) == nil)
      #expect(reader.offset == 8)
      #expect(reader.peek(UInt32.self, at: Int.max) == nil)
    }
  }

  @Test("integers are little-endian")
  func littleEndian() {
    ([0x01, 0x02, 0x03, 0x04] as [UInt8]).withUnsafeBytes { raw in
      var reader = ByteReader(raw)
      #expect(reader.read(UInt32.self) == 0x0403_0201)
    }
  }
}

@Suite("JSON")
struct JSONTests {
  static let invalid = [
    "{\"a\":1,}", "[1,]", "{'a':1}", "01", "1.", "-", "\"\\x\"", "\"a", "{\"a\" 1}", "tru",
    "\"\\ud800\"", "\"\u{01}\"", "[1] x", "1e", "{\"a\":1}}",
  ]

  @Test("malformed documents are rejected", arguments: invalid)
  func rejects(text: String) {
    #expect(throws: JSONParser.Failure.self) { try JSONParser.parse(Array(text.utf8)) }
  }

  @Test("duplicate keys are kept in order so callers can reject them")
  func duplicates() throws {
    let value = try JSONParser.parse(Array("{\"a\":1,\"a\":2}".utf8))
    #expect(value.objectMembers?.map(\.0) == ["a", "a"])
    #expect(value["a"] == .number("2"))
  }

  @Test("integers stay exact up to UInt64.max; escapes and surrogate pairs decode")
  func exactness() throws {
    let value = try JSONParser.parse(
      Array(" [18446744073709551615, -1, 1.5e3, \"\\u00e9\\ud83d\\ude00\\n\"] ".utf8))
    let items = try #require(value.arrayValue)
    #expect(items[0].uint64Value == UInt64.max)
    #expect(items[1].uint64Value == nil)
    #expect(items[2].doubleValue == 1500)
    #expect(items[2].uint64Value == nil)
    #expect(items[3].stringValue == "é😀\n")
  }

  @Test("nesting beyond the limit is rejected instead of recursing without bound")
  func depth() {
    let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
    #expect(throws: JSONParser.Failure.self) { try JSONParser.parse(Array(deep.utf8)) }
  }

  @Test("the compact writer escapes like serde_json and round-trips")
  func writer() throws {
    let value = JSONValue.object([
      ("k\"\\", .string("a\u{01}\n\té/")), ("n", .array([.integer(3), .null, .bool(true)])),
    ])
    let text = JSONWriter.compact(value)
    #expect(text == "{\"k\\\"\\\\\":\"a\\u0001\\n\\té/\",\"n\":[3,null,true]}")
    #expect(try JSONParser.parse(Array(text.utf8)) == value)
    #expect(
      JSONWriter.pretty(.object([("a", .array([.integer(1)]))])) == "{\n  \"a\": [\n    1\n  ]\n}")
  }
}

@Suite("files")
struct FileTests {
  @Test("a missing file is reported with its path")
  func missing() {
    #expect(throws: FlareError("io", .fileNotFound, "")) {
      try MappedFile(path: "/nonexistent/flare/file")
    }
    do {
      _ = try MappedFile(path: "/nonexistent/flare/file")
    } catch {
      // MappedFile throws FlareError only (typed throws).
      #expect(error.description.contains("/nonexistent/flare/file"))
    }
  }

  @Test("atomic writes publish whole files, refuse to overwrite, and leave nothing on failure")
  func atomic() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let path = "\(folder)/out.bin"
    try writeFileAtomically([1, 2, 3], to: path)
    #expect(fileBytes(path) == [1, 2, 3])
    #expect(throws: FlareError("io", .outputExists, "")) { try writeFileAtomically([9], to: path) }
    #expect(fileBytes(path) == [1, 2, 3])
    try writeFileAtomically([4], to: path, overwrite: true)
    #expect(fileBytes(path) == [4])
    do {
      let writer = try AtomicFileWriter(destination: "\(folder)/abandoned.bin")
      try writer.write([1, 2, 3])
      writer.abandon()
    }
    #expect(folderContents(folder) == ["out.bin"])
    let empty = try MappedFile(path: path)
    #expect(empty.count == 1)
  }

  @Test(
    "a staged folder replaces an existing one in one exchange: the files it writes are new, everything else is kept (hard links), permissions stay"
  )
  func stagedFolderReplacesAtomically() throws {
    let parent = makeTemporaryFolder()
    defer { removeTree(parent) }
    let destination = "\(parent)/out"
    let sub = "\(destination)/checkpoint-3"
    try makeFolder(destination, mode: 0o750)
    try makeFolder(sub, mode: 0o700)
    writeBytes([1], to: "\(destination)/model.bin")
    writeBytes([2], to: "\(destination)/notes.txt")
    writeBytes([3], to: "\(sub)/state.json")
    let before = try inode(destination)
    let keptInode = try inode("\(sub)/state.json")

    let staging = try StagedFolder(for: destination)
    writeBytes([9, 9], to: "\(staging.path)/model.bin")
    writeBytes([8], to: "\(staging.path)/config.json")
    try staging.publish(files: ["model.bin", "config.json"])

    // Oracle: the exchange leaves a new folder (new inode) holding the new files and the old
    // ones it did not replace, as hard links to the same inodes; nothing else in the parent.
    #expect(folderContents(parent) == ["out"])
    #expect(try inode(destination) != before)
    #expect(
      folderContents(destination) == ["checkpoint-3", "config.json", "model.bin", "notes.txt"])
    #expect(fileBytes("\(destination)/model.bin") == [9, 9])
    #expect(fileBytes("\(destination)/config.json") == [8])
    #expect(fileBytes("\(destination)/notes.txt") == [2])
    #expect(fileBytes("\(sub)/state.json") == [3])
    #expect(try inode("\(sub)/state.json") == keptInode)
    #expect(try mode(destination) == 0o750)
    #expect(try mode(sub) == 0o700)

    // A fresh destination is the staging folder renamed.
    let fresh = try StagedFolder(for: "\(parent)/fresh")
    writeBytes([5], to: "\(fresh.path)/a")
    try fresh.publish(files: ["a"])
    #expect(folderContents("\(parent)/fresh") == ["a"])
    #expect(folderContents(parent) == ["fresh", "out"])
  }

  func makeFolder(_ path: String, mode: Int) throws {
    try FileManager.default.createDirectory(
      atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: mode])
  }

  func inode(_ path: String) throws -> Int {
    try (FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? Int) ?? -1
  }

  func mode(_ path: String) throws -> Int {
    try (FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? -1
  }

  @Test("CRC-32 through zlib")
  func crc() {
    #expect(CRC32.checksum(Array("hello".utf8)) == 0x3610_A686)
  }
}
