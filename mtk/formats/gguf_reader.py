"""A fast, validating GGUF reader over a memory map.

gguf-py's ``GGUFReader`` builds one numpy view per metadata item and takes about five seconds on a
49k-token vocabulary; this reader parses the header with ``struct`` in a few tens of milliseconds, checks
every length and offset against the file size (so a corrupt file is an ``InvalidFileError``, never an
``IndexError`` deep inside), and hands out tensor bytes as zero-copy views of the map.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 metadata count,
metadata items (string key, u32 value type, value), tensor infos (string name, u32 n_dims, u64 ne[n_dims]
fastest-varying first, u32 ggml type, u64 offset into the data section), padding to ``general.alignment``
(default 32), then the data section. Strings are a u64 byte length followed by UTF-8 bytes.

Split files (``NAME-00001-of-0000N.gguf``, written by llama.cpp's ``gguf-split``) are opened together by
:func:`open_gguf`: metadata comes from the first file, tensors from all of them.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from mtk.errors import InvalidFileError, quoted

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Sanity bounds: a header claiming more than this is corrupt, not large.
MAX_COUNT = 1 << 24
MAX_DIMS = 4
# Arrays of arrays are legal GGUF but nothing writes more than one level; a deeper nest is an attack on the stack.
MAX_ARRAY_DEPTH = 4

# Scalar value types: struct format of one item.
_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
# Numeric arrays are read in one go with numpy.
_NUMPY_DTYPES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class ValueKind:
    """What a metadata key must hold: one of ``scalars``, or an array of ``items`` (not empty where a scalar
    would also do: a per-layer count)."""

    what: str  # for the message: "an unsigned integer", ...
    scalars: frozenset[GGUFValueType]
    items: frozenset[GGUFValueType] = frozenset()
    non_negative: bool = False


_INT_TYPES = frozenset(t for t in _SCALAR_FORMATS if t.name.startswith(("UINT", "INT")))
_FLOAT_TYPES = frozenset({GGUFValueType.FLOAT32, GGUFValueType.FLOAT64})
_STR = frozenset({GGUFValueType.STRING})
_FLOAT32_MAX = float(np.finfo(np.float32).max)
UINT = ValueKind("an unsigned integer", _INT_TYPES, non_negative=True)
UINTS = ValueKind("an unsigned integer or an array of them", _INT_TYPES, _INT_TYPES, non_negative=True)
INT = ValueKind("an integer", _INT_TYPES)
# Floats written as integers (a base of 10000) are taken as they are; transformers reads them as floats too.
FLOAT = ValueKind("a number", _INT_TYPES | _FLOAT_TYPES)
BOOL = ValueKind("a boolean", _INT_TYPES | {GGUFValueType.BOOL})
STR = ValueKind("a string", _STR)
STRS = ValueKind("an array of strings", frozenset(), _STR)
INTS = ValueKind("an array of integers", frozenset(), _INT_TYPES)
FLOATS = ValueKind("an array of numbers", frozenset(), _INT_TYPES | _FLOAT_TYPES)

# Every key mtk reads, and the kind of its value: checked once, when the file is read, so that the converters
# index values without a type check each (a corrupt file is an InvalidFileError, not a TypeError inside them).
# Other keys are kept as they are (gguf-export copies them). Keys of the architecture are in ARCH_KEYS.
KEYS: dict[str, ValueKind] = {
    "general.architecture": STR,
    "general.alignment": UINT,
    "general.file_type": UINT,
    "general.quantization_version": UINT,
    "general.type": STR,
    "general.name": STR,
    "split.count": UINT,
    "split.no": UINT,
    "split.tensors.count": UINT,
    "tokenizer.ggml.model": STR,
    "tokenizer.ggml.pre": STR,
    "tokenizer.ggml.tokens": STRS,
    "tokenizer.ggml.merges": STRS,
    "tokenizer.ggml.scores": FLOATS,
    "tokenizer.ggml.token_type": INTS,
    "tokenizer.ggml.bos_token_id": INT,
    "tokenizer.ggml.eos_token_id": INT,
    "tokenizer.ggml.unknown_token_id": INT,
    "tokenizer.ggml.padding_token_id": INT,
    "tokenizer.ggml.seperator_token_id": INT,
    "tokenizer.ggml.mask_token_id": INT,
    "tokenizer.ggml.normalizer.lowercase": BOOL,
    "tokenizer.ggml.normalizer.strip_accents": BOOL,
    "tokenizer.ggml.add_bos_token": BOOL,
    "tokenizer.ggml.add_eos_token": BOOL,
    "tokenizer.ggml.add_space_prefix": BOOL,
    "tokenizer.chat_template": STR,
    "tokenizer.chat_templates": STRS,
    "imatrix.chunk_count": UINT,
    "imatrix.chunk_size": UINT,
    "imatrix.datasets": STRS,
}
# Keys "{arch}.<suffix>" of the file's own architecture.
ARCH_KEYS: dict[str, ValueKind] = {
    "context_length": UINT,
    "embedding_length": UINT,
    "block_count": UINT,
    "feed_forward_length": UINTS,
    "attention.head_count": UINTS,
    "attention.head_count_kv": UINTS,
    "attention.key_length": UINT,
    "attention.value_length": UINT,
    "attention.layer_norm_rms_epsilon": FLOAT,
    "attention.sliding_window": UINT,
    "attn_logit_softcapping": FLOAT,
    "final_logit_softcapping": FLOAT,
    "rope.freq_base": FLOAT,
    "rope.freq_base_swa": FLOAT,
    "rope.dimension_count": UINT,
    "rope.scaling.type": STR,
    "rope.scaling.factor": FLOAT,
    "rope.scaling.original_context_length": UINT,
    "rope.scaling.yarn_log_multiplier": FLOAT,
    "rope.scaling.yarn_beta_fast": FLOAT,
    "rope.scaling.yarn_beta_slow": FLOAT,
    "attention.temperature_scale": FLOAT,
    "vocab_size": UINT,
    "expert_count": UINT,
    "expert_used_count": UINT,
    "expert_feed_forward_length": UINT,
    "expert_shared_feed_forward_length": UINT,
}


def check_metadata(
    path: Path,
    metadata: dict[str, Any],
    value_types: dict[str, GGUFValueType],
    array_types: dict[str, GGUFValueType],
) -> None:
    """Raise InvalidFileError for a key of :data:`KEYS` or :data:`ARCH_KEYS` that holds the wrong kind of value
    (a string where a count belongs, a negative count, a NaN, an empty array)."""
    arch = metadata.get("general.architecture")
    prefix = f"{arch}." if isinstance(arch, str) else None
    for key, value in metadata.items():
        kind = KEYS.get(key)
        if kind is None and prefix and key.startswith(prefix):
            kind = ARCH_KEYS.get(key.removeprefix(prefix))
        if kind is None and key.startswith("tokenizer.chat_template."):
            kind = STR
        if kind is not None and not _fits(kind, value, value_types[key], array_types.get(key)):
            shown = f"{type(value).__name__} {quoted(value, 30)}" if not isinstance(value, list) else "that array"
            raise InvalidFileError(f"{path}: corrupt GGUF ({quoted(key)} must be {kind.what}, not {shown})")


def _fits(kind: ValueKind, value: Any, vtype: GGUFValueType, item_type: GGUFValueType | None) -> bool:
    if vtype == GGUFValueType.ARRAY:
        if item_type not in kind.items or (not value and kind.scalars):
            return False
        values = value
    elif vtype in kind.scalars:
        values = [value]
    else:
        return False
    if kind.non_negative and any(v < 0 for v in values):
        return False
    # NaN, infinities and float64s past float32's range are no epsilon or base (configs hold float32s). Token
    # scores are left alone: an infinite score marks a piece never merged, not a corrupt file.
    return kind is not FLOAT or all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in values)


SPLIT_PATTERN = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor: ``shape`` is row-major (PyTorch order, the reverse of GGUF's ne); ``offset`` is absolute."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    file_index: int = 0

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class _Cursor:
    """Reads little-endian values from a buffer, raising InvalidFileError past its end."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise InvalidFileError(f"{self.path}: truncated or corrupt GGUF ({what} runs past the end of the file)")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # Some vocabularies hold invalid UTF-8 byte tokens; keep them lossless as surrogate escapes.
            return raw.decode("utf-8", errors="surrogateescape")

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.unpack("<I", what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise InvalidFileError(f"{self.path}: corrupt GGUF (unknown value type {raw} in {what})") from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise InvalidFileError(
                    f"{self.path}: corrupt GGUF (arrays in {what} nested past {MAX_ARRAY_DEPTH} levels)"
                )
            item_type = self.value_type(what)
            count = self.unpack("<Q", what)
            if count > self.size:
                raise InvalidFileError(f"{self.path}: corrupt GGUF (array {what} claims {count} items)")
            if item_type in _NUMPY_DTYPES:
                dtype = np.dtype(_NUMPY_DTYPES[item_type])
                self.need(count * dtype.itemsize, what)
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos += count * dtype.itemsize
                return arr.tolist()
            return [self.value(item_type, what, depth + 1) for _ in range(count)]
        return self.unpack(_SCALAR_FORMATS[vtype], what)


class GGUFFile:
    """One GGUF file, memory-mapped. ``metadata`` maps keys to plain Python values (lists for arrays)."""

    def __init__(self, path: Path | str, file_index: int = 0) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - lives as long as the map
        except OSError as exc:
            raise InvalidFileError(f"{self.path}: cannot open ({exc.strerror})") from None
        size = self.path.stat().st_size
        if size < 24:
            self._file.close()
            raise InvalidFileError(f"{self.path}: not a GGUF file ({size} bytes, too short for a header)")
        # ACCESS_COPY gives writable (copy-on-write) pages, so torch can wrap them without a warning;
        # nothing is ever written back to the file.
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, GGUFValueType] = {}
        self.array_types: dict[str, GGUFValueType] = {}
        self.tensors: list[GGUFTensorInfo] = []
        self._parse(file_index)

    def _parse(self, file_index: int) -> None:
        cur = _Cursor(self._map, self.path)
        if self._map[:4] != GGUF_MAGIC:
            raise InvalidFileError(f"{self.path}: not a GGUF file (bad magic {bytes(self._map[:4])!r})")
        cur.pos = 4
        self.version = cur.unpack("<I", "version")
        if self.version not in (2, 3):
            raise InvalidFileError(f"{self.path}: unsupported GGUF version {self.version} (mtk reads 2 and 3)")
        n_tensors = cur.unpack("<Q", "tensor count")
        n_kv = cur.unpack("<Q", "metadata count")
        if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
            raise InvalidFileError(f"{self.path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
        for _ in range(n_kv):
            key = cur.string("metadata key")
            shown = quoted(key)
            vtype = cur.value_type(shown)
            start = cur.pos
            self.metadata[key] = cur.value(vtype, shown)
            if vtype == GGUFValueType.ARRAY:
                # Keep the item type (validated by value()), so that a copy of this file keeps it too.
                self.array_types[key] = GGUFValueType(struct.unpack_from("<I", self._map, start)[0])
            self.value_types[key] = vtype
        check_metadata(self.path, self.metadata, self.value_types, self.array_types)
        infos = [self._tensor_info(cur) for _ in range(n_tensors)]
        self.alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise InvalidFileError(f"{self.path}: corrupt GGUF (alignment {self.alignment})")
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        size = len(self._map)
        for name, qtype, shape, rel, nbytes in infos:
            start = self.data_offset + rel
            if start + nbytes > size:
                raise InvalidFileError(
                    f"{self.path}: truncated or corrupt GGUF (tensor {quoted(name)} ends at byte {start + nbytes}, "
                    f"the file has {size})"
                )
            self.tensors.append(GGUFTensorInfo(name, qtype, shape, start, nbytes, file_index))

    def _tensor_info(self, cur: _Cursor) -> tuple[str, GGMLQuantizationType, tuple[int, ...], int, int]:
        name = cur.string("tensor name")
        shown = quoted(name)
        n_dims = cur.unpack("<I", shown)
        if not 1 <= n_dims <= MAX_DIMS:
            raise InvalidFileError(f"{self.path}: corrupt GGUF (tensor {shown} has {n_dims} dimensions)")
        ne = [cur.unpack("<Q", shown) for _ in range(n_dims)]
        raw_type = cur.unpack("<I", shown)
        rel = cur.unpack("<Q", shown)
        try:
            qtype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise InvalidFileError(f"{self.path}: tensor {shown} has unknown ggml type {raw_type}") from None
        block, type_size = GGML_QUANT_SIZES[qtype]
        if ne[0] % block:
            raise InvalidFileError(
                f"{self.path}: corrupt GGUF (tensor {shown} row of {ne[0]} is not a multiple of {block})"
            )
        n = math.prod(ne)
        if n > 1 << 48:
            raise InvalidFileError(f"{self.path}: corrupt GGUF (tensor {shown} claims {n} elements)")
        if n == 0:
            # llama.cpp writes no empty tensors, and a view of zero bytes cannot be taken of the map.
            raise InvalidFileError(f"{self.path}: corrupt GGUF (tensor {shown} has a zero dimension: {ne})")
        return name, qtype, tuple(reversed(ne)), rel, n // block * type_size

    def tensor_bytes(self, info: GGUFTensorInfo) -> torch.Tensor:
        """The raw bytes of one tensor as a zero-copy uint8 tensor over the map."""
        return torch.frombuffer(self._map, dtype=torch.uint8, count=info.nbytes, offset=info.offset)

    def release(self, info: GGUFTensorInfo) -> None:
        """Let the pages of a tensor that has been used go (see safetensors_io.release_pages)."""
        from mtk.formats.safetensors_io import release_pages

        release_pages(self._map, info.offset, info.nbytes)

    @property
    def size(self) -> int:
        return len(self._map)

    def close(self) -> None:
        # Views handed out keep the map alive; closing then would raise BufferError, so leave it to GC.
        with contextlib.suppress(BufferError):
            self._map.close()
        self._file.close()


class GGUFModel:
    """A GGUF model: one file, or all parts of a split one, seen as one set of metadata and tensors."""

    def __init__(self, files: list[GGUFFile]) -> None:
        self.files = files
        self.metadata = files[0].metadata
        self.value_types = files[0].value_types
        self.array_types = files[0].array_types
        self.tensors = [t for f in files for t in f.tensors]
        self.by_name = {t.name: t for t in self.tensors}
        if len(self.by_name) != len(self.tensors):
            twice = next(name for name, n in Counter(t.name for t in self.tensors).items() if n > 1)
            raise InvalidFileError(f"{files[0].path}: corrupt GGUF (duplicate tensor names: {quoted(twice)})")

    @property
    def path(self) -> Path:
        return self.files[0].path

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise InvalidFileError(f"{self.path}: GGUF has no general.architecture")
        return arch

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def tensor_bytes(self, info: GGUFTensorInfo) -> torch.Tensor:
        return self.files[info.file_index].tensor_bytes(info)

    def release(self, info: GGUFTensorInfo) -> None:
        self.files[info.file_index].release(info)

    def close(self) -> None:
        for f in self.files:
            f.close()


def split_paths(path: Path) -> list[Path]:
    """All parts of a split GGUF given any one of them, or ``[path]`` for a single file."""
    m = SPLIT_PATTERN.match(path.name)
    if not m:
        return [path]
    count = int(m["count"])
    parts = [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise InvalidFileError(f"{path}: split GGUF is missing part(s) {', '.join(missing)}")
    return parts


def open_gguf(path: Path | str) -> GGUFModel:
    path = Path(path)
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    files = [GGUFFile(p, i) for i, p in enumerate(split_paths(path))]
    expected = files[0].metadata.get("split.tensors.count")
    model = GGUFModel(files)
    if expected is not None and expected != len(model.tensors):
        raise InvalidFileError(f"{path}: split GGUF holds {len(model.tensors)} tensors, its header says {expected}")
    return model
