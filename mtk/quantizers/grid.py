"""Integer grids for weight groups: fit a scale and zero point, round to codes, and back.

A grid maps codes ``q`` in ``[0, 2**bits - 1]`` to ``scale * (q - zero)``. Two fits are used:

- GPTQ's (also RTN's): the range always contains 0 (``min(w.min(), 0)`` .. ``max(w.max(), 0)``), zero points
  are at least 1 (see ``fit_gptq``); symmetric
  grids put the zero point at ``2**(bits-1)`` and use ``max|w|``. This is what AutoGPTQ/GPTQModel checkpoints
  assume (their v1 ``qzeros`` store ``zero - 1``).
- AWQ's: the plain ``min .. max`` of the group with the zero point clamped into the code range (AutoAWQ's
  ``pseudo_quantize_tensor``), and a scale floor of 1e-5 for constant groups.

All functions work on float32 ``(rows, cols)`` tensors with one grid per row (the caller reshapes groups
into rows) and return float32 tensors; ``zero`` holds integers.
"""

from __future__ import annotations

import torch


def max_code(bits: int) -> int:
    return (1 << bits) - 1


def fit_gptq(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero ``(rows,)`` for each row of ``w`` ``(rows, cols)``, GPTQ's min-max fit."""
    maxq = max_code(bits)
    zero_t = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    lo = torch.minimum(w.amin(dim=1), zero_t)
    hi = torch.maximum(w.amax(dim=1), zero_t)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    empty = (lo == 0) & (hi == 0)
    lo = torch.where(empty, -1.0, lo)
    hi = torch.where(empty, 1.0, hi)
    scale = (hi - lo) / maxq
    if sym:
        return scale, torch.full_like(scale, (maxq + 1) / 2)
    # v1 checkpoints store zero - 1, so a zero point of 0 cannot be written; 1 costs one code at the top of
    # the range only for groups with no negative weight.
    return scale, torch.clamp(torch.round(-lo / scale), 1, maxq)


def fit_awq(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero ``(rows,)`` for each row of ``w``, AutoAWQ's asymmetric fit."""
    maxq = max_code(bits)
    hi, lo = w.amax(dim=1), w.amin(dim=1)
    scale = (hi - lo).clamp(min=1e-5) / maxq
    zero = torch.clamp(-torch.round(lo / scale), 0, maxq)
    return scale, zero


def to_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (float32, integer-valued) of ``w`` ``(rows, cols)`` on the per-row grids ``(rows,)``."""
    return torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], 0, max_code(bits))


def from_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale[:, None] * (q - zero[:, None])


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(out, in)`` -> ``(out * n_groups, group_size)``: one row per (output channel, input group)."""
    out, cols = w.shape
    g = cols if group_size == -1 else group_size
    return w.reshape(out * (cols // g), g)


def rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest: codes ``(out, in)`` and scale/zero ``(out, n_groups)`` with GPTQ's fit."""
    out, cols = w.shape
    rows = grouped(w.float(), group_size)
    scale, zero = fit_gptq(rows, bits, sym)
    q = to_codes(rows, scale, zero, bits).reshape(out, cols)
    return q, scale.reshape(out, -1), zero.reshape(out, -1)
