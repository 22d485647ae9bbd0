"""What every artifact check shares: the probe text and prompts, tolerances and logit metrics.

Metrics compare two sets of next-token logits for the same token ids, row by row: ``top1`` is the
fraction of positions where the arg-max agrees, ``kl_mean``/``kl_max`` the KL divergence
KL(reference || candidate) in nats, ``max_abs`` the largest absolute logit difference.

No runtime is imported at module level: the bench's GGUF and ONNX children import this module and must not
load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mtk.errors import VerificationError

if TYPE_CHECKING:
    import torch

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


def logit_metrics(reference: torch.Tensor | np.ndarray, candidate: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Compare (positions, vocab) logits; see the module docstring for the metrics."""
    import torch

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


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token id (or the shorter length), None when equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def token_report(a: list[int], b: list[int]) -> dict[str, Any]:
    """Two tokenizations of one text: ``tokens`` (of ``a``), ``identical`` and ``first_difference``."""
    return {"tokens": len(a), "identical": a == b, "first_difference": first_difference(a, b)}
