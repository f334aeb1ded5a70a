// The x86 kernels, written once and compiled twice: kernels_avx2.c (AVX2, maddubs + madd)
// and kernels_avx512.c (AVX-512 VL + VNNI: dpbusd). The including file defines
//   FLARE_TARGET  the function attribute naming the instruction set,
//   FLARE_NAME    the exported dot function's name,
//   FLARE_MATMUL  the exported matrix product's name,
//   FLARE_QUANTIZE the exported activation quantizer's name,
//   FLARE_VNNI    1 to sum unsigned × signed bytes with dpbusd, 0 for maddubs + madd.
// Every kernel computes each block's integer sums exactly and then the portable definition's
// float operations in its order, so every output equals flare_dot_scalar's bit for bit: the
// instruction set, the tile shape, the packing and the thread split never change a value.
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
// has 32 vector registers, AVX2 16, hence fewer K-quant rows there.
#define K_MAXT 4
#define K_ROWS32 4
#if FLARE_VNNI
#define K_ROWS256 2
#else
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

// The 32 levels of a 32-value block: Q8_0's signed bytes, the other types' unsigned levels
// (Q4_0/Q5_0 still carrying their +8/+16 offset).
__attribute__((always_inline)) K_FN __m256i k_levels32(int type, const uint8_t *blk) {
  switch (type) {
    case FLARE_W_Q4_0: return k_nibbles16(blk + 2);
    case FLARE_W_Q4_1: return k_nibbles16(blk + 4);
    case FLARE_W_Q5_0:
    case FLARE_W_Q5_1: {
      int qh_at = type == FLARE_W_Q5_1 ? 4 : 2;
      uint32_t qh;
      memcpy(&qh, blk + qh_at, 4);
#if FLARE_VNNI
      // AVX-512 BW: bit j of qh masks byte j, which gains 16.
      __m256i q = k_nibbles16(blk + qh_at + 4);
      return _mm256_mask_add_epi8(q, (__mmask32)qh, q, _mm256_set1_epi8(0x10));
#else
      return _mm256_or_si256(k_nibbles16(blk + qh_at + 4), k_fifth_bits(qh));
#endif
    }
    default: return k_load(blk + 2);  // Q8_0
  }
}

// Every (row, token) pair of a 32-value block type is computed as the portable definition
// computes it: each block's exact integer sum, times dw · dx, plus (Q4_1, Q5_1) the minimum
// times the activation block's scaled sum, added to one float sum in block order. The same
// float operations in the same order, so these outputs equal flare_dot_scalar's bit for bit on
// every instruction set, and the tile kernels (one token) and the packed products (several)
// agree. The integer sums: VNNI's dpbusd multiplies unsigned by signed bytes, so Q4/Q5 levels
// go in unsigned as stored (the offsets of Q4_0/Q5_0 start the sum at −offset · Σ x), and Q8_0
// takes x + 128 against its signed weights in the tiles (the sum starting at −128 · Σ w) and
// w + 128 against x in the packed product (starting at −128 · Σ x). AVX2 multiplies pairs with
// maddubs, whose 16-bit sums hold four steps of 5-bit levels, and moves Q8_0's signs to x
// (|w| · ±x).

// Row r's total of its eight int32 lanes in lane r (rows past the tile's are zero vectors).
K_FN __m128i k_rows_total(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
  __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
  return _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
}

// The offset a 32-value type stores its levels with (Q4_0 +8, Q5_0 +16).
K_FN int k_offset32(int type) {
  switch (type) {
    case FLARE_W_Q4_0: return 8;
    case FLARE_W_Q5_0: return 16;
    default: return 0;
  }
}

