"""RoPE types as one table: what each transformers ``rope_type`` writes to a GGUF, and what is read back.

A row says which ``{arch}.rope.scaling.type`` value (or which GGUF tensor) marks it in a GGUF, the keys it
writes (without the ``{arch}.`` prefix) from a ``rope_parameters`` dict, the fields it reads back into one,
and the tensors it carries. A row without a writer or reader is refused in that direction with the
unsupported-input exit code; ``missing`` says what it lacks.

llama.cpp has one RoPE per model. Families whose transformers config gives each layer type its own
parameters (Gemma 3: ``{"full_attention": {...}, "sliding_attention": {...}}``) keep the full-attention ones
in the GGUF; the other layer types are fixed by llama.cpp, and :class:`RopeLayout` says what they are.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mtk.errors import InvalidFileError, UnsupportedError

Metadata = Mapping[str, Any]
Params = Mapping[str, Any]
# The layer type whose RoPE the GGUF's keys describe when a config has one per layer type.
GGUF_LAYER_TYPE = "full_attention"
DEFAULT_THETA = 10000.0  # transformers' and llama.cpp's default base


@dataclass(frozen=True)
class RopeType:
    name: str  # transformers' rope_type
    gguf_scaling: str | None  # the {arch}.rope.scaling.type value that marks it; None: no key
    # GGUF keys (without "{arch}.") from the rope parameters, after rope.freq_base; None: export refused.
    write: Callable[[Params], dict[str, Any]] | None
    # rope_parameters fields besides rope_type and rope_theta, from the metadata; None: import refused.
    read: Callable[[Metadata, str], dict[str, Any]] | None
    # GGUF tensors that carry this type (llama.cpp's rope_freqs.weight for llama3); they mark it on import.
    tensors: tuple[str, ...] = ()
    missing: str = ""  # why a direction is refused


def _linear_write(p: Params) -> dict[str, Any]:
    return {"rope.scaling.type": "linear", "rope.scaling.factor": float(p["factor"])}


def _linear_read(meta: Metadata, arch: str) -> dict[str, Any]:
    return {"factor": float(meta[f"{arch}.rope.scaling.factor"])}


def _yarn_write(p: Params) -> dict[str, Any]:
    out: dict[str, Any] = {"rope.scaling.type": "yarn", "rope.scaling.factor": float(p["factor"])}
    if p.get("original_max_position_embeddings"):
        out["rope.scaling.original_context_length"] = int(p["original_max_position_embeddings"])
    return out


def _yarn_read(meta: Metadata, arch: str) -> dict[str, Any]:
    key = f"{arch}.rope.scaling.original_context_length"
    if key not in meta:
        raise InvalidFileError(f"yarn RoPE scaling without {key}")
    return {"factor": float(meta[f"{arch}.rope.scaling.factor"]), "original_max_position_embeddings": meta[key]}


ROPE_TYPES: dict[str, RopeType] = {
    r.name: r
    for r in (
        RopeType("default", None, lambda p: {}, lambda meta, arch: {}),
        RopeType("linear", "linear", _linear_write, _linear_read),
        RopeType("yarn", "yarn", _yarn_write, _yarn_read),
        RopeType("dynamic", None, None, None, missing="llama.cpp has no dynamic NTK scaling"),
        # llama.cpp stores Llama 3's per-frequency factors as a tensor its converter computes.
        RopeType("llama3", None, None, None, tensors=("rope_freqs.weight",), missing="rope_freqs.weight"),
        RopeType(
            "longrope",
            None,
            None,
            None,
            tensors=("rope_factors_long.weight", "rope_factors_short.weight"),
            missing="rope_factors_long/short.weight",
        ),
    )
}
ROPE_TENSORS = frozenset(t for r in ROPE_TYPES.values() for t in r.tensors)


@dataclass(frozen=True)
class RopeLayout:
    """Where a family's transformers config keeps its RoPE: one ``rope_parameters`` dict, or one per layer type."""

    default_theta: float = DEFAULT_THETA  # the base when a GGUF has no rope.freq_base (the family's default)
    # Layer types llama.cpp runs with RoPE it fixes itself, and their parameters (Gemma 3's sliding layers).
    fixed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def config_parameters(config: Any) -> dict[str, Any]:
    """The rope parameters a GGUF describes: the config's own, or its full-attention layers'."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if GGUF_LAYER_TYPE in rope:
        rope = dict(rope[GGUF_LAYER_TYPE])
    rope.setdefault("rope_theta", getattr(config, "rope_theta", DEFAULT_THETA))
    rope.setdefault("rope_type", "default")
    return rope


def gguf_metadata(layout: RopeLayout, config: Any, arch: str) -> dict[str, Any]:
    """``{arch}.rope.freq_base`` and the scaling keys for a transformers config (export)."""
    rope = config_parameters(config)
    per_type = getattr(config, "rope_parameters", None) or {}
    for layer_type, fixed in layout.fixed.items():
        given = per_type.get(layer_type)
        if given is not None and _differs(given, fixed):
            raise UnsupportedError(
                f"RoPE of {layer_type} layers {dict(given)} differs from what llama.cpp uses for them ({dict(fixed)})"
            )
    kind = rope["rope_type"]
    row = ROPE_TYPES.get(kind)
    if row is None or row.write is None:
        why = f" ({row.missing})" if row is not None else ""
        raise UnsupportedError(f"RoPE scaling {kind!r} is not supported by gguf-export yet{why}")
    keys = {"rope.freq_base": float(rope["rope_theta"]), **row.write(rope)}
    return {f"{arch}.{k}": v for k, v in keys.items()}


def _differs(given: Mapping[str, Any], fixed: Mapping[str, Any]) -> bool:
    kind = given.get("rope_type", "default")
    return kind != fixed["rope_type"] or float(given.get("rope_theta", fixed["rope_theta"])) != fixed["rope_theta"]


def gguf_type(meta: Metadata, arch: str, tensor_names: Collection[str]) -> RopeType:
    """The row a GGUF's metadata (scaling type) or tensors mark."""
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        for row in ROPE_TYPES.values():
            if row.gguf_scaling == scaling:
                return row
        raise UnsupportedError(f"RoPE scaling {scaling!r} is not supported by gguf-import")
    for row in ROPE_TYPES.values():
        if any(t in tensor_names for t in row.tensors):
            return row
    return ROPE_TYPES["default"]


def hf_parameters(layout: RopeLayout, meta: Metadata, arch: str, tensor_names: Collection[str]) -> dict[str, Any]:
    """``rope_parameters`` for the transformers config of a GGUF (import)."""
    row = gguf_type(meta, arch, tensor_names)
    if row.read is None:
        raise UnsupportedError(f"RoPE scaling {row.name!r} is not supported by gguf-import ({row.missing})")
    rope = {
        "rope_type": row.name,
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", layout.default_theta)),
        **row.read(meta, arch),
    }
    if not layout.fixed:
        return rope
    return {GGUF_LAYER_TYPE: rope, **{k: dict(v) for k, v in layout.fixed.items()}}
