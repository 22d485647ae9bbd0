"""A streaming GGUF writer: the whole header is planned from names, types and shapes, then tensor data is
written one tensor at a time, so memory holds one encoded tensor, never the model.

Layout written (GGUF v3): see :mod:`mtk.formats.gguf_reader`. Each tensor's data starts at a multiple of
the alignment (32) from the data section's start, padded with zero bytes, as llama.cpp expects.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from mtk.formats.gguf_reader import _SCALAR_FORMATS, DEFAULT_ALIGNMENT

# Keys whose value type llama.cpp checks strictly and that Python's int/float would not pin down.
KEY_TYPES: dict[str, GGUFValueType] = {
    "general.alignment": GGUFValueType.UINT32,
    "general.file_type": GGUFValueType.UINT32,
    "general.quantization_version": GGUFValueType.UINT32,
    "tokenizer.ggml.token_type": GGUFValueType.INT32,
    "tokenizer.ggml.scores": GGUFValueType.FLOAT32,
    "split.no": GGUFValueType.UINT16,
    "split.count": GGUFValueType.UINT16,
    "split.tensors.count": GGUFValueType.INT32,
}


@dataclass(frozen=True)
class PlannedGGUFTensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # row-major (PyTorch order)

    @property
    def nbytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * type_size


def infer_type(key: str, value: Any) -> GGUFValueType:
    if key in KEY_TYPES and not isinstance(value, list):
        return KEY_TYPES[key]
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        return GGUFValueType.UINT32 if value >= 0 else GGUFValueType.INT32
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple)):
        return GGUFValueType.ARRAY
    raise TypeError(f"cannot store {key}={value!r} in GGUF")


def _item_type(key: str, values: Sequence[Any]) -> GGUFValueType:
    if key in KEY_TYPES:
        return KEY_TYPES[key]
    if not values or isinstance(values[0], str):
        return GGUFValueType.STRING
    if isinstance(values[0], bool):
        return GGUFValueType.BOOL
    if isinstance(values[0], int):
        return GGUFValueType.INT32 if min(values) < 0 or max(values) < 2**31 else GGUFValueType.UINT32
    return GGUFValueType.FLOAT32


def _string(s: str) -> bytes:
    raw = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def encode_value(key: str, value: Any, vtype: GGUFValueType, item_type: GGUFValueType | None = None) -> bytes:
    out = struct.pack("<I", vtype)
    if vtype == GGUFValueType.STRING:
        return out + _string(value)
    if vtype != GGUFValueType.ARRAY:
        return out + struct.pack(_SCALAR_FORMATS[vtype], value)
    item_type = item_type or _item_type(key, value)
    out += struct.pack("<IQ", item_type, len(value))
    if item_type == GGUFValueType.STRING:
        return out + b"".join(_string(v) for v in value)
    fmt = _SCALAR_FORMATS[item_type]
    return out + np.asarray(value, dtype=np.dtype(fmt)).tobytes()


class GGUFStreamWriter:
    """Write a GGUF file: header at construction, then :meth:`write` each planned tensor in plan order."""

    def __init__(
        self,
        fp: BinaryIO,
        metadata: Mapping[str, Any],
        tensors: Sequence[PlannedGGUFTensor],
        *,
        value_types: Mapping[str, GGUFValueType] | None = None,
        array_types: Mapping[str, GGUFValueType] | None = None,
        alignment: int = DEFAULT_ALIGNMENT,
    ) -> None:
        self.fp = fp
        self.tensors = list(tensors)
        self.alignment = alignment
        self._next = 0
        value_types = value_types or {}
        array_types = array_types or {}
        head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(metadata)))
        for key, value in metadata.items():
            vtype = value_types.get(key) or infer_type(key, value)
            head += _string(key) + encode_value(key, value, vtype, array_types.get(key))
        offset = 0
        self.offsets = []
        for t in self.tensors:
            ne = tuple(reversed(t.shape))
            head += _string(t.name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t.qtype, offset)
            self.offsets.append(offset)
            offset += -(-t.nbytes // alignment) * alignment
        head += b"\0" * (-len(head) % alignment)
        self.data_start = len(head)
        self.total_size = self.data_start + offset
        fp.write(head)

    def write(self, name: str, data: torch.Tensor | np.ndarray | bytes) -> None:
        """Write the next planned tensor's encoded bytes (any array whose bytes are the GGUF data)."""
        t = self.tensors[self._next]
        if name != t.name:
            raise ValueError(f"expected tensor {t.name}, got {name}")
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().contiguous().view(torch.uint8).numpy()
        buf = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        if buf.nbytes != t.nbytes:
            raise ValueError(f"tensor {name}: {buf.nbytes} bytes, its type and shape need {t.nbytes}")
        self.fp.write(buf)
        self.fp.write(b"\0" * (-t.nbytes % self.alignment))
        self._next += 1

    def finish(self) -> None:
        if self._next != len(self.tensors):
            raise ValueError(f"only {self._next} of {len(self.tensors)} tensors were written")


def write_gguf(
    path: Path, metadata: Mapping[str, Any], tensors: Mapping[str, tuple[GGMLQuantizationType, Any]]
) -> None:
    """Small helper for whole-in-memory files (tests, fixtures): ``tensors`` maps name -> (type, data);
    uint8 data is taken as the encoded bytes of the type, other arrays as values."""
    plan = []
    for name, (qtype, data) in tensors.items():
        shape = tuple(data.shape)
        if data.dtype == np.uint8 and qtype != GGMLQuantizationType.I8:
            block, type_size = GGML_QUANT_SIZES[qtype]
            shape = (*shape[:-1], shape[-1] // type_size * block)  # data is raw bytes
        plan.append(PlannedGGUFTensor(name, qtype, shape))
    with open(path, "wb") as fp:
        w = GGUFStreamWriter(fp, metadata, plan)
        for name, (_, data) in tensors.items():
            w.write(name, data)
        w.finish()


def split_name(path: Path, index: int, count: int) -> Path:
    """llama.cpp's split naming: ``model.gguf`` -> ``model-00001-of-00003.gguf`` (index from 0)."""
    stem = path.name.removesuffix(".gguf")
    return path.with_name(f"{stem}-{index + 1:05d}-of-{count:05d}.gguf")


def split_tensors(tensors: Sequence[PlannedGGUFTensor], max_bytes: int) -> list[list[PlannedGGUFTensor]]:
    """Cut the tensor list into parts of at most ``max_bytes`` of data each (a larger tensor gets its own)."""
    parts: list[list[PlannedGGUFTensor]] = [[]]
    used = 0
    for t in tensors:
        if parts[-1] and used + t.nbytes > max_bytes:
            parts.append([])
            used = 0
        parts[-1].append(t)
        used += t.nbytes
    return parts


def split_metadata(metadata: Mapping[str, Any], index: int, count: int, n_tensors: int) -> dict[str, Any]:
    """The first part carries the model's metadata, every part the split keys, as llama.cpp's gguf-split."""
    keys = {"split.no": index, "split.count": count, "split.tensors.count": n_tensors}
    return {**metadata, **keys} if index == 0 else keys
