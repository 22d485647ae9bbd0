/* Q4_1 and Q5_1 encoders with importance, byte for byte llama.cpp's ggml_quantize_chunk with quant_weights
 * (quantize_row_q{4,5}_1_impl). Without importance mtk's torch encoders are exact and fast (native.py).
 *
 * A block is 32 values decoded as d * q + m.
 * Q4_1 block, 20 bytes: d (f16), m (f16), 16 bytes: byte l holds value l (low nibble) and l+16 (high).
 * Q5_1 block, 24 bytes: d, m, qh (4 bytes, little-endian; bit l is the fifth bit of value l), 16 bytes of
 *     low nibbles as in Q4_1.
 *
 * Each block is one make_qkx3_quants search (qkx_fit) with weights imp * sqrt(sigma2 + x^2), where
 * sigma2 = mean(x^2) over the whole row, summed left to right.
 */
#include "qkx.h"

#define QK 32

/* sigma2 of a row: its sum of squares, left to right, over the row length. */
static float row_sigma2(const float *x, int64_t cols) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < cols; j++) sum_x2 += x[j] * x[j];
    return sum_x2 / (float)cols;
}

/* One block's search; returns the codes in L and writes d and m (the block's first 4 bytes). */
static inline __attribute__((always_inline)) void fit_block(const int nmax, const qkx_plan *plan,
                                                            const float *xb, const float *qw, float sigma2,
                                                            uint8_t *out, uint8_t *L) {
    float weights[QK];
    for (int j = 0; j < QK; j++) weights[j] = qw[j] * sqrtf(sigma2 + xb[j] * xb[j]);
    float min;
    const float d = qkx_fit(QK, nmax, 0, plan, xb, weights, L, &min);
    mtk_store_f16(out, d);
    mtk_store_f16(out + 2, -min);
}

/* Q4_1 (20-byte blocks: d, -min, 16 bytes of nibbles) and Q5_1 (24 bytes: d, -min, 4 bytes of fifth bits,
 * 16 bytes of low nibbles) share everything but nmax and the packing; inlined so nmax stays constant. */
static inline __attribute__((always_inline)) int encode_q4_q5_1(const int nmax, const float *x,
                                                                const float *importance, uint8_t *out,
                                                                int64_t rows, int64_t cols) {
    if (cols % QK) return -1;
    const int64_t nb = cols / QK;
    const int type_bytes = nmax == 15 ? 20 : 24;
    qkx_plan plan;
    qkx_plan_init(&plan, nmax, -0.9f, 0.05f, 36);
    uint8_t L[QK];
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        const float sigma2 = row_sigma2(xr, cols);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *ob = out + (r * nb + b) * type_bytes;
            fit_block(nmax, &plan, xr + b * QK, importance + b * QK, sigma2, ob, L);
            if (nmax == 15) {
                for (int j = 0; j < 16; j++) ob[4 + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
                continue;
            }
            uint32_t qh = 0;
            for (int j = 0; j < 16; j++) {
                ob[8 + j] = (uint8_t)((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4));
                qh |= (uint32_t)(L[j] >> 4) << j;
                qh |= (uint32_t)(L[j + 16] >> 4) << (j + 16);
            }
            for (int k = 0; k < 4; k++) ob[4 + k] = (uint8_t)(qh >> (8 * k));
        }
    }
    return 0;
}

MTK_EXPORT int mtk_encode_q4_1_importance(const float *x, const float *importance, uint8_t *out, int64_t rows,
                                          int64_t cols) {
    return encode_q4_q5_1(15, x, importance, out, rows, cols);
}

MTK_EXPORT int mtk_encode_q5_1_importance(const float *x, const float *importance, uint8_t *out, int64_t rows,
                                          int64_t cols) {
    return encode_q4_q5_1(31, x, importance, out, rows, cols);
}
