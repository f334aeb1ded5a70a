// Flare's quantized kernels: the type table, instruction-set choice, activation quantizers,
// the portable dot products (the definition every vectorized kernel is tested against), row
// dequantization and the tiled matrix product.
#include "FlareKernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_internal.h"

// MARK: - Types

int flare_weight_block(int type) {
  switch (type) {
    case FLARE_W_F32:
    case FLARE_W_F16:
    case FLARE_W_BF16: return 1;
    case FLARE_W_Q4_0:
    case FLARE_W_Q4_1:
    case FLARE_W_Q5_0:
    case FLARE_W_Q5_1:
    case FLARE_W_Q8_0: return 32;
    case FLARE_W_Q4_K:
    case FLARE_W_Q5_K:
    case FLARE_W_Q6_K: return 256;
    default: return 0;
  }
}

int flare_weight_block_bytes(int type) {
  switch (type) {
    case FLARE_W_F32: return 4;
    case FLARE_W_F16:
    case FLARE_W_BF16: return 2;
    case FLARE_W_Q4_0: return 18;
    case FLARE_W_Q4_1: return 20;
    case FLARE_W_Q5_0: return 22;
    case FLARE_W_Q5_1: return 24;
    case FLARE_W_Q8_0: return 34;
    case FLARE_W_Q4_K: return 144;
    case FLARE_W_Q5_K: return 176;
    case FLARE_W_Q6_K: return 210;
    default: return 0;
  }
}

int flare_weight_supported(int type) { return flare_weight_block(type) != 0; }

// MARK: - Instruction sets

static int detect_best(void) {
#if FLARE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
      && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")
      && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
      && __builtin_cpu_supports("f16c")) {
    return FLARE_ISA_AVX512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
      && __builtin_cpu_supports("f16c")) {
    return FLARE_ISA_AVX2;
  }
#endif
  return FLARE_ISA_SCALAR;
}

// Decided once; races between first callers compute the same value.
static volatile int best_isa = -1;
static volatile int active_isa = -1;

int flare_isa_best(void) {
  int isa = best_isa;
  if (isa < 0) {
    isa = detect_best();
    best_isa = isa;
  }
  return isa;
}

int flare_isa_available(int isa) { return isa >= FLARE_ISA_SCALAR && isa <= flare_isa_best(); }

int flare_isa_active(void) {
  int isa = active_isa;
  if (isa < 0) {
    isa = flare_isa_best();
    const char *choice = getenv("FLARE_KERNELS");
    if (choice != NULL) {
      int asked = -1;
      if (strcmp(choice, "scalar") == 0) asked = FLARE_ISA_SCALAR;
      if (strcmp(choice, "avx2") == 0) asked = FLARE_ISA_AVX2;
      if (strcmp(choice, "avx512") == 0) asked = FLARE_ISA_AVX512;
      if (asked >= 0 && flare_isa_available(asked)) isa = asked;
    }
    active_isa = isa;
  }
  return isa;
}

// MARK: - Half precision

float flare_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exponent = (h >> 10) & 0x1F;
  uint32_t mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000 | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    // Subnormal: normalize the mantissa.
    int shift = 0;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      shift += 1;
    }
    mantissa &= 0x3FF;
    bits = sign | ((uint32_t)(113 - shift) << 23) | (mantissa << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

// IEEE round to nearest even, as ggml's GGML_FP32_TO_FP16 (F16C) converts.
uint16_t flare_float_to_half(float value) {
  uint32_t bits;
  memcpy(&bits, &value, 4);
  uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
  uint32_t magnitude = bits & 0x7FFFFFFF;
  if (magnitude > 0x7F800000) return sign | 0x7E00;  // NaN
  if (magnitude >= 0x477FF000) return sign | 0x7C00;  // rounds to infinity (or is)
  if (magnitude < 0x38800000) {
    // Subnormal half (or zero): value = m · 2^-24 with m rounded to nearest even.
    if (magnitude < 0x33000000) return sign;  // below half the smallest subnormal
    uint32_t exponent = magnitude >> 23;
    uint32_t mantissa = (magnitude & 0x7FFFFF) | 0x800000;
    uint32_t shift = 126 - exponent;  // 14 + (112 - exponent)
    uint32_t kept = mantissa >> shift;
    uint32_t rest = mantissa & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (kept & 1))) kept += 1;
    return sign | (uint16_t)kept;
  }
  uint32_t rebased = magnitude - 0x38000000;  // exponent 127 → 15
  uint32_t kept = rebased >> 13;
  uint32_t rest = rebased & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (kept & 1))) kept += 1;
  return sign | (uint16_t)kept;
}

