// The x86 dot kernels, written once and compiled twice: kernels_avx2.c (AVX2, maddubs + madd)
// and kernels_avx512.c (AVX-512 VL + VNNI: dpbusd). The including file defines
//   FLARE_TARGET  the function attribute naming the instruction set,
//   FLARE_NAME    the exported dot function's name,
//   FLARE_VNNI    1 to sum unsigned × signed bytes with dpbusd, 0 for maddubs + madd.
// Every kernel computes each block's integer sum exactly (as the portable code does) and
// differs from it only in the order of the float additions across blocks.
#include <immintrin.h>
#include <string.h>

#include "FlareKernels.h"
#include "kernels_internal.h"

#define K_FN static inline FLARE_TARGET

K_FN float k_hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// Eight int32 lanes, each the sum of four adjacent products u[i]·s[i] (u unsigned, s signed).
K_FN __m256i k_dot_u8s8(__m256i u, __m256i s) {
#if FLARE_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// Eight int32 lanes of Σ u·s over adjacent bytes, times the 16-bit `scale` (K-quants).
K_FN __m256i k_dot_scaled(__m256i u, __m256i s, __m256i scale) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale);
}

K_FN float k_half(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

K_FN __m256i k_load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

// 16 packed bytes → 32 nibbles: the low nibbles first, then the high ones (ggml's order).
K_FN __m256i k_nibbles16(const uint8_t *p) {
  __m128i raw = _mm_loadu_si128((const __m128i *)p);
  __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// Byte j is 0x10 where bit j of `bits` is set, 0 elsewhere.
K_FN __m256i k_fifth_bits(uint32_t bits) {
  __m256i v = _mm256_set1_epi32((int)bits);
  const __m256i spread = _mm256_setr_epi64x(
      0x0000000000000000LL, 0x0101010101010101LL, 0x0202020202020202LL, 0x0303030303030303LL);
  v = _mm256_shuffle_epi8(v, spread);
  const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// Subtracts `value` from lane 0 (an exact integer correction of the block's sum).
K_FN __m256i k_sub_lane0(__m256i v, int value) {
  // (Not _mm256_castsi128_si256: its upper half is undefined, and clang leaves garbage there.)
  return _mm256_sub_epi32(v, _mm256_setr_epi32(value, 0, 0, 0, 0, 0, 0, 0));
}

// One 32-value block `blk` (block `b` of the row) against `nt` activation rows: its integer
// sums scaled into acc[j], its minimum term (Q4_1, Q5_1) into extra[j].
__attribute__((always_inline)) K_FN void k_a32_block(
    int type, const uint8_t *blk, int b, int nt, const int8_t *const *qa, const float *const *da,
    const float *const *sa, const int32_t *const *suma, __m256 *acc, float *extra) {
  int with_min = type == FLARE_W_Q4_1 || type == FLARE_W_Q5_1;
  float dw = k_half(blk);
  float mw = with_min ? k_half(blk + 2) : 0;
  __m256i q;
  int offset = 0;  // the integer correction per unit of the activation block's sum
  switch (type) {
    case FLARE_W_Q4_0:
      q = k_nibbles16(blk + 2);
      offset = 8;
      break;
    case FLARE_W_Q4_1: q = k_nibbles16(blk + 4); break;
    case FLARE_W_Q5_0:
    case FLARE_W_Q5_1: {
      int qh_at = with_min ? 4 : 2;
      uint32_t qh;
      memcpy(&qh, blk + qh_at, 4);
      q = _mm256_or_si256(k_nibbles16(blk + qh_at + 4), k_fifth_bits(qh));
      if (!with_min) offset = 16;
      break;
    }
    default: q = k_load(blk + 2); break;  // Q8_0: signed levels
  }
  // Q8_0: |q| is unsigned (0x80 reads as 128), the sign moves to the activation.
  __m256i u = type == FLARE_W_Q8_0 ? _mm256_sign_epi8(q, q) : q;
  for (int j = 0; j < nt; j++) {
    __m256i a = k_load(qa[j] + 32 * b);
    if (type == FLARE_W_Q8_0) a = _mm256_sign_epi8(a, q);
    __m256i p = k_dot_u8s8(u, a);
    if (offset) p = k_sub_lane0(p, offset * suma[j][b]);
    __m256 scale = _mm256_set1_ps(dw * da[j][b]);
    acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[j]);
    if (with_min) extra[j] += mw * sa[j][b];
  }
}

// The dot products of one weight row with `NT` activation rows (NT a constant 1 to 4 after
// inlining): each weight block is unpacked once and used for every activation row. Each row's
// sum is formed exactly as with NT = 1 (same accumulators, same order), so grouping tokens
// never changes a result.
#define K_MAXT 4
__attribute__((always_inline)) K_FN void k_dot_a32_rows(
    int type, const uint8_t *w, const uint8_t *act, size_t act_bytes, int nt, int n, float *out) {
  int blocks = n / 32;
  const int8_t *qa[K_MAXT];
  const float *da[K_MAXT];
  const float *sa[K_MAXT];
  const int32_t *suma[K_MAXT];
  __m256 acc0[K_MAXT];
  __m256 acc1[K_MAXT];
  float extra[K_MAXT];
  for (int j = 0; j < nt; j++) {
    const uint8_t *row = act + (size_t)j * act_bytes;
    qa[j] = (const int8_t *)row;
    da[j] = (const float *)(row + n);
    sa[j] = da[j] + blocks;
    suma[j] = (const int32_t *)(sa[j] + blocks);
    acc0[j] = _mm256_setzero_ps();
    acc1[j] = _mm256_setzero_ps();
    extra[j] = 0;
  }
  float extra0[K_MAXT];
  for (int j = 0; j < nt; j++) extra0[j] = 0;
  int bytes = flare_weight_block_bytes(type);
  // Two blocks an iteration (even ones into acc0/extra0, odd ones into acc1/extra), so the
  // two chains of additions overlap.
  int b = 0;
  for (; b + 1 < blocks; b += 2) {
    k_a32_block(type, w + bytes * b, b, nt, qa, da, sa, suma, acc0, extra0);
    k_a32_block(type, w + bytes * (b + 1), b + 1, nt, qa, da, sa, suma, acc1, extra);
  }
  if (b < blocks) k_a32_block(type, w + bytes * b, b, nt, qa, da, sa, suma, acc0, extra0);
  for (int j = 0; j < nt; j++) {
    out[j] = k_hsum(_mm256_add_ps(acc0[j], acc1[j])) + (extra0[j] + extra[j]);
  }
}

// One specialised copy per type and token count (the type and count are constants inside).
#define K_A32_CASES(NT)                                                                \
  switch (type) {                                                                      \
    case FLARE_W_Q4_0: k_dot_a32_rows(FLARE_W_Q4_0, w, act, act_bytes, NT, n, out); break; \
    case FLARE_W_Q4_1: k_dot_a32_rows(FLARE_W_Q4_1, w, act, act_bytes, NT, n, out); break; \
    case FLARE_W_Q5_0: k_dot_a32_rows(FLARE_W_Q5_0, w, act, act_bytes, NT, n, out); break; \
    case FLARE_W_Q5_1: k_dot_a32_rows(FLARE_W_Q5_1, w, act, act_bytes, NT, n, out); break; \
    case FLARE_W_Q8_0: k_dot_a32_rows(FLARE_W_Q8_0, w, act, act_bytes, NT, n, out); break; \
    default: break;                                                                    \
  }

K_FN void k_dot_a32_1(int type, const uint8_t *w, const uint8_t *act, size_t act_bytes, int n, float *out) {
  K_A32_CASES(1)
}

K_FN void k_dot_a32_4(int type, const uint8_t *w, const uint8_t *act, size_t act_bytes, int n, float *out) {
  K_A32_CASES(4)
}

// The K-quant dot products of one weight row with `NT` activation rows: the block's levels
// and scales are unpacked once for all of them; each row's sum is formed as with NT = 1.
__attribute__((always_inline)) K_FN void k_dot_a256_rows(
    int type, const uint8_t *w, const uint8_t *act, size_t act_bytes, int nt, int n, float *out) {
  int blocks = n / 256;
  const int8_t *qa[K_MAXT];
  const float *da[K_MAXT];
  const int16_t *bsums[K_MAXT];
  __m256 acc[K_MAXT];
  float extra[K_MAXT];
  for (int j = 0; j < nt; j++) {
    const uint8_t *row = act + (size_t)j * act_bytes;
    qa[j] = (const int8_t *)row;
    da[j] = (const float *)(row + n);
    bsums[j] = (const int16_t *)(da[j] + blocks);
    acc[j] = _mm256_setzero_ps();
    extra[j] = 0;
  }
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int b = 0; b < blocks; b++) {
    // Eight vectors of 32 unsigned levels (elements 32i..32i+31 of the block) and the 16-bit
    // scale of each half of each.
    __m256i q[8];
    __m256i scale[8];
    if (type == FLARE_W_Q6_K) {
      const uint8_t *blk = w + 210 * b;
      const int8_t *sc = (const int8_t *)(blk + 192);
      const __m256i low2 = _mm256_set1_epi8(0x03);
      for (int h = 0; h < 2; h++) {
        __m256i ql0 = k_load(blk + 64 * h);
        __m256i ql1 = k_load(blk + 64 * h + 32);
        __m256i qh = k_load(blk + 128 + 32 * h);
        q[4 * h] = _mm256_or_si256(
            _mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));
        q[4 * h + 1] = _mm256_or_si256(
            _mm256_and_si256(ql1, low4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4));
        q[4 * h + 2] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4));
        q[4 * h + 3] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4));
      }
      for (int i = 0; i < 8; i++) {
        scale[i] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * i + 1]), _mm_set1_epi16(sc[2 * i]));
      }
      float d = k_half(blk + 208);
      for (int j = 0; j < nt; j++) {
        const int8_t *a = qa[j] + 256 * b;
        const int16_t *bs = bsums[j] + 16 * b;
        __m256i isum = _mm256_setzero_si256();
        for (int i = 0; i < 8; i++) {
          isum = _mm256_add_epi32(isum, k_dot_scaled(q[i], k_load(a + 32 * i), scale[i]));
        }
        int correction = 0;
        for (int g = 0; g < 16; g++) correction += sc[g] * bs[g];
        isum = k_sub_lane0(isum, 32 * correction);
        acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * da[j][b]), _mm256_cvtepi32_ps(isum), acc[j]);
      }
      continue;
    }
    int high_bits = type == FLARE_W_Q5_K;
    const uint8_t *blk = w + (high_bits ? 176 : 144) * b;
    const uint8_t *qs = blk + (high_bits ? 48 : 16);
    uint8_t scales[8], mins[8];
    flare_k4_scales(blk + 4, scales, mins);
    __m256i qh = high_bits ? k_load(blk + 16) : _mm256_setzero_si256();
    const __m256i one = _mm256_set1_epi8(1);
    for (int g = 0; g < 4; g++) {
      __m256i raw = k_load(qs + 32 * g);
      __m256i lo = _mm256_and_si256(raw, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      if (high_bits) {
        __m256i bit_lo = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), one);
        __m256i bit_hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g + 1), one);
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(bit_lo, 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(bit_hi, 4));
      }
      q[2 * g] = lo;
      q[2 * g + 1] = hi;
    }
    for (int i = 0; i < 8; i++) scale[i] = _mm256_set1_epi16(scales[i]);
    float d = k_half(blk);
    float dmin = k_half(blk + 2);
    for (int j = 0; j < nt; j++) {
      const int8_t *a = qa[j] + 256 * b;
      const int16_t *bs = bsums[j] + 16 * b;
      __m256i isum = _mm256_setzero_si256();
      for (int i = 0; i < 8; i++) {
        isum = _mm256_add_epi32(isum, k_dot_scaled(q[i], k_load(a + 32 * i), scale[i]));
      }
      int imin = 0;
      for (int s = 0; s < 8; s++) imin += mins[s] * (bs[2 * s] + bs[2 * s + 1]);
      acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * da[j][b]), _mm256_cvtepi32_ps(isum), acc[j]);
      extra[j] -= dmin * da[j][b] * (float)imin;
    }
  }
  for (int j = 0; j < nt; j++) out[j] = k_hsum(acc[j]) + extra[j];
}

