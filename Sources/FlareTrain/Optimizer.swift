import FlareCore
import FlareModels

/// AdamW as `torch.optim.AdamW` computes it (decoupled weight decay, bias correction, `ε`
/// outside the square root), over a fixed list of ``TrainableTensor``s.
///
/// Step `t` (from 1), for each parameter `p` with gradient `g`:
/// `p ← p·(1 − lr·wd)`; `m ← m + (1−β₁)(g − m)`; `v ← β₂v + (1−β₂)g²`;
/// `p ← p − (lr/(1−β₁ᵗ))·m / (√v/√(1−β₂ᵗ) + ε)`. Scalars that PyTorch computes in Python
/// (bias corrections, step size) are `Double` here; element arithmetic is `Float`, in
/// PyTorch's order of operations. Checked against PyTorch step by step
/// (`Fixtures/training/optimizer-golden.json`).
public struct AdamW: Sendable {
  /// The hyperparameters besides the learning rate (which the schedule sets per step).
  public struct Options: Sendable, Equatable {
    public var beta1: Double
    public var beta2: Double
    public var epsilon: Double
    /// Decoupled weight decay, applied to the tensors ``decays(_:)`` selects.
    public var weightDecay: Double

    /// PyTorch's betas and ε with transformers' default weight decay (0).
    public init(
      beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8, weightDecay: Double = 0
    ) {
      self.beta1 = beta1
      self.beta2 = beta2
      self.epsilon = epsilon
      self.weightDecay = weightDecay
    }
  }

  public let options: Options
  /// Optimizer steps taken.
  public private(set) var step: Int = 0
  /// First moments (`exp_avg`), one array per parameter, in parameter order.
  public private(set) var firstMoments: [[Float]]
  /// Second moments (`exp_avg_sq`), one array per parameter, in parameter order.
  public private(set) var secondMoments: [[Float]]
  /// Whether each parameter gets weight decay.
  public let decayMask: [Bool]

  /// Fresh state (zero moments) for `parameters`.
  public init(parameters: [TrainableTensor], options: Options) {
    self.options = options
    firstMoments = parameters.map { [Float](repeating: 0, count: $0.count) }
    secondMoments = firstMoments
    decayMask = parameters.map { Self.decays($0.name) }
  }

  /// Restores saved state.
  /// - Throws: ``FlareError`` when the moments do not match the parameters' sizes.
  public init(
    parameters: [TrainableTensor], options: Options, step: Int, firstMoments: [[Float]],
    secondMoments: [[Float]]
  ) throws {
    self.init(parameters: parameters, options: options)
    guard firstMoments.count == parameters.count, secondMoments.count == parameters.count,
      step >= 0
    else {
      throw FlareError(
        "train", .invalidArgument,
        "the optimizer state holds \(firstMoments.count) tensors; the adapter has \(parameters.count)"
      )
    }
    for (i, parameter) in parameters.enumerated()
    where firstMoments[i].count != parameter.count || secondMoments[i].count != parameter.count {
      throw FlareError(
        "train", .invalidArgument, "optimizer moments do not match the parameter's size",
        tensor: parameter.name)
    }
    self.step = step
    self.firstMoments = firstMoments
    self.secondMoments = secondMoments
  }

  /// transformers' Trainer rule for weight decay: no decay for parameters whose lowercased
  /// name contains `bias`, `layernorm` or `rmsnorm`, has a `norm` component or a component
  /// ending in `_norm` (`Trainer.get_decay_parameter_names`).
  public static func decays(_ name: String) -> Bool {
    let lower = name.lowercased()
    if lower.contains("bias") || lower.contains("layernorm") || lower.contains("rmsnorm") {
      return false
    }
    let components = lower.split(separator: ".", omittingEmptySubsequences: false)
    return !components.contains { $0 == "norm" || $0.hasSuffix("_norm") }
  }

