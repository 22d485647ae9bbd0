"""GLM-4 (0414): norms after attention and after the MLP as well as before them, a fused gate/up projection
(gate first), Q/K/V biases, and RoPE on half of each head, its pairs interleaved.

A layer computes ``h = x + post_self_attn_layernorm(attn(input_layernorm(x)))`` then
``h + post_mlp_layernorm(mlp(post_attention_layernorm(h)))``. llama.cpp names the two extra norms as Gemma's
post norms, keeps the fused ``gate_up_proj`` as one ``ffn_up`` of twice the width, and runs glm4 with NORM RoPE
(neighbouring pairs turn together), which is what transformers' GLM rotary does: Q/K rows stay in HF order.
Only the first ``rope.dimension_count`` dimensions of a head turn (``partial_rotary_factor``, 0.5).
"""

from __future__ import annotations

from typing import Any

from mtk.converters.family import QKV, Family, LayerPlan, Metadata, ScaleGroup, TinyModel, register

GLM4_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.attn_q.weight": "model.layers.{bid}.self_attn.q_proj.weight",
    "blk.{bid}.attn_k.weight": "model.layers.{bid}.self_attn.k_proj.weight",
    "blk.{bid}.attn_v.weight": "model.layers.{bid}.self_attn.v_proj.weight",
    "blk.{bid}.attn_q.bias": "model.layers.{bid}.self_attn.q_proj.bias",
    "blk.{bid}.attn_k.bias": "model.layers.{bid}.self_attn.k_proj.bias",
    "blk.{bid}.attn_v.bias": "model.layers.{bid}.self_attn.v_proj.bias",
    "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
    "blk.{bid}.post_attention_norm.weight": "model.layers.{bid}.post_self_attn_layernorm.weight",
    "blk.{bid}.ffn_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.gate_up_proj.weight",
    "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
    "blk.{bid}.post_ffw_norm.weight": "model.layers.{bid}.post_mlp_layernorm.weight",
}

GLM4_PLAN = LayerPlan(
    sequential=(QKV, ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
    awq=(
        ScaleGroup("input_layernorm", QKV, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("post_attention_layernorm", ("mlp.gate_up_proj",), "mlp"),
        # The up half of the fused projection (its second half) feeds down_proj linearly.
        ScaleGroup("mlp.gate_up_proj", ("mlp.down_proj",), "mlp.down_proj", prev_rows="second_half"),
    ),
)


def _glm4_config(meta: Metadata, arch: str) -> dict[str, Any]:
    """The share of each head that turns, from rope.dimension_count (transformers keeps it in rope_parameters)."""
    heads = meta[f"{arch}.attention.head_count"]
    head_dim = meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // heads
    rotary = meta.get(f"{arch}.rope.dimension_count", head_dim)
    return {"partial_rotary_factor": rotary / head_dim}


GLM4 = register(
    Family(
        "glm4",
        "Glm4ForCausalLM",
        "glm4",
        GLM4_TENSORS,
        extra_config=_glm4_config,
        layer_plan=GLM4_PLAN,
        tiny=(
            # Q/K/V biases, 2 KV heads, an explicit head_dim turned on its first half, an untied head.
            TinyModel(
                "glm4",
                "zai-org/GLM-4-9B-0414",
                "glm4",
                "bpe",
                {
                    "head_dim": 16,
                    "partial_rotary_factor": 0.5,
                    "attention_bias": True,
                    "tie_word_embeddings": False,
                    "rms_norm_eps": 1e-5,
                },
            ),
        ),
    )
)
