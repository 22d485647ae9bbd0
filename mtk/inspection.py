"""``mtk inspect``: what a checkpoint file or folder holds, without loading it.

The report is a plain dict (the ``--json`` schema): ``path``, ``format`` (gguf | safetensors | hf | onnx),
``architecture``, ``metadata`` (the key hyper-parameters), ``tensor_count``, ``types`` (type name -> count),
``parameters``, ``file_size`` (bytes, all files), ``bits_per_weight`` (tensor bytes * 8 / parameters) and,
when asked, ``tensors``: a list of ``{name, shape, type, bytes}``.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from mtk.errors import InvalidFileError, UnsupportedError
from mtk.formats.checkpoint import HFCheckpoint
from mtk.formats.gguf_reader import open_gguf
from mtk.formats.safetensors_io import DTYPE_NAMES, SafetensorsFile

Report = dict[str, Any]
# GGUF keys worth showing, with "{arch}" standing for general.architecture.
GGUF_KEYS = (
    "general.name",
    "general.file_type",
    "{arch}.context_length",
    "{arch}.embedding_length",
    "{arch}.block_count",
    "{arch}.feed_forward_length",
    "{arch}.attention.head_count",
    "{arch}.attention.head_count_kv",
    "{arch}.expert_count",
    "{arch}.rope.freq_base",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
)
HF_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "torch_dtype",
    "dtype",
    "quantization_config",
)


def inspect(path: Path | str, *, tensors: bool = False) -> Report:
    path = Path(path)
    if not path.exists():
        raise InvalidFileError(f"{path}: no such file or folder")
    if path.is_dir():
        return _inspect_hf(path, tensors)
    head = _head(path)
    if head[:4] == b"GGUF":
        return _inspect_gguf(path, tensors)
    if path.suffix == ".safetensors":
        return _inspect_safetensors(path, tensors)
    if path.suffix == ".onnx":
        return _inspect_onnx(path, tensors)
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        raise UnsupportedError(f"{path}: pickle checkpoints are not inspected; convert it to safetensors first")
    if not head:
        raise InvalidFileError(f"{path}: empty file")
    raise InvalidFileError(f"{path}: not a GGUF, safetensors or ONNX file")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def _summary(
    path: Path,
    fmt: str,
    arch: str,
    metadata: dict[str, Any],
    rows: list[dict[str, Any]],
    size: int,
    with_rows: bool,
) -> Report:
    params = sum(math.prod(r["shape"]) for r in rows)
    tensor_bytes = sum(r["bytes"] for r in rows)
    return {
        "path": str(path),
        "format": fmt,
        "architecture": arch,
        "metadata": metadata,
        "tensor_count": len(rows),
        "types": dict(sorted(Counter(r["type"] for r in rows).items())),
        "parameters": params,
        "file_size": size,
        "bits_per_weight": round(tensor_bytes * 8 / params, 4) if params else 0.0,
        **({"tensors": rows} if with_rows else {}),
    }


def _inspect_gguf(path: Path, with_rows: bool) -> Report:
    model = open_gguf(path)
    try:
        arch = model.architecture
        meta = {}
        for key in GGUF_KEYS:
            k = key.format(arch=arch)
            if k in model.metadata:
                meta[k] = model.metadata[k]
        if len(model.files) > 1:
            meta["split.count"] = len(model.files)
        rows = [
            {"name": t.name, "shape": list(t.shape), "type": t.qtype.name, "bytes": t.nbytes} for t in model.tensors
        ]
        return _summary(path, "gguf", arch, meta, rows, model.size, with_rows)
    finally:
        model.close()


def _safetensors_rows(files: list[SafetensorsFile]) -> list[dict[str, Any]]:
    return [
        {"name": ref.name, "shape": list(ref.shape), "type": DTYPE_NAMES[ref.dtype], "bytes": ref.nbytes}
        for f in files
        for ref in f.tensors.values()
    ]


def _inspect_safetensors(path: Path, with_rows: bool) -> Report:
    f = SafetensorsFile(path)
    config = path.parent / "config.json"
    arch = HFCheckpoint(path.parent).architecture if config.exists() else "unknown"
    return _summary(path, "safetensors", arch, dict(f.metadata), _safetensors_rows([f]), f.size, with_rows)


def _inspect_hf(path: Path, with_rows: bool) -> Report:
    ckpt = HFCheckpoint(path)
    meta = {k: ckpt.config[k] for k in HF_KEYS if k in ckpt.config}
    size = sum(f.size for f in ckpt.files)
    return _summary(path, "hf", ckpt.architecture, meta, _safetensors_rows(ckpt.files), size, with_rows)


def _inspect_onnx(path: Path, with_rows: bool) -> Report:
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:  # pragma: no cover - onnx is an optional extra
        from mtk.errors import EnvironmentProblem

        raise EnvironmentProblem("inspecting ONNX files needs the onnx package: pip install 'mtk[onnx]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidFileError(f"{path}: not a valid ONNX file ({exc})") from None
    rows = []
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        rows.append(
            {
                "name": init.name,
                "shape": list(init.dims),
                "type": onnx.TensorProto.DataType.Name(init.data_type),
                "bytes": math.prod(list(init.dims)) * dtype.itemsize,
            }
        )
    meta = {
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": model.producer_name,
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "nodes": len(model.graph.node),
    }
    size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(f"{path.name}.data"))
    return _summary(path, "onnx", model.graph.name or "onnx", meta, rows, size, with_rows)
