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

K_FN float k_dot_a32(int type, const uint8_t *w, const uint8_t *act, int n) {
  int blocks = n / 32;
  const int8_t *qa = (const int8_t *)act;
  const float *da = (const float *)(act + n);
  const float *sa = da + blocks;
  const int32_t *suma = (const int32_t *)(sa + blocks);
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  float extra = 0;
  switch (type) {
    case FLARE_W_Q4_0:
      for (int b = 0; b < blocks; b++) {
        const uint8_t *blk = w + 18 * b;
        __m256i p = k_dot_u8s8(k_nibbles16(blk + 2), k_load(qa + 32 * b));
        p = k_sub_lane0(p, 8 * suma[b]);
        __m256 scale = _mm256_set1_ps(k_half(blk) * da[b]);
        if (b & 1) {
          acc1 = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc1);
        } else {
          acc0 = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc0);
        }
      }
      break;
    case FLARE_W_Q4_1:
      for (int b = 0; b < blocks; b++) {
        const uint8_t *blk = w + 20 * b;
        __m256i p = k_dot_u8s8(k_nibbles16(blk + 4), k_load(qa + 32 * b));
        __m256 scale = _mm256_set1_ps(k_half(blk) * da[b]);
        if (b & 1) {
          acc1 = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc1);
        } else {
          acc0 = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc0);
        }
        extra += k_half(blk + 2) * sa[b];
      }
      break;
    case FLARE_W_Q5_0:
    case FLARE_W_Q5_1: {
      int with_min = type == FLARE_W_Q5_1;
      int bytes = with_min ? 24 : 22;
      int qh_at = with_min ? 4 : 2;
      for (int b = 0; b < blocks; b++) {
        const uint8_t *blk = w + bytes * b;
        uint32_t qh;
        memcpy(&qh, blk + qh_at, 4);
        __m256i q = _mm256_or_si256(k_nibbles16(blk + qh_at + 4), k_fifth_bits(qh));
        __m256i p = k_dot_u8s8(q, k_load(qa + 32 * b));
        if (!with_min) p = k_sub_lane0(p, 16 * suma[b]);
        __m256 scale = _mm256_set1_ps(k_half(blk) * da[b]);
        if (b & 1) {
          acc1 = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc1);
        } else {
          acc0 = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc0);
        }
        if (with_min) extra += k_half(blk + 2) * sa[b];
      }
      break;
    }
    case FLARE_W_Q8_0:
      for (int b = 0; b < blocks; b++) {
        const uint8_t *blk = w + 34 * b;
        __m256i q = k_load(blk + 2);
        __m256i a = k_load(qa + 32 * b);
        // |q| is unsigned (0x80 reads as 128), the sign moves to the activation.
        __m256i p = k_dot_u8s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q));
        __m256 scale = _mm256_set1_ps(k_half(blk) * da[b]);
        if (b & 1) {
          acc1 = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc1);
        } else {
          acc0 = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc0);
        }
      }
      break;
    default: break;
  }
  return k_hsum(_mm256_add_ps(acc0, acc1)) + extra;
}

K_FN float k_dot_a256(int type, const uint8_t *w, const uint8_t *act, int n) {
  int blocks = n / 256;
  const int8_t *qa = (const int8_t *)act;
  const float *da = (const float *)(act + n);
  const int16_t *bsums = (const int16_t *)(da + blocks);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  float extra = 0;
  for (int b = 0; b < blocks; b++) {
    const int8_t *a = qa + 256 * b;
    const int16_t *bs = bsums + 16 * b;
    __m256i isum = _mm256_setzero_si256();
    if (type == FLARE_W_Q6_K) {
      const uint8_t *blk = w + 210 * b;
      const int8_t *sc = (const int8_t *)(blk + 192);
      const __m256i low2 = _mm256_set1_epi8(0x03);
      for (int h = 0; h < 2; h++) {
        __m256i ql0 = k_load(blk + 64 * h);
        __m256i ql1 = k_load(blk + 64 * h + 32);
        __m256i qh = k_load(blk + 128 + 32 * h);
        __m256i q[4];
        q[0] = _mm256_or_si256(
            _mm256_and_si256(ql0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));
        q[1] = _mm256_or_si256(
            _mm256_and_si256(ql1, low4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4));
        q[2] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4));
        q[3] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4));
        for (int k = 0; k < 4; k++) {
          int g = 8 * h + 2 * k;
          __m256i scale = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
          isum = _mm256_add_epi32(isum, k_dot_scaled(q[k], k_load(a + 128 * h + 32 * k), scale));
        }
      }
      int correction = 0;
      for (int g = 0; g < 16; g++) correction += sc[g] * bs[g];
      isum = k_sub_lane0(isum, 32 * correction);
      acc = _mm256_fmadd_ps(_mm256_set1_ps(k_half(blk + 208) * da[b]), _mm256_cvtepi32_ps(isum), acc);
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
      isum = _mm256_add_epi32(
          isum, k_dot_scaled(lo, k_load(a + 64 * g), _mm256_set1_epi16(scales[2 * g])));
      isum = _mm256_add_epi32(
          isum, k_dot_scaled(hi, k_load(a + 64 * g + 32), _mm256_set1_epi16(scales[2 * g + 1])));
    }
    int imin = 0;
    for (int s = 0; s < 8; s++) imin += mins[s] * (bs[2 * s] + bs[2 * s + 1]);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(k_half(blk) * da[b]), _mm256_cvtepi32_ps(isum), acc);
    extra -= k_half(blk + 2) * da[b] * (float)imin;
  }
  return k_hsum(acc) + extra;
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
    case 32: return k_dot_a32(type, (const uint8_t *)w, (const uint8_t *)act, n);
    case 256: return k_dot_a256(type, (const uint8_t *)w, (const uint8_t *)act, n);
    default: return 0;
  }
}
