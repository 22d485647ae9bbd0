"""Hugging Face checkpoint folders opened lazily: config, tokenizer files, memory-mapped safetensors shards.

Tensors are handed out one at a time as views of the maps, so iterating a model costs the pages touched,
not the model. Pickle checkpoints (``*.bin``, ``*.pt``, ``*.pth``) can run arbitrary code when loaded;
they are refused unless the caller passes ``allow_pickle=True``, and then loaded with
``torch.load(weights_only=True, mmap=True)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mtk.errors import InvalidFileError, UnsupportedError, quoted
from mtk.formats.safetensors_io import SafetensorsFile

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
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
        if not isinstance(self.config, dict):
            raise InvalidFileError(f"{self.path / 'config.json'}: not a JSON object")
        self._files: dict[Path, SafetensorsFile] = {}
        self._where: dict[str, Path] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        self._stored: dict[str, str] = {}  # a text tower view's tensor name -> the name in the files
        self._tower_of: str | None = None  # the multimodal architecture a text tower view was taken from
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
                raise InvalidFileError(f"{index}: tensor {quoted(name)} is not in {shard}")

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
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise InvalidFileError(f"{self.path / 'config.json'}: architectures is not a list of names")
        return archs[0] if archs else str(self.config.get("model_type", "unknown"))

    @property
    def source_architecture(self) -> str:
        """The folder's own architecture (a text tower view's multimodal one)."""
        return self._tower_of or self.architecture

    def text_tower(self, rename: Callable[[str], str | None], architecture: str) -> list[str]:
        """Make this checkpoint a view of a multimodal checkpoint's text tower, an ``architecture`` causal LM.

        ``rename`` gives a tensor's name in the causal LM, or None for the other towers' tensors (vision),
        which the view leaves out; they are returned. The config becomes config.json's ``text_config``.
        """
        text = self.config.get("text_config")
        if not isinstance(text, dict):
            raise InvalidFileError(f"{self.path / 'config.json'}: {self.architecture} without a text_config object")
        left: list[str] = []
        kept: dict[str, Path] = {}
        pickled: dict[str, torch.Tensor] = {}
        for name in self.names():
            new = rename(name)
            if new is None:
                left.append(name)
            elif name in self._pickled:
                pickled[new] = self._pickled[name]
            else:
                kept[new], self._stored[new] = self._where[name], name
        self._where, self._pickled = kept, pickled
        self._tower_of = self.architecture
        self.config = {**text, "architectures": [architecture]}
        return left

    def transformers_config(self) -> Any:
        """The folder's transformers config, checked against the tensors it describes.

        transformers validates the values (types, hidden_size divisible by the heads); the rest is what a
        config can lie about that every family shares: the embedding's shape and the number of layers.
        Raises InvalidFileError for a config that does not load or does not fit the checkpoint.
        """
        from transformers import AutoConfig

        where = self.path / "config.json"
        try:
            config = AutoConfig.from_pretrained(str(self.path))
        except ImportError:
            raise
        except Exception as exc:  # transformers raises ValueError, TypeError and its own validation errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidFileError(f"{where}: transformers cannot load it ({quoted(first, 120)})") from None
        if self._tower_of is not None:
            config = config.get_text_config()
            config.architectures = list(self.config["architectures"])
        # A heterogeneous config (Gemma 4: head sizes per layer type) refuses to give the global value of a
        # per-layer field unless asked; mtk reads the global value knowingly, the others from per_layer_config.
        if isinstance(getattr(type(config), "allow_global_per_layer_attribute_access", None), property):
            config.allow_global_per_layer_attribute_access = True
        layers, vocab, width = (getattr(config, k, None) for k in ("num_hidden_layers", "vocab_size", "hidden_size"))
        embed = next((n for n in self.names() if n.endswith("embed_tokens.weight")), None)
        if embed is not None and None not in (vocab, width) and self.shape(embed) != (vocab, width):
            raise InvalidFileError(
                f"{where}: vocab_size {vocab} and hidden_size {width} do not fit {embed} {tuple(self.shape(embed))}"
            )
        _check_config_values(where, config)
        self._check_attention(where, config)
        found = {int(m[1]) for n in self.names() if (m := _LAYER.search(n))}
        # Distinct non-negative indices are 0..layers-1 exactly when there are `layers` of them, the last layers-1.
        if layers is not None and found and (len(found) != layers or max(found) != layers - 1):
            raise InvalidFileError(f"{where}: num_hidden_layers is {layers}, the checkpoint holds {len(found)} layers")
        return config

    def _check_attention(self, where: Path, config: Any) -> None:
        """Q/K/V projections of the config's heads and width (the converters reshape them per head)."""
        heads, width = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
        if heads is None or width is None:
            return
        for name in self.names():
            proj = name.rsplit(".", 2)[-2] if name.endswith(".weight") and ".self_attn." in name else None
            if proj not in ("q_proj", "k_proj", "v_proj"):
                continue
            layer = _layer_config(config, name)
            head_dim = getattr(layer, "head_dim", None) or width // heads
            kv = getattr(layer, "num_key_value_heads", None) or heads
            rows = {"q_proj": heads * head_dim, "k_proj": kv * head_dim, "v_proj": kv * head_dim}
            if tuple(self.shape(name)) != (rows[proj], width):
                raise InvalidFileError(
                    f"{where}: {heads} heads ({kv} KV) of {head_dim} and hidden_size {width} do not fit "
                    f"{quoted(name)} {tuple(self.shape(name))}"
                )

    def check_shapes(self, expected: dict[str, tuple[int, ...]]) -> None:
        """Raise InvalidFileError for a tensor whose shape is not the one the model built from the config has."""
        for name, shape in expected.items():
            if name in self and tuple(self.shape(name)) != tuple(shape):
                raise InvalidFileError(
                    f"{self.path}: tensor {quoted(name)} has shape {tuple(self.shape(name))}, config.json implies "
                    f"{tuple(shape)}"
                )

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
            return self._files[self._where[name]].get(self._stored.get(name, name))
        except KeyError:
            raise InvalidFileError(f"{self.path}: checkpoint has no tensor {quoted(name)}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._pickled:
            return tuple(self._pickled[name].shape)
        return self._files[self._where[name]].tensors[self._stored.get(name, name)].shape

    def dtype(self, name: str) -> torch.dtype:
        if name in self._pickled:
            return self._pickled[name].dtype
        return self._files[self._where[name]].tensors[self._stored.get(name, name)].dtype

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Each tensor in turn, as a read-only view; its pages are released once the consumer moves on,
        so peak memory is one tensor, not the model. Do not write to the views."""
        for name in self.names():
            yield name, self.get(name)
            self.release(name)

    def release(self, name: str) -> None:
        if name in self._where:
            self._files[self._where[name]].release(self._stored.get(name, name))


# Config fields the converters read, and what each must be when set: transformers checks few of them (a string
# epsilon or a zero head count loads), and GGUF stores them as uint32 and float32.
POSITIVE_INTS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "vocab_size", "max_position_embeddings", "head_dim",
)  # fmt: skip
# 0 means "none" here (Qwen2-MoE's sliding_window is 0).
COUNTS = (
    "sliding_window", "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size",
)  # fmt: skip
NUMBERS = (
    "rms_norm_eps", "rope_theta", "partial_rotary_factor", "attn_logit_softcapping", "final_logit_softcapping",
    "query_pre_attn_scalar",
)  # fmt: skip
ROPE_NUMBERS = ("rope_theta", "factor", "low_freq_factor", "high_freq_factor")
_UINT32_MAX = (1 << 32) - 1
_FLOAT32_MAX = 3.4028234663852886e38


def _layer_config(config: Any, name: str) -> Any:
    """The config of the layer a tensor belongs to: transformers' per-layer view where layers differ (Gemma 4),
    else the config itself."""
    m = _LAYER.search(name)
    views = getattr(config, "per_layer_config", None) if getattr(config, "is_heterogeneous", False) else None
    return views[int(m[1])] if m and views is not None else config


def _check_config_values(where: Path, config: Any) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def bad(key: str, value: Any, what: str) -> InvalidFileError:
        return InvalidFileError(f"{where}: {key} must be {what}, not {quoted(value, 30)}")

    for keys, least in ((POSITIVE_INTS, 1), (COUNTS, 0)):
        for key in keys:
            value = getattr(config, key, None)
            if value is not None and not (type(value) is int and least <= value <= _UINT32_MAX):
                raise bad(key, value, "a positive integer" if least else "a count")
    for key in NUMBERS:
        value = getattr(config, key, None)
        if value is not None and not _finite(value):
            raise bad(key, value, "a number")
    rope = getattr(config, "rope_parameters", None) or {}
    per_type = [rope, *(v for v in rope.values() if isinstance(v, dict))] if isinstance(rope, dict) else [rope]
    for params in per_type:
        if not isinstance(params, dict):
            raise bad("rope_parameters", params, "a dict")
        kind = params.get("rope_type", "default")
        if not isinstance(kind, str) or (kind != "default" and kind not in ROPE_INIT_FUNCTIONS):
            raise bad("rope_type", kind, "a RoPE type transformers knows")
        for key in ROPE_NUMBERS:
            if key in params and not (_finite(params[key]) and params[key] > 0):
                raise bad(f"rope_parameters.{key}", params[key], "a positive number")
        old = params.get("original_max_position_embeddings")
        if old is not None and not (type(old) is int and 1 <= old <= _UINT32_MAX):
            raise bad("original_max_position_embeddings", old, "a positive integer")


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and abs(value) <= _FLOAT32_MAX


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
    except RecursionError:  # json recurses once per level of nesting
        raise InvalidFileError(f"{path}: not valid JSON (nested too deeply)") from None
