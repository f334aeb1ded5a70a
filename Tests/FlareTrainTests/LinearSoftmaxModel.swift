import FlareModels
import FlareTrain
import Foundation

/// A tiny ``TrainableModel`` with an analytic gradient, standing in for the real models in the
/// trainer's tests. `Fixtures/training/make_trainer_golden.py` writes the same model in torch.
///
/// - Causal LM: `logits_t = W·x_t + s·B·A·drop(x_t)`, `x_t = E[token_t]`, cross-entropy against
///   `labels[t + 1]` (skipping `-100`); LoRA on the module `lm.proj` (`W`: `[vocab, dim]`).
/// - Classification: `h` = mean of `E[token]` over the row's real tokens,
///   `z = W·h + s·B·A·drop(h)` (module `encoder.proj`, `W`: `[dim, dim]`), logits `H·z + c`
///   with the head `H`, `c` trained in full (`classifier`).
///
/// `E` and `W` are frozen. LoRA dropout masks come from ``Kernels/dropoutMask`` seeded with the
/// micro-batch seed, as the real models draw theirs.
class LinearSoftmaxModel: TrainableModel, ClassificationHeadProvider, @unchecked Sendable {
  let vocabulary: Int
  let dim: Int
  let embedding: [Float]
  let weight: [Float]
  let classification: Bool
  /// Returns a NaN loss from this training-pass call on (counting from 0), when set.
  var nanFromCall: Int?
  var trainingCalls = 0
  /// Set by the run (`--threads`); the model itself runs on one thread.
  var trainingThreads = 1

  init(vocabulary: Int, dim: Int, embedding: [Float], weight: [Float], classification: Bool) {
    self.vocabulary = vocabulary
    self.dim = dim
    self.embedding = embedding
    self.weight = weight
    self.classification = classification
  }

  /// A seeded random instance.
  convenience init(vocabulary: Int, dim: Int, classification: Bool, seed: UInt64) {
    var random = SplitMix64(seed: seed)
    let out = classification ? dim : vocabulary
    self.init(
      vocabulary: vocabulary, dim: dim,
      embedding: (0..<(vocabulary * dim)).map { _ in random.normal() },
      weight: (0..<(out * dim)).map { _ in random.normal(std: 0.4) },
      classification: classification)
  }

  var module: String { classification ? "encoder.proj" : "lm.proj" }
  var outFeatures: Int { classification ? dim : vocabulary }

  var linearModules: [String] { [module] }

  func linearShape(_ name: String) -> (outFeatures: Int, inFeatures: Int)? {
    name == module ? (outFeatures, dim) : nil
  }

  var classificationModules: [String] { ClassificationHeads.modulesToSave }

  func makeClassificationHead(classes: Int, random: inout SplitMix64) throws
    -> [TrainableTensor]
  {
    ClassificationHeads.bert(hidden: dim, classes: classes, random: &random)
  }

  func trainingPass(batch: TrainingBatch, state: TrainingState, gradientScale: Float) throws
    -> TrainingPassResult
  {
    defer { trainingCalls += 1 }
    var result = run(batch: batch, state: state, gradientScale: gradientScale, train: true)
    if let nanFromCall, trainingCalls >= nanFromCall { result.lossSum = .nan }
    return result
  }

  func evaluationPass(batch: TrainingBatch, state: TrainingState) throws -> TrainingPassResult {
    run(batch: batch, state: state, gradientScale: 0, train: false)
  }

  /// One input vector `x` through the adapted layer: `W·x + s·B·A·drop(x)`; returns the output
  /// and `A·drop(x)` and the dropped input (for the backward pass).
  private func layer(_ x: [Float], lora: TrainableLoRA?, mask: [Float]?) -> (
    out: [Float], ax: [Float], dropped: [Float]
  ) {
    var out = [Float](repeating: 0, count: outFeatures)
    for o in 0..<outFeatures {
      var sum: Float = 0
      for i in 0..<dim { sum += weight[o * dim + i] * x[i] }
      out[o] = sum
    }
    guard let lora else { return (out, [], x) }
    let dropped = mask.map { m in zip(x, m).map { $0 * $1 } } ?? x
    let r = lora.rank
    var ax = [Float](repeating: 0, count: r)
    for k in 0..<r {
      var sum: Float = 0
      for i in 0..<dim { sum += lora.a.values[k * dim + i] * dropped[i] }
      ax[k] = sum
    }
    for o in 0..<outFeatures {
      var sum: Float = 0
      for k in 0..<r { sum += lora.b.values[o * r + k] * ax[k] }
      out[o] += lora.scale * sum
    }
    return (out, ax, dropped)
  }

