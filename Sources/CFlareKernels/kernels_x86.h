// The x86 kernels, written once and compiled twice: kernels_avx2.c (AVX2, maddubs + madd)
// and kernels_avx512.c (AVX-512 VL + VNNI: dpbusd). The including file defines
//   FLARE_TARGET  the function attribute naming the instruction set,
//   FLARE_NAME    the exported dot function's name,
//   FLARE_MATMUL  the exported matrix product's name,
//   FLARE_QUANTIZE the exported activation quantizer's name,
//   FLARE_VNNI    1 to sum unsigned × signed bytes with dpbusd, 0 for maddubs + madd.
// Every kernel computes each block's integer sum exactly (as the portable code does) and
// differs from it only in the order of the float additions across blocks.
#include <immintrin.h>
#include <math.h>
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

K_FN int k_hsum_i32(__m256i v) {
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
  return _mm_cvtsi128_si32(x);
}

// Eight int32 lanes, each the sum of four adjacent products u[i]·s[i] (u unsigned, s signed).
K_FN __m256i k_dot_u8s8(__m256i u, __m256i s) {
#if FLARE_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// acc + eight int32 lanes of Σ u·s over adjacent bytes, times the 16-bit `scale` (K-quants).
K_FN __m256i k_dot_scaled_add(__m256i acc, __m256i u, __m256i s, __m256i scale) {
#if FLARE_VNNI
  return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, s), scale);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale));
#endif
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

// Weight rows by activation rows per call of the tile kernels: each weight block is unpacked
// once for the K_MAXT tokens and each activation block loaded once for the rows. AVX-512 VL
// has 32 vector registers, AVX2 16, hence fewer rows there.
#define K_MAXT 4
#if FLARE_VNNI
#define K_ROWS32 4
#define K_ROWS256 2
#else
#define K_ROWS32 2
#define K_ROWS256 1
#endif

// The activation row pointers of `nt` tokens `act_bytes` apart (the layout of kernels.c).
typedef struct {
  const int8_t *q[K_MAXT];
  const float *d[K_MAXT];
  const float *s[K_MAXT];  // 32-value blocks: ggml's Q8_1 scaled sums
  const int32_t *sum[K_MAXT];  // 32-value blocks: integer sums
  const int16_t *bsums[K_MAXT];  // K-quants: sums of 16
} k_acts;

__attribute__((always_inline)) K_FN k_acts k_acts_of(
    const uint8_t *act, size_t act_bytes, int nt, int n, int block) {
  k_acts a;
  int blocks = n / block;
  for (int j = 0; j < nt; j++) {
    const uint8_t *row = act + (size_t)j * act_bytes;
    a.q[j] = (const int8_t *)row;
    a.d[j] = (const float *)(row + n);
    if (block == 32) {
      a.s[j] = a.d[j] + blocks;
      a.sum[j] = (const int32_t *)(a.s[j] + blocks);
    } else {
      a.bsums[j] = (const int16_t *)(a.d[j] + blocks);
    }
  }
  return a;
}

