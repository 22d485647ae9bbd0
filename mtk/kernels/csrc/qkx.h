/* Searches shared by mtk's "qkx" encoders (qkx.c: Q4_K, Q5_K; qkx_q2k.c: Q2_K; qkx_legacy.c: Q4_1, Q5_1).
 *
 * qkx_fit is ggml's scale-and-offset search for one sub-block (make_qkx2_quants without importance,
 * make_qkx3_quants with it; given weights the two do the same float operations): codes l in [0, nmax]
 * such that x ~ scale * l - the_min, minimising a weighted error over a first guess and nstep+1 candidate
 * inverse scales. ggml tries the candidates one after another, each a left-to-right sum over the
 * sub-block, so its run time is the latency of those chains of additions. Here QKX_CHUNK candidates are
 * evaluated side by side, one per vector lane (GCC/Clang vector extensions, no intrinsics): every lane
 * still adds its terms left to right in ggml's order and association, so the sums are ggml's bit for bit.
 * The choice is then made in ggml's order with its strict comparisons (see qkx_fit for what a taken
 * candidate changes for the later ones).
 *
 * qkx_fit_scales is make_qp_quants: the 6- or 4-bit codes of the sub-block scales (or mins) against one
 * super-block scale, under the importance-derived sub-block weights.
 */
#ifndef MTK_QKX_H
#define MTK_QKX_H

#include "mtk_common.h"

#define QKX_MAX_N 32     /* largest sub-block */
#define QKX_CHUNK 4      /* candidates evaluated together, one per lane */
#define QKX_MAX_LANES 48 /* 1 first guess + up to 37 candidates (nstep 36), zero-padded by a chunk */
#define QKX_INLINE static inline __attribute__((always_inline))

typedef float qkx_vf __attribute__((vector_size(4 * QKX_CHUNK)));
typedef int32_t qkx_vi __attribute__((vector_size(4 * QKX_CHUNK)));

static inline qkx_vf qkx_splat(float s) { return (qkx_vf){0} + s; }
/* mask ? a : b, lane-wise, for a comparison mask (all ones or all zeros per lane). */
static inline qkx_vf qkx_select(qkx_vi mask, qkx_vf a, qkx_vf b) {
    return (qkx_vf)(((qkx_vi)a & mask) | ((qkx_vi)b & ~mask));
}

/* One search configuration: ggml's (nmax, rmin, rdelta, nstep) as per-position numerators of the inverse
 * scale, numer[p] / (max - min): position 0 the first guess, position is+1 candidate is. Built once per
 * encode call by qkx_plan_init. */
typedef struct {
    float numer[QKX_MAX_LANES];
    float numer_max; /* bounds every inverse scale of the plan (see qkx_codes_and_sums) */
    int used;        /* positions that take part in the choice: nstep + 2 */
} qkx_plan;

static inline void qkx_plan_init(qkx_plan *plan, int nmax, float rmin, float rdelta, int nstep) {
    memset(plan, 0, sizeof *plan); /* padding positions: inverse scale 0, never chosen */
    plan->numer[0] = (float)nmax;
    /* Rounded as ggml writes it: (rmin + rdelta*is) + nmax. */
    for (int is = 0; is <= nstep; is++) plan->numer[is + 1] = rmin + rdelta * (float)is + (float)nmax;
    plan->used = nstep + 2;
    for (int p = 0; p < plan->used; p++) plan->numer_max = mtk_max(plan->numer_max, plan->numer[p]);
}

/* nearest_int(v) clamped to [0, hi] for any v, ggml's wrap-around beyond 2^22 included. */
static inline int qkx_clamped_int(float v, int hi) { return mtk_clamp(mtk_nearest_int(v), 0, hi); }

/* Adds lane codes l of value i to the sums of w*l, w*l*l and w*l*x (ggml's association: (w*l)*l). */
QKX_INLINE void qkx_accumulate(qkx_vf l, float wi, float xi, qkx_vf *sl, qkx_vf *sl2, qkx_vf *sxl) {
    const qkx_vf wl = l * wi;
    *sl += wl;
    *sl2 += wl * l;
    *sxl += wl * xi;
}

/* Every lane's codes clamp(nearest_int(iscale * (x[i] - m)), 0, nmax), and their sums (left to right from
 * 0, as ggml adds). Above, v <= numer*(1+eps)^2; below, v >= numer_max / range * (lo - m) (rounding is
 * monotonic). When that bound is finite and above -2^22, nearest_int is plain round-half-to-even, done as
 * (v + 1.5*2^23) - 1.5*2^23, and the codes are computed in the same loop as the sums (their work fills
 * the wait on the sums' chains of additions). Otherwise (a minimum far below a range that is tiny or zero:
 * NaN, infinities or ggml's wrap-around) each code goes through ggml's integer trick, lane by lane. */
QKX_INLINE void qkx_codes_and_sums(const int n, const int nmax, const qkx_plan *restrict plan, qkx_vf iscale,
                                   float m, float lo, float range, const float *restrict x,
                                   const float *restrict w, qkx_vf *restrict codes, qkx_vf *sl, qkx_vf *sl2,
                                   qkx_vf *sxl) {
    const float bound = plan->numer_max / range * (lo - m);
    *sl = *sl2 = *sxl = (qkx_vf){0};
    if (bound > -4194304.0f) {
        const qkx_vf magic = qkx_splat(12582912.0f), top = qkx_splat((float)nmax);
        for (int i = 0; i < n; i++) {
            const qkx_vf r = (iscale * (x[i] - m) + magic) - magic;
            const qkx_vf c = (qkx_vf)((qkx_vi)r & (r > 0.0f));
            codes[i] = qkx_select(c < top, c, top);
            qkx_accumulate(codes[i], w[i], x[i], sl, sl2, sxl);
        }
    } else {
        for (int i = 0; i < n; i++) {
            for (int k = 0; k < QKX_CHUNK; k++) codes[i][k] = (float)qkx_clamped_int(iscale[k] * (x[i] - m), nmax);
            qkx_accumulate(codes[i], w[i], x[i], sl, sl2, sxl);
        }
    }
}

/* make_qkx2_quants / make_qkx3_quants on one sub-block of n values with weights w. Writes the codes to
 * L and the offset (a value >= 0 subtracted on decode) to *the_min; returns the scale.
 *
 * ggml walks its candidates in order and, when one is better, takes its scale and also its minimum, which
 * every later candidate then uses (in x - min and in max - min). So candidates are evaluated a chunk at a
 * time against the current minimum m; the chunk is scanned in ggml's order, and when a taken candidate
 * moves the minimum, evaluation restarts right after it. The work thrown away is at most a chunk per
 * taken candidate. n, nmax and use_mad are constants at each call site (the function is inlined). */
QKX_INLINE float qkx_fit(const int n, const int nmax, const int use_mad, const qkx_plan *restrict plan,
                         const float *restrict x, const float *restrict w, uint8_t *restrict L,
                         float *restrict the_min) {
    float lo = x[0], hi = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *the_min = -lo;
        return 0.0f;
    }
    float m = lo, best = 0, best_scale = 0;
    qkx_vf codes[QKX_MAX_N];
    int p = 0;
    while (p < plan->used) {
        const float range = hi - m;
        qkx_vf numer;
        memcpy(&numer, plan->numer + p, sizeof numer);
        const qkx_vf iscale = numer / range;
        qkx_vf sl, sl2, sxl;
        qkx_codes_and_sums(n, nmax, plan, iscale, m, lo, range, x, w, codes, &sl, &sl2, &sxl);
        /* ggml's weighted least-squares scale and offset, the offset capped at 0. A lane whose
         * determinant is not positive is never taken; its values are computed and ignored. */
        const qkx_vf det = sum_w * sl2 - sl * sl;
        const qkx_vf fit_scale = (sum_w * sxl - sum_x * sl) / det;
        const qkx_vf fit_offset = (sl2 * sum_x - sl * sxl) / det;
        const qkx_vi positive = fit_offset > 0.0f;
        qkx_vf scale = qkx_select(positive, sxl / sl2, fit_scale);
        qkx_vf offset = (qkx_vf)((qkx_vi)fit_offset & ~positive);
        qkx_vi ok = det > 0.0f;
        if (p == 0) { /* the first guess: scale 1/iscale, offset the block minimum, always taken */
            scale[0] = 1.0f / iscale[0];
            offset[0] = m;
            ok[0] = -1;
        }
        /* Weighted error: |diff| (use_mad) or diff^2, diff = (scale*l + offset) - x. */
        qkx_vf err = {0};
        for (int i = 0; i < n; i++) {
            qkx_vf diff = scale * codes[i] + offset - x[i];
            diff = use_mad ? (qkx_vf)((qkx_vi)diff & 0x7fffffff) : diff * diff;
            err += diff * w[i];
        }

        int next = p + QKX_CHUNK;
        for (int k = 0; k < QKX_CHUNK && p + k < plan->used; k++) {
            if (p + k != 0 && !(ok[k] && err[k] < best)) continue;
            best = err[k];
            best_scale = scale[k];
            for (int i = 0; i < n; i++) L[i] = (uint8_t)codes[i][k];
            /* Later candidates see the new minimum: if it moved, evaluate them again (a change of sign
             * of zero alone changes no code, but it is kept for the sign of the stored offset). */
            const int moved = offset[k] != m;
            m = offset[k];
            if (moved) {
                next = p + k + 1;
                break;
            }
        }
        p = next;
    }
    *the_min = -m;
    return best_scale;
}

/* make_qp_quants: codes L in [0, nmax] (through uint8, as ggml stores them) for n non-negative values x
 * under weights w, x ~ d * L; returns d. A first guess and 8 nearby inverse scales are scored by weighted
 * squared error, then up to 5 passes of coordinate descent move single codes while that improves the
 * weighted least-squares fit. Small (n = 8 or 16, once per super-block), so plain scalar code. */
static inline float qkx_fit_scales(int n, int nmax, const float *restrict x, uint8_t *restrict L,
                                   const float *restrict w) {
    float max = 0;
    for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
    if (max < 1e-15f) { /* ggml's GROUP_MAX_EPS: all zero */
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)nmax / max;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)mtk_nearest_int(iscale * x[i]);
    float scale = 1.0f / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        const float diff = x[i] - scale * (float)L[i];
        best += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        const float try_iscale = (0.1f * (float)is + (float)nmax) / max;
        const float try_scale = 1.0f / try_iscale;
        float err = 0;
        for (int i = 0; i < n; i++) {
            int l = mtk_nearest_int(try_iscale * x[i]);
            l = l < nmax ? l : nmax;
            const float diff = x[i] - try_scale * (float)l;
            err += w[i] * diff * diff;
        }
        if (err < best) {
            best = err;
            iscale = try_iscale;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = mtk_nearest_int(iscale * x[i]);
        l = l < nmax ? l : nmax;
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * (float)l;
        suml2 += w[i] * (float)l * (float)l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float wi = w[i], li = (float)L[i];
            float slx = sumlx - wi * x[i] * li;
            float sl2 = suml2 - wi * li * li;
            if (slx > 0 && sl2 > 0) {
                int l = mtk_nearest_int(x[i] * sl2 / slx);
                l = l < nmax ? l : nmax;
                if (l != L[i]) {
                    slx += wi * x[i] * (float)l;
                    sl2 += wi * (float)l * (float)l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Q4_K / Q5_K: 8 scales and 8 mins of 6 bits in 12 bytes. Sub-blocks 0-3: low 6 bits of bytes 0-3
 * (scales) and 4-7 (mins); sub-blocks 4-7: low nibbles in bytes 8-11 (scale low, min high) and their top
 * two bits in bits 6-7 of bytes 0-3 (scales) and 4-7 (mins). Takes the codes as ggml holds them (uint8,
 * unmasked where ggml leaves them unmasked). */
static inline void qkx_pack_scales6(const uint8_t *ls, const uint8_t *lm, uint8_t *out) {
    for (int j = 0; j < 4; j++) {
        out[j] = ls[j];
        out[j + 4] = lm[j];
    }
    for (int j = 4; j < 8; j++) {
        out[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
        out[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
        out[j] |= (uint8_t)((lm[j] >> 4) << 6);
    }
}

/* The scale and min codes of sub-block j read back from the 12 packed bytes (as the decoder reads them). */
static inline void qkx_unpack_scale6(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

#endif
