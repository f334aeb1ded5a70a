import FlareCore

// The K-quant quantizers Q4_K, Q5_K and Q6_K. Each follows its ggml reference function
// operation for operation, in `Float`, in the same order and with the same rounding, so that
// the bytes are identical to ggml's (`Fixtures/golden/gguf-kquant.json` checks this).

extension GGMLType {
  /// Below this largest magnitude a Q6_K group counts as all zero (ggml's `GROUP_MAX_EPS`).
  static let kQuantZeroEpsilon: Float = 1e-15

  /// ggml's `nearest_int`: adds 1.5·2²³ in `Float` and reads the integer back from the low 23
  /// bits, which is round half to even for |x| < 2²²; larger or non-finite inputs give the same
  /// wrapped values as in ggml instead of trapping.
  @inline(__always)
  static func kNearestInt(_ value: Float) -> Int {
    let shifted = value + 12_582_912
    return Int(shifted.bitPattern & 0x007F_FFFF) - 0x0040_0000
  }

  /// Quantizes the 256 values at `x[at...]` into the 144-byte Q4_K block at `y[o...]`.
  ///
  /// Follows ggml's `quantize_row_q4_K_ref`: a weighted scale-and-minimum fit per 32 values,
  /// both quantized to 6 bits against the block's F16 `d` and `dmin`, then 4-bit levels.
  static func quantizeQ4_K(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ y: UnsafeMutableRawBufferPointer, _ o: Int
  ) {
    kAffineBlock(x, at, y, o, highBits: false)
  }

  /// Quantizes the 256 values at `x[at...]` into the 176-byte Q5_K block at `y[o...]`.
  ///
  /// Follows ggml's `quantize_row_q5_K_ref`: as Q4_K with 5-bit levels whose fifth bits go to
  /// `qh`, and its own search grid.
  static func quantizeQ5_K(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ y: UnsafeMutableRawBufferPointer, _ o: Int
  ) {
    kAffineBlock(x, at, y, o, highBits: true)
  }

  /// Quantizes the 256 values at `x[at...]` into the 210-byte Q6_K block at `y[o...]`.
  ///
  /// Follows ggml's `quantize_row_q6_K_ref`: a symmetric least-squares scale per 16 values
  /// (`make_qx_quants`), the scales quantized to int8 against the block's F16 `d`, then 6-bit
  /// levels split into `ql` (low 4 bits) and `qh` (high 2 bits).
  static func quantizeQ6_K(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ y: UnsafeMutableRawBufferPointer, _ o: Int
  ) {
    var levels = InlineArray<256, UInt8>(repeating: 0)
    var scales = InlineArray<16, Float>(repeating: 0)
    var maxScale: Float = 0
    var maxAbsScale: Float = 0
    for group in 0..<16 {
      let scale = kSymmetricFit(x, at + 16 * group, &levels, 16 * group)
      scales[group] = scale
      if abs(scale) > maxAbsScale {
        maxAbsScale = abs(scale)
        maxScale = scale
      }
    }
    if maxAbsScale < kQuantZeroEpsilon {
      for k in 0..<210 { y[o + k] = 0 }  // an F16 zero `d` is all zero bits too
      return
    }
    let iscale = -128 / maxScale
    let dBits = HalfPrecision.floatToF16(1 / iscale)
    y.storeBytes(of: dBits.littleEndian, toByteOffset: o + 208, as: UInt16.self)
    var groupScales = InlineArray<16, Int8>(repeating: 0)
    for group in 0..<16 {
      groupScales[group] = Int8(truncatingIfNeeded: min(127, kNearestInt(iscale * scales[group])))
      y[o + 192 + group] = UInt8(bitPattern: groupScales[group])
    }
    let d = HalfPrecision.f16ToFloat(dBits)
    for group in 0..<16 {
      let dl = d * Float(groupScales[group])
      if dl == 0 { continue }  // keeps the levels of the fit, as ggml does
      for i in 0..<16 {
        let l = kNearestInt(x[at + 16 * group + i] / dl)
        levels[16 * group + i] = UInt8(max(-32, min(31, l)) + 32)
      }
    }
    // ql: half h holds elements 128h + l (low nibble) and 128h + 64 + l (high nibble) at byte
    // l, and 128h + 32 + l / 128h + 96 + l at byte 32 + l; qh holds the four high bit pairs.
    for half in 0..<2 {
      let e = 128 * half
      for l in 0..<32 {
        let q1 = levels[e + l]
        let q2 = levels[e + l + 32]
        let q3 = levels[e + l + 64]
        let q4 = levels[e + l + 96]
        y[o + 64 * half + l] = (q1 & 0x0F) | (q3 & 0x0F) << 4
        y[o + 64 * half + l + 32] = (q2 & 0x0F) | (q4 & 0x0F) << 4
        y[o + 128 + 32 * half + l] = q1 >> 4 | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6
      }
    }
  }

