"""Checks of artifacts in their real runtimes: llama.cpp (through llama-cpp-python) against transformers.

Metrics compare two sets of next-token logits for the same token ids, row by row: ``top1`` is the
fraction of positions where the arg-max agrees, ``kl_mean``/``kl_max`` the KL divergence
KL(reference || candidate) in nats, ``max_abs`` the largest absolute logit difference.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtk.bench.runners import quiet_fd2
from mtk.errors import EnvironmentProblem, VerificationError

# Tokenizer probe: non-ASCII letters, CJK, emoji (with a skin-tone modifier and ZWJ sequences), digits,
# code, contractions, runs of spaces, tabs and newlines (also CRLF), and rare characters.
PROBE_TEXT = (
    "Hello, world! It's 2024-06-01; we'll pay 3.14159 € or $1,234,567.89 — don't we?\n"
    "Ünïcödé façade naïve coöperate Ærøskøbing Łódź Straße ΑΒΓ αβγ Привет, мир!\n"
    "東京は日本の首都です。北京欢迎你！한국어 텍스트입니다. ภาษาไทย\n"
    "Emoji: 😀🚀👍🏽 👨‍👩‍👧 ❤️ ✓\n\n\n"
    "def fib(n: int) -> int:\n"
    "    if n < 2:\n"
    "\treturn n  # tab-indented\n"
    "    return fib(n - 1) + fib(n - 2)\n"
    "x  =   [1,2,3]    ;   y={'a': 0x1F}\r\n"
    "    trailing spaces    \n"
    "ꙮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 end"
)
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a land far away, there lived",
    "Les élèves étudient 12 345 pages; 東京は日本の首都です。",
)


@dataclass(frozen=True)
class Tolerance:
    """Bounds a comparison must meet; ``None`` means not checked."""

    max_abs: float | None = None
    kl_mean: float | None = None
    top1: float | None = None

    def failures(self, m: dict[str, float]) -> list[str]:
        out = []
        if self.max_abs is not None and m["max_abs"] > self.max_abs:
            out.append(f"max abs logit diff {m['max_abs']:.3g} > {self.max_abs:g}")
        if self.kl_mean is not None and m["kl_mean"] > self.kl_mean:
            out.append(f"mean KL {m['kl_mean']:.3g} > {self.kl_mean:g}")
        if self.top1 is not None and m["top1"] < self.top1:
            out.append(f"top-1 agreement {m['top1']:.3f} < {self.top1:g}")
        return out


# Lossless float weights on both sides: only summation order and activation precision differ. SiLU models
# agree to ~3e-6; llama.cpp's CPU GELU uses an f16 lookup table, which moves Gemma's logits by up to ~2e-3.
EXACT_F32 = Tolerance(max_abs=5e-3, kl_mean=1e-5)
FLOAT16 = Tolerance(kl_mean=2e-3, top1=0.95)
# Quantized weights (or a lossy cast): llama.cpp also quantizes activations for its integer dot products.
QUANTIZED = Tolerance(kl_mean=0.05, top1=0.85)


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def logit_metrics(reference: torch.Tensor | np.ndarray, candidate: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Compare (positions, vocab) logits; see the module docstring for the metrics."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    cand = torch.as_tensor(np.asarray(candidate), dtype=torch.float64)
    if ref.shape != cand.shape:
        raise VerificationError(f"logit shapes differ: {tuple(ref.shape)} vs {tuple(cand.shape)}")
    log_p = torch.log_softmax(ref, dim=-1)
    log_q = torch.log_softmax(cand, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {
        "positions": int(ref.shape[0]),
        "top1": float((ref.argmax(-1) == cand.argmax(-1)).double().mean()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "max_abs": float((ref - cand).abs().max()),
    }


class LlamaCppModel:
    """A GGUF model loaded in llama.cpp for logits and tokenization."""

    def __init__(self, path: Path | str, *, n_ctx: int = 512, vocab_only: bool = False, threads: int | None = None):
        if not llama_cpp_available():
            raise EnvironmentProblem("llama-cpp-python is not installed: pip install 'mtk[llama]'")
        import llama_cpp

        from mtk.formats.gguf_reader import split_paths

        path = split_paths(Path(path))[0]  # llama.cpp opens a split model from its first part
        with quiet_fd2():
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                logits_all=not vocab_only,
                vocab_only=vocab_only,
                verbose=False,
                n_threads=threads or max(1, os.cpu_count() or 1),
                seed=0,
                # An f32 KV cache: the default f16 cache alone moves logits by ~1e-3.
                type_k=0,
                type_v=0,
                flash_attn=False,
            )
        if self.llm is None:  # pragma: no cover
            raise VerificationError(f"llama.cpp could not load {path}")

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position of ``ids`` (a fresh context each call)."""
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


