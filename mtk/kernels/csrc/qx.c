/* Q3_K and Q6_K encoders, byte for byte ggml's quantize_q3_K / quantize_q6_K (see qx.h for the searches).
 *
 * Both work on super-blocks of 256 values in 16 sub-blocks of 16, each sub-block with its own integer
 * scale, the scales sharing one fp16 d:
 *
 *   Q3_K, 110 bytes: hmask[32] | qs[64] | scales[12] | d (fp16, little endian)
 *       3-bit levels q in 0..7 (value = d * (s - 32) * (q - 4)). Bit 2 of q of value j lives in
 *       hmask[j % 32] bit j / 32; bits 0-1 in qs: within each half of 128 values, qs[32 h + i] holds
 *       values 128 h + i + 32 k at bits 2k. The 6-bit scales s (offset 32): the low nibbles of s0..s7 in
 *       scales[0..7] low halves, of s8..s15 in their high halves, the top two bits of s_j in
 *       scales[8 + j % 4] at bits 2 (j / 4).
 *   Q6_K, 210 bytes: ql[128] | qh[64] | scales[16] (int8) | d (fp16)
 *       6-bit levels q in 0..63 (value = d * s * (q - 32)). Per half h of 128 values and i < 32:
 *       ql[64 h + i] = low nibbles of values i (bits 0-3) and i + 64 (bits 4-7), ql[64 h + 32 + i] those
 *       of i + 32 and i + 96; qh[32 h + i] the top two bits of i, i + 32, i + 64, i + 96 at bits 0, 2, 4, 6.
 *
 * Without importance ggml runs the _ref quantizers (Q3_K: make_q3_quants then 6-bit scales; Q6_K:
 * make_qx_quants weighted by x^2 then 8-bit scales); with importance the _impl ones (Q3_K: weights
 * qw * sqrt(sigma2 + x^2) with sigma2 = 2 sum(x^2) / 256 over the super-block, and a second weighted
 * search for the scales themselves; Q6_K: the raw importance as weights).
 */
#include "qx.h"

#define QK_K 256
#define SUB 16
#define NSUB (QK_K / SUB)
#define Q3_K_BYTES 110
#define Q6_K_BYTES 210

/* Final levels of one sub-block for its stored scale d: ggml keeps the search's levels when d is 0. */
static inline void requantize(const float *restrict x, float d, int lo, int hi, int8_t *restrict L) {
    if (d == 0.0f) return;
    for (int i = 0; i < SUB; i++) L[i] = (int8_t)(qx_level(x[i] / d, lo, hi) - lo);
}

/* Q3_K packing of 256 levels in 0..7, 16 scale codes in 0..63 and the half d. */
static void q3_k_pack(const int8_t *restrict L, const int *restrict codes, uint16_t d, uint8_t *restrict out) {
    uint8_t *hmask = out, *qs = out + 32, *scales = out + 96;
    for (int m = 0; m < 32; m++) {
        const int8_t *v = L + m;
        hmask[m] = (uint8_t)((v[0] > 3) | (v[32] > 3) << 1 | (v[64] > 3) << 2 | (v[96] > 3) << 3 |
                             (v[128] > 3) << 4 | (v[160] > 3) << 5 | (v[192] > 3) << 6 | (v[224] > 3) << 7);
    }
    for (int h = 0; h < QK_K; h += 128) {
        for (int i = 0; i < 32; i++) {
            const int8_t *v = L + h + i;
            qs[h / 4 + i] = (uint8_t)((v[0] & 3) | (v[32] & 3) << 2 | (v[64] & 3) << 4 | (v[96] & 3) << 6);
        }
    }
    memset(scales, 0, 12);
    for (int j = 0; j < NSUB; j++) {
        scales[j % 8] |= (uint8_t)((codes[j] & 0xF) << (j < 8 ? 0 : 4));
        scales[8 + j % 4] |= (uint8_t)((codes[j] >> 4) << (2 * (j / 4)));
    }
    out[108] = (uint8_t)(d & 0xff);
    out[109] = (uint8_t)(d >> 8);
}

/* Plain Q3_K scales (quantize_row_q3_K_ref): make_q3_quants per sub-block, then the 16 scales on a 6-bit
 * grid whose step d puts the largest at -32. Fills L (levels + 4) and codes (scale + 32); returns d. */
static float q3_k_scales_plain(const float *restrict x, int8_t *restrict L, int *restrict codes) {
    float scales[NSUB], amax;
    for (int j = 0; j < NSUB; j++) scales[j] = q3_search(4, x + SUB * j, L + SUB * j);
    const float max_scale = qx_signed_max(NSUB, scales, &amax);
    if (max_scale == 0.0f) {
        for (int j = 0; j < NSUB; j++) codes[j] = 0;
        return 0.0f;
    }
    const float iscale = -32.0f / max_scale;
    for (int j = 0; j < NSUB; j++) {
        int8_t l = (int8_t)mtk_nearest_int(iscale * scales[j]); /* ggml stores it in an int8_t first */
        codes[j] = mtk_clamp(l, -32, 31) + 32;
    }
    return 1.0f / iscale;
}

/* Importance Q3_K scales (quantize_row_q3_K_impl): make_qx_quants per sub-block with weights
 * qw * sqrt(sigma2 + x^2), then make_qx_quants again over the 16 scales, weighted by each sub-block's
 * total weight; sigma2 = 2 sum(x^2) / 256 over the super-block. */