// `nr` ≤ 4 rows times `nt` ≤ K_MAXT tokens, row r of a token in lane r of a 128-bit sum.
__attribute__((always_inline)) K_FN void k_v32_tile(
    int type, const uint8_t *w, size_t row_bytes, int nr, const uint8_t *act, size_t act_bytes,
    int nt, int n, float *out, size_t out_stride) {
  int blocks = n / 32;
  int bytes = flare_weight_block_bytes(type);
  int with_min = type == FLARE_W_Q4_1 || type == FLARE_W_Q5_1;
  int offset = k_offset32(type);
  k_acts a = k_acts_of(act, act_bytes, nt, n, 32);
  __m128 acc[K_MAXT];
  for (int j = 0; j < nt; j++) acc[j] = _mm_setzero_ps();
  for (int b = 0; b < blocks; b++) {
    __m256i av[K_MAXT];
    __m256i start[K_MAXT];
    for (int j = 0; j < nt; j++) {
      av[j] = k_load(a.q[j] + 32 * b);
      if (type == FLARE_W_Q8_0 && FLARE_VNNI) av[j] = _mm256_xor_si256(av[j], _mm256_set1_epi8((char)0x80));
      start[j] = _mm256_setr_epi32(offset ? -offset * a.sum[j][b] : 0, 0, 0, 0, 0, 0, 0, 0);
    }
    __m256i p[4][K_MAXT];
    for (int r = 0; r < 4; r++) {
      for (int j = 0; j < nt; j++) p[r][j] = _mm256_setzero_si256();
    }
    uint32_t dm[4] = {0, 0, 0, 0};  // each row's F16 scale (and minimum above it)
    for (int r = 0; r < nr; r++) {
      const uint8_t *blk = w + (size_t)r * row_bytes + (size_t)bytes * b;
      // One token (decode): the same block of the next tile's row, ahead of time. The weights
      // come from L3 or memory once per token, and the tile's rows advance together, which
      // the hardware prefetchers follow less well (prefetching doubles decode speed here).
      if (nt == 1) _mm_prefetch((const char *)(blk + (size_t)nr * row_bytes), _MM_HINT_T0);
      memcpy(&dm[r], blk, 4);
      __m256i q = k_levels32(type, blk);
#if FLARE_VNNI
      if (type == FLARE_W_Q8_0) {
        __m256i q8_start = _mm256_sub_epi32(_mm256_setzero_si256(),
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), q));
        for (int j = 0; j < nt; j++) p[r][j] = _mm256_dpbusd_epi32(q8_start, av[j], q);
      } else {
        for (int j = 0; j < nt; j++) p[r][j] = _mm256_dpbusd_epi32(start[j], q, av[j]);
      }
#else
      if (type == FLARE_W_Q8_0) {
        __m256i u = _mm256_sign_epi8(q, q);  // |w| (0x80 reads as 128)
        for (int j = 0; j < nt; j++) p[r][j] = k_dot_u8s8(u, _mm256_sign_epi8(av[j], q));
      } else {
        for (int j = 0; j < nt; j++) p[r][j] = _mm256_add_epi32(k_dot_u8s8(q, av[j]), start[j]);
      }
#endif
    }
    // Lanes 0-3 the rows' scales, 4-7 their minimums.
    __m128i halves = _mm_loadu_si128((const __m128i *)dm);
    halves = _mm_shuffle_epi8(halves, _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
    __m256 dmw = _mm256_cvtph_ps(halves);
    __m128 dw = _mm256_castps256_ps128(dmw);
    for (int j = 0; j < nt; j++) {
      __m128 s = _mm_mul_ps(dw, _mm_set1_ps(a.d[j][b]));
      __m128i isum = k_rows_total(p[0][j], p[1][j], p[2][j], p[3][j]);
      __m128 term = _mm_mul_ps(s, _mm_cvtepi32_ps(isum));
      if (with_min) {
        term = _mm_add_ps(term, _mm_mul_ps(_mm256_extractf128_ps(dmw, 1), _mm_set1_ps(a.s[j][b])));
      }
      acc[j] = _mm_add_ps(acc[j], term);
    }
  }
  for (int j = 0; j < nt; j++) {
    float lanes[4];
    _mm_storeu_ps(lanes, acc[j]);
    for (int r = 0; r < nr; r++) out[(size_t)j * out_stride + r] = lanes[r];
  }
}
// One token (decode) takes the tile kernels: the packing pays for itself from two tokens on.
#define K_PACK_MIN_TOKENS 2

// One copy of a packed pass per type and token count (all constants inside after inlining):
// FN(type, buf, b0, kb, act, ab, NT, n, out, os, m) for each type of the block size.
#define K_PACKED32_CASES(FN, NT)                                                               \
  switch (type) {                                                                              \
    case FLARE_W_Q4_0: FN(FLARE_W_Q4_0, buf, b0, kb, act, ab, NT, n, out, os, m); break;        \
    case FLARE_W_Q4_1: FN(FLARE_W_Q4_1, buf, b0, kb, act, ab, NT, n, out, os, m); break;        \
    case FLARE_W_Q5_0: FN(FLARE_W_Q5_0, buf, b0, kb, act, ab, NT, n, out, os, m); break;        \
    case FLARE_W_Q5_1: FN(FLARE_W_Q5_1, buf, b0, kb, act, ab, NT, n, out, os, m); break;        \
    case FLARE_W_Q8_0: FN(FLARE_W_Q8_0, buf, b0, kb, act, ab, NT, n, out, os, m); break;        \
    default: break;                                                                            \
  }
#define K_PACKED256_CASES(FN, NT)                                                              \
  switch (type) {                                                                              \
    case FLARE_W_Q4_K: FN(FLARE_W_Q4_K, buf, b0, kb, act, ab, NT, n, out, os, m); break;        \
    case FLARE_W_Q5_K: FN(FLARE_W_Q5_K, buf, b0, kb, act, ab, NT, n, out, os, m); break;        \
    case FLARE_W_Q6_K: FN(FLARE_W_Q6_K, buf, b0, kb, act, ab, NT, n, out, os, m); break;        \
    default: break;                                                                            \
  }
// NAME: the pass FN for NT tokens over a packed buffer (k_pvec) with the row mask m.
#define K_PACKED_FN(NAME, FN, CASES, NT)                                                       \
  static __attribute__((noinline)) FLARE_TARGET void NAME(int type, const k_pvec *buf, int b0, \
      int kb, const uint8_t *act, size_t ab, int n, float *out, size_t os, k_pmask m) {        \
    CASES(FN, NT)                                                                              \
  }

