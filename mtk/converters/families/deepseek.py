"""DeepSeek-V3 (transformers' ``deepseek_v3``; llama.cpp's ``deepseek2`` architecture, which runs V2 and V3).

What sets it apart, from transformers' ``modeling_deepseek_v3.py`` and llama.cpp's ``src/models/deepseek2.cpp``
and its converter (``conversion/deepseek.py``, ``DeepseekV2Model``):

- Multi-head latent attention. Queries go through a low-rank pair (``q_a_proj`` to ``q_lora_rank``, an RMS norm,
  ``q_b_proj`` to ``heads * (qk_nope + qk_rope)``); keys and values through one shared latent
  (``kv_a_proj_with_mqa``: ``kv_lora_rank`` latent values, then ``qk_rope`` RoPE'd key dimensions shared by every
  head), a norm, and ``kv_b_proj`` ``(heads * (qk_nope + v), kv_lora_rank)``, each head's nope-key rows then its
  value rows. llama.cpp absorbs ``kv_b_proj`` into the attention: its converter splits it per head into
  ``attn_k_b`` (heads, kv_lora_rank, qk_nope) (each head's key rows, transposed) and ``attn_v_b``
  (heads, v, kv_lora_rank), and runs MQA over the latent: ``head_count_kv`` 1, ``key_length`` kv_lora + rope,
  ``value_length`` kv_lora; the per-head widths are ``key_length_mla`` (nope + rope) and ``value_length_mla``.
- RoPE on the last ``qk_rope_head_dim`` dimensions of each query head and the shared key, in interleaved pairs
  (transformers' ``rope_interleave``, its default): llama.cpp's NORM RoPE, so no row permutation.
  transformers' ``head_dim`` is ``qk_rope_head_dim``.
- YaRN with DeepSeek's mscale: transformers multiplies the softmax scale by ``(0.1 * mscale_all_dim * ln(factor)
  + 1) ** 2`` and cos/sin by ``get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)``. llama.cpp reads
  ``mscale_all_dim`` from ``rope.scaling.yarn_log_multiplier`` (which its converter writes times 0.1) and takes
  ``mscale`` to be 1, or ``mscale_all_dim`` when that is not 1 (DeepSeek-V2's 0.707 for both): other ``mscale``
  values are refused. It uses YaRN's default betas (32, 1).
- Routing: sigmoid scores plus ``e_score_correction_bias`` (``exp_probs_b.bias``) choose ``topk_group`` of
  ``n_group`` groups by their two best scores, then the top-k experts; the chosen (unbiased) scores are
  renormalised (``norm_topk_prob``) and multiplied by ``routed_scaling_factor``. llama.cpp: gating func sigmoid,
  ``expert_group_count``, ``expert_group_used_count``, ``expert_weights_norm``, ``expert_weights_scale``.
- The first ``first_k_dense_replace`` layers are dense (``leading_dense_block_count``), the rest MoE with
  ``n_shared_experts`` shared experts as one MLP ``moe_intermediate_size * n_shared_experts`` wide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mtk.converters import rope
from mtk.converters.families.qwen import QWEN_EXPERTS
from mtk.converters.family import COMMON_HPARAMS, FUSED_EXPERTS, Derived, Family, Metadata, TinyModel, register
from mtk.errors import InvalidFileError, UnsupportedError

if TYPE_CHECKING:
    import torch

SIGMOID = 2  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID
YARN_BETAS = (32.0, 1.0)
_ATTN = "model.layers.{bid}.self_attn"


def _split_kv_b(w: torch.Tensor, *, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_b_proj (heads * (nope + v), kv_lora) -> attn_k_b (heads, kv_lora, nope), attn_v_b (heads, v, kv_lora)."""
    nope, v = config.qk_nope_head_dim, config.v_head_dim
    per_head = w.reshape(config.num_attention_heads, nope + v, w.shape[-1])
    return per_head[:, :nope].transpose(1, 2).contiguous(), per_head[:, nope:].contiguous()


