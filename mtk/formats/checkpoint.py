"""Hugging Face checkpoint folders opened lazily: config, tokenizer files, memory-mapped safetensors shards.

Tensors are handed out one at a time as views of the maps, so iterating a model costs the pages touched,
not the model. Pickle checkpoints (``*.bin``, ``*.pt``, ``*.pth``) can run arbitrary code when loaded;
they are refused unless the caller passes ``allow_pickle=True``, and then loaded with
``torch.load(weights_only=True, mmap=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mtk.errors import InvalidFileError, UnsupportedError
from mtk.formats.safetensors_io import SafetensorsFile

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


class HFCheckpoint:
    """A folder with ``config.json`` and weights (safetensors, sharded with an index or not)."""

    def __init__(self, path: Path | str, *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InvalidFileError(f"{self.path}: not a folder")
        self.config = _read_json(self.path / "config.json") if (self.path / "config.json").exists() else {}
        self._files: dict[Path, SafetensorsFile] = {}
        self._where: dict[str, Path] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        shard_paths = self._shard_paths()
        if shard_paths:
            for p in shard_paths:
                f = SafetensorsFile(p)
                self._files[p] = f
                for name in f.tensors:
                    self._where[name] = p
            self._check_index()
        else:
            self._load_pickles(allow_pickle)

    def _shard_paths(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            data = _read_json(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict):
                raise InvalidFileError(f"{index}: no weight_map")
            names = sorted({_shard_name(index, shard) for shard in weight_map.values()})
            missing = [n for n in names if not (self.path / n).exists()]
            if missing:
                raise InvalidFileError(f"{index}: shard(s) missing: {', '.join(missing)}")
            return [self.path / n for n in names]
        return sorted(self.path.glob("*.safetensors"))

    def _check_index(self) -> None:
        index = self.path / "model.safetensors.index.json"
        if not index.exists():
            return
        for name, shard in _read_json(index)["weight_map"].items():
            if self._where.get(name) != self.path / shard:
                raise InvalidFileError(f"{index}: tensor {name} is not in {shard}")

    def _load_pickles(self, allow_pickle: bool) -> None:
        pickles = refuse_pickles(self.path, allow_pickle=allow_pickle)
        if not pickles:
            raise InvalidFileError(f"{self.path}: no weights found (no *.safetensors)")
        for p in pickles:
            try:
                state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many kinds for bad or unsafe pickles
                raise InvalidFileError(f"{p}: refused by torch.load(weights_only=True): {_why(exc)}") from None
            if not isinstance(state, dict):
                raise InvalidFileError(f"{p}: not a state dict")
            self._pickled.update(state)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else str(self.config.get("model_type", "unknown"))

    @property
    def files(self) -> list[SafetensorsFile]:
        return list(self._files.values())

    def names(self) -> list[str]:
        return list(self._where) if self._files else list(self._pickled)

    def __contains__(self, name: str) -> bool:
        return name in self._where or name in self._pickled

    def get(self, name: str) -> torch.Tensor:
        if name in self._pickled:
            return self._pickled[name]
        try:
            return self._files[self._where[name]].get(name)
        except KeyError:
            raise InvalidFileError(f"{self.path}: checkpoint has no tensor {name}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._pickled:
            return tuple(self._pickled[name].shape)
        return self._files[self._where[name]].tensors[name].shape

    def dtype(self, name: str) -> torch.dtype:
        if name in self._pickled:
            return self._pickled[name].dtype
        return self._files[self._where[name]].tensors[name].dtype

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Each tensor in turn, as a read-only view; its pages are released once the consumer moves on,
        so peak memory is one tensor, not the model. Do not write to the views."""
        for name in self.names():
            yield name, self.get(name)
            self.release(name)

    def release(self, name: str) -> None:
        if name in self._where:
            self._files[self._where[name]].release(name)


def refuse_pickles(folder: Path, *, allow_pickle: bool = False) -> list[Path]:
    """The pickle weights of a checkpoint folder that has no safetensors; UnsupportedError when there are some
    and ``allow_pickle`` is false. For every reader of HF folders, those that load through transformers too,
    which would otherwise unpickle them unasked."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return []
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise UnsupportedError(
            f"{folder}: weights are pickle files ({pickles[0].name}), which can run code when loaded; convert "
            "them to safetensors first (the Python API reads them with HFCheckpoint(path, allow_pickle=True), "
            "through torch.load(weights_only=True))"
        )
    return pickles


def _why(exc: Exception) -> str:
    """torch's refusal in one short line: its message is a page of advice around one WeightsUnpickler line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    reason = reason.removeprefix("WeightsUnpickler error: ").split(". Please use")[0]  # not how to allow it
    return reason[:300] or type(exc).__name__


def _shard_name(index: Path, shard: object) -> str:
    """A shard named by the index, refused unless it is a relative path inside the checkpoint folder: an index
    is data, and ``../`` or an absolute path in it would make mtk read (and convert) a file from elsewhere.
    Symbolic links are followed as usual (the Hugging Face cache links every file to its blob store)."""
    if not isinstance(shard, str) or not shard:
        raise InvalidFileError(f"{index}: a shard name is not a file name: {shard!r:.80}")
    path = Path(shard)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidFileError(f"{index}: shard name {shard!r:.200} leaves the checkpoint folder")
    return shard


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidFileError(f"{path}: not valid JSON ({exc})") from None