#if FLARE_VNNI
// Several tokens: 16 rows at a time, lane r of a 512-bit vector for row r. A chunk of the
// rows' blocks is packed once into a buffer and passed by every token; per block it holds
// eight vectors of four levels of each row (unsigned: Q8_0's moved by +128), the rows' scales
// and (Q4_1, Q5_1) minimums as F32. One dpbusd then adds four products for 16 (row, token)
// pairs, the token's four bytes broadcast from memory, and the float work per block is one
// conversion and a few products and sums per 16 pairs.
#define K_PACK_ROWS 16
#define K_PACK_BLOCKS 32
#define K_PACK_STRIDE 10  // vectors per packed block
#define K_PACK_TOKENS 8
typedef __m512i k_pvec;  // one packed vector
typedef __mmask16 k_pmask;  // the rows of a group present
K_FN k_pmask k_pmask_of(int nr) { return (__mmask16)((1u << nr) - 1); }

// Byte k of lane r: bit 4 set where bit k of lane r's `bits` is (Q5's fifth bits, four a lane).
K_FN __m512i k_spread4(__m512i bits) {
  const __m512i one = _mm512_set1_epi32(1);
  __m512i v = _mm512_and_si512(bits, one);
  v = _mm512_or_si512(v, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 1), one), 8));
  v = _mm512_or_si512(v, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 2), one), 16));
  v = _mm512_or_si512(v, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 3), one), 24));
  return _mm512_slli_epi32(v, 4);
}

__attribute__((always_inline)) K_FN void k_v32_pack(
    int type, const uint8_t *w, size_t row_bytes, int nr, int b0, int kb, __m512i *buf) {
  int bytes = flare_weight_block_bytes(type);
  __mmask16 m = k_pmask_of(nr);
  __m512i idx = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32((int)row_bytes));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int b = 0; b < kb; b++) {
    const uint8_t *blk = w + (size_t)bytes * (b0 + b);
    __m512i *out = buf + K_PACK_STRIDE * b;
    if (type == FLARE_W_Q8_0) {
      for (int s = 0; s < 8; s++) {
        __m512i v = _mm512_mask_i32gather_epi32(zero, m, idx, blk + 2 + 4 * s, 1);
        out[s] = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
      }
    } else {
      int five = type == FLARE_W_Q5_0 || type == FLARE_W_Q5_1;
      int qh_at = type == FLARE_W_Q5_1 ? 4 : 2;
      int qs_at = type == FLARE_W_Q4_0 ? 2 : (type == FLARE_W_Q4_1 ? 4 : qh_at + 4);
      __m512i qh = five ? _mm512_mask_i32gather_epi32(zero, m, idx, blk + qh_at, 1) : zero;
      for (int s = 0; s < 4; s++) {
        // Elements 4s..4s+3 are the low nibbles of bytes 4s..4s+3, elements 16+4s.. the high.
        __m512i v = _mm512_mask_i32gather_epi32(zero, m, idx, blk + qs_at + 4 * s, 1);
        __m512i lo = _mm512_and_si512(v, low4);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), low4);
        if (five) {
          lo = _mm512_or_si512(lo, k_spread4(_mm512_srli_epi32(qh, 4 * s)));
          hi = _mm512_or_si512(hi, k_spread4(_mm512_srli_epi32(qh, 16 + 4 * s)));
        }
        out[s] = lo;
        out[4 + s] = hi;
      }
    }
    __m512i dm = _mm512_mask_i32gather_epi32(zero, m, idx, blk, 1);
    out[8] = _mm512_castps_si512(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)));
    out[9] = _mm512_castps_si512(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))));
  }
}

// `nt` tokens against a packed chunk of blocks [b0, b0 + kb); the sums start at out's values
// (a float stored and loaded again is the same float) unless this is the first chunk.
__attribute__((always_inline)) K_FN void k_v32_packed(
    int type, const __m512i *buf, int b0, int kb, const uint8_t *act, size_t act_bytes, int nt,
    int n, float *out, size_t out_stride, __mmask16 m) {
  int blocks = n / 32;
  int with_min = type == FLARE_W_Q4_1 || type == FLARE_W_Q5_1;
  int offset = type == FLARE_W_Q8_0 ? 128 : k_offset32(type);  // Q8_0 packs w + 128
  const int8_t *q[K_PACK_TOKENS];
  const float *d[K_PACK_TOKENS];
  const float *sa[K_PACK_TOKENS];
  const int32_t *sum[K_PACK_TOKENS];
  __m512 acc[K_PACK_TOKENS];
  for (int j = 0; j < nt; j++) {
    const uint8_t *row = act + (size_t)j * act_bytes;
    q[j] = (const int8_t *)row;
    d[j] = (const float *)(row + n);
    sa[j] = d[j] + blocks;
    sum[j] = (const int32_t *)(sa[j] + blocks);
    acc[j] = b0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, out + (size_t)j * out_stride);
  }
  for (int b = 0; b < kb; b++) {
    int block = b0 + b;
    const __m512i *packed = buf + K_PACK_STRIDE * b;
    __m512i isum[K_PACK_TOKENS];
    for (int j = 0; j < nt; j++) {
      isum[j] = offset ? _mm512_set1_epi32(-offset * sum[j][block]) : _mm512_setzero_si512();
    }
    for (int s = 0; s < 8; s++) {
      __m512i wv = _mm512_load_si512(packed + s);
      for (int j = 0; j < nt; j++) {
        int32_t x4;
        memcpy(&x4, q[j] + 32 * block + 4 * s, 4);
        isum[j] = _mm512_dpbusd_epi32(isum[j], wv, _mm512_set1_epi32(x4));
      }
    }
    __m512 dw = _mm512_castsi512_ps(_mm512_load_si512(packed + 8));
    __m512 mw = _mm512_castsi512_ps(_mm512_load_si512(packed + 9));
    for (int j = 0; j < nt; j++) {
      __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(d[j][block]));
      __m512 term = _mm512_mul_ps(s, _mm512_cvtepi32_ps(isum[j]));
      if (with_min) term = _mm512_add_ps(term, _mm512_mul_ps(mw, _mm512_set1_ps(sa[j][block])));
      acc[j] = _mm512_add_ps(acc[j], term);
    }
  }
  for (int j = 0; j < nt; j++) _mm512_mask_storeu_ps(out + (size_t)j * out_stride, m, acc[j]);
}