def _join_kv_b(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    import torch

    k_b, v_b = parts
    per_head = torch.cat([k_b.transpose(1, 2), v_b], dim=1)  # (heads, nope + v, kv_lora)
    return per_head.reshape(-1, per_head.shape[-1]).contiguous()


DEEPSEEK_DERIVED = (
    Derived(
        (f"{_ATTN}.kv_b_proj.weight",),
        ("blk.{bid}.attn_k_b.weight", "blk.{bid}.attn_v_b.weight"),
        _split_kv_b,
        _join_kv_b,
        config=True,
    ),
)

_MLP = "model.layers.{bid}.mlp"
DEEPSEEK_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.attn_q_a.weight": f"{_ATTN}.q_a_proj.weight",
    "blk.{bid}.attn_q_a_norm.weight": f"{_ATTN}.q_a_layernorm.weight",
    "blk.{bid}.attn_q_b.weight": f"{_ATTN}.q_b_proj.weight",
    "blk.{bid}.attn_kv_a_mqa.weight": f"{_ATTN}.kv_a_proj_with_mqa.weight",
    "blk.{bid}.attn_kv_a_norm.weight": f"{_ATTN}.kv_a_layernorm.weight",
    "blk.{bid}.attn_output.weight": f"{_ATTN}.o_proj.weight",
    "blk.{bid}.ffn_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    # The leading dense layers.
    "blk.{bid}.ffn_gate.weight": f"{_MLP}.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": f"{_MLP}.up_proj.weight",
    "blk.{bid}.ffn_down.weight": f"{_MLP}.down_proj.weight",
    # The MoE layers: router, its score bias, the shared experts.
    "blk.{bid}.ffn_gate_inp.weight": f"{_MLP}.gate.weight",
    "blk.{bid}.exp_probs_b.bias": f"{_MLP}.gate.e_score_correction_bias",
    "blk.{bid}.ffn_gate_shexp.weight": f"{_MLP}.shared_experts.gate_proj.weight",
    "blk.{bid}.ffn_up_shexp.weight": f"{_MLP}.shared_experts.up_proj.weight",
    "blk.{bid}.ffn_down_shexp.weight": f"{_MLP}.shared_experts.down_proj.weight",
}

# head_count_kv is not the config's: llama.cpp runs the latent as one KV head (module notes).
DEEPSEEK_HPARAMS = {
    **{k: v for k, v in COMMON_HPARAMS.items() if k != "attention.head_count_kv"},
    "leading_dense_block_count": "first_k_dense_replace",
    "attention.q_lora_rank": "q_lora_rank",
    "attention.kv_lora_rank": "kv_lora_rank",
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_count": "n_routed_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_shared_count": "n_shared_experts",
    "expert_weights_scale": "routed_scaling_factor",
    "expert_weights_norm": "norm_topk_prob",
    "expert_group_count": "n_group",
    "expert_group_used_count": "topk_group",
}


def _llama_cpp_mscale(mscale_all_dim: float) -> float:
    """The YaRN ``mscale`` llama.cpp assumes for a deepseek2 GGUF (llama-context.cpp)."""
    return mscale_all_dim if mscale_all_dim != 1.0 else 1.0


def _export(config: Any) -> dict[str, Any]:
    """The MLA widths and routing keys; refuses what llama.cpp's deepseek2 graph does not compute."""
    if config.q_lora_rank is None:
        raise UnsupportedError("DeepSeek without q_lora_rank (DeepSeek-V2-Lite's plain q_proj) is not supported yet")
    if config.attention_bias:
        raise UnsupportedError("DeepSeek with attention_bias is not supported: llama.cpp's deepseek2 has no biases")
    if not config.rope_interleave:
        raise UnsupportedError("DeepSeek with rope_interleave false is not supported: llama.cpp's RoPE interleaves")
    if config.num_key_value_heads != config.num_attention_heads:
        raise UnsupportedError("DeepSeek with num_key_value_heads != num_attention_heads is not supported")
    rot, nope, v, kv = config.qk_rope_head_dim, config.qk_nope_head_dim, config.v_head_dim, config.kv_lora_rank
    out: dict[str, Any] = {
        "attention.head_count_kv": 1,
        "attention.key_length": kv + rot,
        "attention.value_length": kv,
        "attention.key_length_mla": nope + rot,
        "attention.value_length_mla": v,
        "rope.dimension_count": rot,
        "expert_gating_func": SIGMOID,
    }
    p = rope.config_parameters(config)
    if p["rope_type"] == "yarn":
        betas = (float(p.get("beta_fast") or 32), float(p.get("beta_slow") or 1))
        if betas != YARN_BETAS or p.get("attention_factor") is not None:
            raise UnsupportedError(
                f"DeepSeek YaRN with betas {betas} or an attention_factor: llama.cpp uses {YARN_BETAS} and its mscale"
            )
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            if float(mscale) != _llama_cpp_mscale(float(mscale_all_dim)):
                raise UnsupportedError(
                    f"DeepSeek YaRN with mscale {mscale} and mscale_all_dim {mscale_all_dim}: llama.cpp assumes "
                    f"mscale {_llama_cpp_mscale(float(mscale_all_dim))}"
                )
            out["rope.scaling.yarn_log_multiplier"] = 0.1 * float(mscale_all_dim)  # llama.cpp divides by 0.1
        elif mscale or mscale_all_dim:
            raise UnsupportedError("DeepSeek YaRN with only one of mscale and mscale_all_dim is not supported")
    return out


