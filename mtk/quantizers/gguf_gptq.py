"""GPTQ error compensation on llama.cpp's own block grids: a Linear weight encoded as ordinary GGUF blocks.

GGUF cuts each row (an output channel) into blocks along the input dimension, so GPTQ's natural column order
is the block order. One block of columns at a time (32 values for Q8_0, the legacy types and IQ4_NL; a whole
256-value super-block for the K-quants and IQ4_XS, whose super-block scale depends on all its sub-blocks):

1. the block's head (scales, mins, super-block scale) is fitted by llama.cpp's own search (mtk's ports in
   :mod:`mtk.kernels`) on the block's columns as the earlier blocks' errors left them, for all rows at once,
   with the importance weights when given;
2. on that fixed grid (:func:`mtk.kernels.codes.levels`) each column in turn is rounded to the nearest level of
   its position, and its error is spread over the later columns through the inverse Hessian's upper Cholesky
   factor, inside the block and (lazily, once the block is done) beyond it, as in GPTQ's Algorithm 1;
3. the chosen codes are written under the fitted head (:func:`mtk.kernels.codes.with_codes`).

The result is plain GGUF bytes, whose decoding is exactly the weights the compensation worked with. Rows are
independent (each row's error only moves along that row), so they are processed in chunks that bound the
level table's memory. :func:`gptq_or_plain` keeps, per tensor, whichever of the compensated and the plain
(importance-weighted) encoding has the lower Hessian-weighted output error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from gguf import GGMLQuantizationType

from mtk.errors import UnsupportedError
from mtk.kernels import codes, legacy_importance, types
from mtk.kernels.dequant import dequantize
from mtk.kernels.quantize import quantize
from mtk.quantizers.gptq import HessianError, inverse_factor

# Level-table values per chunk of rows (rows * sub-blocks * n_codes): 16 MiB of float32.
LEVEL_VALUES = 1 << 22
DAMP_PERCENT = 0.01

# float32 (rows, block_size) columns of one block and its first column -> uint8 (rows, type_size) blocks
FitFn = Callable[[torch.Tensor, int, slice], torch.Tensor]
Method = Literal["gptq", "importance"]


@dataclass(frozen=True)
class Encoded:
    """One tensor's GGUF bytes ``data`` uint8 ``(out, row_bytes)`` and ``weight`` float32 ``(out, in)``, what
    they decode to; ``damped``: how many times dampening grew tenfold before the Hessian was positive definite."""

    data: torch.Tensor
    weight: torch.Tensor
    damped: int = 0


def gptq_encode(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    qtype: GGMLQuantizationType,
    importance: torch.Tensor | None = None,
    *,
    damp_percent: float = DAMP_PERCENT,
) -> Encoded:
    """Encode ``weight`` ``(out, in)`` as ``qtype`` with GPTQ's error feedback against ``hessian`` ``(in, in)``
    (``X^T X`` of the layer's inputs, any positive scale), fitting each block on llama.cpp's grid.

    ``importance`` ``(in,)``: llama.cpp's imatrix values (mean squared activations) for the block fits, or None.
    Neither input is modified. Raises ``UnsupportedError`` for a type without a code layout or rows that are not
    whole blocks, ``HessianError`` when the Hessian stays singular under dampening.
    """
    entry = types.writable(qtype)
    layout = codes.code_bytes(qtype)
    w = weight.detach().float().clone()
    rows, cols = w.shape
    if cols % entry.block_size:
        raise UnsupportedError(f"{qtype.name} needs rows of whole {entry.block_size}-value blocks, got {cols}")
    if tuple(hessian.shape) != (cols, cols):
        raise UnsupportedError(f"the Hessian must be ({cols}, {cols}), got {tuple(hessian.shape)}")
    h = hessian.detach().float().clone().to(w.device)
    # A column no input reached gets a unit diagonal: its factor row is then diagonal, so it is rounded on its
    # grid and moves no other column (GPTQ zeroes such columns; here the weight is kept for other inputs).
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    hinv, damped = inverse_factor(h, damp_percent)
    fit = _fitter(qtype, w, None if importance is None else importance.float().to(w.device))
    step = max(1, LEVEL_VALUES // (entry.block_size // layout.group * layout.n_codes))
    data = torch.empty((rows, cols // entry.block_size * entry.type_size), dtype=torch.uint8, device=w.device)
    for r in range(0, rows, step):
        part = slice(r, min(r + step, rows))
        data[part], w[part] = _compensate(w[part], hinv, fit, qtype, part)
    return Encoded(data, w, damped)


def _fitter(qtype: GGMLQuantizationType, w: torch.Tensor, importance: torch.Tensor | None) -> FitFn:
    """How a block of columns is fitted: the type's plain encoder, with the block's importance where it takes
    some. The legacy types' importance weights use the whole row's ``sigma2``, as llama.cpp computes it per row,
    taken from the weights before compensation."""
    entry = types.writable(qtype)
    size = entry.block_size
    if importance is not None and entry.importance is types.Importance.SEPARATE:
        sigma2 = legacy_importance.row_sigma2(w)

        def fit_legacy(x: torch.Tensor, start: int, part: slice) -> torch.Tensor:
            return legacy_importance.encode_rows(x, importance[start : start + size], qtype, sigma2[part])

        return fit_legacy

    def fit(x: torch.Tensor, start: int, part: slice) -> torch.Tensor:
        imp = None if importance is None else importance[start : start + size]
        return quantize(x.contiguous(), qtype, importance=imp)

    return fit


def _compensate(
    w: torch.Tensor, hinv: torch.Tensor, fit: FitFn, qtype: GGMLQuantizationType, part: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ over the rows ``w`` ``(n, in)`` (updated in place): returns their bytes and their decoded weights."""
    entry = types.get(qtype)
    size, cols, group = entry.block_size, w.shape[1], codes.code_bytes(qtype).group
    out = torch.empty((w.shape[0], cols // size, entry.type_size), dtype=torch.uint8, device=w.device)
    w_hat = torch.empty_like(w)
    for b, i1 in enumerate(range(0, cols, size)):
        i2 = i1 + size
        head = fit(w[:, i1:i2], i1, part)
        grid = codes.levels(head, qtype).transpose(0, 1).contiguous()  # (sub-blocks, n, n_codes)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        chosen = torch.empty(w1.shape, dtype=torch.int64, device=w.device)
        for i in range(size):
            x, lv = w1[:, i], grid[i // group]
            k = (lv - x[:, None]).abs().argmin(1)  # the first of equally near levels: deterministic
            q = lv.gather(1, k[:, None])[:, 0]
            chosen[:, i], w_hat[:, i1 + i] = k, q
            e = (x - q) / h1[i, i]
            w1[:, i:].addr_(e, h1[i, i:], alpha=-1)
            err[:, i] = e
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
        out[:, b] = codes.with_codes(head, chosen, qtype)
    return out.reshape(w.shape[0], -1), w_hat


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)^T)``: with ``H = X^T X`` the squared output error ``||(W - Q) X^T||^2`` (float64)."""
    e = (weight.double() - approx.double()).to(hessian.device)
    return float(((e @ hessian.double()) * e).sum())


@dataclass(frozen=True)
class Choice:
    """The encoding kept for one tensor, the method that made it, and both candidates' output errors
    (``errors["gptq"]`` is absent when compensation failed; ``why`` says so)."""

    encoded: Encoded
    method: Method
    errors: dict[str, float]
    why: str = ""


def plain_encode(weight: torch.Tensor, qtype: GGMLQuantizationType, importance: torch.Tensor | None = None) -> Encoded:
    """The ordinary (importance-weighted, when given) encoding of ``weight``, as ``gguf-export`` writes it."""
    data = quantize(weight.detach().float(), qtype, importance=importance)
    return Encoded(data, dequantize(data, qtype, tuple(weight.shape)))


def gptq_or_plain(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    qtype: GGMLQuantizationType,
    importance: torch.Tensor | None = None,
    *,
    damp_percent: float = DAMP_PERCENT,
) -> Choice:
    """:func:`gptq_encode` or :func:`plain_encode`, whichever has the lower :func:`output_error` against
    ``hessian``; the plain encoding on a tie, or when the Hessian stays singular."""
    plain = plain_encode(weight, qtype, importance)
    errors = {"importance": output_error(weight, plain.weight, hessian)}
    try:
        compensated = gptq_encode(weight, hessian, qtype, importance, damp_percent=damp_percent)
    except HessianError as e:
        return Choice(plain, "importance", errors, str(e))
    errors["gptq"] = output_error(weight, compensated.weight, hessian)
    if errors["gptq"] < errors["importance"]:
        return Choice(compensated, "gptq", errors)
    return Choice(plain, "importance", errors, "compensation did not lower the output error")
