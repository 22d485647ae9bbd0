"""RoPE types as one table: what each transformers ``rope_type`` writes to a GGUF, and what is read back.

A row says which ``{arch}.rope.scaling.type`` value (or which GGUF tensor) marks it in a GGUF, the keys it
writes (without the ``{arch}.`` prefix) from a ``rope_parameters`` dict, the tensors it computes, and the
fields it reads back into one. A row without a writer or reader is refused in that direction with the
unsupported-input exit code; ``missing`` says what it lacks.

Llama 3's RoPE has no GGUF keys: llama.cpp's converter stores one factor per frequency pair in
``rope_freqs.weight`` (float32, ``head_dim / 2``), which llama.cpp divides the frequencies by. With
``w_i = theta ** (-2i / d)`` (float32), wavelength ``l_i = 2 pi / w_i``, and the config's ``factor`` F,
``low_freq_factor`` L, ``high_freq_factor`` H and ``original_max_position_embeddings`` O, the factor is 1 where
``l_i < O / H``, F where ``l_i > O / L``, and ``1 / ((1 - s) / F + s)`` with ``s = (O / l_i - L) / (H - L)``
between. Only the llama architecture's loader reads that tensor (``RopeLayout.freq_factors``).

LongRoPE (Phi-3.5, Phi-4-mini) has two lists of per-frequency divisors, ``short_factor`` and ``long_factor``
(``rotary_dim / 2`` each), which llama.cpp's converter stores as ``rope_factors_short.weight`` and
``rope_factors_long.weight`` (float32). Both runtimes choose a list by length: transformers takes the long one
for a forward pass whose positions reach past ``original_max_position_embeddings`` O, llama.cpp for a context
(``n_ctx``) larger than ``rope.scaling.original_context_length``. Both multiply cos and sin by one attention
factor: ``sqrt(1 + ln(F) / ln(O))`` with ``F = max_position_embeddings / O`` (1 when F <= 1) unless the config
gives ``attention_factor``; the GGUF keeps it in ``rope.scaling.attn_factor``.

llama.cpp has one RoPE per model, and a base for sliding-window layers. Families whose transformers config
gives each layer type its own parameters (Gemma 3: ``{"full_attention": {...}, "sliding_attention": {...}}``)
keep the full-attention ones in the GGUF's RoPE keys; llama.cpp runs the other layer types unscaled, and
:class:`RopeLayout` says with which parameters. Gemma 3's sliding layers take their base from
``{arch}.rope.freq_base_swa`` (10000 when absent) and never the scaling: the 4B-27B configs scale their global
layers linearly by 8 and leave the sliding ones at base 10000, which is what llama.cpp does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mtk.errors import InvalidFileError, UnsupportedError, quoted

if TYPE_CHECKING:
    import torch

Metadata = Mapping[str, Any]
Params = Mapping[str, Any]
TensorReader = Callable[[str], "torch.Tensor"]  # a GGUF tensor's float32 values, by name
# The layer type whose RoPE the GGUF's keys describe when a config has one per layer type.
GGUF_LAYER_TYPE = "full_attention"
DEFAULT_THETA = 10000.0  # transformers' and llama.cpp's default base


@dataclass(frozen=True)
class Synthesised:
    """A GGUF tensor the exporter computes (no checkpoint tensor holds it), e.g. llama.cpp's rope_freqs."""

    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]  # float32, in GGUF layout


@dataclass(frozen=True)
class RopeType:
    name: str  # transformers' rope_type
    gguf_scaling: str | None  # the {arch}.rope.scaling.type value that marks it; None: no key
    # GGUF keys (without "{arch}.") from the rope parameters, after rope.freq_base; None: export refused.
    write: Callable[[Params], dict[str, Any]] | None
    # rope_parameters fields besides rope_type and rope_theta, from the metadata and tensors; None: import refused.
    read: Callable[[Metadata, str, TensorReader], dict[str, Any]] | None
    # GGUF tensors that carry this type (llama.cpp's rope_freqs.weight for llama3); they mark it on import.
    tensors: tuple[str, ...] = ()
    # The tensors' values from the rope parameters and head_dim (export).
    make_tensors: Callable[[Params, int], dict[str, Synthesised]] | None = None
    missing: str = ""  # why a direction is refused
    # Config fields (outside rope_parameters) the writer reads, copied into its parameters (export).
    config_fields: tuple[str, ...] = ()