K_PACKED_FN(k_v32_packed8, k_v32_packed, K_PACKED32_CASES, 8)
K_PACKED_FN(k_v32_packed4, k_v32_packed, K_PACKED32_CASES, 4)
K_PACKED_FN(k_v32_packed2, k_v32_packed, K_PACKED32_CASES, 2)
K_PACKED_FN(k_v32_packed1, k_v32_packed, K_PACKED32_CASES, 1)

static __attribute__((noinline)) FLARE_TARGET void k_v32_pack_any(
    int type, const uint8_t *w, size_t row_bytes, int nr, int b0, int kb, __m512i *buf) {
  switch (type) {
    case FLARE_W_Q4_0: k_v32_pack(FLARE_W_Q4_0, w, row_bytes, nr, b0, kb, buf); break;
    case FLARE_W_Q4_1: k_v32_pack(FLARE_W_Q4_1, w, row_bytes, nr, b0, kb, buf); break;
    case FLARE_W_Q5_0: k_v32_pack(FLARE_W_Q5_0, w, row_bytes, nr, b0, kb, buf); break;
    case FLARE_W_Q5_1: k_v32_pack(FLARE_W_Q5_1, w, row_bytes, nr, b0, kb, buf); break;
    case FLARE_W_Q8_0: k_v32_pack(FLARE_W_Q8_0, w, row_bytes, nr, b0, kb, buf); break;
    default: break;
  }
}

#else
// AVX2, several tokens of a 32-value block type: 8 rows at a time, lane r of a 256-bit vector
// for row r, a chunk of blocks packed once and passed by the tokens (see the VNNI product
// above). Per block: eight vectors of four levels of each row (Q8_0: eight of |w| then eight
// of w, whose signs move to x), the rows' scales and (Q4_1, Q5_1) minimums as F32. maddubs
// multiplies a lane's four levels by the token's four bytes broadcast; its 16-bit pair sums
// take four steps of 5-bit levels (4 · 2 · 31 · 127 < 2¹⁵) before madd widens them.
#define K_PACK_ROWS 8
#define K_PACK_BLOCKS 32
#define K_PACK_STRIDE 18  // vectors per packed block
#define K_PACK_TOKENS 4
typedef __m256i k_pvec;
typedef __m256i k_pmask;  // all ones in the lanes of the rows present
K_FN k_pmask k_pmask_of(int nr) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

K_FN void k_a2_pack(
    int type, const uint8_t *w, size_t row_bytes, int nr, int b0, int kb, __m256i *buf) {
  int bytes = flare_weight_block_bytes(type);
  __m256i m = k_pmask_of(nr);
  __m256i idx = _mm256_mullo_epi32(
      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)row_bytes));
  const __m256i zero = _mm256_setzero_si256();
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int b = 0; b < kb; b++) {
    const uint8_t *blk = w + (size_t)bytes * (b0 + b);
    __m256i *out = buf + K_PACK_STRIDE * b;
    if (type == FLARE_W_Q8_0) {
      for (int s = 0; s < 8; s++) {
        __m256i v = _mm256_mask_i32gather_epi32(zero, (const int *)(blk + 2 + 4 * s), idx, m, 1);
        out[s] = _mm256_sign_epi8(v, v);
        out[8 + s] = v;
      }
    } else {
      int five = type == FLARE_W_Q5_0 || type == FLARE_W_Q5_1;
      int qh_at = type == FLARE_W_Q5_1 ? 4 : 2;
      int qs_at = type == FLARE_W_Q4_0 ? 2 : (type == FLARE_W_Q4_1 ? 4 : qh_at + 4);
      __m256i qh = five ? _mm256_mask_i32gather_epi32(zero, (const int *)(blk + qh_at), idx, m, 1)
                        : zero;
      for (int s = 0; s < 4; s++) {
        __m256i v = _mm256_mask_i32gather_epi32(zero, (const int *)(blk + qs_at + 4 * s), idx, m, 1);
        __m256i lo = _mm256_and_si256(v, low4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi32(v, 4), low4);
        if (five) {
          // Byte k of a lane gains 16 where bit (4s + k), or (16 + 4s + k), of its qh is set.
          for (int k = 0; k < 4; k++) {
            __m256i bit_lo = _mm256_and_si256(_mm256_srli_epi32(qh, 4 * s + k), _mm256_set1_epi32(1));
            __m256i bit_hi = _mm256_and_si256(_mm256_srli_epi32(qh, 16 + 4 * s + k), _mm256_set1_epi32(1));
            lo = _mm256_or_si256(lo, _mm256_slli_epi32(bit_lo, 8 * k + 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi32(bit_hi, 8 * k + 4));
          }
        }
        out[s] = lo;
        out[4 + s] = hi;
      }
    }
    float dw[8] = {0, 0, 0, 0, 0, 0, 0, 0}, mw[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int r = 0; r < nr; r++) {
      dw[r] = k_half(blk + (size_t)r * row_bytes);
      if (type == FLARE_W_Q4_1 || type == FLARE_W_Q5_1) mw[r] = k_half(blk + (size_t)r * row_bytes + 2);
    }
    out[16] = _mm256_castps_si256(_mm256_loadu_ps(dw));
    out[17] = _mm256_castps_si256(_mm256_loadu_ps(mw));
  }
}