  /// One optimizer step with learning rate `learningRate` on `parameters` (the same list, in
  /// the same order, as at creation), reading their gradients.
  public mutating func update(_ parameters: [TrainableTensor], learningRate lr: Double) {
    precondition(parameters.count == firstMoments.count, "parameter list changed")
    step += 1
    let t = Double(step)
    let beta1 = options.beta1
    let beta2 = options.beta2
    let lerpWeight = Float(1 - beta1)
    let b2 = Float(beta2)
    let oneMinusB2 = Float(1 - beta2)
    let biasCorrection1 = 1 - pow(beta1, t)
    let biasCorrection2 = 1 - pow(beta2, t)
    let stepSize = Float(-(lr / biasCorrection1))
    let correction2Root = Float(biasCorrection2.squareRoot())
    let epsilon = Float(options.epsilon)
    for (index, parameter) in parameters.enumerated() {
      let decay = decayMask[index] ? options.weightDecay : 0
      let shrink = Float(1 - lr * decay)
      let gradient = parameter.gradient
      firstMoments[index].withUnsafeMutableBufferPointer { m in
        secondMoments[index].withUnsafeMutableBufferPointer { v in
          parameter.values.withUnsafeMutableBufferPointer { p in
            gradient.withUnsafeBufferPointer { g in
              for i in 0..<p.count {
                if decay != 0 { p[i] *= shrink }
                // torch.lerp with a weight below 0.5: m + w·(g − m).
                m[i] = m[i] + lerpWeight * (g[i] - m[i])
                v[i] = v[i] * b2 + oneMinusB2 * g[i] * g[i]
                let denominator = v[i].squareRoot() / correction2Root + epsilon
                // addcdiv: p + value·m / denominator.
                p[i] = p[i] + stepSize * m[i] / denominator
              }
            }
          }
        }
      }
    }
  }
}

/// Learning-rate schedules with linear warm-up, as transformers' `get_*_schedule_with_warmup`
/// define them (a multiplier on the base learning rate).
public enum LearningRateSchedule: String, CaseIterable, Sendable {
  case constant, linear, cosine

  /// The multiplier for optimizer step `step` (counted from 0; the scheduler is stepped after
  /// each optimizer step), with `warmup` warm-up steps and `total` steps in all.
  ///
  /// Warm-up: `s / max(1, W)` for `s < W`. Then constant: 1; linear:
  /// `max(0, (S − s) / max(1, S − W))`; cosine (half a period):
  /// `max(0, ½(1 + cos(π·(s − W) / max(1, S − W))))`.
  public func multiplier(step s: Int, warmup w: Int, total: Int) -> Double {
    if s < w { return Double(s) / Double(max(1, w)) }
    switch self {
    case .constant:
      return 1
    case .linear:
      return max(0, Double(total - s) / Double(max(1, total - w)))
    case .cosine:
      let progress = Double(s - w) / Double(max(1, total - w))
      return max(0, 0.5 * (1 + cos(Double.pi * 0.5 * 2 * progress)))
    }
  }
}

/// Gradient clipping by global norm, as `torch.nn.utils.clip_grad_norm_`.
public enum GradientClipping {
  /// `‖all gradients‖₂`, one norm over every element of every tensor (accumulated in `Double`).
  public static func globalNorm(_ parameters: [TrainableTensor]) -> Double {
    var sum = 0.0
    for parameter in parameters {
      parameter.gradient.withUnsafeBufferPointer { g in
        for value in g { sum += Double(value) * Double(value) }
      }
    }
    return sum.squareRoot()
  }

  /// Scales every gradient by `maxNorm / (norm + 1e-6)` when that is below 1 (PyTorch's
  /// clamped coefficient), and returns the norm before clipping. A non-finite norm is returned
  /// unchanged and nothing is scaled (the trainer stops on it).
  @discardableResult
  public static func clip(_ parameters: [TrainableTensor], maxNorm: Double) -> Double {
    let norm = globalNorm(parameters)
    guard norm.isFinite else { return norm }
    let coefficient = Float(maxNorm) / (Float(norm) + Float(1e-6))
    guard coefficient < 1 else { return norm }
    for parameter in parameters {
      parameter.gradient.withUnsafeMutableBufferPointer { g in
        for i in g.indices { g[i] *= coefficient }
      }
    }
    return norm
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif
