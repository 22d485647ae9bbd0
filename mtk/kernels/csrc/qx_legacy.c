/* Importance-weighted Q4_0 and Q5_0 encoders, byte for byte ggml's quantize_q4_0 / quantize_q5_0 with
 * quant_weights. mtk calls them only with importance (without it ggml just divides by the value of largest
 * magnitude, which mtk's torch encoders do exactly); given NULL they still follow ggml's _ref rounding.
 *
 * Blocks of 32 values, one fp16 scale d each, levels q (value = d * (q - 8) or d * (q - 16)):
 *   Q4_0, 18 bytes: d (fp16, little endian) | qs[16]: value i in the low nibble of qs[i], i + 16 in the high
 *   Q5_0, 22 bytes: d | qh (uint32, little endian): bit 4 of value i at bit i | qs[16]: low nibbles as Q4_0
 *
 * The scale is make_qx_quants (qx.h) with weights qw * sqrt(sigma2 + x^2), sigma2 = sum(x^2) / cols over the
 * whole row, summed left to right. That long sum is one chain of dependent additions; it is computed for
 * the next row piece by piece while the current row's blocks are searched, so the two overlap.
 */
#include "qx.h"

#define QK 32

/* A block's bytes from its 32 levels (0 .. 2 nmax - 1) and its half d. */
typedef void (*qx_pack_fn)(const int8_t *L, uint16_t d, uint8_t *out);

static void pack_q4_0(const int8_t *restrict L, uint16_t d, uint8_t *restrict out) {
    out[0] = (uint8_t)(d & 0xff);
    out[1] = (uint8_t)(d >> 8);
    for (int i = 0; i < 16; i++) out[2 + i] = (uint8_t)(L[i] | L[i + 16] << 4);
}

static void pack_q5_0(const int8_t *restrict L, uint16_t d, uint8_t *restrict out) {
    out[0] = (uint8_t)(d & 0xff);
    out[1] = (uint8_t)(d >> 8);
    uint32_t qh = 0;
    for (int i = 0; i < QK; i++) qh |= (uint32_t)((L[i] >> 4) & 1) << i;
    for (int b = 0; b < 4; b++) out[2 + b] = (uint8_t)(qh >> (8 * b));
    for (int i = 0; i < 16; i++) out[6 + i] = (uint8_t)((L[i] & 0xF) | (L[i + 16] & 0xF) << 4);
}

/* quantize_row_q4_0_ref / q5_0_ref for one block: d = max / -nmax, levels truncated from x / d + nmax + 0.5. */
static float plain_levels(const float *restrict x, int nmax, int8_t *restrict L) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < QK; i++) {
        if (amax < fabsf(x[i])) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    const float d = max / (float)(-nmax);
    const float id = d ? 1.0f / d : 0.0f;
    const float offset = (float)nmax + 0.5f;
    for (int i = 0; i < QK; i++) {
        int8_t l = (int8_t)(int)(x[i] * id + offset); /* ggml converts to int8_t (toward zero) */
        L[i] = (int8_t)(l < 2 * nmax - 1 ? l : 2 * nmax - 1);
    }
    return d;
}

/* Both types: levels in [0, 2 nmax), block_bytes per block of 32 written by pack. */
static inline int encode_rows(const float *x, const float *qw, uint8_t *out, int64_t rows, int64_t cols, int nmax,
                              int block_bytes, qx_pack_fn pack) {
    if (cols % QK != 0) return -1;
    const int64_t nb = cols / QK;
    if (!qw) {
        for (int64_t k = 0; k < rows * nb; k++) {
            int8_t L[QK];
            const float d = plain_levels(x + k * QK, nmax, L);
            pack(L, mtk_f32_to_f16(d), out + k * block_bytes);
        }
        return 0;
    }
    float sum_next = rows > 0 ? qx_sum_squares(x, cols, 0.0f) : 0.0f;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        const float sigma2 = sum_next / (float)cols;
        const float *next = r + 1 < rows ? xr + cols : NULL;
        sum_next = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = xr + b * QK, *wb = qw + b * QK;
            float w[QK];
            int8_t L[QK];
            for (int i = 0; i < QK; i++) w[i] = wb[i] * sqrtf(sigma2 + xb[i] * xb[i]);
            const float d = qx_search(QK, nmax, xb, w, L);
            pack(L, mtk_f32_to_f16(d), out + (r * nb + b) * block_bytes);
            /* The next row's sum of squares, in order, while this row's searches keep the CPU busy. */
            if (next) sum_next = qx_sum_squares(next + b * QK, QK, sum_next);
        }
    }
    return 0;
}

MTK_EXPORT int mtk_encode_q4_0_importance(const float *x, const float *importance, uint8_t *out, int64_t rows,
                                          int64_t cols) {
    return encode_rows(x, importance, out, rows, cols, 8, 18, pack_q4_0);
}

MTK_EXPORT int mtk_encode_q5_0_importance(const float *x, const float *importance, uint8_t *out, int64_t rows,
                                          int64_t cols) {
    return encode_rows(x, importance, out, rows, cols, 16, 22, pack_q5_0);
}