__attribute__((always_inline)) K_FN void k_a2_packed(
    int type, const __m256i *buf, int b0, int kb, const uint8_t *act, size_t act_bytes, int nt,
    int n, float *out, size_t out_stride, __m256i m) {
  int blocks = n / 32;
  int with_min = type == FLARE_W_Q4_1 || type == FLARE_W_Q5_1;
  int offset = k_offset32(type);
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t *q[K_PACK_TOKENS];
  const float *d[K_PACK_TOKENS];
  const float *sa[K_PACK_TOKENS];
  const int32_t *sum[K_PACK_TOKENS];
  __m256 acc[K_PACK_TOKENS];
  for (int j = 0; j < nt; j++) {
    const uint8_t *row = act + (size_t)j * act_bytes;
    q[j] = (const int8_t *)row;
    d[j] = (const float *)(row + n);
    sa[j] = d[j] + blocks;
    sum[j] = (const int32_t *)(sa[j] + blocks);
    acc[j] = b0 == 0 ? _mm256_setzero_ps() : _mm256_maskload_ps(out + (size_t)j * out_stride, m);
  }
  for (int b = 0; b < kb; b++) {
    int block = b0 + b;
    const __m256i *packed = buf + K_PACK_STRIDE * b;
    const int8_t *x[K_PACK_TOKENS];
    __m256i isum[K_PACK_TOKENS];
    for (int j = 0; j < nt; j++) {
      x[j] = q[j] + 32 * block;
      isum[j] = _mm256_set1_epi32(-offset * sum[j][block]);
    }
    if (type == FLARE_W_Q8_0) {
      for (int s = 0; s < 8; s++) {
        __m256i u = _mm256_load_si256(packed + s);
        __m256i sw = _mm256_load_si256(packed + 8 + s);
        for (int j = 0; j < nt; j++) {
          int32_t x4;
          memcpy(&x4, x[j] + 4 * s, 4);
          __m256i sx = _mm256_sign_epi8(_mm256_set1_epi32(x4), sw);
          isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(_mm256_maddubs_epi16(u, sx), ones));
        }
      }
    } else {
      for (int half = 0; half < 2; half++) {
        __m256i part[K_PACK_TOKENS];
        for (int j = 0; j < nt; j++) part[j] = _mm256_setzero_si256();
        for (int s = 4 * half; s < 4 * half + 4; s++) {
          __m256i wv = _mm256_load_si256(packed + s);
          for (int j = 0; j < nt; j++) {
            int32_t x4;
            memcpy(&x4, x[j] + 4 * s, 4);
            part[j] = _mm256_add_epi16(part[j], _mm256_maddubs_epi16(wv, _mm256_set1_epi32(x4)));
          }
        }
        for (int j = 0; j < nt; j++) isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(part[j], ones));
      }
    }
    __m256 dw = _mm256_castsi256_ps(_mm256_load_si256(packed + 16));
    __m256 mw = _mm256_castsi256_ps(_mm256_load_si256(packed + 17));
    for (int j = 0; j < nt; j++) {
      __m256 s = _mm256_mul_ps(dw, _mm256_set1_ps(d[j][block]));
      __m256 term = _mm256_mul_ps(s, _mm256_cvtepi32_ps(isum[j]));
      if (with_min) term = _mm256_add_ps(term, _mm256_mul_ps(mw, _mm256_set1_ps(sa[j][block])));
      acc[j] = _mm256_add_ps(acc[j], term);
    }
  }
  for (int j = 0; j < nt; j++) _mm256_maskstore_ps(out + (size_t)j * out_stride, m, acc[j]);
}

K_PACKED_FN(k_a2_packed4, k_a2_packed, K_PACKED32_CASES, 4)
K_PACKED_FN(k_a2_packed2, k_a2_packed, K_PACKED32_CASES, 2)
K_PACKED_FN(k_a2_packed1, k_a2_packed, K_PACKED32_CASES, 1)

