"""Which GGUF type each tensor gets on export: llama.cpp's file types ("mixes") and per-tensor rules, as data.

A file type (``--type q4_k_m``) names a default tensor type and a set of exceptions. The rules here are
those of llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp) for the file types mtk encodes:

- 1-D tensors, norms and MoE routers are never quantized (F32).
- ``--embedding-type`` / ``--output-type`` win for the token embedding / ``output.weight``.
- ``--tensor-type REGEX=TYPE`` (first match, ``re.search``) replaces the default and turns the mix's
  exceptions off for that tensor; ``--pure`` turns them off for all.
- The output projection (or the token embedding of a model with tied embeddings, which serves as it) gets
  Q6_K for every quantized file type but Q8_0, or Q8_0 if its rows are not whole blocks of the default type.
- Mix exceptions by tensor category (attn_v, ffn_down, attn_output, attn_k), some by layer position
  (``use_more_bits``), by grouped-query ratio ``n_gqa``, expert count, and whether an imatrix is used.
- ``mxfp4_moe`` (gpt-oss's file type): MXFP4 for the stacked expert tensors, Q8_0 for every other matrix.
- Last, a type whose block does not divide the row falls back (Q4_K -> Q5_0, Q6_K -> Q8_0, ...), and to
  F16 if the fallback does not divide it either.

llama.cpp walks the tensors sorted by layer number, then by name; its attn_v and ffn_down counters (the
``i_layer`` that ``use_more_bits`` reads) count in that order, and only for tensors the mix rules reached.
:func:`plan_types` walks them the same way. Falcon-only branches are left out (mtk exports no Falcon).
One deliberate difference: for float file types (F16, BF16, F32) llama.cpp ignores ``--tensor-type``;
mtk applies it, so that e.g. an F16 export can keep chosen matrices in Q8_0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gguf import GGMLQuantizationType, LlamaFileType

from mtk.kernels import types

Q = GGMLQuantizationType
F = LlamaFileType

# Tensor types mtk writes (names of --output-type, --embedding-type, --tensor-type), llama.cpp's names.
TYPE_NAMES: dict[str, GGMLQuantizationType] = {row.key: row.qtype for row in types.rows(writes=True)}
FLOAT_TYPES = frozenset(row.qtype for row in types.rows(writes=True) if row.is_float)

# LlamaFileType by llama-quantize's name: MOSTLY_Q4_K_M is "q4_k_m", ALL_F32 "f32".
_FILE_TYPE_BY_NAME = {ft.name.removeprefix("MOSTLY_").removeprefix("ALL_").lower(): ft for ft in F}

# llama.cpp's llama_ftype_get_default_type for the file types mtk writes (each row's file types).
DEFAULT_TYPE: dict[LlamaFileType, GGMLQuantizationType] = {
    _FILE_TYPE_BY_NAME[name]: row.qtype for row in types.rows(writes=True) for name in row.file_types
}
# Names of --type: llama-quantize's (case-insensitive), with its aliases Q3_K/Q4_K/Q5_K for the _M mixes.
FILE_TYPE_NAMES: dict[str, LlamaFileType] = {
    **{name: _FILE_TYPE_BY_NAME[name] for row in types.rows(writes=True) for name in row.file_types},
    **{row.key: _FILE_TYPE_BY_NAME[row.file_type] for row in types.rows(writes=True) if row.file_type},
}
# The file type a bare tensor type stands for (``TypeRules(Q.Q4_0)``); K types as llama-quantize's aliases.
FILE_TYPE_OF: dict[GGMLQuantizationType, LlamaFileType] = {
    row.qtype: _FILE_TYPE_BY_NAME[row.bare_file_type] for row in types.rows(writes=True) if row.bare_file_type
}
# llama.cpp's tensor_type_fallback, for a row that is not whole blocks of the chosen type.
FALLBACK: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    Q.Q2_K: Q.Q4_0,
    Q.Q3_K: Q.Q4_0,
    Q.Q4_K: Q.Q5_0,
    Q.Q5_K: Q.Q5_1,
    Q.Q6_K: Q.Q8_0,
    Q.IQ4_XS: Q.IQ4_NL,
}
LAST_RESORT = Q.F16
F32_SUFFIXES = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")
# (HF-free) categories of llama.cpp's tensor_get_category, first substring match wins.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attn_qkv.weight", "attn_v"),  # fused QKV and MLA's kv_b follow the attn_v rules
    ("attn_kv_b.weight", "attn_v"),
    ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"),
    ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"),
    ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
)


def parse_file_type(name: str) -> LlamaFileType:
    """llama-quantize's file type name (``Q4_K_M``, ``q8_0``, ``f16`` ...) -> LlamaFileType."""
    try:
        return FILE_TYPE_NAMES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown file type {name!r}; choose from: {', '.join(FILE_TYPE_NAMES)}") from None


