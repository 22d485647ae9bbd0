"""SignRound (AutoRound's tuned rounding, ``quantizers.signround``): rounding offsets and min/max clipping learned
per decoder layer by signed gradient descent on the layer's output error; calibrated."""

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
class SignRoundConfig(MethodConfig):
    """AutoRound's defaults: ``signround_iters`` 200 signed-gradient steps per layer, learning rate
    ``signround_lr`` (0: ``1 / iters``) decaying linearly to 0, batches of ``signround_batch`` samples."""

    signround_iters: int = 200
    signround_lr: float = 0.0
    signround_batch: int = 8

    def __post_init__(self) -> None:
        if self.signround_iters < 1 or self.signround_batch < 1:
            raise ValueError("--signround-iters and --signround-batch must be >= 1")
        if not 0 <= self.signround_lr <= 1:
            raise ValueError(f"--signround-lr must be in [0, 1] (0: 1 / iters), got {self.signround_lr}")


def quantize_layer(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """Tune the layer's Linears together; the next layer's inputs come from it with its quantized weights."""
    from mtk.errors import UnsupportedError
    from mtk.quantizers.layerwise import next_inputs
    from mtk.quantizers.moe import expert_count
    from mtk.quantizers.plan import linear_names
    from mtk.quantizers.signround import signround_layer

    if expert_count(plan, lw.config):
        raise UnsupportedError("--method signround does not tune mixture-of-experts layers yet: use gptq or rtn")
    layer = lw.load_layer(i)
    names = [n for n in linear_names(plan) if n not in plan.optional or _has(layer, n)]
    # The float model's hidden states (the first layer's are its inputs), then this layer's float outputs on them:
    # the target, and the next layer's float inputs.
    floats = lw.carry.get("signround", inputs)
    lw.carry["signround"] = targets = next_inputs(layer, floats, kwargs, lw.device)
    opts = cfg.options
    result, _ = signround_layer(
        layer, names, inputs, targets, kwargs, lw.device, bits=cfg.bits, group_size=cfg.group_size,
        sym=bool(cfg.sym), iters=opts.signround_iters, lr=opts.signround_lr or None, batch=opts.signround_batch,
    )  # fmt: skip
    inputs[:] = next_inputs(layer, inputs, kwargs, lw.device)
    return LayerResult(result)


def _has(layer: Any, name: str) -> bool:
    try:
        layer.get_submodule(name)
    except AttributeError:
        return False
    return True


SIGNROUND = QUANTIZERS.add(
    "signround",
    QuantMethod(
        name="signround",
        summary="SignRound (AutoRound): rounding and clipping tuned by signed gradient descent",
        needs_calibration=True,
        bits=(2, 3, 4, 8),
        default_format="gptq",
        default_sym=True,
        options=SignRoundConfig,
        quantize_layer=quantize_layer,
    ),
)
