// The x86 dot kernels for AVX-512 (F/BW/VL) with VNNI (see kernels_x86.h).
#include "kernels_internal.h"

#if FLARE_X86
#define FLARE_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define FLARE_NAME flare_dot_avx512
#define FLARE_MATMUL flare_matmul_avx512
#define FLARE_QUANTIZE flare_act_quantize_avx512
#define FLARE_VNNI 1
#include "kernels_x86.h"
#endif
