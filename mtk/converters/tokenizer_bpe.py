"""Byte-level BPE ("gpt2" in GGUF): llama.cpp's pre-tokenizer types as `tokenizers` pipelines, both ways.

llama.cpp does not store a BPE tokenizer's pre-tokenizer in the GGUF; it stores a name, `tokenizer.ggml.pre`,
and `llama-vocab.cpp` maps the name to a list of regexes that split the text one after the other (pieces a
regex does not match are kept as pieces too), then maps every byte to a printable character (GPT-2's byte
encoding) and applies the ranked merges inside each piece. In `tokenizers` the same pipeline is
`Sequence([Split(regex_1, "isolated"), ..., ByteLevel(use_regex=False)])` with a BPE model.

The regexes below are copied verbatim from llama.cpp's `llama-vocab.cpp` (the version vendored by
llama-cpp-python 0.3.36), so the Hugging Face side splits exactly where llama.cpp does; Oniguruma (the
`tokenizers` regex engine) reads them with the same meaning. Going from Hugging Face to GGUF, a tokenizer's
own regexes are rewritten to llama.cpp's spelling (`_HF_SPELLINGS`) and looked up in the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from mtk.errors import InvalidFileError, UnsupportedError, quoted

# GPT-2's split regex (`ByteLevel(use_regex=True)` in tokenizers, which adds a final `|\s+`: the same splits,
# since llama.cpp keeps unmatched text as pieces).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SEED_CODER = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
BAILINGMOE = (
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
)
MINICPM5 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
UFAKZEKA = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# llama.cpp's rewrite of GPT-4o's (and Tekken's) case-aware regex: a letter that is not a-z stands for
# \p{Lu}..., one that is not A-Z for \p{Ll}... (exact for ASCII; every other letter counts as both).
_UPPER = r"((?=[\p{L}])([^a-z]))"
_LOWER = r"((?=[\p{L}])([^A-Z]))"
GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEEPSEEK3 = (
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CJK = "[一-龥ࠀ-一가-\ud7ff]+"
_POOR_PUNCT = r" ?[^(\s|.,!?…。，、।۔،)]+"


@dataclass(frozen=True)
class PreTokenizerType:
    """One `tokenizer.ggml.pre` value and what llama.cpp does for it."""

    name: str
    regexes: tuple[str, ...]  # llama.cpp's regex_exprs, applied in order
    source: str  # a model family that ships GGUFs with this name
    ignore_merges: bool = False  # a piece that is a whole vocabulary entry is taken without merging
    clean_spaces: bool = True  # llama.cpp's clean_spaces, HF's clean_up_tokenization_spaces
    add_bos: bool = False  # llama.cpp's default when tokenizer.ggml.add_bos_token is absent


# Names sharing regexes are listed most common first: Hugging Face -> GGUF picks the first row whose
# ignore_merges and clean_spaces agree with the tokenizer's.
PRE_TOKENIZER_TYPES: tuple[PreTokenizerType, ...] = (
    PreTokenizerType("llama-bpe", (LLAMA3,), "Llama 3", ignore_merges=True, add_bos=True),
    PreTokenizerType("llama3", (LLAMA3,), "Llama 3 (older name)", ignore_merges=True, add_bos=True),
    PreTokenizerType("falcon3", (LLAMA3,), "Falcon 3", ignore_merges=True, add_bos=True),
    PreTokenizerType("dbrx", (LLAMA3,), "DBRX"),
    PreTokenizerType("smaug-bpe", (LLAMA3,), "Smaug"),
    PreTokenizerType("qwen2", (QWEN2,), "Qwen 2 / 2.5 / 3", clean_spaces=False),
    PreTokenizerType("deepseek-r1-qwen", (QWEN2,), "DeepSeek-R1 distilled Qwen", clean_spaces=False),
    PreTokenizerType("stablelm2", (QWEN2,), "StableLM 2"),
    PreTokenizerType("qwen35", (QWEN35,), "Qwen 3.5", clean_spaces=False),
    PreTokenizerType("smollm", (r"\p{N}", GPT2), "SmolLM / SmolLM2", clean_spaces=False),
    PreTokenizerType("command-r", (r"\p{N}", GPT2), "Command R", clean_spaces=False),
    PreTokenizerType("starcoder", (r"\p{N}", GPT2), "StarCoder"),
    PreTokenizerType("refact", (r"\p{N}", GPT2), "Refact"),
    PreTokenizerType("codeshell", (r"\p{N}", GPT2), "CodeShell"),
    PreTokenizerType("exaone", (r"\p{N}", GPT2), "EXAONE 3"),
    PreTokenizerType("minerva-7b", (r"\p{N}", GPT2), "Minerva"),
    PreTokenizerType("gpt-2", (GPT2,), "GPT-2"),
    PreTokenizerType("phi-2", (GPT2,), "Phi-2"),
    PreTokenizerType("mpt", (GPT2,), "MPT"),
    PreTokenizerType("olmo", (GPT2,), "OLMo"),
    PreTokenizerType("jais", (GPT2,), "Jais"),
    PreTokenizerType("exaone4", (GPT2,), "EXAONE 4"),
    PreTokenizerType("trillion", (GPT2,), "Trillion", clean_spaces=False),
    PreTokenizerType(
        "default",
        (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
        "llama.cpp's fallback for a missing name",
    ),
    PreTokenizerType("falcon", (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"), "Falcon"),
    PreTokenizerType(
        "deepseek-coder",
        (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
        "DeepSeek Coder",
        clean_spaces=False,
    ),
    PreTokenizerType(
        "deepseek-v3", (r"\p{N}{1,3}", "[一-龥\u3040-ゟ゠-ヿ]+", DEEPSEEK3), "DeepSeek V3", clean_spaces=False
    ),
    PreTokenizerType("poro-chat", (_POOR_PUNCT,), "Poro", clean_spaces=False),
    PreTokenizerType("bloom", (_POOR_PUNCT,), "BLOOM"),
    PreTokenizerType("viking", (_POOR_PUNCT, r"\p{N}"), "Viking", clean_spaces=False),
    PreTokenizerType("chatglm-bpe", (LLAMA3,), "ChatGLM 4"),
    PreTokenizerType("seed-coder", (SEED_CODER,), "Seed-Coder", clean_spaces=False),
    PreTokenizerType("bailingmoe", (BAILINGMOE,), "Ling (BailingMoE)", clean_spaces=False),
    PreTokenizerType("minicpm5", (r"\p{N}{1,3}", MINICPM5), "MiniCPM 5", ignore_merges=True),
    PreTokenizerType("ufakzeka", (UFAKZEKA,), "Ufakzeka", clean_spaces=False),
    PreTokenizerType("gpt-4o", (GPT4O,), "GPT-4o tokenizer (o200k)", clean_spaces=False),
    PreTokenizerType("llama4", (GPT4O,), "Llama 4", clean_spaces=False),
    PreTokenizerType("tekken", (TEKKEN,), "Mistral Tekken", ignore_merges=True, clean_spaces=False, add_bos=True),
)


def _index(rows: Sequence[PreTokenizerType]) -> dict[str, PreTokenizerType]:
    index: dict[str, PreTokenizerType] = {}
    for row in rows:
        if row.name in index:
            raise ValueError(f"pre-tokenizer type {row.name!r} is listed twice")
        index[row.name] = row
    return index


PRE_TOKENIZERS_BY_NAME: dict[str, PreTokenizerType] = _index(PRE_TOKENIZER_TYPES)

# How Hugging Face tokenizer.json files spell llama.cpp's regexes: llama.cpp rewrote the case-insensitive
# contractions (everywhere, see _canonical) and the \p{Lu}-style classes, which its own regex engine lacks.
_HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_HF_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_HF_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_HF_SPELLINGS: dict[str, str] = {
    GPT2 + r"|\s+": GPT2,
    (
        rf"[^\r\n\p{{L}}\p{{N}}]?{_HF_UPPER}*{_HF_LOWER}+{_CONTRACTIONS}?"
        rf"|[^\r\n\p{{L}}\p{{N}}]?{_HF_UPPER}+{_HF_LOWER}*{_CONTRACTIONS}?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ): GPT4O,
    (
        rf"[^\r\n\p{{L}}\p{{N}}]?{_HF_UPPER}*{_HF_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_HF_UPPER}+{_HF_LOWER}*"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ): TEKKEN,
}


def pre_tokenizer_type(name: str) -> PreTokenizerType:
    try:
        return PRE_TOKENIZERS_BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(PRE_TOKENIZERS_BY_NAME))
        raise UnsupportedError(f"GGUF pre-tokenizer {quoted(name)} is not supported; supported: {known}") from None


def build_tokenizer(tokens: Sequence[str], merges: Sequence[str], pre: PreTokenizerType) -> Tokenizer:
    """A `tokenizers` byte-level BPE with the vocabulary (ids = positions) and ranked merges ("a b")."""
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise InvalidFileError("tokenizer.ggml.tokens holds the same token twice")
    pairs = []
    for merge in merges:
        # llama.cpp splits at the first space after the first character ("  " merges into a space token).
        cut = merge.find(" ", 1)
        if cut < 0:
            raise InvalidFileError(f"tokenizer.ggml.merges entry {quoted(merge)} is not two tokens")
        pair = merge[:cut], merge[cut + 1 :]
        # tokenizers panics (a BaseException, past any handler) on a merge whose parts or result it lacks.
        missing = next((t for t in (*pair, pair[0] + pair[1]) if t not in vocab), None)
        if missing is not None:
            raise InvalidFileError(
                f"tokenizer.ggml.merges entry {quoted(merge)} needs {quoted(missing)}, which is not in the vocabulary"
            )
        pairs.append(pair)
    try:
        model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre.ignore_merges)
    except Exception as exc:  # tokenizers raises a bare Exception for a merge of unknown tokens
        raise InvalidFileError(f"tokenizer.ggml.merges do not fit tokenizer.ggml.tokens: {quoted(exc, 120)}") from exc
    tokenizer = Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in pre.regexes]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def is_byte_level(tokenizer_json: Mapping[str, Any]) -> bool:
    """Whether a tokenizer.json maps bytes to GPT-2's printable characters before its model."""
    return any(step.get("type") == "ByteLevel" for step in _steps(tokenizer_json.get("pre_tokenizer")))