// MARK: - Activation quantization

size_t flare_act_bytes(int type, int n) {
  size_t count = (size_t)n;
  size_t bytes;
  switch (flare_weight_block(type)) {
    case 1: bytes = 4 * count; break;
    case 32: bytes = count + 12 * (count / 32); break;
    case 256: bytes = count + 4 * (count / 256) + 2 * (count / 16); break;
    default: bytes = 0;
  }
  return (bytes + 63) & ~(size_t)63;
}

// ggml's rounding of x·id to int8 for Q8_0/Q8_1 (roundf: half away from zero), made safe for
// NaN (0) and kept in [-127, 127].
static inline int8_t round_q8(float v) {
  float r = roundf(v);
  if (!(r == r)) return 0;
  if (r > 127) r = 127;
  if (r < -127) r = -127;
  return (int8_t)r;
}

// ggml's nearest_int: round half to even through the float adder, for |v| < 2^22; NaN and
// out-of-range values give 0.
static inline int nearest_int(float v) {
  if (!(fabsf(v) < 4194304.0f)) return 0;
  float shifted = v + 12582912.0f;
  int32_t bits;
  memcpy(&bits, &shifted, 4);
  return (bits & 0x007FFFFF) - 0x00400000;
}

static void quantize_a32(const float *x, int n, uint8_t *act) {
  int blocks = n / 32;
  int8_t *qs = (int8_t *)act;
  float *d = (float *)(act + n);
  float *s = d + blocks;
  int32_t *sums = (int32_t *)(s + blocks);
  for (int b = 0; b < blocks; b++) {
    const float *v = x + 32 * b;
    float amax = 0;
    for (int j = 0; j < 32; j++) {
      float a = fabsf(v[j]);
      if (a > amax) amax = a;
    }
    float scale = amax / 127;
    float inverse = scale != 0 ? 1.0f / scale : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
      int8_t q = round_q8(v[j] * inverse);
      qs[32 * b + j] = q;
      sum += q;
    }
    d[b] = flare_half_to_float(flare_float_to_half(scale));
    s[b] = flare_half_to_float(flare_float_to_half((float)sum * scale));
    sums[b] = sum;
  }
}

static void quantize_a256(const float *x, int n, uint8_t *act) {
  int blocks = n / 256;
  int8_t *qs = (int8_t *)act;
  float *d = (float *)(act + n);
  int16_t *bsums = (int16_t *)(d + blocks);
  for (int b = 0; b < blocks; b++) {
    const float *v = x + 256 * b;
    float amax = 0;
    float max = 0;
    for (int j = 0; j < 256; j++) {
      float a = fabsf(v[j]);
      if (a > amax) {
        amax = a;
        max = v[j];
      }
    }
    if (amax == 0 || !(amax < INFINITY)) {
      // All zero (ggml's case), or not finite (Flare's: zeros rather than undefined values).
      d[b] = 0;
      memset(qs + 256 * b, 0, 256);
      memset(bsums + 16 * b, 0, 32);
      continue;
    }
    float iscale = -127.0f / max;
    for (int j = 0; j < 256; j++) {
      int q = nearest_int(iscale * v[j]);
      if (q > 127) q = 127;
      if (q < -128) q = -128;
      qs[256 * b + j] = (int8_t)q;
    }
    for (int g = 0; g < 16; g++) {
      int sum = 0;
      for (int j = 0; j < 16; j++) sum += qs[256 * b + 16 * g + j];
      bsums[16 * b + g] = (int16_t)sum;
    }
    d[b] = 1 / iscale;
  }
}

void flare_act_quantize(int isa, int type, const float *x, int n, void *act) {
#if FLARE_X86
  if (isa == FLARE_ISA_AVX512) {
    flare_act_quantize_avx512(type, x, n, act);
    return;
  }
  if (isa == FLARE_ISA_AVX2) {
    flare_act_quantize_avx2(type, x, n, act);
    return;
  }
#endif
  (void)isa;
  switch (flare_weight_block(type)) {
    case 1: memcpy(act, x, 4 * (size_t)n); break;
    case 32: quantize_a32(x, n, (uint8_t *)act); break;
    case 256: quantize_a256(x, n, (uint8_t *)act); break;
    default: break;
  }
}

