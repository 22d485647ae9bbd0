"""HQQ: half-quadratic zero points (``quantizers.hqq``), calibration-free; asymmetric grids only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtk.errors import UsageError
from mtk.quantizers.methods import QUANTIZERS, LayerResult, MethodConfig, QuantMethod

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
    """Weights straight from the checkpoint, each group's grid fitted."""
    from mtk.quantizers.hqq import hqq_linear
    from mtk.quantizers.methods.rtn import from_checkpoint

    if cfg.sym:
        raise UsageError("HQQ fits zero points: it needs an asymmetric grid (drop --sym)")
    return from_checkpoint(lw, i, plan, lambda w: hqq_linear(w, cfg.bits, cfg.group_size))


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