def hf_logits(model: Any, ids: Sequence[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([list(ids)])).logits[0].float()


def tolerance_for(gguf_types: set[str], lossless_dtype: bool) -> Tolerance:
    if not lossless_dtype or gguf_types - {"F32", "F16", "BF16"}:
        return QUANTIZED
    return EXACT_F32 if gguf_types == {"F32"} else FLOAT16


def compare_tokenizers(gguf_path: Path | str, hf_dir: Path | str, text: str = PROBE_TEXT) -> dict[str, Any]:
    """Token ids of llama.cpp's tokenizer on the GGUF and of the HF tokenizer in ``hf_dir`` for ``text``."""
    from transformers import AutoTokenizer

    llm = LlamaCppModel(gguf_path, vocab_only=True)
    try:
        ids_llama = llm.tokenize(text)
    finally:
        llm.close()
    ids_hf = AutoTokenizer.from_pretrained(str(hf_dir))(text, add_special_tokens=False)["input_ids"]
    return _token_report(ids_llama, ids_hf)


def _token_report(a: list[int], b: list[int]) -> dict[str, Any]:
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {"tokens": len(a), "identical": a == b, "first_difference": None if a == b else first}


def _gguf_types(path: Path | str) -> set[str]:
    from mtk.formats.gguf_reader import open_gguf

    g = open_gguf(path)
    types = {t.qtype.name for t in g.tensors if len(t.shape) > 1}
    g.close()
    return types


def _hf_model(hf_dir: Path | str) -> Any:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)


def compare_on_prompts(
    tokenizer: LlamaCppModel, reference: Any, candidate: Any, prompts: Sequence[str] = PROMPTS
) -> dict[str, float]:
    """Logit metrics over ``prompts`` (tokenized by llama.cpp, with BOS) for two logits functions."""
    ref, cand = [], []
    for prompt in prompts:
        ids = tokenizer.tokenize(prompt, add_bos=True)
        ref.append(torch.as_tensor(np.asarray(reference(ids)), dtype=torch.float32))
        cand.append(torch.as_tensor(np.asarray(candidate(ids)), dtype=torch.float32))
    return logit_metrics(torch.cat(ref), torch.cat(cand))


def _check(what: str, tok: dict[str, Any], metrics: dict[str, float], tol: Tolerance) -> dict[str, Any]:
    if not tok["identical"]:
        raise VerificationError(
            f"{what}: tokenizer ids differ from llama.cpp's at token {tok['first_difference']} of the probe text"
        )
    failures = tol.failures(metrics)
    if failures:
        raise VerificationError(f"{what} disagrees with llama.cpp: " + "; ".join(failures))
    return {"tokenizer": tok, "logits": metrics, "tolerance": tol.__dict__}


def verify_import(gguf_path: Path | str, hf_dir: Path | str, prompts: Sequence[str] = PROMPTS) -> dict[str, Any]:
    """The imported checkpoint in transformers against llama.cpp on the original GGUF.

    Raises VerificationError when tokenization differs or the logits are beyond the tolerance for the
    GGUF's tensor types.
    """
    types = _gguf_types(gguf_path)
    tok = compare_tokenizers(gguf_path, hf_dir)
    model = _hf_model(hf_dir)
    stored = model.config.dtype
    lossless = stored == torch.float32 or types <= {"F16" if stored == torch.float16 else "BF16"}
    llm = LlamaCppModel(gguf_path)
    try:
        metrics = compare_on_prompts(llm, llm.logits, lambda ids: hf_logits(model, ids), prompts)
    finally:
        llm.close()
    return _check("imported model", tok, metrics, tolerance_for(types, lossless))


def verify_export(gguf_path: Path | str, source: Path | str, prompts: Sequence[str] = PROMPTS) -> dict[str, Any]:
    """llama.cpp on the exported GGUF, checked two ways.

    - Conversion: against transformers running the weights the GGUF holds (exactly its dequantized
      values). This isolates layout, metadata and tokenizer errors from quantization error, and is what
      fails (VerificationError) beyond the tolerance for the file's tensor types. For float exports of an
      HF folder the GGUF's weights are the source's, and the source model is the reference.
    - Quality (quantized types, or a GGUF source): against the source (transformers on an HF folder,
      llama.cpp on a source GGUF), reported as ``quality`` for the caller to bound.
    """
    from mtk.converters.gguf_to_hf import load_in_memory

    types = _gguf_types(gguf_path)
    float_only = types <= {"F32", "F16", "BF16"}
    from_hf = Path(source).is_dir()
    llm = LlamaCppModel(gguf_path)
    try:
        if from_hf:
            tok = compare_tokenizers(gguf_path, source)
            src_model = _hf_model(source)
            src_logits = lambda ids: hf_logits(src_model, ids)  # noqa: E731
        else:
            src = LlamaCppModel(source)
            tok = _token_report(src.tokenize(PROBE_TEXT), llm.tokenize(PROBE_TEXT))
            src_logits = src.logits
        if float_only and from_hf:
            metrics = compare_on_prompts(llm, src_logits, llm.logits, prompts)
            return _check("exported GGUF", tok, metrics, tolerance_for(types, lossless_dtype=True))
        held = load_in_memory(gguf_path)
        metrics = compare_on_prompts(llm, lambda ids: hf_logits(held, ids), llm.logits, prompts)
        report = _check("exported GGUF", tok, metrics, tolerance_for(types, lossless_dtype=True))
        report["quality"] = compare_on_prompts(llm, src_logits, llm.logits, prompts)
        if not from_hf:
            src.close()
        return report
    finally:
        llm.close()
