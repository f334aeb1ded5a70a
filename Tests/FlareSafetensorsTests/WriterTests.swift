import FlareCore
import FlareSafetensors
import Testing
import _FlareTestSupport

@Suite("writing safetensors")
struct WriterTests {
  static let goldenFiles = [
    "dtypes.safetensors", "scalars.safetensors", "empty.safetensors", "small.safetensors",
    "sharded/model-00001-of-00002.safetensors", "peft-adapter/adapter_model.safetensors",
  ]

  /// Oracle: the bytes the Python `safetensors` package wrote. Re-writing a file it wrote, in
  /// its tensor order and with its metadata, must give the identical file.
  @Test("write(read(file)) reproduces the package's bytes exactly", arguments: goldenFiles)
  func byteIdentical(file: String) throws {
    let path = fixturePath("safetensors/\(file)")
    let source = try SafetensorsFile(path: path)
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let out = "\(folder)/copy.safetensors"
    let specs = source.tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
    try SafetensorsWriter.write(to: out, tensors: specs, options: .init(metadata: source.metadata))
    { sink in
      try sink.write(try source.view(sink.spec.name).rawBytes)
    }
    #expect(fileBytes(out) == fileBytes(path))
    #expect(folderContents(folder) == ["copy.safetensors"])
  }

  @Test("round trip of float values through every float dtype the writer encodes")
  func valuesRoundTrip() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let values: [Float] = [0, -0.0, 1, -2.5, 0.1, 65504, 1e-8, 3.0e38, -448, 6]
    let dtypes: [DType] = [.f32, .f64, .f16, .bf16, .f8E4M3, .f8E5M2, .f4, .f6E2M3, .f6E3M2]
    var specs: [TensorSpec] = []
    for dtype in dtypes {
      specs.append(
        TensorSpec(
          name: "t_\(dtype.rawValue)", dtype: dtype, shape: dtype.isSubByte ? [12] : [values.count])
      )
    }
    let path = "\(folder)/values.safetensors"
    try SafetensorsWriter.write(to: path, tensors: specs) { sink in
      var data = values
      if sink.spec.dtype.isSubByte { data += [1, 2] }
      try data.withUnsafeBufferPointer { try sink.write(floats: $0) }
    }
    let file = try SafetensorsFile(path: path)
    #expect(file.metadata?.map(\.key) == ["format"])
    for view in file.views {
      var data = values
      if view.dtype.isSubByte { data += [1, 2] }
      let expected: [Float] = data.map { value in
        switch view.dtype {
        case .f32: return value
        case .f64: return Float(Double(value))
        case .f16: return HalfPrecision.f16ToFloat(HalfPrecision.floatToF16(value))
        case .bf16: return HalfPrecision.bf16ToFloat(HalfPrecision.floatToBF16(value))
        default:
          let format = view.dtype.minifloat!
          return format.decode(format.encode(value))
        }
      }
      #expect(view.floats().map(\.bitPattern) == expected.map(\.bitPattern), "\(view.name)")
    }
  }

  @Test(
    "the header is padded to 8 bytes, and with alignment 64 every 64-multiple tensor starts on a boundary"
  )
  func alignment() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let specs = [
      TensorSpec(name: "odd", dtype: .u8, shape: [3]),
      TensorSpec(name: "a", dtype: .f32, shape: [16]),
      TensorSpec(name: "b", dtype: .f16, shape: [64]),
      TensorSpec(name: "odd2", dtype: .f32, shape: [5]),
    ]
    for alignment in [nil, 64] as [Int?] {
      let path = "\(folder)/aligned-\(alignment ?? 0).safetensors"
      try SafetensorsWriter.write(to: path, tensors: specs, options: .init(alignment: alignment)) {
        sink in
        try sink.write([UInt8](repeating: 7, count: sink.expectedBytes))
      }
      let file = try SafetensorsFile(path: path)
      #expect(file.header.dataStart % 8 == 0)
      if alignment == 64 {
        #expect(file.header.dataStart % 64 == 0)
        #expect(file.tensors.map(\.name) == ["a", "b", "odd", "odd2"])
        for view in file.views where view.info.byteCount % 64 == 0 {
          #expect(view.fileOffset % 64 == 0)
        }
      } else {
        #expect(file.tensors.map(\.name) == ["odd", "a", "b", "odd2"])
      }
    }
  }

  @Test("bad writes fail cleanly and leave nothing at the destination")
  func failures() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let path = "\(folder)/out.safetensors"
    let spec = TensorSpec(name: "w", dtype: .f32, shape: [4])
    #expect(throws: FlareError("safetensors", .tensorInvalidInfo, "")) {
      try SafetensorsWriter.write(to: path, tensors: [spec]) { try $0.write([1, 2, 3]) }
    }
    #expect(throws: FlareError("safetensors", .tensorInvalidInfo, "")) {
      try SafetensorsWriter.write(to: path, tensors: [spec]) {
        try $0.write([UInt8](repeating: 0, count: 20))
      }
    }
    #expect(throws: FlareError("safetensors", .duplicateKey, "")) {
      try SafetensorsWriter.write(to: path, tensors: [spec, spec]) {
        try $0.write([UInt8](repeating: 0, count: 16))
      }
    }
    #expect(throws: FlareError("safetensors", .invalidName, "")) {
      try SafetensorsWriter.write(
        to: path, tensors: [TensorSpec(name: "a\u{0}b", dtype: .u8, shape: [1])]
      ) { try $0.write([0]) }
    }
    #expect(throws: FlareError("safetensors", .shapeOverflow, "")) {
      try SafetensorsWriter.write(
        to: path, tensors: [TensorSpec(name: "f4", dtype: .f4, shape: [3])]
      ) { _ in }
    }
    #expect(folderContents(folder).isEmpty)
    try SafetensorsWriter.write(to: path, tensors: [spec]) {
      try $0.write([UInt8](repeating: 0, count: 16))
    }
    #expect(throws: FlareError("io", .outputExists, "")) {
      try SafetensorsWriter.write(to: path, tensors: [spec]) {
        try $0.write([UInt8](repeating: 1, count: 16))
      }
    }
    #expect(fileBytes(path).suffix(16) == ArraySlice([UInt8](repeating: 0, count: 16)))
    #expect(folderContents(folder) == ["out.safetensors"])
  }
}

