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
- ``expert_tensors``: GGUF stacks the experts of a MoE layer in one 3-D tensor; HF checkpoints as
  transformers saves them (and as the Hub holds them) keep one 2-D tensor per expert.
- ``fused_tensors``: transformers 5 holds a layer's experts in memory as 3-D parameters, gate and up
  concatenated (``mlp.experts.gate_up_proj`` (E, 2F, D), gate first; ``mlp.experts.down_proj`` (E, D, F)),
  and writes that layout when saving with ``save_original_format=False``. gguf-export reads both layouts;
  gguf-import writes the per-expert one, which transformers 5 loads (fusing it) and saves itself.
- ``derived``: GGUF tensors cut from one HF tensor (or a packed pair) by a family's own functions, and joined
  back on import: gpt-oss keeps its experts as one (E, D, 2F) ``gate_up_proj`` with gate and up interleaved,
  which llama.cpp stores as two (E, F, D) tensors.
- ``transforms``: any other change of one tensor's values or shape (Qwen3.5's ``-exp(A_log)``, its squeezed
  conv kernels and reordered value heads), as a pair of functions, one per direction.

Several families may share a GGUF architecture (Mixtral is llama.cpp's ``llama`` with experts): each is
registered under its own ``name``, and :func:`family_for_gguf` tells them apart by whether the GGUF has experts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mtk.converters import rope
from mtk.converters.rope import RopeLayout, Synthesised
from mtk.errors import UnsupportedError
from mtk.registry import Registry

if TYPE_CHECKING:
    import torch
    from gguf import GGMLQuantizationType

    from mtk.formats.checkpoint import HFCheckpoint

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

# MoE experts: GGUF's 3-D tensors (ggml ne {D, F, E} for gate/up, {F, D, E} for down; PyTorch order reversed).
EXPERTS = ("blk.{bid}.ffn_gate_exps.weight", "blk.{bid}.ffn_up_exps.weight", "blk.{bid}.ffn_down_exps.weight")
# transformers 5's fused experts module (Qwen2/3-MoE, Mixtral): gate_up_proj (E, 2F, D), gate rows first.
FUSED_EXPERTS: dict[str, tuple[str, ...]] = {
    "model.layers.{bid}.mlp.experts.gate_up_proj": EXPERTS[:2],
    "model.layers.{bid}.mlp.experts.down_proj": EXPERTS[2:],
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
    # Modules that read the same input but stay float (a MoE router): their weight columns take the scale exactly,
    # so that they compute what they did before the scale was folded into prev.
    compensate: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpertPlan:
    """The routed experts of a mixture-of-experts layer as the quantizers see them (names relative to the layer).

    Checkpoints, and mtk's quantized output, keep one 2-D weight per expert: ``{module}.{xid}.{name}.weight`` for
    each name of ``linears`` (gate, up, down), which ``LayerPlan.sequential`` and ``awq`` list with ``{xid}``.
    transformers 5 fuses them into 3-D parameters of ``module``: ``gate_up`` ``(experts, 2 * inter, hidden)``
    (each expert's gate rows, then its up rows) and ``down`` ``(experts, hidden, inter)``, every expert's slice
    oriented ``(out, in)`` like a Linear weight. The module is called as ``module(hidden, top_k_index,
    top_k_weights)`` and computes ``down(act_fn(gate(x)) * up(x))`` per expert, weighted by its routing weight.
    ``count`` is the config field holding the number of experts. ``keep_float`` are the layer's modules that stay
    float (the router, a shared-expert gate: GPTQModel and llm-compressor leave them so).
    """

    module: str = "mlp.experts"
    count: str = "num_experts"
    gate_up: str = "gate_up_proj"
    down: str = "down_proj"
    linears: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    keep_float: tuple[str, ...] = ("mlp.gate",)
    # (module prefix, checkpoint prefix) pairs where checkpoints name the block otherwise than transformers' module
    # tree (Mixtral: block_sparse_moe on disk, mlp in memory); the plan's names are the module tree's.
    stored: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LayerPlan:
    """What a family's decoder layer looks like to the quantizers (module names relative to the layer).

    ``sequential`` lists the layer's Linear modules in groups that see the same input, in forward order
    (GPTQ's true-sequential order: a later group is calibrated on the outputs of the already-quantized
    earlier ones); a group named with ``{xid}`` stands for one group per expert, calibrated together. ``awq``
    lists AWQ's scaling groups. Gemma's norms multiply by ``1 + weight`` (``norm_offset`` 1), which changes how a
    scale is folded in.
    """

    sequential: tuple[tuple[str, ...], ...]
    awq: tuple[ScaleGroup, ...]
    norm_offset: float = 0.0
    # AutoAWQ leaves q/k out of the clipping search: their outputs meet in a softmax, not a sum.
    no_clip: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")
    # Mixture-of-experts layers: where the routed experts live; names with {xid} above are per expert.
    experts: ExpertPlan | None = None
    # Linears some layers lack (Gemma 4's KV-sharing layers have no K/V projections).
    optional: tuple[str, ...] = ()
    # Whether the calibrated methods' layer-by-layer forward reproduces the model (False: only RTN runs).
    layerwise_forward: bool = True
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

TokenizerKind = Literal["bpe", "spm", "gemma", "gemma4", "o200k", "qwen35"]
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
    # A multimodal checkpoint's own config fields (vision_config ...); TINY_SHAPE and ``config`` then form its
    # text_config. None: a causal LM.
    outer: Mapping[str, Any] | None = None
    # Config fields the builder sets to the tokenizer's size (Gemma 4's per-layer embedding vocabulary).
    vocab_fields: tuple[str, ...] = ()


# Where multimodal checkpoints keep their text tower, and the causal LM's names for it: transformers 5 saves
# model.language_model.* and lm_head.*, transformers 4 saved language_model.model.* and language_model.lm_head.*.
TEXT_TOWER_PREFIXES: dict[str, str] = {
    "model.language_model.": "model.",
    "language_model.model.": "model.",
    "language_model.lm_head.": "lm_head.",
    "lm_head.": "lm_head.",
}


@dataclass(frozen=True)
class Tower:
    """A multimodal architecture whose text tower is the family's causal LM (its other towers are left out)."""

    hf_architecture: str  # e.g. "Gemma3ForConditionalGeneration"
    model_type: str  # its transformers model_type, e.g. "gemma3" (the text tower's is the family's)
    prefixes: Mapping[str, str] = field(default_factory=lambda: dict(TEXT_TOWER_PREFIXES))

    def rename(self, name: str) -> str | None:
        """A text tower tensor's name in the causal LM; None for the other towers' tensors."""
        for old, new in self.prefixes.items():
            if name.startswith(old):
                return new + name[len(old) :]
        return None


@dataclass(frozen=True)
class Derived:
    """GGUF tensors cut from HF tensors by a family's functions, and joined back on import.

    ``sources``: the HF templates read (one, or a packed checkpoint's blocks and scales); ``parts``: the GGUF
    templates written. ``split`` maps the HF tensors (float32, or the checkpoint's own dtype when ``packed``)
    to one GGUF-layout tensor per part: float32, or, when ``packed`` names a GGML type, that type's block
    bytes (uint8, rows of whole blocks), written unchanged when the plan picks that type. ``join`` maps the
    GGUF parts (float32) back to the one HF tensor (``sources[0]``); None: import refuses them.
    """

    sources: tuple[str, ...]
    parts: tuple[str, ...]
    split: Callable[..., Sequence[torch.Tensor]]
    join: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None
    packed: GGMLQuantizationType | None = None
    # split also takes the transformers config (keyword ``config``): DeepSeek's kv_b_proj splits per head.
    config: bool = False


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
    # transformers 5's fused layout (export only): HF template -> the GGUF templates it holds, concatenated
    # along its rows (dim -2) in this order; a single template is a rename (Mixtral's router).
    fused_tensors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # GGUF tensors cut from one HF tensor (gpt-oss's fused experts): the family's Derived rows.
    derived: tuple[Derived, ...] = ()
    # The config field of the period of MoE layers when dense ones sit between them (Llama 4's
    # interleave_moe_layer_step: layer i is MoE when (i + 1) % step == 0); import checks each kind's tensors.
    moe_layer_step: str = ""
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
    # A context manager that makes the family's transformers model traceable by torch.onnx while export-onnx
    # traces it, restoring the model after (Llama 4's complex-valued RoPE as real arithmetic).
    onnx_tracing: Callable[[Any], AbstractContextManager[None]] | None = None
    # Config fields gguf-import sets true when the GGUF holds a tensor (GLM-4.5's use_qk_norm: attn_q_norm).
    flags: Mapping[str, str] = field(default_factory=dict)
    # The config field counting extra layers a checkpoint holds past num_hidden_layers (GLM-4.5's multi-token
    # prediction layers, num_nextn_predict_layers), which transformers drops at load: gguf-export skips them.
    extra_layers: str = ""
    # The GGUF key (without "{arch}.") counting such layers that llama.cpp's converter writes as the last blocks
    # (GLM-4.5's nextn_predict_layers): gguf-import leaves them out, as transformers would.
    extra_layers_gguf: str = ""
    # How mtk quantize walks a decoder layer; None: quantize refuses the family.
    layer_plan: LayerPlan | None = None
    # Multimodal architectures whose text tower gguf-export and quantize convert as this family.
    towers: tuple[Tower, ...] = ()
    # Hybrid families: the plan of each other layer type (config.layer_types), over layer_plan.
    layer_plans: Mapping[str, LayerPlan] = field(default_factory=dict)
    tiny: tuple[TinyModel, ...] = ()
    # The registry key; the GGUF architecture unless two families share it (Mixtral: "mixtral" on "llama").
    name: str = ""
    # The GGUF key (after "{arch}.") holding transformers' head_dim on import (DeepSeek's is its RoPE width).
    head_dim_key: str = "attention.key_length"

    # Each layer's (head_dim, kv_heads) from the imported config fields, where layers differ (Gemma 4's global
    # layers have wider heads); None: every layer has the config's head_dim and num_key_value_heads.
    layer_heads: Callable[[Mapping[str, Any]], list[tuple[int, int]]] | None = None
    # Whether every layer holds the same tensors (Gemma 4's KV-sharing layers have no K/V projections).
    uniform_layers: bool = True
    # The bound on llama.cpp's F32 logits against transformers' where the default (5e-3) is too tight: llama.cpp's
    # CPU GELU is an f16 lookup table, whose error grows with the GELU layers (None: the default).
    f32_max_abs: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.gguf_arch)

    def gguf_to_hf(self, name: str) -> tuple[str, dict[str, int]] | None:
        """The HF template of a GGUF tensor name and its indices, or None when the name is unknown."""
        for pattern, (gguf_t, _) in self._patterns().items():
            m = pattern.fullmatch(name)
            if m:
                return self.all_tensors()[gguf_t], {k: int(v) for k, v in m.groupdict().items()}
        return None

    def hf_to_gguf(self, name: str) -> tuple[str, dict[str, int]] | None:
        """The GGUF template of an HF tensor name and its indices (``xid`` for experts), or None; a fused
        name that holds one GGUF tensor (Mixtral's ``mlp.gate.weight``) maps to it too."""
        for pattern, gguf_t in _compile_hf(tuple(self.all_tensors().items())).items():
            m = pattern.fullmatch(name)
            if m:
                return gguf_t, {k: int(v) for k, v in m.groupdict().items()}
        fused = self.fused_to_gguf(name)
        if fused is not None and len(fused[0]) == 1:
            return fused[0][0], fused[1]
        return None

    def fused_to_gguf(self, name: str) -> tuple[tuple[str, ...], dict[str, int]] | None:
        """The GGUF templates a fused HF tensor holds (in row order) and its indices, or None."""
        for pattern, gguf_ts in _compile_fused(tuple(self.fused_tensors.items())).items():
            m = pattern.fullmatch(name)
            if m:
                return gguf_ts, {k: int(v) for k, v in m.groupdict().items()}
        return None

    def derived_source(self, name: str) -> tuple[Derived, dict[str, int]] | None:
        """The Derived row an HF tensor name feeds (as any of its sources) and its indices, or None."""
        for row in self.derived:
            for template in row.sources:
                m = _template_rx(template).fullmatch(name)
                if m:
                    return row, {k: int(v) for k, v in m.groupdict().items()}
        return None

    def derived_part(self, name: str) -> tuple[Derived, int, dict[str, int]] | None:
        """The Derived row a GGUF tensor name is a part of, the part's index and the indices, or None."""
        for row in self.derived:
            for i, template in enumerate(row.parts):
                m = _template_rx(template).fullmatch(name)
                if m:
                    return row, i, {k: int(v) for k, v in m.groupdict().items()}
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


def _template_rx(template: str) -> re.Pattern[str]:
    if template not in _RX_CACHE:
        rx = re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)")
        _RX_CACHE[template] = re.compile(rx)
    return _RX_CACHE[template]