def parse_tensor_type(name: str) -> GGMLQuantizationType:
    try:
        return TYPE_NAMES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown tensor type {name!r}; choose from: {', '.join(TYPE_NAMES)}") from None


def parse_override(text: str) -> tuple[str, GGMLQuantizationType]:
    """``REGEX=TYPE`` as llama-quantize's --tensor-type: the pattern lower-cased, checked to compile."""
    pattern, sep, type_name = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError(f"--tensor-type wants REGEX=TYPE, got {text!r}")
    try:
        re.compile(pattern.lower())
    except re.error as exc:
        raise ValueError(f"--tensor-type {text!r}: bad regular expression ({exc})") from None
    return pattern.lower(), parse_tensor_type(type_name)


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters llama.cpp's rules read."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, which gives attn_v one more step (from its llama and qwen2 loaders)."""
        if self.n_layer != 80:
            return False
        return self.arch == "qwen2" or (self.arch == "llama" and self.n_head != self.n_head_kv)


@dataclass(frozen=True)
class TypeRules:
    """The export's type choices. ``target`` is a file type, or a tensor type standing for its file type.

    ``output``/``embedding`` of None follow the mix; ``overrides`` are (regex, type) pairs in order;
    ``imatrix`` says whether an importance matrix is used (llama.cpp's ffn_down rules look at it).
    """

    target: LlamaFileType | GGMLQuantizationType
    output: GGMLQuantizationType | None = None
    embedding: GGMLQuantizationType | None = None
    pure: bool = False
    overrides: tuple[tuple[str, GGMLQuantizationType], ...] = field(default=())
    imatrix: bool = False

    def __post_init__(self) -> None:
        target = self.target
        if not isinstance(target, LlamaFileType):
            if GGMLQuantizationType(target) not in FILE_TYPE_OF:
                raise ValueError(f"mtk does not encode GGUF type {GGMLQuantizationType(target).name}")
            object.__setattr__(self, "target", FILE_TYPE_OF[GGMLQuantizationType(target)])
        elif target not in DEFAULT_TYPE:
            raise ValueError(f"mtk does not write file type {target.name}")
        for t in (self.output, self.embedding, *(t for _, t in self.overrides)):
            if t is not None and t.name.lower() not in TYPE_NAMES:
                raise ValueError(f"mtk does not encode GGUF type {t.name}")

    @property
    def file_type(self) -> LlamaFileType:
        return self.target  # type: ignore[return-value]  # normalised in __post_init__

    @property
    def default(self) -> GGMLQuantizationType:
        return DEFAULT_TYPE[self.file_type]


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    return next((cat for key, cat in CATEGORIES if key in name), "other")


def n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: dimensions up to the last one above 1 in ggml order (a (1, 64) router is 1-D)."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return len(dims)


def quantizable(name: str, shape: Sequence[int]) -> bool:
    """llama.cpp's tensor_allows_quantization, for the tensors of the families mtk exports (its small conv1d
    kernels of recurrent layers stay F32 too)."""
    if "ssm_conv1d" in name:
        return False
    return n_dims(shape) >= 2 and name.endswith("weight") and not name.endswith(F32_SUFFIXES)