#define K_A256_CASES(NT)                                                                   \
  switch (type) {                                                                          \
    case FLARE_W_Q4_K: k_dot_a256_rows(FLARE_W_Q4_K, w, act, act_bytes, NT, n, out); break; \
    case FLARE_W_Q5_K: k_dot_a256_rows(FLARE_W_Q5_K, w, act, act_bytes, NT, n, out); break; \
    case FLARE_W_Q6_K: k_dot_a256_rows(FLARE_W_Q6_K, w, act, act_bytes, NT, n, out); break; \
    default: break;                                                                        \
  }

K_FN void k_dot_a256_1(int type, const uint8_t *w, const uint8_t *act, size_t act_bytes, int n, float *out) {
  K_A256_CASES(1)
}

K_FN void k_dot_a256_4(int type, const uint8_t *w, const uint8_t *act, size_t act_bytes, int n, float *out) {
  K_A256_CASES(4)
}

K_FN float k_dot_float(int type, const uint8_t *w, const float *x, int n) {
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 w0, w1;
    if (type == FLARE_W_F32) {
      w0 = _mm256_loadu_ps((const float *)(w + 4 * i));
      w1 = _mm256_loadu_ps((const float *)(w + 4 * i + 32));
    } else if (type == FLARE_W_F16) {
      w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i)));
      w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i + 16)));
    } else {
      w0 = _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * i))), 16));
      w1 = _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * i + 16))), 16));
    }
    acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
  }
  float sum = k_hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; i++) {
    float v;
    if (type == FLARE_W_F32) {
      memcpy(&v, w + 4 * i, 4);
    } else {
      uint16_t h;
      memcpy(&h, w + 2 * i, 2);
      if (type == FLARE_W_F16) {
        v = _cvtsh_ss(h);
      } else {
        uint32_t bits = (uint32_t)h << 16;
        memcpy(&v, &bits, 4);
      }
    }
    sum += v * x[i];
  }
  return sum;
}

