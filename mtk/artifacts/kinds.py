"""The artifact kinds, and which one a path is.

| kind           | on disk                                               | runtime                          |
|----------------|-------------------------------------------------------|----------------------------------|
| ``gguf``       | a ``.gguf`` file (``GGUF`` magic), or a split's part  | llama.cpp (llama-cpp-python)     |
| ``hf``         | a folder with ``config.json``                         | transformers                     |
| ``quantized-hf``| the same, with ``quantization_config``               | transformers + the format's kernels |
| ``onnx``       | an ``mtk export-onnx`` folder (``mtk_onnx.json``)     | onnxruntime (CPU)                |

A new kind is one module with its ``KIND`` row, added to ``KINDS``.
"""

from __future__ import annotations

from pathlib import Path

from mtk.artifacts import gguf, hf, onnx, quantized
from mtk.artifacts.base import ArtifactKind
from mtk.registry import Registry

KINDS: Registry[ArtifactKind] = Registry("artifact kind")
for _kind in (gguf.KIND, hf.KIND, quantized.KIND, onnx.KIND):
    KINDS.add(_kind.name, _kind)


def detect(path: Path | str) -> ArtifactKind | None:
    """The kind ``path`` is, or None when it is none of them (the caller says what it accepts)."""
    path = Path(path)
    # The predicates are exclusive (tests/test_artifacts.py), so the order does not matter.
    return next((kind for kind in map(KINDS.get, KINDS.names()) if kind.matches(path)), None)
