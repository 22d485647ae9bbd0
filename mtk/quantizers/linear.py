"""A quantized Linear as every method gives it and every checkpoint format packs it, and round to nearest (the
grid every method starts from, and the fallback of the calibrated ones)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtk.quantizers.grid import rtn


@dataclass
class QuantizedLinear:
    """Integer codes ``(out, in)``, per-group ``scale``/``zero`` ``(out, n_groups)`` and ``g_idx`` ``(in,)``.

    ``fallback`` says why the method's own result was not used or was changed ("" when it was), e.g. a MoE expert
    that no calibration token reached, rounded to nearest instead."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    fallback: str = ""

    def dequantize(self) -> torch.Tensor:
        g = self.g_idx.long()
        return self.scale[:, g] * (self.codes - self.zero[:, g])


def round_to_nearest(w: torch.Tensor, bits: int, group_size: int, sym: bool, fallback: str = "") -> QuantizedLinear:
    """RTN on GPTQ's grid (``grid.rtn``), natural groups."""
    codes, scale, zero = rtn(w, bits, group_size, sym)
    gs = w.shape[1] if group_size == -1 else group_size
    g_idx = (torch.arange(w.shape[1], device=w.device) // gs).to(torch.int32)
    return QuantizedLinear(codes, scale, zero, g_idx, fallback)
