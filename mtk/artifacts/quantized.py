"""Quantized Hugging Face folders (GPTQ, AWQ, compressed-tensors: ``quantization_config`` in config.json), run in
transformers through their checkpoint format's integration.

Loading and verification are the checkpoint format's (mtk.quantizers.check); this module recognises and
labels the folders. Packed weights hold several parameters per stored element, so no parameter count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtk.artifacts import hf
from mtk.artifacts.base import ArtifactKind, Description


def matches(path: Path) -> bool:
    return hf.is_folder(path) and bool(hf.read_config(path).get("quantization_config"))


def label(q: dict[str, Any]) -> str:
    """``gptq 4-bit g128``: the method, bits and group size of a ``quantization_config`` (its format's label)."""
    from mtk.quantizers.formats import label_of

    return label_of(q)


def describe(path: Path) -> Description:
    config = hf.read_config(path)
    weights = hf.weight_files(path)
    return Description((path,), weights, label(config["quantization_config"]), True)


def no_count(path: Path) -> None:
    return None


def runtime_available(fmt: str) -> bool:
    """Whether the loader of checkpoint format ``fmt`` is installed."""
    from mtk.quantizers.check import runtime_available as available

    return available(fmt)


def load(path: Path | str) -> Any:
    """The checkpoint through transformers on the CPU, computing in float32."""
    from mtk.quantizers.check import load_quantized

    return load_quantized(path)


def verify(path: Path | str, source: Path | str) -> dict[str, Any]:
    """The checkpoint in its runtime against its own weights (checked) and the source (reported as quality)."""
    from mtk.quantizers.check import verify_quantized

    return verify_quantized(path, source)


KIND = ArtifactKind(
    name="quantized-hf",
    container="hf",
    runtime="transformers",
    matches=matches,
    describe=describe,
    tokenize=hf.tokenize,
    count_params=no_count,
)
