"""mtk: convert, quantize and export language-model checkpoints, every artifact verified in its runtime.

The Python API is the one the CLI uses (``mtk.api``)::

    import mtk

    mtk.gguf_import("model.Q4_1.gguf", "model-hf")
    mtk.gguf_export("model-hf", "model.q4_k_m.gguf", type="q4_k_m")
    mtk.quantize("model-hf", "model-gptq", method="gptq", group_size=64, calibration="calib.txt")

Each function returns a frozen result (``mtk.results``) and raises ``mtk.errors.MtkError`` subclasses. Importing
``mtk`` loads neither torch nor transformers.
"""

from mtk.api import bench, export_onnx, gguf_export, gguf_import, imatrix, inspect, quantize, run
from mtk.errors import (
    EnvironmentProblem,
    InvalidFileError,
    MtkError,
    OutputError,
    UnsupportedError,
    UsageError,
    VerificationError,
)
from mtk.version import __version__ as __version__

__all__ = [
    "EnvironmentProblem",
    "InvalidFileError",
    "MtkError",
    "OutputError",
    "UnsupportedError",
    "UsageError",
    "VerificationError",
    "bench",
    "export_onnx",
    "gguf_export",
    "gguf_import",
    "imatrix",
    "inspect",
    "quantize",
    "run",
]
