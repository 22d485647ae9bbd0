"""The reference model's log-probabilities on the scored positions, computed once and kept on disk.

A cache entry is a folder ``<cache root>/bench-ref/<key>/`` holding

- ``logprobs.npy``: float16 ``(windows, scored, vocab)``, the reference's log-softmax on the scored rows of
  each window (see mtk.bench.scoring for which rows); ``windows * scored * vocab * 2`` bytes, 200 MB for 8
  windows of 512 tokens with SmolLM2's 49,152-token vocabulary;
- ``top1.npy``: int32 ``(windows, scored)``, the reference's arg-max from its float32 logits;
- ``meta.json``: what was computed and how (reference path, device, windows, ppl).

The key hashes the format version, the reference folder's files (name, size and modification time of
each; a rewritten model gets a new key), the window token ids and the device. The root is ``$MTK_CACHE_DIR``,
else ``$XDG_CACHE_HOME/mtk``, else ``~/.cache/mtk``. Entries are written atomically (a folder renamed when
complete) and read one window at a time with plain file reads, so that a child's peak RSS does not grow
with the number of windows.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mtk.errors import InvalidFileError, UsageError

VERSION = "mtk-bench-ref/1"
LOGPROBS, TOP1, META = "logprobs.npy", "top1.npy", "meta.json"
# A cache entry larger than this is refused: fewer windows or a shorter context fit.
MAX_BYTES = 8 * 1024**3


def cache_root() -> Path:
    if os.environ.get("MTK_CACHE_DIR"):
        return Path(os.environ["MTK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mtk"


def cache_key(reference: Path, windows: np.ndarray, device: str) -> str:
    """Hex key of (format, reference files, window ids, device); see the module docstring."""
    h = hashlib.sha256(VERSION.encode())
    for f in sorted(p for p in reference.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(reference)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(np.ascontiguousarray(windows, dtype=np.int64).tobytes())
    h.update(device.encode())
    return h.hexdigest()[:32]


def entry_path(key: str) -> Path:
    return cache_root() / "bench-ref" / key


def check_size(windows: int, scored: int, vocab: int) -> None:
    size = windows * scored * vocab * 2
    if size > MAX_BYTES:
        raise UsageError(
            f"the reference cache would take {size / 1e9:.1f} GB ({windows} windows x {scored} positions x "
            f"{vocab} vocab, float16); use fewer --windows or a shorter --ctx"
        )


def read_meta(entry: Path) -> dict[str, Any] | None:
    """The entry's metadata, or None when there is no complete entry."""
    path = entry / META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class LogprobWriter:
    """Writes ``logprobs.npy`` window by window (the reference run), then ``top1.npy`` and ``meta.json``."""

    def __init__(self, folder: Path, windows: int, scored: int, vocab: int):
        check_size(windows, scored, vocab)
        self.folder = folder
        self.shape = (windows, scored, vocab)
        self._file = open(folder / LOGPROBS, "wb")  # noqa: SIM115 - closed in finish()
        header = {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._file, header)
        self.top1 = np.zeros(self.shape[:2], dtype=np.int32)

    def write(self, index: int, logp: np.ndarray, top1: np.ndarray) -> None:
        if logp.shape != self.shape[1:] or logp.dtype != np.float16:
            raise ValueError(f"window {index}: expected float16 {self.shape[1:]}, got {logp.dtype} {logp.shape}")
        self._file.write(np.ascontiguousarray(logp).tobytes())
        self.top1[index] = top1

    def finish(self, meta: dict[str, Any]) -> None:
        self._file.close()
        np.save(self.folder / TOP1, self.top1)
        (self.folder / META).write_text(json.dumps({"format": VERSION, **meta}, indent=2), encoding="utf-8")


class LogprobReader:
    """Reads one window's ``(scored, vocab)`` float16 log-probabilities and ``(scored,)`` arg-max at a time."""

    def __init__(self, folder: Path):
        self._file: BinaryIO = open(folder / LOGPROBS, "rb")  # noqa: SIM115 - closed in close()
        try:
            version = np.lib.format.read_magic(self._file)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(self._file)
        except ValueError as exc:
            raise InvalidFileError(f"{folder / LOGPROBS}: not a reference cache ({exc}); delete the folder") from exc
        if dtype != np.float16 or len(shape) != 3:
            raise InvalidFileError(f"{folder / LOGPROBS}: unexpected {dtype} {shape}; delete the folder")
        self.shape = shape
        self._offset = self._file.tell()
        self.top1 = np.load(folder / TOP1)

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        _, scored, vocab = self.shape
        self._file.seek(self._offset + index * scored * vocab * 2)
        data = np.frombuffer(self._file.read(scored * vocab * 2), dtype=np.float16)
        return data.reshape(scored, vocab), self.top1[index]

    def close(self) -> None:
        self._file.close()