// MARK: - Portable dot products

static inline uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t load_u32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K block's 12 scale bytes.
static inline void scale_min_k4(const uint8_t *s, int j, int *scale, int *min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void flare_k4_scales(const uint8_t *s, uint8_t scales[8], uint8_t mins[8]) {
  for (int j = 0; j < 8; j++) {
    int sc, m;
    scale_min_k4(s, j, &sc, &m);
    scales[j] = (uint8_t)sc;
    mins[j] = (uint8_t)m;
  }
}

static float dot_a32_scalar(int type, const uint8_t *w, const uint8_t *act, int n) {
  int blocks = n / 32;
  const int8_t *qa = (const int8_t *)act;
  const float *da = (const float *)(act + n);
  const float *sa = da + blocks;
  const int32_t *suma = (const int32_t *)(sa + blocks);
  float sum = 0;
  for (int b = 0; b < blocks; b++) {
    const int8_t *a = qa + 32 * b;
    int isum = 0;
    switch (type) {
      case FLARE_W_Q4_0: {
        const uint8_t *blk = w + 18 * b;
        for (int j = 0; j < 16; j++) {
          isum += (blk[2 + j] & 0x0F) * a[j] + (blk[2 + j] >> 4) * a[j + 16];
        }
        isum -= 8 * suma[b];
        sum += flare_half_to_float(load_u16(blk)) * da[b] * (float)isum;
        break;
      }
      case FLARE_W_Q4_1: {
        const uint8_t *blk = w + 20 * b;
        for (int j = 0; j < 16; j++) {
          isum += (blk[4 + j] & 0x0F) * a[j] + (blk[4 + j] >> 4) * a[j + 16];
        }
        sum += flare_half_to_float(load_u16(blk)) * da[b] * (float)isum
               + flare_half_to_float(load_u16(blk + 2)) * sa[b];
        break;
      }
      case FLARE_W_Q5_0:
      case FLARE_W_Q5_1: {
        int with_min = type == FLARE_W_Q5_1;
        const uint8_t *blk = w + (with_min ? 24 : 22) * b;
        const uint8_t *qh_bytes = blk + (with_min ? 4 : 2);
        uint32_t qh = load_u32(qh_bytes);
        const uint8_t *qs = qh_bytes + 4;
        for (int j = 0; j < 32; j++) {
          int low = j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4);
          int q = low | (int)(((qh >> j) & 1) << 4);
          isum += q * a[j];
        }
        if (with_min) {
          sum += flare_half_to_float(load_u16(blk)) * da[b] * (float)isum
                 + flare_half_to_float(load_u16(blk + 2)) * sa[b];
        } else {
          isum -= 16 * suma[b];
          sum += flare_half_to_float(load_u16(blk)) * da[b] * (float)isum;
        }
        break;
      }
      case FLARE_W_Q8_0: {
        const uint8_t *blk = w + 34 * b;
        const int8_t *qw = (const int8_t *)(blk + 2);
        for (int j = 0; j < 32; j++) isum += qw[j] * a[j];
        sum += flare_half_to_float(load_u16(blk)) * da[b] * (float)isum;
        break;
      }
      default: break;
    }
  }
  return sum;
}

