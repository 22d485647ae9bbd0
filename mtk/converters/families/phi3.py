"""Phi-3: fused QKV and fused gate/up projections in both formats (gate first), NEOX RoPE."""

from __future__ import annotations

from mtk.converters.family import COMMON_HPARAMS, Family, register

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
        hparams={**COMMON_HPARAMS, "attention.sliding_window": "sliding_window"},
    )
)
