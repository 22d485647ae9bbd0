"""Phi-3: fused QKV and fused gate/up projections in both formats (gate first), NEOX RoPE."""

from __future__ import annotations

from typing import Any

from mtk.converters.family import Family, Metadata, register


def _phi3_config(meta: Metadata, arch: str) -> dict[str, Any]:
    window = meta.get(f"{arch}.attention.sliding_window")
    return {"sliding_window": int(window) if window else None}


PHI3 = register(
    Family(
        "phi3",
        "Phi3ForCausalLM",
        "phi3",
        {
            "token_embd.weight": "model.embed_tokens.weight",
            "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight",
            "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
            "blk.{bid}.attn_qkv.weight": "model.layers.{bid}.self_attn.qkv_proj.weight",
            "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
            "blk.{bid}.ffn_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
            "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.gate_up_proj.weight",
            "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
        },
        extra_config=_phi3_config,
    )
)
