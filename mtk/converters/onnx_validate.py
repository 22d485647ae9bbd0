"""An exported ONNX folder in onnxruntime (CPU) against the PyTorch model it came from, on the same inputs.

Decoders: a prefill of the probe prompt, then two decode steps through the KV cache (the tokens PyTorch
picks greedily, fed to both sides); every position's next-token logits are compared with
``mtk.verify.logit_metrics``. Encoders: ``last_hidden_state`` (and ``pooler_output``) on a padded batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mtk.errors import VerificationError
from mtk.verify import Tolerance, logit_metrics

if TYPE_CHECKING:
    from mtk.converters.hf_to_onnx import OnnxExportConfig

PROMPT = "The capital of France is"
DECODE_STEPS = 2
# fp32: the same weights and math, only the kernels' summation order differs; tiny models agree to ~1e-6.
FP32 = Tolerance(max_abs=1e-4, top1=1.0)
# Lossy artifacts are checked against PyTorch fp32 by distribution, not by value. Measured on the tiny
# test models and SmolLM2-135M (tests/test_export_onnx.py): fp16 mean KL <= 2e-5, int8 <= 3e-3,
# int4 <= 2e-2 (block 32) and 4e-2 (block 128); the bounds leave ~3x room above the worst measurement.
LOSSY: dict[str, Tolerance] = {
    "fp16": Tolerance(kl_mean=1e-3, top1=0.9),
    "int8": Tolerance(kl_mean=1e-2, top1=0.8),
    "int4": Tolerance(kl_mean=0.1, top1=0.7),
}


def tolerance_for(config: OnnxExportConfig) -> tuple[str, Tolerance]:
    kind = config.quantize or config.dtype
    return kind, FP32 if kind == "fp32" else LOSSY[kind]


def _prompt_ids(folder: Path, vocab_size: int) -> list[int]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):  # a checkpoint without tokenizer files: fixed ids still exercise the graph
        return [1, 17, 42, 7, 99][: max(1, vocab_size - 1)]
    ids = [i for i in tokenizer(PROMPT)["input_ids"] if i < vocab_size]
    return ids or [1]


def decoder_logits(folder: Path, model: Any, *, steps: int = DECODE_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, vocab) logits from PyTorch (with its own cache) and onnxruntime (with the exported one)."""
    from mtk.bench.onnx_runtime import OnnxCausalLM

    runner = OnnxCausalLM(folder)
    ids = _prompt_ids(folder, model.config.get_text_config(decoder=True).vocab_size)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        ref, tokens, cache = [out.logits[0]], [], out.cache
        for _ in range(steps):
            tokens.append(int(ref[-1][-1].argmax()))
            out = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
            ref.append(out.logits[0])
            cache = out.cache
    logits, kv = runner.step(np.array([ids]), runner.empty_cache())
    cand = [logits[0]]
    for token in tokens:
        logits, kv = runner.step(np.array([[token]]), kv)
        cand.append(logits[0])
    return torch.cat(ref).float(), torch.from_numpy(np.concatenate(cand))


def _judge(what: str, metrics: dict[str, float], kind: str, tol: Tolerance) -> dict[str, Any]:
    failures = tol.failures(metrics)
    if failures:
        raise VerificationError(f"{what} ({kind}) disagrees with PyTorch fp32: " + "; ".join(failures))
    return {"runtime": "onnxruntime CPUExecutionProvider", "kind": kind, "logits": metrics, "tolerance": tol.__dict__}


def validate_causal(folder: Path, model: Any, config: OnnxExportConfig) -> dict[str, Any]:
    """Prefill plus decode steps; raises VerificationError beyond the tolerance for the export's kind."""
    kind, tol = tolerance_for(config)
    if _task(folder) == "text-generation":
        ref, cand = _no_cache_logits(folder, model)
    else:
        ref, cand = decoder_logits(folder, model)
    report = _judge("the ONNX model", logit_metrics(ref, cand), kind, tol)
    report["decode_steps"] = DECODE_STEPS
    return report


def _task(folder: Path) -> str:
    from mtk.bench.onnx_runtime import read_manifest

    return read_manifest(folder)["task"]


def _no_cache_logits(folder: Path, model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from mtk.bench.onnx_runtime import make_session, read_manifest

    session = make_session(folder / read_manifest(folder)["model"])
    ids = np.array([_prompt_ids(folder, model.config.vocab_size)])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)).logits[0]
    return ref.float(), torch.from_numpy(session.run(["logits"], feed)[0][0].astype(np.float32))


def validate_encoder(folder: Path, model: Any, config: OnnxExportConfig) -> dict[str, Any]:
    """A padded batch of two; hidden states compared by max abs difference on the unpadded positions."""
    from mtk.bench.onnx_runtime import make_session, read_manifest

    manifest = read_manifest(folder)
    session = make_session(folder / manifest["model"])
    vocab = model.config.vocab_size
    ids = torch.tensor([[2, 5, 9, 11, 3], [2, 7, 13, 3, 0]]) % vocab
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    feed = {name: feeds[name].numpy() for name in manifest["inputs"]}
    with torch.no_grad():
        ref = model(**{name: feeds[name] for name in manifest["inputs"]})
    got = dict(zip(manifest["outputs"], session.run(None, feed), strict=True))
    keep = mask.bool()
    diffs = {}
    for name in manifest["outputs"]:
        r, c = getattr(ref, name).float(), torch.from_numpy(got[name].astype(np.float32))
        diffs[name] = float((r[keep] - c[keep]).abs().max() if name == "last_hidden_state" else (r - c).abs().max())
    kind, tol = tolerance_for(config)
    bound = tol.max_abs if tol.max_abs is not None else 5e-2
    bad = [f"{n} max abs diff {d:.3g} > {bound:g}" for n, d in diffs.items() if d > bound]
    if bad:
        raise VerificationError(f"the ONNX encoder ({kind}) disagrees with PyTorch fp32: " + "; ".join(bad))
    return {"runtime": "onnxruntime CPUExecutionProvider", "kind": kind, "max_abs": diffs, "tolerance": bound}
