"""The artifacts a bench measures: what each is (mtk.artifacts.kinds), what it weighs, how many parameters it
holds and how it tokenizes, each as its kind says.

The bench takes GGUF files, HF folders (quantized or not) and ``mtk export-onnx`` decoder folders (with a KV
cache). Tokenizer and config files are not counted in the size: they are the same few MB for every artifact
of one model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtk.artifacts import kinds
from mtk.artifacts.base import ArtifactKind, Container, Tokenization
from mtk.errors import InvalidFileError, UnsupportedError


@dataclass(frozen=True)
class Artifact:
    """One benchmarked artifact: ``paths`` are what the runtime opens (a folder, or a GGUF's parts); ``kind`` is
    what the files are (a quantized HF folder is ``hf``), ``of`` the artifact kind that describes them."""

    path: Path
    kind: Container
    paths: tuple[Path, ...]
    weights: tuple[Path, ...]
    quantization: str
    quantized: bool
    of: ArtifactKind

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weights)


def detect(path: Path) -> Artifact:
    """Classify ``path``; InvalidFileError (exit code 4) when it is missing or none of the kinds the bench runs."""
    path = Path(path)
    if not path.exists():
        raise InvalidFileError(f"{path}: no such file or folder")
    kind = kinds.detect(path)
    if kind is None and path.is_file():
        raise InvalidFileError(f"{path}: not a GGUF file (bench takes .gguf files, HF folders, ONNX folders)")
    if kind is None:
        raise InvalidFileError(f"{path}: neither an HF checkpoint (config.json) nor an mtk ONNX folder (mtk_onnx.json)")
    d = kind.describe(path)
    if kind.container == "onnx" and d.task != "text-generation-with-past":
        raise UnsupportedError(f"{path}: a {d.task!r} ONNX model; bench needs a decoder with a KV cache")
    return Artifact(d.paths[0], kind.container, d.paths, d.weights, d.quantization, d.quantized, kind)


def count_params(artifact: Artifact) -> int | None:
    """Parameters stored in an unquantized HF folder (safetensors headers) or a GGUF (its tensor shapes).

    Quantized folders pack several weights per stored element, so their count is not the model's: None.
    """
    return artifact.of.count_params(artifact.path)


def tokenize(artifact: Artifact, text: str) -> Tokenization:
    """Tokenize ``text`` with the artifact's own tokenizer: llama.cpp's for a GGUF (with BOS when the
    vocabulary adds it, like llama-perplexity), the folder's tokenizer files through transformers otherwise."""
    return artifact.of.tokenize(artifact.path, text)


def describe(artifact: Artifact) -> dict[str, Any]:
    return {
        "path": str(artifact.path),
        "kind": artifact.kind,
        "quantization": artifact.quantization,
        "quantized": artifact.quantized,
        "files": [str(p) for p in artifact.weights],
        "size_bytes": artifact.size_bytes,
    }
