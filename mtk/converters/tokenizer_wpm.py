"""BERT's WordPiece ("bert" in GGUF), both ways.

llama.cpp's WPM tokenizer (`llm_tokenizer_wpm_session` in `llama-vocab.cpp`) normalises and splits like
Hugging Face's BertNormalizer + BertPreTokenizer: control characters dropped, optionally NFD with accents
stripped and lower case, every punctuation mark (and every ASCII symbol) and every CJK ideograph a word of its
own, words split at whitespace. It then cuts "▁" + word greedily into the longest pieces of the vocabulary, and
gives [UNK] for a word it cannot cut whole. With `add_special` it puts [CLS] first and [SEP] last.

Accent stripping differs: llama.cpp maps each code point to the first code point of its NFD and drops every
mark (category M), where BertNormalizer decomposes fully and drops only non-spacing marks (Mn). A Hangul syllable
keeps only its initial consonant in llama.cpp, and spacing marks (Mc: Devanagari, Bengali, ... vowel signs)
are dropped. The tokenizer built from a GGUF follows llama.cpp (`_LLAMA_CPP_STRIP`); a BERT tokenizer exported
to GGUF tokenizes such text differently in llama.cpp than in transformers.

The GGUF vocabulary marks word starts instead of continuations (llama.cpp's "phantom space"): Hugging Face's
"word" is "▁word" there and "##ing" is "ing"; control tokens ([CLS], [SEP], ...) are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gguf import TokenType
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from mtk.errors import InvalidFileError, UnsupportedError

WORD_START = "\u2581"  # llama.cpp's phantom space
CONTINUATION = "##"  # Hugging Face's continuing_subword_prefix
# llama.cpp cuts a word of any length; WordPiece gives [UNK] for a word longer than this.
_MAX_WORD_CHARS = 1 << 30
_AS_IS = frozenset({TokenType.CONTROL, TokenType.UNKNOWN})
# After NFD: every mark, and the vowels and final consonants a Hangul syllable decomposes into.
_LLAMA_CPP_STRIP = r"[\p{M}\x{1160}-\x{11FF}]"


def gguf_token(token: str, token_type: int) -> str:
    """A Hugging Face WordPiece token in GGUF's spelling."""
    if token_type in _AS_IS:
        return token
    if token.startswith(CONTINUATION):
        return token[len(CONTINUATION) :]
    return WORD_START + token


def hf_token(token: str, token_type: int) -> str:
    """A GGUF WPM token in Hugging Face's WordPiece spelling."""
    if token_type in _AS_IS:
        return token
    if token.startswith(WORD_START):
        return token[len(WORD_START) :]
    return CONTINUATION + token


def build_tokenizer(
    tokens: Sequence[str],
    types: Sequence[int],
    unk_token: str | None,
    lowercase: bool,
    strip_accents: bool,
) -> Tokenizer:
    """A `tokenizers` WordPiece (ids = positions) that tokenizes like llama.cpp's WPM tokenizer."""
    pieces = [hf_token(token, types[i]) for i, token in enumerate(tokens)]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise InvalidFileError("tokenizer.ggml.tokens holds the same WordPiece token twice")
    model = models.WordPiece(
        vocab=vocab,
        unk_token=unk_token if unk_token is not None else "[UNK]",
        continuing_subword_prefix=CONTINUATION,
        max_input_chars_per_word=_MAX_WORD_CHARS,
    )
    tokenizer = Tokenizer(model)
    bert = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase
    )
    if strip_accents:
        strip = normalizers.Replace(Regex(_LLAMA_CPP_STRIP), "")
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFD(), strip, bert])
    else:
        tokenizer.normalizer = bert
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION, cleanup=True)
    return tokenizer


def post_processor(cls: tuple[str, int], sep: tuple[str, int]) -> processors.TemplateProcessing:
    """[CLS] text [SEP] (and [CLS] a [SEP] b [SEP]), what llama.cpp adds with add_special."""
    return processors.TemplateProcessing(
        single=f"{cls[0]}:0 $A:0 {sep[0]}:0",
        pair=f"{cls[0]}:0 $A:0 {sep[0]}:0 $B:1 {sep[0]}:1",
        special_tokens=[cls, sep],
    )


def is_wordpiece(tokenizer_json: Mapping[str, Any]) -> bool:
    return (tokenizer_json.get("model") or {}).get("type") == "WordPiece"


def normalizer_options(tokenizer_json: Mapping[str, Any]) -> tuple[bool, bool]:
    """(lowercase, strip_accents) of a BERT tokenizer.json that llama.cpp's WPM tokenizer can follow.

    Raises UnsupportedError for a pipeline llama.cpp does not have.
    """
    model = tokenizer_json["model"]
    if model.get("continuing_subword_prefix", CONTINUATION) != CONTINUATION:
        raise UnsupportedError(f"a WordPiece prefix {model['continuing_subword_prefix']!r} has no GGUF form")
    pre = tokenizer_json.get("pre_tokenizer")
    if pre is None or pre.get("type") != "BertPreTokenizer":
        kind = None if pre is None else pre.get("type")
        raise UnsupportedError(f"a WordPiece tokenizer with a {kind} pre-tokenizer has no GGUF form")
    norm = tokenizer_json.get("normalizer")
    llama_cpp_strip = False
    if norm is not None and norm.get("type") == "Sequence" and norm["normalizers"][:2] == _LLAMA_CPP_STRIP_STEPS:
        # The form build_tokenizer writes for llama.cpp's accent stripping.
        llama_cpp_strip, norm = True, norm["normalizers"][2] if len(norm["normalizers"]) == 3 else None
    if norm is None or norm.get("type") != "BertNormalizer":
        kind = None if norm is None else norm.get("type")
        raise UnsupportedError(f"a WordPiece tokenizer with a {kind} normalizer has no GGUF form")
    if not norm.get("clean_text", True) or not norm.get("handle_chinese_chars", True):
        raise UnsupportedError("llama.cpp's WordPiece always cleans text and splits CJK ideographs")
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    return lowercase, llama_cpp_strip or (lowercase if strip is None else bool(strip))


_LLAMA_CPP_STRIP_STEPS = [
    {"type": "NFD"},
    {"type": "Replace", "pattern": {"Regex": _LLAMA_CPP_STRIP}, "content": ""},
]
