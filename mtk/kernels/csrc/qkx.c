/* Q4_K and Q5_K encoders, with and without importance, byte for byte llama.cpp's ggml_quantize_chunk
 * (quantize_row_q{4,5}_K_ref without importance, quantize_row_q{4,5}_K_impl with it).
 *
 * A super-block is 256 values in 8 sub-blocks of 32, each decoded as d*sc_j * q - dmin*m_j.
 * Q4_K block, 144 bytes: d (f16), dmin (f16), 12 bytes of 6-bit sc/m codes (see qkx_pack_scales6),
 *     128 bytes of 4-bit codes: byte 32*g + l holds sub-block 2g value l (low nibble) and 2g+1 value l (high).
 * Q5_K block, 176 bytes: d, dmin, 12 scale bytes, 32 bytes qh, 128 bytes of low nibbles as in Q4_K;
 *     bit 2g (2g+1) of qh[l] is the fifth bit of sub-block 2g (2g+1) value l.
 *
 * Per sub-block, qkx_fit finds scale and offset (ggml's make_qkx2_quants without importance, with weights
 * av_x + |x|; make_qkx3_quants with importance, weights imp * sqrt(sigma2 + x^2)). The 8 scales and 8
 * offsets are then coded in 6 bits against a super-block d and dmin (max/63 without importance,
 * make_qp_quants with it), and every value is re-coded against the scales as they will decode.
 */
#include "qkx.h"

#define QK_K 256
#define SUB 32
#define NSUB (QK_K / SUB)

/* The 6-bit scale codes of the plain path: nearest to 63 * v / max, capped at 63 (through uint8 as ggml). */
static inline uint8_t code6(float inv, float v) {
    uint8_t c = (uint8_t)mtk_nearest_int(inv * v);
    return c < 63 ? c : 63;
}

/* Plain path: per sub-block search, then scales and mins against their maxima. Fills the 4-byte header
 * (d, dmin) and 12 scale bytes at out, and L (codes before the final re-code). */
static inline __attribute__((always_inline)) void superblock_plain(const int nmax, const qkx_plan *plan,
                                                                    const float *x, uint8_t *out, uint8_t *L) {
    float scales[NSUB], mins[NSUB], weights[SUB];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < NSUB; j++) {
        const float *xs = x + SUB * j;
        float sum_x2 = 0;
        for (int l = 0; l < SUB; l++) sum_x2 += xs[l] * xs[l];
        const float av_x = sqrtf(sum_x2 / SUB);
        for (int l = 0; l < SUB; l++) weights[l] = av_x + fabsf(xs[l]);
        scales[j] = qkx_fit(SUB, nmax, 0, plan, xs, weights, L + SUB * j, &mins[j]);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t ls[NSUB], lm[NSUB];
    for (int j = 0; j < NSUB; j++) {
        ls[j] = code6(inv_scale, scales[j]);
        lm[j] = code6(inv_min, mins[j]);
    }
    qkx_pack_scales6(ls, lm, out + 4);
    mtk_store_f16(out, max_scale / 63.0f);
    mtk_store_f16(out + 2, max_min / 63.0f);
}

/* Importance path: weights imp * sqrt(sigma2 + x^2) with sigma2 = 2 * mean(x^2) over the super-block, then
 * make_qp_quants for the scale and min codes under the sub-blocks' summed weights. Q5_K caps the codes at
 * 63 before packing and Q4_K does not (they never exceed 63 unless a scale came out negative). */
static inline __attribute__((always_inline)) void superblock_importance(const int nmax, const int cap,
                                                                         const qkx_plan *plan, const float *x,
                                                                         const float *imp, uint8_t *out,
                                                                         uint8_t *L) {
    float scales[NSUB], mins[NSUB], sw[NSUB], weights[SUB];
    float sum_x2 = 0;
    for (int l = 0; l < QK_K; l++) sum_x2 += x[l] * x[l];
    const float sigma2 = 2 * sum_x2 / QK_K;
    for (int j = 0; j < NSUB; j++) {
        const float *xs = x + SUB * j, *qw = imp + SUB * j;
        for (int l = 0; l < SUB; l++) weights[l] = qw[l] * sqrtf(sigma2 + xs[l] * xs[l]);
        float sumw = 0;
        for (int l = 0; l < SUB; l++) sumw += weights[l];
        sw[j] = sumw;
        scales[j] = qkx_fit(SUB, nmax, 0, plan, xs, weights, L + SUB * j, &mins[j]);
    }
    uint8_t ls[NSUB], lm[NSUB];
    const float d_block = qkx_fit_scales(NSUB, 63, scales, ls, sw);
    const float m_block = qkx_fit_scales(NSUB, 63, mins, lm, sw);
    if (cap) {
        for (int j = 0; j < NSUB; j++) {
            ls[j] = ls[j] < 63 ? ls[j] : 63;
            lm[j] = lm[j] < 63 ? lm[j] : 63;
        }
    }
    qkx_pack_scales6(ls, lm, out + 4);
    mtk_store_f16(out, d_block);
    mtk_store_f16(out + 2, m_block);
}

