"""Verify a quantized checkpoint in its runtime: transformers with GPTQModel's kernels (GPTQ, AWQ) or with
compressed-tensors (which unpacks the weights itself, with its own reader, and runs them as float Linears).

Two comparisons, as for quantized GGUF exports:

- Conversion: the checkpoint as transformers loads it (packed weights, GPTQModel kernels or compressed-tensors'
  decompression) against a float model holding exactly the weights the files define (unpacked in torch by mtk).
  This isolates packing, layout and config errors from quantization error, and fails (VerificationError)
  beyond ``RUNTIME`` (``COMPRESSED_RUNTIME`` for compressed-tensors).
- Quality: against the unquantized source model, reported as ``quality`` for the caller (or a test) to bound.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from mtk.artifacts.compare import PROMPTS, Tolerance, logit_metrics
from mtk.errors import EnvironmentProblem, VerificationError
from mtk.formats.checkpoint import HFCheckpoint
from mtk.quantizers.compressed import unpack_compressed
from mtk.quantizers.pack import unpack_awq, unpack_gptq

# GPTQModel's default int4 CPU kernel (TorchAtenLinear, ATen's int4 matmul) computes in its own reduced precision:
# against the float weights it holds, measured mean KL ~1e-7 at 8 bits, 8e-5 on tiny 4-bit models and 3e-3 to
# 0.03 on SmolLM2 at 4 bits (30 layers; max |logit diff| up to 13). A wrong layout or config gives KL > 1.
RUNTIME = Tolerance(kl_mean=0.1, top1=0.8)
# compressed-tensors unpacks to float Linears: symmetric checkpoints (kept packed until the first forward, then
# dequantized with the float32 scales of the model) match the files' weights exactly (measured KL 0, max |diff| 0
# on SmolLM2); asymmetric ones are dequantized at load time in the checkpoint's float16, measured KL 3e-6.
COMPRESSED_RUNTIME = Tolerance(kl_mean=1e-4, top1=0.95)


def gptqmodel_available() -> bool:
    return importlib.util.find_spec("gptqmodel") is not None and importlib.util.find_spec("optimum") is not None


def compressed_tensors_available() -> bool:
    return importlib.util.find_spec("compressed_tensors") is not None


def runtime_available(fmt: str) -> bool:
    """Whether the loader of checkpoint format ``fmt`` (``Format`` value) is installed."""
    return compressed_tensors_available() if fmt == "compressed-tensors" else gptqmodel_available()


def _quantization_config(path: Path | str) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())["quantization_config"]


def _ct_weights(qc: dict[str, Any]) -> dict[str, Any]:
    """The weight arguments of mtk's one compressed-tensors config group."""
    return qc["config_groups"]["group_0"]["weights"]


def load_quantized(path: Path | str) -> Any:
    """The checkpoint through ``AutoModelForCausalLM.from_pretrained`` on the CPU (GPTQModel or compressed-tensors
    installed, as its ``quant_method`` needs)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    qc = _quantization_config(path)
    if qc["quant_method"] == "compressed-tensors":
        if not compressed_tensors_available():
            raise EnvironmentProblem(
                "loading compressed-tensors checkpoints needs compressed-tensors (pip install mtk[quantize])"
            )
        hf_logging.disable_progress_bar()
        kwargs: dict[str, Any] = {}
        if not _ct_weights(qc)["symmetric"]:
            # transformers 5.24 + compressed-tensors 0.20 cannot keep packed zero points compressed: compressing the
            # empty model leaves them unpacked (out, n) int8, so the packed (out * bits / 32, n) int32 tensors that
            # llm-compressor and vLLM use fail with a size mismatch. Dequantizing at load time reads them right.
            from transformers.utils.quantization_config import CompressedTensorsConfig

            kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            return AutoModelForCausalLM.from_pretrained(str(path), device_map="cpu", dtype=torch.float32, **kwargs)
    if not gptqmodel_available():
        raise EnvironmentProblem("loading GPTQ/AWQ checkpoints needs gptqmodel and optimum (pip install mtk[quantize])")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    hf_logging.disable_progress_bar()
    # GPTQModel prints a banner and kernel-selection logs on stdout, where `--json` results go.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        import gptqmodel  # noqa: F401 - imported here so that its banner goes to the sink

        return AutoModelForCausalLM.from_pretrained(str(path), device_map="cpu", dtype=torch.float32)


def hold_file_weights(model: Any, path: Path | str) -> Any:
    """Overwrite the float ``model`` (the source architecture) with exactly the weights stored in ``path``."""
    qc = _quantization_config(path)
    ckpt = HFCheckpoint(path)
    names = set(ckpt.names())
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            base = name.removesuffix(".weight")
            if f"{base}.weight_packed" in names:
                keys = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")
                packed = {k: ckpt.get(f"{base}.{k}") for k in keys if f"{base}.{k}" in names}
                tensor.copy_(unpack_compressed(packed, _ct_weights(qc)["num_bits"]))
            elif f"{base}.qweight" in names:
                packed = {
                    k: ckpt.get(f"{base}.{k}")
                    for k in ("qweight", "qzeros", "scales", "g_idx")
                    if f"{base}.{k}" in names
                }
                w = unpack_awq(packed) if qc["quant_method"] == "awq" else unpack_gptq(packed, qc["bits"])
                tensor.copy_(w)
            elif name in names:
                tensor.copy_(ckpt.get(name).to(tensor.dtype))
    return model


def _logits(model: Any, prompts: list[list[int]]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(torch.tensor([ids])).logits[0].float() for ids in prompts])


def verify_quantized(path: Path | str, source: Path | str) -> dict[str, Any]:
    """Runtime vs the files' own weights (checked) and vs the source model (reported); see the module notes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    runtime = _logits(load_quantized(path), prompts)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    src = _logits(model, prompts)
    held = _logits(hold_file_weights(model, path), prompts)  # the source model, now with the files' weights
    metrics = logit_metrics(held, runtime)
    tolerance = COMPRESSED_RUNTIME if _quantization_config(path)["quant_method"] == "compressed-tensors" else RUNTIME
    failures = tolerance.failures(metrics)
    if failures:
        raise VerificationError(
            "quantized checkpoint in transformers disagrees with its own weights: " + "; ".join(failures)
        )
    return {"logits": metrics, "tolerance": tolerance.__dict__, "quality": logit_metrics(src, runtime)}
