/* Shared pieces of mtk's C encoders (see mtk/kernels/native.py).
 *
 * Every encoder exports one function per ggml type:
 *     int mtk_encode_<type>(const float *x, const float *importance, uint8_t *out, int64_t rows, int64_t cols);
 * x: float32 (rows, cols) row-major; importance: float32 (cols,) or NULL; out: (rows, cols / block * type_size)
 * bytes in ggml's block layout. Returns 0, or -1 when cols is not whole blocks.
 *
 * The float arithmetic follows the order of ggml's reference quantizers operation by operation (sums left to
 * right, products in the same association), so the bytes are llama.cpp's. That is also why the library is
 * compiled with -ffp-contract=off: a fused multiply-add rounds once where ggml rounds twice.
 */
#ifndef MTK_COMMON_H
#define MTK_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MTK_EXPORT __attribute__((visibility("default")))

/* Run-time choice of the x86 vector paths (the library itself is built for baseline x86-64, SSE2): a path is
 * taken when the CPU has its feature, so every CPU with AVX2 (AVX-512 ones included: no path needs more) runs
 * the same code. -DMTK_SSE2_ONLY answers "no" for every feature, as a CPU without AVX would: how that path is
 * tested on a newer machine. */
#ifdef MTK_SSE2_ONLY
#define MTK_CPU_HAS(feature) 0
#else
#define MTK_CPU_HAS(feature) __builtin_cpu_supports(feature)
#endif

static inline float mtk_max(float a, float b) { return a > b ? a : b; }
static inline float mtk_min(float a, float b) { return a < b ? a : b; }
static inline int mtk_clamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* The value of largest magnitude in x[0..n) (the first one on ties, as ggml's loops) and that magnitude. */
static inline float mtk_signed_peak(int n, const float *x, float *amax_out) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    *amax_out = amax;
    return max;
}

/* Round to the nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the integer in the
 * low mantissa bits (the same result as lrintf in the default rounding mode, without the libm call). */
static inline int mtk_nearest_int(float v) {
    float shifted = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

/* IEEE binary16 from float32, round to nearest even; NaN stays NaN (quiet), overflow gives infinity. */
static inline uint16_t mtk_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((mag >> 13) & 0x3ffu));
    if (mag >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to or past 65520 */
    if (mag < 0x38800000u) {                                    /* below the smallest normal half */
        if (mag < 0x33000000u) return (uint16_t)sign;           /* under half the smallest subnormal */
        uint32_t mant = (mag & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(mag >> 23); /* 14..24 */
        uint32_t half = mant >> shift;
        uint32_t rest = mant & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((mag >> 13) - (112u << 10));
    uint32_t rest = mag & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

static inline float mtk_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal half: normalise */
        int e = -1;
        do {
            mant <<= 1;
            e++;
        } while (!(mant & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline void mtk_store_f16(uint8_t *dst, float v) {
    uint16_t h = mtk_f32_to_f16(v);
    dst[0] = (uint8_t)(h & 0xff);
    dst[1] = (uint8_t)(h >> 8);
}

/* The value a half stored from v reads back as (GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v))). */
static inline float mtk_f16_round(float v) { return mtk_f16_to_f32(mtk_f32_to_f16(v)); }

#endif
