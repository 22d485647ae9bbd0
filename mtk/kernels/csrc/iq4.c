/* IQ4_NL and IQ4_XS encoders: llama.cpp's quantize_iq4_nl / quantize_iq4_xs (ggml_quantize_chunk), byte for
 * byte, with x*x weights or with importance (weights importance * sqrt(sigma2 + x*x), sigma2 = 2/n * sum x*x
 * over the block of n = 32 or 256 values).
 *
 * Both code 32-value sub-blocks as x ~ d * level[code] with 16 fixed non-linear levels (IQ4_LEVELS, a format
 * fact). Block layouts (little endian):
 *   IQ4_NL, 32 values, 18 bytes:   f16 d | qs[16]
 *   IQ4_XS, 256 values, 136 bytes: f16 d | u16 scales_h | scales_l[4] | qs[128]
 * qs: per sub-block of 32, byte j = code j | code (16 + j) << 4. IQ4_XS sub-block k has scale d * (s_k - 32)
 * with the 6-bit s_k split as low nibble k of scales_l (even k low half, odd k high half) and bits 2k, 2k+1 of
 * scales_h for its top two bits.
 *
 * The sub-block scale search (ggml's quantize_row_iq4_nl_impl with ntry = 7) scores 16 inverse scales: a
 * first guess 1 / (max / 127) (max: the value of largest magnitude, first one on ties) and (t - 127) / max for
 * t = -7..7. Each trial sums w*q*x and w*q*q over the 32 values in order; trials are accepted in that order
 * when sumqx^2 > best * sumq2. Here the 16 trials run side by side (interleaved, or AVX2 lanes), each summing
 * in ggml's order, so the bytes stay ggml's while the sums' latency chains overlap.
 *
 * Nearest level: ggml bisects for level[m] <= v < level[m+1] and takes m when (v - level[m]) < (level[m+1] - v)
 * in float32. That choice is monotone in v, so for each gap there is an exact float32 threshold t_m (found by
 * bisection over float bit patterns per call) and the code is the number of thresholds <= v (NaN: 15, as in
 * ggml). The portable path reads it from a 256-entry table indexed by trunc(v) (every bucket holds at most one
 * threshold, so one compare decides); the AVX2 path bisects the thresholds branch-free, four compares a lane.
 * Both were checked against ggml's bisection for all 2^32 float32 inputs.
 */
#include "mtk_common.h"

/* x86-64 builds also carry an AVX2 search, picked at run time (the library is built for baseline x86-64);
 * -DMTK_PORTABLE leaves it out (to test the portable search on such a machine). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(MTK_PORTABLE)
#include <immintrin.h>
#define IQ4_AVX2 1
#endif

#define IQ4_SUB 32            /* values per sub-block */
#define IQ4_XS_SUBS 8         /* sub-blocks per IQ4_XS super-block */
#define IQ4_TRIES 7           /* ggml's ntry for both types, with or without importance */
#define IQ4_TRIALS 16         /* the first guess and 2 * IQ4_TRIES + 1 others */
#define IQ4_ZERO_MAX 1e-15f   /* ggml's GROUP_MAX_EPS: a sub-block with |x| below this gets scale 0 */
#define IQ4_NL_BYTES 18
#define IQ4_XS_BYTES 136

