"""The slow twin of mtk.kernels.kquants: ggml's K-quant and IQ4 quantizers, one block at a time, in numpy.

Each function mirrors its C counterpart in ggml-quants.c line by line (``quantize_row_q4_K_ref``,
``make_qkx2_quants``, ...), in float32 with one rounding per operation, so it can be read side by side with
the C. Two things differ from the C on purpose, and the fast encoders do the same: sums over a sub-block
fold pairwise (:func:`fold`) where ggml adds left to right, and the per-block weights of the ``_impl``
paths come from the ``importance`` argument. Only for tests: a 256-value block takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mtk.kernels.kquants_search import GROUP_MAX_EPS, IQ4_VALUES

f32 = np.float32
QK_K = 256
BlockFn = Callable[[np.ndarray, np.ndarray | None], bytes]


def fold(v: np.ndarray) -> np.float32:
    """Sum of a float32 vector whose length is a power of two, halving: ``v[:h] + v[h:]`` until one is left."""
    while len(v) > 1:
        h = len(v) // 2
        v = v[:h] + v[h:]
    return v[0]


def nearest_int(v: np.ndarray | np.float32) -> np.ndarray:
    """ggml's nearest_int: the low 23 bits of ``v + 12582912.f`` minus 2**22, as float32."""
    bits = (np.atleast_1d(np.asarray(v, dtype=f32)) + f32(12582912.0)).view(np.int32)
    out = ((bits & 0x007FFFFF) - 0x00400000).astype(f32)
    return out if np.ndim(v) else out[0]


