/* The "qx" scale searches shared by mtk's Q3_K, Q6_K and importance-weighted Q4_0 / Q5_0 encoders.
 *
 * Both searches fit one symmetric scale d to a group of n values so that x ~ d * l with integer levels
 * l in [-nmax, nmax - 1], and return d together with the stored levels L = l + nmax:
 *
 *   qx_search  (ggml's make_qx_quants, rmse_type 1): start from d = -max / nmax (max: the value of largest
 *              magnitude), then try the 18 nearby divisors nmax + 0.1 k (k = -9..9, k != 0) and keep the
 *              one with the best weighted least-squares fit sum(w x l)^2 / sum(w l^2).
 *   q3_search  (ggml's make_q3_quants with do_rmse): the first guess above, then up to five passes of
 *              coordinate descent over the levels, weighted by x^2.
 *
 * The tries of qx_search do not depend on each other, so the sums of all of them are computed together,
 * one try to a vector lane (qx_simd.h). Each lane still adds its terms in ggml's order (element 0 first)
 * and forms each product in ggml's association, so every sum, and therefore every decision, is ggml's bit
 * for bit. Only the choice between the tries, sequential in ggml (a try must beat the best so far), runs
 * afterwards, in ggml's order. q3_search's passes are sequential; qx_simd.h computes them speculatively.
 *
 * Inputs are finite: mtk rejects NaN and inf before encoding, and the shortcuts here (the float rounding
 * of qx_level_small, the vector max) match ggml only for finite values.
 */
#ifndef MTK_QX_H
#define MTK_QX_H

#include "mtk_common.h"

#define QX_GROUP_EPS 1e-15f /* ggml's GROUP_MAX_EPS: below this the group is all zero */
#define QX_TRIES 19         /* k = -9..9; lane t holds k = t - 9, the first guess (k = 0) is lane 9 */
#define QX_FIRST 9
#define QX_LANES 24         /* the tries padded to whole 8-float vectors (lanes past them repeat k = 0) */
#define Q3_N 16             /* q3_search works on sub-blocks of 16 */

/* ggml's level rounding: nearest integer by its bit trick, then clamped to [lo, hi]. */
static inline int qx_level(float v, int lo, int hi) { return mtk_clamp(mtk_nearest_int(v), lo, hi); }

/* The same for |v| < 2^22, where adding and removing 1.5 * 2^23 rounds exactly as the bit trick does (to
 * nearest, ties to even), as a float: loops of it vectorise. Used where v = iscale * x cannot exceed
 * nmax + 1 in magnitude (iscale is about nmax / max|x|). */
static inline float qx_level_small(float v, float lo, float hi) {
    float r = (v + 12582912.0f) - 12582912.0f;
    r = r < lo ? lo : r;
    return r > hi ? hi : r;
}

/* sum + x_0^2 + x_1^2 + ..., added left to right as ggml does (for its sigma2). */
static inline float qx_sum_squares(const float *x, int64_t n, float sum) {
    for (int64_t i = 0; i < n; i++) sum += x[i] * x[i];
    return sum;
}

#include "qx_simd.h"

/* make_qx_quants(n, nmax, x, L, 1, w): the scale, and levels + nmax in L. n: a multiple of 4. */
static inline float qx_search(int n, int nmax, const float *restrict x, const float *restrict w,
                              int8_t *restrict L) {
    float amax;
    const float max = qx_signed_max(n, x, &amax);
    if (amax < QX_GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    static const float steps[QX_LANES] = {-9, -8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    float iscale[QX_LANES];
    for (int t = 0; t < QX_LANES; t++) {
        /* -(nmax + 0.1 k) / max; for k = 0 this is exactly ggml's first guess -nmax / max */
        iscale[t] = -((float)nmax + 0.1f * steps[t]) / max;
    }
    float sumlx[QX_LANES], suml2[QX_LANES];
    qx_try_sums(n, nmax, x, w, iscale, sumlx, suml2);
    /* The first guess sets the bar; each try in ggml's order replaces it only if strictly better. */
    float scale = suml2[QX_FIRST] ? sumlx[QX_FIRST] / suml2[QX_FIRST] : 0.0f;
    float best = scale * sumlx[QX_FIRST];
    int pick = QX_FIRST;
    for (int t = 0; t < QX_TRIES; t++) {
        if (t == QX_FIRST) continue;
        if (suml2[t] > 0 && sumlx[t] * sumlx[t] > best * suml2[t]) {
            scale = sumlx[t] / suml2[t];
            best = scale * sumlx[t];
            pick = t;
        }
    }
    const float is = iscale[pick], lo = (float)-nmax, hi = (float)(nmax - 1);
    for (int i = 0; i < n; i++) L[i] = (int8_t)(nmax + (int)qx_level_small(is * x[i], lo, hi));
    return scale;
}

/* make_q3_quants(16, nmax, x, L, true): the scale, and levels + nmax in L. */
static inline float q3_search(int nmax, const float *restrict x, int8_t *restrict L) {
    float amax;
    const float max = qx_signed_max(Q3_N, x, &amax);
    if (amax < QX_GROUP_EPS) {
        memset(L, 0, Q3_N);
        return 0.0f;
    }
    const float iscale = (float)(-nmax) / max;
    float w[Q3_N], wx[Q3_N], l[Q3_N]; /* x^2, x^3 and the levels (small integers, exact as floats) */
    for (int i = 0; i < Q3_N; i++) {
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
        l[i] = qx_level_small(iscale * x[i], (float)-nmax, (float)(nmax - 1));
    }
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < Q3_N; i++) {
        sumlx += wx[i] * l[i];
        suml2 += w[i] * l[i] * l[i];
    }
    /* at most five passes, until one changes nothing */
    for (int pass = 0; pass < 5; pass++) {
        if (!q3_pass(nmax, x, w, wx, l, &sumlx, &suml2)) break;
    }
    for (int i = 0; i < Q3_N; i++) L[i] = (int8_t)((int)l[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

#endif
