"""RTN: round to nearest on GPTQ's min-max grid (``grid.rtn``); no calibration, no forward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtk.quantizers.methods import QUANTIZERS, LayerResult, MethodConfig, QuantMethod
from mtk.quantizers.plan import linear_names

if TYPE_CHECKING:
    import torch

    from mtk.converters.family import LayerPlan
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.layerwise import LayerwiseModel
    from mtk.quantizers.linear import QuantizedLinear


@dataclass(frozen=True)
class RTNConfig(MethodConfig):
    """RTN has no options of its own: bits, group size and grid are the shared settings."""


def from_checkpoint(
    lw: LayerwiseModel, i: int, plan: LayerPlan, fit: Callable[[torch.Tensor], QuantizedLinear]
) -> LayerResult:
    """Layer ``i``'s Linears fitted one by one by ``fit`` from the checkpoint's weights (the calibration-free
    methods): the layer is never built."""
    from mtk.quantizers.moe import expert_count

    result = {}
    for name in linear_names(plan, expert_count(plan, lw.config)):
        stored = lw.checkpoint_name(f"{lw.layer_prefix(i)}{name}.weight")
        if name in plan.optional and stored not in lw.ckpt:
            continue  # a layer without it (Gemma 4's KV-sharing layers)
        result[name] = fit(lw.ckpt.get(stored).to(lw.device))
    return LayerResult(result)


def quantize_layer(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """Weights straight from the checkpoint, rounded."""
    from mtk.quantizers.linear import round_to_nearest

    return from_checkpoint(lw, i, plan, lambda w: round_to_nearest(w, cfg.bits, cfg.group_size, bool(cfg.sym)))


RTN = QUANTIZERS.add(
    "rtn",
    QuantMethod(
        name="rtn",
        summary="round to nearest, no calibration",
        needs_calibration=False,
        bits=(2, 3, 4, 8),
        default_format="gptq",
        default_sym=True,
        options=RTNConfig,
        quantize_layer=quantize_layer,
    ),
)
