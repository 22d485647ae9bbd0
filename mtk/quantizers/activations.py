"""Dynamic activation quantization as W8A8 runtimes apply it to each quantized Linear's input, in torch: what the
verifier applies to its float model of the files' weights, so that it compares the runtime with the same
computation (conversion errors only), not with a model that skips the activations' rounding.

Per token (or per group of ``g`` values of a token): ``scale = max|x| / qmax`` (``qmax`` 448 for float8 e4m3,
127.5 for int8, compressed-tensors' symmetric ``max / (range / 2)``; a zero token gets the float32 eps), then
float8: ``clamp(x / scale, -448, 448)`` cast to e4m3; int8: ``clamp(round(x / scale), -128, 127)``; times ``scale``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mtk.quantizers.fp8 import FP8_DTYPE, FP8_MAX

INT8_QMAX = 127.5


def unchanged(x: torch.Tensor) -> torch.Tensor:
    """A scheme without input activations (weight-only)."""
    return x


def _scaled(x: torch.Tensor, group: int | None, qmax: float) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    shape = x.shape
    rows = x.reshape(*shape[:-1], -1, group) if group else x
    scale = rows.abs().amax(dim=-1, keepdim=True) / qmax
    scale = torch.where(scale == 0, torch.finfo(torch.float32).eps, scale)
    return rows, scale, shape


def fp8_dynamic(group: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Quantize-dequantize to float8 e4m3 per token (``group`` None) or per group of ``group`` values."""

    def qdq(x: torch.Tensor) -> torch.Tensor:
        rows, scale, shape = _scaled(x, group, FP8_MAX)
        q = (rows / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).to(x.dtype)
        return (q * scale).reshape(shape)

    return qdq


def int8_dynamic() -> Callable[[torch.Tensor], torch.Tensor]:
    """Quantize-dequantize to int8 per token."""

    def qdq(x: torch.Tensor) -> torch.Tensor:
        rows, scale, shape = _scaled(x, None, INT8_QMAX)
        return (torch.round(rows / scale).clamp(-128, 127) * scale).reshape(shape)

    return qdq
