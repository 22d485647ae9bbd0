/* Q2_K encoder, with and without importance, byte for byte llama.cpp's ggml_quantize_chunk
 * (quantize_row_q2_K_ref without importance, quantize_row_q2_K_impl with it).
 *
 * A super-block is 256 values in 16 sub-blocks of 16, each decoded as d*(s_j & 15) * q - dmin*(s_j >> 4).
 * Block, 84 bytes: 16 scale bytes s_j (scale code low nibble, min code high nibble), 64 bytes of 2-bit
 * codes (byte 32*h + l holds value 128*h + 32*k + l in bits 2k..2k+1, k = 0..3), d (f16), dmin (f16).
 *
 * Without importance each sub-block is fitted by make_qkx2_quants minimising |error| weighted by |x|, and
 * the scales and mins are coded in 4 bits against their maxima. With importance, make_qkx3_quants with
 * weights imp * sqrt(sigma2 + x^2) (sigma2 = mean(x^2) over the super-block) and make_qp_quants for the
 * 4-bit codes. Every value is then re-coded against the scales as they decode.
 */
#include "qkx.h"

#define QK_K 256
#define SUB 16
#define NSUB (QK_K / SUB)
#define Q2K_BYTES 84

/* Plain: fills the 16 scale bytes and the d, dmin halves of block y; L gets the search's codes. */
static void superblock_plain(const qkx_plan *plan, const float *x, uint8_t *y, uint8_t *L) {
    float scales[NSUB], mins[NSUB], weights[SUB];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < NSUB; j++) {
        const float *xs = x + SUB * j;
        for (int l = 0; l < SUB; l++) weights[l] = fabsf(xs[l]);
        scales[j] = qkx_fit(SUB, 3, 1, plan, xs, weights, L + SUB * j, &mins[j]);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    uint8_t *sb = y;
    if (max_scale > 0) {
        const float iscale = 15.0f / max_scale;
        for (int j = 0; j < NSUB; j++) sb[j] = (uint8_t)mtk_nearest_int(iscale * scales[j]);
        mtk_store_f16(y + 80, max_scale / 15.0f);
    } else {
        memset(sb, 0, NSUB);
        mtk_store_f16(y + 80, 0.0f);
    }
    if (max_min > 0) {
        const float iscale = 15.0f / max_min;
        for (int j = 0; j < NSUB; j++) sb[j] |= (uint8_t)((unsigned)mtk_nearest_int(iscale * mins[j]) << 4);
        mtk_store_f16(y + 82, max_min / 15.0f);
    } else {
        mtk_store_f16(y + 82, 0.0f);
    }
}

/* Importance: as above with make_qkx3_quants and make_qp_quants. */
static void superblock_importance(const qkx_plan *plan, const float *x, const float *imp, uint8_t *y,
                                  uint8_t *L) {
    float scales[NSUB], mins[NSUB], sw[NSUB], weights[SUB];
    float sum_x2 = 0;
    for (int l = 0; l < QK_K; l++) sum_x2 += x[l] * x[l];
    const float sigma2 = sum_x2 / QK_K;
    for (int j = 0; j < NSUB; j++) {
        const float *xs = x + SUB * j, *qw = imp + SUB * j;
        for (int l = 0; l < SUB; l++) weights[l] = qw[l] * sqrtf(sigma2 + xs[l] * xs[l]);
        float sumw = 0;
        for (int l = 0; l < SUB; l++) sumw += weights[l];
        sw[j] = sumw;
        scales[j] = qkx_fit(SUB, 3, 0, plan, xs, weights, L + SUB * j, &mins[j]);
    }
    uint8_t ls[NSUB], lm[NSUB];
    const float dm = qkx_fit_scales(NSUB, 15, scales, ls, sw);
    const float mm = qkx_fit_scales(NSUB, 15, mins, lm, sw);
    mtk_store_f16(y + 80, dm);
    mtk_store_f16(y + 82, mm);
    for (int j = 0; j < NSUB; j++) y[j] = (uint8_t)(ls[j] | (lm[j] << 4));
}

/* Re-code against the stored scales; a sub-block whose scale decodes to 0 keeps the search's codes. */
static void recode(const float *x, const uint8_t *y, uint8_t *L) {
    uint16_t hd, hm;
    memcpy(&hd, y + 80, 2);
    memcpy(&hm, y + 82, 2);
    const float d_all = mtk_f16_to_f32(hd), m_all = mtk_f16_to_f32(hm);
    for (int j = 0; j < NSUB; j++) {
        const float d = d_all * (float)(y[j] & 0xF);
        if (!d) continue;
        const float m = m_all * (float)(y[j] >> 4);
        for (int l = 0; l < SUB; l++) L[SUB * j + l] = (uint8_t)qkx_clamped_int((x[SUB * j + l] + m) / d, 3);
    }
}

static void pack_codes(const uint8_t *L, uint8_t *qs) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *c = L + 128 * h;
        for (int l = 0; l < 32; l++)
            qs[32 * h + l] = (uint8_t)(c[l] | (c[l + 32] << 2) | (c[l + 64] << 4) | (c[l + 96] << 6));
    }
}

MTK_EXPORT int mtk_encode_q2_k(const float *x, const float *importance, uint8_t *out, int64_t rows, int64_t cols) {
    if (cols % QK_K) return -1;
    const int64_t nb = cols / QK_K;
    qkx_plan plan;
    if (importance)
        qkx_plan_init(&plan, 3, -0.9f, 0.05f, 36);
    else
        qkx_plan_init(&plan, 3, -0.5f, 0.1f, 15);
    uint8_t L[QK_K];
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + r * cols + b * QK_K;
            uint8_t *ob = out + (r * nb + b) * Q2K_BYTES;
            if (importance)
                superblock_importance(&plan, xb, importance + b * QK_K, ob, L);
            else
                superblock_plain(&plan, xb, ob, L);
            recode(xb, ob, L);
            pack_codes(L, ob + 16);
        }
    }
    return 0;
}
