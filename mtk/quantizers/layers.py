"""What each model family's decoder layer looks like to the quantizers, as data.

``sequential`` lists the layer's Linear modules in groups that see the same input, in forward order (GPTQ's
true-sequential order: a later group is calibrated on the outputs of the already-quantized earlier ones).
``awq`` lists AWQ's scaling groups: the operation whose output feeds ``linears`` (``prev``), the module whose
output the scale search compares (``inspect``), and which rows of ``prev`` carry the scaled channels.

The norms of Gemma multiply by ``1 + weight`` (``norm_offset`` 1), which changes how a scale is folded in.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtk.errors import UnsupportedError


@dataclass(frozen=True)
class ScaleGroup:
    prev: str
    linears: tuple[str, ...]
    inspect: str
    # "all" rows of prev, or the "second_half" (Phi-3's fused gate_up_proj feeds down_proj through its up half).
    prev_rows: str = "all"


@dataclass(frozen=True)
class LayerPlan:
    sequential: tuple[tuple[str, ...], ...]
    awq: tuple[ScaleGroup, ...]
    norm_offset: float = 0.0
    # AutoAWQ leaves q/k out of the clipping search: their outputs meet in a softmax, not a sum.
    no_clip: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
_LLAMA = LayerPlan(
    sequential=(_QKV, ("self_attn.o_proj",), _GATE_UP, ("mlp.down_proj",)),
    awq=(
        ScaleGroup("input_layernorm", _QKV, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("post_attention_layernorm", _GATE_UP, "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
)
_GEMMA = LayerPlan(
    sequential=_LLAMA.sequential,
    awq=(
        ScaleGroup("input_layernorm", _QKV, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("pre_feedforward_layernorm", _GATE_UP, "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
    norm_offset=1.0,
)
_PHI3 = LayerPlan(
    sequential=(("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
    awq=(
        ScaleGroup("input_layernorm", ("self_attn.qkv_proj",), "self_attn"),
        ScaleGroup("post_attention_layernorm", ("mlp.gate_up_proj",), "mlp"),
        ScaleGroup("mlp.gate_up_proj", ("mlp.down_proj",), "mlp.down_proj", prev_rows="second_half"),
    ),
    no_clip=("self_attn.qkv_proj",),
)
# transformers model_type -> plan
LAYER_PLANS: dict[str, LayerPlan] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "phi3": _PHI3,
}


def layer_plan(model_type: str) -> LayerPlan:
    try:
        return LAYER_PLANS[model_type]
    except KeyError:
        known = ", ".join(sorted(LAYER_PLANS))
        raise UnsupportedError(
            f"mtk quantize does not support model type {model_type!r} (supported: {known})"
        ) from None
