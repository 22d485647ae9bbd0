"""Safetensors streaming: lazy, validated reading over memory maps and planned, streaming shard writes.

File layout: u64 little-endian header length N, N bytes of JSON (``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, padded with spaces to a multiple of 8), then the
data section; offsets are relative to its start. Reading never copies a tensor until it is used; writing
computes every header from the planned shapes first, so each tensor can be written the moment it exists
and dropped after.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mtk.errors import InvalidFileError, UsageError, quoted

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 << 20
DEFAULT_SHARD_BYTES = 2 << 30


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lies: its file, dtype, row-major shape and absolute byte range."""

    name: str
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """One ``.safetensors`` file, header validated, tensors served as zero-copy views of a map."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - lives as long as the map
        except OSError as exc:
            raise InvalidFileError(f"{self.path}: cannot open ({exc.strerror})") from None
        self.size = self.path.stat().st_size
        if self.size < 8:
            self._file.close()
            raise InvalidFileError(f"{self.path}: not a safetensors file ({self.size} bytes)")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        self.metadata: dict[str, str] = {}
        self.tensors: dict[str, TensorRef] = {}
        self._parse()

    def _bad(self, why: str) -> InvalidFileError:
        return InvalidFileError(f"{self.path}: corrupt safetensors file ({why})")

    def _parse(self) -> None:
        (n,) = struct.unpack_from("<Q", self._map, 0)
        if n > MAX_HEADER or 8 + n > self.size:
            raise self._bad(f"header length {n} does not fit a file of {self.size} bytes")
        try:
            header = json.loads(bytes(self._map[8 : 8 + n]))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._bad("header is not valid JSON") from None
        except RecursionError:  # json recurses once per level: "[[[[..." deeper than the stack
            raise self._bad("header nests too deeply") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise self._bad("__metadata__ is not a JSON object")
        self.metadata = metadata
        base = 8 + n
        spans = []
        for name, entry in header.items():
            dtype, shape, (begin, end) = self._entry(name, entry)
            count = math.prod(shape)
            need = count * dtype_size(dtype)
            if end - begin != need:
                raise self._bad(f"tensor {quoted(name)} is {end - begin} bytes, its dtype and shape need {need}")
            if base + end > self.size:
                raise self._bad(f"tensor {quoted(name)} ends at byte {base + end}, the file has {self.size}")
            spans.append((begin, end))
            self.tensors[name] = TensorRef(name, self.path, dtype, shape, base + begin, end - begin)
        spans.sort()
        for (_, end_a), (begin_b, _) in zip(spans, spans[1:], strict=False):
            if begin_b < end_a:
                raise self._bad("tensor data ranges overlap")

    def _entry(self, name: str, entry: Any) -> tuple[torch.dtype, tuple[int, ...], tuple[int, int]]:
        """dtype, shape and offsets of a header entry: a known dtype, and only non-negative JSON integers (a
        float such as 1e400, a string or a bool is a lie, not a size)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES:
            raise self._bad(f"bad entry for tensor {quoted(name)}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (_sizes(shape) and _sizes(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]):
            raise self._bad(f"bad entry for tensor {quoted(name)}")
        return DTYPES[entry["dtype"]], tuple(shape), (offsets[0], offsets[1])

    def get(self, name: str) -> torch.Tensor:
        ref = self.tensors[name]
        if ref.nbytes == 0:
            return torch.empty(ref.shape, dtype=ref.dtype)
        raw = torch.frombuffer(self._map, dtype=torch.uint8, count=ref.nbytes, offset=ref.offset)
        return raw.view(ref.dtype).reshape(ref.shape)

    def release(self, name: str) -> None:
        """Let the pages of a tensor that has been used go (streaming keeps RSS at one tensor)."""
        ref = self.tensors[name]
        release_pages(self._map, ref.offset, ref.nbytes)


def _sizes(value: Any) -> bool:
    """Whether a header value is a list of non-negative integers."""
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def release_pages(buf: mmap.mmap, offset: int, nbytes: int) -> None:
    """Drop a range of a private file map from memory; the next access reads it from the file again.

    Only for ranges nobody wrote to: on a copy-on-write map, written pages would lose the writes.
    """
    page = mmap.PAGESIZE
    start = offset // page * page
    end = min(len(buf), -(-(offset + nbytes) // page) * page)
    if end > start and hasattr(buf, "madvise"):
        buf.madvise(mmap.MADV_DONTNEED, start, end - start)


class SafetensorsWriter:
    """Writes a planned set of tensors into one or more shards, one tensor at a time, in plan order.

    ``plan`` lists (name, dtype, shape). Shards are cut before a tensor that would pass
    ``max_shard_bytes``; with one shard the file is ``model.safetensors``, else
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.
    """

    def __init__(
        self,
        out_dir: Path,
        plan: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
        *,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.plan = [(n, d, tuple(s)) for n, d, s in plan]
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = self._cut(max_shard_bytes)
        self._next = 0
        self._shard_no = -1
        self._file: BinaryIO | None = None
        self._left_in_shard = 0

    def _cut(self, limit: int) -> list[list[int]]:
        shards: list[list[int]] = [[]]
        used = 0
        for i, (_, dtype, shape) in enumerate(self.plan):
            size = math.prod(shape) * dtype_size(dtype)
            if shards[-1] and used + size > limit:
                shards.append([])
                used = 0
            shards[-1].append(i)
            used += size
        return shards

    def shard_name(self, k: int) -> str:
        if len(self.shards) == 1:
            return "model.safetensors"
        return f"model-{k + 1:05d}-of-{len(self.shards):05d}.safetensors"

    def _open_shard(self, k: int) -> None:
        header: dict[str, Any] = {"__metadata__": self.metadata}
        offset = 0
        for i in self.shards[k]:
            name, dtype, shape = self.plan[i]
            size = math.prod(shape) * dtype_size(dtype)
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._file = open(self.out_dir / self.shard_name(k), "wb")  # noqa: SIM115 - closed in _close_shard
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._shard_no = k
        self._left_in_shard = len(self.shards[k])

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def pending(self) -> tuple[str, torch.dtype] | None:
        """Name and dtype of the next tensor to write (None when all are written)."""
        if self._next >= len(self.plan):
            return None
        name, dtype, _ = self.plan[self._next]
        return name, dtype

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next planned tensor; its name, dtype and shape must match the plan."""
        if self._next >= len(self.plan):
            raise UsageError(f"tensor {name} was not planned")
        p_name, p_dtype, p_shape = self.plan[self._next]
        if (name, tensor.dtype, tuple(tensor.shape)) != (p_name, p_dtype, p_shape):
            raise ValueError(f"expected {p_name} {p_dtype} {p_shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}")
        if self._left_in_shard == 0:
            self._close_shard()
            self._open_shard(self._shard_no + 1)
        assert self._file is not None
        data = tensor.detach().to("cpu").contiguous()
        if data.numel():
            self._file.write(memoryview(data.view(torch.uint8).numpy()))
        self._left_in_shard -= 1
        self._next += 1

    def close(self) -> None:
        """Finish the last shard and write the index (for several shards)."""
        self._close_shard()
        if self._next != len(self.plan):
            raise ValueError(f"only {self._next} of {len(self.plan)} planned tensors were written")
        if len(self.shards) > 1:
            weight_map = {self.plan[i][0]: self.shard_name(k) for k, idx in enumerate(self.shards) for i in idx}
            total = sum(math.prod(s) * dtype_size(d) for _, d, s in self.plan)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._close_shard()