// `nr` weight rows (`row_bytes` apart) times `nt` activation rows of a 32-value block type,
// into out[j * out_stride + r]. Every (row, token) pair runs the same operations in the same
// order whatever `nr` and `nt` are (one accumulator, blocks in order, exact integer sums per
// block), so a tile's outputs are bit-identical to single dot products.
__attribute__((always_inline)) K_FN void k_a32_tile(
    int type, const uint8_t *w, size_t row_bytes, int nr, const uint8_t *act, size_t act_bytes,
    int nt, int n, float *out, size_t out_stride) {
  int blocks = n / 32;
  int bytes = flare_weight_block_bytes(type);
  int with_min = type == FLARE_W_Q4_1 || type == FLARE_W_Q5_1;
  k_acts a = k_acts_of(act, act_bytes, nt, n, 32);
  __m256 acc[K_ROWS32][K_MAXT];
  __m128 extra[K_ROWS32];  // lane j: token j's minimum term (Q4_1, Q5_1)
  for (int r = 0; r < nr; r++) {
    extra[r] = _mm_setzero_ps();
    for (int j = 0; j < nt; j++) acc[r][j] = _mm256_setzero_ps();
  }
  // Q4_0 and Q5_0 store their levels +8 and +16: the offset times the activation block's sum.
  int offset = type == FLARE_W_Q4_0 ? 8 : (type == FLARE_W_Q5_0 ? 16 : 0);
  for (int b = 0; b < blocks; b++) {
    __m256i av[K_MAXT];
    __m256 ad[K_MAXT];
    __m256i start[K_MAXT];  // each (row, token) sum starts at −offset · Σx in lane 0
    for (int j = 0; j < nt; j++) {
      av[j] = k_load(a.q[j] + 32 * b);
      // VNNI multiplies unsigned by signed bytes: Q8_0 activations move to [0, 255] (x + 128)
      // and the weights' sum times 128 is taken off again below.
      if (type == FLARE_W_Q8_0 && FLARE_VNNI) av[j] = _mm256_xor_si256(av[j], _mm256_set1_epi8((char)0x80));
      ad[j] = _mm256_set1_ps(a.d[j][b]);
      start[j] = _mm256_setr_epi32(offset ? -offset * a.sum[j][b] : 0, 0, 0, 0, 0, 0, 0, 0);
    }
    __m128 as = _mm_setzero_ps();
    if (with_min) {
      float s4[4] = {0, 0, 0, 0};
      for (int j = 0; j < nt; j++) s4[j] = a.s[j][b];
      as = _mm_loadu_ps(s4);
    }
    for (int r = 0; r < nr; r++) {
      const uint8_t *blk = w + (size_t)r * row_bytes + (size_t)bytes * b;
      // One token (decode): the same block of the next tile's row, ahead of time. The weights
      // come from L3 or memory once per token, and the tile's rows advance together, which
      // the hardware prefetchers follow less well (prefetching doubles decode speed here;
      // several tokens reuse a tile from cache, and the prefetch's register costs them more).
      if (nt == 1) _mm_prefetch((const char *)(blk + (size_t)nr * row_bytes), _MM_HINT_T0);
      // The block's F16 scale (and Q4_1/Q5_1's F16 minimum beside it) in one conversion.
      uint32_t dm_bits;
      memcpy(&dm_bits, blk, 4);
      __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm_bits));
      __m256 dw = _mm256_broadcastss_ps(dm);
      __m256i q;
      switch (type) {
        case FLARE_W_Q4_0: q = k_nibbles16(blk + 2); break;
        case FLARE_W_Q4_1: q = k_nibbles16(blk + 4); break;
        case FLARE_W_Q5_0:
        case FLARE_W_Q5_1: {
          int qh_at = with_min ? 4 : 2;
          uint32_t qh;
          memcpy(&qh, blk + qh_at, 4);
#if FLARE_VNNI
          // AVX-512 BW: bit j of qh masks byte j, which gains 16.
          q = k_nibbles16(blk + qh_at + 4);
          q = _mm256_mask_add_epi8(q, (__mmask32)qh, q, _mm256_set1_epi8(0x10));
#else
          q = _mm256_or_si256(k_nibbles16(blk + qh_at + 4), k_fifth_bits(qh));
#endif
          break;
        }
        default: q = k_load(blk + 2); break;  // Q8_0: signed levels
      }
#if FLARE_VNNI
      // Q8_0: −128 · Σ w per lane, so that Σ (x + 128)·w lands on Σ x·w.
      __m256i q8_start = type == FLARE_W_Q8_0
          ? _mm256_sub_epi32(_mm256_setzero_si256(),
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), q))
          : _mm256_setzero_si256();
#else
      // Q8_0: |w| (0x80 reads as 128); the sign moves to x.
      __m256i u = type == FLARE_W_Q8_0 ? _mm256_sign_epi8(q, q) : q;
#endif
      for (int j = 0; j < nt; j++) {
        __m256i p;
#if FLARE_VNNI
        if (type == FLARE_W_Q8_0) p = _mm256_dpbusd_epi32(q8_start, av[j], q);
        else p = _mm256_dpbusd_epi32(start[j], q, av[j]);
#else
        if (type == FLARE_W_Q8_0) p = k_dot_u8s8(u, _mm256_sign_epi8(av[j], q));
        else p = _mm256_add_epi32(k_dot_u8s8(u, av[j]), start[j]);
#endif
        // (Σ·dw)·dx: two vector products, no scalar product to broadcast per pair.
        acc[r][j] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), dw), ad[j], acc[r][j]);
      }
      if (with_min) extra[r] = _mm_add_ps(extra[r], _mm_mul_ps(_mm_shuffle_ps(dm, dm, 0x55), as));
    }
  }
  for (int r = 0; r < nr; r++) {
    float e[4];
    _mm_storeu_ps(e, extra[r]);
    for (int j = 0; j < nt; j++) out[(size_t)j * out_stride + r] = k_hsum(acc[r][j]) + e[j];
  }
}