def identify_pre_tokenizer(tokenizer_json: Mapping[str, Any], clean_spaces: bool | None = None) -> PreTokenizerType:
    """The llama.cpp pre-tokenizer type whose regexes are the ones this tokenizer.json splits with.

    Raises UnsupportedError when the pipeline holds a step llama.cpp cannot do or its regexes match no type.
    """
    if tokenizer_json.get("normalizer") not in (None, {"type": "NFC"}):
        # Qwen's NFC is accepted (llama.cpp skips it; it changes only text that is not NFC already).
        kind = tokenizer_json["normalizer"].get("type")
        raise UnsupportedError(f"a byte-level BPE tokenizer with a {kind} normalizer has no GGUF form")
    regexes = tuple(_canonical(r) for r in _split_regexes(tokenizer_json.get("pre_tokenizer")))
    rows = [row for row in PRE_TOKENIZER_TYPES if row.regexes == regexes]
    if not rows:
        raise UnsupportedError(f"no llama.cpp pre-tokenizer type splits with the regexes {list(regexes)}")
    ignore_merges = bool(tokenizer_json["model"].get("ignore_merges", False))

    def fit(row: PreTokenizerType) -> tuple[bool, bool]:
        return (row.ignore_merges != ignore_merges, clean_spaces is not None and row.clean_spaces != clean_spaces)

    return min(rows, key=fit)  # min keeps the first of equally good rows