static float dot_a256_scalar(int type, const uint8_t *w, const uint8_t *act, int n) {
  int blocks = n / 256;
  const int8_t *qa = (const int8_t *)act;
  const float *da = (const float *)(act + n);
  const int16_t *bsums = (const int16_t *)(da + blocks);
  float sum = 0;
  for (int b = 0; b < blocks; b++) {
    const int8_t *a = qa + 256 * b;
    const int16_t *bs = bsums + 16 * b;
    if (type == FLARE_W_Q6_K) {
      const uint8_t *blk = w + 210 * b;
      const uint8_t *ql = blk;
      const uint8_t *qh = blk + 128;
      const int8_t *sc = (const int8_t *)(blk + 192);
      int isum = 0;
      for (int e = 0; e < 256; e++) {
        int half = e >> 7;
        int within = e & 127;
        int l = within & 31;
        int quarter = within >> 5;  // 0: ql low, 1: ql+32 low, 2: ql high, 3: ql+32 high
        int byte = ql[64 * half + l + 32 * (quarter & 1)];
        int low = quarter < 2 ? (byte & 0x0F) : (byte >> 4);
        int high = (qh[32 * half + l] >> (2 * quarter)) & 3;
        isum += sc[e >> 4] * (low | (high << 4)) * a[e];
      }
      for (int g = 0; g < 16; g++) isum -= 32 * sc[g] * bs[g];
      sum += flare_half_to_float(load_u16(blk + 208)) * da[b] * (float)isum;
      continue;
    }
    int high_bits = type == FLARE_W_Q5_K;
    const uint8_t *blk = w + (high_bits ? 176 : 144) * b;
    const uint8_t *qs = blk + (high_bits ? 48 : 16);
    const uint8_t *qh = blk + 16;
    uint8_t scales[8], mins[8];
    flare_k4_scales(blk + 4, scales, mins);
    int isum = 0;
    int imin = 0;
    for (int s = 0; s < 8; s++) {
      int group = s >> 1;
      int shift = 4 * (s & 1);
      int part = 0;
      for (int l = 0; l < 32; l++) {
        int q = (qs[32 * group + l] >> shift) & 0x0F;
        if (high_bits) q |= ((qh[l] >> s) & 1) << 4;
        part += q * a[32 * s + l];
      }
      isum += scales[s] * part;
      imin += mins[s] * (bs[2 * s] + bs[2 * s + 1]);
    }
    float d = flare_half_to_float(load_u16(blk)) * da[b];
    float dmin = flare_half_to_float(load_u16(blk + 2)) * da[b];
    sum += d * (float)isum - dmin * (float)imin;
  }
  return sum;
}

static float dot_float_scalar(int type, const uint8_t *w, const float *x, int n) {
  float sum = 0;
  for (int i = 0; i < n; i++) {
    float v;
    if (type == FLARE_W_F32) {
      memcpy(&v, w + 4 * i, 4);
    } else if (type == FLARE_W_F16) {
      v = flare_half_to_float(load_u16(w + 2 * i));
    } else {
      uint32_t bits = (uint32_t)load_u16(w + 2 * i) << 16;
      memcpy(&v, &bits, 4);
    }
    sum += v * x[i];
  }
  return sum;
}

float flare_dot_scalar(int type, const void *w, const void *act, int n) {
  switch (flare_weight_block(type)) {
    case 1: return dot_float_scalar(type, (const uint8_t *)w, (const float *)act, n);
    case 32: return dot_a32_scalar(type, (const uint8_t *)w, (const uint8_t *)act, n);
    case 256: return dot_a256_scalar(type, (const uint8_t *)w, (const uint8_t *)act, n);
    default: return 0;
  }
}

float flare_dot(int isa, int type, const void *w, const void *act, int n) {
#if FLARE_X86
  if (isa == FLARE_ISA_AVX512) return flare_dot_avx512(type, w, act, n);
  if (isa == FLARE_ISA_AVX2) return flare_dot_avx2(type, w, act, n);
#endif
  (void)isa;
  return flare_dot_scalar(type, w, act, n);
}

// MARK: - Matrix product

void flare_matmul(
    int isa, int type, const void *w, size_t row_bytes, int rows, const void *acts, int tokens,
    int n, float *out, size_t out_stride) {
#if FLARE_X86
  if (isa == FLARE_ISA_AVX512) {
    flare_matmul_avx512(type, w, row_bytes, rows, acts, tokens, n, out, out_stride);
    return;
  }
  if (isa == FLARE_ISA_AVX2) {
    flare_matmul_avx2(type, w, row_bytes, rows, acts, tokens, n, out, out_stride);
    return;
  }
#endif
  // The portable product: one dot product per output (the definition).
  size_t act_bytes = flare_act_bytes(type, n);
  const uint8_t *weights = (const uint8_t *)w;
  const uint8_t *activations = (const uint8_t *)acts;
  for (int t = 0; t < tokens; t++) {
    for (int r = 0; r < rows; r++) {
      out[(size_t)t * out_stride + r] = flare_dot_scalar(
          type, weights + (size_t)r * row_bytes, activations + (size_t)t * act_bytes, n);
    }
  }
}

// MARK: - Dequantization

