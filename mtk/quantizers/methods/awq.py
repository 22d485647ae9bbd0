"""AWQ (Lin et al., 2023): the method's options and registration; the math is mtk.quantizers.awq."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtk.quantizers.methods import QUANTIZERS, LayerResult, MethodConfig, QuantMethod

if TYPE_CHECKING:
    import torch

    from mtk.converters.family import LayerPlan
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.layerwise import LayerwiseModel


@dataclass(frozen=True)
class AWQConfig(MethodConfig):
    """AWQ has no options of its own: its search grids are AutoAWQ's (``awq.N_GRID``, ``awq.MAX_SHRINK``), and its
    grid always has a zero point fitted on each group's min..max."""


def quantize_layer(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """AWQ; the next layer's inputs come from this layer in float, before scaling (as AutoAWQ does)."""
    from mtk.quantizers.awq import awq_layer, layer_inputs
    from mtk.quantizers.moe import calibrating, expert_count

    layer = lw.load_layer(i)
    n = expert_count(plan, lw.config)
    with calibrating(layer, cfg.moe_calibration) as experts:
        seen, outputs = layer_inputs(layer, plan, inputs, kwargs, lw.device, n)
        routed = [c for m in experts for c in m.routed] if experts else None
    attn = layer.get_submodule(plan.mixer)
    result = awq_layer(layer, plan, seen, lambda m: kwargs if m is attn else {}, cfg.bits, cfg.group_size, n)
    inputs[:] = outputs
    # The norms and previous Linears now hold the folded scales: write these, not the checkpoint's.
    return LayerResult(result, {name: p.detach() for name, p in layer.named_parameters()}, routed)


AWQ = QUANTIZERS.add(
    "awq",
    QuantMethod(
        name="awq",
        summary="activation-aware scales and clipping",
        needs_calibration=True,
        bits=(4,),
        default_format="awq",
        default_sym=False,
        options=AWQConfig,
        quantize_layer=quantize_layer,
    ),
)
