import FlareAdapters
import FlareCore
import FlareSafetensors
import Foundation
import Testing
import _FlareTestSupport

@testable import FlareModels

/// One FLARE training step on the real SmolLM2 (F32 HF folder) against the same step in
/// PyTorch float64 (`Fixtures/training/make_flare_grads.py`: transformers' Llama with PEFT LoRA
/// on q, k, v and the fused layer of FLARE.md §2.2 patched into q_proj and v_proj, the source
/// states taken from the base model's `hidden_states` on the parallel text).
@Suite("FLARE training on SmolLM2 vs PyTorch float64")
struct FlareTrainingTests {
  let json: JSONValue
  let arrays: WeightSource

  init() throws {
    json = try loadFixtureJSON("training/flare.json")
    arrays = try WeightSource(path: fixturePath("training/flare.safetensors"))
  }

  func rows(_ key: String) throws -> [[Int]] { try intRows(json[key]) }

  /// The batch with its source; with `perturbed`, every source token id replaced by another.
  func batch(perturbed: Bool = false) throws -> TrainingBatch {
    var source = try rows("source_ids")
    if perturbed { source = source.map { $0.map { ($0 * 7 + 13) % 49_152 } } }
    return TrainingBatch(
      tokens: try rows("input_ids"), mask: try rows("attention_mask").map { $0.map { $0 != 0 } },
      targets: .tokens(try rows("labels")), source: source,
      sourceMask: try rows("source_mask").map { $0.map { $0 != 0 } })
  }