// The 16-bit scales of the 32 values of sub-block i of a Q6_K block (two scales of 16).
K_FN __m256i k_q6k_scale(const int8_t *sc, int i) {
  return _mm256_set_m128i(_mm_set1_epi16(sc[2 * i + 1]), _mm_set1_epi16(sc[2 * i]));
}

// Sub-block i (32 levels, unsigned) of a Q4_K/Q5_K/Q6_K block.
__attribute__((always_inline)) K_FN __m256i k_levels256(int type, const uint8_t *blk, int i) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  if (type == FLARE_W_Q6_K) {
    int h = i >> 2;
    int quarter = i & 3;  // 0: ql low, 1: ql+32 low, 2: ql high, 3: ql+32 high
    __m256i ql = k_load(blk + 64 * h + 32 * (quarter & 1));
    __m256i qh = k_load(blk + 128 + 32 * h);
    __m256i low = quarter < 2 ? _mm256_and_si256(ql, low4)
                              : _mm256_and_si256(_mm256_srli_epi16(ql, 4), low4);
    __m256i high = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * quarter), _mm256_set1_epi8(0x03));
    return _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
  }
  int high_bits = type == FLARE_W_Q5_K;
  __m256i raw = k_load(blk + (high_bits ? 48 : 16) + 32 * (i >> 1));
  __m256i q = (i & 1) ? _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4) : _mm256_and_si256(raw, low4);
  if (high_bits) {
    __m256i bit = _mm256_and_si256(_mm256_srli_epi16(k_load(blk + 16), i), _mm256_set1_epi8(1));
    q = _mm256_or_si256(q, _mm256_slli_epi16(bit, 4));
  }
  return q;
}

// `nr` weight rows times `nt` activation rows of a K-quant type (see k_a32_tile): per block,
// sub-block by sub-block, each weight sub-block unpacked once for the tokens and each
// activation sub-block loaded once for the rows; per (row, token) the same operations in the
// same order whatever the tile's shape.
__attribute__((always_inline)) K_FN void k_a256_tile(
    int type, const uint8_t *w, size_t row_bytes, int nr, const uint8_t *act, size_t act_bytes,
    int nt, int n, float *out, size_t out_stride) {
  int blocks = n / 256;
  int bytes = flare_weight_block_bytes(type);
  k_acts a = k_acts_of(act, act_bytes, nt, n, 256);
  __m256 acc[K_ROWS256][K_MAXT];
  float extra[K_ROWS256][K_MAXT];
  for (int r = 0; r < nr; r++) {
    for (int j = 0; j < nt; j++) {
      acc[r][j] = _mm256_setzero_ps();
      extra[r][j] = 0;
    }
  }
  for (int b = 0; b < blocks; b++) {
    const uint8_t *blk[K_ROWS256];
    uint8_t scales[K_ROWS256][8], mins[K_ROWS256][8];
    __m256i isum[K_ROWS256][K_MAXT];
    for (int r = 0; r < nr; r++) {
      blk[r] = w + (size_t)r * row_bytes + (size_t)bytes * b;
      // One token: the same block of the next tile's row (see k_a32_tile), a line at a time.
      for (int line = 0; nt == 1 && line < bytes; line += 64) {
        _mm_prefetch((const char *)(blk[r] + (size_t)nr * row_bytes + line), _MM_HINT_T0);
      }
      if (type != FLARE_W_Q6_K) flare_k4_scales(blk[r] + 4, scales[r], mins[r]);
      for (int j = 0; j < nt; j++) isum[r][j] = _mm256_setzero_si256();
    }
    for (int i = 0; i < 8; i++) {
      __m256i av[K_MAXT];
      for (int j = 0; j < nt; j++) av[j] = k_load(a.q[j] + 256 * b + 32 * i);
      for (int r = 0; r < nr; r++) {
        __m256i q = k_levels256(type, blk[r], i);
        __m256i scale = type == FLARE_W_Q6_K ? k_q6k_scale((const int8_t *)(blk[r] + 192), i)
                                             : _mm256_set1_epi16(scales[r][i]);
        for (int j = 0; j < nt; j++) {
          isum[r][j] = k_dot_scaled_add(isum[r][j], q, av[j], scale);
        }
      }
    }
    for (int r = 0; r < nr; r++) {
      if (type == FLARE_W_Q6_K) {
        // Q6_K's levels are stored +32: take 32 · Σ scale·(sum of 16) off, lane by lane.
        __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk[r] + 192)));
        float d = k_half(blk[r] + 208);
        for (int j = 0; j < nt; j++) {
          __m256i bs = k_load(a.bsums[j] + 16 * b);
          __m256i correction = _mm256_slli_epi32(_mm256_madd_epi16(sc, bs), 5);
          __m256i s = _mm256_sub_epi32(isum[r][j], correction);
          acc[r][j] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[j][b]), _mm256_cvtepi32_ps(s), acc[r][j]);
        }
        continue;
      }
      // Each min applies to two sums of 16: the eight mins, doubled, as 16-bit values.
      __m128i m8 = _mm_loadl_epi64((const __m128i *)mins[r]);
      __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
      float d = k_half(blk[r]);
      float dmin = k_half(blk[r] + 2);
      for (int j = 0; j < nt; j++) {
        int imin = k_hsum_i32(_mm256_madd_epi16(m16, k_load(a.bsums[j] + 16 * b)));
        acc[r][j] = _mm256_fmadd_ps(
            _mm256_set1_ps(d * a.d[j][b]), _mm256_cvtepi32_ps(isum[r][j]), acc[r][j]);
        extra[r][j] -= dmin * a.d[j][b] * (float)imin;
      }
    }
  }
  for (int r = 0; r < nr; r++) {
    for (int j = 0; j < nt; j++) out[(size_t)j * out_stride + r] = k_hsum(acc[r][j]) + extra[r][j];
  }
}