def need(meta: Metadata, key: str) -> Any:
    """A metadata value the RoPE type cannot do without (the reader has checked its type)."""
    if key not in meta:
        raise InvalidFileError(f"GGUF lacks {quoted(key)}, which its RoPE scaling needs")
    return meta[key]


def _linear_write(p: Params) -> dict[str, Any]:
    return {"rope.scaling.type": "linear", "rope.scaling.factor": float(p["factor"])}


def _linear_read(meta: Metadata, arch: str, tensor: TensorReader) -> dict[str, Any]:
    return {"factor": float(need(meta, f"{arch}.rope.scaling.factor"))}


# transformers' YaRN betas and their GGUF keys (llama.cpp's converter writes them when the config has them;
# only some of its loaders read them, the others use the same defaults, 32 and 1).
YARN_BETAS = {"beta_fast": "rope.scaling.yarn_beta_fast", "beta_slow": "rope.scaling.yarn_beta_slow"}


def _yarn_write(p: Params) -> dict[str, Any]:
    """The scaling keys; ``mscale_all_dim`` as llama.cpp's yarn_log_multiplier, which it pairs with an mscale of 1
    (transformers' attention factor is then ``mscale(factor, 1) / mscale(factor, mscale_all_dim)``, as llama.cpp's)."""
    out: dict[str, Any] = {"rope.scaling.type": "yarn", "rope.scaling.factor": float(p["factor"])}
    if p.get("original_max_position_embeddings"):
        out["rope.scaling.original_context_length"] = int(p["original_max_position_embeddings"])
    for field_name, key in YARN_BETAS.items():
        if p.get(field_name) is not None:
            out[key] = float(p[field_name])
    if p.get("attention_factor") is not None:
        raise UnsupportedError("yarn RoPE with an explicit attention_factor is not supported by gguf-export yet")
    if p.get("mscale") and p.get("mscale_all_dim"):
        if float(p["mscale"]) != 1.0:
            raise UnsupportedError(f"yarn RoPE with mscale {p['mscale']} (llama.cpp assumes 1) is not supported")
        out["rope.scaling.yarn_log_multiplier"] = float(p["mscale_all_dim"])
    return out


def _yarn_read(meta: Metadata, arch: str, tensor: TensorReader) -> dict[str, Any]:
    key = f"{arch}.rope.scaling.original_context_length"
    if key not in meta:
        raise InvalidFileError(f"yarn RoPE scaling without {key}")
    out = {"factor": float(need(meta, f"{arch}.rope.scaling.factor")), "original_max_position_embeddings": meta[key]}
    for field_name, gguf_key in YARN_BETAS.items():
        if f"{arch}.{gguf_key}" in meta:
            out[field_name] = float(meta[f"{arch}.{gguf_key}"])
    if f"{arch}.rope.scaling.yarn_log_multiplier" in meta:
        out["mscale"] = 1.0
        out["mscale_all_dim"] = float(meta[f"{arch}.rope.scaling.yarn_log_multiplier"])
    return out