def fp16(v: np.float32) -> np.float32:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v))."""
    return f32(np.float16(v))


def fp16_bytes(v: np.float32) -> bytes:
    return np.float16(v).tobytes()


def make_qkx(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, mad: bool):
    """make_qkx2_quants (and make_qkx3_quants, the same with ``max <= min``): (scale, the_min, L)."""
    lo, hi = x.min(), x.max()
    sum_w, sum_x = fold(w), fold(w * x)
    if lo > 0:
        lo = f32(0)
    if hi == lo:
        return f32(0), -lo, np.zeros(len(x), f32)

    def error(scale, m, l):
        diff = scale * l + m - x
        return fold(w * (np.abs(diff) if mad else diff * diff))

    iscale = f32(nmax) / (hi - lo)
    scale = f32(1) / iscale
    L = np.clip(nearest_int(iscale * (x - lo)), 0, nmax)
    best = error(scale, lo, L)
    for step in range(nstep + 1):
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (hi - lo)
        laux = np.clip(nearest_int(iscale * (x - lo)), 0, nmax)
        sum_l, sum_l2, sum_xl = fold(w * laux), fold(w * laux * laux), fold(w * laux * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = f32(0)
                this_scale = sum_xl / sum_l2
            cur = error(this_scale, this_min, laux)
            if cur < best:
                L, best, scale, lo = laux, cur, this_scale, this_min
    return scale, -lo, L


def _signed_max(x: np.ndarray) -> tuple[np.float32, np.float32]:
    """The C loop ``if (ax > amax) { amax = ax; max = x[i]; }`` from 0: (max, amax)."""
    amax = mx = f32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    return mx, amax


def make_qx(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.float32, np.ndarray]:
    """make_qx_quants with rmse_type 1 and weights ``w``: (scale, L + nmax)."""
    mx, amax = _signed_max(x)
    if amax < GROUP_MAX_EPS:
        return f32(0), np.zeros(len(x), f32)
    iscale = f32(-nmax) / mx
    l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    L = l + nmax
    sumlx, suml2 = fold(w * x * l), fold(w * l * l)
    scale = sumlx / suml2 if suml2 else f32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(f32(nmax) + f32(0.1) * f32(step)) / mx
        l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        sumlx, suml2 = fold(w * x * l), fold(w * l * l)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            L = l + nmax
            scale = sumlx / suml2
            best = scale * sumlx
    return scale, L


def make_q3(x: np.ndarray, nmax: int) -> tuple[np.float32, np.ndarray]:
    """make_q3_quants with do_rmse: (scale, L + nmax)."""
    mx, amax = _signed_max(x)
    if amax < GROUP_MAX_EPS:
        return f32(0), np.zeros(len(x), f32)
    iscale = f32(-nmax) / mx
    L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    w = x * x
    sumlx, suml2 = fold(w * x * L), fold(w * L * L)
    for _ in range(5):
        n_changed = 0
        for i in range(len(x)):
            slx = sumlx - w[i] * x[i] * L[i]
            if slx > 0:
                sl2 = suml2 - w[i] * L[i] * L[i]
                new_l = min(max(nearest_int(x[i] * sl2 / slx), -nmax), nmax - 1)
                if new_l != L[i]:
                    slx += w[i] * x[i] * new_l
                    sl2 += w[i] * new_l * new_l
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i], sumlx, suml2 = new_l, slx, sl2
                        n_changed += 1
        if not n_changed:
            break
    return (sumlx / suml2 if suml2 > 0 else f32(0)), L + nmax


def _u8(v: np.float32) -> np.float32:
    """An int stored in a uint8_t."""
    return f32(int(v) & 0xFF)


def make_qp(x: np.ndarray, qw: np.ndarray, nmax: int) -> tuple[np.float32, np.ndarray]:
    """make_qp_quants: (scale, L) with L held as uint8 values."""
    mx = f32(0)
    for v in x:
        mx = max(mx, v)
    if mx < GROUP_MAX_EPS:
        return f32(0), np.zeros(len(x), f32)
    iscale = f32(nmax) / mx
    L = np.array([_u8(v) for v in nearest_int(iscale * x)], f32)
    scale = f32(1) / iscale
    diff = x - scale * L
    best_mse = fold(qw * diff * diff)
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (f32(0.1) * f32(step) + f32(nmax)) / mx
        scale_is = f32(1) / iscale_is
        l = np.minimum(nearest_int(iscale_is * x), nmax)
        diff = x - scale_is * l
        mse = fold(qw * diff * diff)
        if mse < best_mse:
            best_mse, iscale = mse, iscale_is
    l = np.minimum(nearest_int(iscale * x), nmax)
    L = np.array([_u8(v) for v in l], f32)
    sumlx, suml2 = fold(qw * x * l), fold(qw * l * l)
    for _ in range(5):
        n_changed = 0
        for i in range(len(x)):
            w = qw[i]
            slx = sumlx - w * x[i] * L[i]
            sl2 = suml2 - w * L[i] * L[i]
            if slx > 0 and sl2 > 0:
                new_l = min(nearest_int(x[i] * sl2 / slx), f32(nmax))
                if new_l != L[i]:
                    slx += w * x[i] * new_l
                    sl2 += w * new_l * new_l
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i], sumlx, suml2 = _u8(new_l), slx, sl2
                        n_changed += 1
        if not n_changed:
            break
    return (sumlx / suml2 if suml2 > 0 else f32(0)), L


def best_index_int8(x: np.float32) -> int:
    """ggml's best_index_int8 over IQ4_VALUES (a binary search)."""
    val = [f32(v) for v in IQ4_VALUES]
    if x <= val[0]:
        return 0
    if x >= val[15]:
        return 15
    ml, mu = 0, 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < val[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - val[mu - 1] < val[mu] - x else mu


# --- blocks -------------------------------------------------------------------------------------------------


def _impl_weights(x: np.ndarray, qw: np.ndarray, sigma2: np.float32) -> np.ndarray:
    return qw * np.sqrt(sigma2 + x * x)


def _pack_qs_2bit(L: np.ndarray) -> bytearray:
    qs = bytearray(QK_K // 4)
    for j in range(0, QK_K, 128):
        for l in range(32):
            v = int(L[j + l]) | int(L[j + l + 32]) << 2 | int(L[j + l + 64]) << 4 | int(L[j + l + 96]) << 6
            qs[j // 4 + l] = v & 0xFF
    return qs


def q2_k(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    """quantize_row_q2_K_ref (qw None) / quantize_row_q2_K_impl: 16 scales | 64 qs | d | dmin."""
    L = np.zeros(QK_K, f32)
    scales, mins = np.zeros(16, f32), np.zeros(16, f32)
    sc_bytes = bytearray(16)
    if qw is None:
        for j in range(16):
            xj = x[16 * j : 16 * j + 16]
            scales[j], mins[j], L[16 * j : 16 * j + 16] = make_qkx(xj, np.abs(xj), 3, -0.5, 0.1, 15, True)
        max_scale, max_min = max(f32(0), scales.max()), max(f32(0), mins.max())
        if max_scale > 0:
            iscale = f32(15) / max_scale
            for j in range(16):
                sc_bytes[j] = int(nearest_int(iscale * scales[j])) & 0xFF
        d = max_scale / f32(15) if max_scale > 0 else f32(0)
        if max_min > 0:
            iscale = f32(15) / max_min
            for j in range(16):
                sc_bytes[j] = (sc_bytes[j] | int(nearest_int(iscale * mins[j])) << 4) & 0xFF
        dmin = max_min / f32(15) if max_min > 0 else f32(0)
    else:
        sigma2 = fold(x * x) / f32(QK_K)
        sw = np.zeros(16, f32)
        for j in range(16):
            xj = x[16 * j : 16 * j + 16]
            weight = _impl_weights(xj, qw[16 * j : 16 * j + 16], sigma2)
            sw[j] = fold(weight)
            scales[j], mins[j], L[16 * j : 16 * j + 16] = make_qkx(xj, weight, 3, -0.9, 0.05, 36, False)
        d, ls = make_qp(scales, sw, 15)
        dmin, lm = make_qp(mins, sw, 15)
        for j in range(16):
            sc_bytes[j] = (int(ls[j]) | int(lm[j]) << 4) & 0xFF
    dq, dmq = fp16(d), fp16(dmin)
    for j in range(16):
        dl = dq * f32(sc_bytes[j] & 0xF)
        if not dl:
            continue
        dm = dmq * f32(sc_bytes[j] >> 4)
        L[16 * j : 16 * j + 16] = np.clip(nearest_int((x[16 * j : 16 * j + 16] + dm) / dl), 0, 3)
    return bytes(sc_bytes) + bytes(_pack_qs_2bit(L)) + fp16_bytes(d) + fp16_bytes(dmin)


def q3_k(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    """quantize_row_q3_K_ref / quantize_row_q3_K_impl: 32 hmask | 64 qs | 12 scales | d."""
    L = np.zeros(QK_K, f32)
    scales = np.zeros(16, f32)
    sc = bytearray(12)
    if qw is None:
        for j in range(16):
            scales[j], L[16 * j : 16 * j + 16] = make_q3(x[16 * j : 16 * j + 16].copy(), 4)
        max_scale, _ = _signed_max(scales)
        levels = []
        if max_scale:
            iscale = f32(-32) / max_scale
            for j in range(16):
                l = int(nearest_int(iscale * scales[j]))
                l = (l + 128) % 256 - 128  # stored in an int8_t
                levels.append(max(-32, min(31, l)) + 32)
            d = f32(1) / iscale
        else:
            d = f32(0)
    else:
        sigma2 = f32(2) * fold(x * x) / f32(QK_K)
        sw = np.zeros(16, f32)
        for j in range(16):
            xj = x[16 * j : 16 * j + 16]
            weight = _impl_weights(xj, qw[16 * j : 16 * j + 16], sigma2)
            sw[j] = fold(weight)
            scales[j], L[16 * j : 16 * j + 16] = make_qx(xj, weight, 4)
        d, ls = make_qx(scales, sw, 32)
        levels = [int(v) for v in ls]
    for j, l in enumerate(levels):
        if j < 8:
            sc[j] = l & 0xF
        else:
            sc[j - 8] |= (l & 0xF) << 4
        sc[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
    dq = fp16(d)
    for j in range(16):
        low = sc[j] & 0xF if j < 8 else sc[j - 8] >> 4
        s = (low | ((sc[8 + j % 4] >> (2 * (j // 4))) & 3) << 4) - 32
        dl = dq * f32(s)
        if not dl:
            continue
        L[16 * j : 16 * j + 16] = np.clip(nearest_int(x[16 * j : 16 * j + 16] / dl), -4, 3) + 4
    hmask = bytearray(32)
    for j in range(QK_K):
        if L[j] > 3:
            hmask[j % 32] |= 1 << (j // 32)
            L[j] -= 4
    return bytes(hmask) + bytes(_pack_qs_2bit(L)) + bytes(sc) + fp16_bytes(d)


def _k4_scales(ls: list[int], lm: list[int]) -> bytearray:
    s = bytearray(12)
    for j in range(8):
        if j < 4:
            s[j] = ls[j] & 0xFF
            s[j + 4] = lm[j] & 0xFF
        else:
            s[j + 4] = ((ls[j] & 0xF) | ((lm[j] & 0xF) << 4)) & 0xFF
            s[j - 4] = (s[j - 4] | ((ls[j] >> 4) << 6)) & 0xFF
            s[j] = (s[j] | ((lm[j] >> 4) << 6)) & 0xFF
    return s


def get_scale_min_k4(j: int, q: bytearray) -> tuple[int, int]:
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def _k4(x: np.ndarray, qw: np.ndarray | None, nmax: int, rmin: float, nstep: int) -> tuple[bytes, np.ndarray]:
    """Q4_K/Q5_K (nmax 15/31): d | dmin | 12 scale bytes, and the 256 codes."""
    L = np.zeros(QK_K, f32)
    scales, mins = np.zeros(8, f32), np.zeros(8, f32)
    if qw is None:
        for j in range(8):
            xj = x[32 * j : 32 * j + 32]
            av_x = np.sqrt(fold(xj * xj) / f32(32))
            scales[j], mins[j], L[32 * j : 32 * j + 32] = make_qkx(xj, av_x + np.abs(xj), nmax, rmin, 0.1, nstep, False)
        max_scale, max_min = max(f32(0), scales.max()), max(f32(0), mins.max())
        inv_scale = f32(63) / max_scale if max_scale > 0 else f32(0)
        inv_min = f32(63) / max_min if max_min > 0 else f32(0)
        ls = [min(63, int(nearest_int(inv_scale * scales[j])) & 0xFF) for j in range(8)]
        lm = [min(63, int(nearest_int(inv_min * mins[j])) & 0xFF) for j in range(8)]
        d, dmin = max_scale / f32(63), max_min / f32(63)
    else:
        sigma2 = f32(2) * fold(x * x) / f32(QK_K)
        sw = np.zeros(8, f32)
        for j in range(8):
            xj = x[32 * j : 32 * j + 32]
            weight = _impl_weights(xj, qw[32 * j : 32 * j + 32], sigma2)
            sw[j] = fold(weight)
            scales[j], mins[j], L[32 * j : 32 * j + 32] = make_qkx(xj, weight, nmax, -0.9, 0.05, 36, False)
        d, ls_f = make_qp(scales, sw, 63)
        dmin, lm_f = make_qp(mins, sw, 63)
        ls, lm = [int(v) for v in ls_f], [int(v) for v in lm_f]
        if nmax == 31:
            ls, lm = [min(63, v) for v in ls], [min(63, v) for v in lm]
    s = _k4_scales(ls, lm)
    dq, dmq = fp16(d), fp16(dmin)
    for j in range(8):
        sc, m = get_scale_min_k4(j, s)
        dl = dq * f32(sc)
        if not dl:
            continue
        dm = dmq * f32(m)
        L[32 * j : 32 * j + 32] = np.clip(nearest_int((x[32 * j : 32 * j + 32] + dm) / dl), 0, nmax)
    return fp16_bytes(d) + fp16_bytes(dmin) + bytes(s), L


def q4_k(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    head, L = _k4(x, qw, 15, -1.0, 20)
    q = bytearray(128)
    for j in range(0, QK_K, 64):
        for l in range(32):
            q[j // 2 + l] = int(L[j + l]) | int(L[j + l + 32]) << 4
    return head + bytes(q)


def q5_k(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    head, L = _k4(x, qw, 31, -0.5, 15)
    qh, ql = bytearray(32), bytearray(128)
    m1, m2 = 1, 2
    for n in range(0, QK_K, 64):
        for j in range(32):
            l1, l2 = int(L[n + j]), int(L[n + j + 32])
            if l1 > 15:
                l1 -= 16
                qh[j] |= m1
            if l2 > 15:
                l2 -= 16
                qh[j] |= m2
            ql[n // 2 + j] = l1 | (l2 << 4)
        m1, m2 = m1 << 2, m2 << 2
    return head + bytes(qh) + bytes(ql)


def q6_k(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    """quantize_row_q6_K_ref / _impl (make_qx_quants weighted by x*x, or by the raw importance)."""
    L = np.zeros(QK_K, f32)
    scales = np.zeros(16, f32)
    for ib in range(16):
        xb = x[16 * ib : 16 * ib + 16]
        scales[ib], L[16 * ib : 16 * ib + 16] = make_qx(xb, xb * xb if qw is None else qw[16 * ib : 16 * ib + 16], 32)
    max_scale, max_abs = _signed_max(scales)
    if max_abs < GROUP_MAX_EPS:
        return bytes(210)
    iscale = f32(-128) / max_scale
    d = f32(1) / iscale
    q_scales = [min(127, int(nearest_int(iscale * scales[ib]))) for ib in range(16)]
    for j in range(16):
        dl = fp16(d) * f32(q_scales[j])
        if not dl:
            continue
        L[16 * j : 16 * j + 16] = np.clip(nearest_int(x[16 * j : 16 * j + 16] / dl), -32, 31) + 32
    ql, qh = bytearray(128), bytearray(64)
    for j in range(0, QK_K, 128):
        for l in range(32):
            q = [int(L[j + l + 32 * k]) for k in range(4)]
            ql[j // 2 + l] = (q[0] & 0xF) | (q[2] & 0xF) << 4
            ql[j // 2 + l + 32] = (q[1] & 0xF) | (q[3] & 0xF) << 4
            qh[j // 4 + l] = (q[0] >> 4) | (q[1] >> 4) << 2 | (q[2] >> 4) << 4 | (q[3] >> 4) << 6
    sc = bytes(v & 0xFF for v in q_scales)
    return bytes(ql) + bytes(qh) + sc + fp16_bytes(d)


def _iq4_scale(xb: np.ndarray, weight: np.ndarray, values: list[np.float32]) -> np.float32:
    """The per-sub-block part of quantize_row_iq4_nl_impl (ntry = 7): the scale d of ``xb`` (32 values)."""
    mx, amax = _signed_max(xb)
    if amax < GROUP_MAX_EPS:
        return f32(0)
    d = -mx / values[0]
    id_ = f32(1) / d
    q = np.array([values[best_index_int8(id_ * v)] for v in xb], f32)
    sumqx, sumq2 = fold(weight * q * xb), fold(weight * q * q)
    d = sumqx / sumq2 if sumq2 > 0 else f32(0)
    best = d * sumqx
    for itry in range(-7, 8):
        id_ = f32(itry + IQ4_VALUES[0]) / mx
        q = np.array([values[best_index_int8(id_ * v)] for v in xb], f32)
        sumqx, sumq2 = fold(weight * q * xb), fold(weight * q * q)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d


def iq4_impl(x: np.ndarray, qw: np.ndarray | None, super_block: int) -> bytes:
    """quantize_row_iq4_nl_impl with ntry = 7, block_size 32: IQ4_NL (super_block 32) or IQ4_XS (256)."""
    values = [f32(v) for v in IQ4_VALUES]
    sigma2 = fold(x * x) * (f32(2) / f32(super_block))
    nb = super_block // 32
    L = np.zeros(super_block, np.int64)
    scales = np.zeros(nb, f32)
    max_scale = amax_scale = f32(0)
    for ib in range(nb):
        xb = x[32 * ib : 32 * ib + 32]
        weight = xb * xb if qw is None else _impl_weights(xb, qw[32 * ib : 32 * ib + 32], sigma2)
        scales[ib] = d = _iq4_scale(xb, weight, values)
        if abs(d) > amax_scale:
            amax_scale, max_scale = abs(d), d
    if nb > 1:
        head = bytearray(2 + 2 + 4)
        d = -max_scale / f32(32)
        head[0:2] = fp16_bytes(d)
        id_ = f32(1) / d if d else f32(0)
        scales_h = 0
        for ib in range(nb):
            l = max(-32, min(31, int(nearest_int(id_ * scales[ib]))))
            dl = d * f32(l)
            idl = f32(1) / dl if dl else f32(0)
            for j in range(32):
                L[32 * ib + j] = best_index_int8(idl * x[32 * ib + j])
            l += 32
            if ib % 2 == 0:
                head[4 + ib // 2] = l & 0xF
            else:
                head[4 + ib // 2] |= (l & 0xF) << 4
            scales_h |= (l >> 4) << (2 * (ib % 8))
        head[2:4] = scales_h.to_bytes(2, "little")
    else:
        head = bytearray(fp16_bytes(scales[0]))
        id_ = f32(1) / scales[0] if scales[0] else f32(0)
        for j in range(super_block):
            L[j] = best_index_int8(id_ * x[j])
    q4 = bytearray(super_block // 2)
    for i in range(super_block // 32):
        for j in range(16):
            q4[16 * i + j] = int(L[32 * i + j]) | int(L[32 * i + 16 + j]) << 4
    return bytes(head) + bytes(q4)


def iq4_nl(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    return iq4_impl(x, qw, 32)


def iq4_xs(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    return iq4_impl(x, qw, QK_K)


def encoder(block: BlockFn) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """A KEncodeFn that runs the per-block mirror ``block`` (a type's ``reference`` in mtk.kernels.types)
    on every block: x (..., super_block) float32, importance broadcastable to it or None -> uint8
    (..., type_size) on x's device."""

    def encode(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
        xs = x.detach().cpu().numpy().astype(f32)
        imp = None if importance is None else np.broadcast_to(importance.cpu().numpy().astype(f32), xs.shape)
        flat_x = xs.reshape(-1, xs.shape[-1])
        flat_imp = None if imp is None else imp.reshape(-1, xs.shape[-1])
        rows = [block(flat_x[i], None if flat_imp is None else flat_imp[i]) for i in range(flat_x.shape[0])]
        out = np.frombuffer(b"".join(rows), np.uint8).reshape(*xs.shape[:-1], -1)
        return torch.from_numpy(out.copy()).to(x.device)

    return encode
