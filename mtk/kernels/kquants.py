"""K-quant and IQ4 encoders (Q2_K ... Q6_K, IQ4_NL, IQ4_XS) in batched torch, as llama.cpp quantizes.

Without importance weights each type follows what ``llama_model_quantize`` runs without an imatrix
(``ggml_quantize_chunk`` -> ``quantize_qN_K(..., NULL)``): the ``quantize_row_qN_K_ref`` searches for the
K-quants, ``quantize_iq4_nl``/``quantize_iq4_xs`` with ``x*x`` weights for IQ4. With importance (llama.cpp's
imatrix values for the tensor: the mean squared activation of each input column) the ``quantize_row_qN_K_impl``
paths, whose weights are ``importance * sqrt(sigma2 + x*x)``.

An encoder maps float32 super-blocks ``(..., super_block)`` and optional importance ``(..., super_block)``
(broadcast over rows) to uint8 ``(..., type_size)`` in ggml's block layout. The searches live in
:mod:`mtk.kernels.kquants_search`; the slow twin of everything here is :mod:`mtk.kernels.kquants_ref`.
Float arithmetic matches ggml's except that sums over a sub-block fold pairwise (see kquants_search), so
most blocks are byte-identical with llama.cpp's and the rest differ where two choices were within rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from gguf import GGMLQuantizationType

from mtk.errors import UnsupportedError
from mtk.kernels import kquants_search as ks
from mtk.kernels import native, types

QT = GGMLQuantizationType
# (float32 x (..., super_block), float32 importance (..., super_block) or None) -> uint8 (..., type_size)
KEncodeFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

CHUNK_VALUES = ks.CHUNK_VALUES  # values encoded per step of the loop below (see kquants_search)


def quantize_kquant(
    weights: torch.Tensor,
    qtype: GGMLQuantizationType,
    importance: torch.Tensor | None = None,
    *,
    reference: bool = False,
) -> torch.Tensor:
    """Encode float ``weights`` (rows, cols) (or any shape whose last dimension is the row) as ``qtype``.

    ``importance``: float (cols,) per-column importance, or None. Returns uint8 ``(*shape[:-1], row_bytes)``
    on ``weights``' device. ``reference=True`` runs the slow twin (CPU, small inputs only).
    Raises ``UnsupportedError`` for rows that are not whole super-blocks, non-finite weights, or importance
    of the wrong shape or with negative or non-finite values.
    """
    entry = types.get(qtype)
    block_size, type_size = entry.block_size, entry.type_size
    shape = tuple(weights.shape)
    cols = shape[-1] if shape else 1
    if cols % block_size:
        raise UnsupportedError(f"{qtype.name} needs rows of whole {block_size}-value blocks, got {cols} values")
    rows = weights.reshape(-1, cols)
    if importance is not None:
        importance = _check_importance(importance, cols, qtype).to(weights.device)
    if not reference and native.handles(qtype, weights, importance is not None):
        return native.encode(rows, qtype, importance).reshape(*shape[:-1], -1)
    # (the C path checks each chunk as it encodes it: one pass over memory instead of two)
    if not bool(torch.isfinite(rows).all()):
        raise UnsupportedError(f"cannot quantize non-finite values (inf or NaN) to {qtype.name}")
    out = torch.empty((rows.shape[0], cols // block_size * type_size), dtype=torch.uint8, device=weights.device)
    if reference:
        from mtk.kernels import kquants_ref

        encode: KEncodeFn = kquants_ref.encoder(entry.encoder(reference=True))
    else:
        encode = entry.encoder()
    for part, imp, part_out in _chunks(rows, importance, out, block_size):
        x = part.float().reshape(part.shape[0], -1, block_size)
        imp_blocks = None if imp is None else imp.float().reshape(1, -1, block_size)
        part_out.view(part.shape[0], -1, type_size).copy_(encode(x, imp_blocks))
    return out.reshape(*shape[:-1], out.shape[-1])


def _check_importance(importance: torch.Tensor, cols: int, qtype: GGMLQuantizationType) -> torch.Tensor:
    if tuple(importance.shape) != (cols,):
        raise UnsupportedError(f"{qtype.name} importance must have shape ({cols},), got {tuple(importance.shape)}")
    importance = importance.float()
    if not bool((torch.isfinite(importance) & (importance >= 0)).all()):
        raise UnsupportedError("importance values must be finite and non-negative")
    return importance


def _chunks(
    rows: torch.Tensor, importance: torch.Tensor | None, out: torch.Tensor, block_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Pieces of ``rows`` (n, cols), the matching importance columns and ``out`` rows/bytes, of at most
    ``CHUNK_VALUES`` values (one super-block at least): runs of whole rows, or runs of blocks of one row."""
    n_rows, cols = rows.shape
    if cols <= CHUNK_VALUES:
        step = max(1, CHUNK_VALUES // cols)
        for start in range(0, n_rows, step):
            yield rows[start : start + step], importance, out[start : start + step]
        return
    step = max(1, CHUNK_VALUES // block_size) * block_size
    type_size = out.shape[1] // (cols // block_size)
    for r in range(n_rows):
        for start in range(0, cols, step):
            stop = min(start + step, cols)
            imp = None if importance is None else importance[start:stop]
            byte_range = slice(start // block_size * type_size, stop // block_size * type_size)
            yield rows[r : r + 1, start:stop], imp, out[r : r + 1, byte_range]


# --- shared pieces ----------------------------------------------------------------------------------------


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """float32 (...) -> its IEEE half (round to nearest even, as GGML_FP32_TO_FP16) as uint8 (..., 2)."""
    return v.to(torch.float16).unsqueeze(-1).view(torch.uint8)


def _f16_round(v: torch.Tensor) -> torch.Tensor:
    """float32 (...) through half and back (GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v)))."""
    return v.to(torch.float16).float()


def _bytes(v: torch.Tensor) -> torch.Tensor:
    """Integer-valued tensor -> uint8 of its low 8 bits (as a C store into uint8_t)."""
    return (v.to(torch.int32) & 0xFF).to(torch.uint8)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Codes (..., 2m, 32) -> (..., m*32) bytes: byte l of pair i is code (2i, l) | code (2i+1, l) << 4."""
    c = codes.to(torch.int32).reshape(*codes.shape[:-2], -1, 2, 32)
    return _bytes(c[..., 0, :] | (c[..., 1, :] << 4)).flatten(-2)


def _pack_crumbs(codes: torch.Tensor) -> torch.Tensor:
    """2-bit codes (..., 256) -> (..., 64) bytes: per half of 128, byte l = sum_k code(32k + l) << 2k."""
    c = codes.to(torch.int32).reshape(*codes.shape[:-1], 2, 4, 32)
    return _bytes(c[..., 0, :] | (c[..., 1, :] << 2) | (c[..., 2, :] << 4) | (c[..., 3, :] << 6)).flatten(-2)


def _k4_scale_bytes(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: 6-bit sub-block scales and mins (..., 8) -> the 12 scale bytes (get_scale_min_k4's layout):
    bytes 0-3 ls 0-3 with ls 4-7's top 2 bits at bit 6, bytes 4-7 the same for lm, bytes 8-11 the low
    nibbles of ls 4-7 | lm 4-7 << 4."""
    ls, lm = ls.to(torch.int32) & 0xFF, lm.to(torch.int32) & 0xFF
    low = ls[..., :4] | ((ls[..., 4:] >> 4) << 6)
    mid = lm[..., :4] | ((lm[..., 4:] >> 4) << 6)
    high = (ls[..., 4:] & 0xF) | ((lm[..., 4:] & 0xF) << 4)
    return _bytes(torch.cat((low, mid, high), -1))


def _requantize(
    x: torch.Tensor, codes: torch.Tensor, d: torch.Tensor, dm: torch.Tensor | None, lo: int, hi: int
) -> torch.Tensor:
    """The final codes: ``clamp(round((x + dm) / d), lo, hi) - lo`` per sub-block where ``d != 0``, else the
    search's ``codes`` (ggml skips those sub-blocks). x, codes (..., n); d, dm (...)."""
    num = x if dm is None else x + dm.unsqueeze(-1)
    fresh = ks.nearest_int(num / d.unsqueeze(-1)).clamp_(lo, hi) - lo
    return torch.where((d != 0).unsqueeze(-1), fresh, codes)


def _k_weights(x: torch.Tensor, importance: torch.Tensor | None, sigma_factor: float) -> torch.Tensor:
    """``importance * sqrt(sigma2 + x*x)`` with ``sigma2 = sigma_factor * sum(x*x) / 256`` per super-block;
    x (..., S, n) in super-blocks of S*n = 256 values, importance broadcastable to it."""
    sum_x2 = ks.fold((x * x).flatten(-2))
    sigma2 = ks.div(sigma_factor * sum_x2, 256.0).unsqueeze(-1).unsqueeze(-1)
    return importance * ks.sqrt(sigma2 + x * x)


# --- Q4_K / Q5_K ------------------------------------------------------------------------------------------


def _k4_scales(
    x: torch.Tensor, importance: torch.Tensor | None, nmax: int, ref_step: tuple[float, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K search on x (..., 8, 32): returns (ls, lm (..., 8) 6-bit codes, d, dmin (...) float32 to
    store as half, search codes (..., 8, 32))."""
    if importance is None:
        av_x = ks.sqrt(ks.div(ks.fold(x * x), 32.0))
        w = av_x.unsqueeze(-1) + x.abs()
        rmin, nstep = ref_step
        scales, mins, codes = ks.qkx_search(x, w, nmax, ks.qkx_numerators(nmax, rmin, 0.1, nstep), mad=False)
        max_scale = scales.amax(-1)
        max_scale = torch.where(max_scale > 0, max_scale, 0.0)
        max_min = mins.amax(-1)
        max_min = torch.where(max_min > 0, max_min, 0.0)
        inv_scale = torch.where(max_scale > 0, ks.div(63.0, max_scale), 0.0)
        inv_min = torch.where(max_min > 0, ks.div(63.0, max_min), 0.0)
        ls = (torch.round(inv_scale.unsqueeze(-1) * scales) % 256).clamp_(max=63)
        lm = (torch.round(inv_min.unsqueeze(-1) * mins) % 256).clamp_(max=63)
        return ls, lm, ks.div(max_scale, 63.0), ks.div(max_min, 63.0), codes
    w = _k_weights(x, importance.reshape(*importance.shape[:-1], 8, 32), 2.0)
    sw = ks.fold(w)
    scales, mins, codes = ks.qkx_search(x, w, nmax, ks.qkx_numerators(nmax, -0.9, 0.05, 36), mad=False)
    d_block, ls = ks.qp_search(scales, sw, 63)
    m_block, lm = ks.qp_search(mins, sw, 63)
    if nmax == 31:  # Q5_K's impl clamps; Q4_K's stores the uint8 as it is
        ls, lm = ls.clamp(max=63), lm.clamp(max=63)
    return ls, lm, d_block, m_block, codes


def _k4_common(
    x: torch.Tensor, importance: torch.Tensor | None, nmax: int, ref_step: tuple[float, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K head (d | dmin | 12 scale bytes) (..., 16) and final codes (..., 256) for x (..., 256)."""
    xs = x.reshape(*x.shape[:-1], 8, 32)
    ls, lm, d, dmin, codes = _k4_scales(xs, importance, nmax, ref_step)
    scale_bytes = _k4_scale_bytes(ls, lm)
    sc, m = _k4_decode(scale_bytes)
    dq = _f16_round(d).unsqueeze(-1) * sc
    dmq = _f16_round(dmin).unsqueeze(-1) * m
    codes = _requantize(xs, codes, dq, dmq, 0, nmax)
    head = torch.cat((_f16_bytes(d), _f16_bytes(dmin), scale_bytes), -1)
    return head, codes.flatten(-2)


def _k4_decode(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """get_scale_min_k4 for j = 0..7: 12 scale bytes (..., 12) -> (sc, m) (..., 8) float32."""
    s = s.to(torch.int32)
    a, b, c = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat((a & 63, (c & 0xF) | ((a >> 6) << 4)), -1)
    m = torch.cat((b & 63, (c >> 4) | ((b >> 6) << 4)), -1)
    return sc.float(), m.float()


def _q4_k(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """144 bytes: f16 d | f16 dmin | 12 scale bytes | 128 bytes of nibbles (per 64 values: 32 low, 32 high)."""
    head, codes = _k4_common(x, importance, 15, (-1.0, 20))
    return torch.cat((head, _pack_nibbles(codes.reshape(*codes.shape[:-1], 8, 32))), -1)


def _q5_k(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """176 bytes: f16 d | f16 dmin | 12 scale bytes | 32 bytes qh (bit k of byte l: value 32k + l >= 16) |
    128 bytes of low nibbles (as Q4_K)."""
    head, codes = _k4_common(x, importance, 31, (-0.5, 15))
    c = codes.to(torch.int32).reshape(*codes.shape[:-1], 8, 32)
    shifts = torch.arange(8, device=x.device, dtype=torch.int32).unsqueeze(-1)
    qh = ((c >> 4) << shifts).sum(-2)
    return torch.cat((head, _bytes(qh), _pack_nibbles(c & 0xF)), -1)


# --- Q6_K -------------------------------------------------------------------------------------------------


def _q6_k(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """210 bytes: 128 bytes ql | 64 bytes qh | 16 int8 scales (per 16 values) | f16 d.

    Codes are 0..63 (value + 32). Per half of 128 values, ql bytes l and 32 + l hold the low nibbles of
    values (l, 64 + l) and (32 + l, 96 + l); qh byte l holds the top 2 bits of values 32k + l at bit 2k.
    """
    xs = x.reshape(*x.shape[:-1], 16, 16)
    w = xs * xs if importance is None else importance.reshape(*importance.shape[:-1], 16, 16)
    scales, codes = ks.qx_search(xs, w, 32)
    peak, amax = ks.signed_peak(scales)
    zero = amax < ks.GROUP_MAX_EPS
    iscale = ks.div(-128.0, peak)
    d = ks.div(1.0, iscale)
    q_scales = torch.round(iscale.unsqueeze(-1) * scales).clamp_(max=127)
    dq = _f16_round(d).unsqueeze(-1) * q_scales
    codes = _requantize(xs, codes, dq, None, -32, 31).to(torch.int32).reshape(*x.shape[:-1], 2, 4, 32)
    low, top = codes & 0xF, codes >> 4
    ql = torch.stack((low[..., 0, :] | (low[..., 2, :] << 4), low[..., 1, :] | (low[..., 3, :] << 4)), -2)
    qh = top[..., 0, :] | (top[..., 1, :] << 2) | (top[..., 2, :] << 4) | (top[..., 3, :] << 6)
    block = torch.cat((_bytes(ql.flatten(-3)), _bytes(qh.flatten(-2)), _bytes(q_scales), _f16_bytes(d)), -1)
    return torch.where(zero.unsqueeze(-1), 0, block)


# --- Q2_K / Q3_K ------------------------------------------------------------------------------------------


def _q2_k(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """84 bytes: 16 scale bytes (sc | m << 4, per 16 values) | 64 bytes of 2-bit codes | f16 d | f16 dmin."""
    xs = x.reshape(*x.shape[:-1], 16, 16)
    if importance is None:
        numerators = ks.qkx_numerators(3, -0.5, 0.1, 15)
        scales, mins, codes = ks.qkx_search(xs, xs.abs(), 3, numerators, mad=True)
        ls, d = _q2_levels(scales)
        lm, dmin = _q2_levels(mins)
    else:
        w = _k_weights(xs, importance.reshape(*importance.shape[:-1], 16, 16), 1.0)
        numerators = ks.qkx_numerators(3, -0.9, 0.05, 36)
        scales, mins, codes = ks.qkx_search(xs, w, 3, numerators, mad=False)
        sw = ks.fold(w)
        d, ls = ks.qp_search(scales, sw, 15)
        dmin, lm = ks.qp_search(mins, sw, 15)
    scale_bytes = _bytes(ls.to(torch.int32) | (lm.to(torch.int32) << 4))
    sc = scale_bytes.to(torch.int32)
    dq = _f16_round(d).unsqueeze(-1) * (sc & 0xF).float()
    dmq = _f16_round(dmin).unsqueeze(-1) * (sc >> 4).float()
    codes = _requantize(xs, codes, dq, dmq, 0, 3)
    return torch.cat((scale_bytes, _pack_crumbs(codes.flatten(-2)), _f16_bytes(d), _f16_bytes(dmin)), -1)


def _q2_levels(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_row_q2_K_ref's 4-bit levels of per-sub-block scales (or mins) (..., 16) against their max,
    and the super-block scale (0 when no value is positive)."""
    peak = values.amax(-1)
    peak = torch.where(peak > 0, peak, 0.0)
    inv = torch.where(peak > 0, ks.div(15.0, peak), 0.0)
    levels = torch.where((peak > 0).unsqueeze(-1), torch.round(inv.unsqueeze(-1) * values), 0.0)
    return levels, ks.div(peak, 15.0)


def _q3_k(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """110 bytes: 32 bytes hmask (bit k of byte l: value 32k + l has code >= 4) | 64 bytes of 2-bit low codes
    (as Q2_K) | 12 bytes of 6-bit scales + 32 (low nibbles in bytes 0-7, top 2 bits in bytes 8-11) | f16 d."""
    xs = x.reshape(*x.shape[:-1], 16, 16)
    if importance is None:
        scales, codes = ks.q3_search(xs, 4)
        peak, amax = ks.signed_peak(scales)
        nonzero = peak != 0
        iscale = ks.div(-32.0, peak)
        levels = torch.round(iscale.unsqueeze(-1) * scales)
        levels = ((levels + 128) % 256 - 128).clamp_(-32, 31) + 32  # an int8 store, then the clamp
        levels = torch.where(nonzero.unsqueeze(-1), levels, 0.0)
        d = torch.where(nonzero, ks.div(1.0, iscale), 0.0)
    else:
        w = _k_weights(xs, importance.reshape(*importance.shape[:-1], 16, 16), 2.0)
        scales, codes = ks.qx_search(xs, w, 4)
        d, levels = ks.qx_search(scales, ks.fold(w), 32)
    s = levels.to(torch.int32)
    low = s[..., :8] & 0xF | ((s[..., 8:] & 0xF) << 4)
    top = (s >> 4).reshape(*s.shape[:-1], 4, 4)
    high = top[..., 0, :] | (top[..., 1, :] << 2) | (top[..., 2, :] << 4) | (top[..., 3, :] << 6)
    dq = _f16_round(d).unsqueeze(-1) * (s & 63).sub(32).float()
    codes = _requantize(xs, codes, dq, None, -4, 3).flatten(-2).to(torch.int32)
    c = codes.reshape(*codes.shape[:-1], 8, 32)
    shifts = torch.arange(8, device=x.device, dtype=torch.int32).unsqueeze(-1)
    hmask = ((c >> 2) << shifts).sum(-2)
    return torch.cat((_bytes(hmask), _pack_crumbs(codes & 3), _bytes(low), _bytes(high), _f16_bytes(d)), -1)


# --- IQ4_NL / IQ4_XS --------------------------------------------------------------------------------------


def _iq4_weights(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """x (..., S, 32) in super-blocks of S*32 values: ``x*x``, or ``importance * sqrt(sigma2 + x*x)`` with
    ``sigma2 = sum(x*x) * (2 / (S*32))``."""
    if importance is None:
        return x * x
    size = x.shape[-2] * x.shape[-1]
    sigma2 = ks.fold((x * x).flatten(-2)) * (2.0 / size)  # 2/32 and 2/256 are exact in float32
    imp = importance.reshape(*importance.shape[:-1], *x.shape[-2:])
    return imp * ks.sqrt(sigma2.unsqueeze(-1).unsqueeze(-1) + x * x)


def _iq4_codes(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """4-bit codes (..., S, 32) -> (..., S*16) bytes: byte j of sub-block i = code j | code 16 + j << 4."""
    codes = ks.iq4_index(inv.unsqueeze(-1) * x).to(torch.int32)
    c = codes.reshape(*codes.shape[:-1], 2, 16)
    return _bytes(c[..., 0, :] | (c[..., 1, :] << 4)).flatten(-2)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """``d ? 1/d : 0``."""
    return torch.where(d != 0, ks.div(1.0, d), 0.0)


def _iq4_nl(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """18 bytes: f16 d | 16 bytes of codes into IQ4_VALUES (byte j: value j | value 16 + j << 4).

    The codes are chosen against the float32 d, before it is rounded to half (as ggml does)."""
    xs = x.unsqueeze(-2)
    d = ks.iq4_search(xs, _iq4_weights(xs, importance))
    return torch.cat((_f16_bytes(d.squeeze(-1)), _iq4_codes(xs, _inverse(d))), -1)


def _iq4_xs(x: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """136 bytes: f16 d | uint16 scales_h (bits 2k, 2k+1: top of scale k) | 4 bytes scales_l (nibble k:
    low 4 bits of scale k) | 128 bytes of codes (16 per sub-block of 32, as IQ4_NL). Scales are 6-bit + 32.

    d = -max_scale / 32 for the sub-block scale of largest magnitude; codes use float32 d * l (ggml)."""
    xs = x.reshape(*x.shape[:-1], 8, 32)
    scales = ks.iq4_search(xs, _iq4_weights(xs, importance))
    peak, amax = ks.signed_peak(scales)
    peak = torch.where(amax > 0, peak, 0.0)
    d = ks.div(-peak, 32.0)
    levels = torch.round(_inverse(d).unsqueeze(-1) * scales).clamp_(-32, 31)
    dl = d.unsqueeze(-1) * levels
    s = levels.to(torch.int32) + 32
    scales_l = (s[..., 0::2] & 0xF) | ((s[..., 1::2] & 0xF) << 4)
    shifts = torch.arange(0, 16, 2, device=x.device, dtype=torch.int32)
    scales_h = ((s >> 4) << shifts).sum(-1)
    head = torch.cat((_f16_bytes(d), _bytes(scales_h).unsqueeze(-1), _bytes(scales_h >> 8).unsqueeze(-1)), -1)
    return torch.cat((head, _bytes(scales_l), _iq4_codes(xs, _inverse(dl))), -1)


KQUANT_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    row.qtype for row in types.rows() if row.importance is types.Importance.BUILT_IN
)