// One copy per type and tile shape (all constants inside after inlining).
#define K_TILE_CASES(NR, NT)                                                                   \
  switch (type) {                                                                              \
    case FLARE_W_Q4_0: k_a32_tile(FLARE_W_Q4_0, w, rb, NR, act, ab, NT, n, out, os); break;    \
    case FLARE_W_Q4_1: k_a32_tile(FLARE_W_Q4_1, w, rb, NR, act, ab, NT, n, out, os); break;    \
    case FLARE_W_Q5_0: k_a32_tile(FLARE_W_Q5_0, w, rb, NR, act, ab, NT, n, out, os); break;    \
    case FLARE_W_Q5_1: k_a32_tile(FLARE_W_Q5_1, w, rb, NR, act, ab, NT, n, out, os); break;    \
    case FLARE_W_Q8_0: k_a32_tile(FLARE_W_Q8_0, w, rb, NR, act, ab, NT, n, out, os); break;    \
    default: break;                                                                            \
  }
#define K_TILE256_CASES(NR, NT)                                                                \
  switch (type) {                                                                              \
    case FLARE_W_Q4_K: k_a256_tile(FLARE_W_Q4_K, w, rb, NR, act, ab, NT, n, out, os); break;   \
    case FLARE_W_Q5_K: k_a256_tile(FLARE_W_Q5_K, w, rb, NR, act, ab, NT, n, out, os); break;   \
    case FLARE_W_Q6_K: k_a256_tile(FLARE_W_Q6_K, w, rb, NR, act, ab, NT, n, out, os); break;   \
    default: break;                                                                            \
  }

#define K_TILE_FN(NAME, CASES, NR, NT)                                                         \
  static __attribute__((noinline)) FLARE_TARGET void NAME(                                     \
      int type, const uint8_t *w, size_t rb, const uint8_t *act, size_t ab, int n, float *out, \
      size_t os) {                                                                             \
    CASES(NR, NT)                                                                              \
  }
K_TILE_FN(k_tile32_full, K_TILE_CASES, K_ROWS32, K_MAXT)
K_TILE_FN(k_tile32_rows, K_TILE_CASES, K_ROWS32, 1)
K_TILE_FN(k_tile32_tokens, K_TILE_CASES, 1, K_MAXT)
K_TILE_FN(k_tile32_one, K_TILE_CASES, 1, 1)
K_TILE_FN(k_tile256_full, K_TILE256_CASES, K_ROWS256, K_MAXT)
K_TILE_FN(k_tile256_rows, K_TILE256_CASES, K_ROWS256, 1)
K_TILE_FN(k_tile256_tokens, K_TILE256_CASES, 1, K_MAXT)
K_TILE_FN(k_tile256_one, K_TILE256_CASES, 1, 1)

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

// MARK: - Exported

typedef void (*k_tile_fn)(
    int type, const uint8_t *w, size_t rb, const uint8_t *act, size_t ab, int n, float *out,
    size_t os);

