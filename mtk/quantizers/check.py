"""Verify a quantized checkpoint in its runtime: the loader of its format (``CheckpointFormat.load``: transformers
with GPTQModel's kernels for GPTQ and AWQ, with compressed-tensors for compressed-tensors).

Two comparisons, as for quantized GGUF exports:

- Conversion: the checkpoint as its runtime loads it (packed weights, GPTQModel kernels or compressed-tensors'
  decompression) against a float model holding exactly the weights the files define (unpacked in torch by mtk).
  This isolates packing, layout and config errors from quantization error, and fails (VerificationError)
  beyond the format's tolerance (``CheckpointFormat.tolerance``).
- Quality: against the unquantized source model, reported as ``quality`` for the caller (or a test) to bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mtk.artifacts.compare import PROMPTS, logit_metrics
from mtk.errors import VerificationError
from mtk.formats.checkpoint import HFCheckpoint
from mtk.quantizers import FORMATS, format_of


def runtime_available(fmt: str) -> bool:
    """Whether the loader of checkpoint format ``fmt`` (a ``FORMATS`` name) is installed."""
    return FORMATS.get(fmt).runtime_available()


def _quantization_config(path: Path | str) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())["quantization_config"]


def load_quantized(path: Path | str) -> Any:
    """The checkpoint through its format's runtime, on the CPU (``AutoModelForCausalLM.from_pretrained``)."""
    return format_of(_quantization_config(path)).load(Path(path))


def hold_file_weights(model: Any, path: Path | str) -> Any:
    """Overwrite the float ``model`` (the source architecture) with exactly the weights stored in ``path``."""
    qc = _quantization_config(path)
    fmt = format_of(qc)
    ckpt = HFCheckpoint(path)
    names = set(ckpt.names())
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            base = name.removesuffix(".weight")
            if f"{base}.{fmt.packed_keys[0]}" in names:
                packed = {k: ckpt.get(f"{base}.{k}") for k in fmt.packed_keys if f"{base}.{k}" in names}
                tensor.copy_(fmt.unpack(packed, qc))
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
    tolerance = format_of(_quantization_config(path)).tolerance()
    failures = tolerance.failures(metrics)
    if failures:
        raise VerificationError(
            "quantized checkpoint in transformers disagrees with its own weights: " + "; ".join(failures)
        )
    return {"logits": metrics, "tolerance": tolerance.__dict__, "quality": logit_metrics(src, runtime)}
