"""mtk ONNX folders (``mtk export-onnx``: ``mtk_onnx.json`` beside ``model.onnx``), run in onnxruntime (CPU).

``validate`` checks a folder against the PyTorch fp32 model it came from, on the same inputs. Decoders: a
prefill of the probe prompt, then two decode steps through the KV cache (the tokens PyTorch picks greedily,
fed to both sides); every position's next-token logits are compared with
``mtk.compare.logit_metrics``. Encoders: ``last_hidden_state`` (and ``pooler_output``) on a padded
batch. The exporter takes it as its ``check``, called on the complete temporary folder before it is published.

Weights counted: ``model.onnx`` and its external data file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtk.artifacts import hf
from mtk.artifacts.base import ArtifactKind, Description, no_count
from mtk.compare import Tolerance, logit_metrics
from mtk.errors import VerificationError

if TYPE_CHECKING:
    import torch

    from mtk.converters.hf_to_onnx import Kind

# Long enough for ~20 compared positions: top-1 over a handful of positions moves in steps of 15%.
PROMPT = "Once upon a time, in a land far away, there lived a king who asked: what is the capital of France?"
DECODE_STEPS = 2
# fp32: the same weights and math, only the kernels' summation order differs. Measured on this prompt: the
# eight tiny families <= 3e-6; SmolLM2-135M 8.9e-5 (30 layers, logits up to ~30: close to the bound).
FP32 = Tolerance(max_abs=1e-4, top1=1.0)
# Lossy artifacts, against PyTorch fp32, after the fp32 graph they came from passed FP32 (a conversion bug
# is caught there: one layer's RoPE rows permuted moves SmolLM2 by KL 0.58, as much as int4 does). These
# bounds catch a broken pass. Measured worst cases on this prompt (mean KL / top-1):
#   fp16: tiny models <= 1e-6 / 1.0; SmolLM2 8e-6 / 1.0.
#   int8 (dynamic: activations quantized per tensor at run time): tiny <= 6.3e-4 / 0.82; SmolLM2 0.56 / 0.63,
#     from its activation outliers (weight-only 8-bit MatMulNBits, block 32, measured 1.8e-3 / 1.0).
#   int4 (MatMulNBits, symmetric): tiny <= 0.032 / 0.44; SmolLM2 0.44 / 0.70 (block 32), 0.63 / 0.59 (128),
#     as much as torch round-to-nearest on the same blocks loses (0.65 / 0.66): the method's loss.
# Garbage weights are nats away from the source; the bounds sit 2-3x above the worst measured case.
LOSSY: dict[str, Tolerance] = {
    "fp16": Tolerance(kl_mean=1e-3, top1=0.9),
    "int8": Tolerance(kl_mean=1.5, top1=0.35),
    "int4": Tolerance(kl_mean=2.0, top1=0.35),
}
# Encoders: max |diff| of the outputs in fp32; the lossy kinds by mean cosine similarity of hidden-state rows.
# Measured on the tiny random BERT only (>= 0.99997 for fp16, int8 and int4): no real encoder was measured.
ENCODER_FP32_MAX_ABS = 1e-4
ENCODER_COSINE = {"fp16": 0.999, "int8": 0.95, "int4": 0.9}


def validate(folder: Path, model: Any, kind: Kind, model_file: str | None = None) -> dict[str, Any]:
    """The folder's model (or ``model_file`` in it) against ``model``; VerificationError beyond the bounds."""
    from mtk.artifacts.onnx_runtime import read_manifest

    task = read_manifest(folder)["task"]
    if task == "feature-extraction":
        return _validate_encoder(folder, model, kind, model_file)
    if task == "text-generation":
        ref, cand = _no_cache_logits(folder, model, model_file)
    else:
        ref, cand = decoder_logits(folder, model, model_file=model_file)
    metrics = logit_metrics(ref, cand)
    tol = FP32 if kind == "fp32" else LOSSY[kind]
    failures = tol.failures(metrics)
    if failures:
        raise VerificationError(f"the ONNX model ({kind}) disagrees with PyTorch fp32: " + "; ".join(failures))
    report: dict[str, Any] = {"runtime": "onnxruntime CPUExecutionProvider", "kind": kind, "logits": metrics}
    report["tolerance"] = {k: v for k, v in tol.__dict__.items() if v is not None}
    if task == "text-generation-with-past":
        report["decode_steps"] = DECODE_STEPS
    return report


