"""Batched scale searches behind the K-quant and IQ4 encoders (ggml's ``make_*_quants``), in torch.

Each search runs on many sub-blocks at once: ``x`` is float32 ``(..., n)`` (n values per sub-block, a
power of two), weights are float32 of the same shape, results are per sub-block ``(...)`` plus integer
codes ``(..., n)`` held as float32. Where ggml's candidate scales are independent of each other they are
evaluated together, as an extra dimension ``(..., K, n)``; the choice among them is then made in ggml's
order, one candidate after the other (its comparisons are not transitive in float, so an argmin could pick
differently).

Float arithmetic is ggml's, one rounding per operation, in its order (``w*l*x`` is ``(w*l)*x``), with one
deliberate difference: every sum over a sub-block is :func:`fold` (pairwise halving), where ggml adds left to
right. Folding is a few wide operations instead of n narrow ones, and the slow twin in
``mtk.kernels.kquants_ref`` folds the same way, so the two agree bit for bit. Divisions are tensor by
tensor (true divisions): torch computes ``number / tensor`` as a reciprocal times the number, which can
differ in the last bit. Square roots are :func:`sqrt`, correctly rounded (torch's CPU one is not). Rounding
is ``torch.round`` (half to even), which is what ggml's ``nearest_int`` does for the magnitudes that occur
here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

import numpy as np
import torch

GROUP_MAX_EPS = 1e-15  # ggml's "all zero" threshold on a sub-block's largest magnitude


def fold(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension (a power of two) by repeated halving: ``t[..., :h] + t[..., h:]``.
    ``(..., n)`` -> ``(...)``."""
    n = t.shape[-1]
    while n > 1:
        n //= 2
        t = t[..., :n] + t[..., n : 2 * n]
    return t[..., 0]


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's ``nearest_int`` bit for bit, as float32: the low mantissa bits of ``v + 1.5 * 2**23``.

    Half to even like ``torch.round`` while ``|v| < 2**22``; beyond that ggml's result wraps, and this one
    wraps the same way. Used where a ratio is unbounded (the coordinate descents)."""
    bits = (v + 12582912.0).view(torch.int32)
    return ((bits & 0x007FFFFF) - 0x00400000).float()


def div(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """``a / b`` rounded once, whichever side is a Python number (see the module docstring)."""
    if not isinstance(a, torch.Tensor):
        a = torch.full_like(b, a)
    elif not isinstance(b, torch.Tensor):
        b = torch.full_like(a, b)
    return a / b


def sqrt(v: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root of float32 ``v`` (IEEE ``sqrtf``, as ggml, numpy and CUDA compute it).

    torch's CPU ``sqrt`` calls MKL's ``vsSqrt``/``vdSqrt``, which are within one ulp but not correctly
    rounded on every CPU (on an AVX-512 AMD EPYC a sixth of float32 results are one ulp off, whatever
    ``ATEN_CPU_CAPABILITY`` says), so the bytes of every encoder that weights by a square root would depend on
    the machine. Here the float64 root rounded to float32 is within one ulp of the true root, and one exact
    step fixes it: the midpoints ``m`` between it and its neighbours have 25 significant bits, so ``m*m``
    (50 bits) and ``v`` compare exactly in float64, and a root is never a midpoint. ``v <= 0``, inf and NaN
    keep torch's result (0, -0, inf, NaN: exact)."""
    r = torch.sqrt(v.double()).float()
    wide = v.double()
    for toward in (float("inf"), float("-inf")):
        near = torch.nextafter(r, torch.full_like(r, toward))
        mid = (r.double() + near.double()) * 0.5
        beyond = mid * mid < wide if toward > 0 else mid * mid > wide
        r = torch.where(beyond & (v > 0) & torch.isfinite(v), near, r)
    return r


def qkx_numerators(nmax: int, rmin: float, rdelta: float, nstep: int) -> np.ndarray:
    """``rmin + rdelta*is + nmax`` for ``is = 0..nstep`` in float32, each op rounded (make_qkx2/3_quants)."""
    f = np.float32
    return np.array([f(rmin) + f(rdelta) * f(i) + f(nmax) for i in range(nstep + 1)], dtype=np.float32)


