"""Importance-weighted Q4_0, Q4_1, Q5_0 and Q5_1 encoders in batched torch, as llama.cpp quantizes with an imatrix.

llama.cpp's ``quantize_q4_0`` ... ``quantize_q5_1`` take the plain ``_ref`` path without importance (mtk's
gguf-py-exact encoders in :mod:`mtk.kernels.quantize` do that), and with it ``quantize_row_qN_M_impl``: per row
``sigma2 = sum(x*x) / n_per_row``, per 32-value block weights ``importance * sqrt(sigma2 + x*x)``, then

- Q4_0 / Q5_0: ``make_qx_quants(32, nmax, x, L, 1, weights)`` (nmax 8 / 16), a symmetric scale search
  (:func:`mtk.kernels.kquants_search.qx_search`); ``d`` = its scale, codes as found (not re-rounded to the
  half ``d``);
- Q4_1 / Q5_1: ``make_qkx3_quants(32, nmax, x, weights, L, &min, Laux, -0.9, 0.05, 36, false)`` (nmax 15 / 31),
  the asymmetric search (:func:`~mtk.kernels.kquants_search.qkx_search`); ``d`` = its scale, ``m = -min``.

``sigma2``'s sum runs left to right in float32 over the whole row, as ggml's loop does (not folded: a row is
not a power of two in general). The block sums inside the searches fold pairwise (see kquants_search), so a
few blocks may differ from llama.cpp's where two choices were within rounding. The slow twin is
:mod:`mtk.kernels.legacy_importance_ref`.
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType

from mtk.errors import UnsupportedError
from mtk.kernels import kquants_search as ks
from mtk.kernels import native, types

QT = GGMLQuantizationType
LEGACY_IMPORTANCE_TYPES = frozenset(row.qtype for row in types.rows() if row.importance is types.Importance.SEPARATE)
# nmax of each type's search: the symmetric ones code -nmax..nmax-1, the asymmetric ones 0..nmax.
NMAX = {QT.Q4_0: 8, QT.Q5_0: 16, QT.Q4_1: 15, QT.Q5_1: 31}
QK = 32
# Values encoded per step (whole rows, one row at least): the qx search holds (rows, blocks, 18, 32) float32
# temporaries, so this keeps them near 16 MiB each.
CHUNK_VALUES = 1 << 17


def quantize_legacy_importance(
    weights: torch.Tensor, qtype: GGMLQuantizationType, importance: torch.Tensor, *, reference: bool = False
) -> torch.Tensor:
    """Encode float ``weights`` (..., cols) as ``qtype`` (Q4_0/Q4_1/Q5_0/Q5_1) with per-column ``importance``
    (float (cols,), finite, >= 0: llama.cpp's imatrix values for the tensor).

    Returns uint8 ``(*weights.shape[:-1], cols // 32 * type_size)`` on ``weights``' device, in ggml's block
    layout. ``reference=True`` runs the slow numpy twin (small inputs only). Raises ``UnsupportedError`` for
    rows that are not whole blocks, non-finite weights, or bad importance.
    """
    entry = types.get(qtype)
    type_size = entry.type_size
    shape = tuple(weights.shape)
    cols = shape[-1] if shape else 1
    if cols % QK:
        raise UnsupportedError(f"{qtype.name} needs rows of whole {QK}-value blocks, got {cols} values")
    if tuple(importance.shape) != (cols,):
        raise UnsupportedError(f"{qtype.name} importance must have shape ({cols},), got {tuple(importance.shape)}")
    importance = importance.float().to(weights.device)
    if not bool((torch.isfinite(importance) & (importance >= 0)).all()):
        raise UnsupportedError("importance values must be finite and non-negative")
    rows = weights.reshape(-1, cols)
    if not reference and native.handles(qtype, weights, True):
        return native.encode(rows, qtype, importance).reshape(*shape[:-1], -1)
    # (the C path checks each chunk as it encodes it: one pass over memory instead of two)
    if not bool(torch.isfinite(rows).all()):
        raise UnsupportedError(f"cannot quantize non-finite values (inf or NaN) to {qtype.name}")
    out = torch.empty((rows.shape[0], cols // QK * type_size), dtype=torch.uint8, device=weights.device)
    encode = entry.importance_encoder(reference=reference)  # the reference's module loads only then
    step = max(1, CHUNK_VALUES // max(cols, 1))
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = encode(rows[start : start + step].float(), importance, qtype)
    return out.reshape(*shape[:-1], out.shape[-1])


def row_sigma2(x: torch.Tensor) -> torch.Tensor:
    """``sum(x*x) / cols`` per row of float32 ``x`` (rows, cols), the sum left to right in float32 as ggml's
    loop (torch's own sums accumulate in a wider type or pairwise). -> (rows,)."""
    columns = x.T.contiguous()
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    for column in columns:
        total += column * column
    return ks.div(total, float(x.shape[1]))


def encode_rows(
    x: torch.Tensor, importance: torch.Tensor, qtype: GGMLQuantizationType, sigma2: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 rows (r, cols) and importance (cols,) -> uint8 (r, cols // 32 * type_size).

    ``sigma2`` (r,): the rows' ``sum(x*x) / n_per_row`` when ``x`` is only some of the blocks of longer rows
    (GPTQ on GGUF grids fits one block of columns at a time); by default :func:`row_sigma2` of ``x``."""
    if sigma2 is None:
        sigma2 = row_sigma2(x)
    blocks = x.reshape(x.shape[0], -1, QK)
    w = importance.reshape(1, -1, QK) * ks.sqrt(sigma2.reshape(-1, 1, 1) + blocks * blocks)
    nmax = NMAX[qtype]
    if qtype in (QT.Q4_0, QT.Q5_0):
        d, codes = ks.qx_search(blocks, w, nmax)
        head = [_f16_bytes(d)]
    else:
        numerators = ks.qkx_numerators(nmax, -0.9, 0.05, 36)
        d, the_min, codes = ks.qkx_search(blocks, w, nmax, numerators, mad=False)
        head = [_f16_bytes(d), _f16_bytes(-the_min)]
    codes = codes.to(torch.uint8)
    if qtype in (QT.Q5_0, QT.Q5_1):
        head.append(high_bits(codes))
    return torch.cat([*head, nibbles(codes)], -1).reshape(x.shape[0], -1)


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """float32 (...) -> IEEE half (round to nearest even, as GGML_FP32_TO_FP16) as uint8 (..., 2)."""
    return v.to(torch.float16).unsqueeze(-1).view(torch.uint8)


def nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., 32) -> (..., 16): byte j = low 4 bits of code j | low 4 bits of code j+16 << 4."""
    return (codes[..., :16] & 0x0F) | ((codes[..., 16:] & 0x0F) << 4)


def high_bits(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., 32) -> the 4 little-endian bytes of uint32 qh, bit j = bit 4 of code j."""
    bits = ((codes >> 4) & 1).reshape(*codes.shape[:-1], 4, 8).to(torch.int32)
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.int32, device=codes.device)
    return (bits * weights).sum(-1).to(torch.uint8)
