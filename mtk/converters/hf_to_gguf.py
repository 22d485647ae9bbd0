"""gguf-export: a Hugging Face checkpoint (or a GGUF, re-typed) to a GGUF that llama.cpp runs, streaming.

Plan (metadata, GGUF names, types and shapes, from the config and the tensor headers alone), write the
header, then for each GGUF tensor: read its source tensor(s) from the memory map, apply llama.cpp's layout
changes, encode, write, drop. Memory holds one tensor (one layer's experts for MoE). A GGUF source tensor
already in its target type is copied byte for byte.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mtk.converters import rope
from mtk.converters.family import Derived, Family, Synthesised, family_for_hf, open_checkpoint
from mtk.converters.gguf_types import ModelShape, TypeRules, plan_types
from mtk.converters.imatrix import Imatrix
from mtk.converters.tokenizer import METADATA_TYPES
from mtk.errors import InvalidFileError, UnsupportedError, quoted
from mtk.formats.atomic import atomic_files
from mtk.formats.checkpoint import HFCheckpoint
from mtk.formats.gguf_reader import GGUFModel, open_gguf
from mtk.formats.gguf_writer import (
    GGUFStreamWriter,
    PlannedGGUFTensor,
    split_metadata,
    split_name,
    split_tensors,
)
from mtk.kernels.dequant import dequantize
from mtk.kernels.quantize import quantize
from mtk.kernels.types import ROWS
from mtk.runtime import resolve_device

Progress = Callable[[int, int, str], None]
Q = GGMLQuantizationType
# Types whose encoders take importance weights (llama.cpp's imatrix).
# llama-imatrix collects block matrices only (the embedding is a lookup; output.weight needs --process-output).
NOT_IN_IMATRIX = ("token_embd.weight", "output.weight")
IMPORTANCE_TYPES = frozenset(row.qtype for row in ROWS if row.writes and row.uses_importance)
# (GGUF name, float32 GGUF-layout 2-D weight, type, importance (cols,) or None) -> its bytes, or None to leave the
# tensor to the ordinary encoder: gguf-export --calibration's GPTQ (mtk.quantizers.gguf_calibration).
MatrixEncoder = Callable[[str, torch.Tensor, GGMLQuantizationType, torch.Tensor | None], torch.Tensor | None]


@dataclass(frozen=True)
class ExportTensor:
    """One GGUF tensor: its target type, and where its values come from (HF names, a GGUF tensor, or
    ``synthesised`` from the config when no source tensor holds it). ``rows`` (i, n): the tensor is the
    i-th of n equal row blocks (dim -2) of its one fused source (gate_up_proj: gate, then up)."""

    name: str
    template: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    sources: tuple[str, ...]
    synthesised: Synthesised | None = None
    rows: tuple[int, int] | None = None
    # Part ``part`` of a family's Derived row, cut from ``sources`` (its HF tensors).
    derived: Derived | None = None
    part: int = 0


def gguf_metadata(family: Family, config: Any, ckpt: HFCheckpoint, rules: TypeRules) -> dict[str, Any]:
    from mtk.converters.tokenizer import gguf_tokenizer_metadata

    arch = family.gguf_arch
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rotary = int(head_dim * rope.rotary_fraction(config))
    meta: dict[str, Any] = {
        "general.architecture": arch,
        "general.type": "model",
        "general.name": ckpt.path.name,
        "general.file_type": int(rules.file_type),
        "general.quantization_version": 2,
    }
    for key, value in family.export_hparams(config).items():
        meta[f"{arch}.{key}"] = float(value) if isinstance(value, float) else value
    meta.setdefault(f"{arch}.attention.head_count_kv", heads)
    # A family's own keys win (Gemma 4's layers differ in head size, DeepSeek's latent attention has its own widths).
    meta.setdefault(f"{arch}.attention.key_length", head_dim)
    meta.setdefault(f"{arch}.attention.value_length", head_dim)
    meta.setdefault(f"{arch}.rope.dimension_count", rotary)
    for key, value in rope.gguf_metadata(family.rope, config, arch).items():
        meta.setdefault(key, value)  # DeepSeek's yarn_log_multiplier is 0.1 x the table's (llama.cpp divides by 0.1)
    meta[f"{arch}.vocab_size"] = config.vocab_size
    meta.update(gguf_tokenizer_metadata(ckpt.path))
    return meta


def shape_from_config(family: Family, config: Any) -> ModelShape:
    """The hyper-parameters llama.cpp's type rules read, from a transformers config."""
    heads = config.num_attention_heads
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None) or 0
    return ModelShape(
        family.gguf_arch,
        config.num_hidden_layers,
        heads,
        getattr(config, "num_key_value_heads", None) or heads,
        experts if family.expert_tensors or family.derived else 0,
    )


