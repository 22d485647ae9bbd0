"""Qwen2, Qwen3 and Qwen2-MoE: NEOX RoPE (no Q/K permutation); Qwen2 has Q/K/V biases, Qwen3 Q/K norms."""

from __future__ import annotations

from mtk.converters.family import COMMON_HPARAMS, LLAMA_TENSORS, Family, register

QWEN2 = register(Family("qwen2", "Qwen2ForCausalLM", "qwen2", LLAMA_TENSORS))

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
    )
)

_DENSE_FFN = {"blk.{bid}.ffn_gate.weight", "blk.{bid}.ffn_up.weight", "blk.{bid}.ffn_down.weight"}

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
        expert_tensors={
            "blk.{bid}.ffn_gate_exps.weight": "model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight",
            "blk.{bid}.ffn_up_exps.weight": "model.layers.{bid}.mlp.experts.{xid}.up_proj.weight",
            "blk.{bid}.ffn_down_exps.weight": "model.layers.{bid}.mlp.experts.{xid}.down_proj.weight",
        },
    )
)