  // Q4_K (highBits false: 4-bit levels, grid −1 + 0.1·i for i in 0...20) and Q5_K (highBits
  // true: 5-bit levels, grid −0.5 + 0.1·i for i in 0...15).
  private static func kAffineBlock(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ y: UnsafeMutableRawBufferPointer, _ o: Int,
    highBits: Bool
  ) {
    let nmax = highBits ? 31 : 15
    var levels = InlineArray<256, UInt8>(repeating: 0)
    var scales = InlineArray<8, Float>(repeating: 0)
    var mins = InlineArray<8, Float>(repeating: 0)
    var weights = InlineArray<32, Float>(repeating: 0)
    var maxScale: Float = 0
    var maxMin: Float = 0
    for sub in 0..<8 {
      let s = at + 32 * sub
      var sumSquares: Float = 0
      for i in 0..<32 { sumSquares += x[s + i] * x[s + i] }
      let rms = (sumSquares / 32).squareRoot()
      for i in 0..<32 { weights[i] = rms + abs(x[s + i]) }
      let fit = kAffineFit(
        x, s, weights, nmax: nmax, rmin: highBits ? -0.5 : -1, rdelta: 0.1,
        steps: highBits ? 15 : 20, &levels, 32 * sub)
      scales[sub] = fit.scale
      mins[sub] = fit.min
      if fit.scale > maxScale { maxScale = fit.scale }
      if fit.min > maxMin { maxMin = fit.min }
    }
    let invScale: Float = maxScale > 0 ? 63 / maxScale : 0
    let invMin: Float = maxMin > 0 ? 63 / maxMin : 0
    var ls = InlineArray<8, UInt8>(repeating: 0)
    var lm = InlineArray<8, UInt8>(repeating: 0)
    for sub in 0..<8 {
      // ggml stores the int in a uint8_t first (wrapping), then caps it at 63.
      ls[sub] = min(63, UInt8(truncatingIfNeeded: kNearestInt(invScale * scales[sub])))
      lm[sub] = min(63, UInt8(truncatingIfNeeded: kNearestInt(invMin * mins[sub])))
    }
    let dBits = HalfPrecision.floatToF16(maxScale / 63)
    let dminBits = HalfPrecision.floatToF16(maxMin / 63)
    y.storeBytes(of: dBits.littleEndian, toByteOffset: o, as: UInt16.self)
    y.storeBytes(of: dminBits.littleEndian, toByteOffset: o + 2, as: UInt16.self)
    // scales[12]: sub-blocks 0–3 in the low 6 bits of bytes 0–3 (scale) and 4–7 (min);
    // sub-blocks 4–7 as nibbles in bytes 8–11 with their top 2 bits in bits 6–7 of bytes 0–7.
    for k in 0..<4 {
      y[o + 4 + k] = ls[k] | (ls[k + 4] >> 4) << 6
      y[o + 8 + k] = lm[k] | (lm[k + 4] >> 4) << 6
      y[o + 12 + k] = (ls[k + 4] & 0x0F) | (lm[k + 4] & 0x0F) << 4
    }
    // ggml reads the 6-bit values back from the packed bytes, which gives ls and lm exactly.
    let d = HalfPrecision.f16ToFloat(dBits)
    let dmin = HalfPrecision.f16ToFloat(dminBits)
    for sub in 0..<8 {
      let dl = d * Float(ls[sub])
      if dl == 0 { continue }  // keeps the levels of the fit, as ggml does
      let ml = dmin * Float(lm[sub])
      for i in 0..<32 {
        let l = kNearestInt((x[at + 32 * sub + i] + ml) / dl)
        levels[32 * sub + i] = UInt8(max(0, min(nmax, l)))
      }
    }
    // qs: byte 32g + l holds element 64g + l (low nibble) and 64g + 32 + l (high nibble); for
    // Q5_K, bit 2g of qh[l] is the fifth bit of the first and bit 2g + 1 of the second.
    let qs = o + (highBits ? 48 : 16)
    if highBits { for l in 0..<32 { y[o + 16 + l] = 0 } }
    for g in 0..<4 {
      for l in 0..<32 {
        var low = levels[64 * g + l]
        var high = levels[64 * g + l + 32]
        if highBits {
          var qh = y[o + 16 + l]
          if low > 15 {
            low -= 16
            qh |= 1 << UInt8(2 * g)
          }
          if high > 15 {
            high -= 16
            qh |= 2 << UInt8(2 * g)
          }
          y[o + 16 + l] = qh
        }
        y[qs + 32 * g + l] = low | high << 4
      }
    }
  }

