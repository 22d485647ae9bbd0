"""GPTQ (Frantar et al., 2022): the method's options and registration; the math is mtk.quantizers.gptq."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from mtk.quantizers.methods import QUANTIZERS, LayerResult, MethodConfig, QuantMethod

if TYPE_CHECKING:
    import torch

    from mtk.converters.family import LayerPlan
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.layerwise import LayerwiseModel


CalibrationDtype = Literal["float32", "bfloat16"]


@dataclass(frozen=True)
class GPTQConfig(MethodConfig):
    """GPTQ's options. ``damp_percent`` is the Hessian dampening as a fraction of its mean diagonal; ``desc_act``
    quantizes columns in order of decreasing Hessian diagonal (act-order) and ``static_groups`` fixes the groups'
    scales before that reordering (so ``g_idx`` stays sorted and fast kernels apply). ``act_group_aware`` (the
    default unless ``desc_act`` or ``static_groups``, as in GPTQModel) orders columns inside each group and the
    groups by their Hessian diagonal while the groups stay contiguous, so ``g_idx`` stays natural.
    ``true_sequential`` calibrates each subset of a layer's Linears on the outputs of the quantized earlier ones.
    ``calibration_dtype`` is the dtype the layers run in while calibrating (their weights are cast to it before GPTQ
    reads them; the Hessian is accumulated in float32 either way): ``bfloat16`` is what GPTQModel does on CPU (its
    ``auto`` dtype), so mtk reproduces its results: on SmolLM2 (issue #17, 16 x 256 calibration tokens, damp 0.01)
    the two agree within 0.15% perplexity on four texts that way, where mtk's float32 differs from GPTQModel's
    bfloat16 by up to 6.5% on a held-out text (either sign, depending on the text and the dampening).
    """

    damp_percent: float = 0.01
    desc_act: bool = False
    static_groups: bool = False
    act_group_aware: bool | None = None
    true_sequential: bool = True
    calibration_dtype: CalibrationDtype = "float32"

    def __post_init__(self) -> None:
        if not 0 < self.damp_percent < 1:
            raise ValueError(f"damp_percent must be in (0, 1), got {self.damp_percent}")
        if self.calibration_dtype not in get_args(CalibrationDtype):
            raise ValueError(
                f"calibration_dtype is {' or '.join(get_args(CalibrationDtype))}, not {self.calibration_dtype!r}"
            )
        if self.act_group_aware and (self.desc_act or self.static_groups):
            raise ValueError("--act-group-aware excludes --desc-act and --static-groups")
        if self.act_group_aware is None:
            object.__setattr__(self, "act_group_aware", not self.desc_act and not self.static_groups)


def quantize_layer(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """GPTQ; the next layer's inputs come from this layer with its quantized weights (as in the paper)."""
    from mtk.quantizers.gptq import gptq_layer
    from mtk.quantizers.layerwise import next_inputs
    from mtk.quantizers.moe import expert_count

    layer = lw.load_layer(i)
    result, routed = gptq_layer(layer, plan, cfg, inputs, kwargs, lw.device, expert_count(plan, lw.config))
    inputs[:] = next_inputs(layer, inputs, kwargs, lw.device)
    return LayerResult(result, {name: p.detach() for name, p in layer.named_parameters()}, routed)


GPTQ = QUANTIZERS.add(
    "gptq",
    QuantMethod(
        name="gptq",
        summary="GPTQ, Hessian-based error compensation",
        needs_calibration=True,
        bits=(2, 3, 4, 8),
        default_format="gptq",
        default_sym=True,
        options=GPTQConfig,
        quantize_layer=quantize_layer,
    ),
)
