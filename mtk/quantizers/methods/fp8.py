"""FP8: float8 e4m3 weights with per-channel or per-block scales (``quantizers.fp8``), no calibration.

``--group-size -1`` is per output channel (compressed-tensors ``FP8_DYNAMIC``, vLLM's FP8 W8A8); ``--group-size b``
is ``b x b`` blocks (``FP8_BLOCK``; DeepSeek-V3's fine-grained FP8 at 128). Activations are quantized by the runtime
(dynamic: per token, or per group of ``b`` with blocks), so nothing is calibrated.
"""

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
class FP8Config(MethodConfig):
    """FP8 has no options of its own: the group size chooses per-channel (-1) or block scales."""


def quantize_layer(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """Weights straight from the checkpoint, cast to FP8 with their scales."""
    from mtk.quantizers.fp8 import fp8_linear
    from mtk.quantizers.methods.rtn import from_checkpoint

    return from_checkpoint(lw, i, plan, lambda w: fp8_linear(w, cfg.group_size))


FP8 = QUANTIZERS.add(
    "fp8",
    QuantMethod(
        name="fp8",
        summary="float8 e4m3 weights (W8A8 with dynamic activations), no calibration",
        needs_calibration=False,
        bits=(8,),
        default_format="compressed-tensors-fp8",
        default_sym=True,
        options=FP8Config,
        quantize_layer=quantize_layer,
        formats=("compressed-tensors-fp8", "fp8"),
        default_bits=8,
        default_group_sizes={8: -1},
    ),
)