def fits(qtype: GGMLQuantizationType, cols: int) -> bool:
    return cols % types.get(qtype).block_size == 0


def fallback(qtype: GGMLQuantizationType, cols: int) -> GGMLQuantizationType:
    """llama.cpp's tensor_type_fallback: the type for a row of ``cols`` values when ``qtype``'s block
    does not divide it."""
    if fits(qtype, cols):
        return qtype
    smaller = FALLBACK.get(qtype, qtype)
    return smaller if fits(smaller, cols) else LAST_RESORT


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of the layers that get more bits: the first and last eighth, every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


# --- the mix exceptions, one small function per tensor category --------------------------------------------
# Each gets (file type, the type so far, counter/layer index, count, model, rules) and returns the type.
Rule = Callable[[LlamaFileType, GGMLQuantizationType, int, int, ModelShape, TypeRules], GGMLQuantizationType]


def _attn_v(ft: LlamaFileType, t: GGMLQuantizationType, i: int, n: int, m: ModelShape, r: TypeRules) -> Q:
    if ft == F.MOSTLY_Q2_K:
        t = Q.Q4_K if m.n_gqa >= 4 else Q.Q3_K
    elif ft == F.MOSTLY_Q3_K_M:
        t = Q.Q5_K if i < 2 else Q.Q4_K
    elif ft == F.MOSTLY_Q3_K_L or (ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and m.n_gqa >= 4):
        t = Q.Q5_K
    elif ft in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(i, n):
        t = Q.Q6_K
    elif ft == F.MOSTLY_Q4_K_S and i < 4:
        t = Q.Q5_K
    if m.is_70b and t in (Q.Q3_K, Q.Q4_K):
        t = Q.Q5_K  # 8 heads share each V row there: more bits cost little
    return Q.Q8_0 if m.n_expert == 8 else t


def _ffn_down(ft: LlamaFileType, t: GGMLQuantizationType, i: int, n: int, m: ModelShape, r: TypeRules) -> Q:
    if ft == F.MOSTLY_Q2_K:
        return Q.Q3_K
    if ft == F.MOSTLY_Q3_K_M:
        return Q.Q5_K if i < n // 16 else Q.Q4_K
    if ft == F.MOSTLY_Q3_K_L:
        return Q.Q5_K
    if ft == F.MOSTLY_Q4_K_M:
        return Q.Q6_K if use_more_bits(i, n) else t
    if ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS):
        return Q.Q5_K if i < n // 8 and not r.imatrix else t
    if ft == F.MOSTLY_Q5_K_M:
        return Q.Q6_K if use_more_bits(i, n) else t
    if ft == F.MOSTLY_Q4_K_S:
        return Q.Q5_K if i < n // 8 else t
    if ft in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and r.imatrix and i < n // 8:
        return Q.Q4_1 if ft == F.MOSTLY_Q4_0 else Q.Q5_1  # llama.cpp's guard for the first ffn_down layers
    return t


# attn_output of 8-expert models: Q5_K for these file types.
_MOE8_ATTN_OUTPUT = {F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S}
_MOE8_ATTN_OUTPUT |= {F.MOSTLY_Q4_K_M, F.MOSTLY_IQ4_XS}
_ATTN_OUTPUT = {F.MOSTLY_Q2_K: Q.Q3_K, F.MOSTLY_Q3_K_M: Q.Q4_K, F.MOSTLY_Q3_K_L: Q.Q5_K}


def _attn_output(ft: LlamaFileType, t: GGMLQuantizationType, i: int, n: int, m: ModelShape, r: TypeRules) -> Q:
    if m.n_expert == 8:
        return Q.Q5_K if ft in _MOE8_ATTN_OUTPUT else t
    return _ATTN_OUTPUT.get(ft, t)


def _attn_k(ft: LlamaFileType, t: GGMLQuantizationType, i: int, n: int, m: ModelShape, r: TypeRules) -> Q:
    return Q.Q8_0 if m.n_expert == 8 else t