static const int8_t IQ4_LEVELS[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* One bucket of trunc(v), v clamped to [-128, 127]: bucket n > 0 is [n, n+1), n < 0 is (n-1, n], 0 is (-1, 1).
 * Below `thr` the level is `lo`, from it `hi` (equal when the bucket holds no threshold). */
typedef struct {
    float thr, lo, hi;
} iq4_bucket;

typedef struct iq4_ctx iq4_ctx;
typedef void (*iq4_sums_fn)(const iq4_ctx *, const float *, const float *, const float *, float *, float *);

/* Per-call tables and the search this CPU runs (on the stack: each call, so each thread, has its own). */
struct iq4_ctx {
    iq4_bucket bucket[256];
    uint8_t code_lo[256];
    float thr[15];          /* t_m: from it on, v takes level m + 1 rather than m */
    iq4_sums_fn trial_sums; /* the widest search this CPU runs */
};

/* Float32 <-> an integer that orders like the float (both zeros -> 0), to bisect over representable values. */
static int64_t iq4_order(float f) {
    int32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits >= 0 ? (int64_t)bits : -(int64_t)(bits & 0x7fffffff);
}

static float iq4_unorder(int64_t o) {
    uint32_t bits = o >= 0 ? (uint32_t)o : (0x80000000u | (uint32_t)(-o));
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ggml's choice between the two levels around v (lower one when strictly nearer, in float32 arithmetic). */
static int iq4_takes_lower(float v, float lo, float hi) { return v - lo < hi - v; }

/* The smallest float32 in [level[m], level[m+1]] that takes the upper level. */
static float iq4_threshold(int m) {
    float lo = IQ4_LEVELS[m], hi = IQ4_LEVELS[m + 1];
    int64_t below = iq4_order(lo), above = iq4_order(hi); /* takes lower at `below`, not at `above` */
    while (above - below > 1) {
        int64_t mid = below + (above - below) / 2;
        if (iq4_takes_lower(iq4_unorder(mid), lo, hi)) below = mid;
        else above = mid;
    }
    return iq4_unorder(above);
}

static void iq4_ctx_init(iq4_ctx *ctx) {
    float *thr = ctx->thr;
    for (int m = 0; m < 15; m++) thr[m] = iq4_threshold(m);
    for (int n = -128; n < 128; n++) {
        /* The smallest and largest float32 that truncate into bucket n. */
        float vmin = n > 0 ? (float)n : iq4_unorder(iq4_order((float)(n - 1)) + 1);
        float vmax = n < 0 ? (float)n : iq4_unorder(iq4_order((float)(n + 1)) - 1);
        int base = 0, inside = -1;
        for (int m = 0; m < 15; m++) {
            if (thr[m] <= vmin) base++;
            else if (thr[m] <= vmax) inside = m; /* thresholds are >= 10 apart: at most one per bucket */
        }
        iq4_bucket *b = &ctx->bucket[n + 128];
        b->thr = inside >= 0 ? thr[inside] : INFINITY;
        b->lo = IQ4_LEVELS[base];
        b->hi = IQ4_LEVELS[inside >= 0 ? base + 1 : base];
        ctx->code_lo[n + 128] = (uint8_t)base;
    }
}

/* v clamped into the table's range; NaN goes to 127, beyond the top level, where ggml's compares send it. */
static inline float iq4_clamp(float v) {
    float c = v < 127.0f ? v : 127.0f;
    return c > -128.0f ? c : -128.0f;
}

/* ggml's best_index_int8(16, IQ4_LEVELS, v). */
static inline uint8_t iq4_code(const iq4_ctx *ctx, float v) {
    float c = iq4_clamp(v);
    int k = (int)c + 128;
    return (uint8_t)(ctx->code_lo[k] + (c >= ctx->bucket[k].thr));
}

/* The level of the nearest code (IQ4_LEVELS[iq4_code(v)]) as float. */
static inline float iq4_level(const iq4_ctx *ctx, float v) {
    float c = iq4_clamp(v);
    const iq4_bucket *b = &ctx->bucket[(int)c + 128];
    return c >= b->thr ? b->hi : b->lo;
}

/* For each trial t: sumqx[t] = sum_j (w_j * q_tj) * x_j and sumq2[t] = sum_j (w_j * q_tj) * q_tj, j in order,
 * q_tj the nearest level to inv[t] * x_j. */
static void iq4_trial_sums_portable(const iq4_ctx *ctx, const float *x, const float *w, const float *inv,
                                    float *sumqx, float *sumq2) {
    for (int t = 0; t < IQ4_TRIALS; t++) sumqx[t] = sumq2[t] = 0.0f;
    for (int j = 0; j < IQ4_SUB; j++) {
        for (int t = 0; t < IQ4_TRIALS; t++) {
            float q = iq4_level(ctx, inv[t] * x[j]);
            float wq = w[j] * q;
            sumqx[t] += wq * x[j];
            sumq2[t] += wq * q;
        }
    }
}

#ifdef IQ4_AVX2
/* The same sums, 8 trials a vector. The code is found by a branch-free bisection over the thresholds (a code is
 * the number of t_m <= v), each step picking the next threshold per lane with a permute; then the level. */
__attribute__((target("avx2"))) static void iq4_trial_sums_avx2(const iq4_ctx *ctx, const float *x, const float *w,
                                                                const float *inv, float *sumqx, float *sumq2) {
    const float *t = ctx->thr;
    const __m256 top = _mm256_set1_ps(127.0f), t7 = _mm256_set1_ps(t[7]);
    const __m256 t3 = _mm256_set1_ps(t[3]), t11 = _mm256_set1_ps(t[11]);
    const __m256 quarter = _mm256_setr_ps(t[1], t[5], t[9], t[13], 0, 0, 0, 0);           /* by code / 4 */
    const __m256 half = _mm256_setr_ps(t[0], t[2], t[4], t[6], t[8], t[10], t[12], t[14]); /* by code / 2 */
    const __m256 low_levels = _mm256_setr_ps(-127, -104, -83, -65, -49, -35, -22, -10);
    const __m256 high_levels = _mm256_setr_ps(1, 13, 25, 38, 53, 69, 89, 113);
    const __m256i bit3 = _mm256_set1_epi32(8), bit2 = _mm256_set1_epi32(4);
    const __m256i bit1 = _mm256_set1_epi32(2), bit0 = _mm256_set1_epi32(1);
    __m256 id[2], sqx[2], sq2[2];
    for (int g = 0; g < 2; g++) {
        id[g] = _mm256_loadu_ps(inv + 8 * g);
        sqx[g] = sq2[g] = _mm256_setzero_ps();
    }
    for (int j = 0; j < IQ4_SUB; j++) {
        const __m256 xj = _mm256_set1_ps(x[j]), wj = _mm256_set1_ps(w[j]);
        for (int g = 0; g < 2; g++) {
            __m256 v = _mm256_min_ps(_mm256_mul_ps(id[g], xj), top); /* NaN -> 127, the top code */
            __m256 m3 = _mm256_cmp_ps(v, t7, _CMP_GE_OQ);
            __m256 m2 = _mm256_cmp_ps(v, _mm256_blendv_ps(t3, t11, m3), _CMP_GE_OQ);
            __m256i code = _mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(m3), bit3),
                                           _mm256_and_si256(_mm256_castps_si256(m2), bit2));
            __m256 thr = _mm256_permutevar8x32_ps(quarter, _mm256_srli_epi32(code, 2));
            __m256 m1 = _mm256_cmp_ps(v, thr, _CMP_GE_OQ);
            code = _mm256_or_si256(code, _mm256_and_si256(_mm256_castps_si256(m1), bit1));
            thr = _mm256_permutevar8x32_ps(half, _mm256_srli_epi32(code, 1));
            __m256 m0 = _mm256_cmp_ps(v, thr, _CMP_GE_OQ);
            code = _mm256_or_si256(code, _mm256_and_si256(_mm256_castps_si256(m0), bit0));
            /* vpermps reads the low 3 bits of the code; bit 3 (m3) picks the half of the level table. */
            __m256 q = _mm256_blendv_ps(_mm256_permutevar8x32_ps(low_levels, code),
                                        _mm256_permutevar8x32_ps(high_levels, code), m3);
            __m256 wq = _mm256_mul_ps(wj, q);
            sqx[g] = _mm256_add_ps(sqx[g], _mm256_mul_ps(wq, xj));
            sq2[g] = _mm256_add_ps(sq2[g], _mm256_mul_ps(wq, q));
        }
    }
    for (int g = 0; g < 2; g++) {
        _mm256_storeu_ps(sumqx + 8 * g, sqx[g]);
        _mm256_storeu_ps(sumq2 + 8 * g, sq2[g]);
    }
}
#endif

