"""Gemma 4 (text): sliding and global layers of different head sizes, KV sharing, per-layer embeddings.

What sets it apart from Gemma 3 (transformers' ``Gemma4ForCausalLM``, llama.cpp's ``gemma4`` loader):

- Norms compute ``x * w`` (no ``1 +``), so nothing is shifted; V is RMS-normalised without a weight, and
  attention is not scaled (the Q/K norms do that).
- Sliding layers have heads of ``head_dim``, global layers of ``global_head_dim`` (256 and 512 in the real
  models): llama.cpp reads ``attention.key_length_swa`` and ``attention.key_length``.
- Global layers use proportional RoPE (mtk.converters.rope), stored as ``rope_freqs.weight``; sliding ones the
  default RoPE with base 10000.
- The last ``num_kv_shared_layers`` layers compute no K/V: each reuses that of the last earlier layer of its
  type. llama.cpp hard-codes those as the two layers before the first shared one (sliding, then global).
  Shared layers may have a double-wide MLP (``use_double_wide_mlp``): ``feed_forward_length`` per layer.
- Per-layer embeddings (PLE): a second token embedding of ``num_layers * hidden_size_per_layer_input`` columns,
  projected with the main embedding and fed to each layer through a gate and a projection; llama.cpp needs its
  vocabulary to be the main one.
- Each layer's output is multiplied by a stored scalar (``layer_scalar``).

The Mixture-of-Experts variant (26B-A4B) and K=V attention (31B's global layers) are refused. mtk quantize
runs RTN only (GPTQ and AWQ are refused, ``GEMMA4_PLAN``). Release checkpoints are
``Gemma4ForConditionalGeneration``; this row converts the text model (``Gemma4ForCausalLM``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtk.converters.family import (
    COMMON_HPARAMS,
    GATE_UP,
    QKV,
    Family,
    LayerPlan,
    Metadata,
    ScaleGroup,
    TinyModel,
    register,
)
from mtk.converters.rope import RopeLayout
from mtk.errors import InvalidFileError, UnsupportedError

GEMMA4_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "per_layer_token_embd.weight": "model.embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "model.per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "model.per_layer_projection_norm.weight",
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.attn_q.weight": "model.layers.{bid}.self_attn.q_proj.weight",
    "blk.{bid}.attn_k.weight": "model.layers.{bid}.self_attn.k_proj.weight",
    "blk.{bid}.attn_v.weight": "model.layers.{bid}.self_attn.v_proj.weight",
    "blk.{bid}.attn_q_norm.weight": "model.layers.{bid}.self_attn.q_norm.weight",
    "blk.{bid}.attn_k_norm.weight": "model.layers.{bid}.self_attn.k_norm.weight",
    "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
    "blk.{bid}.post_attention_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    "blk.{bid}.ffn_norm.weight": "model.layers.{bid}.pre_feedforward_layernorm.weight",
    "blk.{bid}.post_ffw_norm.weight": "model.layers.{bid}.post_feedforward_layernorm.weight",
    "blk.{bid}.ffn_gate.weight": "model.layers.{bid}.mlp.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.up_proj.weight",
    "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
    "blk.{bid}.inp_gate.weight": "model.layers.{bid}.per_layer_input_gate.weight",
    "blk.{bid}.proj.weight": "model.layers.{bid}.per_layer_projection.weight",
    "blk.{bid}.post_norm.weight": "model.layers.{bid}.post_per_layer_input_norm.weight",
    "blk.{bid}.layer_output_scale.weight": "model.layers.{bid}.layer_scalar",
}
GEMMA4_HPARAMS = {**COMMON_HPARAMS, "attention.sliding_window": "sliding_window"}
SLIDING, GLOBAL = "sliding_attention", "full_attention"
# llama.cpp runs the sliding layers with this RoPE (its default rope.freq_base_swa; the converter writes none).
SWA_ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def _global_layer(config: Any) -> Any:
    """The per-layer view of the first global layer (its head size, KV heads)."""
    return config.per_layer_config[config.layer_types.index(GLOBAL)]


def _export(config: Any) -> dict[str, Any]:
    """The GGUF keys llama.cpp's gemma4 loader reads beyond the common ones (see the module notes)."""
    if getattr(config, "enable_moe_block", False):
        raise UnsupportedError("Gemma 4 with Mixture-of-Experts blocks (26B-A4B) is not supported yet")
    if getattr(config, "attention_k_eq_v", False):
        raise UnsupportedError("Gemma 4 with K=V attention on its global layers (31B) is not supported yet")
    types, n = list(config.layer_types), config.num_hidden_layers
    shared = config.num_kv_shared_layers
    first_shared = n - shared
    if shared and types[max(0, first_shared - 2) : first_shared] != [SLIDING, GLOBAL]:
        raise UnsupportedError(
            "llama.cpp's gemma4 shares the K/V of the two layers before the first shared one (sliding, then "
            f"global); this config's are {types[max(0, first_shared - 2) : first_shared]}"
        )
    rope_full = config.rope_parameters[GLOBAL]
    if rope_full.get("rope_type") != "proportional":
        raise UnsupportedError(f"Gemma 4 global layers with {rope_full.get('rope_type')!r} RoPE are not supported")
    glob = _global_layer(config)
    swa_dim, full_dim = config.head_dim, glob.head_dim
    swa_rot = int(swa_dim * float(config.rope_parameters[SLIDING].get("partial_rotary_factor", 1.0)))
    ple = config.hidden_size_per_layer_input or 0
    if ple and config.vocab_size_per_layer_input != config.vocab_size:
        raise UnsupportedError(
            f"per-layer embeddings over {config.vocab_size_per_layer_input} tokens, not the vocabulary's "
            f"{config.vocab_size}: llama.cpp looks both up with the same token ids"
        )
    out: dict[str, Any] = {
        "attention.key_length": full_dim,
        "attention.value_length": full_dim,
        "attention.key_length_swa": swa_dim,
        "attention.value_length_swa": swa_dim,
        "rope.dimension_count": full_dim,  # proportional: the whole head turns, some pairs by ~0
        "rope.dimension_count_swa": swa_rot,
        "attention.shared_kv_layers": shared,
        "embedding_length_per_layer_input": ple,
        "attention.sliding_window_pattern": [t == SLIDING for t in types],
    }
    if glob.num_key_value_heads != config.num_key_value_heads:
        out["attention.head_count_kv"] = [
            config.num_key_value_heads if t == SLIDING else glob.num_key_value_heads for t in types
        ]
    if config.use_double_wide_mlp and shared:
        ff = config.intermediate_size
        out["feed_forward_length"] = [ff if i < first_shared else 2 * ff for i in range(n)]
    if config.final_logit_softcapping is not None:
        out["final_logit_softcapping"] = float(config.final_logit_softcapping)
    return out