def _config(meta: Metadata, arch: str) -> dict[str, Any]:
    def need(key: str) -> Any:
        if f"{arch}.{key}" not in meta:
            raise InvalidFileError(f"GGUF lacks {arch}.{key}, which DeepSeek's attention needs")
        return meta[f"{arch}.{key}"]

    gating = meta.get(f"{arch}.expert_gating_func")
    if gating != SIGMOID:
        raise UnsupportedError(f"deepseek2 GGUF with expert_gating_func {gating}: transformers' DeepSeek-V3 is sigmoid")
    rot = int(need("rope.dimension_count"))
    cfg: dict[str, Any] = {
        "qk_rope_head_dim": rot,
        "qk_nope_head_dim": int(need("attention.key_length_mla")) - rot,
        "v_head_dim": int(need("attention.value_length_mla")),
        # llama.cpp's defaults where a key is absent (transformers' differ).
        "first_k_dense_replace": int(meta.get(f"{arch}.leading_dense_block_count", 0)),
        "n_group": int(meta.get(f"{arch}.expert_group_count", 1)),
        "topk_group": int(meta.get(f"{arch}.expert_group_used_count", 1)),
        "norm_topk_prob": bool(meta.get(f"{arch}.expert_weights_norm", False)),
        "rope_interleave": True,
    }
    if cfg["qk_nope_head_dim"] < 1:
        raise InvalidFileError(f"GGUF's {arch}.attention.key_length_mla is not wider than its RoPE dimensions")
    log_mul = meta.get(f"{arch}.rope.scaling.yarn_log_multiplier")
    if meta.get(f"{arch}.rope.scaling.type") == "yarn":
        p = rope.hf_parameters(rope.RopeLayout(), meta, arch, (), _no_tensor)
        p.update({"beta_fast": YARN_BETAS[0], "beta_slow": YARN_BETAS[1]})
        if log_mul:
            all_dim = float(f"{log_mul / 0.1:.6g}")  # undo the converter's 0.1 (float32 in the GGUF)
            p.update({"mscale_all_dim": all_dim, "mscale": _llama_cpp_mscale(all_dim)})
        cfg["rope_parameters"] = p
    return cfg


def _no_tensor(name: str) -> torch.Tensor:
    raise InvalidFileError(f"DeepSeek's RoPE reads no tensors ({name})")


# quantize refuses it (no layer plan): its attention has no q/k/v projections for the plans' groups.
DEEPSEEK2 = register(
    Family(
        gguf_arch="deepseek2",
        hf_architecture="DeepseekV3ForCausalLM",
        model_type="deepseek_v3",
        tensors=DEEPSEEK_TENSORS,
        hparams=DEEPSEEK_HPARAMS,
        expert_tensors=QWEN_EXPERTS,
        fused_tensors=FUSED_EXPERTS,
        derived=DEEPSEEK_DERIVED,
        extra_config=_config,
        export_config=_export,
        head_dim_key="rope.dimension_count",
        tiny=(
            # deepseek-ai/DeepSeek-V3's quirks at tiny sizes: q and kv LoRA ranks, RoPE on a slice of each head
            # (nope 128 + rope 64, v 128 there), 256 routed experts in 8 groups (4 used) with 8 per token and one
            # shared expert, the first 3 layers dense, routed scale 2.5, renormalised top-k, YaRN 40x over 4096
            # with mscale 1 and mscale_all_dim 1; here 8 experts in 2 groups (1 used), 2 per token, one dense
            # layer of three.
            TinyModel(
                "deepseek-v3",
                "deepseek-ai/DeepSeek-V3",
                "deepseek_v3",
                "bpe",
                {
                    "num_hidden_layers": 3,
                    "num_key_value_heads": 4,
                    "q_lora_rank": 48,
                    "kv_lora_rank": 32,
                    "qk_nope_head_dim": 32,
                    "qk_rope_head_dim": 16,
                    "v_head_dim": 32,
                    "moe_intermediate_size": 32,
                    "n_routed_experts": 8,
                    "num_experts_per_tok": 2,
                    "n_shared_experts": 1,
                    "n_group": 2,
                    "topk_group": 1,
                    "first_k_dense_replace": 1,
                    "routed_scaling_factor": 2.5,
                    "norm_topk_prob": True,
                    "max_position_embeddings": 163840,
                    "rope_parameters": {
                        "rope_type": "yarn",
                        "rope_theta": 10000.0,
                        "factor": 40.0,
                        "original_max_position_embeddings": 4096,
                        "beta_fast": 32.0,
                        "beta_slow": 1.0,
                        "mscale": 1.0,
                        "mscale_all_dim": 1.0,
                    },
                },
            ),
        ),
    )
)
