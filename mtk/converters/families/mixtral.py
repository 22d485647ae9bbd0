"""Mixtral: llama.cpp's ``llama`` architecture with experts (it tells the two apart by ``llama.expert_count``),
so NORM RoPE and Q/K rows permuted as llama; a router and 8 experts per layer, no shared expert."""

from __future__ import annotations

from typing import Any

from mtk.converters.family import (
    COMMON_HPARAMS,
    FUSED_EXPERTS,
    LLAMA_TENSORS,
    QKV,
    ExpertPlan,
    Family,
    LayerPlan,
    ScaleGroup,
    TinyModel,
    register,
)
from mtk.converters.rope import RopeLayout
from mtk.errors import UnsupportedError

_DENSE_FFN = ("blk.{bid}.ffn_gate.", "blk.{bid}.ffn_up.", "blk.{bid}.ffn_down.")


def _mixtral_gguf(config: Any) -> dict[str, Any]:
    """llama.cpp's llama architecture has no sliding window: refuse one rather than drop it (Mixtral-8x7B and
    8x22B have none)."""
    if getattr(config, "sliding_window", None):
        raise UnsupportedError(
            f"Mixtral with sliding_window {config.sliding_window} is not supported: llama.cpp's llama has no window"
        )
    return {}


_W1_W3 = ("mlp.experts.{xid}.w1", "mlp.experts.{xid}.w3")
# The module tree's names (transformers 5 renames block_sparse_moe to mlp in memory); checkpoints keep
# block_sparse_moe (ExpertPlan.stored). Written as compressed-tensors, as every MoE model (README).
MIXTRAL_PLAN = LayerPlan(
    sequential=(QKV, ("self_attn.o_proj",), _W1_W3, ("mlp.experts.{xid}.w2",)),
    awq=(
        ScaleGroup("input_layernorm", QKV, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("post_attention_layernorm", _W1_W3, "mlp", compensate=("mlp.gate",)),
        ScaleGroup("mlp.experts.{xid}.w3", ("mlp.experts.{xid}.w2",), "mlp.experts.{xid}.w2"),
    ),
    experts=ExpertPlan(count="num_local_experts", linears=("w1", "w3", "w2"), stored=(("mlp.", "block_sparse_moe."),)),
)

MIXTRAL = register(
    Family(
        gguf_arch="llama",
        name="mixtral",
        hf_architecture="MixtralForCausalLM",
        model_type="mixtral",
        tensors={
            **{k: v for k, v in LLAMA_TENSORS.items() if not k.startswith(_DENSE_FFN)},
            "blk.{bid}.ffn_gate_inp.weight": "model.layers.{bid}.block_sparse_moe.gate.weight",
        },
        hparams={**COMMON_HPARAMS, "expert_count": "num_local_experts", "expert_used_count": "num_experts_per_tok"},
        permute_qk=True,
        # The Hub's (and transformers' saved) layout: w1 gate, w3 up, w2 down, under block_sparse_moe.
        expert_tensors={
            "blk.{bid}.ffn_gate_exps.weight": "model.layers.{bid}.block_sparse_moe.experts.{xid}.w1.weight",
            "blk.{bid}.ffn_up_exps.weight": "model.layers.{bid}.block_sparse_moe.experts.{xid}.w3.weight",
            "blk.{bid}.ffn_down_exps.weight": "model.layers.{bid}.block_sparse_moe.experts.{xid}.w2.weight",
        },
        # transformers 5 in memory renames block_sparse_moe to mlp, the router with it.
        fused_tensors={"model.layers.{bid}.mlp.gate.weight": ("blk.{bid}.ffn_gate_inp.weight",), **FUSED_EXPERTS},
        export_config=_mixtral_gguf,
        rope=RopeLayout(freq_factors=True),  # the llama loader reads rope_freqs.weight
        layer_plan=MIXTRAL_PLAN,
        tiny=(
            # 8 experts, 2 per token (llama.cpp's 8-expert quantize rules apply), no sliding window, RoPE base
            # 1e6, GQA, SentencePiece vocabulary, an untied head.
            TinyModel(
                "mixtral",
                "mistralai/Mixtral-8x7B-v0.1",
                "mixtral",
                "spm",
                {"num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": None, "rope_theta": 1e6},
            ),
        ),
    )
)
