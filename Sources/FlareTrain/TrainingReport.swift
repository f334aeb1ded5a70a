/// `training_report.svg`: the training loss per step (raw, and smoothed), the validation loss
/// where it was measured, and the learning rate below, drawn by hand as a standalone SVG.
public enum TrainingReport {
  /// The SVG document for `log`.
  /// - Parameters:
  ///   - log: The run's log lines.
  ///   - title: A line naming the run (model, task).
  public static func svg(log: [TrainingLogEntry], title: String) -> String {
    let width = 860.0
    let left = 78.0
    let right = 24.0
    let plotWidth = width - left - right
    let lossTop = 70.0
    let lossHeight = 300.0
    let lrTop = lossTop + lossHeight + 56
    let lrHeight = 110.0
    let height = lrTop + lrHeight + 60
    var out = """
      <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="12">
      <rect width="100%" height="100%" fill="#ffffff"/>
      <text x="\(left)" y="28" font-size="16" font-weight="bold" fill="#222">\(escape(title))</text>

      """
    let steps = log.map { Double($0.step) }
    let losses = log.map(\.loss)
    let validation = log.compactMap { entry in
      entry.validation.map { (Double(entry.step), $0.loss) }
    }
    let smoothed = smooth(losses)
    out += "<text x=\"\(left)\" y=\"48\" fill=\"#555\">\(escape(summary(log)))</text>\n"
    guard let lastStep = steps.last else {
      out +=
        "<text x=\"\(left)\" y=\"\(lossTop + 40)\" fill=\"#555\">no steps logged</text>\n</svg>\n"
      return out
    }
    let xRange = (min: min(1, lastStep), max: max(lastStep, 2))
    func x(_ step: Double) -> Double {
      left + (step - xRange.min) / (xRange.max - xRange.min) * plotWidth
    }
    // Loss panel.
    let allLosses = losses + validation.map(\.1)
    let lossTicks = ticks(low: allLosses.min() ?? 0, high: allLosses.max() ?? 1)
    func yLoss(_ value: Double) -> Double {
      let (low, high) = (lossTicks.first ?? 0, lossTicks.last ?? 1)
      return lossTop + lossHeight - (value - low) / max(high - low, 1e-12) * lossHeight
    }
    out += frame(left: left, top: lossTop, width: plotWidth, height: lossHeight)
    for tick in lossTicks {
      out += gridLine(left: left, width: plotWidth, y: yLoss(tick), label: format(tick))
    }
    out += stepTicks(xRange: xRange, x: x, bottom: lossTop + lossHeight)
    out += axisLabel("loss", x: 18, y: lossTop + lossHeight / 2)
    out += polyline(zip(steps, losses).map { (x($0), yLoss($1)) }, color: "#9ecae1", width: 1)
    out += polyline(zip(steps, smoothed).map { (x($0), yLoss($1)) }, color: "#1f77b4", width: 2.2)
    if !validation.isEmpty {
      out += polyline(validation.map { (x($0.0), yLoss($0.1)) }, color: "#d62728", width: 2)
      for (step, loss) in validation {
        out +=
          "<circle cx=\"\(fixed(x(step)))\" cy=\"\(fixed(yLoss(loss)))\" r=\"3.5\" fill=\"#d62728\"/>\n"
      }
    }
    out += legend(
      [
        ("#9ecae1", "training loss (per step)"), ("#1f77b4", "training loss (smoothed)"),
      ] + (validation.isEmpty ? [] : [("#d62728", "validation loss")]),
      x: left + plotWidth - 210, y: lossTop + 16)
    // Learning-rate panel.
    let rates = log.map(\.learningRate)
    let rateTicks = ticks(low: 0, high: max(rates.max() ?? 1, 1e-12))
    func yRate(_ value: Double) -> Double {
      lrTop + lrHeight - value / max(rateTicks.last ?? 1, 1e-12) * lrHeight
    }
    out += frame(left: left, top: lrTop, width: plotWidth, height: lrHeight)
    for tick in rateTicks {
      out += gridLine(left: left, width: plotWidth, y: yRate(tick), label: format(tick))
    }
    out += stepTicks(xRange: xRange, x: x, bottom: lrTop + lrHeight)
    out += axisLabel("learning rate", x: 18, y: lrTop + lrHeight / 2)
    out += polyline(zip(steps, rates).map { (x($0), yRate($1)) }, color: "#2ca02c", width: 2)
    out +=
      "<text x=\"\(fixed(left + plotWidth / 2))\" y=\"\(fixed(lrTop + lrHeight + 40))\" text-anchor=\"middle\" fill=\"#333\">optimizer step</text>\n"
    out += "</svg>\n"
    return out
  }

  /// One line under the title: steps, final and best losses, accuracy.
  static func summary(_ log: [TrainingLogEntry]) -> String {
    guard let last = log.last else { return "" }
    var parts = ["\(last.step) steps", "final training loss \(format(last.loss))"]
    let checked = log.compactMap(\.validation)
    if let final = checked.last {
      parts.append("final validation loss \(format(final.loss))")
      if let best = checked.map(\.loss).min(), best != final.loss {
        parts.append("best \(format(best))")
      }
      if let accuracy = final.accuracy { parts.append("accuracy \(format(accuracy))") }
      if let f1 = final.macroF1 { parts.append("macro-F1 \(format(f1))") }
    }
    return parts.joined(separator: " · ")
  }

