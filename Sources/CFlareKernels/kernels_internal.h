// Declarations shared by the kernel files (not part of the module's interface).
#ifndef FLARE_KERNELS_INTERNAL_H
#define FLARE_KERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#define FLARE_X86 1
#else
#define FLARE_X86 0
#endif

float flare_half_to_float(uint16_t h);
uint16_t flare_float_to_half(float value);
// The eight 6-bit scales and mins of a Q4_K/Q5_K block from its 12 scale bytes.
void flare_k4_scales(const uint8_t *s, uint8_t scales[8], uint8_t mins[8]);

float flare_dot_scalar(int type, const void *w, const void *act, int n);
#if FLARE_X86
float flare_dot_avx2(int type, const void *w, const void *act, int n);
float flare_dot_avx512(int type, const void *w, const void *act, int n);
void flare_matmul_avx2(
    int type, const void *w, size_t row_bytes, int rows, const void *acts, int tokens, int n,
    float *out, size_t out_stride);
void flare_matmul_avx512(
    int type, const void *w, size_t row_bytes, int rows, const void *acts, int tokens, int n,
    float *out, size_t out_stride);
void flare_act_quantize_avx2(int type, const float *x, int n, void *act);
void flare_act_quantize_avx512(int type, const float *x, int n, void *act);
#endif

#endif
