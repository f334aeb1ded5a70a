// Flare's quantized compute kernels: dot products of ggml-quantized weight rows with
// activations quantized per block, and the matrix products built on them.
//
// Every function here trusts its arguments: the Swift layer (FlareTensor's QuantizedMatrix)
// checks types, sizes and alignment before it calls in. Nothing here allocates, prints or
// keeps state other than the instruction-set choice made once at first use.
#ifndef FLARE_KERNELS_H
#define FLARE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Weight types, by their ggml type id.
enum {
  FLARE_W_F32 = 0,
  FLARE_W_F16 = 1,
  FLARE_W_Q4_0 = 2,
  FLARE_W_Q4_1 = 3,
  FLARE_W_Q5_0 = 6,
  FLARE_W_Q5_1 = 7,
  FLARE_W_Q8_0 = 8,
  FLARE_W_Q4_K = 12,
  FLARE_W_Q5_K = 13,
  FLARE_W_Q6_K = 14,
  FLARE_W_BF16 = 30,
};

// Instruction sets the dot kernels come in.
enum {
  FLARE_ISA_SCALAR = 0,  // portable C
  FLARE_ISA_AVX2 = 1,  // AVX2 + FMA + F16C, 256-bit
  FLARE_ISA_AVX512 = 2,  // AVX-512 F/BW/VL + VNNI instructions, on 256-bit vectors (dpbusd)
};

// Whether `type` has a dot kernel.
int flare_weight_supported(int type);
// Elements per block of `type` (1 for F32/F16/BF16), 0 if unsupported.
int flare_weight_block(int type);
// Bytes per block of `type`, 0 if unsupported.
int flare_weight_block_bytes(int type);

// The best instruction set this CPU supports (decided once, from CPUID).
int flare_isa_best(void);
// Whether this CPU can run `isa`.
int flare_isa_available(int isa);
// The instruction set the kernels use (the best one unless FLARE_KERNELS=scalar|avx2|avx512
// names an available lower one when it is first asked).
int flare_isa_active(void);

// Bytes of one activation row of `n` elements quantized for weights of `type` (`n` a whole
// number of the type's blocks), a multiple of 64.
size_t flare_act_bytes(int type, int n);
// Quantizes the activation row `x[n]` for weights of `type` into `act` (flare_act_bytes(type,
// n) bytes, 64-byte aligned). 32-element types get ggml's Q8_0/Q8_1 (scale amax/127 rounded
// to F16, values rounded half away from zero, per-block sums); K-quants get Q8_K (scale
// −max/127 of the value of largest magnitude, round half to even, sums of 16); F32/F16/BF16
// weights keep the F32 row. Runs on instruction set `isa` (which must be available); every
// instruction set writes the same bytes.
void flare_act_quantize(int isa, int type, const float *x, int n, void *act);

// The dot product of the weight row `w` (`n` elements of `type`) with a quantized activation
// row, on instruction set `isa` (which must be available).
float flare_dot(int isa, int type, const void *w, const void *act, int n);

// out[t * out_stride + r] = dot(row r of w, activation t) for r in [0, rows), t in
// [0, tokens): `w` holds `rows` rows of `n` elements of `type`, `row_bytes` apart; the
// activations are `act_bytes` = flare_act_bytes(type, n) apart. One token runs tiles of
// several rows; two or more pack 16 rows (AVX-512 VNNI; 8 on AVX2, 32-value types) of a chunk
// of blocks at a time into a stack buffer, lane r of a vector for row r, and pass every token
// over them. Every output equals flare_dot_scalar's bit for bit (each block's exact integer
// sums, then the portable float operations in block order), so results depend neither on the
// instruction set nor on how callers split the rows between threads or group the tokens.
void flare_matmul(
    int isa, int type, const void *w, size_t row_bytes, int rows, const void *acts, int tokens,
    int n, float *out, size_t out_stride);

// y[0..<n] += alpha * dequantized(w[0..<n]) for one weight row (the backward pass through Wᵀ).
void flare_axpy_row(int type, const void *w, int n, float alpha, float *y);
// out[0..<n] = dequantized(w[0..<n]) for one weight row, as FlareGGUF's dequantizer computes it.
void flare_dequantize_row(int type, const void *w, int n, float *out);

#ifdef __cplusplus
}
#endif

#endif
