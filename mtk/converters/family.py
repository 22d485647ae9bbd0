"""Model families as data: everything mtk knows about one architecture, for every command.

Each family module (``families/llama.py``, ``families/qwen.py``, ...) builds its :class:`Family` rows and
registers each under its GGUF architecture name; lookups go by GGUF architecture, HF architecture or
transformers model_type. A family holds the GGUF <-> HF tensor maps, the hyper-parameter keys, where its
config keeps RoPE (:mod:`mtk.converters.rope` holds the RoPE types themselves), tensors the exporter
synthesises, the quantizers' :class:`LayerPlan`, and the tiny test checkpoints that mirror real models.

Tensor maps are templates: ``{bid}`` is the block (layer) index and ``{xid}`` the expert index. The
transforms that differ between families are flags here, applied by the converters:

- ``permute_qk``: llama.cpp's NORM RoPE expects Q/K rows interleaved per head (pairs ``(i, i + d/2)``
  become neighbours); HF keeps the halves apart. Families using NEOX RoPE (qwen, phi3, gemma) need none.
- ``norm_shift``: Gemma computes ``x * (1 + w)``; llama.cpp's converter stores ``w + 1`` so its kernel can
  compute ``x * w``.
- ``expert_tensors``: GGUF stacks the experts of a MoE layer in one 3-D tensor; HF checkpoints keep one
  2-D tensor per expert.
- ``transforms``: any other change of one tensor's values or shape (Qwen3.5's ``-exp(A_log)``, its squeezed
  conv kernels and reordered value heads), as a pair of functions, one per direction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mtk.converters import rope
from mtk.converters.rope import RopeLayout, Synthesised
from mtk.errors import UnsupportedError
from mtk.registry import Registry

if TYPE_CHECKING:
    import torch

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
class ScaleGroup:
    """One AWQ scaling group: the operation whose output feeds ``linears`` (``prev``), the module whose output
    the scale search compares (``inspect``), and which rows of ``prev`` carry the scaled channels."""

    prev: str
    linears: tuple[str, ...]
    inspect: str
    # "all" rows of prev, or the "second_half" (Phi-3's fused gate_up_proj feeds down_proj through its up half).
    prev_rows: Literal["all", "second_half"] = "all"


@dataclass(frozen=True)
class LayerPlan:
    """What a family's decoder layer looks like to the quantizers (module names relative to the layer).

    ``sequential`` lists the layer's Linear modules in groups that see the same input, in forward order
    (GPTQ's true-sequential order: a later group is calibrated on the outputs of the already-quantized
    earlier ones). ``awq`` lists AWQ's scaling groups. Gemma's norms multiply by ``1 + weight``
    (``norm_offset`` 1), which changes how a scale is folded in.
    """

    sequential: tuple[tuple[str, ...], ...]
    awq: tuple[ScaleGroup, ...]
    norm_offset: float = 0.0
    # AutoAWQ leaves q/k out of the clipping search: their outputs meet in a softmax, not a sum.
    no_clip: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")
    # The token mixer: the one inspected module that takes the decoder layer's keyword arguments (masks, RoPE).
    mixer: str = "self_attn"


QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
# The llama layer most families share: a norm before q/k/v and one before gate/up.
LLAMA_PLAN = LayerPlan(
    sequential=(QKV, ("self_attn.o_proj",), GATE_UP, ("mlp.down_proj",)),
    awq=(
        ScaleGroup("input_layernorm", QKV, "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("post_attention_layernorm", GATE_UP, "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
)

TokenizerKind = Literal["bpe", "spm", "gemma", "qwen35"]
# The shape every tiny test checkpoint shares unless its row overrides it.
TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": 0.1,
    "rms_norm_eps": 1e-6,
}


@dataclass(frozen=True)
class TinyModel:
    """A tiny random checkpoint the tests build (tests/fixtures_models.py), keeping one real model's quirks."""

    name: str  # the test id, e.g. "mistral"
    mirrors: str  # the real model whose config quirks it keeps, e.g. "Qwen/Qwen3-8B"
    model_type: str
    tokenizer: TokenizerKind
    config: Mapping[str, Any] = field(default_factory=dict)  # over TINY_SHAPE
    # Special tokens llama.cpp expects in the vocabulary (it recognises Phi-3 by name and wants its chat tokens).
    special_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorTransform:
    """A change llama.cpp's converter makes to one tensor, both ways. The functions get the float32 tensor and
    the transformers config as a dict (export: ``config.to_dict()``; import: the fields gguf-import derives);
    the shape functions map a shape across when the transform changes it (None: unchanged)."""

    to_gguf: Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]
    to_hf: Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]
    gguf_shape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None
    hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None
    # The largest difference a float32 export and import leaves (0: bit for bit), for a lossy transform.
    atol: float = 0.0


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
    # GGUF templates ending in norm.weight that norm_shift leaves alone (Qwen3.5's gated norm computes x * w).
    unshifted: tuple[str, ...] = ()
    # GGUF template -> its value/shape change (see TensorTransform).
    transforms: Mapping[str, TensorTransform] = field(default_factory=dict)
    # The Q projection also yields a per-head output gate: twice the rows, [q, gate] per head (Qwen3-Next/3.5).
    gated_q: bool = False
    # Decoder layers of different types (config.layer_types) hold different tensors (Qwen3.5's linear-attention
    # and full-attention layers); gguf-import then checks that the layers of each type agree.
    hybrid: bool = False
    # GGUF 3-D expert tensor template -> HF per-expert template (with {xid}).
    expert_tensors: Mapping[str, str] = field(default_factory=dict)
    # Family-specific config fields derived from the GGUF metadata (import direction).
    extra_config: Callable[[Metadata, str], dict[str, Any]] | None = None
    # Family-specific GGUF keys (without the "{arch}." prefix) from a transformers config (export direction).
    export_config: Callable[[Any], dict[str, Any]] | None = None
    # Other HF architectures (and their model_types) that export to this GGUF architecture (Mistral -> llama).
    also_exports: tuple[str, ...] = ()
    also_model_types: tuple[str, ...] = ()
    rope: RopeLayout = field(default_factory=RopeLayout)
    # HF tensor name endings gguf-export skips: buffers with no weights llama.cpp needs (it recomputes them).
    dropped: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # GGUF tensors the exporter computes from the config besides its RoPE type's: name -> tensor.
    synthesise: Callable[[Any], dict[str, Synthesised]] | None = None
    # How mtk quantize walks a decoder layer; None: quantize refuses the family.
    layer_plan: LayerPlan | None = None
    # Hybrid families: the plan of each other layer type (config.layer_types), over layer_plan.
    layer_plans: Mapping[str, LayerPlan] = field(default_factory=dict)
    tiny: tuple[TinyModel, ...] = ()

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

    def shifts(self, template: str) -> bool:
        """Whether ``norm_shift`` applies to the GGUF tensor ``template``."""
        return bool(self.norm_shift) and template.endswith("norm.weight") and template not in self.unshifted

    def synthesised(self, config: Any) -> dict[str, Synthesised]:
        """The GGUF tensors to compute for a transformers config (its RoPE type's, then the family's own)."""
        own = self.synthesise(config) if self.synthesise else {}
        return {**rope.gguf_tensors(self.rope, config, self.gguf_arch), **own}

    @property
    def model_types(self) -> tuple[str, ...]:
        return (self.model_type, *self.also_model_types)

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