void flare_dequantize_row(int type, const void *w, int n, float *out) {
  const uint8_t *p = (const uint8_t *)w;
  switch (type) {
    case FLARE_W_F32: memcpy(out, w, 4 * (size_t)n); return;
    case FLARE_W_F16:
      for (int i = 0; i < n; i++) out[i] = flare_half_to_float(load_u16(p + 2 * i));
      return;
    case FLARE_W_BF16:
      for (int i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)load_u16(p + 2 * i) << 16;
        memcpy(out + i, &bits, 4);
      }
      return;
    default: break;
  }
  int block = flare_weight_block(type);
  int bytes = flare_weight_block_bytes(type);
  if (block == 0) return;
  for (int b = 0; b < n / block; b++) {
    const uint8_t *blk = p + (size_t)b * bytes;
    float *y = out + (size_t)b * block;
    switch (type) {
      case FLARE_W_Q4_0: {
        float d = flare_half_to_float(load_u16(blk));
        for (int j = 0; j < 16; j++) {
          y[j] = d * (float)((blk[2 + j] & 0x0F) - 8);
          y[j + 16] = d * (float)((blk[2 + j] >> 4) - 8);
        }
        break;
      }
      case FLARE_W_Q4_1: {
        float d = flare_half_to_float(load_u16(blk));
        float m = flare_half_to_float(load_u16(blk + 2));
        for (int j = 0; j < 16; j++) {
          y[j] = d * (float)(blk[4 + j] & 0x0F) + m;
          y[j + 16] = d * (float)(blk[4 + j] >> 4) + m;
        }
        break;
      }
      case FLARE_W_Q5_0:
      case FLARE_W_Q5_1: {
        int with_min = type == FLARE_W_Q5_1;
        float d = flare_half_to_float(load_u16(blk));
        float m = with_min ? flare_half_to_float(load_u16(blk + 2)) : 0;
        const uint8_t *qh_bytes = blk + (with_min ? 4 : 2);
        uint32_t qh = load_u32(qh_bytes);
        for (int j = 0; j < 32; j++) {
          int low = j < 16 ? (qh_bytes[4 + j] & 0x0F) : (qh_bytes[4 + j - 16] >> 4);
          int q = low | (int)(((qh >> j) & 1) << 4);
          y[j] = with_min ? d * (float)q + m : d * (float)(q - 16);
        }
        break;
      }
      case FLARE_W_Q8_0: {
        float d = flare_half_to_float(load_u16(blk));
        for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)blk[2 + j] * d;
        break;
      }
      case FLARE_W_Q4_K:
      case FLARE_W_Q5_K: {
        int high_bits = type == FLARE_W_Q5_K;
        float d = flare_half_to_float(load_u16(blk));
        float dmin = flare_half_to_float(load_u16(blk + 2));
        const uint8_t *qs = blk + (high_bits ? 48 : 16);
        uint8_t scales[8], mins[8];
        flare_k4_scales(blk + 4, scales, mins);
        for (int s = 0; s < 8; s++) {
          float dd = d * (float)scales[s];
          float dm = dmin * (float)mins[s];
          for (int l = 0; l < 32; l++) {
            int q = (qs[32 * (s >> 1) + l] >> (4 * (s & 1))) & 0x0F;
            if (high_bits) q |= ((blk[16 + l] >> s) & 1) << 4;
            y[32 * s + l] = dd * (float)q - dm;
          }
        }
        break;
      }
      case FLARE_W_Q6_K: {
        float d = flare_half_to_float(load_u16(blk + 208));
        const int8_t *sc = (const int8_t *)(blk + 192);
        for (int e = 0; e < 256; e++) {
          int half = e >> 7;
          int within = e & 127;
          int l = within & 31;
          int quarter = within >> 5;
          int byte = blk[64 * half + l + 32 * (quarter & 1)];
          int low = quarter < 2 ? (byte & 0x0F) : (byte >> 4);
          int high = (blk[128 + 32 * half + l] >> (2 * quarter)) & 3;
          y[e] = (d * (float)sc[e >> 4]) * (float)((low | (high << 4)) - 32);
        }
        break;
      }
      default: break;
    }
  }
}

void flare_axpy_row(int type, const void *w, int n, float alpha, float *y) {
  float chunk[256];
  int block = flare_weight_block(type);
  int step = block == 1 ? 256 : block;
  int bytes = block == 1 ? 256 * flare_weight_block_bytes(type) : flare_weight_block_bytes(type);
  const uint8_t *p = (const uint8_t *)w;
  for (int i = 0, k = 0; i < n; i += step, k++) {
    int count = n - i < step ? n - i : step;
    flare_dequantize_row(type, p + (size_t)k * bytes, count, chunk);
    for (int j = 0; j < count; j++) y[i + j] += alpha * chunk[j];
  }
}