  /// Follows ggml's `make_qkx2_quants` with squared error: fits the 32 values at `x[at...]` as
  /// `scale·L − min` (L in 0...nmax, min ≥ 0) minimising the weighted error over the starting
  /// scale and `steps + 1` candidate grids, writing the levels to `levels[lo..<lo + 32]`.
  private static func kAffineFit(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ weights: InlineArray<32, Float>, nmax: Int,
    rmin: Float, rdelta: Float, steps: Int, _ levels: inout InlineArray<256, UInt8>, _ lo: Int
  ) -> (scale: Float, min: Float) {
    var low = x[at]
    var high = x[at]
    var sumW = weights[0]
    var sumX = sumW * x[at]
    for i in 1..<32 {
      let v = x[at + i]
      if v < low { low = v }
      if v > high { high = v }
      sumW += weights[i]
      sumX += weights[i] * v
    }
    if low > 0 { low = 0 }
    if high == low {
      for i in 0..<32 { levels[lo + i] = 0 }
      return (0, -low)
    }
    let top = Float(nmax)
    var iscale = top / (high - low)
    var scale = 1 / iscale
    var bestError: Float = 0
    for i in 0..<32 {
      let l = max(0, min(nmax, kNearestInt(iscale * (x[at + i] - low))))
      levels[lo + i] = UInt8(l)
      let diff = scale * Float(l) + low - x[at + i]
      bestError += weights[i] * (diff * diff)
    }
    var trial = InlineArray<32, UInt8>(repeating: 0)
    for step in 0...steps {
      // `low` may have moved to a better candidate's minimum: ggml uses the current one.
      iscale = (rmin + rdelta * Float(step) + top) / (high - low)
      var sumL: Float = 0
      var sumL2: Float = 0
      var sumXL: Float = 0
      for i in 0..<32 {
        let l = max(0, min(nmax, kNearestInt(iscale * (x[at + i] - low))))
        trial[i] = UInt8(l)
        let w = weights[i]
        let q = Float(l)
        sumL += w * q
        sumL2 += w * q * q
        sumXL += w * q * x[at + i]
      }
      let det = sumW * sumL2 - sumL * sumL
      guard det > 0 else { continue }
      var trialScale = (sumW * sumXL - sumX * sumL) / det
      var trialMin = (sumL2 * sumX - sumL * sumXL) / det
      if trialMin > 0 {
        trialMin = 0
        trialScale = sumXL / sumL2
      }
      var error: Float = 0
      for i in 0..<32 {
        let diff = trialScale * Float(trial[i]) + trialMin - x[at + i]
        error += weights[i] * (diff * diff)
      }
      if error < bestError {
        for i in 0..<32 { levels[lo + i] = trial[i] }
        bestError = error
        scale = trialScale
        low = trialMin
      }
    }
    return (scale, -low)
  }

  /// Follows ggml's `make_qx_quants` with n = 16, nmax = 32 and weights x² (`rmse_type` 1):
  /// a symmetric scale for the 16 values at `x[at...]`, chosen among 19 candidate grids by
  /// weighted least squares, with the levels (0...63, zero at 32) written to
  /// `levels[lo..<lo + 16]`.
  private static func kSymmetricFit(
    _ x: UnsafeBufferPointer<Float>, _ at: Int, _ levels: inout InlineArray<256, UInt8>,
    _ lo: Int
  ) -> Float {
    let nmax = 32
    var extreme: Float = 0  // the first value of largest magnitude
    var amax: Float = 0
    for i in 0..<16 where abs(x[at + i]) > amax {
      amax = abs(x[at + i])
      extreme = x[at + i]
    }
    if amax < kQuantZeroEpsilon {
      for i in 0..<16 { levels[lo + i] = 0 }
      return 0
    }
    // The weighted sums Σ x²·x·l and Σ x²·l² for the levels of `iscale`.
    func sums(_ iscale: Float) -> (lx: Float, l2: Float) {
      var sumLX: Float = 0
      var sumL2: Float = 0
      for i in 0..<16 {
        let v = x[at + i]
        let q = Float(max(-nmax, min(nmax - 1, kNearestInt(iscale * v))))
        let w = v * v
        sumLX += w * v * q
        sumL2 += w * q * q
      }
      return (sumLX, sumL2)
    }
    func setLevels(_ iscale: Float, _ out: inout InlineArray<256, UInt8>) {
      for i in 0..<16 {
        let l = max(-nmax, min(nmax - 1, kNearestInt(iscale * x[at + i])))
        out[lo + i] = UInt8(l + nmax)
      }
    }
    var iscale = -Float(nmax) / extreme
    setLevels(iscale, &levels)
    var (sumLX, sumL2) = sums(iscale)
    var scale: Float = sumL2 != 0 ? sumLX / sumL2 : 0
    var best = scale * sumLX
    for step in -9...9 where step != 0 {
      iscale = -(Float(nmax) + 0.1 * Float(step)) / extreme
      (sumLX, sumL2) = sums(iscale)
      if sumL2 > 0 && sumLX * sumLX > best * sumL2 {
        setLevels(iscale, &levels)
        scale = sumLX / sumL2
        best = scale * sumLX
      }
    }
    return scale
  }
}