/* Re-code every value against the sub-block scale and min as stored (f16 d, dmin times the 6-bit codes);
 * a sub-block whose scale decodes to 0 keeps the search's codes. */
static inline void recode(const int nmax, const float *x, const uint8_t *head, uint8_t *L) {
    uint16_t hd, hm;
    memcpy(&hd, head, 2);
    memcpy(&hm, head + 2, 2);
    const float d_all = mtk_f16_to_f32(hd), m_all = mtk_f16_to_f32(hm);
    for (int j = 0; j < NSUB; j++) {
        int sc, m;
        qkx_unpack_scale6(j, head + 4, &sc, &m);
        const float d = d_all * (float)sc;
        if (!d) continue;
        const float dm = m_all * (float)m;
        for (int l = 0; l < SUB; l++) L[SUB * j + l] = (uint8_t)qkx_clamped_int((x[SUB * j + l] + dm) / d, nmax);
    }
}

static void pack_q4(const uint8_t *L, uint8_t *qs) {
    for (int g = 0; g < NSUB / 2; g++)
        for (int l = 0; l < SUB; l++) qs[SUB * g + l] = (uint8_t)(L[64 * g + l] | (L[64 * g + SUB + l] << 4));
}

static void pack_q5(const uint8_t *L, uint8_t *qh, uint8_t *qs) {
    memset(qh, 0, SUB);
    for (int g = 0; g < NSUB / 2; g++) {
        for (int l = 0; l < SUB; l++) {
            const int lo = L[64 * g + l], hi = L[64 * g + SUB + l];
            qs[SUB * g + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
            qh[l] |= (uint8_t)(((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1)));
        }
    }
}

#define Q4K_BYTES 144
#define Q5K_BYTES 176

/* Q4_K and Q5_K differ in nmax, the plain search's candidate grid, whether the importance path caps the
 * scale codes at 63 (see superblock_importance) and how the codes are packed. Inlined into each exported
 * function so that nmax stays a compile-time constant in the searches. */
static inline __attribute__((always_inline)) int encode_q4_q5(const int nmax, const float plain_rmin,
                                                              const int plain_nstep, const float *x,
                                                              const float *importance, uint8_t *out, int64_t rows,
                                                              int64_t cols) {
    if (cols % QK_K) return -1;
    const int64_t nb = cols / QK_K;
    const int type_bytes = nmax == 15 ? Q4K_BYTES : Q5K_BYTES;
    qkx_plan plan;
    if (importance)
        qkx_plan_init(&plan, nmax, -0.9f, 0.05f, 36);
    else
        qkx_plan_init(&plan, nmax, plain_rmin, 0.1f, plain_nstep);
    uint8_t L[QK_K];
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + r * cols + b * QK_K;
            uint8_t *ob = out + (r * nb + b) * type_bytes;
            if (importance)
                superblock_importance(nmax, nmax == 31, &plan, xb, importance + b * QK_K, ob, L);
            else
                superblock_plain(nmax, &plan, xb, ob, L);
            recode(nmax, xb, ob, L);
            if (nmax == 15)
                pack_q4(L, ob + 16);
            else
                pack_q5(L, ob + 16, ob + 48);
        }
    }
    return 0;
}

MTK_EXPORT int mtk_encode_q4_k(const float *x, const float *importance, uint8_t *out, int64_t rows, int64_t cols) {
    return encode_q4_q5(15, -1.0f, 20, x, importance, out, rows, cols);
}

MTK_EXPORT int mtk_encode_q5_k(const float *x, const float *importance, uint8_t *out, int64_t rows, int64_t cols) {
    return encode_q4_q5(31, -0.5f, 15, x, importance, out, rows, cols);
}
