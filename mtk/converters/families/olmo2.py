"""OLMo 2: norms after the blocks, not before, and Q/K norms over the whole projection; NEOX RoPE.

A layer computes ``h = x + post_attention_layernorm(attn(x))`` then ``h + post_feedforward_layernorm(mlp(h))``,
with ``q = q_norm(q_proj(x))`` and ``k = k_norm(k_proj(x))`` normalised across all heads at once (Qwen 3 and
Gemma 3 normalise each head). llama.cpp names the two block norms as Gemma's post norms, and runs olmo2
with NEOX RoPE: Q/K rows stay in HF order (permuted ones give llama.cpp logits off by ~3.6 on the tiny model).
"""

from __future__ import annotations

from mtk.converters.family import LLAMA_PLAN, Family, LayerPlan, ScaleGroup, TinyModel, register

OLMO2_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{bid}.attn_q.weight": "model.layers.{bid}.self_attn.q_proj.weight",
    "blk.{bid}.attn_k.weight": "model.layers.{bid}.self_attn.k_proj.weight",
    "blk.{bid}.attn_v.weight": "model.layers.{bid}.self_attn.v_proj.weight",
    "blk.{bid}.attn_q_norm.weight": "model.layers.{bid}.self_attn.q_norm.weight",
    "blk.{bid}.attn_k_norm.weight": "model.layers.{bid}.self_attn.k_norm.weight",
    "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
    "blk.{bid}.post_attention_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    "blk.{bid}.ffn_gate.weight": "model.layers.{bid}.mlp.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.up_proj.weight",
    "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
    "blk.{bid}.post_ffw_norm.weight": "model.layers.{bid}.post_feedforward_layernorm.weight",
}

# q/k/v and gate/up read the residual stream itself: no norm precedes them to fold an AWQ scale into. v -> o
# and up -> down remain (v and up enter their consumers linearly).
OLMO2_PLAN = LayerPlan(
    sequential=LLAMA_PLAN.sequential,
    awq=(
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
)

OLMO2 = register(
    Family(
        "olmo2",
        "Olmo2ForCausalLM",
        "olmo2",
        OLMO2_TENSORS,
        layer_plan=OLMO2_PLAN,
        tiny=(
            # Full multi-head attention (as many KV heads as query heads), RoPE base 500000, an untied head.
            TinyModel(
                "olmo2",
                "allenai/OLMo-2-0425-1B",
                "olmo2",
                "bpe",
                {"num_key_value_heads": 4, "rope_theta": 500000.0, "tie_word_embeddings": False},
            ),
        ),
    )
)