def _canonical(regex: str) -> str:
    # Some tokenizer.json files hold CR and LF themselves where others write \r and \n.
    regex = regex.replace("\r", r"\r").replace("\n", r"\n").replace(_HF_CONTRACTIONS, _CONTRACTIONS)
    return _HF_SPELLINGS.get(regex, regex)


def _steps(pre_tokenizer: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if pre_tokenizer is None:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return [step for inner in pre_tokenizer["pretokenizers"] for step in _steps(inner)]
    return [pre_tokenizer]


def _split_regexes(pre_tokenizer: Mapping[str, Any] | None) -> list[str]:
    """The regexes of a Split/Digits/ByteLevel pipeline, in order, in tokenizer.json's spelling."""
    steps = _steps(pre_tokenizer)
    if not steps or steps[-1].get("type") != "ByteLevel":
        raise UnsupportedError("a byte-level BPE tokenizer must end its pre-tokenizer with ByteLevel")
    regexes = []
    for step in steps:
        kind = step.get("type")
        if kind == "Split" and "Regex" in step["pattern"] and step["behavior"] == "Isolated":
            if step.get("invert"):
                raise UnsupportedError("an inverted Split pre-tokenizer has no GGUF form")
            regexes.append(step["pattern"]["Regex"])
        elif kind == "Digits":
            regexes.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif kind == "ByteLevel" and step is steps[-1]:
            if step.get("add_prefix_space"):
                raise UnsupportedError("ByteLevel(add_prefix_space=True) has no GGUF form")
            if step.get("use_regex", True):
                regexes.append(GPT2 + r"|\s+")
        else:
            raise UnsupportedError(f"the pre-tokenizer step {dict(step)} has no GGUF form")
    return regexes
