"""Qwen2, Qwen3, Qwen2-MoE and Qwen3-MoE: NEOX RoPE (no Q/K permutation); Qwen2 has Q/K/V biases, Qwen3
Q/K norms; the MoE ones routed experts (Qwen2-MoE also a gated shared expert)."""

from __future__ import annotations

from typing import Any

from mtk.converters.family import (
    COMMON_HPARAMS,
    FUSED_EXPERTS,
    LLAMA_PLAN,
    LLAMA_TENSORS,
    QKV,
    ExpertPlan,
    Family,
    LayerPlan,
    Metadata,
    ScaleGroup,
    TinyModel,
    register,
)
from mtk.errors import UnsupportedError

QWEN2 = register(
    Family(
        "qwen2",
        "Qwen2ForCausalLM",
        "qwen2",
        LLAMA_TENSORS,
        layer_plan=LLAMA_PLAN,
        # Q/K/V biases, GQA, an untied head (the 0.5B and 1.5B sizes tie theirs).
        tiny=(TinyModel("qwen2", "Qwen/Qwen2.5-7B", "qwen2", "bpe"),),
    )
)

QWEN3 = register(
    Family(
        "qwen3",
        "Qwen3ForCausalLM",
        "qwen3",
        {
            **LLAMA_TENSORS,
            "blk.{bid}.attn_q_norm.weight": "model.layers.{bid}.self_attn.q_norm.weight",
            "blk.{bid}.attn_k_norm.weight": "model.layers.{bid}.self_attn.k_norm.weight",
        },
        layer_plan=LLAMA_PLAN,
        # An explicit head_dim in the config, per-head Q/K norms, an untied head.
        tiny=(TinyModel("qwen3", "Qwen/Qwen3-8B", "qwen3", "bpe", {"head_dim": 16}),),
    )
)

_DENSE_FFN = {"blk.{bid}.ffn_gate.weight", "blk.{bid}.ffn_up.weight", "blk.{bid}.ffn_down.weight"}
# The per-expert layout transformers saves (and the Hub's checkpoints hold).
QWEN_EXPERTS = {
    "blk.{bid}.ffn_gate_exps.weight": "model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight",
    "blk.{bid}.ffn_up_exps.weight": "model.layers.{bid}.mlp.experts.{xid}.up_proj.weight",
    "blk.{bid}.ffn_down_exps.weight": "model.layers.{bid}.mlp.experts.{xid}.down_proj.weight",
}