def shape_from_gguf(model: GGUFModel) -> ModelShape:
    """The same from a GGUF's metadata (``{arch}.block_count`` ...)."""
    arch, meta = model.architecture, model.metadata

    def first(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return int(value[0] if isinstance(value, (list, tuple)) else value)

    heads = first("attention.head_count")
    return ModelShape(arch, first("block_count"), heads, first("attention.head_count_kv", heads), first("expert_count"))


def plan_hf(
    family: Family,
    ckpt: HFCheckpoint,
    rules: TypeRules,
    model: ModelShape,
    synthesised: dict[str, Synthesised] | None = None,
    config: Any = None,
) -> list[ExportTensor]:
    """GGUF tensors: the ``synthesised`` ones first (as llama.cpp's converter writes its generated tensors),
    then checkpoint order, experts of a layer stacked into one tensor (per-expert layout) or cut from
    transformers 5's fused ones (``family.fused_tensors``)."""
    synthesised = synthesised or {}
    groups: dict[str, dict[int, str]] = {}
    templates: dict[str, str] = {}
    fused: dict[str, tuple[int, int]] = {}
    derived: dict[str, ExportTensor] = {}
    for hf_name in ckpt.names():
        if hf_name.endswith(family.dropped) or extra_layer(family, hf_name, model.n_layer):
            continue
        row = family.derived_source(hf_name)
        if row is not None:
            derived.update(_derived_parts(ckpt, *row, config))
            continue
        found = _gguf_names(family, hf_name)
        if found is None:
            raise UnsupportedError(f"{ckpt.path}: tensor {quoted(hf_name)} has no {family.gguf_arch} GGUF counterpart")
        for name, template, xid, rows in found:
            other = groups.get(name, {})
            if name in fused or (rows is not None and other) or xid in other:
                first = next(iter(other.values()), hf_name)
                raise InvalidFileError(f"{ckpt.path}: {quoted(first)} and {quoted(hf_name)} both hold {name}")
            groups.setdefault(name, {})[xid] = hf_name
            templates[name] = template
            if rows is not None:
                fused[name] = rows
    clash = sorted(set(synthesised) & set(groups))
    if clash:
        raise InvalidFileError(f"{ckpt.path}: the checkpoint holds {clash[0]}, which gguf-export computes itself")
    shapes: dict[str, tuple[int, ...]] = {name: s.shape for name, s in synthesised.items()}
    for name, members in groups.items():
        shape = ckpt.shape(members[min(members)])
        if name in fused:
            shapes[name] = _row_block(ckpt, members[0], shape, fused[name][1])
        else:
            shapes[name] = (len(members), *shape) if templates[name] in family.expert_tensors else shape
        transform = family.transforms.get(templates[name])
        if transform is not None and transform.gguf_shape is not None:
            shapes[name] = transform.gguf_shape(shapes[name])
    shapes.update({name: t.shape for name, t in derived.items()})
    types = plan_types(list(shapes.items()), model, rules)
    made = [ExportTensor(n, n, types[n], shapes[n], (), synthesised=s) for n, s in synthesised.items()]
    planned = [
        ExportTensor(
            name, templates[name], types[name], shapes[name], tuple(m[i] for i in sorted(m)), rows=fused.get(name)
        )
        for name, m in groups.items()
    ]
    return made + planned + [replace(t, qtype=types[name]) for name, t in derived.items()]


def extra_layer(family: Family, hf_name: str, n_layer: int) -> bool:
    """Whether an HF tensor belongs to a layer past the model's ``n_layer`` that the family's checkpoints may
    hold and transformers drops (GLM-4.5's multi-token prediction layers)."""
    if not family.extra_layers:
        return False
    m = _LAYER.match(hf_name)
    return m is not None and int(m.group(1)) >= n_layer


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def _derived_parts(ckpt: HFCheckpoint, row: Derived, idx: dict[str, int], config: Any) -> dict[str, ExportTensor]:
    """The GGUF tensors of one Derived row (their shapes from its split of empty tensors of the sources')."""
    sources = tuple(t.format(**idx) for t in row.sources)
    missing = [s for s in sources if s not in ckpt.names()]
    if missing:
        raise InvalidFileError(f"{ckpt.path}: the checkpoint lacks {quoted(missing[0])}")
    empty = [torch.empty(ckpt.shape(s), dtype=ckpt.dtype(s), device="meta") for s in sources]
    out = {}
    kw = {"config": config} if row.config else {}
    for i, (template, part) in enumerate(zip(row.parts, row.split(*empty, **kw), strict=True)):
        shape = tuple(part.shape)
        if row.packed is not None:  # rows of whole blocks: the logical row is longer than its bytes
            size, type_size = GGML_QUANT_SIZES[row.packed]
            shape = (*shape[:-1], shape[-1] // type_size * size)
        name = template.format(**idx)
        out[name] = ExportTensor(name, template, Q.F32, shape, sources, derived=row, part=i)
    return out


def _gguf_names(family: Family, hf_name: str) -> list[tuple[str, str, int, tuple[int, int] | None]] | None:
    """The GGUF tensors an HF tensor feeds: (name, template, expert index, row block of a fused source)."""
    fused = family.fused_to_gguf(hf_name)
    if fused is not None:
        parts, idx = fused
        return [(t.format(**idx), t, 0, (i, len(parts))) for i, t in enumerate(parts)]
    found = family.hf_to_gguf(hf_name)
    if found is None:
        return None
    template, idx = found
    xid = idx.pop("xid", 0)
    return [(template.format(**idx), template, xid, None)]


def _row_block(ckpt: HFCheckpoint, hf_name: str, shape: tuple[int, ...], n: int) -> tuple[int, ...]:
    if len(shape) < 2 or shape[-2] % n:
        raise InvalidFileError(f"{ckpt.path}: {quoted(hf_name)} of shape {shape} does not split into {n} row blocks")
    return (*shape[:-2], shape[-2] // n, shape[-1])


def plan_gguf(model: GGUFModel, rules: TypeRules) -> list[ExportTensor]:
    types = plan_types([(t.name, t.shape) for t in model.tensors], shape_from_gguf(model), rules)
    return [ExportTensor(t.name, t.name, types[t.name], t.shape, (t.name,)) for t in model.tensors]


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's Q/K row order for NORM RoPE: per head, interleave the two halves of the rows."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def hf_tensor(family: Family, t: ExportTensor, ckpt: HFCheckpoint, config: Any, device: torch.device) -> torch.Tensor:
    """The float32 GGUF-layout tensor for one planned tensor of an HF source."""
    if t.synthesised is not None:
        return t.synthesised.make().to(device=device, dtype=torch.float32)
    if t.derived is not None:
        dtype = None if t.derived.packed is not None else torch.float32  # packed bytes stay bytes
        kw = {"config": config} if t.derived.config else {}
        return t.derived.split(*(ckpt.get(s).to(device=device, dtype=dtype) for s in t.sources), **kw)[t.part]
    parts = [ckpt.get(s).to(device=device, dtype=torch.float32) for s in t.sources]
    if t.rows is not None:
        i, n = t.rows
        w = parts[0].chunk(n, dim=-2)[i].contiguous()
    else:
        w = torch.stack(parts) if t.template in family.expert_tensors else parts[0]
    if family.permute_qk and t.template.startswith(("blk.{bid}.attn_q.", "blk.{bid}.attn_k.")):
        heads = config.num_attention_heads if ".attn_q." in t.template else config.num_key_value_heads
        w = permute_rows(w, heads)
    if family.shifts(t.template):
        w = w + family.norm_shift
    transform = family.transforms.get(t.template)
    if transform is not None:
        w = transform.to_gguf(w, config.to_dict())
    return w


def encode(w: torch.Tensor, qtype: GGMLQuantizationType, importance: torch.Tensor | None = None) -> torch.Tensor:
    """Float weights to the bytes of ``qtype`` (F32 is a plain float32 view).

    ``importance``: float32 (n_mat, cols) imatrix values (n_mat = 1, or the number of experts of a 3-D
    ``w``), used by the K-quant, IQ4 and Q4_0/Q4_1/Q5_0/Q5_1 encoders and ignored by the others (Q8_0 and
    the float types, as llama.cpp ignores it).
    """
    if qtype == Q.F32:
        return w.to(torch.float32).contiguous().view(torch.uint8)
    if importance is None or qtype not in IMPORTANCE_TYPES:
        return quantize(w, qtype)
    if w.dim() == 3:  # experts: each has its own row of importance
        return torch.stack([quantize(w[e], qtype, importance=importance[e]) for e in range(w.shape[0])])
    return quantize(w, qtype, importance=importance[0])


class _Source:
    """Reads the values of planned tensors from an HF checkpoint or a GGUF file."""

    def __init__(self, path: Path, rules: TypeRules, device: torch.device) -> None:
        self.device = device
        self.skipped = ""  # what an HF source held that the GGUF leaves out, in words
        self.gguf: GGUFModel | None = None
        self.note: str | None = None  # what of the source is left out (a multimodal model's other towers)
        if path.is_file():
            self.gguf = open_gguf(path)
            self.plan = plan_gguf(self.gguf, rules)
            skip = ("general.file_type", "split.no", "split.count", "split.tensors.count")
            self.metadata = {k: v for k, v in self.gguf.metadata.items() if k not in skip}
            self.metadata["general.file_type"] = int(rules.file_type)
            self.value_types = {k: v for k, v in self.gguf.value_types.items() if k in self.metadata}
            self.array_types = dict(self.gguf.array_types)
            self.architecture = self.gguf.architecture
            return
        self.ckpt, self.note = open_checkpoint(path)
        self.family = family_for_hf(self.ckpt.source_architecture)
        self.config = self.ckpt.transformers_config(self.family.extra_layers, self.family.gated_q)
        self.family.export_hparams(self.config)  # refuses a config llama.cpp cannot run before any planning
        model = shape_from_config(self.family, self.config)
        # Metadata first: a family refuses configs llama.cpp cannot run there, with a clearer reason than a tensor.
        self.metadata = gguf_metadata(self.family, self.config, self.ckpt, rules)
        self.plan = plan_hf(self.family, self.ckpt, rules, model, self.family.synthesised(self.config), self.config)
        extra = [n for n in self.ckpt.names() if extra_layer(self.family, n, model.n_layer)]
        if extra:
            self.skipped = f"skipped {len(extra)} tensors of layers past num_hidden_layers ({self.family.extra_layers})"
        # llama.cpp checks the value types of the tokenizer keys (token ids must be UINT32, ...).
        self.value_types = {k: vt for k, (vt, _) in METADATA_TYPES.items() if k in self.metadata}
        self.array_types = {k: it for k, (_, it) in METADATA_TYPES.items() if k in self.metadata and it is not None}
        self.architecture = self.family.gguf_arch

    def encoded(
        self, t: ExportTensor, importance: torch.Tensor | None = None, matrix_encoder: MatrixEncoder | None = None
    ) -> tuple[torch.Tensor, bool]:
        """The GGUF bytes of ``t`` and whether they were copied unchanged from the source; ``matrix_encoder``
        (HF sources only) may encode a plain 2-D checkpoint matrix instead of :func:`encode`."""
        if self.gguf is not None:
            info = self.gguf.by_name[t.name]
            raw = self.gguf.tensor_bytes(info)
            if info.qtype == t.qtype:
                return raw, True
            out = encode(dequantize(raw.to(self.device), info.qtype, info.shape), t.qtype, importance)
            self.gguf.release(info)
            return out, False
        w = hf_tensor(self.family, t, self.ckpt, self.config, self.device)
        packed = t.derived.packed if t.derived is not None else None
        if packed is not None and t.qtype == packed:
            out = w.reshape(-1)  # already the bytes of that GGUF type (an MXFP4 checkpoint's experts)
        else:
            if packed is not None:
                w = dequantize(w.reshape(-1), packed, t.shape).float()
            found = None
            if matrix_encoder is not None and t.derived is None and t.synthesised is None and w.dim() == 2:
                found = matrix_encoder(t.name, w, t.qtype, None if importance is None else importance[0])
            out = encode(w, t.qtype, importance) if found is None else found
        for s in t.sources:
            self.ckpt.release(s)
        return out, False


class _Counter:
    """A write-only file that counts bytes: the header's size for a dry run, without writing anything."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def _parts(src: _Source, split_max_bytes: int | None) -> list[list[PlannedGGUFTensor]]:
    planned = [PlannedGGUFTensor(t.name, t.qtype, t.shape) for t in src.plan]
    return split_tensors(planned, split_max_bytes or 1 << 62)


def _part_metadata(src: _Source, i: int, n_parts: int) -> dict[str, Any]:
    return split_metadata(src.metadata, i, n_parts, len(src.plan)) if n_parts > 1 else src.metadata


def _summary(src: _Source, rules: TypeRules, total_bytes: int) -> dict[str, Any]:
    """What both a dry run and an export report: types, sizes and bits per weight (tensor data only, as
    llama-quantize's BPW)."""
    types: dict[str, int] = {}
    for t in src.plan:
        types[t.qtype.name] = types.get(t.qtype.name, 0) + 1
    data = sum(PlannedGGUFTensor(t.name, t.qtype, t.shape).nbytes for t in src.plan)
    params = sum(math.prod(t.shape) for t in src.plan)
    note = {"note": src.note} if src.note else {}
    return {
        **note,
        "architecture": src.architecture,
        "file_type": rules.file_type.name.removeprefix("MOSTLY_").removeprefix("ALL_"),
        "types": types,
        "tensors": len(src.plan),
        "parameters": params,
        "tensor_bytes": data,
        "bits_per_weight": round(8 * data / params, 4) if params else 0.0,
        "bytes": total_bytes,
    }


def plan_export(source: Path | str, *, rules: TypeRules, split_max_bytes: int | None = None) -> dict[str, Any]:
    """A dry run of :func:`gguf_export`: the per-tensor plan (name, shape, type, bytes) and the file size
    the export would write (headers included, split parts summed), without encoding or writing."""
    source = Path(source)
    src = _Source(source, rules, torch.device("cpu"))
    parts = _parts(src, split_max_bytes)
    total = 0
    for i, part in enumerate(parts):
        sink = _Counter()
        meta = _part_metadata(src, i, len(parts))
        writer = GGUFStreamWriter(sink, meta, part, value_types=src.value_types, array_types=src.array_types)  # type: ignore[arg-type]
        total += writer.total_size
    rows = [
        {
            "name": t.name,
            "shape": list(t.shape),
            "type": t.qtype.name,
            "bytes": PlannedGGUFTensor(t.name, t.qtype, t.shape).nbytes,
        }
        for t in src.plan
    ]
    return {"input": str(source), "dry_run": True, "files": len(parts), **_summary(src, rules, total), "plan": rows}


def _importance(imatrix: Imatrix | None, t: ExportTensor, used: list[str], missing: list[str]) -> torch.Tensor | None:
    """The imatrix rows of a tensor that an importance-aware encoder will quantize; notes which lack one."""
    if imatrix is None or t.qtype not in IMPORTANCE_TYPES:
        return None
    values = imatrix.importance(t.name)
    n_mat = t.shape[0] if len(t.shape) == 3 else 1
    if values is None:
        if t.name not in NOT_IN_IMATRIX:
            missing.append(t.name)
        return None
    if tuple(values.shape) != (n_mat, t.shape[-1]):
        raise InvalidFileError(
            f"imatrix entry {t.name} has shape {tuple(values.shape)}, the tensor needs ({n_mat}, {t.shape[-1]})"
        )
    used.append(t.name)
    return values


def gguf_export(
    source: Path | str,
    out_path: Path | str,
    *,
    rules: TypeRules,
    split_max_bytes: int | None = None,
    device: str = "auto",
    check: Callable[[Path], dict[str, Any]] | None = None,
    overwrite: bool = False,
    imatrix: Imatrix | None = None,
    matrix_encoder: MatrixEncoder | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``out_path`` (or its split parts) from an HF folder or a GGUF file; returns the ``--json`` result.

    ``imatrix`` gives the K-quant/IQ4 encoders each tensor's importance (and sets ``rules.imatrix``, which
    llama.cpp's mix rules look at); tensors it lacks are encoded without and listed in the result.
    ``matrix_encoder`` encodes the HF matrices it takes instead of the ordinary encoders (see ``MatrixEncoder``).
    ``check`` (e.g. ``mtk.artifacts.gguf.export_check``) is called with the first complete temporary part before
    anything is published; what it returns is the result's ``verification``, and what it raises publishes nothing.
    """
    start = time.perf_counter()
    source, out_path = Path(source), Path(out_path)
    if imatrix is not None and not rules.imatrix:
        rules = replace(rules, imatrix=True)  # llama.cpp's mix rules look at whether an imatrix is used
    src = _Source(source, rules, resolve_device(device))
    parts = _parts(src, split_max_bytes)
    paths = [out_path] if len(parts) == 1 else [split_name(out_path, i, len(parts)) for i in range(len(parts))]
    by_name = {t.name: t for t in src.plan}
    copied, done, total_bytes = 0, 0, 0
    used: list[str] = []
    missing: list[str] = []
    with atomic_files(paths, overwrite=overwrite) as tmps:
        for i, (tmp, part) in enumerate(zip(tmps, parts, strict=True)):
            meta = _part_metadata(src, i, len(parts))
            with open(tmp, "wb") as fp:
                writer = GGUFStreamWriter(fp, meta, part, value_types=src.value_types, array_types=src.array_types)
                for t in part:
                    planned = by_name[t.name]
                    data, same = src.encoded(planned, _importance(imatrix, planned, used, missing), matrix_encoder)
                    writer.write(t.name, data)
                    copied += same
                    done += 1
                    if progress:
                        progress(done, len(src.plan), t.name)
                writer.finish()
                total_bytes += writer.total_size
        convert_seconds = round(time.perf_counter() - start, 3)
        verification = check(tmps[0]) if check is not None else None
    result: dict[str, Any] = {
        "input": str(source),
        "output": [str(p) for p in paths] if len(paths) > 1 else str(out_path),
        **_summary(src, rules, total_bytes),
        "copied_unchanged": copied,
        "convert_seconds": convert_seconds,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if src.skipped:
        result["skipped"] = src.skipped
    if imatrix is not None:
        result["imatrix"] = {"tensors_used": len(used), "missing": missing}
    if verification is not None:
        result["verification"] = verification
    return result


def parse_size(text: str) -> int:
    """``2G``, ``500M``, ``100K`` or a byte count; decimal units, as llama.cpp's gguf-split."""
    units = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    text = text.strip().upper()
    try:
        if text[-1:] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 2G, 500M)") from None


def auto_type(source: Path | str) -> GGMLQuantizationType:
    """``--type auto``, as convert_hf_to_gguf: BF16 for a bf16 checkpoint, else F16; a GGUF keeps its type.

    Packed integer tensors (an MXFP4 checkpoint's expert blocks) do not count: gpt-oss-20b is a bf16 checkpoint.
    """
    source = Path(source)
    if source.is_file():
        model = open_gguf(source)
        counts: dict[GGMLQuantizationType, int] = {}
        for t in model.tensors:
            if len(t.shape) > 1:
                counts[t.qtype] = counts.get(t.qtype, 0) + 1
        return max(counts, key=lambda k: counts[k]) if counts else Q.F16
    ckpt = HFCheckpoint(source)
    dtypes = {ckpt.dtype(n) for n in ckpt.names() if len(ckpt.shape(n)) > 1 and ckpt.dtype(n).is_floating_point}
    return Q.BF16 if dtypes == {torch.bfloat16} else Q.F16