/* The scale of one sub-block of 32 values with weights w: ggml's search, 0 when all |x| < IQ4_ZERO_MAX. */
static float iq4_subblock_scale(const iq4_ctx *ctx, const float *x, const float *w) {
    float amax;
    const float max = mtk_signed_peak(IQ4_SUB, x, &amax);
    if (amax < IQ4_ZERO_MAX) return 0.0f;
    float inv[IQ4_TRIALS], sumqx[IQ4_TRIALS], sumq2[IQ4_TRIALS];
    inv[0] = 1.0f / (-max / (float)IQ4_LEVELS[0]);
    for (int t = -IQ4_TRIES; t <= IQ4_TRIES; t++) inv[t + IQ4_TRIES + 1] = (float)(t + IQ4_LEVELS[0]) / max;
    ctx->trial_sums(ctx, x, w, inv, sumqx, sumq2);
    float d = sumq2[0] > 0 ? sumqx[0] / sumq2[0] : 0.0f;
    float best = d * sumqx[0];
    for (int t = 1; t < IQ4_TRIALS; t++) {
        if (sumq2[t] > 0 && sumqx[t] * sumqx[t] > best * sumq2[t]) {
            d = sumqx[t] / sumq2[t];
            best = d * sumqx[t];
        }
    }
    return d;
}

/* Weights of a sub-block: x*x, or importance * sqrt(sigma2 + x*x). */
static inline void iq4_weights(const float *x, const float *importance, float sigma2, float *w) {
    if (importance) {
        for (int j = 0; j < IQ4_SUB; j++) w[j] = importance[j] * sqrtf(sigma2 + x[j] * x[j]);
    } else {
        for (int j = 0; j < IQ4_SUB; j++) w[j] = x[j] * x[j];
    }
}

/* sigma2 of a block of n values: its sum of squares (left to right) times 2/n (exact for n = 32, 256). */
static inline float iq4_sigma2(const float *x, int n) {
    float s = 0.0f;
    for (int j = 0; j < n; j++) s += x[j] * x[j];
    return s * (2.0f / (float)n);
}