@Suite("sharded models")
struct ShardTests {
  @Test("the package-written shards read through their index, in shard order")
  func readIndex() throws {
    let model = try SafetensorsModel.open(fixturePath("safetensors/sharded"))
    #expect(model.isSharded)
    #expect(model.files.count == 2)
    #expect(model.warnings.isEmpty)
    #expect(model.tensors.count == 5)
    #expect(
      model.view("lm_head.weight")?.file.path.hasSuffix("model-00002-of-00002.safetensors") == true)
    #expect(model.totalBytes == 336)
  }

  /// Oracle: the index and shards written with the Python package and
  /// `json.dumps(index, indent=2, sort_keys=True)`, as transformers writes them.
  @Test("re-sharding the fixture at the same split reproduces its index and shard bytes")
  func writeIdentical() throws {
    let source = try SafetensorsModel.open(fixturePath("safetensors/sharded"))
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let specs = source.tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
    let firstShardBytes = source.files[0].tensors.reduce(0) { $0 + $1.byteCount }
    let written = try SafetensorsWriter.writeSharded(
      folder: folder, tensors: specs, maxShardBytes: firstShardBytes
    ) { sink in
      try sink.write(source.view(sink.spec.name)!.rawBytes)
    }
    #expect(
      written.map { AtomicFileWriter.baseName(of: $0) } == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
      ])
    for name in folderContents(fixturePath("safetensors/sharded")) {
      #expect(
        fileBytes("\(folder)/\(name)") == fileBytes(fixturePath("safetensors/sharded/\(name)")),
        "\(name)")
    }
    let reread = try SafetensorsModel.open(folder)
    #expect(reread.tensors.map(\.name) == source.tensors.map(\.name))
  }

  @Test("a small model is written as one plain file; an existing output stops the whole write")
  func singleAndExisting() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let specs = [
      TensorSpec(name: "a", dtype: .f32, shape: [2]),
      TensorSpec(name: "b", dtype: .f32, shape: [2]),
    ]
    let fill: (TensorSink) throws -> Void = { try $0.write([UInt8](repeating: 1, count: 8)) }
    #expect(
      try SafetensorsWriter.writeSharded(
        folder: folder, tensors: specs, maxShardBytes: 1 << 20, body: fill
      ).count == 1)
    #expect(folderContents(folder) == ["model.safetensors"])
    writeBytes([0], to: "\(folder)/model-00002-of-00002.safetensors")
    #expect(throws: FlareError("io", .outputExists, "")) {
      try SafetensorsWriter.writeSharded(
        folder: folder, tensors: specs, maxShardBytes: 8, body: fill)
    }
    #expect(folderContents(folder) == ["model-00002-of-00002.safetensors", "model.safetensors"])
    // A failure in the middle (second shard's tensor gets too few bytes) publishes nothing.
    let other = makeTemporaryFolder()
    defer { removeTree(other) }
    #expect(throws: FlareError.self) {
      try SafetensorsWriter.writeSharded(folder: other, tensors: specs, maxShardBytes: 8) { sink in
        try sink.write([UInt8](repeating: 1, count: sink.spec.name == "b" ? 4 : 8))
      }
    }
    #expect(folderContents(other).isEmpty)
  }

  @Test("indexes that disagree with their shards are rejected")
  func badIndexes() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    for name in folderContents(fixturePath("safetensors/sharded"))
    where name.hasSuffix(".safetensors") {
      writeBytes(fileBytes(fixturePath("safetensors/sharded/\(name)")), to: "\(folder)/\(name)")
    }
    let cases: [(String, FlareError.Code)] = [
      (
        "{\"weight_map\":{\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\"}}",
        .invalidIndex
      ),
      ("{\"weight_map\":{\"x\":\"../model-00001-of-00002.safetensors\"}}", .invalidIndex),
      ("{\"weight_map\":{\"a\":\"m.safetensors\",\"a\":\"m.safetensors\"}}", .duplicateKey),
      ("{\"metadata\":{}}", .invalidIndex),
      ("[1]", .invalidIndex),
      ("{\"weight_map\":{\"a\":\"missing.safetensors\"}}", .fileNotFound),
    ]
    for (text, code) in cases {
      writeBytes(Array(text.utf8), to: "\(folder)/model.safetensors.index.json")
      #expect(throws: FlareError("", code, ""), "\(text)") { try SafetensorsModel.open(folder) }
    }
  }
}
