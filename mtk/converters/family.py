"""Model families as data: how a GGUF architecture maps to a transformers model, in both directions.

Each family module (``llama.py``, ``qwen2.py``, ...) builds one :class:`Family` and registers it under its
GGUF architecture name. Tensor maps are templates: ``{bid}`` is the block (layer) index and ``{xid}`` the
expert index. The transforms that differ between families are flags here, applied by the converters:

- ``permute_qk``: llama.cpp's NORM RoPE expects Q/K rows interleaved per head (pairs ``(i, i + d/2)``
  become neighbours); HF keeps the halves apart. Families using NEOX RoPE (qwen, phi3, gemma) need none.
- ``norm_shift``: Gemma computes ``x * (1 + w)``; llama.cpp's converter stores ``w + 1`` so its kernel can
  compute ``x * w``.
- ``expert_tensors``: GGUF stacks the experts of a MoE layer in one 3-D tensor; HF checkpoints keep one
  2-D tensor per expert.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mtk.registry import Registry

Metadata = Mapping[str, Any]

# GGUF hyper-parameter key (after "{arch}.") -> transformers config field, shared by every family.
COMMON_HPARAMS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
}

# The llama layout that most families share (from llama.cpp's gguf-py tensor_mapping.py, LLAMA rows).
LLAMA_TENSORS: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.attn_q.weight": "model.layers.{bid}.self_attn.q_proj.weight",
    "blk.{bid}.attn_k.weight": "model.layers.{bid}.self_attn.k_proj.weight",
    "blk.{bid}.attn_v.weight": "model.layers.{bid}.self_attn.v_proj.weight",
    "blk.{bid}.attn_q.bias": "model.layers.{bid}.self_attn.q_proj.bias",
    "blk.{bid}.attn_k.bias": "model.layers.{bid}.self_attn.k_proj.bias",
    "blk.{bid}.attn_v.bias": "model.layers.{bid}.self_attn.v_proj.bias",
    "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
    "blk.{bid}.ffn_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    "blk.{bid}.ffn_gate.weight": "model.layers.{bid}.mlp.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.up_proj.weight",
    "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
}


@dataclass(frozen=True)
class Family:
    """How one GGUF architecture corresponds to one transformers architecture."""

    gguf_arch: str
    hf_architecture: str  # what gguf-import writes, e.g. "LlamaForCausalLM"
    model_type: str  # transformers model_type, e.g. "llama"
    tensors: Mapping[str, str]  # GGUF name template -> HF name template
    hparams: Mapping[str, str] = field(default_factory=lambda: dict(COMMON_HPARAMS))
    permute_qk: bool = False
    norm_shift: float = 0.0
    # GGUF 3-D expert tensor template -> HF per-expert template (with {xid}).
    expert_tensors: Mapping[str, str] = field(default_factory=dict)
    # Family-specific config fields derived from the GGUF metadata (import direction).
    extra_config: Callable[[Metadata, str], dict[str, Any]] | None = None
    # Family-specific GGUF keys (without the "{arch}." prefix) from a transformers config (export direction).
    export_config: Callable[[Any], dict[str, Any]] | None = None
    # Other HF architectures that export to this GGUF architecture (e.g. Mistral -> llama).
    also_exports: tuple[str, ...] = ()

    def gguf_to_hf(self, name: str) -> tuple[str, dict[str, int]] | None:
        """The HF template of a GGUF tensor name and its indices, or None when the name is unknown."""
        for pattern, (gguf_t, _) in self._patterns().items():
            m = pattern.fullmatch(name)
            if m:
                return self.all_tensors()[gguf_t], {k: int(v) for k, v in m.groupdict().items()}
        return None

    def hf_to_gguf(self, name: str) -> tuple[str, dict[str, int]] | None:
        """The GGUF template of an HF tensor name and its indices (``xid`` for experts), or None."""
        for pattern, gguf_t in _compile_hf(tuple(self.all_tensors().items())).items():
            m = pattern.fullmatch(name)
            if m:
                return gguf_t, {k: int(v) for k, v in m.groupdict().items()}
        return None

    def export_hparams(self, config: Any) -> dict[str, Any]:
        """GGUF hyper-parameter keys (without the "{arch}." prefix) from a transformers config."""
        out = {}
        for key, field_name in self.hparams.items():
            value = getattr(config, field_name, None)
            if value is not None:
                out[key] = value
        if self.export_config:
            out.update(self.export_config(config))
        return out

    @property
    def hf_template_to_gguf(self) -> dict[str, str]:
        return {hf_t: gguf_t for gguf_t, hf_t in self.all_tensors().items()}

    def all_tensors(self) -> dict[str, str]:
        return {**self.tensors, **self.expert_tensors}

    def _patterns(self) -> dict[re.Pattern[str], tuple[str, str]]:
        return _compile(tuple(self.all_tensors().items()))


_CACHE: dict[tuple[tuple[str, str], ...], dict[re.Pattern[str], tuple[str, str]]] = {}


def _compile(items: tuple[tuple[str, str], ...]) -> dict[re.Pattern[str], tuple[str, str]]:
    if items not in _CACHE:
        compiled = {}
        for gguf_t, hf_t in items:
            rx = re.escape(gguf_t).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)")
            compiled[re.compile(rx)] = (gguf_t, hf_t)
        _CACHE[items] = compiled
    return _CACHE[items]


_HF_CACHE: dict[tuple[tuple[str, str], ...], dict[re.Pattern[str], str]] = {}


def _compile_hf(items: tuple[tuple[str, str], ...]) -> dict[re.Pattern[str], str]:
    if items not in _HF_CACHE:
        _HF_CACHE[items] = {
            re.compile(re.escape(hf_t).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)")): g
            for g, hf_t in items
        }
    return _HF_CACHE[items]


FAMILIES: Registry[Family] = Registry("architecture", entry_point_group="mtk.converters")


def register(family: Family) -> Family:
    return FAMILIES.add(family.gguf_arch, family)


def family_for_gguf(arch: str) -> Family:
    _load_builtin()
    return FAMILIES.get(arch)


def family_for_hf(architecture: str) -> Family:
    _load_builtin()
    for name in FAMILIES.names():
        fam = FAMILIES.get(name)
        if architecture == fam.hf_architecture or architecture in fam.also_exports:
            return fam
    from mtk.errors import UnsupportedError

    known = sorted(
        {a for n in FAMILIES.names() for a in (FAMILIES.get(n).hf_architecture, *FAMILIES.get(n).also_exports)}
    )
    raise UnsupportedError(f"unsupported architecture {architecture!r}; supported: {', '.join(known)}")


def _load_builtin() -> None:
    # Explicit imports: each module registers its family once.
    from mtk.converters import families  # noqa: F401
