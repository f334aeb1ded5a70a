import FlareCore
import FlareModels
import FlareTrain
import Testing
import _FlareTestSupport

/// AdamW, the schedules and clipping against PyTorch.
///
/// Oracle: `torch.optim.AdamW` + `LambdaLR` with transformers' `get_*_schedule_with_warmup` +
/// `torch.nn.utils.clip_grad_norm_`, run by `Fixtures/training/make_optimizer_golden.py` on three
/// small tensors over 10 steps with fixed gradients (clipped and unclipped steps, weight decay
/// on the weights but not the bias). Tolerance: 1e-6 relative on every parameter after every
/// step, 1e-6 relative on the gradient norm, 1e-15 relative on the learning rate.
@Suite("optimizer against PyTorch")
struct OptimizerTests {
  static let golden: JSONValue? = try? loadFixtureJSON("training/optimizer-golden.json")

  static var runNames: [String] {
    (golden?["runs"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
  }

  @Test("every step matches torch.optim.AdamW + LambdaLR + clip_grad_norm_", arguments: runNames)
  func trajectory(name: String) throws {
    let golden = try #require(Self.golden)
    let run = try #require(golden["runs"]?.arrayValue?.first { $0["name"]?.stringValue == name })
    let names = try #require(golden["shapes"]?.objectMembers).map(\.0)
    let parameters = try names.map { name in
      TrainableTensor(
        name: name, shape: integers(golden["shapes"]?[name]),
        values: floats(try #require(golden["init"]?[name])))
    }
    let schedule = try #require(LearningRateSchedule(rawValue: run["schedule"]?.stringValue ?? ""))
    let warmup = try #require(run["warmup"]?.intValue)
    let total = try #require(run["total"]?.intValue)
    let lr = try #require(run["lr"]?.doubleValue)
    let maxNorm = try #require(run["max_grad_norm"]?.doubleValue)
    var adam = AdamW(
      parameters: parameters,
      options: AdamW.Options(
        beta1: run["beta1"]?.doubleValue ?? 0, beta2: run["beta2"]?.doubleValue ?? 0,
        epsilon: run["eps"]?.doubleValue ?? 0, weightDecay: run["weight_decay"]?.doubleValue ?? 0))
    #expect(adam.decayMask == names.map { !$0.hasSuffix("bias") })
    let grads = try #require(golden["grads"]?.arrayValue)
    let steps = try #require(run["steps"]?.arrayValue)
    for (step, expected) in steps.enumerated() {
      for parameter in parameters { parameter.gradient = floats(grads[step][parameter.name]) }
      let norm = GradientClipping.clip(parameters, maxNorm: maxNorm)
      let wantNorm = try #require(expected["grad_norm"]?.doubleValue)
      #expect(abs(norm - wantNorm) <= 1e-6 * wantNorm, "\(name) step \(step): norm \(norm)")
      let rate = lr * schedule.multiplier(step: step, warmup: warmup, total: total)
      let wantRate = try #require(expected["lr"]?.doubleValue)
      #expect(abs(rate - wantRate) <= 1e-15 * max(wantRate, 1e-300), "\(name) step \(step)")
      adam.update(parameters, learningRate: rate)
      for parameter in parameters {
        let want = floats(expected["params"]?[parameter.name])
        let error = relativeError(parameter.values, want)
        #expect(error <= 1e-6, "\(name) step \(step) \(parameter.name): \(error)")
      }
    }
    #expect(adam.step == steps.count)
  }

  /// Oracle: transformers' `Trainer.get_decay_parameter_names` patterns (read in its source):
  /// no decay for names containing `bias`, `layernorm`, `rmsnorm`, a `norm` component or a
  /// component ending in `_norm`.
  @Test("weight decay skips biases and norms as transformers' Trainer does")
  func decayRule() {
    #expect(AdamW.decays("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"))
    #expect(AdamW.decays("base_model.model.classifier.weight"))
    #expect(!AdamW.decays("base_model.model.classifier.bias"))
    #expect(!AdamW.decays("base_model.model.classifier.out_proj.bias"))
    #expect(!AdamW.decays("model.norm.weight"))
    #expect(!AdamW.decays("model.layers.0.input_layernorm.weight"))
    #expect(!AdamW.decays("model.layers.0.q_norm.weight"))
    #expect(AdamW.decays("model.layers.0.normalizer.weight"))
  }

  /// Oracle: the formulas of transformers' `get_*_schedule_with_warmup` evaluated by hand at
  /// the edges: 0 at step 0 with warm-up, 1 at the end of the warm-up, 0 at the end.
  @Test("schedules start at 0 with warm-up, peak after it, and decay to 0")
  func scheduleEdges() {
    for schedule in LearningRateSchedule.allCases {
      #expect(schedule.multiplier(step: 0, warmup: 4, total: 10) == 0)
      #expect(schedule.multiplier(step: 2, warmup: 4, total: 10) == 0.5)
      #expect(schedule.multiplier(step: 4, warmup: 4, total: 10) == 1)
    }
    #expect(LearningRateSchedule.linear.multiplier(step: 10, warmup: 4, total: 10) == 0)
    #expect(LearningRateSchedule.cosine.multiplier(step: 10, warmup: 4, total: 10) == 0)
    #expect(LearningRateSchedule.linear.multiplier(step: 7, warmup: 4, total: 10) == 0.5)
    #expect(
      abs(LearningRateSchedule.cosine.multiplier(step: 7, warmup: 4, total: 10) - 0.5) < 1e-15)
    #expect(LearningRateSchedule.constant.multiplier(step: 99, warmup: 0, total: 10) == 1)
  }

  /// Oracle: `clip_grad_norm_`'s rule, by hand: no change at or below the limit, scale
  /// `max/(n + 1e-6)` above it.
  @Test("clipping scales by max/(norm + 1e-6) only above the limit")
  func clipping() {
    let t = TrainableTensor(name: "w", shape: [2], values: [0, 0])
    t.gradient = [3, 4]
    #expect(GradientClipping.clip([t], maxNorm: 10) == 5)
    #expect(t.gradient == [3, 4])
    #expect(GradientClipping.clip([t], maxNorm: 1) == 5)
    let coefficient = Float(1) / (Float(5) + Float(1e-6))
    #expect(t.gradient == [3 * coefficient, 4 * coefficient])
    t.gradient = [.nan, 1]
    #expect(GradientClipping.clip([t], maxNorm: 1).isNaN)
  }
}