def qx_numerators(nmax: int) -> np.ndarray:
    """``-(nmax + 0.1f*is)`` for ``is = -9..9, is != 0`` in float32 (make_qx_quants' candidates)."""
    f = np.float32
    return np.array([-(f(nmax) + f(0.1) * f(i)) for i in range(-9, 10) if i], dtype=np.float32)


def qp_numerators(nmax: int) -> np.ndarray:
    """``0.1f*is + nmax`` for ``is = -4..4, is != 0`` in float32 (make_qp_quants' candidates)."""
    f = np.float32
    return np.array([f(0.1) * f(i) + f(nmax) for i in range(-4, 5) if i], dtype=np.float32)


def _table(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values).to(like.device)


def qkx_search(
    x: torch.Tensor, w: torch.Tensor, nmax: int, numerators: np.ndarray, mad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants / make_qkx3_quants (same search): an asymmetric ``x ~ scale*L - the_min`` with codes
    ``L`` in 0..nmax, minimising the weighted squared (``mad``: absolute) error.

    Step k tries the inverse scale ``numerators[k] / (max - min)`` and fits scale and min to its codes by
    weighted least squares. ``min`` is the best fit so far, so each step depends on the ones before: the
    steps run one after the other, each on all sub-blocks at once.
    ``x``, ``w``: float32 (..., n). Returns (scale (...), the_min (...), L float32 (..., n)).
    """
    low = x.amin(-1)
    low = torch.where(low > 0, 0.0, low)
    high = x.amax(-1)
    span = high - low
    sum_w = fold(w)
    sum_x = fold(w * x)
    iscale = div(float(nmax), span)
    scale = div(1.0, iscale)
    codes = torch.round(iscale.unsqueeze(-1) * (x - low.unsqueeze(-1))).clamp_(0, nmax)
    best = fold(w * _error(scale.unsqueeze(-1) * codes + low.unsqueeze(-1) - x, mad))
    the_min = low
    # The codes of the best step so far are recomputed once at the end from its inverse scale and shift:
    # a full-size select per step would cost more than the rest of the step's bookkeeping.
    chosen_iscale, chosen_shift = iscale, low
    state = (best, scale, the_min, chosen_iscale, chosen_shift)
    steps = torch.from_numpy(numerators).to(x.device).unbind()
    best, scale, the_min, chosen_iscale, chosen_shift = _run_steps(x, w, sum_w, sum_x, high, state, steps, nmax, mad)
    codes = torch.round(chosen_iscale.unsqueeze(-1) * (x - chosen_shift.unsqueeze(-1))).clamp_(0, nmax)
    flat = span == 0
    codes = torch.where(flat.unsqueeze(-1), 0.0, codes)
    scale = torch.where(flat, 0.0, scale)
    return scale, -the_min, codes


QkxState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def qkx_step(
    x: torch.Tensor,
    w: torch.Tensor,
    sum_w: torch.Tensor,
    sum_x: torch.Tensor,
    high: torch.Tensor,
    state: QkxState,
    numerator: torch.Tensor,
    nmax: int,
    mad: bool,
) -> QkxState:
    """One step of :func:`qkx_search` on N sub-blocks laid out by column: ``x``, ``w`` (n, N), the rest (N,).

    Tries the inverse scale ``numerator / (max - min)`` (``numerator`` a 0-d float32 tensor, so that one
    compiled step serves every step), fits scale and min to its codes, keeps them where the error is lower.
    ``state``: (best error, scale, min, the chosen step's inverse scale and the min it shifted by).
    The column layout makes every operation contiguous and the sums :func:`fold` over dimension 0, which
    pairs the same values as folding the last dimension of (N, n): the bits are those of the row layout.
    """
    best, scale, the_min, chosen_iscale, chosen_shift = state
    step_iscale = numerator / (high - the_min)
    l = torch.round(step_iscale * (x - the_min)).clamp_(0, nmax)
    wl = w * l
    sum_l, sum_l2, sum_xl = fold0(wl), fold0(wl * l), fold0(wl * x)
    det = sum_w * sum_l2 - sum_l * sum_l
    this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
    this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
    positive = this_min > 0
    this_min = torch.where(positive, 0.0, this_min)
    this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
    err = fold0(w * _error(this_scale * l + this_min - x, mad))
    take = (det > 0) & (err < best)
    return (
        torch.where(take, err, best),
        torch.where(take, this_scale, scale),
        torch.where(take, this_min, the_min),
        torch.where(take, step_iscale, chosen_iscale),
        torch.where(take, the_min, chosen_shift),
    )


def fold0(t: torch.Tensor) -> torch.Tensor:
    """:func:`fold` over dimension 0: (n, ...) -> (...)."""
    n = t.shape[0]
    while n > 1:
        n //= 2
        t = t[:n] + t[n : 2 * n]
    return t[0]


def compile_enabled() -> bool:
    """Whether the hot search steps run through torch.compile: ``MTK_COMPILE=1`` in the environment.

    Compiling costs tens of seconds per step kind on first use (inductor caches the result on disk, in
    ``TORCHINDUCTOR_CACHE_DIR``), so it pays only for large tensors; the eager path gives the same bytes.
    That cache must not outlive a change of vector ISA: its key (torch 2.13) leaves out the one
    ``ATEN_CPU_CAPABILITY`` selects, so a cache filled at AVX-512 and read at ``avx2`` returns AVX-512-width
    kernels built with AVX2 flags (wrong bytes, no error), and at ``default`` kernels that do not compile.
    Use one cache directory per capability (and per machine kind)."""
    return os.environ.get("MTK_COMPILE", "") == "1"


@cache
def _compiled_qkx_step() -> Callable[..., QkxState]:
    return torch.compile(qkx_step, dynamic=False)


def _run_steps(
    x: torch.Tensor,
    w: torch.Tensor,
    sum_w: torch.Tensor,
    sum_x: torch.Tensor,
    high: torch.Tensor,
    state: QkxState,
    steps: tuple[torch.Tensor, ...],
    nmax: int,
    mad: bool,
) -> QkxState:
    """:func:`qkx_step` for every step on x, w (..., n) and the rest (...): transposed to (n, N) once.

    Compiled, the N sub-blocks are zero-padded to a multiple of ``CHUNK_VALUES // n`` so that one static shape
    per (type, sub-block size) is compiled; padded lanes compute NaNs and are dropped."""
    lead, n = x.shape[:-1], x.shape[-1]
    count = x[..., 0].numel()
    compiled = compile_enabled()
    rows = CHUNK_VALUES // n
    padded = -(-count // rows) * rows if compiled else count

    def flat(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(count, -1).T
        pad = torch.zeros((t.shape[0], padded - count), dtype=t.dtype, device=t.device)
        # Also a copy: no two state tensors alias (a compiled graph would guard on it and recompile).
        return torch.cat((t, pad), 1).squeeze(0)

    step = _compiled_qkx_step() if compiled else qkx_step
    xs, ws = flat(x), flat(w)
    sums = flat(sum_w), flat(sum_x), flat(high)
    out = tuple(flat(t) for t in state)
    for numerator in steps:
        out = step(xs, ws, *sums, out, numerator, nmax, mad)
    return tuple(t[:count].reshape(lead) for t in out)  # type: ignore[return-value]


# Values per chunk (mtk.kernels.kquants encodes tensors this many values at a time), and so per compiled
# call: whole chunks need no padding. 64 Ki values keep a chunk's float32 temporaries (256 KiB each) near
# the CPU caches. Measured on 2 busy cores (eager): Q4_K 1.39 M/s at 64 Ki, 1.19 at 32 Ki, 1.34 at 256 Ki;
# Q6_K 2.38 at 64 Ki, 1.43 at 256 Ki.
CHUNK_VALUES = 1 << 16


def _error(diff: torch.Tensor, mad: bool) -> torch.Tensor:
    return diff.abs() if mad else diff * diff


def signed_peak(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The value of largest magnitude (the first on a tie) and that magnitude, (...) each, for (..., n)."""
    ax = x.abs()
    index = ax.argmax(-1, keepdim=True)
    return x.gather(-1, index).squeeze(-1), ax.gather(-1, index).squeeze(-1)


def qx_search(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants with rmse_type 1: a symmetric ``x ~ scale*(L - nmax)``, L in 0..2*nmax-1, maximising
    ``sumlx**2 / suml2`` (weights ``w``) over inverse scales ``-(nmax + 0.1*is) / max``.

    ``x``, ``w``: float32 (..., n). Returns (scale (...), L float32 (..., n)); all-zero sub-blocks give 0, 0.
    """
    peak, amax = signed_peak(x)
    iscale = div(float(-nmax), peak)
    l0 = torch.round(iscale.unsqueeze(-1) * x).clamp_(-nmax, nmax - 1)
    wx = w * x
    sumlx, suml2 = fold(wx * l0), fold(w * l0 * l0)
    scale = torch.where(suml2 != 0, sumlx / suml2, 0.0)
    best = scale * sumlx
    cand_iscale = _table(qx_numerators(nmax), x) / peak.unsqueeze(-1)
    l_all = torch.round(cand_iscale.unsqueeze(-1) * x.unsqueeze(-2)).clamp_(-nmax, nmax - 1)
    wk = w.unsqueeze(-2)
    sumlx_k, suml2_k = fold(wx.unsqueeze(-2) * l_all), fold(wk * l_all * l_all)
    chosen = iscale
    for k in range(cand_iscale.shape[-1]):
        slx, sl2 = sumlx_k[..., k], suml2_k[..., k]
        take = (sl2 > 0) & (slx * slx > best * sl2)
        scale = torch.where(take, slx / sl2, scale)
        best = torch.where(take, scale * slx, best)
        chosen = torch.where(take, cand_iscale[..., k], chosen)
    codes = torch.round(chosen.unsqueeze(-1) * x).clamp_(-nmax, nmax - 1) + nmax
    zero = (amax < GROUP_MAX_EPS).unsqueeze(-1)
    return torch.where(zero.squeeze(-1), 0.0, scale), torch.where(zero, 0.0, codes)


def q3_search(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_q3_quants with do_rmse: start from ``round(-nmax/max * x)``, then up to five passes of
    per-value coordinate descent on ``sumlx**2 / suml2`` with weights ``x*x``.

    A pass that changes nothing leaves the state as it found it, so running all five passes equals ggml's
    early exit. ``x``: float32 (..., n). Returns (scale (...), L float32 (..., n), offset by nmax).
    """
    peak, amax = signed_peak(x)
    iscale = div(float(-nmax), peak)
    codes = torch.round(iscale.unsqueeze(-1) * x).clamp_(-nmax, nmax - 1)
    w = x * x
    wx = w * x
    sumlx, suml2 = fold(wx * codes), fold(w * codes * codes)
    columns = list(_by_column(codes))
    w_cols, wx_cols, x_cols = _by_column(w), _by_column(wx), _by_column(x)
    for _ in range(5):
        for i, l_old in enumerate(columns):
            wi, wxi, xi = w_cols[i], wx_cols[i], x_cols[i]
            slx = sumlx - wxi * l_old
            sl2 = suml2 - wi * l_old * l_old
            new_l = nearest_int(xi * sl2 / slx).clamp_(-nmax, nmax - 1)
            slx = slx + wxi * new_l
            sl2 = sl2 + wi * new_l * new_l
            take = (sumlx - wxi * l_old > 0) & (new_l != l_old) & (sl2 > 0)
            take &= slx * slx * suml2 > sumlx * sumlx * sl2
            columns[i] = torch.where(take, new_l, l_old)
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
    codes = torch.stack(columns, -1) + nmax
    scale = torch.where(suml2 > 0, sumlx / suml2, 0.0)
    zero = amax < GROUP_MAX_EPS
    return torch.where(zero, 0.0, scale), torch.where(zero.unsqueeze(-1), 0.0, codes)


def _by_column(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The n values of every sub-block (..., n) as n contiguous (...) tensors: the coordinate descents
    touch one value of every sub-block per operation, and strided views would cost several times more."""
    return t.movedim(-1, 0).contiguous().unbind(0)


def _u8(l: torch.Tensor) -> torch.Tensor:
    """An int result stored in a uint8 variable (wraps modulo 256), as float32."""
    return torch.remainder(l, 256.0)


def qp_search(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qp_quants: a scale for non-negative ``x ~ scale*L``, L in 0..nmax (uint8), from candidates
    ``(nmax + 0.1*is) / max`` by weighted squared error, then five passes of coordinate descent.

    ``x``, ``w``: float32 (..., n). Returns (scale (...), L float32 (..., n)).
    """
    peak = torch.clamp(x, min=0).amax(-1)  # ggml starts its running max at 0
    iscale = div(float(nmax), peak)
    first = _u8(torch.round(iscale.unsqueeze(-1) * x))
    best = fold(_sq_err(x, div(1.0, iscale).unsqueeze(-1) * first, w))
    cand_iscale = _table(qp_numerators(nmax), x) / peak.unsqueeze(-1)
    cand_scale = div(1.0, cand_iscale)
    l_all = torch.round(cand_iscale.unsqueeze(-1) * x.unsqueeze(-2)).clamp_(max=nmax)
    mse = fold(_sq_err(x.unsqueeze(-2), cand_scale.unsqueeze(-1) * l_all, w.unsqueeze(-2)))
    for k in range(cand_iscale.shape[-1]):
        take = mse[..., k] < best
        best = torch.where(take, mse[..., k], best)
        iscale = torch.where(take, cand_iscale[..., k], iscale)
    codes = torch.round(iscale.unsqueeze(-1) * x).clamp_(max=nmax)
    wx = w * x
    sumlx, suml2 = fold(wx * codes), fold(w * codes * codes)
    codes = _u8(codes)
    columns = list(_by_column(codes))
    w_cols, wx_cols, x_cols = _by_column(w), _by_column(wx), _by_column(x)
    for _ in range(5):
        for i, l_old in enumerate(columns):
            wi, wxi, xi = w_cols[i], wx_cols[i], x_cols[i]
            slx = sumlx - wxi * l_old
            sl2 = suml2 - wi * l_old * l_old
            new_l = nearest_int(xi * sl2 / slx).clamp_(max=nmax)
            take = (slx > 0) & (sl2 > 0) & (new_l != l_old)
            slx = slx + wxi * new_l
            sl2 = sl2 + wi * new_l * new_l
            take &= slx * slx * suml2 > sumlx * sumlx * sl2
            columns[i] = torch.where(take, _u8(new_l), l_old)
            sumlx = torch.where(take, slx, sumlx)
            suml2 = torch.where(take, sl2, suml2)
    codes = torch.stack(columns, -1)
    scale = torch.where(suml2 > 0, sumlx / suml2, 0.0)
    zero = peak < GROUP_MAX_EPS
    return torch.where(zero, 0.0, scale), torch.where(zero.unsqueeze(-1), 0.0, codes)


def _sq_err(x: torch.Tensor, approx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    diff = x - approx
    return w * diff * diff


# ggml's kvalues_iq4nl: the 16 levels of IQ4_NL / IQ4_XS codes.
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
IQ4_TRIES = 7  # llama.cpp's quantize_iq4_nl / quantize_iq4_xs pass ntry = 7, with or without weights


@cache
def _iq4_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each integer k in -128..127 (at k + 128): the number of levels <= k, clamped to 1..15 (``upper``),
    and the levels just below and at ``upper``. Levels are integers, so for a float v these depend only on
    floor(v): three gathers from 256-entry tables instead of a search per value."""
    levels = torch.tensor(IQ4_VALUES, dtype=torch.float32)
    ks = torch.arange(-128, 128, dtype=torch.float32)
    upper = (levels.unsqueeze(0) <= ks.unsqueeze(1)).sum(1).clamp(1, 15)
    return upper.to(device), levels[upper - 1].to(device), levels[upper].to(device)


def _table_index(v: torch.Tensor) -> torch.Tensor:
    """floor(v) + 128 clamped to 0..255; NaN (from the unused lanes of an all-zero sub-block) as beyond the
    top level, where ggml's comparisons all fail too."""
    return (torch.nan_to_num(v, nan=127.0).clamp_(-128.0, 127.0).floor_() + 128).long()


def iq4_nearest(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's best_index_int8 over IQ4_VALUES for float32 ``v``: (index int64, its level float32).

    ggml bisects for ``levels[upper - 1] <= v < levels[upper]`` and takes the lower level when
    ``v - lower < upper_level - v`` in float32; at or beyond the end levels it takes those."""
    upper, lower_level, upper_level = _iq4_tables(v.device)
    k = _table_index(v)
    lo, hi = lower_level[k], upper_level[k]
    below = (v - lo) < (hi - v)
    level = torch.where(below, lo, hi)
    first, last = float(IQ4_VALUES[0]), float(IQ4_VALUES[-1])
    level = torch.where(v <= first, first, torch.where(v >= last, last, level))
    index = upper[k] - below.long()
    index = torch.where(v <= first, 0, torch.where((v >= last) | v.isnan(), 15, index))
    return index, level


def iq4_index(v: torch.Tensor) -> torch.Tensor:
    """The index part of :func:`iq4_nearest`."""
    return iq4_nearest(v)[0]


def iq4_level(v: torch.Tensor) -> torch.Tensor:
    """The level part of :func:`iq4_nearest`, without the index gather."""
    _, lower_level, upper_level = _iq4_tables(v.device)
    k = _table_index(v)
    lo, hi = lower_level[k], upper_level[k]
    level = torch.where((v - lo) < (hi - v), lo, hi)
    first, last = float(IQ4_VALUES[0]), float(IQ4_VALUES[-1])
    return torch.where(v <= first, first, torch.where((v >= last) | v.isnan(), last, level))


def iq4_search(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The sub-block scale search of quantize_row_iq4_nl_impl (ntry = 7): ``x ~ d * level[L]``, maximising
    ``sumqx**2 / sumq2`` (weights ``w``) over the start ``d = max / 127`` and inverse scales
    ``(t - 127) / max`` for t in -7..7. ``x``, ``w``: float32 (..., n). Returns d (...); 0 for all-zero
    sub-blocks."""
    peak, amax = signed_peak(x)
    inv = div(1.0, div(-peak, float(IQ4_VALUES[0])))
    q = iq4_level(inv.unsqueeze(-1) * x)
    wq = w * q
    sumqx, sumq2 = fold(wq * x), fold(wq * q)
    d = torch.where(sumq2 > 0, sumqx / sumq2, 0.0)
    best = d * sumqx
    numerators = np.array([t + IQ4_VALUES[0] for t in range(-IQ4_TRIES, IQ4_TRIES + 1)], dtype=np.float32)
    cand_inv = _table(numerators, x) / peak.unsqueeze(-1)
    q_all = iq4_level(cand_inv.unsqueeze(-1) * x.unsqueeze(-2))
    wq_all = w.unsqueeze(-2) * q_all
    sumqx_k, sumq2_k = fold(wq_all * x.unsqueeze(-2)), fold(wq_all * q_all)
    for k in range(numerators.shape[0]):
        sqx, sq2 = sumqx_k[..., k], sumq2_k[..., k]
        take = (sq2 > 0) & (sqx * sqx > best * sq2)
        d = torch.where(take, sqx / sq2, d)
        best = torch.where(take, d * sqx, best)
    return torch.where(amax < GROUP_MAX_EPS, 0.0, d)
