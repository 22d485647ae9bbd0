"""Gemma 2 and Gemma 3 (text): four norms per layer stored as ``w + 1``, tied embeddings, NEOX RoPE.

llama.cpp does not store ``query_pre_attn_scalar``: it scales queries by ``1/sqrt(head_dim)``, except for
Gemma 2 27B (46 layers), which uses ``hidden_size / num_heads``; the import mirrors that rule.
"""

from __future__ import annotations

from typing import Any

from mtk.converters.family import (
    COMMON_HPARAMS,
    GATE_UP,
    LLAMA_PLAN,
    QKV,
    Family,
    LayerPlan,
    Metadata,
    ScaleGroup,
    TinyModel,
    Tower,
    register,
)
from mtk.converters.rope import RopeLayout
from mtk.errors import UnsupportedError

GEMMA_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.attn_q.weight": "model.layers.{bid}.self_attn.q_proj.weight",
    "blk.{bid}.attn_k.weight": "model.layers.{bid}.self_attn.k_proj.weight",
    "blk.{bid}.attn_v.weight": "model.layers.{bid}.self_attn.v_proj.weight",
    "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
    "blk.{bid}.post_attention_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    "blk.{bid}.ffn_norm.weight": "model.layers.{bid}.pre_feedforward_layernorm.weight",
    "blk.{bid}.post_ffw_norm.weight": "model.layers.{bid}.post_feedforward_layernorm.weight",
    "blk.{bid}.ffn_gate.weight": "model.layers.{bid}.mlp.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.up_proj.weight",
    "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
}
GEMMA_HPARAMS = {**COMMON_HPARAMS, "attention.sliding_window": "sliding_window"}
# llama.cpp's Gemma 3 runs its sliding-window layers with this RoPE base by default and every sixth layer global.
GEMMA3_SWA_ROPE_BASE = 10000.0
GEMMA3_SWA_PATTERN = 6


def _query_scale(meta: Metadata, arch: str) -> float:
    heads = meta[f"{arch}.attention.head_count"]
    head_dim = meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // heads
    if arch == "gemma2" and meta[f"{arch}.block_count"] == 46:
        return meta[f"{arch}.embedding_length"] // heads
    return head_dim


def _gemma2_config(meta: Metadata, arch: str) -> dict[str, Any]:
    return {
        "query_pre_attn_scalar": _query_scale(meta, arch),
        "attn_logit_softcapping": meta.get(f"{arch}.attn_logit_softcapping"),
        "final_logit_softcapping": meta.get(f"{arch}.final_logit_softcapping"),
        "tie_word_embeddings": True,
    }


def _gemma3_layer_types(n_layers: int) -> list[str]:
    """llama.cpp's Gemma 3 layers: every sixth global, the others sliding (its default pattern)."""
    return ["full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention" for i in range(n_layers)]


def _gemma3_config(meta: Metadata, arch: str) -> dict[str, Any]:
    return {
        "query_pre_attn_scalar": _query_scale(meta, arch),
        "layer_types": _gemma3_layer_types(meta[f"{arch}.block_count"]),
        "final_logit_softcapping": meta.get(f"{arch}.final_logit_softcapping"),
        "tie_word_embeddings": True,
    }


def _gemma2_export(config: Any) -> dict[str, Any]:
    out = {}
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, key, None) is not None:
            out[key] = float(getattr(config, key))
    return out


def _gemma3_export(config: Any) -> dict[str, Any]:
    """final_logit_softcapping when set (llama.cpp's gemma3 loader reads it; attention softcapping is gone)."""
    types = list(getattr(config, "layer_types", None) or [])
    if config.sliding_window and types and types != _gemma3_layer_types(config.num_hidden_layers):
        raise UnsupportedError(
            f"Gemma 3 layer_types {types} are not llama.cpp's pattern (every {GEMMA3_SWA_PATTERN}th layer global)"
        )
    softcap = getattr(config, "final_logit_softcapping", None)
    return {"final_logit_softcapping": float(softcap)} if softcap is not None else {}


# Gemma's norms compute x * (1 + w), and the feed-forward's is called pre_feedforward_layernorm.
GEMMA_PLAN = LayerPlan(
    sequential=LLAMA_PLAN.sequential,
    awq=(
        ScaleGroup("input_layernorm", QKV, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("pre_feedforward_layernorm", GATE_UP, "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
    norm_offset=1.0,
)
# Explicit head_dim, query_pre_attn_scalar equal to it, tied embeddings (as the real 2B / 1B configs).
_GEMMA_TINY = {"head_dim": 16, "query_pre_attn_scalar": 16}
# A one-layer SigLIP: 28-pixel images of 2 x 2 patches, pooled to 4 soft tokens.
_TINY_SIGLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
}

GEMMA2 = register(
    Family(
        "gemma2",
        "Gemma2ForCausalLM",
        "gemma2",
        GEMMA_TENSORS,
        GEMMA_HPARAMS,
        norm_shift=1.0,
        extra_config=_gemma2_config,
        export_config=_gemma2_export,
        layer_plan=GEMMA_PLAN,
        tiny=(TinyModel("gemma2", "google/gemma-2-2b", "gemma2", "gemma", _GEMMA_TINY),),
    )
)
GEMMA3 = register(
    Family(
        "gemma3",
        "Gemma3ForCausalLM",
        "gemma3_text",
        {
            **GEMMA_TENSORS,
            "blk.{bid}.attn_q_norm.weight": "model.layers.{bid}.self_attn.q_norm.weight",
            "blk.{bid}.attn_k_norm.weight": "model.layers.{bid}.self_attn.k_norm.weight",
        },
        GEMMA_HPARAMS,
        norm_shift=1.0,
        extra_config=_gemma3_config,
        export_config=_gemma3_export,
        # The GGUF's RoPE keys are the global layers' (base 1e6 by default); the sliding ones run unscaled with
        # the base in rope.freq_base_swa (as llama.cpp's converter writes it; 10000 when absent).
        rope=RopeLayout(
            default_theta=1_000_000.0,
            fixed={"sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_SWA_ROPE_BASE}},
            swa_base="sliding_attention",
        ),
        layer_plan=GEMMA_PLAN,
        towers=(Tower("Gemma3ForConditionalGeneration", "gemma3"),),
        tiny=(
            TinyModel("gemma3", "google/gemma-3-1b-pt", "gemma3_text", "gemma", _GEMMA_TINY),
            # The 4B/12B/27B downloads: a Gemma3ForConditionalGeneration (a SigLIP vision tower, left out) whose
            # text config scales the global layers' RoPE linearly (factor 8) and not the sliding ones' (base
            # 10000), makes every sixth layer global, and has heads wider than hidden_size / heads (256 vs 320 in
            # the 4B; here 32 vs 16); the window is shorter than the verification prompts.
            TinyModel(
                "gemma3-4b",
                "google/gemma-3-4b-it",
                "gemma3",
                "gemma",
                {
                    "num_hidden_layers": 6,
                    "head_dim": 32,
                    "query_pre_attn_scalar": 32,
                    "sliding_window": 16,
                    "rope_theta": 1_000_000.0,
                    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                    "rope_local_base_freq": 10_000.0,
                },
                outer={"vision_config": _TINY_SIGLIP, "mm_tokens_per_image": 4},
            ),
        ),
    )
)
