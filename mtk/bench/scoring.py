"""Perplexity, KL divergence and top-1 agreement on llama.cpp's perplexity windows, in numpy only.

The child processes that measure an artifact report their own peak memory, so this module must not pull
in torch just for arithmetic.

Windows follow llama.cpp's ``perplexity`` tool (tools/perplexity/perplexity.cpp), so that figures compare
with ``llama-perplexity -c CTX --chunks N``:

- the whole text is tokenized once, with BOS in front when the vocabulary adds one;
- the ids are cut into consecutive chunks of ``ctx`` tokens from the start; when the vocabulary adds BOS,
  each chunk's first token is replaced by BOS;
- each chunk is evaluated in one fresh pass, and only its second half is scored: the logits at positions
  ``ctx // 2 .. ctx - 2`` predict tokens ``ctx // 2 + 1 .. ctx - 1``, so ``ctx - ctx // 2 - 1`` tokens per
  chunk (255 for ``ctx = 512``), and every scored token has at least ``ctx // 2`` tokens of context.

Perplexity is ``exp(total NLL / scored tokens)``. KL is KL(reference || artifact) in nats per scored
position, over the full vocabulary; top-1 is the fraction of scored positions where both arg-maxes agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Rows of logits turned into float64 log-probabilities at a time: bounds the scratch memory to
# ROWS * vocab * 8 bytes (12 MB for a 49k vocabulary) so that it barely shows in the peak RSS.
ROWS = 32


def first_scored(ctx: int) -> int:
    """Position of the first logits row that is scored in a window of ``ctx`` tokens."""
    return ctx // 2


def scored_count(ctx: int) -> int:
    """Tokens scored per window: positions ``ctx // 2 .. ctx - 2`` each predict the next token."""
    return ctx - ctx // 2 - 1


def make_windows(ids: Sequence[int], ctx: int, count: int, bos_id: int | None) -> np.ndarray:
    """``count`` windows ``(count, ctx)`` int64 cut from the start of ``ids``; BOS replaces each first token.

    ``bos_id`` is None when the vocabulary does not add BOS (then windows are plain slices).
    """
    if ctx < 4:
        raise ValueError(f"a window needs at least 4 tokens, got ctx={ctx}")
    if count < 1:
        raise ValueError(f"need at least one window, got {count}")
    if len(ids) < ctx * count:
        raise ValueError(f"the text has {len(ids)} tokens; {count} windows of {ctx} need {ctx * count}")
    windows = np.asarray(ids[: ctx * count], dtype=np.int64).reshape(count, ctx).copy()
    if bos_id is not None:
        windows[:, 0] = bos_id
    return windows


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``(rows, vocab)`` logits, computed in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class Totals:
    """Sums over every scored position of every window seen so far."""

    nll: float = 0.0
    tokens: int = 0
    kl: list[np.ndarray] = field(default_factory=list)
    top1_hits: int = 0

    def summary(self) -> dict[str, float | None]:
        """``ppl``, ``nll_mean`` and, when a reference was compared, ``kl_mean``/``kl_max``/``kl_p99``/``top1``."""
        out: dict[str, float | None] = {
            "ppl": float(np.exp(self.nll / self.tokens)),
            "nll_mean": self.nll / self.tokens,
        }
        if self.kl:
            kl = np.concatenate(self.kl)
            out.update(
                kl_mean=float(kl.mean()),
                kl_max=float(kl.max()),
                kl_p99=float(np.quantile(kl, 0.99)),
                top1=self.top1_hits / self.tokens,
            )
        else:
            out.update(kl_mean=None, kl_max=None, kl_p99=None, top1=None)
        return out


def score_window(
    logits: np.ndarray,
    window: np.ndarray,
    totals: Totals,
    ref_logp: np.ndarray | None = None,
    ref_top1: np.ndarray | None = None,
    out_logp: np.ndarray | None = None,
) -> None:
    """Add one window's scored positions to ``totals``.

    ``logits``: ``(ctx, vocab)`` float32 for ``window`` ``(ctx,)``. ``ref_logp`` ``(scored, vocab)`` float16
    and ``ref_top1`` ``(scored,)`` int: the reference's log-probabilities and arg-max on the same positions,
    compared when given. ``out_logp`` ``(scored, vocab)`` float16: filled with this window's log-probabilities
    (the reference run writes its cache this way).
    """
    ctx = len(window)
    first, n = first_scored(ctx), scored_count(ctx)
    if logits.shape[0] != ctx:
        raise ValueError(f"expected logits for {ctx} positions, got {logits.shape[0]}")
    targets = window[first + 1 :]
    for r in range(0, n, ROWS):
        rows = slice(r, min(r + ROWS, n))
        lp = log_softmax(logits[first + rows.start : first + rows.stop])
        totals.nll -= float(lp[np.arange(lp.shape[0]), targets[rows]].sum())
        if out_logp is not None:
            out_logp[rows] = lp.astype(np.float16)
        if ref_logp is not None and ref_top1 is not None:
            # The cache holds float16: renormalise so the reference is an exact distribution again.
            ref = log_softmax(ref_logp[rows])
            totals.kl.append((np.exp(ref) * (ref - lp)).sum(axis=-1))
            totals.top1_hits += int((lp.argmax(axis=-1) == ref_top1[rows]).sum())
    totals.tokens += n


def reference_top1(logits: np.ndarray, ctx: int) -> np.ndarray:
    """Arg-max ``(scored,)`` int32 of the scored rows of one window's logits (kept beside the float16 cache,
    so that rounding the cache can never turn a near-tie into a top-1 disagreement)."""
    first = first_scored(ctx)
    return np.asarray(logits[first : first + scored_count(ctx)].argmax(axis=-1), dtype=np.int32)
