"""Qwen3.5 (dense, text): gated-delta-net linear-attention layers beside gated full-attention layers.

Three of every four layers (``config.layer_types``) mix tokens with a gated delta net: ``in_proj_qkv`` feeds a
causal depthwise conv1d (kernel ``linear_conv_kernel_dim``) and a recurrent state of ``linear_key_head_dim``
by ``linear_value_head_dim`` per value head; ``in_proj_z`` gates its RMS norm, ``in_proj_b``/``in_proj_a`` give
each value head its write strength and decay (``-exp(A_log) * softplus(a + dt_bias)``). The fourth is softmax
attention whose ``q_proj`` also yields a sigmoid output gate ([q, gate] per head), with per-head Q/K norms and
RoPE on the first quarter of each head (``partial_rotary_factor``; the multimodal sections all see the same
positions for text). Norms compute ``x * (1 + w)``, except the gated norm of the delta net (``x * w``).

llama.cpp's converter (``Qwen3_5TextModel``, over ``Qwen3NextModel``) stores the shifted norms as ``w + 1``,
``A_log`` as ``ssm_a = -exp(A_log)``, the conv kernel squeezed to (channels, kernel), and reorders the value
heads from grouped (each key head's value heads together, transformers' ``repeat_interleave``) to tiled (key
head ``j % n_k`` for value head ``j``, ggml's broadcast) in every tensor that has them. All of it is undone on
import; ``log(-ssm_a)`` returns ``A_log`` to within 2e-7 (both computed in float64, then rounded to float32:
one float32 rounding of exp, ~6e-8 relative, plus half a unit in the last place of A_log <= 2.8; measured over
a million values of transformers' init range: at most 6e-8, 1.4% of them not bit-identical), and exactly once
rounded to 16 bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mtk.converters.family import (
    COMMON_HPARAMS,
    GATE_UP,
    LLAMA_PLAN,
    Family,
    LayerPlan,
    Metadata,
    ScaleGroup,
    TensorTransform,
    TinyModel,
    register,
)
from mtk.errors import InvalidFileError, UnsupportedError, quoted

if TYPE_CHECKING:
    import torch

Config = Mapping[str, Any]

QWEN35_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.post_attention_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    # Full attention.
    "blk.{bid}.attn_q.weight": "model.layers.{bid}.self_attn.q_proj.weight",
    "blk.{bid}.attn_k.weight": "model.layers.{bid}.self_attn.k_proj.weight",
    "blk.{bid}.attn_v.weight": "model.layers.{bid}.self_attn.v_proj.weight",
    "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
    "blk.{bid}.attn_q_norm.weight": "model.layers.{bid}.self_attn.q_norm.weight",
    "blk.{bid}.attn_k_norm.weight": "model.layers.{bid}.self_attn.k_norm.weight",
    # Linear attention (the gated delta net).
    "blk.{bid}.attn_qkv.weight": "model.layers.{bid}.linear_attn.in_proj_qkv.weight",
    "blk.{bid}.attn_gate.weight": "model.layers.{bid}.linear_attn.in_proj_z.weight",
    "blk.{bid}.ssm_beta.weight": "model.layers.{bid}.linear_attn.in_proj_b.weight",
    "blk.{bid}.ssm_alpha.weight": "model.layers.{bid}.linear_attn.in_proj_a.weight",
    "blk.{bid}.ssm_conv1d.weight": "model.layers.{bid}.linear_attn.conv1d.weight",
    "blk.{bid}.ssm_dt.bias": "model.layers.{bid}.linear_attn.dt_bias",
    "blk.{bid}.ssm_a": "model.layers.{bid}.linear_attn.A_log",
    "blk.{bid}.ssm_norm.weight": "model.layers.{bid}.linear_attn.norm.weight",
    "blk.{bid}.ssm_out.weight": "model.layers.{bid}.linear_attn.out_proj.weight",
    "blk.{bid}.ffn_gate.weight": "model.layers.{bid}.mlp.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.up_proj.weight",
    "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
}
QWEN35_HPARAMS = {
    **COMMON_HPARAMS,
    "ssm.conv_kernel": "linear_conv_kernel_dim",
    "ssm.state_size": "linear_key_head_dim",
    "ssm.group_count": "linear_num_key_heads",
    "ssm.time_step_rank": "linear_num_value_heads",
}
# log(-ssm_a) against A_log after float32 (module notes).
A_LOG_ATOL = 2e-7
# llama.cpp's converter writes these sections when a checkpoint has none (transformers' default too).
DEFAULT_MROPE_SECTION = [11, 11, 10]


def _swap_heads(w: torch.Tensor, dim: int, outer: int, inner: int, unit: int) -> torch.Tensor:
    """View ``dim`` as (outer, inner, unit) and swap the first two: grouped <-> tiled head order."""
    shape = w.shape
    w = w.reshape(*shape[:dim], outer, inner, unit, *shape[dim + 1 :])
    return w.transpose(dim, dim + 1).reshape(shape)


def _value_heads(w: torch.Tensor, cfg: Config, *, dim: int, per_head: bool, after_qk: bool, tile: bool) -> torch.Tensor:
    """Reorder the value heads along ``dim`` (grouped -> tiled when ``tile``, else back); ``after_qk``: they
    follow the q and k channels (in_proj_qkv, conv1d); ``per_head``: a head is linear_value_head_dim wide, else 1."""
    import torch

    n_k = cfg["linear_num_key_heads"]
    per_k = cfg["linear_num_value_heads"] // n_k
    if per_k == 1:
        return w
    unit = cfg["linear_value_head_dim"] if per_head else 1
    start = 2 * n_k * cfg["linear_key_head_dim"] if after_qk else 0
    values = w.narrow(dim, start, w.shape[dim] - start)
    values = _swap_heads(values, dim, n_k, per_k, unit) if tile else _swap_heads(values, dim, per_k, n_k, unit)
    return torch.cat([w.narrow(dim, 0, start), values], dim) if start else values


def _heads(*, dim: int = 0, per_head: bool = True, after_qk: bool = False, **shapes: Any) -> TensorTransform:
    return TensorTransform(
        lambda w, cfg: _value_heads(w, cfg, dim=dim, per_head=per_head, after_qk=after_qk, tile=True),
        lambda w, cfg: _value_heads(w, cfg, dim=dim, per_head=per_head, after_qk=after_qk, tile=False),
        **shapes,
    )


def _a_to_gguf(w: torch.Tensor, cfg: Config) -> torch.Tensor:
    import torch

    return _value_heads((-torch.exp(w.double())).float(), cfg, dim=0, per_head=False, after_qk=False, tile=True)


def _a_to_hf(w: torch.Tensor, cfg: Config) -> torch.Tensor:
    import torch

    if not bool((w < 0).all()):
        raise InvalidFileError("ssm_a holds values >= 0: it must be -exp(A_log), negative")
    w = _value_heads(w, cfg, dim=0, per_head=False, after_qk=False, tile=False)
    return torch.log(-w.double()).float()


QWEN35_TRANSFORMS = {
    "blk.{bid}.attn_qkv.weight": _heads(after_qk=True),
    "blk.{bid}.attn_gate.weight": _heads(),
    "blk.{bid}.ssm_beta.weight": _heads(per_head=False),
    "blk.{bid}.ssm_alpha.weight": _heads(per_head=False),
    "blk.{bid}.ssm_dt.bias": _heads(per_head=False),
    "blk.{bid}.ssm_a": TensorTransform(_a_to_gguf, _a_to_hf, atol=A_LOG_ATOL),
    # transformers' depthwise Conv1d weight is (channels, 1, kernel); llama.cpp's ssm_conv1d (channels, kernel).
    "blk.{bid}.ssm_conv1d.weight": _heads(
        after_qk=True, gguf_shape=lambda s: (s[0], s[-1]), hf_shape=lambda s: (s[0], 1, s[-1])
    ),
    "blk.{bid}.ssm_out.weight": _heads(dim=1),
}


def _export_config(config: Any) -> dict[str, Any]:
    n_k, n_v = config.linear_num_key_heads, config.linear_num_value_heads
    if config.linear_key_head_dim != config.linear_value_head_dim:
        # llama.cpp's qwen35 loader sizes both head kinds by ssm.state_size.
        raise UnsupportedError(
            f"linear_key_head_dim {config.linear_key_head_dim} != linear_value_head_dim "
            f"{config.linear_value_head_dim}: llama.cpp's qwen35 takes one head size for both"
        )
    if n_v % n_k:
        raise UnsupportedError(f"{n_v} linear value heads do not divide into {n_k} key heads")
    sections = list(dict(config.rope_parameters or {}).get("mrope_section") or DEFAULT_MROPE_SECTION)
    return {
        "ssm.inner_size": config.linear_value_head_dim * n_v,
        "full_attention_interval": int(getattr(config, "full_attention_interval", None) or 4),
        "attention.recurrent_layers": [t == "linear_attention" for t in config.layer_types],
        "rope.dimension_sections": [*sections, 0, 0, 0, 0][:4],
    }


def _need(meta: Metadata, key: str) -> Any:
    if key not in meta:
        raise InvalidFileError(f"GGUF lacks {quoted(key)}, which qwen35 needs")
    return meta[key]


def _import_config(meta: Metadata, arch: str) -> dict[str, Any]:
    n_layers = meta[f"{arch}.block_count"]
    recurrent = meta.get(f"{arch}.attention.recurrent_layers")
    if recurrent is None:
        interval = meta.get(f"{arch}.full_attention_interval", 4)
        recurrent = [(i + 1) % interval != 0 for i in range(n_layers)]
    if len(recurrent) != n_layers:
        raise UnsupportedError(f"{len(recurrent)} recurrent-layer flags for {n_layers} layers (MTP layers?)")
    n_v, inner = _need(meta, f"{arch}.ssm.time_step_rank"), _need(meta, f"{arch}.ssm.inner_size")
    n_k = _need(meta, f"{arch}.ssm.group_count")
    if n_v < 1 or n_k < 1 or inner % n_v or n_v % n_k:
        raise InvalidFileError(f"GGUF's {n_v} value heads, {n_k} key heads and inner size {inner} do not fit")
    head_dim = _need(meta, f"{arch}.attention.key_length")
    sections = list(meta.get(f"{arch}.rope.dimension_sections") or [*DEFAULT_MROPE_SECTION, 0])
    return {
        "layer_types": ["linear_attention" if r else "full_attention" for r in recurrent],
        "linear_value_head_dim": inner // n_v,
        "rope_parameters": {
            "partial_rotary_factor": meta.get(f"{arch}.rope.dimension_count", head_dim) / head_dim,
            "mrope_section": sections[:3],
            "mrope_interleaved": True,
        },
    }


_IN_PROJ = tuple(f"linear_attn.in_proj_{x}" for x in ("qkv", "z", "b", "a"))
# Full attention: the llama layer with a gated q_proj (its gate rows scale with v -> o as a product, so the v -> o
# group still folds); both block norms compute x * (1 + w).
QWEN35_ATTENTION_PLAN = LayerPlan(
    sequential=LLAMA_PLAN.sequential,
    awq=LLAMA_PLAN.awq,
    norm_offset=1.0,
)
# Linear attention: the four input projections read the same normed input; out_proj reads the gated norm, whose
# weight is shared by all value heads (no per-channel scale folds into it: no group for out_proj).
QWEN35_LINEAR_PLAN = LayerPlan(
    sequential=(_IN_PROJ, ("linear_attn.out_proj",), GATE_UP, ("mlp.down_proj",)),
    awq=(
        ScaleGroup("input_layernorm", _IN_PROJ, "linear_attn"),
        ScaleGroup("post_attention_layernorm", GATE_UP, "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
    norm_offset=1.0,
    no_clip=(),
    mixer="linear_attn",
)

QWEN35 = register(
    Family(
        "qwen35",
        "Qwen3_5ForCausalLM",
        "qwen3_5_text",
        QWEN35_TENSORS,
        QWEN35_HPARAMS,
        norm_shift=1.0,
        unshifted=("blk.{bid}.ssm_norm.weight",),
        transforms=QWEN35_TRANSFORMS,
        gated_q=True,
        hybrid=True,
        extra_config=_import_config,
        export_config=_export_config,
        layer_plan=QWEN35_ATTENTION_PLAN,
        layer_plans={"linear_attention": QWEN35_LINEAR_PLAN},
        tiny=(
            # Qwen/Qwen3.5-9B's text config (the checkpoint is a Qwen3_5ForConditionalGeneration; its text model
            # is transformers' Qwen3_5ForCausalLM): 3 linear-attention layers to 1 full; its 16 linear key heads
            # and 32 value heads, both 128 wide (here 16; 32 rows of in_proj_a/b are what the 4-bit
            # packers need); 4 query heads per KV head (16:4); RoPE on a quarter of each head, interleaved MRoPE
            # sections, base 1e7; conv kernel 4; untied head.
            TinyModel(
                "qwen35",
                "Qwen/Qwen3.5-9B",
                "qwen3_5_text",
                "qwen35",
                {
                    "num_hidden_layers": 4,
                    "layer_types": ["linear_attention"] * 3 + ["full_attention"],
                    "num_attention_heads": 4,
                    "num_key_value_heads": 1,
                    "head_dim": 32,
                    "linear_num_key_heads": 16,
                    "linear_num_value_heads": 32,
                    "linear_key_head_dim": 16,
                    "linear_value_head_dim": 16,
                    "linear_conv_kernel_dim": 4,
                    "rope_parameters": {
                        "rope_type": "default",
                        "rope_theta": 10_000_000.0,
                        "partial_rotary_factor": 0.25,
                        "mrope_section": [2, 1, 1],
                        "mrope_interleaved": True,
                    },
                    "tie_word_embeddings": False,
                },
            ),
        ),
    )
)