# Meta's Llama 3.x values, and llama.cpp's converter's defaults.
LLAMA3_DEFAULTS: dict[str, float] = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def llama3_factors(theta: float, dim: int, p: Params) -> torch.Tensor:
    """``rope_freqs.weight`` for Llama 3 RoPE (see the module notes), float32 ``(dim // 2,)``."""
    import torch

    q = {**LLAMA3_DEFAULTS, **p}
    big, low, high, old = (float(q[k]) for k in LLAMA3_DEFAULTS)
    # The frequencies in float32 (as the HF and llama.cpp code computes them), the rest in float64.
    wavelen = 2 * math.pi / _llama3_freqs(theta, dim).double()
    if low == high:  # Llama 4 Scout: no smooth band, a step at old / low
        if bool((wavelen == old / low).any()):
            raise UnsupportedError("llama3 RoPE with equal frequency factors and a wavelength on the step")
        return torch.where(wavelen < old / low, 1.0, big).to(torch.float32)
    smooth = (old / wavelen - low) / (high - low)
    between = 1 / ((1 - smooth) / big + smooth)
    out = torch.where(wavelen < old / high, 1.0, torch.where(wavelen > old / low, big, between))
    return out.to(torch.float32)


def _llama3_freqs(theta: float, dim: int) -> torch.Tensor:
    import torch

    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def _llama3_tensors(p: Params, dim: int) -> dict[str, Synthesised]:
    theta = float(p["rope_theta"])
    return {"rope_freqs.weight": Synthesised((dim // 2,), lambda: llama3_factors(theta, dim, p))}


def _llama3_read(meta: Metadata, arch: str, tensor: TensorReader) -> dict[str, Any]:
    """The llama3 parameters whose factors equal ``rope_freqs.weight`` (to float32 rounding).

    Only the ratios O/L and O/H are fixed by the factors, so L and H are taken as Meta's (1 and 4, or 1 and 1
    for a step without a smooth band, as Llama 4 Scout's); O comes from the smooth band, or is Meta's 8192 when
    no frequency falls in it. Anything else is refused.
    """
    import torch

    got = tensor("rope_freqs.weight").float()
    theta = float(meta.get(f"{arch}.rope.freq_base", DEFAULT_THETA))
    dim = 2 * got.numel()
    big = float(got.max())
    wavelen = 2 * math.pi / _llama3_freqs(theta, dim).double()
    band = (got > 1 + 1e-6) & (got < big * (1 - 1e-6))
    candidates = [LLAMA3_DEFAULTS["original_max_position_embeddings"]]
    if band.any() and big > 1:
        smooth = (1 / got[band].double() - 1 / big) / (1 - 1 / big)
        candidates.insert(0, round(float((wavelen[band] * (3 * smooth + 1)).mean())))
    # Without a smooth band, a step: Llama 4 Scout's low and high factors, both 1.
    highs = (4.0,) if band.any() else (4.0, 1.0)
    for old in candidates:
        for high in highs:
            p = {
                "factor": big,
                "low_freq_factor": 1.0,
                "high_freq_factor": high,
                "original_max_position_embeddings": int(old),
            }
            if torch.allclose(llama3_factors(theta, dim, p), got, rtol=1e-5, atol=0):
                return p
    raise UnsupportedError("rope_freqs.weight is not llama3 RoPE with low_freq_factor 1 and high_freq_factor 4 or 1")


LONGROPE_TENSORS = {"long_factor": "rope_factors_long.weight", "short_factor": "rope_factors_short.weight"}


def longrope_attention_factor(factor: float, original: float) -> float:
    """transformers' default LongRoPE attention factor for a context ``factor`` times ``original`` (module notes)."""
    return math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0


def _longrope_write(p: Params) -> dict[str, Any]:
    original = int(p["original_max_position_embeddings"])
    attention = p.get("attention_factor")
    if attention is None:
        # transformers' rule: the config's factor, else the ratio of the context lengths.
        if not (p.get("factor") or p.get("max_position_embeddings")):
            raise InvalidFileError("longrope RoPE without factor or max_position_embeddings")
        factor = float(p.get("factor") or p["max_position_embeddings"] / original)
        attention = longrope_attention_factor(factor, original)
    return {"rope.scaling.attn_factor": float(attention), "rope.scaling.original_context_length": original}


def _longrope_tensors(p: Params, dim: int) -> dict[str, Synthesised]:
    import torch

    rotary = int(dim * float(p.get("partial_rotary_factor") or 1.0))
    out = {}
    for key, name in LONGROPE_TENSORS.items():
        values = list(p.get(key) or ())
        if len(values) != rotary // 2:
            raise InvalidFileError(
                f"longrope {key} has {len(values)} values; the rotary dimension {rotary} needs {rotary // 2}"
            )
        out[name] = Synthesised((len(values),), lambda v=values: torch.tensor(v, dtype=torch.float32))
    return out


def _longrope_read(meta: Metadata, arch: str, tensor: TensorReader) -> dict[str, Any]:
    """The factor lists from the two tensors; ``attention_factor`` only where the GGUF's differs from the one
    transformers computes from the context lengths."""
    original = int(need(meta, f"{arch}.rope.scaling.original_context_length"))
    out: dict[str, Any] = {"original_max_position_embeddings": original}
    for key, name in LONGROPE_TENSORS.items():
        try:
            out[key] = [float(v) for v in tensor(name).tolist()]
        except KeyError:
            raise InvalidFileError(f"longrope GGUF lacks {name}") from None
    # llama.cpp multiplies by 1 when the key is absent.
    attention = float(meta.get(f"{arch}.rope.scaling.attn_factor", 1.0))
    context = float(meta.get(f"{arch}.context_length", original))
    if not math.isclose(attention, longrope_attention_factor(context / original, original), rel_tol=1e-6):
        out["attention_factor"] = attention
    return out


# The factor llama.cpp's converter gives a frequency pair that does not turn (proportional RoPE).
NO_TURN = 1e30


def _proportional_tensors(p: Params, dim: int) -> dict[str, Synthesised]:
    turning = int(float(p.get("partial_rotary_factor", 1.0)) * dim // 2)  # as transformers counts them

    def make() -> torch.Tensor:
        import torch

        return torch.tensor([1.0] * turning + [NO_TURN] * (dim // 2 - turning), dtype=torch.float32)

    return {"rope_freqs.weight": Synthesised((dim // 2,), make)}


def _proportional_read(meta: Metadata, arch: str, tensor: TensorReader) -> dict[str, Any]:
    got = tensor("rope_freqs.weight").float()
    turning = int((got == 1.0).sum())
    if not (bool((got[:turning] == 1.0).all()) and bool((got[turning:] >= NO_TURN / 2).all())):
        raise UnsupportedError("rope_freqs.weight is not proportional RoPE (factors 1, then 1e30)")
    return {"partial_rotary_factor": turning / got.numel()}


ROPE_TYPES: dict[str, RopeType] = {
    r.name: r
    for r in (
        RopeType("default", None, lambda p: {}, lambda meta, arch, tensor: {}),
        RopeType("linear", "linear", _linear_write, _linear_read),
        RopeType("yarn", "yarn", _yarn_write, _yarn_read),
        RopeType("dynamic", None, None, None, missing="llama.cpp has no dynamic NTK scaling"),
        # No keys: the per-frequency factors are a tensor (module notes).
        RopeType(
            "llama3", None, lambda p: {}, _llama3_read, tensors=("rope_freqs.weight",), make_tensors=_llama3_tensors
        ),
        # Gemma 4's global layers: the first partial_rotary_factor of each head's frequency pairs turn (with
        # theta ** (-2i / head_dim)), the rest not. llama.cpp's converter writes rope_freqs.weight with factor 1
        # for the turning pairs and 1e30 (no turn) for the others, and rotates the whole head.
        RopeType(
            "proportional",
            None,
            lambda p: {},
            _proportional_read,
            tensors=("rope_freqs.weight",),
            make_tensors=_proportional_tensors,
        ),
        # No scaling type either (llama.cpp's converter writes none): the two factor tensors mark it.
        RopeType(
            "longrope",
            None,
            _longrope_write,
            _longrope_read,
            tensors=tuple(LONGROPE_TENSORS.values()),
            make_tensors=_longrope_tensors,
            config_fields=("max_position_embeddings",),
        ),
    )
}
ROPE_TENSORS = frozenset(t for r in ROPE_TYPES.values() for t in r.tensors)


@dataclass(frozen=True)
class RopeLayout:
    """Where a family's transformers config keeps its RoPE: one ``rope_parameters`` dict, or one per layer type."""

    default_theta: float = DEFAULT_THETA  # the base when a GGUF has no rope.freq_base (the family's default)
    # llama.cpp's loader for this architecture reads rope_freqs.weight (llama3 RoPE); other loaders refuse it.
    freq_factors: bool = False
    # ... or rope_factors_long/short.weight (LongRoPE: the phi3 loader).
    long_short_factors: bool = False
    # Layer types llama.cpp runs with RoPE it fixes itself, and their parameters (Gemma 3's sliding layers).
    fixed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The fixed layer type whose base llama.cpp reads from rope.freq_base_swa (its scaling stays fixed).
    swa_base: str | None = None

    @property
    def reads(self) -> frozenset[str]:
        """The RoPE tensors llama.cpp's loader for this architecture reads."""
        out = {"rope_freqs.weight"} if self.freq_factors else set()
        return frozenset(out | (set(LONGROPE_TENSORS.values()) if self.long_short_factors else set()))

    # The RoPE type a rope_freqs.weight tensor marks in this family's GGUFs (import).
    tensor_type: str = "llama3"


def config_parameters(config: Any) -> dict[str, Any]:
    """The rope parameters a GGUF describes: the config's own, or its full-attention layers'."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if GGUF_LAYER_TYPE in rope:
        rope = dict(rope[GGUF_LAYER_TYPE])
    rope.setdefault("rope_theta", getattr(config, "rope_theta", DEFAULT_THETA))
    rope.setdefault("rope_type", "default")
    row = ROPE_TYPES.get(rope["rope_type"])
    for name in row.config_fields if row else ():
        rope.setdefault(name, getattr(config, name, None))
    return rope


def rotary_fraction(config: Any) -> float:
    """The share of each head that RoPE turns: transformers 5 keeps it in rope_parameters, older configs beside."""
    return float(
        getattr(config, "partial_rotary_factor", None) or config_parameters(config).get("partial_rotary_factor") or 1.0
    )


def gguf_metadata(layout: RopeLayout, config: Any, arch: str) -> dict[str, Any]:
    """``{arch}.rope.freq_base`` and the scaling keys for a transformers config (export)."""
    rope = config_parameters(config)
    per_type = getattr(config, "rope_parameters", None) or {}
    for layer_type, fixed in layout.fixed.items():
        given = per_type.get(layer_type)
        if given is not None and _differs(given, fixed, theta=layer_type != layout.swa_base):
            raise UnsupportedError(
                f"RoPE of {layer_type} layers {dict(given)} differs from what llama.cpp uses for them ({dict(fixed)})"
            )
    row = _export_row(layout, rope, arch)
    keys = {"rope.freq_base": float(rope["rope_theta"]), **row.write(rope)}  # type: ignore[misc]
    if layout.swa_base is not None:
        given = per_type.get(layout.swa_base) or {}
        keys["rope.freq_base_swa"] = float(given.get("rope_theta", layout.fixed[layout.swa_base]["rope_theta"]))
    return {f"{arch}.{k}": v for k, v in keys.items()}


def gguf_tensors(layout: RopeLayout, config: Any, arch: str) -> dict[str, Synthesised]:
    """The GGUF tensors a config's RoPE type carries (export): llama3's rope_freqs.weight, else none."""
    rope = config_parameters(config)
    row = _export_row(layout, rope, arch)
    if row.make_tensors is None:
        return {}
    return row.make_tensors(rope, _gguf_head_dim(config))


def _gguf_head_dim(config: Any) -> int:
    """The head size of the layers the GGUF's RoPE describes: the full-attention layers' where layers differ
    (Gemma 4's global layers have wider heads than its sliding ones)."""
    own = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    types = list(getattr(config, "layer_types", None) or [])
    if GGUF_LAYER_TYPE not in types:
        return own
    try:  # transformers' per-layer view of a heterogeneous config; other configs raise
        layer = config.per_layer_config[types.index(GGUF_LAYER_TYPE)]
    except (AttributeError, ValueError, KeyError, IndexError, TypeError):
        return own
    return getattr(layer, "head_dim", None) or own


def _export_row(layout: RopeLayout, rope: Params, arch: str) -> RopeType:
    kind = rope["rope_type"]
    row = ROPE_TYPES.get(kind)
    if row is None or row.write is None:
        why = f" ({row.missing})" if row is not None else ""
        raise UnsupportedError(f"RoPE scaling {kind!r} is not supported by gguf-export yet{why}")
    if not set(row.tensors) <= layout.reads:
        raise UnsupportedError(
            f"RoPE scaling {kind!r} is not supported by gguf-export for {arch}: llama.cpp's {arch} loader "
            f"does not read {', '.join(row.tensors)}"
        )
    return row


def _differs(given: Mapping[str, Any], fixed: Mapping[str, Any], *, theta: bool) -> bool:
    """Whether a layer type's parameters are not the ones llama.cpp fixes (its base too, unless a key holds it)."""
    if given.get("rope_type", "default") != fixed["rope_type"]:
        return True
    return theta and float(given.get("rope_theta", fixed["rope_theta"])) != fixed["rope_theta"]


def gguf_type(meta: Metadata, arch: str, tensor_names: Collection[str], tensor_type: str = "llama3") -> RopeType:
    """The row a GGUF's metadata (scaling type) or tensors mark (``tensor_type``: the row that a tensor several
    rows share marks, for this family)."""
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        for row in ROPE_TYPES.values():
            if row.gguf_scaling == scaling:
                return row
        raise UnsupportedError(f"RoPE scaling {quoted(scaling)} is not supported by gguf-import")
    preferred = ROPE_TYPES[tensor_type]
    for row in (preferred, *ROPE_TYPES.values()):
        if any(t in tensor_names for t in row.tensors):
            return row
    return ROPE_TYPES["default"]


def hf_parameters(
    layout: RopeLayout,
    meta: Metadata,
    arch: str,
    tensor_names: Collection[str],
    tensor: TensorReader,
    head_dim: int | None = None,
) -> dict[str, Any]:
    """``rope_parameters`` for the transformers config of a GGUF (import); ``tensor`` reads a GGUF tensor.

    A ``rope.dimension_count`` below ``head_dim`` is partial rotary (Phi-4-mini's 0.75): ``partial_rotary_factor``.
    """
    row = gguf_type(meta, arch, tensor_names, layout.tensor_type)
    if row.read is None:
        raise UnsupportedError(f"RoPE scaling {row.name!r} is not supported by gguf-import ({row.missing})")
    rope = {
        "rope_type": row.name,
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", layout.default_theta)),
        **row.read(meta, arch, tensor),
    }
    rotary = meta.get(f"{arch}.rope.dimension_count")
    if head_dim and rotary is not None and rotary != head_dim:
        if not 0 < rotary < head_dim or rotary % 2:
            raise InvalidFileError(f"GGUF's rope.dimension_count {rotary} does not fit heads of {head_dim}")
        rope["partial_rotary_factor"] = rotary / head_dim
    if not layout.fixed:
        return rope
    fixed = {k: dict(v) for k, v in layout.fixed.items()}
    if layout.swa_base is not None and f"{arch}.rope.freq_base_swa" in meta:
        fixed[layout.swa_base]["rope_theta"] = float(meta[f"{arch}.rope.freq_base_swa"])
    return {GGUF_LAYER_TYPE: rope, **fixed}
