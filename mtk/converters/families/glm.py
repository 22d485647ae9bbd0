"""GLM-4.5 and GLM-4.5-Air (``glm4_moe``, llama.cpp's ``glm4moe``): NEOX RoPE over the first half of each head
(partial_rotary_factor 0.5), Q/K/V biases, dense leading layers (first_k_dense_replace) before MoE layers that
route with a sigmoid plus a per-expert selection bias (``e_score_correction_bias``, llama.cpp's ``exp_probs_b``)
beside always-on shared experts, and multi-token prediction layers past num_hidden_layers that transformers
drops at load (gguf-export skips them too; llama.cpp runs the model without them)."""

from __future__ import annotations

from typing import Any

from mtk.converters.families.qwen import QWEN_EXPERTS
from mtk.converters.family import (
    COMMON_HPARAMS,
    FUSED_EXPERTS,
    LLAMA_TENSORS,
    Family,
    Metadata,
    TinyModel,
    register,
)
from mtk.errors import UnsupportedError

SIGMOID = 2  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID ({arch}.expert_gating_func)
_SHEXP = "model.layers.{bid}.mlp.shared_experts"


def _glm4moe_gguf(config: Any) -> dict[str, Any]:
    """The keys llama.cpp's glm4moe reads besides the table's; refuses expert groups, which it does not do."""
    if (getattr(config, "n_group", 1) or 1) > 1 or (getattr(config, "topk_group", 1) or 1) > 1:
        raise UnsupportedError(
            f"GLM-4.5 MoE with expert groups (n_group {config.n_group}, topk_group {config.topk_group}) is not "
            "supported: llama.cpp's glm4moe picks experts from all of them"
        )
    return {"expert_gating_func": SIGMOID, "expert_weights_norm": bool(config.norm_topk_prob)}


def _glm4moe_config(meta: Metadata, arch: str) -> dict[str, Any]:
    gating = meta.get(f"{arch}.expert_gating_func", SIGMOID)
    if gating != SIGMOID:
        raise UnsupportedError(f"glm4moe GGUF with expert_gating_func {gating}: GLM-4.5 routes with a sigmoid")
    return {
        "norm_topk_prob": bool(meta.get(f"{arch}.expert_weights_norm", False)),
        "routed_scaling_factor": float(meta.get(f"{arch}.expert_weights_scale", 1.0) or 1.0),
        "n_group": 1,  # what llama.cpp's glm4moe computes, whatever expert_group_count says
        "topk_group": 1,
        "num_nextn_predict_layers": 0,
    }


GLM4MOE = register(
    Family(
        "glm4moe",
        "Glm4MoeForCausalLM",
        "glm4_moe",
        {
            **{k: v for k, v in LLAMA_TENSORS.items() if k != "blk.{bid}.ffn_norm.weight"},
            "blk.{bid}.post_attention_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
            "blk.{bid}.attn_q_norm.weight": "model.layers.{bid}.self_attn.q_norm.weight",
            "blk.{bid}.attn_k_norm.weight": "model.layers.{bid}.self_attn.k_norm.weight",
            "blk.{bid}.ffn_gate_inp.weight": "model.layers.{bid}.mlp.gate.weight",
            "blk.{bid}.exp_probs_b.bias": "model.layers.{bid}.mlp.gate.e_score_correction_bias",
            "blk.{bid}.ffn_gate_shexp.weight": f"{_SHEXP}.gate_proj.weight",
            "blk.{bid}.ffn_up_shexp.weight": f"{_SHEXP}.up_proj.weight",
            "blk.{bid}.ffn_down_shexp.weight": f"{_SHEXP}.down_proj.weight",
        },
        hparams={
            **COMMON_HPARAMS,
            "expert_count": "n_routed_experts",
            "expert_used_count": "num_experts_per_tok",
            "expert_feed_forward_length": "moe_intermediate_size",
            "expert_shared_count": "n_shared_experts",
            "leading_dense_block_count": "first_k_dense_replace",
            "expert_weights_scale": "routed_scaling_factor",
            # Written as llama.cpp's converter does (its glm4moe does not read them); only 1 gets this far.
            "expert_group_count": "n_group",
            "expert_group_used_count": "topk_group",
        },
        expert_tensors=QWEN_EXPERTS,
        fused_tensors=FUSED_EXPERTS,
        extra_config=_glm4moe_config,
        export_config=_glm4moe_gguf,
        flags={"use_qk_norm": "blk.0.attn_q_norm.weight"},
        extra_layers="num_nextn_predict_layers",
        extra_layers_gguf="nextn_predict_layers",
        tiny=(
            # One dense layer before two MoE ones, 8 routed experts (2 per token) beside one shared expert,
            # renormalised sigmoid routing, NEOX RoPE over half of an explicit head_dim, Q/K/V biases
            # (the real one: 46 layers, 128 experts, 8 per token, head_dim 128, one MTP layer).
            TinyModel(
                "glm4moe",
                "zai-org/GLM-4.5-Air",
                "glm4_moe",
                "bpe",
                {
                    "num_hidden_layers": 3,
                    "head_dim": 32,
                    "partial_rotary_factor": 0.5,
                    "attention_bias": True,
                    "use_qk_norm": False,
                    "n_routed_experts": 8,
                    "num_experts_per_tok": 2,
                    "n_shared_experts": 1,
                    "moe_intermediate_size": 32,
                    "first_k_dense_replace": 1,
                    "routed_scaling_factor": 1.0,
                    "norm_topk_prob": True,
                    "n_group": 1,
                    "topk_group": 1,
                    "rope_theta": 1e6,
                },
            ),
        ),
    )
)