static __attribute__((noinline)) FLARE_TARGET void k_a2_pack_any(
    int type, const uint8_t *w, size_t row_bytes, int nr, int b0, int kb, __m256i *buf) {
  k_a2_pack(type, w, row_bytes, nr, b0, kb, buf);
}

#endif

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

// `nr` weight rows times `nt` activation rows of a K-quant type: per block, sub-block by
// sub-block, each weight sub-block unpacked once for the tokens and each activation sub-block
// loaded once for the rows. Each (row, token) pair's block sums are reduced to the exact
// integers of the portable definition and go through its float operations in its order, so
// every output equals flare_dot_scalar's bit for bit (on both instruction sets).
__attribute__((always_inline)) K_FN void k_a256_tile(
    int type, const uint8_t *w, size_t row_bytes, int nr, const uint8_t *act, size_t act_bytes,
    int nt, int n, float *out, size_t out_stride) {
  int blocks = n / 256;
  int bytes = flare_weight_block_bytes(type);
  k_acts a = k_acts_of(act, act_bytes, nt, n, 256);
  float acc[K_ROWS256][K_MAXT];
  for (int r = 0; r < nr; r++) {
    for (int j = 0; j < nt; j++) acc[r][j] = 0;
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
          int total = k_hsum_i32(_mm256_sub_epi32(isum[r][j], correction));
          acc[r][j] += d * a.d[j][b] * (float)total;
        }
        continue;
      }
      // Each min applies to two sums of 16: the eight mins, doubled, as 16-bit values.
      __m128i m8 = _mm_loadl_epi64((const __m128i *)mins[r]);
      __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
      float dh = k_half(blk[r]);
      float dminh = k_half(blk[r] + 2);
      for (int j = 0; j < nt; j++) {
        int imin = k_hsum_i32(_mm256_madd_epi16(m16, k_load(a.bsums[j] + 16 * b)));
        int total = k_hsum_i32(isum[r][j]);
        float d = dh * a.d[j][b];
        float dmin = dminh * a.d[j][b];
        acc[r][j] += d * (float)total - dmin * (float)imin;
      }
    }
  }
  for (int r = 0; r < nr; r++) {
    for (int j = 0; j < nt; j++) out[(size_t)j * out_stride + r] = acc[r][j];
  }
}

#if FLARE_VNNI
// K-quants with several tokens, packed like the 32-value types (see k_v32_pack): per 256-value
// block, 64 vectors of four levels of 16 rows (unsigned: Q6_K's carry their +32), then the
// sub-block scales as int32 (8 for Q4_K/Q5_K, 16 for Q6_K's sixteens), then eight vectors of
// 16-bit pairs for the correction taken with the activations' sums of 16 (Q4_K/Q5_K: each
// sub-block's minimum twice; Q6_K: two scales), then the F32 scale (and minimum scale).
#define K_PACK256_BLOCKS 4
#define K_PACK256_STRIDE 90

K_FN void k_v256_pack(
    int type, const uint8_t *w, size_t row_bytes, int nr, int b0, int kb, __m512i *buf) {
  int bytes = flare_weight_block_bytes(type);
  __mmask16 m = k_pmask_of(nr);
  __m512i idx = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32((int)row_bytes));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int b = 0; b < kb; b++) {
    const uint8_t *blk0 = w + (size_t)bytes * (b0 + b);
    __m512i *out = buf + K_PACK256_STRIDE * b;
    int32_t sc[16][16];  // [scale][row]
    int32_t pairs[8][16];  // [pair][row]: two 16-bit factors
    float dw[16], dmw[16];
    memset(sc, 0, sizeof sc);
    memset(pairs, 0, sizeof pairs);
    memset(dw, 0, sizeof dw);
    memset(dmw, 0, sizeof dmw);
    for (int r = 0; r < nr; r++) {
      const uint8_t *blk = blk0 + (size_t)r * row_bytes;
      if (type == FLARE_W_Q6_K) {
        const int8_t *s6 = (const int8_t *)(blk + 192);
        for (int g = 0; g < 16; g++) sc[g][r] = s6[g];
        for (int k = 0; k < 8; k++) {
          pairs[k][r] = (int32_t)(((uint32_t)(uint16_t)s6[2 * k + 1] << 16) | (uint16_t)s6[2 * k]);
        }
        dw[r] = k_half(blk + 208);
      } else {
        uint8_t scales[8], mins[8];
        flare_k4_scales(blk + 4, scales, mins);
        for (int i = 0; i < 8; i++) {
          sc[i][r] = scales[i];
          pairs[i][r] = (int32_t)(((uint32_t)mins[i] << 16) | mins[i]);
        }
        dw[r] = k_half(blk);
        dmw[r] = k_half(blk + 2);
      }
    }
    if (type == FLARE_W_Q6_K) {
      for (int g = 0; g < 16; g++) {
        int half = g >> 3;
        for (int k = 0; k < 4; k++) {
          int within = (16 * g + 4 * k) & 127;
          int l = within & 31;
          int quarter = within >> 5;
          __m512i ql = _mm512_mask_i32gather_epi32(
              zero, m, idx, blk0 + 64 * half + l + 32 * (quarter & 1), 1);
          __m512i qh = _mm512_mask_i32gather_epi32(zero, m, idx, blk0 + 128 + 32 * half + l, 1);
          __m512i low = quarter < 2 ? _mm512_and_si512(ql, low4)
                                    : _mm512_and_si512(_mm512_srli_epi32(ql, 4), low4);
          __m512i high = _mm512_and_si512(_mm512_srli_epi32(qh, 2 * quarter), _mm512_set1_epi8(0x03));
          out[4 * g + k] = _mm512_or_si512(low, _mm512_slli_epi32(high, 4));
        }
      }
    } else {
      int five = type == FLARE_W_Q5_K;
      const uint8_t *qs = blk0 + (five ? 48 : 16);
      for (int i = 0; i < 8; i++) {
        for (int k = 0; k < 8; k++) {
          __m512i v = _mm512_mask_i32gather_epi32(zero, m, idx, qs + 32 * (i >> 1) + 4 * k, 1);
          __m512i q = _mm512_and_si512(_mm512_srli_epi32(v, 4 * (i & 1)), low4);
          if (five) {
            __m512i h = _mm512_mask_i32gather_epi32(zero, m, idx, blk0 + 16 + 4 * k, 1);
            h = _mm512_and_si512(_mm512_srli_epi32(h, i), _mm512_set1_epi8(0x01));
            q = _mm512_or_si512(q, _mm512_slli_epi32(h, 4));
          }
          out[8 * i + k] = q;
        }
      }
    }
    for (int g = 0; g < 16; g++) out[64 + g] = _mm512_loadu_si512(sc[g]);
    for (int k = 0; k < 8; k++) out[80 + k] = _mm512_loadu_si512(pairs[k]);
    out[88] = _mm512_castps_si512(_mm512_loadu_ps(dw));
    out[89] = _mm512_castps_si512(_mm512_loadu_ps(dmw));
  }
}

