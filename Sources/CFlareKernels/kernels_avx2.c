// The x86 dot kernels for AVX2 + FMA + F16C (see kernels_x86.h).
#include "kernels_internal.h"

#if FLARE_X86
#define FLARE_TARGET __attribute__((target("avx2,fma,f16c")))
#define FLARE_NAME flare_dot_avx2
#define FLARE_MATMUL flare_matmul_avx2
#define FLARE_QUANTIZE flare_act_quantize_avx2
#define FLARE_VNNI 0
#include "kernels_x86.h"
#endif