/* Codes of a sub-block for inverse scale inv, packed two per byte (j | j + 16). */
static inline void iq4_pack_codes(const iq4_ctx *ctx, const float *x, float inv, uint8_t *qs) {
    for (int j = 0; j < IQ4_SUB / 2; j++) {
        qs[j] = (uint8_t)(iq4_code(ctx, inv * x[j]) | (iq4_code(ctx, inv * x[j + IQ4_SUB / 2]) << 4));
    }
}

static void iq4_nl_block(const iq4_ctx *ctx, const float *x, const float *importance, uint8_t *out) {
    float w[IQ4_SUB];
    float sigma2 = importance ? iq4_sigma2(x, IQ4_SUB) : 0.0f;
    iq4_weights(x, importance, sigma2, w);
    float d = iq4_subblock_scale(ctx, x, w);
    mtk_store_f16(out, d);
    /* Codes against the float32 scale, before it is rounded to half. */
    iq4_pack_codes(ctx, x, d != 0.0f ? 1.0f / d : 0.0f, out + 2);
}

static void iq4_xs_block(const iq4_ctx *ctx, const float *x, const float *importance, uint8_t *out) {
    float w[IQ4_SUB], scales[IQ4_XS_SUBS];
    float sigma2 = importance ? iq4_sigma2(x, IQ4_XS_SUBS * IQ4_SUB) : 0.0f;
    float max_scale = 0.0f, amax_scale = 0.0f;
    for (int ib = 0; ib < IQ4_XS_SUBS; ib++) {
        const float *xb = x + ib * IQ4_SUB;
        iq4_weights(xb, importance ? importance + ib * IQ4_SUB : NULL, sigma2, w);
        scales[ib] = iq4_subblock_scale(ctx, xb, w);
        float abs_d = fabsf(scales[ib]);
        if (abs_d > amax_scale) {
            amax_scale = abs_d;
            max_scale = scales[ib];
        }
    }
    /* Super-block scale: the largest sub-block scale maps to 6-bit level -32. */
    float d = -max_scale / 32.0f;
    mtk_store_f16(out, d);
    float inv = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t scales_h = 0;
    uint8_t *scales_l = out + 4;
    memset(scales_l, 0, IQ4_XS_SUBS / 2);
    for (int ib = 0; ib < IQ4_XS_SUBS; ib++) {
        int l = mtk_nearest_int(inv * scales[ib]);
        l = l < -32 ? -32 : (l > 31 ? 31 : l);
        float dl = d * (float)l; /* codes against float32 d * l, not the half d */
        iq4_pack_codes(ctx, x + ib * IQ4_SUB, dl != 0.0f ? 1.0f / dl : 0.0f, out + 8 + ib * (IQ4_SUB / 2));
        l += 32;
        scales_l[ib / 2] |= (uint8_t)((l & 0xf) << (4 * (ib % 2)));
        scales_h |= (uint16_t)((l >> 4) << (2 * ib));
    }
    out[2] = (uint8_t)(scales_h & 0xff);
    out[3] = (uint8_t)(scales_h >> 8);
}

typedef void (*iq4_block_fn)(const iq4_ctx *, const float *, const float *, uint8_t *);

static int iq4_encode(iq4_block_fn block, int block_values, int block_bytes, const float *x, const float *importance,
                      uint8_t *out, int64_t rows, int64_t cols) {
    if (cols <= 0 || cols % block_values != 0) return -1;
    iq4_ctx ctx;
    iq4_ctx_init(&ctx);
    ctx.trial_sums = iq4_trial_sums_portable;
#ifdef IQ4_AVX2
    if (MTK_CPU_HAS("avx2")) ctx.trial_sums = iq4_trial_sums_avx2;
#endif
    int64_t blocks = cols / block_values;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        uint8_t *o = out + r * blocks * block_bytes;
        for (int64_t b = 0; b < blocks; b++) {
            block(&ctx, xr + b * block_values, importance ? importance + b * block_values : NULL, o + b * block_bytes);
        }
    }
    return 0;
}

MTK_EXPORT int mtk_encode_iq4_nl(const float *x, const float *importance, uint8_t *out, int64_t rows, int64_t cols) {
    return iq4_encode(iq4_nl_block, IQ4_SUB, IQ4_NL_BYTES, x, importance, out, rows, cols);
}

MTK_EXPORT int mtk_encode_iq4_xs(const float *x, const float *importance, uint8_t *out, int64_t rows, int64_t cols) {
    return iq4_encode(iq4_xs_block, IQ4_XS_SUBS * IQ4_SUB, IQ4_XS_BYTES, x, importance, out, rows, cols);
}