_SHARED = ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj")
_EXPERT = ("mlp.experts.{xid}.gate_proj", "mlp.experts.{xid}.up_proj")
# Routed experts ({xid}) beside a shared expert; the router and the shared expert's sigmoid gate stay float.
# transformers 5 fuses the experts (mlp.experts.gate_up_proj, down_proj); checkpoints keep them per expert.
QWEN2MOE_PLAN = LayerPlan(
    sequential=(
        QKV,
        ("self_attn.o_proj",),
        _SHARED,
        _EXPERT,
        ("mlp.shared_expert.down_proj",),
        ("mlp.experts.{xid}.down_proj",),
    ),
    awq=(
        ScaleGroup("input_layernorm", QKV, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        # The shared expert first: it sees every token, so its input is the norm's whole output.
        ScaleGroup(
            "post_attention_layernorm", _SHARED + _EXPERT, "mlp", compensate=("mlp.gate", "mlp.shared_expert_gate")
        ),
        ScaleGroup("mlp.shared_expert.up_proj", ("mlp.shared_expert.down_proj",), "mlp.shared_expert.down_proj"),
        ScaleGroup("mlp.experts.{xid}.up_proj", ("mlp.experts.{xid}.down_proj",), "mlp.experts.{xid}.down_proj"),
    ),
    experts=ExpertPlan(keep_float=("mlp.gate", "mlp.shared_expert_gate")),
)

# Quantized as compressed-tensors only: GPTQModel's own per-expert checkpoint does not load back in transformers 5
# on the CPU (README).
QWEN2MOE = register(
    Family(
        "qwen2moe",
        "Qwen2MoeForCausalLM",
        "qwen2_moe",
        {
            **{k: v for k, v in LLAMA_TENSORS.items() if k not in _DENSE_FFN},
            "blk.{bid}.ffn_gate_inp.weight": "model.layers.{bid}.mlp.gate.weight",
            "blk.{bid}.ffn_gate_shexp.weight": "model.layers.{bid}.mlp.shared_expert.gate_proj.weight",
            "blk.{bid}.ffn_up_shexp.weight": "model.layers.{bid}.mlp.shared_expert.up_proj.weight",
            "blk.{bid}.ffn_down_shexp.weight": "model.layers.{bid}.mlp.shared_expert.down_proj.weight",
            "blk.{bid}.ffn_gate_inp_shexp.weight": "model.layers.{bid}.mlp.shared_expert_gate.weight",
        },
        hparams={
            **COMMON_HPARAMS,
            "expert_count": "num_experts",
            "expert_used_count": "num_experts_per_tok",
            "expert_feed_forward_length": "moe_intermediate_size",
            "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
        },
        expert_tensors=QWEN_EXPERTS,
        fused_tensors=FUSED_EXPERTS,
        layer_plan=QWEN2MOE_PLAN,
        tiny=(
            # Routed experts plus a gated shared expert wider than each routed one.
            TinyModel(
                "qwen2moe",
                "Qwen/Qwen1.5-MoE-A2.7B",
                "qwen2_moe",
                "bpe",
                {
                    "num_experts": 4,
                    "num_experts_per_tok": 2,
                    "moe_intermediate_size": 32,
                    "shared_expert_intermediate_size": 64,
                },
            ),
        ),
    )
)


def _qwen3moe_gguf(config: Any) -> dict[str, Any]:
    """Refuses what llama.cpp's qwen3moe cannot run: it makes every layer MoE and always renormalises the
    chosen experts' weights (Qwen3-30B-A3B and Qwen3-235B-A22B: decoder_sparse_step 1, no mlp_only_layers,
    norm_topk_prob true)."""
    if list(getattr(config, "mlp_only_layers", None) or []) or getattr(config, "decoder_sparse_step", 1) != 1:
        raise UnsupportedError(
            "Qwen3-MoE with dense layers (mlp_only_layers or decoder_sparse_step > 1) is not supported: "
            "llama.cpp's qwen3moe makes every layer MoE"
        )
    if not getattr(config, "norm_topk_prob", False):
        raise UnsupportedError(
            "Qwen3-MoE with norm_topk_prob false is not supported: llama.cpp's qwen3moe renormalises the top-k weights"
        )
    return {}


def _qwen3moe_config(meta: Metadata, arch: str) -> dict[str, Any]:
    return {"norm_topk_prob": True}  # the config class defaults to false; llama.cpp always renormalises


# No layer plan yet, so quantize refuses it (see Qwen2-MoE).
QWEN3MOE = register(
    Family(
        "qwen3moe",
        "Qwen3MoeForCausalLM",
        "qwen3_moe",
        {
            **{k: v for k, v in QWEN3.tensors.items() if k not in _DENSE_FFN},
            "blk.{bid}.ffn_gate_inp.weight": "model.layers.{bid}.mlp.gate.weight",
        },
        hparams={
            **COMMON_HPARAMS,
            "expert_count": "num_experts",
            "expert_used_count": "num_experts_per_tok",
            "expert_feed_forward_length": "moe_intermediate_size",
        },
        expert_tensors=QWEN_EXPERTS,
        fused_tensors=FUSED_EXPERTS,
        extra_config=_qwen3moe_config,
        export_config=_qwen3moe_gguf,
        tiny=(
            # Every layer MoE with renormalised top-k weights, Q/K norms, an explicit head_dim, RoPE base 1e6,
            # no shared expert (the real one: 128 experts, 8 per token, 768 wide beside a dense width of 6144).
            TinyModel(
                "qwen3moe",
                "Qwen/Qwen3-30B-A3B",
                "qwen3_moe",
                "bpe",
                {
                    "head_dim": 16,
                    "num_experts": 8,
                    "num_experts_per_tok": 2,
                    "moe_intermediate_size": 32,
                    "norm_topk_prob": True,
                    "decoder_sparse_step": 1,
                    "mlp_only_layers": [],
                    "rope_theta": 1e6,
                },
            ),
        ),
    )
)
