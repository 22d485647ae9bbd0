"""SentencePiece-style BPE ("llama" in GGUF: Llama 2, Mistral v0.1, Gemma), both ways.

GGUF keeps such a tokenizer as pieces with scores and types; llama.cpp's SPM tokenizer turns spaces into ▁
(after prepending one space to every run of text when `tokenizer.ggml.add_space_prefix`, default true),
splits the text into characters, and repeatedly merges the adjacent pair whose concatenation is the
best-scored piece (leftmost on ties); characters no piece covers become byte pieces <0xNN>.

`tokenizers` has no score-driven model, but a BPE whose merges list *every* split of every piece into two
pieces, ordered by the piece's score, merges in the same order. That is how transformers converts a
SentencePiece model (`generate_merges`) and how this module builds one from GGUF scores. Going back, a piece's
score is minus the rank of the first merge that makes it, which reproduces the merge order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gguf import TokenType
from tokenizers import Tokenizer, decoders, models, normalizers

from mtk.errors import InvalidFileError, UnsupportedError

SPACE = "▁"  # U+2581, SentencePiece's visible space
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
# Pieces that never come out of a merge: SentencePiece matches them whole or not at all.
_NOT_MERGED = frozenset({TokenType.CONTROL, TokenType.UNKNOWN, TokenType.BYTE})


def merges_from_scores(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> list[tuple[str, str]]:
    """Every split of every mergeable piece into two mergeable pieces, best-scored piece first.

    Ties are broken as transformers' `generate_merges` breaks them: longer left part first, then longer right
    part, then the piece's id and the parts' ids.
    """
    ids = {token: i for i, token in enumerate(tokens) if types[i] not in _NOT_MERGED}
    found = []
    for piece, i in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                found.append((-scores[i], -len(left), -len(right), i, ids[left], ids[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def scores_from_merges(tokens: Sequence[str], merges: Sequence[tuple[str, str]], types: Sequence[int]) -> list[float]:
    """Scores that make llama.cpp merge in the order of `merges`.

    A piece scores minus the rank of the first merge that makes it; pieces no merge makes (single characters)
    score below every merge; control, unknown and byte pieces score 0, as in Llama 2's GGUF.
    """
    first_rank: dict[str, int] = {}
    for rank, (left, right) in enumerate(merges):
        first_rank.setdefault(left + right, rank)
    scores = []
    for i, token in enumerate(tokens):
        if types[i] in _NOT_MERGED:
            scores.append(0.0)
        else:
            scores.append(-float(first_rank.get(token, len(merges) + i)))
    return scores


def build_tokenizer(
    tokens: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    unk_token: str | None,
    add_space_prefix: bool,
) -> Tokenizer:
    """A `tokenizers` BPE with byte fallback that tokenizes like llama.cpp's SPM tokenizer."""
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise InvalidFileError("tokenizer.ggml.tokens holds the same token twice")
    if len(scores) != len(tokens) or len(types) != len(tokens):
        raise InvalidFileError("tokenizer.ggml.scores and token_type must have one entry per token")
    merges = merges_from_scores(tokens, scores, types)
    model = models.BPE(vocab=vocab, merges=merges, unk_token=unk_token, byte_fallback=True, fuse_unk=True)
    tokenizer = Tokenizer(model)
    # Prepend is applied to every run of text between added tokens, as llama.cpp prefixes a space to every
    # text fragment that follows a special token (or starts the input).
    escape = normalizers.Replace(" ", SPACE)
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), escape]) if add_space_prefix else escape
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def is_sentencepiece_style(tokenizer_json: Mapping[str, Any]) -> bool:
    """Whether a BPE tokenizer.json escapes spaces as ▁ (SentencePiece-style) rather than byte-level."""
    if tokenizer_json["model"].get("byte_fallback"):
        return True
    return _escapes_spaces(tokenizer_json.get("normalizer")) or _metaspace(tokenizer_json) is not None


def has_space_prefix(tokenizer_json: Mapping[str, Any]) -> bool:
    """Whether the tokenizer.json prepends ▁ to the text (Llama 2) or not (Gemma).

    Raises UnsupportedError for steps llama.cpp's SPM tokenizer cannot do.
    """
    normalizer_steps = _normalizer_steps(tokenizer_json.get("normalizer"))
    prefix = False
    for step in normalizer_steps:
        if step.get("type") == "Prepend" and step.get("prepend") == SPACE:
            prefix = True
        elif not _is_space_escape(step):
            raise UnsupportedError(f"the normalizer step {dict(step)} has no GGUF form")
    pre = tokenizer_json.get("pre_tokenizer")
    metaspace = _metaspace(tokenizer_json)
    escapes = _escapes_spaces(tokenizer_json.get("normalizer"))
    if metaspace is not None:
        # prepend_scheme "first" (transformers' legacy=False) skips the ▁ before text that starts with a space
        # or follows a special token; llama.cpp always adds it, so such texts may differ by that one ▁.
        prefix = prefix or metaspace.get("prepend_scheme", "always") in ("always", "first")
    elif pre is not None and not (escapes and _splits_on_space(pre)):
        raise UnsupportedError(
            f"a SentencePiece-style tokenizer with a {pre.get('type')} pre-tokenizer has no GGUF form"
        )
    if metaspace is None and not escapes:
        raise UnsupportedError("a SentencePiece-style tokenizer must escape spaces as ▁ to have a GGUF form")
    return prefix


def _normalizer_steps(normalizer: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if normalizer is None:
        return []
    if normalizer.get("type") == "Sequence":
        return [step for inner in normalizer["normalizers"] for step in _normalizer_steps(inner)]
    return [normalizer]


def _is_space_escape(step: Mapping[str, Any]) -> bool:
    return step.get("type") == "Replace" and step.get("pattern") == {"String": " "} and step.get("content") == SPACE


def _escapes_spaces(normalizer: Mapping[str, Any] | None) -> bool:
    return any(_is_space_escape(step) for step in _normalizer_steps(normalizer))


def _splits_on_space(pre_tokenizer: Mapping[str, Any]) -> bool:
    # Gemma's Split(" ") runs after its normalizer has replaced every space: it never splits anything.
    return pre_tokenizer.get("type") == "Split" and pre_tokenizer.get("pattern") == {"String": " "}


def _metaspace(tokenizer_json: Mapping[str, Any]) -> Mapping[str, Any] | None:
    pre = tokenizer_json.get("pre_tokenizer")
    if pre is not None and pre.get("type") == "Metaspace" and pre.get("replacement", SPACE) == SPACE:
        return pre
    return None
