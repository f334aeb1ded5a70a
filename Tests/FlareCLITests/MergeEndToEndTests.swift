import FlareCore
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

/// `flare-merge` on small synthetic bases and adapters written here.
///
/// Oracle: the merge formula computed independently in `Double` with plain loops
/// (`W + w·s·B·A`, `s = alpha/r`), rounded once to the output type. Tolerance: F32 outputs within
/// 2e-6 relative of the Double result (float rounding of the products); BF16 outputs exactly equal
/// to `round_bf16(Double result)` except where that value sits within 1e-6 relative of a tie.
@Suite("flare-merge end to end")
struct MergeEndToEndTests {
  static let rows = 300
  static let cols = 96
  static let rank = 8

  /// Seeded values in [-scale, scale).
  static func values(_ count: Int, seed: UInt64, scale: Float) -> [Float] {
    var state = seed
    return (0..<count).map { _ in
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return (Float(state >> 40) / Float(1 << 24) * 2 - 1) * scale
    }
  }

  static func floatBytes(_ values: [Float]) -> [UInt8] {
    values.withUnsafeBytes { Array($0) }
  }

  /// A base with a q_proj to adapt, a norm to leave alone, in `dtype`.
  func makeBase(_ path: String, dtype: DType = .f32) throws -> [Float] {
    let weight = Self.values(Self.rows * Self.cols, seed: 1, scale: 0.5)
    let norm = Self.values(Self.cols, seed: 2, scale: 1)
    try SafetensorsWriter.write(
      to: path,
      tensors: [
        TensorSpec(
          name: "model.layers.0.self_attn.q_proj.weight", dtype: dtype,
          shape: [Self.rows, Self.cols]),
        TensorSpec(name: "model.norm.weight", dtype: .f32, shape: [Self.cols]),
      ]
    ) { sink in
      let source = sink.spec.name.hasSuffix("q_proj.weight") ? weight : norm
      try source.withUnsafeBufferPointer { try sink.write(floats: $0) }
    }
    if dtype == .bf16 {
      return weight.map { HalfPrecision.bf16ToFloat(HalfPrecision.floatToBF16($0)) }
    }
    return weight
  }

  /// A PEFT adapter folder for q_proj; `extra` adds tensors, `config` overrides the config text.
  func makeAdapter(
    _ folder: String, alpha: Double = 16, seed: UInt64 = 10, poison: Bool = false,
    extra: [String] = [],
    config: String? = nil
  ) throws -> (a: [Float], b: [Float]) {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let a = Self.values(Self.rank * Self.cols, seed: seed, scale: 0.1)
    var b = Self.values(Self.rows * Self.rank, seed: seed + 1, scale: 0.1)
    if poison { b[17] = .infinity }
    let prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    var tensors: [(spec: TensorSpec, bytes: [UInt8])] = [
      (
        TensorSpec(name: "\(prefix).lora_A.weight", dtype: .f32, shape: [Self.rank, Self.cols]),
        Self.floatBytes(a)
      ),
      (
        TensorSpec(name: "\(prefix).lora_B.weight", dtype: .f32, shape: [Self.rows, Self.rank]),
        Self.floatBytes(b)
      ),
    ]
    for name in extra {
      tensors.append((TensorSpec(name: name, dtype: .f32, shape: [1]), Self.floatBytes([1])))
    }
    try SafetensorsWriter.write(to: "\(folder)/adapter_model.safetensors", tensors: tensors)
    let text =
      config
      ?? #"{"peft_type":"LORA","r":\#(Self.rank),"lora_alpha":\#(alpha),"target_modules":["q_proj"]}"#
    writeBytes(Array(text.utf8), to: "\(folder)/adapter_config.json")
    return (a, b)
  }

  /// `W + Σ scale·B·A` in Double.
  static func expected(_ base: [Float], _ terms: [(a: [Float], b: [Float], scale: Double)])
    -> [Double]
  {
    var out = base.map(Double.init)
    for term in terms {
      for i in 0..<rows {
        for j in 0..<cols {
          var sum = 0.0
          for k in 0..<rank { sum += Double(term.b[i * rank + k]) * Double(term.a[k * cols + j]) }
          out[i * cols + j] += term.scale * sum
        }
      }
    }
    return out
  }