FLARE_TARGET float FLARE_NAME(int type, const void *w, const void *act, int n) {
  switch (flare_weight_block(type)) {
    case 1: return k_dot_float(type, (const uint8_t *)w, (const float *)act, n);
    case 32: {
      float out;
      k_dot_a32_1(type, (const uint8_t *)w, (const uint8_t *)act, 0, n, &out);
      return out;
    }
    case 256: {
      float out;
      k_dot_a256_1(type, (const uint8_t *)w, (const uint8_t *)act, 0, n, &out);
      return out;
    }
    default: return 0;
  }
}

// Four activation rows `act_bytes` apart: out[j] is bit-identical to FLARE_NAME on row j.
FLARE_TARGET void FLARE_NAME4(int type, const void *w, const void *act, size_t act_bytes, int n, float *out) {
  if (flare_weight_block(type) == 32) {
    k_dot_a32_4(type, (const uint8_t *)w, (const uint8_t *)act, act_bytes, n, out);
    return;
  }
  if (flare_weight_block(type) == 256) {
    k_dot_a256_4(type, (const uint8_t *)w, (const uint8_t *)act, act_bytes, n, out);
    return;
  }
  for (int j = 0; j < 4; j++) out[j] = FLARE_NAME(type, w, (const uint8_t *)act + (size_t)j * act_bytes, n);
}
