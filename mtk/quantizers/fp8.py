"""FP8 weights: float8 e4m3 values with float32 scales, one per output channel or one per ``b x b`` block.

The grid (what ``--method fp8`` computes, for every FP8 format): over each output channel (``block`` -1) or each
``b x b`` block of the weight ``(out, in)``, ``scale = amax / 448`` (448: e4m3's largest finite value; an all-zero
channel or block gets ``finfo(float32).eps``), and each value is ``clamp(w / scale, -448, 448)`` cast to
``float8_e4m3fn`` (round to nearest even); the weight is ``value * scale``. All in float32. This is compressed-tensors
0.20's arithmetic (``calculate_qparams`` for a symmetric float scheme, then ``quantize``: divide, clamp, cast) and
DeepSeek-V3's reference block quantizer's (``s = amax / 448``, ``x / s``).

As a ``QuantizedLinear``: ``codes`` the e4m3 values as float32 ``(out, in)``, ``scale`` ``(out, n)`` float32 with
``n`` = 1 (per channel) or ``in / b`` (a block's scale repeated on each of its ``b`` rows), ``zero`` 0, natural
``g_idx``. The formats store ``weight`` as ``float8_e4m3fn`` and the scales per channel ``(out, 1)`` or per block
``(out / b, in / b)`` (``stored_scale``), under their own names.
"""

from __future__ import annotations

import torch

from mtk.errors import UsageError
from mtk.quantizers.linear import QuantizedLinear

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def fp8_linear(w: torch.Tensor, block: int) -> QuantizedLinear:
    """``w`` ``(out, in)`` on the FP8 grid: per output channel (``block`` -1) or per ``block x block`` tile (both
    dimensions multiples of ``block``)."""
    w = w.float()
    out, cols = w.shape
    if block == -1:
        amax = w.abs().amax(dim=1, keepdim=True)
        group = cols
    else:
        amax = w.abs().reshape(out // block, block, cols // block, block).amax(dim=(1, 3))
        amax = amax.repeat_interleave(block, dim=0)
        group = block
    scale = amax / FP8_MAX
    scale = torch.where(scale == 0, torch.finfo(torch.float32).eps, scale)
    g_idx = torch.arange(cols, device=w.device) // group
    values = (w / scale[:, g_idx]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float()
    return QuantizedLinear(values, scale, torch.zeros_like(scale), g_idx.to(torch.int32))


def stored_scale(q: QuantizedLinear, block: int) -> torch.Tensor:
    """The scales as the formats store them: ``(out, 1)`` per channel, ``(out / b, in / b)`` per block."""
    return (q.scale if block == -1 else q.scale[::block]).contiguous()


def scale_shape(out: int, cols: int, block: int) -> tuple[int, int]:
    return (out, 1) if block == -1 else (out // block, cols // block)


def dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights of a stored FP8 ``weight`` and its per-channel ``(out, 1)`` or per-block scales."""
    values = weight.float()
    out, cols = values.shape
    rows, n = scale.shape
    if n == 1:
        return values * scale.float()
    return values * scale.float().repeat_interleave(out // rows, dim=0).repeat_interleave(cols // n, dim=1)


def check_blocks(name: str, out: int, cols: int, block: int) -> None:
    """Refuse a Linear ``(out, in)`` whose output width does not tile into ``block`` rows (the engine checks the
    input width against the group size)."""
    if block != -1 and out % block:
        raise UsageError(
            f"{name}: output width {out} is not a multiple of the FP8 block size {block} (choose a --group-size "
            "that divides every Linear's width, e.g. 64, or -1 for per-channel scales)"
        )