// `nt` tokens against a packed chunk of K-quant blocks (see k_v32_packed).
__attribute__((always_inline)) K_FN void k_v256_packed(
    int type, const __m512i *buf, int b0, int kb, const uint8_t *act, size_t act_bytes, int nt,
    int n, float *out, size_t out_stride, __mmask16 m) {
  int blocks = n / 256;
  const int8_t *q[K_PACK_TOKENS];
  const float *d[K_PACK_TOKENS];
  const int16_t *bsums[K_PACK_TOKENS];
  __m512 acc[K_PACK_TOKENS];
  for (int j = 0; j < nt; j++) {
    const uint8_t *row = act + (size_t)j * act_bytes;
    q[j] = (const int8_t *)row;
    d[j] = (const float *)(row + n);
    bsums[j] = (const int16_t *)(d[j] + blocks);
    acc[j] = b0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, out + (size_t)j * out_stride);
  }
  // Q6_K: 16 sums of 16 values, four steps each; Q4_K/Q5_K: 8 sums of 32, eight steps each.
  int groups = type == FLARE_W_Q6_K ? 16 : 8;
  int steps = 64 / groups;
  for (int b = 0; b < kb; b++) {
    int block = b0 + b;
    const __m512i *packed = buf + K_PACK256_STRIDE * b;
    __m512i isum[K_PACK_TOKENS];
    __m512i corr[K_PACK_TOKENS];
    for (int j = 0; j < nt; j++) {
      isum[j] = _mm512_setzero_si512();
      corr[j] = _mm512_setzero_si512();
    }
    for (int g = 0; g < groups; g++) {
      __m512i part[K_PACK_TOKENS];
      for (int j = 0; j < nt; j++) part[j] = _mm512_setzero_si512();
      for (int k = 0; k < steps; k++) {
        __m512i wv = _mm512_load_si512(packed + steps * g + k);
        for (int j = 0; j < nt; j++) {
          int32_t x4;
          memcpy(&x4, q[j] + 256 * block + 4 * (steps * g + k), 4);
          part[j] = _mm512_dpbusd_epi32(part[j], wv, _mm512_set1_epi32(x4));
        }
      }
      __m512i scale = _mm512_load_si512(packed + 64 + g);
      for (int j = 0; j < nt; j++) isum[j] = _mm512_add_epi32(isum[j], _mm512_mullo_epi32(part[j], scale));
    }
    for (int k = 0; k < 8; k++) {
      __m512i factors = _mm512_load_si512(packed + 80 + k);
      for (int j = 0; j < nt; j++) {
        int32_t s2;
        memcpy(&s2, bsums[j] + 16 * block + 2 * k, 4);
        corr[j] = _mm512_dpwssd_epi32(corr[j], factors, _mm512_set1_epi32(s2));
      }
    }
    __m512 dw = _mm512_castsi512_ps(_mm512_load_si512(packed + 88));
    __m512 dmw = _mm512_castsi512_ps(_mm512_load_si512(packed + 89));
    for (int j = 0; j < nt; j++) {
      __m512 dx = _mm512_set1_ps(d[j][block]);
      __m512 term;
      if (type == FLARE_W_Q6_K) {
        __m512i total = _mm512_sub_epi32(isum[j], _mm512_slli_epi32(corr[j], 5));
        term = _mm512_mul_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(total));
      } else {
        term = _mm512_sub_ps(_mm512_mul_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(isum[j])),
            _mm512_mul_ps(_mm512_mul_ps(dmw, dx), _mm512_cvtepi32_ps(corr[j])));
      }
      acc[j] = _mm512_add_ps(acc[j], term);
    }
  }
  for (int j = 0; j < nt; j++) _mm512_mask_storeu_ps(out + (size_t)j * out_stride, m, acc[j]);
}

