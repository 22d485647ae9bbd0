"""One artifact loaded in its real runtime, as the bench child process drives it.

Each runner gives full-window logits (``(ctx, vocab)`` float32, one fresh pass per window, no cache carried
between windows) and times greedy decoding through the runtime's own KV cache. Only the runner's own runtime
is imported: a GGUF or ONNX child never loads torch, so its peak RSS is the runtime's.

- ``hf``: transformers' AutoModelForCausalLM on CUDA or the CPU; a ``quantization_config`` in config.json
  loads GPTQ/AWQ/compressed-tensors folders through transformers' own integrations (``device_map``);
- ``gguf``: llama.cpp through llama-cpp-python, float32 KV cache; all layers offloaded when the build
  supports a GPU and the device is CUDA;
- ``onnx``: onnxruntime's CPU execution provider (mtk.artifacts.onnx_runtime).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mtk.artifacts.base import Container as Kind
from mtk.errors import InvalidFileError


class Runner(Protocol):
    runtime: str
    vocab: int

    def logits(self, window: np.ndarray) -> np.ndarray: ...

    def decode_seconds(self, prompt: np.ndarray, steps: int) -> float: ...

    def vram_peak_bytes(self) -> int | None: ...

    def close(self) -> None: ...


def import_runtime(kind: Kind, path: Path) -> None:
    """Import the runtime's Python modules, so that ``load_s`` times loading the model, not importing code.

    For transformers this includes the model family's module (imported lazily on first use; ~4.5 s here).
    """
    if kind == "hf":
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        config = AutoConfig.from_pretrained(str(path))
        if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
            MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # noqa: B018 - the lookup imports the module
        qc = getattr(config, "quantization_config", None)
        if qc:
            from mtk.errors import UnsupportedError
            from mtk.quantizers.formats import format_of

            # The package transformers imports inside from_pretrained for the checkpoint's format (gptqmodel's import
            # alone takes ~3.5 s here, which is not loading the model). A format mtk does not write (bitsandbytes
            # ...) is left to from_pretrained, which names what is missing.
            with contextlib.suppress(ImportError, UnsupportedError):
                importlib.import_module(format_of(dict(qc)).runtime_module)
    elif kind == "gguf":
        with contextlib.suppress(ImportError):  # open_runner reports it
            import llama_cpp  # noqa: F401
    else:
        import onnxruntime  # noqa: F401


def open_runner(kind: Kind, paths: list[str], *, device: str, threads: int, n_ctx: int, reference: bool) -> Runner:
    """Load the artifact (this is what ``load_s`` times). ``paths``: the artifact's files or folder."""
    if kind == "hf":
        return HFRunner(Path(paths[0]), device=device, threads=threads, float32=reference)
    if kind == "gguf":
        return LlamaCppRunner(Path(paths[0]), device=device, threads=threads, n_ctx=n_ctx)
    return OnnxRunner(Path(paths[0]), threads=threads)


class HFRunner:
    """transformers on ``device``; ``float32=True`` (the reference) computes in float32 whatever is stored."""

    def __init__(self, folder: Path, *, device: str, threads: int, float32: bool):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from mtk.runtime import auto_model_class

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        torch.set_num_threads(threads)
        self._torch, self.device = torch, torch.device(device)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        kwargs: dict[str, Any] = {"dtype": torch.float32 if float32 else "auto"}
        quantized = "quantization_config" in config
        if quantized:
            # Quantized integrations place their packed weights themselves.
            kwargs["device_map"] = device
        auto = AutoModelForCausalLM if quantized else auto_model_class(str(config.get("model_type")))
        self.model = auto.from_pretrained(str(folder), **kwargs).eval()
        if not quantized:
            self.model.to(self.device)
        self.vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self.runtime = f"transformers {transformers.__version__}"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize()

    def logits(self, window: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.as_tensor(window[None], device=self.device)
            return self.model(input_ids=ids).logits[0].float().cpu().numpy()

    def decode_seconds(self, prompt: np.ndarray, steps: int) -> float:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.as_tensor(prompt[None], device=self.device), use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            self._sync()
            start = time.perf_counter()
            for _ in range(steps):
                out = self.model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            token.item()  # waits for the device
            return time.perf_counter() - start

    def vram_peak_bytes(self) -> int | None:
        return int(self._torch.cuda.max_memory_allocated()) if self.device.type == "cuda" else None

    def close(self) -> None:
        del self.model


@contextmanager
def _load_errors(path: Path, runtime: str, errors: type[Exception] | tuple[type[Exception], ...]) -> Any:
    """A runtime refusing the file at load time means a corrupt or wrong-kind file (exit code 4)."""
    try:
        yield
    except errors as exc:
        raise InvalidFileError(f"{runtime} cannot load {path}: {str(exc).strip() or type(exc).__name__}") from exc


class LlamaCppRunner:
    """The GGUF in mtk.artifacts.llama_cpp (float32 KV cache, all logits kept), so that the figures measure the
    file's weights, not the cache's rounding, and the bench runs a file as its verification did."""

    def __init__(self, path: Path, *, device: str, threads: int, n_ctx: int):
        from mtk.artifacts.llama_cpp import LlamaCpp

        self.model = LlamaCpp(path, n_ctx=n_ctx, threads=threads, offload=device == "cuda")
        self.vocab = self.model.vocab
        gpu = ", GPU offload" if self.model.offloaded else ""
        self.runtime = f"llama.cpp (llama-cpp-python {self.model.version}){gpu}"

    def logits(self, window: np.ndarray) -> np.ndarray:
        return self.model.logits(window, copy=False)

    def decode_seconds(self, prompt: np.ndarray, steps: int) -> float:
        return self.model.decode_seconds(prompt, steps)

    def vram_peak_bytes(self) -> int | None:
        return None  # llama.cpp does not report it; with GPU offload watch nvidia-smi

    def close(self) -> None:
        self.model.close()


class OnnxRunner:
    """An ``mtk export-onnx`` decoder folder in onnxruntime (CPU)."""

    def __init__(self, folder: Path, *, threads: int):
        import onnxruntime
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

        from mtk.artifacts.onnx_runtime import OnnxCausalLM

        with _load_errors(folder, "onnxruntime", (Fail, InvalidGraph, InvalidProtobuf)):
            self.model = OnnxCausalLM(folder, threads=threads)
        vocab = self.model.manifest.get("vocab_size")
        if vocab is None:
            raise InvalidFileError(f"{folder}: mtk_onnx.json has no vocab_size; re-export with mtk export-onnx")
        self.vocab = int(vocab)
        self.runtime = f"onnxruntime {onnxruntime.__version__} (CPU)"

    def logits(self, window: np.ndarray) -> np.ndarray:
        logits, _ = self.model.step(window[None], self.model.empty_cache())
        return logits[0]

    def decode_seconds(self, prompt: np.ndarray, steps: int) -> float:
        logits, cache = self.model.step(prompt[None], self.model.empty_cache())
        token = int(logits[0, -1].argmax())
        start = time.perf_counter()
        for _ in range(steps):
            logits, cache = self.model.step(np.array([[token]]), cache)
            token = int(logits[0, -1].argmax())
        return time.perf_counter() - start

    def vram_peak_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        del self.model
