"""HQQ: half-quadratic zero points (``quantizers.hqq``), calibration-free; asymmetric grids only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtk.errors import UsageError
from mtk.quantizers.methods import QUANTIZERS, LayerResult, MethodConfig, QuantMethod
from mtk.quantizers.plan import linear_names

if TYPE_CHECKING:
    import torch

    from mtk.converters.family import LayerPlan
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.layerwise import LayerwiseModel


@dataclass(frozen=True)
class HQQConfig(MethodConfig):
    """HQQ runs with its published defaults (p 0.7, beta 10, kappa 1.01, 20 steps): no options of its own."""


def quantize_layer(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """Weights straight from the checkpoint, each group's zero point fitted; the layer is never built."""
    import torch

    from mtk.quantizers.gptq import QuantizedLinear
    from mtk.quantizers.hqq import hqq
    from mtk.quantizers.moe import expert_count

    if cfg.sym:
        raise UsageError("HQQ fits zero points: it needs an asymmetric grid (drop --sym)")
    result = {}
    for name in linear_names(plan, expert_count(plan, lw.config)):
        w = lw.ckpt.get(f"{lw.layer_prefix(i)}{name}.weight").to(lw.device)
        codes, scale, zero = hqq(w, cfg.bits, cfg.group_size)
        gs = w.shape[1] if cfg.group_size == -1 else cfg.group_size
        g_idx = (torch.arange(w.shape[1], device=w.device) // gs).to(torch.int32)
        result[name] = QuantizedLinear(codes, scale, zero, g_idx)
    return LayerResult(result)


HQQ = QUANTIZERS.add(
    "hqq",
    QuantMethod(
        name="hqq",
        summary="half-quadratic zero points, no calibration",
        needs_calibration=False,
        bits=(2, 3, 4, 8),
        default_format="gptq",
        default_sym=False,
        options=HQQConfig,
        quantize_layer=quantize_layer,
    ),
)