_RX_CACHE: dict[str, re.Pattern[str]] = {}
_HF_CACHE: dict[tuple[tuple[str, str], ...], dict[re.Pattern[str], str]] = {}


def _compile_hf(items: tuple[tuple[str, str], ...]) -> dict[re.Pattern[str], str]:
    if items not in _HF_CACHE:
        _HF_CACHE[items] = {
            re.compile(re.escape(hf_t).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)")): g
            for g, hf_t in items
        }
    return _HF_CACHE[items]


_FUSED_CACHE: dict[tuple[tuple[str, tuple[str, ...]], ...], dict[re.Pattern[str], tuple[str, ...]]] = {}


def _compile_fused(items: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[re.Pattern[str], tuple[str, ...]]:
    if items not in _FUSED_CACHE:
        _FUSED_CACHE[items] = {re.compile(re.escape(hf_t).replace(r"\{bid\}", r"(?P<bid>\d+)")): g for hf_t, g in items}
    return _FUSED_CACHE[items]


FAMILIES: Registry[Family] = Registry("architecture", entry_point_group="mtk.converters")


def register(family: Family) -> Family:
    return FAMILIES.add(family.name, family)


def family_for_gguf(arch: str, *, experts: bool = False) -> Family:
    """The family of a GGUF architecture; where families share one (llama and Mixtral), the one with
    experts when the GGUF has them (``{arch}.expert_count``), else the one without."""
    _load_builtin()
    sharing = [f for f in all_families() if f.gguf_arch == arch]
    if not sharing:
        known = ", ".join(sorted({f.gguf_arch for f in all_families()}))
        raise UnsupportedError(f"unknown architecture {arch!r}; supported: {known}")
    return next((f for f in sharing if bool(f.expert_tensors) == experts), sharing[0])


def all_families() -> list[Family]:
    _load_builtin()
    return [FAMILIES.get(name) for name in FAMILIES.names()]


def family_for_hf(architecture: str) -> Family:
    for fam in all_families():
        if architecture in (fam.hf_architecture, *fam.also_exports, *(t.hf_architecture for t in fam.towers)):
            return fam
    known = sorted(
        {
            a
            for f in all_families()
            for a in (f.hf_architecture, *f.also_exports, *(t.hf_architecture for t in f.towers))
        }
    )
    raise UnsupportedError(f"unsupported architecture {architecture!r}; supported: {', '.join(known)}")


def open_checkpoint(path: Path | str) -> tuple[HFCheckpoint, str | None]:
    """An HF checkpoint as the causal LM mtk converts, and a one-line note when that is not all of it: a
    multimodal checkpoint (Gemma3ForConditionalGeneration) becomes a view of its text tower, the rest left out."""
    from mtk.formats.checkpoint import HFCheckpoint  # torch: not at import time

    ckpt = HFCheckpoint(path)
    arch = ckpt.architecture
    found = text_tower(arch)
    if found is None:
        return ckpt, None
    fam, tower = found
    text_arch = _causal_lm(ckpt.config.get("text_config"), fam.hf_architecture)
    left = ckpt.text_tower(tower.rename, text_arch)
    what = f"{len(left)} tensors of its other towers (vision), e.g. {left[0]}" if left else "no other tensors"
    return ckpt, f"{arch}: converted its text tower as {text_arch}; left out {what}"


def _causal_lm(text_config: Any, default: str) -> str:
    """transformers' causal LM class for a text_config's model_type (Mistral3's text tower is a MistralForCausalLM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = text_config.get("model_type") if isinstance(text_config, dict) else None
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, default)


def text_tower(architecture: str) -> tuple[Family, Tower] | None:
    """The family and tower of a multimodal HF architecture whose text tower mtk converts; None for others."""
    for fam in all_families():
        for tower in fam.towers:
            if tower.hf_architecture == architecture:
                return fam, tower
    return None


def family_for_model_type(model_type: str) -> Family:
    for fam in all_families():
        if model_type in (*fam.model_types, *(t.model_type for t in fam.towers)):
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