def _unchanged(ft: LlamaFileType, t: GGMLQuantizationType, i: int, n: int, m: ModelShape, r: TypeRules) -> Q:
    return t


RULES: dict[str, Rule] = {
    "attn_v": _attn_v,
    "ffn_down": _ffn_down,
    "attn_output": _attn_output,
    "attn_k": _attn_k,
}
# Categories whose counter llama.cpp advances each time its rules run (ffn_gate/ffn_up only count).
COUNTED = ("attn_v", "ffn_down", "ffn_gate", "ffn_up")


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def _output_type(rules: TypeRules, default: GGMLQuantizationType, cols: int) -> GGMLQuantizationType:
    """The output projection (or tied embedding) under the mix: Q6_K, or Q8_0 where the default's block
    does not divide its rows, and Q8_0 files keep Q8_0."""
    if not fits(default, cols):
        return Q.Q8_0
    return default if default == Q.Q8_0 else Q.Q6_K


class _Planner:
    """llama.cpp's quantize state: counters over the tensors in its order."""

    def __init__(self, names: Iterable[str], model: ModelShape, rules: TypeRules) -> None:
        names = list(names)
        self.model, self.rules = model, rules
        self.tied = "output.weight" not in names
        self.count = {c: 0 for c in COUNTED}
        self.total = {c: model.n_layer for c in COUNTED}
        self.total["attn_v"] = sum(category(n) == "attn_v" for n in names)
        self.patterns = [(re.compile(p), t) for p, t in rules.overrides]

    def tensor_type(self, name: str, shape: Sequence[int]) -> GGMLQuantizationType:
        rules, cols, cat = self.rules, int(shape[-1]), category(name)
        if not quantizable(name, shape):
            return Q.F32
        if rules.embedding is not None and cat == "token_embd":
            return fallback(rules.embedding, cols)
        if rules.output is not None and cat == "output":
            return fallback(rules.output, cols)
        chosen = next((t for p, t in self.patterns if p.search(name)), None)
        if chosen is not None:
            return fallback(chosen, cols)
        if rules.default in FLOAT_TYPES or rules.pure:
            return fallback(rules.default, cols)
        experts = len(shape) == 3 and shape[0] > 1
        return fallback(self._mix(name, cat, cols, experts), cols)

    def _mix(self, name: str, cat: str, cols: int, experts: bool) -> GGMLQuantizationType:
        rules, default = self.rules, self.rules.default
        if cat == "output" or (self.tied and cat == "token_embd"):
            if rules.output is not None:
                return rules.output
            return Q.Q8_0 if rules.file_type == F.MOSTLY_MXFP4_MOE else _output_type(rules, default, cols)
        if rules.file_type == F.MOSTLY_MXFP4_MOE:
            # llama.cpp: the stacked expert tensors (3-D) in MXFP4, every other matrix in Q8_0, no exceptions.
            return default if experts else Q.Q8_0
        if cat not in COUNTED:
            return RULES.get(cat, _unchanged)(rules.file_type, default, 0, 0, self.model, rules)
        i, n = self.count[cat], self.total[cat]
        if cat != "attn_v" and self.model.n_expert > 1:
            i = _layer(name)  # experts' tensors are not one per layer in order: llama.cpp reads the name
        self.count[cat] += 1
        return RULES.get(cat, _unchanged)(rules.file_type, default, i, n, self.model, rules)


def plan_types(
    tensors: Sequence[tuple[str, tuple[int, ...]]], model: ModelShape, rules: TypeRules
) -> dict[str, GGMLQuantizationType]:
    """The GGUF type of each ``(name, shape)`` tensor (PyTorch order: the row is ``shape[-1]``), as
    llama.cpp's quantizer would choose it for ``rules``."""
    planner = _Planner((n for n, _ in tensors), model, rules)
    order = sorted(tensors, key=lambda t: (_layer(t[0]), t[0]))
    return {name: planner.tensor_type(name, shape) for name, shape in order}
