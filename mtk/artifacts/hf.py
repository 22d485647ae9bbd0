"""Plain (unquantized) Hugging Face checkpoint folders: ``config.json`` without ``quantization_config``, run in
transformers. Weights counted: ``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``; tokenizer and config files are
not (they are the same few MB for every artifact of one model)."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtk.artifacts.base import ArtifactKind, Description, Tokenization
from mtk.errors import InvalidFileError, UnsupportedError

HF_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def read_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def is_folder(path: Path) -> bool:
    """An HF folder of either kind (plain or quantized): config.json, and not an mtk ONNX folder."""
    return path.is_dir() and (path / "config.json").is_file() and not (path / "mtk_onnx.json").is_file()


def matches(path: Path) -> bool:
    return is_folder(path) and not read_config(path).get("quantization_config")


def weight_files(path: Path) -> tuple[Path, ...]:
    weights = tuple(sorted({p for pattern in HF_WEIGHTS for p in path.glob(pattern)}))
    if not weights:
        raise InvalidFileError(f"{path}: an HF folder without weights files ({', '.join(HF_WEIGHTS)})")
    return weights


def describe(path: Path) -> Description:
    config = read_config(path)
    weights = weight_files(path)
    label = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return Description((path,), weights, label, False)


def tokenize(path: Path, text: str) -> Tokenization:
    """The folder's tokenizer files through transformers (also for quantized HF and ONNX folders)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise InvalidFileError(f"{path}: its tokenizer files cannot be loaded ({exc})") from None
    with_special = tok(text)["input_ids"]
    plain = tok(text, add_special_tokens=False)["input_ids"]
    if with_special == plain:
        return Tokenization(with_special, None)
    if tok.bos_token_id is not None and with_special == [tok.bos_token_id, *plain]:
        return Tokenization(with_special, tok.bos_token_id)
    raise UnsupportedError(f"{path}: the tokenizer adds special tokens other than a leading BOS")


def count_params(path: Path) -> int | None:
    """Parameters in the safetensors headers; None when some weights are in another format."""
    total = 0
    for f in weight_files(path):
        if f.suffix != ".safetensors":
            return None
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def load(path: Path | str) -> Any:
    """The checkpoint in transformers, computing in float32 whatever it stores."""
    import torch
    from transformers.utils import logging as hf_logging

    from mtk.runtime import auto_model_class

    hf_logging.disable_progress_bar()
    auto = auto_model_class(str(read_config(Path(path)).get("model_type")))
    return auto.from_pretrained(str(path), dtype=torch.float32)


def logits(model: Any, ids: Sequence[int]) -> Any:
    """(len(ids), vocab) float32 torch logits of a transformers model at every position of ``ids``."""
    import torch

    with torch.inference_mode():
        return model(torch.tensor([list(ids)])).logits[0].float()


KIND = ArtifactKind(
    name="hf",
    container="hf",
    runtime="transformers",
    matches=matches,
    describe=describe,
    tokenize=tokenize,
    count_params=count_params,
)
