import FlareCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// How the next token is chosen from the logits.
public struct SamplingOptions: Sendable {
  /// 0 means greedy (argmax, the lowest id on ties, as `torch.argmax`).
  public var temperature: Float = 0
  /// Keep only the `topK` most likely tokens (0: all).
  public var topK: Int = 0
  /// Keep the smallest set of most likely tokens whose probability reaches `topP` (1: all).
  public var topP: Float = 1
  /// The seed of the random generator (SplitMix64), so a sampled run can be repeated.
  public var seed: UInt64 = 0

  public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, seed: UInt64 = 0) {
    self.temperature = temperature
    self.topK = topK
    self.topP = topP
    self.seed = seed
  }
}

/// Chooses tokens from logits: greedy, or temperature → top-k → top-p → a draw, the order
/// transformers' `generate` applies them in.
public struct Sampler: Sendable {
  public let options: SamplingOptions
  private var random: SplitMix64

  public init(_ options: SamplingOptions) {
    self.options = options
    random = SplitMix64(seed: options.seed)
  }

  /// The index of the largest value (the first one on ties).
  public static func argmax(_ logits: ArraySlice<Float>) -> Int {
    var best = logits.startIndex
    for i in logits.indices where logits[i] > logits[best] { best = i }
    return best - logits.startIndex
  }

  /// The next token for one row of logits.
  public mutating func next(_ logits: ArraySlice<Float>) -> Int {
    guard options.temperature > 0 else { return Sampler.argmax(logits) }
    let base = logits.startIndex
    var order = Array(0..<logits.count)
    order.sort {
      logits[base + $0] > logits[base + $1] || (logits[base + $0] == logits[base + $1] && $0 < $1)
    }
    if options.topK > 0 && options.topK < order.count {
      order.removeLast(order.count - options.topK)
    }
    let scaled = order.map { Double(logits[base + $0]) / Double(options.temperature) }
    let largest = scaled.first ?? 0
    var weights = scaled.map { exp($0 - largest) }
    let total = weights.reduce(0, +)
    weights = weights.map { $0 / total }
    if options.topP < 1 {
      var kept = 0
      var sum = 0.0
      while kept < weights.count {
        sum += weights[kept]
        kept += 1
        if sum >= Double(options.topP) { break }
      }
      weights.removeLast(weights.count - kept)
      order.removeLast(order.count - kept)
    }
    let draw = random.nextUnit() * weights.reduce(0, +)
    var running = 0.0
    for (i, weight) in weights.enumerated() {
      running += weight
      if draw < running { return order[i] }
    }
    return order.last ?? 0
  }
}

extension LlamaModel {
  /// Generates up to `maxTokens` tokens after `prompt` (one sequence, KV cache), stopping
  /// after any of `stop` or at the end of the model's context. `onToken` sees each new token and may return `false` to stop.
  /// - Returns: The generated ids (a stop token included when it ended the run).
  public func generate(
    prompt: [Int], maxTokens: Int, sampling: SamplingOptions = SamplingOptions(),
    stop: Set<Int> = [], onToken: (Int) -> Bool = { _ in true }
  ) throws -> [Int] {
    guard !prompt.isEmpty else {
      throw FlareError("model", .invalidArgument, "the prompt has no tokens")
    }
    guard prompt.count <= config.contextLength else {
      throw FlareError(
        "model", .invalidArgument,
        "the prompt has \(prompt.count) tokens; the model's context holds \(config.contextLength)")
    }
    // Generation stops at the end of the context, as llama.cpp's does.
    let maxTokens = min(max(maxTokens, 0), config.contextLength - prompt.count)
    let cache = makeCache(batch: 1, capacity: prompt.count + maxTokens)
    var sampler = Sampler(sampling)
    var logits = try forward(tokens: [prompt], cache: cache)
    var out: [Int] = []
    while out.count < maxTokens {
      let next = sampler.next(logits[...])
      out.append(next)
      if stop.contains(next) || !onToken(next) || out.count == maxTokens { break }
      logits = try forward(tokens: [[next]], cache: cache)
    }
    return out
  }
}