K_PACKED_FN(k_v256_packed8, k_v256_packed, K_PACKED256_CASES, 8)
K_PACKED_FN(k_v256_packed4, k_v256_packed, K_PACKED256_CASES, 4)
K_PACKED_FN(k_v256_packed2, k_v256_packed, K_PACKED256_CASES, 2)
K_PACKED_FN(k_v256_packed1, k_v256_packed, K_PACKED256_CASES, 1)

static __attribute__((noinline)) FLARE_TARGET void k_v256_pack_any(
    int type, const uint8_t *w, size_t row_bytes, int nr, int b0, int kb, __m512i *buf) {
  k_v256_pack(type, w, row_bytes, nr, b0, kb, buf);
}

#endif

typedef void (*k_pack_fn)(
    int type, const uint8_t *w, size_t row_bytes, int nr, int b0, int kb, k_pvec *buf);
typedef void (*k_packed_fn)(int type, const k_pvec *buf, int b0, int kb, const uint8_t *act,
    size_t ab, int n, float *out, size_t os, k_pmask m);

// The product of FLARE_MATMUL for several tokens: rows in groups of K_PACK_ROWS, each group's
// blocks packed a chunk at a time and passed by the tokens 8 (AVX-512), 4, 2 or 1 at a time.
// AVX-512 packs every block type, AVX2 the 32-value ones.
K_FN void k_packed_matmul(
    int type, const uint8_t *weights, size_t rb, int rows, const uint8_t *acts, size_t ab,
    int tokens, int n, float *out, size_t os) {
#if FLARE_VNNI
  k_pvec buf[K_PACK256_STRIDE * K_PACK256_BLOCKS > K_PACK_STRIDE * K_PACK_BLOCKS
                 ? K_PACK256_STRIDE * K_PACK256_BLOCKS
                 : K_PACK_STRIDE * K_PACK_BLOCKS];
  int big = flare_weight_block(type) == 256;
  int chunk = big ? K_PACK256_BLOCKS : K_PACK_BLOCKS;
  k_pack_fn pack = big ? k_v256_pack_any : k_v32_pack_any;
  k_packed_fn passes[4] = {big ? k_v256_packed1 : k_v32_packed1, big ? k_v256_packed2 : k_v32_packed2,
      big ? k_v256_packed4 : k_v32_packed4, big ? k_v256_packed8 : k_v32_packed8};
#else
  k_pvec buf[K_PACK_STRIDE * K_PACK_BLOCKS];
  int chunk = K_PACK_BLOCKS;
  k_pack_fn pack = k_a2_pack_any;
  k_packed_fn passes[4] = {k_a2_packed1, k_a2_packed2, k_a2_packed4, NULL};
#endif
  int blocks = n / flare_weight_block(type);
  for (int r0 = 0; r0 < rows; r0 += K_PACK_ROWS) {
    int nr = rows - r0 < K_PACK_ROWS ? rows - r0 : K_PACK_ROWS;
    k_pmask m = k_pmask_of(nr);
    for (int b0 = 0; b0 < blocks; b0 += chunk) {
      int kb = blocks - b0 < chunk ? blocks - b0 : chunk;
      pack(type, weights + (size_t)r0 * rb, rb, nr, b0, kb, buf);
      for (int t = 0; t < tokens;) {
        int i = 3;  // the widest pass that has no more tokens than are left
        while (!passes[i] || (1 << i) > tokens - t) i--;
        passes[i](type, buf, b0, kb, acts + (size_t)t * ab, ab, n, out + (size_t)t * os + r0, os, m);
        t += 1 << i;
      }
    }
  }
}

// One copy per type and tile shape (all constants inside after inlining).
#define K_TILE_CASES(NR, NT)                                                                   \
  switch (type) {                                                                              \
    case FLARE_W_Q4_0: k_v32_tile(FLARE_W_Q4_0, w, rb, NR, act, ab, NT, n, out, os); break;    \
    case FLARE_W_Q4_1: k_v32_tile(FLARE_W_Q4_1, w, rb, NR, act, ab, NT, n, out, os); break;    \
    case FLARE_W_Q5_0: k_v32_tile(FLARE_W_Q5_0, w, rb, NR, act, ab, NT, n, out, os); break;    \
    case FLARE_W_Q5_1: k_v32_tile(FLARE_W_Q5_1, w, rb, NR, act, ab, NT, n, out, os); break;    \
    case FLARE_W_Q8_0: k_v32_tile(FLARE_W_Q8_0, w, rb, NR, act, ab, NT, n, out, os); break;    \
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
  // The packing gathers index a group's rows with 32-bit offsets.
  if (tokens >= K_PACK_MIN_TOKENS && (block == 32 || FLARE_VNNI)
      && row_bytes <= (size_t)INT32_MAX / K_PACK_ROWS) {
    k_packed_matmul(type, weights, row_bytes, rows, activations, ab, tokens, n, out, os);
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
