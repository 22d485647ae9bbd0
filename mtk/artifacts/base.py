"""The row every artifact kind fills in (mtk.artifacts.kinds lists them) and what its functions return."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# What the files are, whatever their weights hold: a quantized HF folder is an HF folder. The bench's
# ``kind`` column and the runner its child opens.
Container = Literal["hf", "gguf", "onnx"]


@dataclass(frozen=True)
class Description:
    """An artifact's files: ``paths`` are what its runtime opens (a folder, or a GGUF's parts), ``weights``
    the files its size counts, ``quantization`` a short label (``Q4_K_M``, ``gptq 4-bit g128``, ``bfloat16``).
    ``task`` is the ONNX manifest's task (None for the other kinds, which do not record one)."""

    paths: tuple[Path, ...]
    weights: tuple[Path, ...]
    quantization: str
    quantized: bool
    task: str | None = None


@dataclass(frozen=True)
class Tokenization:
    """Token ids of a text as the artifact's runtime adds special tokens; ``bos_id`` when BOS is added."""

    ids: list[int]
    bos_id: int | None


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact: how to recognise it, describe it, tokenize with it and count its parameters.

    ``matches`` must be exclusive of the other kinds' (mtk.artifacts.kinds checks that a path matches one).
    ``count_params`` gives None where the stored elements are not the model's parameters (packed weights).
    """

    name: str
    container: Container
    runtime: str
    matches: Callable[[Path], bool]
    describe: Callable[[Path], Description]
    tokenize: Callable[[Path, str], Tokenization]
    count_params: Callable[[Path], int | None]


def no_count(path: Path) -> None:
    """``count_params`` of the kinds whose stored elements are not the model's parameters (packed weights, an ONNX
    graph's initializers)."""
    return None
