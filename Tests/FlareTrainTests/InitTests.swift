import FlareAdapters
import FlareCore
import FlareModels
import FlareTrain
import Testing
import _FlareTestSupport

/// The seeded generator and PEFT's LoRA initialisation.
@Suite("LoRA init and seeded randomness")
struct InitTests {
  static let golden: JSONValue? = try? loadFixtureJSON("training/optimizer-golden.json")

  /// Oracle: Vigna's reference `splitmix64.c`, run in Python (`make_optimizer_golden.py`).
  /// Exact.
  @Test("SplitMix64 matches the reference generator")
  func splitMix() throws {
    let reference = try #require(Self.golden?["splitmix64"]?.objectMembers)
    #expect(reference.count == 2)
    for (seed, outputs) in reference {
      var random = SplitMix64(seed: try #require(UInt64(seed)))
      let want = (outputs.arrayValue ?? []).compactMap { $0.stringValue.flatMap(UInt64.init) }
      #expect((0..<want.count).map { _ in random.next() } == want, "seed \(seed)")
    }
  }

  /// Oracle: the bound of `torch.nn.init.kaiming_uniform_(a=√5)` (PEFT's `lora_A` init),
  /// recorded from torch; Flare's `A` lies in `[−bound, bound)`, fills it (max |A| above 99 %
  /// of the bound), and has the uniform's variance `bound²/3` within 5 % over 24,576 draws;
  /// `B` is zero. Streams differ per module and repeat per seed.
  @Test("A is Kaiming-uniform with torch's bound, B is zero", arguments: [16, 576, 1536])
  func kaiming(inFeatures: Int) throws {
    let bound = try #require(Self.golden?["kaiming_bounds"]?[String(inFeatures)]?.doubleValue)
    #expect(abs(bound - 1 / Double(inFeatures).squareRoot()) < 1e-12)
    let model = LinearSoftmaxModel(
      vocabulary: 7, dim: inFeatures, classification: true, seed: 1)
    let settings = LoRASettings(
      targets: ["proj"], rank: 24576 / inFeatures, alpha: 16, rslora: true, dropout: 0)
    let loras = try LoRAFactory.create(
      model: model, modules: [model.module], settings: settings, seed: 9)
    let lora = try #require(loras[model.module])
    #expect(lora.a.shape == [24576 / inFeatures, inFeatures])
    #expect(lora.b.values.allSatisfy { $0 == 0 })
    #expect(lora.scale == Float(16 / Double(24576 / inFeatures).squareRoot()))
    let values = lora.a.values.map(Double.init)
    #expect(values.allSatisfy { $0 >= -bound && $0 < bound })
    #expect(values.map(abs).max() ?? 0 > 0.99 * bound)
    let variance = values.reduce(0) { $0 + $1 * $1 } / Double(values.count)
    #expect(abs(variance / (bound * bound / 3) - 1) < 0.05)
    let again = try LoRAFactory.create(
      model: model, modules: [model.module], settings: settings, seed: 9)
    #expect(again[model.module]?.a.values == lora.a.values)
    let other = try LoRAFactory.create(
      model: model, modules: [model.module], settings: settings, seed: 10)
    #expect(other[model.module]?.a.values != lora.a.values)
    #expect(lora.a.name == "base_model.model.encoder.proj.lora_A.weight")
  }

  /// Oracle: the uniformity of Fisher–Yates with unbiased draws: each of 3! orders of 3
  /// items appears 1/6 of 60,000 times within 3 %.
  @Test("permutations are uniform")
  func permutations() {
    var random = SplitMix64(seed: 2024)
    var counts: [[Int]: Int] = [:]
    for _ in 0..<60000 { counts[random.permutation(3), default: 0] += 1 }
    #expect(counts.count == 6)
    #expect(counts.values.allSatisfy { abs(Double($0) / 10000 - 1) < 0.03 })
  }

  /// `--init-adapter` refuses adapters it cannot train and modules the model lacks.
  /// Oracle: PEFT fixtures with DoRA and with modules of another model.
  @Test("--init-adapter refuses DoRA and foreign modules")
  func initRefusals() throws {
    let model = LinearSoftmaxModel(vocabulary: 7, dim: 4, classification: false, seed: 1)
    let dora = try PEFTAdapter(folder: fixturePath("peft/lora-dora"))
    #expect(throws: FlareError("train", .unsupported, "")) {
      try LoRAFactory.load(adapter: dora, model: model, heads: [], dropout: 0)
    }
    let plain = try PEFTAdapter(folder: fixturePath("peft/lora-plain"))
    do {
      _ = try LoRAFactory.load(adapter: plain, model: model, heads: [], dropout: 0)
      Issue.record("an adapter for another model was accepted")
    } catch let error as FlareError {
      #expect(error.code == .invalidArgument)
      #expect(error.message.contains("no linear module"))
    }
  }
}