static float q3_k_scales_weighted(const float *restrict x, const float *restrict qw, int8_t *restrict L,
                                  int *restrict codes) {
    const float sigma2 = 2 * qx_sum_squares(x, QK_K, 0.0f) / QK_K;
    float scales[NSUB], sw[NSUB], w[SUB];
    int8_t Ls[NSUB];
    for (int j = 0; j < NSUB; j++) {
        const float *xs = x + SUB * j;
        for (int i = 0; i < SUB; i++) w[i] = qw[SUB * j + i] * sqrtf(sigma2 + xs[i] * xs[i]);
        float sum = 0.0f;
        for (int i = 0; i < SUB; i++) sum += w[i];
        sw[j] = sum;
        scales[j] = qx_search(SUB, 4, xs, w, L + SUB * j);
    }
    const float d = qx_search(NSUB, 32, scales, sw, Ls);
    for (int j = 0; j < NSUB; j++) codes[j] = Ls[j];
    return d;
}

MTK_EXPORT int mtk_encode_q3_k(const float *x, const float *importance, uint8_t *out, int64_t rows, int64_t cols) {
    if (cols % QK_K != 0) return -1;
    const int64_t nb = cols / QK_K;
    for (int64_t k = 0; k < rows * nb; k++) {
        const float *xb = x + k * QK_K;
        int8_t L[QK_K];
        int codes[NSUB];
        const float d = importance ? q3_k_scales_weighted(xb, importance + (k % nb) * QK_K, L, codes)
                                   : q3_k_scales_plain(xb, L, codes);
        /* The final levels from the stored scales (sub-blocks whose scale is 0 keep the search's). */
        const uint16_t dh = mtk_f32_to_f16(d);
        const float dq = mtk_f16_to_f32(dh);
        for (int j = 0; j < NSUB; j++) requantize(xb + SUB * j, dq * (float)(codes[j] - 32), -4, 3, L + SUB * j);
        q3_k_pack(L, codes, dh, out + k * Q3_K_BYTES);
    }
    return 0;
}

/* Q6_K packing of 256 levels in 0..63, 16 int8 scales and the half d. */
static void q6_k_pack(const int8_t *restrict L, const int8_t *restrict scales, uint16_t d, uint8_t *restrict out) {
    uint8_t *ql = out, *qh = out + 128;
    for (int h = 0; h < 2; h++) {
        const int8_t *v = L + 128 * h;
        for (int i = 0; i < 32; i++) {
            ql[64 * h + i] = (uint8_t)((v[i] & 0xF) | (v[i + 64] & 0xF) << 4);
            ql[64 * h + 32 + i] = (uint8_t)((v[i + 32] & 0xF) | (v[i + 96] & 0xF) << 4);
            qh[32 * h + i] =
                (uint8_t)(v[i] >> 4 | (v[i + 32] >> 4) << 2 | (v[i + 64] >> 4) << 4 | (v[i + 96] >> 4) << 6);
        }
    }
    memcpy(out + 192, scales, NSUB);
    out[208] = (uint8_t)(d & 0xff);
    out[209] = (uint8_t)(d >> 8);
}

/* One Q6_K super-block (quantize_row_q6_K_ref, or _impl with importance): make_qx_quants per sub-block,
 * weighted by x^2 or by the raw importance, then the 16 scales as int8 on a grid whose step d puts the
 * largest at -128 (127 at most). */
static void q6_k_block(const float *restrict x, const float *restrict qw, uint8_t *restrict out) {
    int8_t L[QK_K];
    float scales[NSUB], amax;
    for (int j = 0; j < NSUB; j++) {
        const float *xs = x + SUB * j;
        float w[SUB];
        if (!qw) {
            for (int i = 0; i < SUB; i++) w[i] = xs[i] * xs[i];
        }
        scales[j] = qx_search(SUB, 32, xs, qw ? qw + SUB * j : w, L + SUB * j);
    }
    const float max_scale = qx_signed_max(NSUB, scales, &amax);
    if (amax < QX_GROUP_EPS) {
        memset(out, 0, Q6_K_BYTES); /* all levels, scales and d zero */
        return;
    }
    const float iscale = -128.0f / max_scale;
    const uint16_t dh = mtk_f32_to_f16(1.0f / iscale);
    const float dq = mtk_f16_to_f32(dh);
    int8_t qscales[NSUB];
    for (int j = 0; j < NSUB; j++) {
        int s = mtk_nearest_int(iscale * scales[j]);
        qscales[j] = (int8_t)(s < 127 ? s : 127);
    }
    for (int j = 0; j < NSUB; j++) requantize(x + SUB * j, dq * (float)qscales[j], -32, 31, L + SUB * j);
    q6_k_pack(L, qscales, dh, out);
}

MTK_EXPORT int mtk_encode_q6_k(const float *x, const float *importance, uint8_t *out, int64_t rows, int64_t cols) {
    if (cols % QK_K != 0) return -1;
    const int64_t nb = cols / QK_K;
    for (int64_t k = 0; k < rows * nb; k++) {
        q6_k_block(x + k * QK_K, importance ? importance + (k % nb) * QK_K : NULL, out + k * Q6_K_BYTES);
    }
    return 0;
}