  /// Accumulates the LoRA gradients of one input given `dOut`.
  private func layerBackward(
    _ dOut: [Float], ax: [Float], dropped: [Float], lora: TrainableLoRA
  ) {
    let r = lora.rank
    for o in 0..<outFeatures {
      for k in 0..<r { lora.b.gradient[o * r + k] += lora.scale * dOut[o] * ax[k] }
    }
    for k in 0..<r {
      var sum: Float = 0
      for o in 0..<outFeatures { sum += lora.b.values[o * r + k] * dOut[o] }
      for i in 0..<dim { lora.a.gradient[k * dim + i] += lora.scale * sum * dropped[i] }
    }
  }

  /// Softmax cross-entropy of `logits` against `target`: the loss and `softmax − onehot`.
  private func crossEntropy(_ logits: [Float], target: Int) -> (Double, [Float]) {
    let largest = logits.max() ?? 0
    var total = 0.0
    for value in logits { total += Double((value - largest).exp) }
    let loss = log(total) - Double(logits[target] - largest)
    var gradient = logits.map { Float(Double(($0 - largest).exp) / total) }
    gradient[target] -= 1
    return (loss, gradient)
  }

  private func run(batch: TrainingBatch, state: TrainingState, gradientScale: Float, train: Bool)
    -> TrainingPassResult
  {
    let lora = state.loras[module]
    var lossSum = 0.0
    var count = 0
    var predictions: [Int] = []
    var maskOffset: UInt64 = 0
    func dropoutMask() -> [Float]? {
      guard train, let lora, lora.dropout > 0 else { return nil }
      var mask = [Float](repeating: 0, count: dim)
      mask.withUnsafeMutableBufferPointer {
        Kernels.dropoutMask(
          $0.baseAddress!, count: dim, probability: lora.dropout, seed: state.seed,
          offset: maskOffset)
      }
      maskOffset += UInt64(dim)
      return mask
    }
    for (row, tokens) in batch.tokens.enumerated() {
      let mask = batch.mask[row]
      switch batch.targets {
      case .tokens(let labels):
        for t in 0..<(tokens.count - 1) where mask[t] && labels[row][t + 1] != -100 {
          let x = Array(embedding[(tokens[t] * dim)..<((tokens[t] + 1) * dim)])
          let (logits, ax, dropped) = layer(x, lora: lora, mask: dropoutMask())
          let (loss, dLogits) = crossEntropy(logits, target: labels[row][t + 1])
          lossSum += loss
          count += 1
          if train, let lora {
            layerBackward(dLogits.map { $0 * gradientScale }, ax: ax, dropped: dropped, lora: lora)
          }
        }
      case .classes(let classes):
        var h = [Float](repeating: 0, count: dim)
        let real = mask.filter { $0 }.count
        for t in tokens.indices where mask[t] {
          for i in 0..<dim { h[i] += embedding[tokens[t] * dim + i] }
        }
        h = h.map { $0 / Float(real) }
        let (z, ax, dropped) = layer(h, lora: lora, mask: dropoutMask())
        guard let head = state.heads["base_model.model.classifier.weight"],
          let bias = state.heads["base_model.model.classifier.bias"]
        else { continue }
        let c = bias.count
        var logits = bias.values
        for k in 0..<c {
          for i in 0..<dim { logits[k] += head.values[k * dim + i] * z[i] }
        }
        predictions.append(logits.indices.max { logits[$0] < logits[$1] } ?? 0)
        let (loss, dLogitsRaw) = crossEntropy(logits, target: classes[row])
        lossSum += loss
        count += 1
        guard train else { continue }
        let dLogits = dLogitsRaw.map { $0 * gradientScale }
        var dz = [Float](repeating: 0, count: dim)
        for k in 0..<c {
          bias.gradient[k] += dLogits[k]
          for i in 0..<dim {
            head.gradient[k * dim + i] += dLogits[k] * z[i]
            dz[i] += head.values[k * dim + i] * dLogits[k]
          }
        }
        if let lora { layerBackward(dz, ax: ax, dropped: dropped, lora: lora) }
      }
    }
    return TrainingPassResult(
      lossSum: lossSum, count: count, predictions: classification ? predictions : nil)
  }
}

extension Float {
  fileprivate var exp: Float { Float(Foundation.exp(Double(self))) }
}