  /// The case's state at the script's starting values (make_llama_grads.py's generator over
  /// the sorted saved keys: LoRA A/B of q, k, v, then the cross-attention weights).
  func state(_ name: String, model: LlamaModel, zeroB: Bool = false) throws -> TrainingState {
    let spec = try #require(json["cases"]?[name])
    let fusionName = try #require(spec["fusion"]?.stringValue)
    let fusion = try #require(FLAREConfig.Fusion(rawValue: fusionName))
    let heads = try #require(spec["heads"]?.intValue)
    let r = try #require(json["r"]?.intValue)
    let scale = Float(try #require(json["scale"]?.doubleValue))
    var tensors: [String: TrainableTensor] = [:]
    func add(_ key: String, _ shape: [Int]) {
      tensors[key] = TrainableTensor(
        name: key, shape: shape, values: [Float](repeating: 0, count: shape.reduce(1, *)))
    }
    var modules: [String] = []
    for layer in 0..<model.config.blockCount {
      for projection in ["q_proj", "k_proj", "v_proj"] {
        let module = "model.layers.\(layer).self_attn.\(projection)"
        modules.append(module)
        let shape = try #require(model.linearShape(module))
        add("base_model.model.\(module).lora_A.weight", [r, shape.inFeatures])
        add("base_model.model.\(module).lora_B.weight", [shape.outFeatures, r])
        if fusion == .crossAttention && projection != "k_proj" {
          for part in ["q", "k", "v"] {
            add("base_model.model.\(module).cross_attention.\(part).weight", [r, r])
            add("base_model.model.\(module).cross_attention.\(part).bias", [r])
          }
        }
      }
    }
    fillFromScriptGenerator(tensors, seed: UInt64(try #require(spec["seed"]?.intValue)))
    if zeroB {
      for (key, tensor) in tensors where key.contains(".lora_B.") {
        tensor.values = tensor.values.map { _ in 0 }
      }
    }
    var loras: [String: TrainableLoRA] = [:]
    var attention: [String: TrainableFusionAttention] = [:]
    for module in modules {
      let prefix = "base_model.model.\(module)"
      loras[module] = TrainableLoRA(
        module: module, a: tensors["\(prefix).lora_A.weight"]!,
        b: tensors["\(prefix).lora_B.weight"]!, scale: scale, dropout: 0)
      if let q = tensors["\(prefix).cross_attention.q.weight"] {
        attention[module] = TrainableFusionAttention(
          query: q, queryBias: tensors["\(prefix).cross_attention.q.bias"]!,
          key: tensors["\(prefix).cross_attention.k.weight"]!,
          keyBias: tensors["\(prefix).cross_attention.k.bias"]!,
          value: tensors["\(prefix).cross_attention.v.weight"]!,
          valueBias: tensors["\(prefix).cross_attention.v.bias"]!)
      }
    }
    let fused = Set(modules.filter { !$0.hasSuffix("k_proj") })
    return TrainingState(
      loras: loras,
      fusion: TrainingFusion(
        fusion: fusion, fusedModules: fused, causal: spec["causal"]?.boolValue ?? false,
        heads: heads, attention: attention))
  }

  static func gradients(_ state: TrainingState) -> [String: [Float]] {
    Dictionary(uniqueKeysWithValues: state.parameters.map { ($0.name, $0.gradient) })
  }

  /// The loss within 1e-6 relative, every stored gradient (layers 0, 15, 29: LoRA A and B of
  /// fused q/v and plain k, and the cross-attention weights) within 1e-4 relative Frobenius, and
  /// the norm of every gradient within 1e-4 relative (the issue's bound); the cross-attention
  /// key biases, whose true gradient is zero (PyTorch's float64 one is ~1e-21), at most 1e-3
  /// of the query bias's norm (float32 cancellation; measured up to 1e-4).
  @Test(
    "loss and gradients of a FLARE step match PyTorch float64",
    arguments: ["add_relu", "matmul-causal", "cross-attention-causal"])
  func step(_ name: String) throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let model = try LlamaModel(path: folder)
    model.trainingThreads = 2
    let state = try state(name, model: model)
    let spec = try #require(json["cases"]?[name])
    let count = try #require(spec["label_count"]?.intValue)
    let result = try model.trainingPass(
      batch: try batch(), state: state, gradientScale: 1 / Float(count))
    #expect(result.count == count)
    let loss = result.lossSum / Double(result.count)
    let expected = try #require(spec["loss"]?.doubleValue)
    #expect(abs(loss - expected) / expected < 1e-6, "\(name): loss \(loss) vs \(expected)")
    // The evaluation pass keeps only S = A·x_s of the source side (FLARE.md §7.2), computed
    // in its own source pass or given: the same loss as PyTorch's.
    let evaluated = try model.evaluationPass(batch: try batch(), state: state)
    let evaluatedLoss = evaluated.lossSum / Double(evaluated.count)
    #expect(abs(evaluatedLoss - expected) / expected < 1e-6, "\(name): \(evaluatedLoss)")
    var given = try batch()
    given.sourceProjections = try model.sourceProjections(batch: given, state: state)
    #expect(try model.evaluationPass(batch: given, state: state).lossSum == evaluated.lossSum)
    let gradients = Self.gradients(state)
    let norms = try #require(spec["gradient_norms"]?.objectMembers)
    #expect(Set(norms.map(\.0)) == Set(gradients.keys))
    /// The cross-attention key bias adds a constant to each row of scores, which softmax
    /// ignores: its gradient is zero up to rounding, checked against the query bias's.
    func keyBias(_ key: String) -> Bool { key.hasSuffix("cross_attention.k.bias") }
    func norm(_ values: [Float]) -> Double {
      values.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
    }
    for (key, values) in gradients where keyBias(key) {
      let query = norm(gradients[key.replacingOccurrences(of: ".k.bias", with: ".q.bias")] ?? [])
      #expect(norm(values) <= 1e-3 * query, "\(name): ‖\(key)‖ \(norm(values)) vs q \(query)")
    }
    var worst = 0.0
    for key in try #require(spec["stored_gradients"]?.arrayValue).compactMap(\.stringValue)
    where !keyBias(key) {
      let weight = try arrays.weight("\(name).grad.\(key)")
      let want = withExtendedLifetime(weight) { Array(weight.values) }
      let error = relativeFrobenius(try #require(gradients[key], "no \(key)"), want)
      worst = max(worst, error)
      #expect(error < 1e-4, "\(name): \(key) relative error \(error)")
    }
    for (key, value) in norms where !keyBias(key) {
      let want = try #require(value.doubleValue)
      let got = norm(gradients[key] ?? [])
      #expect(abs(got - want) <= 1e-4 * max(want, 1e-12), "\(name): ‖\(key)‖ \(got) vs \(want)")
    }
    print("\(name): loss relative \(abs(loss - expected) / expected), worst gradient \(worst)")
  }

  /// The pass splits sequences and row chunks in a fixed way: 1 and 3 threads give the same
  /// bits as 2. Gradient checkpointing (each block recomputed in the backward pass, the fused
  /// layers reading the kept source states again: FLARE.md §9 pitfall 1 is the reference
  /// losing them there) gives the same bits too.
  @Test("a FLARE pass is bit-identical for any thread count and with gradient checkpointing")
  func threadIndependence() throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let model = try LlamaModel(path: folder)
    var runs: [[String: [Float]]] = []
    for (threads, checkpointing) in [(1, false), (2, false), (3, false), (2, true)] {
      model.trainingThreads = threads
      model.gradientCheckpointing = checkpointing
      let state = try state("matmul-causal", model: model)
      _ = try model.trainingPass(batch: try batch(), state: state, gradientScale: 0.5)
      runs.append(Self.gradients(state))
    }
    #expect(runs[0] == runs[1])
    #expect(runs[1] == runs[2])
    #expect(runs[1] == runs[3])
  }

  /// FLARE.md §9 pitfall 1 (the reference's LLM path lost the source states under gradient
  /// checkpointing): with `B = 0` (a fresh adapter) the loss equals the plain model's and does
  /// not depend on the source, but the gradient of every fused `B` does: changing the source
  /// tokens changes it, and leaves the plain (k_proj) `B`'s gradient alone only through the
  /// fused layers' outputs, which are unchanged at `B = 0`.
  @Test("B = 0: the loss ignores the source, the fused B gradients do not")
  func sourceReachesTraining() throws {
    guard let folder = try smolLM2HFFolder() else { return }
    let model = try LlamaModel(path: folder)
    model.trainingThreads = 2
    var passes: [(loss: Double, gradients: [String: [Float]])] = []
    for perturbed in [false, true] {
      let state = try state("add_relu", model: model, zeroB: true)
      let result = try model.trainingPass(
        batch: try batch(perturbed: perturbed), state: state, gradientScale: 1)
      passes.append((result.lossSum, Self.gradients(state)))
    }
    let plain = try model.evaluationPass(
      batch: try batch(), state: TrainingState(loras: [:]))
    #expect(passes[0].loss == passes[1].loss)
    #expect(abs(passes[0].loss - plain.lossSum) <= 1e-9 * plain.lossSum)
    for layer in [0, 15, 29] {
      for projection in ["q_proj", "v_proj"] {
        let key = "base_model.model.model.layers.\(layer).self_attn.\(projection).lora_B.weight"
        let (a, b) = (passes[0].gradients[key] ?? [], passes[1].gradients[key] ?? [])
        #expect(!a.isEmpty && a.contains { $0 != 0 }, "\(key) has no gradient")
        #expect(relativeFrobenius(b, a) > 1e-3, "\(key) does not depend on the source")
      }
      let key = "base_model.model.model.layers.\(layer).self_attn.k_proj.lora_B.weight"
      #expect(passes[0].gradients[key] == passes[1].gradients[key], "\(key) moved")
    }
  }
}

/// One FLARE step on multilingual-e5-small (classification, post-LN XLM-R) against PyTorch +
/// PEFT (`Fixtures/training/make_encoder_flare_grads.py`: make_encoder_grads.py's e5 set-up
/// with LoRA r 4 on query/value, those layers patched into FLARE-fused layers in the
/// reference's form, the source states the model's `hidden_states` on the English text).
@Suite("FLARE training on e5-small vs PyTorch + PEFT")
struct EncoderFlareTrainingTests {
  /// Tolerances as the plain-LoRA encoder check (the float32 oracle): the loss within 1e-5
  /// relative, every LoRA and head gradient and every cross-attention weight's within 1e-4
  /// relative Frobenius; the key biases (true gradient zero) at most 1e-3 of the query bias's.
  @Test(
    "loss and every gradient of a FLARE step match PyTorch",
    arguments: ["add_relu", "cross-attention"])
  func step(_ fusionName: String) throws {
    guard let model = try EncoderTrainingTests.model("e5") else { return }
    model.trainingThreads = 2
    let golden = try EncoderTrainingGolden("e5-flare-\(fusionName)")
    var state = try golden.state(for: model)
    var attention: [String: TrainableFusionAttention] = [:]
    for module in state.loras.keys {
      let prefix = "base_model.model.\(module).cross_attention"
      guard golden.arrays.contains("init.\(prefix).q.weight") else { continue }
      func tensor(_ part: String) throws -> TrainableTensor {
        let name = "\(prefix).\(part)"
        return TrainableTensor(
          name: name, shape: try golden.arrays.weight("init.\(name)").shape,
          values: try golden.floats("init.\(name)"))
      }
      attention[module] = TrainableFusionAttention(
        query: try tensor("q.weight"), queryBias: try tensor("q.bias"),
        key: try tensor("k.weight"), keyBias: try tensor("k.bias"),
        value: try tensor("v.weight"), valueBias: try tensor("v.bias"))
    }
    let fusion = try #require(FLAREConfig.Fusion(rawValue: fusionName))
    state.fusion = TrainingFusion(
      fusion: fusion, fusedModules: Set(state.loras.keys), causal: false,
      heads: try #require(golden.json["cross_attention_heads"]?.intValue),
      attention: attention)
    #expect(fusion != .crossAttention || attention.count == state.loras.count)
    var batch = try golden.batch
    batch.source = try intRows(golden.json["source_ids"])
    batch.sourceMask = try intRows(golden.json["source_mask"]).map { $0.map { $0 != 0 } }
    let rows = batch.tokens.count
    let result = try model.trainingPass(
      batch: batch, state: state, gradientScale: 1 / Float(rows))
    let loss = result.lossSum / Double(result.count)
    let expected = try #require(golden.json["loss"]?.doubleValue)
    #expect(abs(loss - expected) / expected <= 1e-5, "loss \(loss) vs \(expected)")
    var worst = 0.0
    for tensor in state.parameters {
      let head = golden.json["heads"]?[tensor.name]?["gradient"]
      let want =
        try head.map { try golden.gradient(tensor.name, entry: $0) }
        ?? golden.floats("grad.\(tensor.name)")
      if tensor.name.hasSuffix("cross_attention.k.bias") {
        let query = try golden.floats(
          "grad.\(tensor.name.replacingOccurrences(of: ".k.bias", with: ".q.bias"))")
        let scale = query.map { abs(Double($0)) }.max() ?? 1
        let got = tensor.gradient.map { abs(Double($0)) }.max() ?? 0
        #expect(got <= 1e-3 * scale, "\(tensor.name): \(got) vs q bias \(scale)")
        continue
      }
      let error = relativeFrobenius(tensor.gradient, want)
      worst = max(worst, error)
      #expect(error <= 1e-4, "\(tensor.name): relative error \(error)")
    }
    print(
      "e5 FLARE \(fusionName): loss relative \(abs(loss - expected) / expected), worst \(worst)")
  }
}
