"""gguf-import: a GGUF model (single or split) to a Hugging Face checkpoint folder, streaming.

Load (metadata, tensor infos: no weights), plan (HF names, shapes, dtypes, shards), then for each GGUF
tensor: dequantize on the device, undo llama.cpp's layout changes, cast, write, drop. Peak memory is one
dequantized tensor plus the pages of the map being read.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from gguf import GGMLQuantizationType

from mtk.converters import rope
from mtk.converters.family import Derived, Family, family_for_gguf
from mtk.errors import InvalidFileError, UnsupportedError, quoted
from mtk.formats.atomic import atomic_dir
from mtk.formats.gguf_reader import GGUFModel, GGUFTensorInfo, open_gguf
from mtk.formats.safetensors_io import SafetensorsWriter
from mtk.kernels.dequant import dequantize
from mtk.runtime import resolve_device

ImportDType = Literal["auto", "bf16", "f16", "f32"]
Progress = Callable[[int, int, str], None]
TORCH_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


@dataclass(frozen=True)
class PlannedTensor:
    """One HF tensor to write: it comes from ``source`` (expert ``expert`` of it for stacked experts)."""

    hf_name: str
    shape: tuple[int, ...]
    source: GGUFTensorInfo
    gguf_template: str
    expert: int | None = None
    # A family's Derived row joins these GGUF tensors (``source`` is the first) into this one HF tensor.
    derived: Derived | None = None
    parts: tuple[GGUFTensorInfo, ...] = ()


def gguf_family(model: GGUFModel) -> Family:
    """The family of a GGUF: by architecture, and by whether it has experts where two share one (Mixtral)."""
    return family_for_gguf(model.architecture, experts=bool(model.metadata.get(f"{model.architecture}.expert_count")))


# Hyper-parameters every family needs, each at least 1 (the reader has checked their types).
REQUIRED_HPARAMS = ("embedding_length", "block_count", "attention.head_count")


def hf_config(family: Family, model: GGUFModel) -> dict[str, Any]:
    """transformers config fields from the GGUF metadata (the result feeds ``AutoConfig.for_model``).

    Raises InvalidFileError when a hyper-parameter the architecture needs is missing or impossible (no heads,
    more layers than tensors, heads that do not divide into the KV heads).
    """
    meta, arch = model.metadata, model.architecture
    _check_hparams(model, arch)
    cfg: dict[str, Any] = {}
    for key, field in family.hparams.items():
        if f"{arch}.{key}" in meta:
            value = meta[f"{arch}.{key}"]
            # GGUF floats are float32: write the shortest decimal that gives the same float32 (1e-05).
            cfg[field] = float(str(np.float32(value))) if isinstance(value, float) else value
    extra = extra_layers(family, model)
    if extra:
        if extra >= cfg["num_hidden_layers"]:
            raise InvalidFileError(f"{model.path}: GGUF's {extra} extra layers leave none of its {arch}.block_count")
        cfg["num_hidden_layers"] -= extra
    if "intermediate_size" in cfg and isinstance(cfg["intermediate_size"], list):
        cfg["intermediate_size"] = cfg["intermediate_size"][0]
    heads = cfg["num_attention_heads"]
    cfg.setdefault("num_key_value_heads", heads)
    cfg["head_dim"] = meta.get(f"{arch}.{family.head_dim_key}") or cfg["hidden_size"] // heads
    if cfg["head_dim"] < 2 or cfg["head_dim"] % 2:
        # RoPE turns pairs of dimensions: an odd or empty head is a corrupt width or head count.
        raise InvalidFileError(
            f"{model.path}: GGUF's heads of {cfg['head_dim']} dimensions ({heads} heads, width {cfg['hidden_size']}) "
            "are impossible: RoPE needs an even head size"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens and "token_embd.weight" not in model.by_name:
        raise InvalidFileError(f"{model.path}: GGUF lacks token_embd.weight")
    cfg["vocab_size"] = (
        len(tokens) if tokens else meta.get(f"{arch}.vocab_size", model.by_name["token_embd.weight"].shape[0])
    )
    cfg["tie_word_embeddings"] = "output.weight" not in model.by_name
    cfg["attention_bias"] = "blk.0.attn_q.bias" in model.by_name
    cfg["pad_token_id"] = None  # set below when the GGUF names one (some config classes default to ids past the vocab)
    try:
        cfg["rope_parameters"] = rope.hf_parameters(
            family.rope, meta, arch, model.by_name, lambda n: _values(model, n), cfg["head_dim"]
        )
    except InvalidFileError as exc:
        raise InvalidFileError(f"{model.path}: {exc}") from None
    for key, field in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
    ):
        if f"tokenizer.ggml.{key}" in meta:
            cfg[field] = meta[f"tokenizer.ggml.{key}"]
    if family.extra_config:
        extra = family.extra_config(meta, arch)
        if "rope_parameters" in extra and "rope_type" not in extra["rope_parameters"]:
            # fields the family adds to the RoPE table's (Qwen3.5's mrope); with a rope_type, its own whole set
            # (DeepSeek's, whose rotary width is qk_rope_head_dim, not a part of head_dim)
            extra["rope_parameters"] = {**cfg["rope_parameters"], **extra["rope_parameters"]}
        cfg.update(extra)
    cfg.update({flag: tensor in model.by_name for flag, tensor in family.flags.items()})
    return cfg


def extra_layers(family: Family, model: GGUFModel) -> int:
    """How many of the GGUF's last blocks are layers transformers has no place for (GLM-4.5's MTP layers)."""
    if not family.extra_layers_gguf:
        return 0
    value = model.metadata.get(f"{model.architecture}.{family.extra_layers_gguf}", 0)
    return value if isinstance(value, int) and value > 0 else 0


def _check_hparams(model: GGUFModel, arch: str) -> None:
    """The hyper-parameters hf_config and the families' extra_config index: present, and possible."""
    meta = model.metadata

    def count(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise InvalidFileError(f"{model.path}: GGUF lacks {quoted(f'{arch}.{key}')}, which {arch} needs")
        if isinstance(value, list):
            raise UnsupportedError(f"{model.path}: per-layer {quoted(f'{arch}.{key}')} is not supported")
        if value < 1:
            raise InvalidFileError(f"{model.path}: GGUF's {quoted(f'{arch}.{key}')} is {value}")
        return value

    width, layers, heads = (count(key) for key in REQUIRED_HPARAMS)
    kv_heads = count("attention.head_count_kv", heads)
    if heads % kv_heads:
        raise InvalidFileError(f"{model.path}: GGUF's {heads} heads do not divide into {kv_heads} KV heads")
    # Each layer holds tensors: more layers than tensors is a corrupt count (and would size lists by it).
    if layers > len(model.tensors):
        raise InvalidFileError(f"{model.path}: GGUF claims {layers} layers in {len(model.tensors)} tensors")


def _values(model: GGUFModel, name: str) -> torch.Tensor:
    """A GGUF tensor's values as float32, on the CPU."""
    info = model.by_name[name]
    return dequantize(model.tensor_bytes(info), info.qtype, info.shape).float().cpu()


def plan_tensors(family: Family, model: GGUFModel, cfg: dict[str, Any]) -> list[PlannedTensor]:
    """Map every GGUF tensor to its HF tensor(s); unknown tensors and inconsistent shapes are errors.

    Shapes are the GGUF's own (row-major), checked against the hyper-parameters where they pin them down:
    the vocabulary, the Q/K/V widths, and every layer holding the same tensors.
    """
    plan: list[PlannedTensor] = []
    per_block: dict[int, set[str]] = {}
    layers, extra = cfg["num_hidden_layers"], extra_layers(family, model)
    joined: dict[str, dict[int, GGUFTensorInfo]] = {}  # HF name of a Derived row -> its parts found so far
    uniform = [(cfg["head_dim"], cfg["num_key_value_heads"])] * cfg["num_hidden_layers"]
    heads = family.layer_heads(cfg) if family.layer_heads else uniform
    kinds = cfg.get("layer_types") if family.hybrid else None
    for info in model.tensors:
        if info.name in rope.ROPE_TENSORS:
            continue  # read into rope_parameters by hf_config
        if extra and (m := _BLOCK.match(info.name)) and layers <= int(m[1]) < layers + extra:
            continue  # an extra (MTP) layer: transformers drops it at load
        part = family.derived_part(info.name)
        if part is not None:
            row, i, idx = part
            hf_name = row.sources[0].format(**idx)
            if hf_name not in joined:
                joined[hf_name] = {}
                plan.append(PlannedTensor(hf_name, (), info, row.parts[i], derived=row))  # shape set below
            joined[hf_name][i] = info
            if not 0 <= idx["bid"] < cfg["num_hidden_layers"]:
                raise InvalidFileError(
                    f"{model.path}: tensor {quoted(info.name)} is past the model's {cfg['num_hidden_layers']} layers"
                )
            per_block.setdefault(idx["bid"], set()).add(row.parts[i])
            continue
        found = family.gguf_to_hf(info.name)
        if found is None:
            raise UnsupportedError(
                f"{model.path}: tensor {quoted(info.name)} has no {family.hf_architecture} counterpart"
            )
        hf_t, idx = found
        gguf_t = family.hf_template_to_gguf[hf_t]
        if "bid" in idx:
            if not 0 <= idx["bid"] < cfg["num_hidden_layers"]:
                raise InvalidFileError(
                    f"{model.path}: tensor {quoted(info.name)} is past the model's {cfg['num_hidden_layers']} layers"
                )
            per_block.setdefault(idx["bid"], set()).add(gguf_t)
        _check_shape(model.path, info, gguf_t, cfg, heads[idx["bid"]] if "bid" in idx else None, family)
        if gguf_t in family.expert_tensors:
            for x in range(info.shape[0]):
                plan.append(PlannedTensor(hf_t.format(xid=x, **idx), tuple(info.shape[1:]), info, gguf_t, expert=x))
            continue
        # llama.cpp stores the shared-expert gate as a vector; transformers keeps it as a (1, hidden) matrix.
        shape = (
            (1, info.shape[0]) if gguf_t.endswith("ffn_gate_inp_shexp.weight") and len(info.shape) == 1 else info.shape
        )
        transform = family.transforms.get(gguf_t)
        if transform is not None and transform.hf_shape is not None:
            shape = transform.hf_shape(shape)
        plan.append(PlannedTensor(hf_t.format(**idx), shape, info, gguf_t))
    plan = [_join_plan(model.path, p, joined[p.hf_name]) if p.derived is not None else p for p in plan]
    # Layers of one kind hold the same tensors: leading dense layers (DeepSeek's first_k_dense_replace), dense
    # layers between MoE ones (Llama 4's interleave step) and a hybrid model's layer types are kinds of their own.
    step = int(cfg[family.moe_layer_step]) if family.moe_layer_step else 1
    lead = int(model.metadata.get(f"{model.architecture}.leading_dense_block_count", 0))
    layouts: dict[tuple[Any, ...], set[frozenset[str]]] = {}
    for b, held in per_block.items():
        kind = (kinds[b] if kinds else "", (b + 1) % step == 0, b < lead)
        layouts.setdefault(kind, set()).add(frozenset(held))
    mixed = any(len(v) > 1 for v in layouts.values())
    if len(per_block) != cfg["num_hidden_layers"] or (family.uniform_layers and mixed):
        raise InvalidFileError(f"{model.path}: GGUF layers do not all hold the same tensors")
    for required in ("token_embd.weight", "output_norm.weight"):
        if required not in model.by_name:
            raise InvalidFileError(f"{model.path}: GGUF lacks {required}")
    return plan


_BLOCK = re.compile(r"blk\.(\d+)\.")


def _join_plan(path: Path, p: PlannedTensor, found: dict[int, GGUFTensorInfo]) -> PlannedTensor:
    """A Derived HF tensor's plan: every part present, its shape from the join of empty tensors of theirs."""
    row = p.derived
    assert row is not None
    if row.join is None or len(found) != len(row.parts):
        missing = [t for i, t in enumerate(row.parts) if i not in found]
        why = f"lacks {missing[0]}" if missing else f"has {p.source.name}, which gguf-import cannot join"
        raise InvalidFileError(f"{path}: GGUF {why} ({p.hf_name} is made of {', '.join(row.parts)})")
    parts = tuple(found[i] for i in range(len(row.parts)))
    try:
        shape = tuple(row.join([torch.empty(t.shape, device="meta") for t in parts]).shape)
    except RuntimeError as exc:
        raise InvalidFileError(f"{path}: GGUF parts of {p.hf_name} do not fit together: {exc}") from None
    return PlannedTensor(p.hf_name, shape, parts[0], p.gguf_template, derived=row, parts=parts)


def _check_shape(
    path: Path, info: GGUFTensorInfo, gguf_t: str, cfg: dict[str, Any], heads: tuple[int, int] | None, family: Family
) -> None:
    """``heads``: the (head_dim, kv_heads) of the tensor's layer, None outside the layers."""
    head_dim, kv_heads = heads or (cfg["head_dim"], cfg["num_key_value_heads"])
    rows = {
        "token_embd.weight": cfg["vocab_size"],
        "blk.{bid}.attn_q.weight": cfg["num_attention_heads"] * head_dim * (2 if family.gated_q else 1),
        "blk.{bid}.attn_k.weight": kv_heads * head_dim,
        "blk.{bid}.attn_v.weight": kv_heads * head_dim,
    }.get(gguf_t)
    if rows is not None and (len(info.shape) != 2 or info.shape[0] != rows or info.shape[1] != cfg["hidden_size"]):
        raise InvalidFileError(
            f"{path}: tensor {quoted(info.name)} has shape {info.shape}, "
            f"the metadata implies ({rows}, {cfg['hidden_size']})"
        )


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order: per head, rows (0, d/2, 1, d/2+1, ...) back to (0..d/2, d/2..d).

    ``w`` is (n_head * head_dim, ...) for a weight or (n_head * head_dim,) for a bias.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def convert_tensor(family: Family, gguf_t: str, w: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """A dequantized GGUF tensor (float32) in HF layout."""
    if family.permute_qk and gguf_t.startswith(("blk.{bid}.attn_q.", "blk.{bid}.attn_k.")):
        heads = cfg["num_attention_heads"] if ".attn_q." in gguf_t else cfg["num_key_value_heads"]
        w = unpermute_rows(w, heads)
    transform = family.transforms.get(gguf_t)
    if transform is not None:
        w = transform.to_hf(w, cfg)
    if family.shifts(gguf_t):
        w = w - family.norm_shift
    return w


def pick_dtype(model: GGUFModel, dtype: ImportDType) -> torch.dtype:
    """``auto`` keeps a float model's own precision (F16 or BF16); quantized and F32 models import as f32."""
    if dtype != "auto":
        return TORCH_DTYPES[dtype]
    kinds = {t.qtype for t in model.tensors if len(t.shape) > 1}
    if kinds == {GGMLQuantizationType.BF16}:
        return torch.bfloat16
    if kinds == {GGMLQuantizationType.F16}:
        return torch.float16
    return torch.float32


def iter_hf_tensors(
    family: Family,
    model: GGUFModel,
    plan: list[PlannedTensor],
    cfg: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device,
) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
    """Yield (planned tensor, HF tensor on the CPU), dequantizing each GGUF tensor once."""
    current: GGUFTensorInfo | None = None
    full: torch.Tensor | None = None
    for p in plan:
        if p.derived is not None and p.derived.join is not None:
            parts = [dequantize(model.tensor_bytes(t).to(device), t.qtype, t.shape).float() for t in p.parts]
            yield p, p.derived.join(parts).to(dtype).cpu()
            continue
        if p.source is not current:
            current = p.source
            raw = model.tensor_bytes(current).to(device)
            full = convert_tensor(family, p.gguf_template, dequantize(raw, current.qtype, current.shape), cfg)
        assert full is not None
        w = full[p.expert] if p.expert is not None else full
        yield p, w.reshape(p.shape).to(dtype).cpu()


def gguf_import(
    gguf_path: Path | str,
    out_dir: Path | str,
    *,
    dtype: ImportDType = "auto",
    device: str = "auto",
    check: Callable[[Path], dict[str, Any]] | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 2 << 30,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Convert a GGUF file to an HF checkpoint folder; returns a result dict (the ``--json`` output).

    ``check`` (e.g. ``mtk.artifacts.gguf.import_check``) is called with the complete temporary folder before it
    is published; what it returns is the result's ``verification``, and what it raises leaves no output.
    """
    from mtk.converters.tokenizer import write_hf_tokenizer

    start = time.perf_counter()
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    model = open_gguf(gguf_path)
    family = gguf_family(model)
    cfg = hf_config(family, model)
    torch_dtype = pick_dtype(model, dtype)
    plan = plan_tensors(family, model, cfg)
    dev = resolve_device(device)
    result: dict[str, Any] = {
        "input": str(gguf_path),
        "output": str(out_dir),
        "architecture": family.hf_architecture,
        "gguf_architecture": model.architecture,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "device": str(dev),
        "tensors": len(plan),
        "parameters": sum(math.prod(p.shape) for p in plan),
    }
    if extra := extra_layers(family, model):
        result["skipped"] = f"skipped the last {extra} blocks ({model.architecture}.{family.extra_layers_gguf})"
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        writer = SafetensorsWriter(
            tmp, [(p.hf_name, torch_dtype, p.shape) for p in plan], max_shard_bytes=max_shard_bytes
        )
        with writer:
            for i, (p, w) in enumerate(iter_hf_tensors(family, model, plan, cfg, torch_dtype, dev)):
                writer.write(p.hf_name, w)
                if progress:
                    progress(i + 1, len(plan), p.hf_name)
        _write_configs(tmp, family, cfg, torch_dtype)
        write_hf_tokenizer(model.metadata, tmp)
        (tmp / "mtk.json").write_text(
            json.dumps({"source": gguf_path.name, "tool": "mtk gguf-import"}, indent=2) + "\n"
        )
        result["shards"] = len(writer.shards)
        result["convert_seconds"] = round(time.perf_counter() - start, 3)
        if check is not None:
            result["verification"] = check(tmp)
    model.close()
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _write_configs(out: Path, family: Family, cfg: dict[str, Any], dtype: torch.dtype) -> None:
    """config.json and generation_config.json as plain JSON.

    These are the keyword arguments of the family's transformers config class, which fills in its own
    defaults when it loads them, exactly as ``AutoConfig.for_model(**cfg)`` would; writing them directly
    spares the import of transformers (~2.3 s, a third of a small model's whole import).
    """
    config = {
        "architectures": [family.hf_architecture],
        "model_type": family.model_type,
        **cfg,
        "dtype": str(dtype).removeprefix("torch."),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    (out / "generation_config.json").write_text(json.dumps({"_from_model_config": True, **generation}, indent=2) + "\n")


def load_in_memory(gguf_path: Path | str, device: str = "auto") -> Any:
    """The GGUF's model in transformers (float32, on the CPU), its weights the exact dequantized values,
    without writing a checkpoint: what verification compares llama.cpp with."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_file = open_gguf(gguf_path)
    family = gguf_family(model_file)
    cfg = hf_config(family, model_file)
    config = AutoConfig.for_model(family.model_type, **cfg)
    plan = plan_tensors(family, model_file, cfg)
    state = {
        p.hf_name: w for p, w in iter_hf_tensors(family, model_file, plan, cfg, torch.float32, resolve_device(device))
    }
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = _fused_experts(family, state, model.state_dict().keys(), config.num_hidden_layers)
    result = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise InvalidFileError(f"{gguf_path}: weights do not fit the model: {(missing + result.unexpected_keys)[:5]}")
    return model.eval()


def _fused_experts(family: Family, state: dict[str, torch.Tensor], wanted: Any, layers: int) -> dict[str, torch.Tensor]:
    """transformers 5 holds MoE experts fused (the family's ``fused_tensors``): build those the model asks for
    from the per-expert tensors of the plan (each GGUF part stacked over experts, the parts concatenated along
    the rows)."""
    wanted = set(wanted)
    if not family.fused_tensors or set(state) <= wanted:
        return state
    out = dict(state)
    for hf_t, parts in family.fused_tensors.items():
        for bid in range(layers):
            if (name := hf_t.format(bid=bid)) in wanted:
                out[name] = torch.cat([_stacked(family, out, gguf_t, bid) for gguf_t in parts], dim=-2)
    return out


def _stacked(family: Family, state: dict[str, torch.Tensor], gguf_t: str, bid: int) -> torch.Tensor:
    """Layer ``bid``'s tensor of ``gguf_t`` taken out of ``state``: its experts stacked, or the one tensor."""
    if gguf_t not in family.expert_tensors:
        return state.pop(family.tensors[gguf_t].format(bid=bid))
    hf_t, experts = family.expert_tensors[gguf_t], []
    while (name := hf_t.format(bid=bid, xid=len(experts))) in state:
        experts.append(state.pop(name))
    return torch.stack(experts)
