"""gguf-export: a Hugging Face checkpoint to a GGUF file that llama.cpp runs, streaming.

Plan (metadata, GGUF names, types and shapes, from the config and the safetensors headers alone), write
the header, then for each GGUF tensor: read its HF tensor(s) from the memory map, apply llama.cpp's
layout changes, encode, write, drop. Memory holds one tensor (one layer's experts for MoE).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from gguf import GGMLQuantizationType, LlamaFileType

from mtk.converters.family import Family, family_for_hf
from mtk.converters.tokenizer import METADATA_TYPES
from mtk.errors import UnsupportedError
from mtk.formats.atomic import atomic_file
from mtk.formats.checkpoint import HFCheckpoint
from mtk.formats.gguf_writer import GGUFStreamWriter, PlannedGGUFTensor

ExportType = Literal["f32", "f16", "bf16"]
Progress = Callable[[int, int, str], None]
Q = GGMLQuantizationType
EXPORT_TYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (Q.F32, LlamaFileType.ALL_F32),
    "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
}
TORCH_OF = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
# HF tensors that carry no weights llama.cpp needs (buffers recomputed at load time).
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class ExportTensor:
    """One GGUF tensor and the HF tensors it is made of (several for stacked experts)."""

    name: str
    template: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    sources: tuple[str, ...]


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in rope:
        rope = rope["full_attention"]
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def gguf_metadata(family: Family, config: Any, ckpt: HFCheckpoint, file_type: LlamaFileType) -> dict[str, Any]:
    from mtk.converters.tokenizer import gguf_tokenizer_metadata

    arch = family.gguf_arch
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rotary = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    meta: dict[str, Any] = {
        "general.architecture": arch,
        "general.type": "model",
        "general.name": ckpt.path.name,
        "general.file_type": int(file_type),
        "general.quantization_version": 2,
    }
    for key, value in family.export_hparams(config).items():
        meta[f"{arch}.{key}"] = float(value) if isinstance(value, float) else value
    meta.setdefault(f"{arch}.attention.head_count_kv", heads)
    meta[f"{arch}.attention.key_length"] = head_dim
    meta[f"{arch}.attention.value_length"] = head_dim
    meta[f"{arch}.rope.dimension_count"] = rotary
    meta[f"{arch}.rope.freq_base"] = _rope_theta(config)
    meta[f"{arch}.vocab_size"] = config.vocab_size
    meta.update(gguf_tokenizer_metadata(ckpt.path))
    return meta


def plan_export(family: Family, ckpt: HFCheckpoint, target: GGMLQuantizationType) -> list[ExportTensor]:
    """GGUF tensors in checkpoint order; 1-D tensors (norms, biases) stay F32 as in llama.cpp."""
    groups: dict[str, dict[int, str]] = {}
    templates: dict[str, str] = {}
    order: list[str] = []
    for hf_name in ckpt.names():
        if hf_name.endswith(SKIPPED_SUFFIXES):
            continue
        found = family.hf_to_gguf(hf_name)
        if found is None:
            raise UnsupportedError(f"{ckpt.path}: tensor {hf_name} has no {family.gguf_arch} GGUF counterpart")
        template, idx = found
        xid = idx.pop("xid", None)
        name = template.format(**idx)
        if name not in groups:
            groups[name], templates[name] = {}, template
            order.append(name)
        groups[name][xid if xid is not None else 0] = hf_name
    plan = []
    for name in order:
        sources = tuple(groups[name][i] for i in sorted(groups[name]))
        shape = ckpt.shape(sources[0])
        if templates[name] in family.expert_tensors:
            shape = (len(sources), *shape)
        qtype = target if len(shape) > 1 else Q.F32
        plan.append(ExportTensor(name, templates[name], qtype, shape, sources))
    return plan


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's Q/K row order for NORM RoPE: per head, interleave the two halves of the rows."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensor(family: Family, t: ExportTensor, ckpt: HFCheckpoint, config: Any) -> torch.Tensor:
    """The float32 GGUF-layout tensor for one planned tensor."""
    parts = [ckpt.get(s).to(torch.float32) for s in t.sources]
    w = torch.stack(parts) if t.template in family.expert_tensors else parts[0]
    if family.permute_qk and t.template.startswith(("blk.{bid}.attn_q.", "blk.{bid}.attn_k.")):
        heads = config.num_attention_heads if ".attn_q." in t.template else config.num_key_value_heads
        w = permute_rows(w, heads)
    if family.norm_shift and t.template.endswith("norm.weight"):
        w = w + family.norm_shift
    return w


def gguf_export(
    hf_dir: Path | str,
    out_path: Path | str,
    *,
    out_type: ExportType = "f16",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``out_path`` from the checkpoint in ``hf_dir``; returns a result dict (the ``--json`` output)."""
    from transformers import AutoConfig

    start = time.perf_counter()
    ckpt = HFCheckpoint(hf_dir)
    config = AutoConfig.from_pretrained(str(hf_dir))
    family = family_for_hf(ckpt.architecture)
    target, file_type = EXPORT_TYPES[out_type]
    plan = plan_export(family, ckpt, target)
    meta = gguf_metadata(family, config, ckpt, file_type)
    tensors = [PlannedGGUFTensor(t.name, t.qtype, t.shape) for t in plan]
    # llama.cpp checks the value types of the tokenizer keys (token ids must be UINT32, ...).
    value_types = {k: vt for k, (vt, _) in METADATA_TYPES.items() if k in meta}
    array_types = {k: it for k, (_, it) in METADATA_TYPES.items() if k in meta and it is not None}
    with atomic_file(Path(out_path), overwrite=overwrite) as tmp, open(tmp, "wb") as fp:
        writer = GGUFStreamWriter(fp, meta, tensors, value_types=value_types, array_types=array_types)
        for i, t in enumerate(plan):
            w = gguf_tensor(family, t, ckpt, config)
            writer.write(t.name, w.to(TORCH_OF[t.qtype]))
            for s in t.sources:
                ckpt.release(s)
            if progress:
                progress(i + 1, len(plan), t.name)
        writer.finish()
    return {
        "input": str(hf_dir),
        "output": str(out_path),
        "architecture": family.gguf_arch,
        "type": out_type,
        "tensors": len(plan),
        "bytes": writer.total_size,
        "seconds": round(time.perf_counter() - start, 3),
    }