  @Test("two weighted adapters merge to W + Σ w·s·B·A, untouched tensors stay byte for byte")
  func weightedSum() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let base = try makeBase("\(folder)/base.safetensors")
    let first = try makeAdapter("\(folder)/a1", alpha: 16)
    let second = try makeAdapter("\(folder)/a2", alpha: 4, seed: 20)
    let out = "\(folder)/merged.safetensors"
    let result = try runTool(
      "flare-merge",
      [
        "--base", "\(folder)/base.safetensors", "--adapter", "\(folder)/a1", "--adapter",
        "\(folder)/a2:0.5", "--output", out, "--verify",
      ])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("merged 1 tensors from 2 adapters"))
    #expect(result.stdout.contains("verified: every merged tensor equals base + ΔW rounded once"))
    let merged = try SafetensorsFile(path: out)
    let values = try merged.view("model.layers.0.self_attn.q_proj.weight").floats()
    let want = Self.expected(base, [(first.a, first.b, 2.0), (second.a, second.b, 0.5 * 0.5)])
    var worst = 0.0
    for (x, y) in zip(values, want) { worst = max(worst, abs(Double(x) - y)) }
    #expect(worst < 5e-7, "absolute error \(worst)")
    let source = try SafetensorsFile(path: "\(folder)/base.safetensors")
    #expect(
      try merged.view("model.norm.weight").rawBytes.elementsEqual(
        source.view("model.norm.weight").rawBytes))
  }

  @Test("the output is bit-identical for 1, 2 and 5 threads")
  func threadsDoNotMatter() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    _ = try makeBase("\(folder)/base.safetensors")
    _ = try makeAdapter("\(folder)/a")
    var outputs: [[UInt8]] = []
    for threads in ["1", "2", "5"] {
      let out = "\(folder)/m\(threads).safetensors"
      let result = try runTool(
        "flare-merge",
        [
          "--base", "\(folder)/base.safetensors", "--adapter", "\(folder)/a", "--output", out,
          "--threads", threads, "-q",
        ])
      #expect(result.status == 0, "\(result.stderr)")
      outputs.append(fileBytes(out))
    }
    #expect(outputs[0] == outputs[1] && outputs[1] == outputs[2])
  }

  @Test("a BF16 base is merged in F32 and rounded once")
  func bf16OneRounding() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    let base = try makeBase("\(folder)/base.safetensors", dtype: .bf16)
    let adapter = try makeAdapter("\(folder)/a")
    let out = "\(folder)/merged.safetensors"
    #expect(
      try runTool(
        "flare-merge",
        ["--base", "\(folder)/base.safetensors", "--adapter", "\(folder)/a", "--output", out, "-q"]
      ).status == 0)
    let view = try SafetensorsFile(path: out).view("model.layers.0.self_attn.q_proj.weight")
    #expect(view.dtype == .bf16)
    let stored = view.floats()
    let want = Self.expected(base, [(adapter.a, adapter.b, 2.0)])
    var mismatches = 0
    for (x, y) in zip(stored, want) {
      let rounded = HalfPrecision.bf16ToFloat(HalfPrecision.floatToBF16(Float(y)))
      if x != rounded {
        // Only acceptable where F32 rounding of the sum lands on the other side of a BF16 tie.
        let ulp = Double(rounded.ulp)
        let tieDistance = abs(abs(y - Double(rounded)) - ulp / 2)
        if tieDistance > 1e-6 * abs(y) { mismatches += 1 }
      }
    }
    #expect(mismatches == 0)
  }

  struct Refusal: Sendable, CustomTestStringConvertible {
    var label: String
    var message: String
    var testDescription: String { label }
  }

  static let refusalCases = [
    Refusal(label: "infinite value", message: "has a non-finite value"),
    Refusal(label: "unknown key", message: "tensor keys are not LoRA weights Flare understands"),
    Refusal(label: "pissa", message: "changed the base weights at initialisation"),
    Refusal(
      label: "wrong base",
      message:
        "adapter does not fit this base: tensor model.layers.0.self_attn.q_proj.weight, expected [200, 96]"
    ),
    Refusal(label: "missing config", message: "no adapter_config.json"),
    Refusal(label: "truncated", message: "safetensors error"),
    Refusal(label: "alora", message: "aLoRA adapters"),
  ]

  @Test("bad adapters fail with exit 1, a message, and nothing written", arguments: refusalCases)
  func refusals(_ refusal: Refusal) throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    _ = try makeBase("\(folder)/base.safetensors")
    let adapter = "\(folder)/adapter"
    switch refusal.label {
    case "infinite value": _ = try makeAdapter(adapter, poison: true)
    case "unknown key": _ = try makeAdapter(adapter, extra: ["base_model.model.something.else"])
    case "pissa":
      _ = try makeAdapter(
        adapter,
        config: #"{"peft_type":"LORA","r":8,"lora_alpha":16,"init_lora_weights":"pissa_niter_4"}"#)
    case "wrong base":
      _ = try makeAdapter(adapter)
      // Rewrite B with 200 rows: it no longer fits the 300-row base.
      let prefix = "base_model.model.model.layers.0.self_attn.q_proj"
      try SafetensorsWriter.write(
        to: "\(adapter)/adapter_model.safetensors",
        tensors: [
          (
            TensorSpec(name: "\(prefix).lora_A.weight", dtype: .f32, shape: [8, 96]),
            [UInt8](repeating: 0, count: 8 * 96 * 4)
          ),
          (
            TensorSpec(name: "\(prefix).lora_B.weight", dtype: .f32, shape: [200, 8]),
            [UInt8](repeating: 0, count: 200 * 8 * 4)
          ),
        ], options: .init(overwrite: true))
    case "missing config":
      _ = try makeAdapter(adapter)
      try FileManager.default.removeItem(atPath: "\(adapter)/adapter_config.json")
    case "truncated":
      _ = try makeAdapter(adapter)
      let bytes = fileBytes("\(adapter)/adapter_model.safetensors")
      writeBytes(Array(bytes.prefix(bytes.count - 10)), to: "\(adapter)/adapter_model.safetensors")
    default:
      _ = try makeAdapter(
        adapter,
        config: #"{"peft_type":"LORA","r":8,"lora_alpha":16,"alora_invocation_tokens":[1,2]}"#)
    }
    let out = "\(folder)/out"
    let result = try runTool(
      "flare-merge",
      [
        "--base", "\(folder)/base.safetensors", "--adapter", adapter, "--output",
        "\(out).safetensors",
      ])
    #expect(result.status == 1)
    #expect(result.stderr.hasPrefix("flare-merge: error: "))
    #expect(result.stderr.contains(refusal.message), "\(result.stderr)")
    #expect(!folderContents(folder).contains { $0.hasPrefix("out") }, "nothing written")
    if refusal.label == "unknown key" {
      let allowed = try runTool(
        "flare-merge",
        [
          "--base", "\(folder)/base.safetensors", "--adapter", adapter, "--output",
          "\(out).safetensors", "--allow-unknown", "-q",
        ])
      #expect(allowed.status == 0)
    }
  }

  @Test(
    "--dry-run prints the plan with rank, alpha and scale and writes nothing; existing outputs need --force"
  )
  func dryRunAndForce() throws {
    let folder = makeTemporaryFolder()
    defer { removeTree(folder) }
    _ = try makeBase("\(folder)/base.safetensors")
    _ = try makeAdapter(
      "\(folder)/a", config: #"{"peft_type":"LORA","r":8,"lora_alpha":16,"use_rslora":true}"#)
    let plan = try runTool(
      "flare-merge",
      ["--base", "\(folder)/base.safetensors", "--adapter", "\(folder)/a", "--dry-run", "--json"])
    #expect(plan.status == 0)
    let document = try JSONParser.parse(Array(plan.stdout.utf8))
    let source = try #require(document["tensors"]?.arrayValue?.first?["sources"]?.arrayValue?.first)
    #expect(source["rank"]?.intValue == 8)
    #expect(source["scaling"]?.doubleValue == 16 / 8.0.squareRoot())
    #expect(document["untouched"]?.intValue == 1)
    #expect(folderContents(folder) == ["a", "base.safetensors"])
    let out = "\(folder)/m.safetensors"
    let args = [
      "--base", "\(folder)/base.safetensors", "--adapter", "\(folder)/a", "--output", out, "-q",
    ]
    #expect(try runTool("flare-merge", args).status == 0)
    let again = try runTool("flare-merge", args)
    #expect(again.status == 1)
    #expect(again.stderr.contains("output already exists (use --force to overwrite)"))
    #expect(try runTool("flare-merge", args + ["--force"]).status == 0)
    let usage = try runTool("flare-merge", ["--adapter", "\(folder)/a", "--output", out])
    #expect(usage.status == 64)
    #expect(usage.stderr.hasPrefix("flare-merge: error: missing expected option '--base <path>'"))
  }
}