def _prompt_ids(folder: Path, vocab_size: int) -> list[int]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):  # a checkpoint without tokenizer files: fixed ids still exercise the graph
        return [i % vocab_size for i in (1, 17, 42, 7, 99, 3, 250, 11)]
    ids = [i for i in tokenizer(PROMPT)["input_ids"] if i < vocab_size]
    return ids or [1]


def decoder_logits(
    folder: Path, model: Any, *, model_file: str | None = None, steps: int = DECODE_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, vocab) logits from PyTorch (with its own cache) and onnxruntime (with the exported one)."""
    import torch

    from mtk.artifacts.onnx_runtime import OnnxCausalLM

    runner = OnnxCausalLM(folder, model_file=model_file)
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


def _session(folder: Path, model_file: str | None) -> tuple[Any, dict[str, Any]]:
    from mtk.artifacts.onnx_runtime import make_session, read_manifest

    manifest = read_manifest(folder)
    return make_session(folder / (model_file or manifest["model"])), manifest


def _no_cache_logits(folder: Path, model: Any, model_file: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    session, _ = _session(folder, model_file)
    ids = np.array([_prompt_ids(folder, model.config.vocab_size)])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)).logits[0]
    return ref.float(), torch.from_numpy(session.run(["logits"], feed)[0][0].astype(np.float32))


def _validate_encoder(folder: Path, model: Any, kind: Kind, model_file: str | None) -> dict[str, Any]:
    """A padded batch of two; outputs compared on the unpadded positions."""
    import torch

    session, manifest = _session(folder, model_file)
    ids = torch.tensor([[2, 5, 9, 11, 3, 6], [2, 7, 13, 3, 0, 0]]) % model.config.vocab_size
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        ref = model(**{name: feeds[name] for name in manifest["inputs"]})
    got = session.run(None, {name: feeds[name].numpy() for name in manifest["inputs"]})
    keep = mask.bool()
    max_abs, cosine = {}, {}
    for name, value in zip(manifest["outputs"], got, strict=True):
        r, c = getattr(ref, name).float(), torch.from_numpy(value.astype(np.float32))
        if name == "last_hidden_state":
            r, c = r[keep], c[keep]
        max_abs[name] = float((r - c).abs().max())
        cosine[name] = float(torch.nn.functional.cosine_similarity(r, c, dim=-1).mean())
    if kind == "fp32":
        bad = [
            f"{n} max abs diff {d:.3g} > {ENCODER_FP32_MAX_ABS:g}"
            for n, d in max_abs.items()
            if d > ENCODER_FP32_MAX_ABS
        ]
        tolerance: dict[str, float] = {"max_abs": ENCODER_FP32_MAX_ABS}
    else:
        bound = ENCODER_COSINE[kind]
        bad = [f"{n} mean cosine {s:.4f} < {bound:g}" for n, s in cosine.items() if s < bound]
        tolerance = {"cosine": bound}
    if bad:
        raise VerificationError(f"the ONNX encoder ({kind}) disagrees with PyTorch fp32: " + "; ".join(bad))
    return {
        "runtime": "onnxruntime CPUExecutionProvider",
        "kind": kind,
        "max_abs": max_abs,
        "cosine": cosine,
        "tolerance": tolerance,
    }


def matches(path: Path) -> bool:
    return path.is_dir() and (path / "mtk_onnx.json").is_file()


def describe(path: Path) -> Description:
    manifest = json.loads((path / "mtk_onnx.json").read_text(encoding="utf-8"))
    weights = [path / manifest["model"]] + ([path / manifest["external_data"]] if manifest.get("external_data") else [])
    export = manifest.get("export", {})
    q = export.get("quantize")
    label = (f"{q}" + (f" g{export['block_size']}" if q == "int4" and export.get("block_size") else "")) if q else None
    return Description(
        (path,), tuple(weights), label or str(export.get("dtype", "fp32")), bool(q), task=manifest.get("task")
    )


KIND = ArtifactKind(
    name="onnx",
    container="onnx",
    runtime="onnxruntime",
    matches=matches,
    describe=describe,
    tokenize=hf.tokenize,
    count_params=no_count,
)
