"""Phi-3: fused QKV and fused gate/up projections in both formats (gate first), NEOX RoPE.

Phi-3.5-mini and Phi-4-mini run LongRoPE (:mod:`mtk.converters.rope`: two factor tensors, which llama.cpp's
phi3 loader reads), and Phi-4-mini turns only the first 0.75 of each head (``rope.dimension_count``).
transformers' Phi3Config keeps ``original_max_position_embeddings`` outside ``rope_parameters`` too, and that
copy wins (its default is 4096), so the import writes both.
"""

from __future__ import annotations

from typing import Any

from mtk.converters.family import COMMON_HPARAMS, Family, LayerPlan, Metadata, ScaleGroup, TinyModel, register
from mtk.converters.rope import RopeLayout

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
PHI3_SPECIALS = ("<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>")


def _phi3_config(meta: Metadata, arch: str) -> dict[str, Any]:
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    return {} if original is None else {"original_max_position_embeddings": original}


def _longrope(long: list[float], short: list[float], **config: Any) -> dict[str, Any]:
    """A 128k Phi's config over the tiny shape: LongRoPE trained at 4096 positions, extended to 131072."""
    return {
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "longrope", "long_factor": long, "short_factor": short},
        **config,
    }


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
        extra_config=_phi3_config,
        rope=RopeLayout(long_short_factors=True),
        layer_plan=PHI3_PLAN,
        tiny=(
            # Fused projections, SentencePiece vocabulary with the chat specials, the 4k model's default RoPE.
            TinyModel("phi3", "microsoft/Phi-3-mini-4k-instruct", "phi3", "spm", special_tokens=PHI3_SPECIALS),
            # LongRoPE: factors rising from 1 (short) and to ~64 (long) as the real lists do, one per frequency
            # pair of the 16-wide heads; as many KV heads as heads, a sliding window past any context, untied.
            TinyModel(
                "phi3.5",
                "microsoft/Phi-3.5-mini-instruct",
                "phi3",
                "spm",
                _longrope(
                    [1.0, 1.5, 3.25, 7.5, 17.75, 32.5, 50.5, 64.0],
                    [1.0, 1.03125, 1.0625, 1.15625, 1.6875, 1.875, 2.0, 2.5],
                    num_key_value_heads=4,
                    sliding_window=262144,
                    tie_word_embeddings=False,
                ),
                special_tokens=PHI3_SPECIALS,
            ),
            # Partial rotary (0.75 of each 16-wide head: 6 factor pairs), 24 query / 8 KV heads as the real
            # model, tied embeddings, a byte-level BPE vocabulary (the real one is tiktoken's o200k).
            TinyModel(
                "phi4mini",
                "microsoft/Phi-4-mini-instruct",
                "phi3",
                "bpe",
                _longrope(
                    [1.0, 2.25, 9.0, 30.5, 52.0, 64.0],
                    [1.0, 1.0625, 1.25, 1.5625, 2.0, 2.75],
                    hidden_size=384,
                    initializer_range=0.04,  # the 64-wide models' logit spread at this width
                    num_attention_heads=24,
                    num_key_value_heads=8,
                    partial_rotary_factor=0.75,
                    sliding_window=262144,
                    tie_word_embeddings=True,
                ),
                special_tokens=PHI3_SPECIALS,
            ),
        ),
    )
)