def all_families() -> list[Family]:
    _load_builtin()
    return [FAMILIES.get(name) for name in FAMILIES.names()]


def family_for_hf(architecture: str) -> Family:
    for fam in all_families():
        if architecture == fam.hf_architecture or architecture in fam.also_exports:
            return fam
    known = sorted(
        {a for n in FAMILIES.names() for a in (FAMILIES.get(n).hf_architecture, *FAMILIES.get(n).also_exports)}
    )
    raise UnsupportedError(f"unsupported architecture {architecture!r}; supported: {', '.join(known)}")


def family_for_model_type(model_type: str) -> Family:
    for fam in all_families():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in all_families() for t in f.model_types)
    raise UnsupportedError(f"unsupported model type {model_type!r}; supported: {', '.join(known)}")


def layer_plan(model_type: str) -> LayerPlan:
    """The quantize plan of a transformers model_type; families without one are refused."""
    plans = {t: f.layer_plan for f in all_families() if f.layer_plan is not None for t in f.model_types}
    if model_type not in plans:
        known = ", ".join(sorted(plans))
        raise UnsupportedError(f"mtk quantize does not support model type {model_type!r} (supported: {known})")
    return plans[model_type]


def layer_plans(model_type: str, layer_types: list[str] | None, n_layers: int) -> list[LayerPlan]:
    """Each decoder layer's quantize plan: its layer type's, else the family's (see :func:`layer_plan`)."""
    default = layer_plan(model_type)
    by_type = family_for_model_type(model_type).layer_plans
    return [by_type.get(t, default) for t in (layer_types or [""] * n_layers)]


def tiny_models() -> list[TinyModel]:
    """Every registered family's tiny test checkpoints (what the tests parametrise over)."""
    return [t for f in all_families() for t in f.tiny]


def _load_builtin() -> None:
    # Explicit imports: each module registers its family once.
    from mtk.converters import families  # noqa: F401
