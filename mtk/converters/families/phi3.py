"""Phi-3: fused QKV and fused gate/up projections in both formats (gate first), NEOX RoPE."""

from __future__ import annotations

from mtk.converters.family import COMMON_HPARAMS, Family, LayerPlan, ScaleGroup, TinyModel, register

PHI3_PLAN = LayerPlan(
    sequential=(("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
    awq=(
        ScaleGroup("input_layernorm", ("self_attn.qkv_proj",), "self_attn"),
        ScaleGroup("post_attention_layernorm", ("mlp.gate_up_proj",), "mlp"),
        # No v -> o group: v is the last third of the fused qkv_proj, a slice prev_rows has no name for.
        ScaleGroup("mlp.gate_up_proj", ("mlp.down_proj",), "mlp.down_proj", prev_rows="second_half"),
    ),
    no_clip=("self_attn.qkv_proj",),
)

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
        layer_plan=PHI3_PLAN,
        tiny=(
            # Fused projections, SentencePiece vocabulary with the chat specials, the 4k model's default RoPE.
            TinyModel(
                "phi3",
                "microsoft/Phi-3-mini-4k-instruct",
                "phi3",
                "spm",
                special_tokens=("<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"),
            ),
        ),
    )
)