// Rows [r0, r1) of `weights` against the activation rows at `a`: `group` rows a call of
// `many`, the rest one a call of `single`.
K_FN void k_rows(
    k_tile_fn many, k_tile_fn single, int group, int type, const uint8_t *weights, size_t rb,
    int r0, int r1, const uint8_t *a, size_t ab, int n, float *o, size_t os) {
  int r = r0;
  for (; r + group <= r1; r += group) many(type, weights + (size_t)r * rb, rb, a, ab, n, o + r, os);
  for (; r < r1; r++) single(type, weights + (size_t)r * rb, rb, a, ab, n, o + r, os);
}

FLARE_TARGET float FLARE_NAME(int type, const void *w, const void *act, int n) {
  float out = 0;
  switch (flare_weight_block(type)) {
    case 1: return k_dot_float(type, (const uint8_t *)w, (const float *)act, n);
    case 32: k_tile32_one(type, (const uint8_t *)w, 0, (const uint8_t *)act, 0, n, &out, 1); break;
    case 256: k_tile256_one(type, (const uint8_t *)w, 0, (const uint8_t *)act, 0, n, &out, 1); break;
    default: break;
  }
  return out;
}

// The tiled product of kernels.c's flare_matmul on this instruction set: rows in cache tiles of
// about 32 KiB of weights, each tile passed by every token, K_ROWS × K_MAXT outputs per kernel
// call (single rows and single tokens at the edges, with the same per-output operations).
FLARE_TARGET void FLARE_MATMUL(
    int type, const void *w, size_t row_bytes, int rows, const void *acts, int tokens, int n,
    float *out, size_t os) {
  const uint8_t *weights = (const uint8_t *)w;
  const uint8_t *activations = (const uint8_t *)acts;
  size_t ab = flare_act_bytes(type, n);
  int block = flare_weight_block(type);
  if (block == 1) {
    for (int t = 0; t < tokens; t++) {
      for (int r = 0; r < rows; r++) {
        out[(size_t)t * os + r] = k_dot_float(
            type, weights + (size_t)r * row_bytes, (const float *)(activations + (size_t)t * ab), n);
      }
    }
    return;
  }
  int group = block == 32 ? K_ROWS32 : K_ROWS256;
  k_tile_fn full = block == 32 ? k_tile32_full : k_tile256_full;  // group rows × K_MAXT tokens
  k_tile_fn row_tokens = block == 32 ? k_tile32_tokens : k_tile256_tokens;  // 1 × K_MAXT
  k_tile_fn rows_token = block == 32 ? k_tile32_rows : k_tile256_rows;  // group × 1
  k_tile_fn one = block == 32 ? k_tile32_one : k_tile256_one;  // 1 × 1
  int tile = tokens == 1 ? rows : (int)(32768 / row_bytes) / group * group;
  if (tile < group) tile = group;
  for (int r0 = 0; r0 < rows; r0 += tile) {
    int r1 = r0 + tile < rows ? r0 + tile : rows;
    int t = 0;
    for (; t + K_MAXT <= tokens; t += K_MAXT) {
      k_rows(full, row_tokens, group, type, weights, row_bytes, r0, r1, activations + (size_t)t * ab,
          ab, n, out + (size_t)t * os, os);
    }
    for (; t < tokens; t++) {
      k_rows(rows_token, one, group, type, weights, row_bytes, r0, r1, activations + (size_t)t * ab,
          ab, n, out + (size_t)t * os, os);
    }
  }
}

// MARK: - Activation quantization (bit-identical to kernels.c's portable quantizers)

