"""Perplexity on fixed token windows, the same windows for every runtime so that figures compare.

A window of ``ctx`` tokens is scored on all its positions but the first: the negative log-likelihood of
token ``i + 1`` under the logits at position ``i``. Perplexity is ``exp(total NLL / scored tokens)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

Logits = Callable[[Sequence[int]], torch.Tensor | np.ndarray]


def token_windows(ids: Sequence[int], ctx: int, count: int) -> list[list[int]]:
    """``count`` consecutive, non-overlapping windows of ``ctx`` tokens from the start of ``ids``."""
    if len(ids) < ctx * count:
        raise ValueError(f"need {ctx * count} tokens for {count} windows of {ctx}, the text has {len(ids)}")
    return [list(ids[i * ctx : (i + 1) * ctx]) for i in range(count)]


def window_nll(logits: torch.Tensor | np.ndarray, ids: Sequence[int]) -> tuple[float, int]:
    """Sum of NLL over positions 1.. of one window, and how many tokens were scored."""
    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)[:-1]
    target = torch.tensor(list(ids[1:]))
    nll = torch.nn.functional.cross_entropy(lg, target, reduction="sum")
    return float(nll), len(ids) - 1


def perplexity(logits_fn: Logits, windows: Sequence[Sequence[int]]) -> float:
    total, count = 0.0, 0
    for w in windows:
        nll, n = window_nll(logits_fn(w), w)
        total += nll
        count += n
    return math.exp(total / count)