  /// An exponential moving average with a window that grows with the run (about a tenth of
  /// the steps), debiased at the start.
  static func smooth(_ values: [Double]) -> [Double] {
    let window = max(1.0, Double(values.count) / 10)
    let keep = 1 - 1 / window
    var average = 0.0
    var weight = 0.0
    return values.map { value in
      average = keep * average + (1 - keep) * value
      weight = keep * weight + (1 - keep)
      return average / weight
    }
  }

  /// About five round tick values covering `low…high`.
  static func ticks(low: Double, high: Double) -> [Double] {
    var low = low
    var high = high
    if high - low < 1e-12 {
      low -= max(abs(low) * 0.1, 1e-3)
      high += max(abs(high) * 0.1, 1e-3)
    }
    let rough = (high - low) / 5
    let magnitude = pow10(floor(log10(rough)))
    let fraction = rough / magnitude
    let step = (fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10) * magnitude
    let first = floor(low / step) * step
    var result: [Double] = []
    var value = first
    while value < high + step * 0.5 {
      result.append(value)
      value += step
    }
    if let last = result.last, last < high { result.append(last + step) }
    return result
  }

  static func frame(left: Double, top: Double, width: Double, height: Double) -> String {
    "<rect x=\"\(fixed(left))\" y=\"\(fixed(top))\" width=\"\(fixed(width))\" height=\"\(fixed(height))\" fill=\"#fafafa\" stroke=\"#bbb\"/>\n"
  }

  static func gridLine(left: Double, width: Double, y: Double, label: String) -> String {
    "<line x1=\"\(fixed(left))\" y1=\"\(fixed(y))\" x2=\"\(fixed(left + width))\" y2=\"\(fixed(y))\" stroke=\"#e3e3e3\"/>\n"
      + "<text x=\"\(fixed(left - 6))\" y=\"\(fixed(y + 4))\" text-anchor=\"end\" fill=\"#555\">\(label)</text>\n"
  }

  static func stepTicks(xRange: (min: Double, max: Double), x: (Double) -> Double, bottom: Double)
    -> String
  {
    var out = ""
    for tick in ticks(low: xRange.min, high: xRange.max)
    where tick >= xRange.min && tick <= xRange.max && tick == tick.rounded() {
      out +=
        "<text x=\"\(fixed(x(tick)))\" y=\"\(fixed(bottom + 16))\" text-anchor=\"middle\" fill=\"#555\">\(Int(tick))</text>\n"
    }
    return out
  }

  static func axisLabel(_ text: String, x: Double, y: Double) -> String {
    "<text x=\"\(fixed(x))\" y=\"\(fixed(y))\" transform=\"rotate(-90 \(fixed(x)) \(fixed(y)))\" text-anchor=\"middle\" fill=\"#333\">\(text)</text>\n"
  }

  static func polyline(_ points: [(Double, Double)], color: String, width: Double) -> String {
    guard !points.isEmpty else { return "" }
    let list = points.map { "\(fixed($0.0)),\(fixed($0.1))" }.joined(separator: " ")
    return
      "<polyline points=\"\(list)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"\(width)\" stroke-linejoin=\"round\"/>\n"
  }

  static func legend(_ items: [(String, String)], x: Double, y: Double) -> String {
    var out =
      "<rect x=\"\(fixed(x - 8))\" y=\"\(fixed(y - 12))\" width=\"210\" height=\"\(fixed(Double(items.count) * 18 + 8))\" fill=\"#ffffff\" fill-opacity=\"0.85\" stroke=\"#ddd\"/>\n"
    for (i, (color, label)) in items.enumerated() {
      let rowY = y + Double(i) * 18
      out +=
        "<line x1=\"\(fixed(x))\" y1=\"\(fixed(rowY - 4))\" x2=\"\(fixed(x + 22))\" y2=\"\(fixed(rowY - 4))\" stroke=\"\(color)\" stroke-width=\"3\"/>\n"
      out += "<text x=\"\(fixed(x + 30))\" y=\"\(fixed(rowY))\" fill=\"#333\">\(label)</text>\n"
    }
    return out
  }

  /// A coordinate with two decimals.
  static func fixed(_ value: Double) -> String {
    let scaled = (value * 100).rounded()
    let sign = scaled < 0 ? "-" : ""
    let magnitude = Int(abs(scaled))
    let fraction = magnitude % 100
    return "\(sign)\(magnitude / 100).\(fraction < 10 ? "0" : "")\(fraction)"
  }

  /// A value with about four significant digits (`2.345`, `0.0002`, `1.2e-05`).
  static func format(_ value: Double) -> String {
    if value == 0 { return "0" }
    let magnitude = abs(value)
    if magnitude >= 1e-3 && magnitude < 1e5 {
      let digits = max(0, 3 - Int(floor(log10(magnitude))))
      let scale = pow10(Double(digits))
      let rounded = (value * scale).rounded() / scale
      var text = "\(rounded)"
      if text.contains("."), !text.contains("e") {
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
      }
      return text
    }
    let exponent = Int(floor(log10(magnitude)))
    let mantissa = (value / pow10(Double(exponent)) * 100).rounded() / 100
    return "\(mantissa)e\(exponent)"
  }

  static func pow10(_ exponent: Double) -> Double { pow(10, exponent) }

  static func escape(_ text: String) -> String {
    text.replacing("&", with: "&amp;").replacing("<", with: "&lt;").replacing(">", with: "&gt;")
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif
