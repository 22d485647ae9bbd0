/* The inner loops of the qx searches (qx.h), in SSE / AVX on x86 and as plain C elsewhere (or anywhere
 * with -DMTK_PORTABLE, which is how the portable loops are tested on x86).
 *
 *   qx_signed_max  the value of largest magnitude and that magnitude (n a multiple of 4)
 *   qx_try_sums    the two least-squares sums of every scale try of make_qx_quants
 *   q3_pass        one pass of make_q3_quants' coordinate descent over 16 values
 *
 * Vector lanes here never mix values that ggml keeps apart: each lane performs ggml's IEEE operations on
 * its own data in ggml's order (no horizontal sums, no reassociation, no fused multiply-add), so every
 * result is the float ggml computes; the one horizontal operation, a max, is order-free. Inputs are
 * finite (mtk's callers reject others). Included by qx.h only.
 */
#ifndef MTK_QX_SIMD_H
#define MTK_QX_SIMD_H

#if defined(__SSE2__) && !defined(MTK_PORTABLE)
#include <immintrin.h>

/* Largest magnitude first: max_ps(a, b) keeps b when a is NaN, so NaNs are skipped as ggml's `>` skips
 * them; then the first element of that magnitude, as ggml's strict `>` keeps the first one. */
static inline float qx_signed_max(int n, const float *x, float *amax_out) {
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    __m128 m = _mm_setzero_ps();
    for (int i = 0; i < n; i += 4) m = _mm_max_ps(_mm_and_ps(_mm_loadu_ps(x + i), abs_mask), m);
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    const float amax = _mm_cvtss_f32(m);
    *amax_out = amax;
    if (amax == 0.0f) return 0.0f; /* ggml's max stays 0 */
    for (int i = 0; i < n; i += 4) {
        int hit = _mm_movemask_ps(_mm_cmpeq_ps(_mm_and_ps(_mm_loadu_ps(x + i), abs_mask), m));
        if (hit) return x[i + __builtin_ctz((unsigned)hit)];
    }
    return 0.0f; /* not reached */
}

/* The tries four to an SSE register. The level of a try is round(iscale x) clamped, rounded by adding and
 * removing 1.5 * 2^23: exactly ggml's nearest_int here, since |iscale x| <= nmax + 1 is far below 2^22. */
static inline void qx_try_sums_sse(int n, int nmax, const float *restrict x, const float *restrict w,
                                   const float *restrict iscale, float *restrict sumlx, float *restrict suml2) {
    enum { V = (QX_TRIES + 3) / 4 };
    const __m128 magic = _mm_set1_ps(12582912.0f);
    const __m128 lo = _mm_set1_ps((float)-nmax), hi = _mm_set1_ps((float)(nmax - 1));
    __m128 is[V], sx[V], s2[V];
    for (int v = 0; v < V; v++) {
        is[v] = _mm_loadu_ps(iscale + 4 * v);
        sx[v] = s2[v] = _mm_setzero_ps();
    }
    for (int i = 0; i < n; i++) {
        const __m128 xi = _mm_set1_ps(x[i]), wi = _mm_set1_ps(w[i]), wx = _mm_set1_ps(w[i] * x[i]);
        for (int v = 0; v < V; v++) {
            __m128 l = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(is[v], xi), magic), magic);
            l = _mm_min_ps(_mm_max_ps(l, lo), hi);
            sx[v] = _mm_add_ps(sx[v], _mm_mul_ps(wx, l));
            s2[v] = _mm_add_ps(s2[v], _mm_mul_ps(_mm_mul_ps(wi, l), l));
        }
    }
    for (int v = 0; v < V; v++) {
        _mm_storeu_ps(sumlx + 4 * v, sx[v]);
        _mm_storeu_ps(suml2 + 4 * v, s2[v]);
    }
}

/* The same, eight tries to an AVX register: 3 registers for the 19 tries instead of 5. */
__attribute__((target("avx"))) static void qx_try_sums_avx(int n, int nmax, const float *restrict x,
                                                           const float *restrict w, const float *restrict iscale,
                                                           float *restrict sumlx, float *restrict suml2) {
    enum { V = (QX_TRIES + 7) / 8 };
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256 lo = _mm256_set1_ps((float)-nmax), hi = _mm256_set1_ps((float)(nmax - 1));
    __m256 is[V], sx[V], s2[V];
    for (int v = 0; v < V; v++) {
        is[v] = _mm256_loadu_ps(iscale + 8 * v);
        sx[v] = s2[v] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n; i++) {
        const __m256 xi = _mm256_set1_ps(x[i]), wi = _mm256_set1_ps(w[i]), wx = _mm256_set1_ps(w[i] * x[i]);
        for (int v = 0; v < V; v++) {
            __m256 l = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(is[v], xi), magic), magic);
            l = _mm256_min_ps(_mm256_max_ps(l, lo), hi);
            sx[v] = _mm256_add_ps(sx[v], _mm256_mul_ps(wx, l));
            s2[v] = _mm256_add_ps(s2[v], _mm256_mul_ps(_mm256_mul_ps(wi, l), l));
        }
    }
    for (int v = 0; v < V; v++) {
        _mm256_storeu_ps(sumlx + 8 * v, sx[v]);
        _mm256_storeu_ps(suml2 + 8 * v, s2[v]);
    }
}

/* The library is built for baseline x86-64 (SSE2); AVX is used where the CPU and OS have it (MTK_CPU_HAS). */
static inline void qx_try_sums(int n, int nmax, const float *restrict x, const float *restrict w,
                               const float *restrict iscale, float *restrict sumlx, float *restrict suml2) {
    if (MTK_CPU_HAS("avx"))
        qx_try_sums_avx(n, nmax, x, w, iscale, sumlx, suml2);
    else
        qx_try_sums_sse(n, nmax, x, w, iscale, sumlx, suml2);
}

/* The candidate level of each of the 16 elements given the current sums (ggml's operations, four elements
 * to a register) into cand, and the mask of elements whose slx is positive and whose candidate differs
 * from their level: the only ones where ggml's pass can change anything. The quotient can be any size
 * (slx may be tiny), so the rounding is ggml's nearest_int bit for bit: the low 23 bits of q + 1.5 * 2^23,
 * less 2^22 (formed in float, exactly), then clamped. */
static inline unsigned q3_candidates(int nmax, const float *x, const float *w, const float *wx, const float *l,
                                     float sumlx, float suml2, float *cand) {
    const __m128 magic = _mm_set1_ps(12582912.0f), low23 = _mm_castsi128_ps(_mm_set1_epi32(0x007fffff));
    const __m128 bias = _mm_set1_ps(4194304.0f), zero = _mm_setzero_ps();
    const __m128 lo = _mm_set1_ps((float)-nmax), hi = _mm_set1_ps((float)(nmax - 1));
    const __m128 sx = _mm_set1_ps(sumlx), s2 = _mm_set1_ps(suml2);
    unsigned need = 0;
    for (int v = 0; v < Q3_N / 4; v++) {
        const __m128 lv = _mm_loadu_ps(l + 4 * v), wv = _mm_loadu_ps(w + 4 * v);
        const __m128 slx = _mm_sub_ps(sx, _mm_mul_ps(_mm_loadu_ps(wx + 4 * v), lv));
        const __m128 sl2 = _mm_sub_ps(s2, _mm_mul_ps(_mm_mul_ps(wv, lv), lv));
        const __m128 q = _mm_div_ps(_mm_mul_ps(_mm_loadu_ps(x + 4 * v), sl2), slx);
        const __m128 bits = _mm_and_ps(_mm_add_ps(q, magic), low23);
        __m128 c = _mm_sub_ps(_mm_cvtepi32_ps(_mm_castps_si128(bits)), bias);
        c = _mm_min_ps(_mm_max_ps(c, lo), hi);
        _mm_storeu_ps(cand + 4 * v, c);
        const __m128 moves = _mm_and_ps(_mm_cmpgt_ps(slx, zero), _mm_cmpneq_ps(c, lv));
        need |= (unsigned)_mm_movemask_ps(moves) << (4 * v);
    }
    return need;
}

/* A pass computed speculatively: all candidates at once, then only the elements that would move are
 * visited, in order, for ggml's acceptance test. An accepted move changes the sums, so the candidates of
 * the elements after it are computed again; a rejected one changes nothing. Most elements keep their
 * level, so a pass costs a vector sweep or two instead of 16 dependent divisions and branches. */
static inline int q3_pass(int nmax, const float *x, const float *w, const float *wx, float *l, float *sumlx,
                          float *suml2) {
    float cand[Q3_N];
    unsigned need = q3_candidates(nmax, x, w, wx, l, *sumlx, *suml2, cand);
    int changed = 0;
    while (need) {
        const int i = __builtin_ctz(need);
        need &= need - 1;
        float slx = *sumlx - wx[i] * l[i], sl2 = *suml2 - w[i] * l[i] * l[i];
        slx += wx[i] * cand[i];
        sl2 += w[i] * cand[i] * cand[i];
        if (sl2 > 0 && slx * slx * *suml2 > *sumlx * *sumlx * sl2) {
            l[i] = cand[i];
            *sumlx = slx;
            *suml2 = sl2;
            changed++;
            need = q3_candidates(nmax, x, w, wx, l, *sumlx, *suml2, cand) & ~((2u << i) - 1u);
        }
    }
    return changed;
}

#else /* portable C */

static inline float qx_signed_max(int n, const float *x, float *amax_out) {
    return mtk_signed_peak(n, x, amax_out);
}

/* Rounding by adding and removing 1.5 * 2^23 equals ggml's nearest_int for |v| < 2^22 (|iscale x| stays
 * below nmax + 1) and, unlike the integer trick, leaves a loop the compiler can vectorise. */
static inline void qx_try_sums(int n, int nmax, const float *restrict x, const float *restrict w,
                               const float *restrict iscale, float *restrict sumlx, float *restrict suml2) {
    const float lo = (float)-nmax, hi = (float)(nmax - 1);
    for (int t = 0; t < QX_TRIES; t++) sumlx[t] = suml2[t] = 0.0f;
    for (int i = 0; i < n; i++) {
        const float xi = x[i], wi = w[i], wx = wi * xi;
        for (int t = 0; t < QX_TRIES; t++) {
            float l = (iscale[t] * xi + 12582912.0f) - 12582912.0f;
            l = l < lo ? lo : (l > hi ? hi : l);
            sumlx[t] += wx * l;
            suml2[t] += wi * l * l;
        }
    }
}

/* Move each level in turn to its best value given all the others (their sums are the totals less this
 * element's terms) and keep the move if the fit sum(w x l)^2 / sum(w l^2) improves. */
static inline int q3_pass(int nmax, const float *x, const float *w, const float *wx, float *l, float *sumlx,
                          float *suml2) {
    int changed = 0;
    for (int i = 0; i < Q3_N; i++) {
        float slx = *sumlx - wx[i] * l[i];
        if (!(slx > 0)) continue;
        float sl2 = *suml2 - w[i] * l[i] * l[i];
        const float cand = (float)qx_level(x[i] * sl2 / slx, -nmax, nmax - 1);
        if (cand == l[i]) continue;
        slx += wx[i] * cand;
        sl2 += w[i] * cand * cand;
        if (sl2 > 0 && slx * slx * *suml2 > *sumlx * *sumlx * sl2) {
            l[i] = cand;
            *sumlx = slx;
            *suml2 = sl2;
            changed++;
        }
    }
    return changed;
}

#endif
#endif