def _need(meta: Metadata, key: str) -> Any:
    if key not in meta:
        raise InvalidFileError(f"GGUF lacks {key!r}, which gemma4 needs")
    return meta[key]


def _import(meta: Metadata, arch: str) -> dict[str, Any]:
    """transformers config fields from a gemma4 GGUF (the inverse of ``_export``)."""
    n = meta[f"{arch}.block_count"]
    pattern = _need(meta, f"{arch}.attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != n:
        raise InvalidFileError(f"{arch}.attention.sliding_window_pattern does not give each of the {n} layers")
    shared = int(meta.get(f"{arch}.attention.shared_kv_layers", 0))
    if not 0 <= shared <= n - 2:
        raise InvalidFileError(f"{arch}.attention.shared_kv_layers is {shared} of {n} layers")
    swa_dim = int(_need(meta, f"{arch}.attention.key_length_swa"))
    full_dim = int(_need(meta, f"{arch}.attention.key_length"))
    if meta.get(f"{arch}.rope.dimension_count_swa", swa_dim) != swa_dim:
        raise UnsupportedError("Gemma 4 sliding layers with partial RoPE are not supported by gguf-import")
    ff = meta.get(f"{arch}.feed_forward_length")
    double = False
    if isinstance(ff, list):  # the shared layers' MLPs twice as wide (use_double_wide_mlp), or all alike
        wide = ff[-1] if shared else ff[0]
        if ff != [ff[0]] * (n - shared) + [wide] * shared or wide not in (ff[0], 2 * ff[0]):
            raise UnsupportedError(f"{arch}.feed_forward_length per layer {ff} is not Gemma 4's double-wide MLP")
        double, ff = wide != ff[0], ff[0]
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens else meta.get(f"{arch}.vocab_size")
    return {
        "head_dim": swa_dim,
        "global_head_dim": full_dim,
        "layer_types": [SLIDING if s else GLOBAL for s in pattern],
        "num_kv_shared_layers": shared,
        "use_double_wide_mlp": double,
        "intermediate_size": ff,
        "hidden_size_per_layer_input": int(meta.get(f"{arch}.embedding_length_per_layer_input", 0)),
        "vocab_size_per_layer_input": vocab,
        "final_logit_softcapping": meta.get(f"{arch}.final_logit_softcapping"),
        "attention_k_eq_v": False,
        "enable_moe_block": False,
    }


# The per-layer-embedding gate reads the residual stream (no norm) and feeds the projection through a GELU and
# a product, so neither takes an AWQ scale; nor does v -> o (V is RMS-normalised between them). The calibrated
# methods are refused anyway (layerwise_forward): GPTQ and AWQ would need each sample's per-layer inputs and the
# K/V that the shared layers take from earlier ones.
GEMMA4_PLAN = LayerPlan(
    sequential=(
        QKV,
        ("self_attn.o_proj",),
        GATE_UP,
        ("mlp.down_proj",),
        ("per_layer_input_gate",),
        ("per_layer_projection",),
    ),
    awq=(
        ScaleGroup("pre_feedforward_layernorm", GATE_UP, "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
    # Shared layers compute no K/V; configs without per-layer embeddings have no gate or projection.
    optional=("self_attn.k_proj", "self_attn.v_proj", "per_layer_input_gate", "per_layer_projection"),
    layerwise_forward=False,
)


def _layer_heads(cfg: Mapping[str, Any]) -> list[tuple[int, int]]:
    kv = cfg["num_key_value_heads"]
    return [(cfg["head_dim"] if t == SLIDING else cfg["global_head_dim"], kv) for t in cfg["layer_types"]]


GEMMA4 = register(
    Family(
        "gemma4",
        "Gemma4ForCausalLM",
        "gemma4_text",
        GEMMA4_TENSORS,
        GEMMA4_HPARAMS,
        extra_config=_import,
        export_config=_export,
        rope=RopeLayout(
            default_theta=1_000_000.0, freq_factors=True, fixed={SLIDING: SWA_ROPE}, tensor_type="proportional"
        ),
        layer_plan=GEMMA4_PLAN,
        layer_heads=_layer_heads,
        uniform_layers=False,
        # Measured on the tiny model at F32: 9.9e-3 (KL 3e-7, top-1 1.0); with llama.cpp's f16 GELU table
        # emulated in transformers, 1.6e-3 at worst and ~1e-6 at most positions: the table, not the layout.
        f32_max_abs=3e-2,
        tiny=(
            # google/gemma-4-E2B's text quirks at width 64: one KV head, sliding heads of 32 and global of 64
            # (256 and 512 there), proportional RoPE turning a quarter of the global heads, the last two of four
            # layers sharing K/V with a double-wide MLP (20 of 35 there), per-layer embeddings of 32 per layer
            # (256 there), final logit softcapping at 30.
            TinyModel(
                "gemma4",
                "google/gemma-4-E2B",
                "gemma4_text",
                "gemma4",
                {
                    "num_hidden_layers": 4,
                    "num_key_value_heads": 1,
                    "head_dim": 32,
                    "global_head_dim": 64,
                    "layer_types": [SLIDING, GLOBAL, SLIDING, GLOBAL],
                    "num_kv_shared_layers": 2,
                    "use_double_wide_mlp": True,
                    "hidden_size_per_layer_input": 32,
                    "final_logit_softcapping": 30.0,
                    "sliding_window": 512,
                },
                vocab_fields=("vocab_size_per_layer_input",),
            ),
        ),
    )
)
