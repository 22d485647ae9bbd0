"""SmoothQuant (``quantizers.smoothquant``): smoothing folded into the norms, then int8 weights per channel, for
INT8 W8A8 (``compressed-tensors-int8``); calibrated on the activations' per-channel maxima."""

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
class SmoothQuantConfig(MethodConfig):
    """``smoothing_strength``: the migration strength ``a`` of ``s = max|X|^a / max|W|^(1-a)`` (0.5: the paper's and
    llm-compressor's default; higher moves more of the activations' range into the weights)."""

    smoothing_strength: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.smoothing_strength <= 1:
            raise ValueError(f"smoothing strength must be in [0, 1], got {self.smoothing_strength}")


def quantize_layer(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """Smooth and round; the next layer's inputs come from this layer in float (smoothing leaves its function as is)."""
    from mtk.quantizers.awq import layer_inputs
    from mtk.quantizers.smoothquant import smoothquant_layer

    layer = lw.load_layer(i)
    seen, outputs = layer_inputs(layer, plan, inputs, kwargs, lw.device)
    x_max = {name: channel_max(xs) for name, xs in seen.items() if xs}
    result = smoothquant_layer(layer, plan, x_max, cfg.smoothing_strength)
    inputs[:] = outputs
    # The norms and Linears hold the folded scales: write these, not the checkpoint's.
    return LayerResult(result, {name: p.detach() for name, p in layer.named_parameters()})


def channel_max(xs: list[torch.Tensor]) -> torch.Tensor:
    """Per-channel max ``|x|`` ``(in,)`` over input batches ``(..., in)``."""
    import torch

    return torch.stack([x.abs().reshape(-1, x.shape[-1]).amax(dim=0) for x in xs]).amax(dim=0)


SMOOTHQUANT = QUANTIZERS.add(
    "smoothquant",
    QuantMethod(
        name="smoothquant",
        summary="SmoothQuant: activation outliers folded into the norms, int8 weights (INT8 W8A8)",
        needs_calibration=True,
        bits=(8,),
        default_format="compressed-tensors-int8",
        default_sym=True,
        options=SmoothQuantConfig,
        quantize_layer=quantize_layer,
        formats=("compressed-tensors-int8",),
        default_bits=8,
        default_group_sizes={8: -1},
    ),
)