// The largest |v| of eight lanes (NaN lanes ignored, as the portable loop's `>` ignores them).
K_FN float k_hmax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// 32 int32 lanes (four vectors, elements in order) → 32 int8 in order (values in [-128, 127]).
K_FN __m256i k_pack32(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
  __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
  return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Q8_0 / Q8_1: scale amax/127, values roundf(x / scale) (half away from zero: the truncation
// plus one step away where the dropped fraction is at least a half), NaN → 0, in [-127, 127].
K_FN void k_quantize_a32(const float *x, int n, uint8_t *act) {
  int blocks = n / 32;
  int8_t *qs = (int8_t *)act;
  float *d = (float *)(act + n);
  float *s = d + blocks;
  int32_t *sums = (int32_t *)(s + blocks);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
  for (int b = 0; b < blocks; b++) {
    const float *v = x + 32 * b;
    __m256 xv[4];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
      xv[k] = _mm256_loadu_ps(v + 8 * k);
      m = _mm256_max_ps(_mm256_and_ps(xv[k], abs_mask), m);  // a NaN lane keeps m
    }
    float amax = k_hmax(m);
    float scale = amax / 127;
    float inverse = scale != 0 ? 1.0f / scale : 0.0f;
    __m256i c[4];
    __m256i total = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
      __m256 p = _mm256_mul_ps(xv[k], _mm256_set1_ps(inverse));
      __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      __m256 frac = _mm256_and_ps(_mm256_sub_ps(p, t), abs_mask);
      __m256 away = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
          _mm256_or_ps(_mm256_and_ps(p, sign_mask), _mm256_set1_ps(1.0f)));
      __m256 r = _mm256_add_ps(t, away);
      r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
      r = _mm256_and_ps(r, _mm256_cmp_ps(p, p, _CMP_ORD_Q));  // NaN → 0
      c[k] = _mm256_cvttps_epi32(r);
      total = _mm256_add_epi32(total, c[k]);
    }
    _mm256_storeu_si256((__m256i *)(qs + 32 * b), k_pack32(c[0], c[1], c[2], c[3]));
    int sum = k_hsum_i32(total);
    d[b] = flare_half_to_float(flare_float_to_half(scale));
    s[b] = flare_half_to_float(flare_float_to_half((float)sum * scale));
    sums[b] = sum;
  }
}

// Q8_K: scale −max/127 of the value of largest magnitude (the first such), values rounded half
// to even (ggml's nearest_int), in [-128, 127]; all-zero or non-finite blocks give zeros.
K_FN void k_quantize_a256(const float *x, int n, uint8_t *act) {
  int blocks = n / 256;
  int8_t *qs = (int8_t *)act;
  float *d = (float *)(act + n);
  int16_t *bsums = (int16_t *)(d + blocks);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int b = 0; b < blocks; b++) {
    const float *v = x + 256 * b;
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 32; k++) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(v + 8 * k), abs_mask), m);
    float amax = k_hmax(m);
    if (amax == 0 || !(amax < INFINITY)) {
      d[b] = 0;
      memset(qs + 256 * b, 0, 256);
      memset(bsums + 16 * b, 0, 32);
      continue;
    }
    float max = 0;
    for (int k = 0; k < 32; k++) {
      __m256 a = _mm256_and_ps(_mm256_loadu_ps(v + 8 * k), abs_mask);
      int hit = _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(amax), _CMP_EQ_OQ));
      if (hit) {
        max = v[8 * k + __builtin_ctz((unsigned)hit)];
        break;
      }
    }
    float iscale = -127.0f / max;
    const __m256i ones = _mm256_set1_epi8(1);
    for (int g = 0; g < 8; g++) {
      __m256i c[4];
      for (int k = 0; k < 4; k++) {
        __m256 p = _mm256_mul_ps(_mm256_set1_ps(iscale), _mm256_loadu_ps(v + 32 * g + 8 * k));
        __m256 r = _mm256_round_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-128.0f)), _mm256_set1_ps(127.0f));
        // nearest_int's domain: NaN and |p| ≥ 2^22 (an infinite scale) give 0.
        __m256 inside = _mm256_cmp_ps(
            _mm256_and_ps(p, abs_mask), _mm256_set1_ps(4194304.0f), _CMP_LT_OQ);
        r = _mm256_and_ps(r, inside);
        c[k] = _mm256_cvttps_epi32(r);
      }
      __m256i q = k_pack32(c[0], c[1], c[2], c[3]);
      _mm256_storeu_si256((__m256i *)(qs + 256 * b + 32 * g), q);
      // Sums of 16: pairs (maddubs with ones), then fours (madd), then each 128-bit half.
      __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones, q), _mm256_set1_epi16(1));
      int32_t lanes[8];
      _mm256_storeu_si256((__m256i *)lanes, s4);
      bsums[16 * b + 2 * g] = (int16_t)(lanes[0] + lanes[1] + lanes[2] + lanes[3]);
      bsums[16 * b + 2 * g + 1] = (int16_t)(lanes[4] + lanes[5] + lanes[6] + lanes[7]);
    }
    d[b] = 1 / iscale;
  }
}

FLARE_TARGET void FLARE_QUANTIZE(int type, const float *x, int n, void *act) {
  switch (flare_weight_block(type)) {
    case 1: memcpy(act, x, 4 * (size_t)n); break;
    case 32: k_quantize_a32(x, n, (uint8_t *)act); break;
    case 256: k_quantize_a256(x, n, (uint8_t *)act); break;
    default: break;
  }
}
