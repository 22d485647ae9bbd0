"""Keep third-party libraries off stderr unless ``--verbose``: stderr carries mtk's own lines and progress only.

What reaches stderr otherwise, measured with the pinned set (torch 2.13, transformers 5.24, gptqmodel 7.6):
torchao (installed with gptqmodel, imported by transformers' quantizer table on every ``from_pretrained``) logs
"Failed to load ..._C_mxfp8...so" through its logger; torch logs two ``_pytree`` deprecation lines and its ONNX
exporter "torchvision is not installed" through torch's own handler (reset at import, so only ``TORCH_LOGS`` reaches
it); transformers logs notes and draws weight-loading bars; Python warnings (FutureWarning, UserWarning) come from
all of them. Everything here is the standard switch each library documents: environment variables read at import
(a user's own setting wins), logger levels and warning filters of this process. Nothing is patched.
"""

from __future__ import annotations

import logging
import os
import warnings

# Read by the libraries when they are imported (after this runs: the CLI imports them lazily); also inherited by
# the bench's child processes.
QUIET_ENV = {
    "TORCH_LOGS": "-all",  # torch's loggers at ERROR
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars
    "TQDM_DISABLE": "1",  # compressed-tensors' "Compressing model" bars (tqdm reads TQDM_* as its defaults)
}
LIBRARIES = (
    "torchao",
    "transformers",
    "gptqmodel",
    # bitsandbytes' CPU backend, on CPUs with AVX512-BF16, tries to fetch a kernel from the Hub through `kernels` at
    # import and logs the failure
    "bitsandbytes",
    "kernels",
    "optimum",
    "compressed_tensors",
    "accelerate",
    "onnxscript",
    "onnx_ir",
    "onnxruntime",
    "onnx",
    "huggingface_hub",
    "tokenizers",
    "gguf",
    "matplotlib",
    "torch",
)


def quiet_third_party() -> None:
    """Silence the libraries' warnings for the rest of this process (the CLI calls it unless --verbose)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    pattern = r"(" + "|".join(LIBRARIES) + r")(\.|$)"
    warnings.filterwarnings("ignore", module=pattern)
