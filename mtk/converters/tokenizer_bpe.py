"""BPE ("gpt2" and "gemma4" in GGUF): llama.cpp's pre-tokenizer types as `tokenizers` pipelines, both ways.

llama.cpp does not store a BPE tokenizer's pre-tokenizer in the GGUF; it stores a name, `tokenizer.ggml.pre`,
and `llama-vocab.cpp` maps the name to a list of regexes that split the text one after the other (pieces a
regex does not match are kept as pieces too), then maps every byte to a printable character (GPT-2's byte
encoding) and applies the ranked merges inside each piece. In `tokenizers` the same pipeline is
`Sequence([Split(regex_1, "isolated"), ..., ByteLevel(use_regex=False)])` with a BPE model. A few types
(Gemma 4's) skip the byte encoding: spaces become ▁, merges run on raw UTF-8 and missing characters become
<0xNN> byte pieces, a BPE with byte fallback in `tokenizers`.

The regexes below are copied verbatim from llama.cpp's `llama-vocab.cpp` (the version vendored by
llama-cpp-python 0.3.36). Oniguruma (the `tokenizers` regex engine) reads most of them with llama.cpp's meaning;
where llama.cpp runs something else (code in `unicode.cpp` named by a pseudo-regex, letter classes collapsed),
`_as_run` gives the regex that splits as llama.cpp does. Going from Hugging Face to GGUF, a tokenizer's own
regexes are rewritten to llama.cpp's spelling (`_HF_SPELLINGS`) and looked up in the table by what they run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from mtk.converters.tokenizer_spm import SPACE
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
_CJK = "[一-龥ࠀ-一가-\ud7ff]+"
_POOR_PUNCT = r" ?[^(\s|.,!?…。，、।۔،)]+"
JAIS2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)"
    r"|\s{1,2}(?!\S)|\s{1}"
)
# DeepSeek LLM's letters (Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee, ... by code point range), escaped:
# several of these code points have NFC lookalikes that an editor could silently substitute.
_DEEPSEEK_LETTERS = (
    "A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377"
    "\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-"
    "\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-"
    "\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-"
    "\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-"
    "\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2"
    "\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-"
    "\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943"
)
DEEPSEEK_LLM = (
    r"[\r\n]",
    rf"\s?[{_DEEPSEEK_LETTERS}]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    r"\s+$",
    _CJK,
    r"\p{N}+",
)
_PUNCT_WORD = r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
DEEPSEEK3 = _PUNCT_WORD + r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPARK2_5 = _PUNCT_WORD + r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"
_KANA_HAN = "[一-龥\u3040-ゟ゠-ヿ]+"
# GPT-4o's regex as its tokenizer.json spells it, with llama.cpp's contractions; llama.cpp runs these classes
# as \p{L} (see _as_run).
_CASED = (
    rf"[^\r\n\p{{L}}\p{{N}}]?[\p{{Lu}}\p{{Lt}}\p{{Lm}}\p{{Lo}}\p{{M}}]*[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{Lu}}\p{{Lt}}\p{{Lm}}\p{{Lo}}\p{{M}}]+[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]*{_CONTRACTIONS}?"
)
YOUTU = (
    "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|" + _KANA_HAN,
    _CASED + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
TINY_AYA_DIGITS = r"\d{1,3}(?=(?:\d{3})*\b)"
TINY_AYA = _CASED + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_UPPER_M = r"((?=[\p{L}\p{M}])([^a-z]))"
_LOWER_M = r"((?=[\p{L}\p{M}])([^A-Z]))"
GRANITE_EMB_MULTI = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER_M}*{_LOWER_M}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER_M}+{_LOWER_M}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAMELEON = (
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    "([\\t\\n]|    |  )",
    r"\p{N}",
    r"[\p{P}!-/:-@\[-`{-~]",
    GPT2,
)
EXAONE_MOE = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
    r"|\s*[\r\n]|\s+(?!\S)|\s+"
)
AFMOE_DIGITS = r"\p{AFMoE_digits}"  # a name for code in llama.cpp's unicode.cpp, not a regex (see _as_run)
AFMOE_SCRIPTS = "[一-鿿㐀-䶿豈-\ufaff\u3040-ゟ゠-ヿ･-ﾟ⼀-\u2fdfเ-\u0e7f\u0e80-\u0effក-\u17ffက-႟ꩠ-ꩿꧠ-\ua9ff가-\ud7afᄀ-ᇿ]+"
NEWLINES = r"[^\n]+|[\n]+"
KIMI_K2 = r"\p{Han}+"  # names code in unicode.cpp that runs Kimi K2's whole regex (see _as_run)
SUPERBPE_THOUSANDS = r"(?=(\d{3})+(?!\d))"  # matches nothing: splits before each group of three digits

# What llama.cpp runs in place of a regex, where that is not the regex itself. For AFMoE's digits (and, by
# llama.cpp's choice, Tiny Aya's) it runs code: each run of digits is cut into threes from the right, and the
# text since the previous piece joins the first cut ("ab1234" -> "ab1", "234").
_DIGITS_IN_THREES = r"[^\p{N}]*\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))"
# For Kimi K2 it runs code for K2's regex that knows no case (any letter but Han where K2 asks for upper- or
# lower-case ones), leaves marks out of words and takes Han as unicode.cpp's ranges. Its std::regex reads \d
# as [0-9] only.
_HAN = (
    "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
    "\U0002b820-\U0002ceaf\U0002ceb0-\U0002ebef\uf900-\ufaff\U0002f800-\U0002fa1f"
)
_KIMI_K2_RUN = (
    rf"[{_HAN}]+|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{_HAN}]]+{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA_CPP_RUNS: dict[str, str] = {
    KIMI_K2: _KIMI_K2_RUN,
    AFMOE_DIGITS: _DIGITS_IN_THREES,
    TINY_AYA_DIGITS: _DIGITS_IN_THREES,
    SUPERBPE_THOUSANDS: "(?=([0-9]{3})+(?![0-9]))",
}
# llama.cpp's regex engine keeps one category per code point, so \p{Lu}, \p{Ll}, \p{Lt}, \p{Lm} and \p{Lo} all
# match any letter there.
_LETTER_SUBCLASS = re.compile(r"\\p\{L[ultmo]\}")


def _as_run(regex: str) -> str:
    """The regex, in Oniguruma, that splits the way llama.cpp splits with `regex`."""
    return _LETTER_SUBCLASS.sub(r"\\p{L}", _LLAMA_CPP_RUNS.get(regex, regex))


@dataclass(frozen=True)
class PreTokenizerType:
    """One `tokenizer.ggml.pre` value and what llama.cpp does for it."""

    name: str
    regexes: tuple[str, ...]  # llama.cpp's regex_exprs, applied in order
    source: str  # a model family that ships GGUFs with this name
    ignore_merges: bool = False  # a piece that is a whole vocabulary entry is taken without merging
    clean_spaces: bool = True  # llama.cpp's clean_spaces, HF's clean_up_tokenization_spaces
    add_bos: bool = False  # llama.cpp's default when tokenizer.ggml.add_bos_token is absent
    # SentencePiece-style BPE on raw UTF-8 (Gemma 4, Sarvam): no GPT-2 byte encoding, <0xNN> byte pieces for
    # what the vocabulary lacks, and (escape_spaces) spaces written as ▁ before splitting.
    byte_encode: bool = True
    escape_spaces: bool = False
    # Gemma 4: a piece of newlines only that is a vocabulary entry is taken whole, and bos is always added.
    gemma4: bool = False
    # Only for tokenizer.ggml.model "whitespace", which drops whitespace (and may lower-case) before splitting.
    drops_whitespace: bool = False

    @property
    def splits(self) -> tuple[str, ...]:
        """The regexes that split as llama.cpp splits for this type, in Oniguruma's reading."""
        return tuple(_as_run(regex) for regex in self.regexes)


# Every tokenizer.ggml.pre value llama.cpp 0.3.36 knows for BPE (`llama_vocab::impl::load`), one row per name.
# "whitespace" belongs to the "whitespace" tokenizer model (which drops whitespace first); on a "gpt2"
# vocabulary llama.cpp aborts at the first run of two spaces. Names sharing regexes are listed most common
# first: Hugging Face -> GGUF picks the first row whose ignore_merges and clean_spaces agree with the tokenizer's.
_Row = PreTokenizerType
PRE_TOKENIZER_TYPES: tuple[PreTokenizerType, ...] = (
    _Row("llama-bpe", (LLAMA3,), "Llama 3", ignore_merges=True, add_bos=True),
    _Row("llama3", (LLAMA3,), "Llama 3 (older name)", ignore_merges=True, add_bos=True),
    _Row("llama-v3", (LLAMA3,), "Llama 3 (older name)", ignore_merges=True, add_bos=True),
    _Row("falcon3", (LLAMA3,), "Falcon 3", ignore_merges=True, add_bos=True),
    _Row("falcon-h1", (LLAMA3,), "Falcon-H1", ignore_merges=True, add_bos=True),
    _Row("pixtral", (LLAMA3,), "Pixtral", ignore_merges=True, add_bos=True),
    _Row("midm-2.0", (LLAMA3,), "Mi:dm 2.0", ignore_merges=True, add_bos=True),
    _Row("lfm2", (LLAMA3,), "LFM2", ignore_merges=True, add_bos=True),
    _Row("jina-v5-nano", (LLAMA3,), "Jina embeddings v5 nano", ignore_merges=True, add_bos=True),
    _Row("dbrx", (LLAMA3,), "DBRX"),
    _Row("smaug-bpe", (LLAMA3,), "Smaug"),
    _Row("chatglm-bpe", (LLAMA3,), "ChatGLM 4"),
    _Row("glm4", (LLAMA3,), "GLM 4 / 4.5", ignore_merges=True),
    _Row("glm5", (LLAMA3,), "GLM 5", ignore_merges=True),
    _Row("jais-2", (JAIS2,), "Jais 2"),
    _Row("qwen2", (QWEN2,), "Qwen 2 / 2.5 / 3", clean_spaces=False),
    _Row("deepseek-r1-qwen", (QWEN2,), "DeepSeek-R1 distilled Qwen", clean_spaces=False),
    _Row("kormo", (QWEN2,), "KORMo", clean_spaces=False),
    _Row("f2llmv2", (QWEN2,), "F2LLM v2", clean_spaces=False),
    _Row("hunyuan", (QWEN2,), "Hunyuan-A13B", clean_spaces=False),
    _Row("solar-open", (QWEN2,), "Solar Open", clean_spaces=False),
    _Row("grok-2", (QWEN2,), "Grok 2", clean_spaces=False),
    _Row("stablelm2", (QWEN2,), "StableLM 2"),
    _Row("megrez", (QWEN2,), "Megrez"),
    _Row("laguna", (NEWLINES, QWEN2), "Laguna", clean_spaces=False),
    _Row("qwen35", (QWEN35,), "Qwen 3.5", clean_spaces=False),
    _Row("smollm", (r"\p{N}", GPT2), "SmolLM / SmolLM2", clean_spaces=False),
    _Row("command-r", (r"\p{N}", GPT2), "Command R", clean_spaces=False),
    _Row("starcoder", (r"\p{N}", GPT2), "StarCoder"),
    _Row("refact", (r"\p{N}", GPT2), "Refact"),
    _Row("codeshell", (r"\p{N}", GPT2), "CodeShell"),
    _Row("exaone", (r"\p{N}", GPT2), "EXAONE 3"),
    _Row("minerva-7b", (r"\p{N}", GPT2), "Minerva"),
    _Row("mellum2", (r"\p{N}", GPT2), "Mellum 2"),
    _Row("gpt-2", (GPT2,), "GPT-2"),
    _Row("phi-2", (GPT2,), "Phi-2"),
    _Row("mpt", (GPT2,), "MPT"),
    _Row("olmo", (GPT2,), "OLMo"),
    _Row("jais", (GPT2,), "Jais"),
    _Row("exaone4", (GPT2,), "EXAONE 4"),
    _Row("jina-es", (GPT2,), "Jina embeddings v2 es"),
    _Row("jina-de", (GPT2,), "Jina embeddings v2 de"),
    _Row("jina-v2-es", (GPT2,), "Jina embeddings v2 es"),
    _Row("jina-v2-de", (GPT2,), "Jina embeddings v2 de"),
    _Row("jina-v1-en", (GPT2,), "Jina embeddings v1 en"),
    _Row("jina-v2-code", (GPT2,), "Jina embeddings v2 code"),
    _Row("roberta-bpe", (GPT2,), "RoBERTa"),
    _Row("gigachat", (GPT2,), "GigaChat"),
    _Row("a.x-4.0", (GPT2,), "A.X 4.0"),
    _Row("mellum", (GPT2,), "Mellum"),
    _Row("modern-bert", (GPT2,), "ModernBERT"),
    _Row("trillion", (GPT2,), "Trillion", clean_spaces=False),
    _Row("granite-docling", (GPT2,), "Granite Docling", clean_spaces=False),
    _Row("default", (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"), "a GGUF with no name"),
    _Row("falcon", (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"), "Falcon"),
    _Row("chameleon", CHAMELEON, "Chameleon", clean_spaces=False, add_bos=True),
    _Row("deepseek-llm", DEEPSEEK_LLM, "DeepSeek LLM", clean_spaces=False),
    _Row(
        "deepseek-coder",
        (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
        "DeepSeek Coder",
        clean_spaces=False,
    ),
    _Row("deepseek-v3", (r"\p{N}{1,3}", _KANA_HAN, DEEPSEEK3), "DeepSeek V3", clean_spaces=False),
    _Row("hunyuan-dense", (r"\p{N}{1,3}", _KANA_HAN, DEEPSEEK3), "Hunyuan dense", clean_spaces=False),
    _Row("hy_v4", (r"\p{N}{1,3}", _KANA_HAN, DEEPSEEK3), "Hy 4", clean_spaces=False),
    _Row("joyai-llm", (r"\p{N}{1,3}", _KANA_HAN, DEEPSEEK3), "JoyAI", clean_spaces=False),
    _Row("spark2_5", (r"\p{N}{1,3}", _KANA_HAN, SPARK2_5, r"\p{N}"), "Spark X2.5", clean_spaces=False),
    _Row("afmoe", (AFMOE_DIGITS, AFMOE_SCRIPTS, DEEPSEEK3), "AFMoE (Trinity)", clean_spaces=False),
    _Row("youtu", YOUTU, "Youtu-LLM", ignore_merges=True, clean_spaces=False),
    _Row("poro-chat", (_POOR_PUNCT,), "Poro", clean_spaces=False),
    _Row("bloom", (_POOR_PUNCT,), "BLOOM"),
    _Row("gpt3-finnish", (_POOR_PUNCT,), "GPT-3 Finnish"),
    _Row("viking", (_POOR_PUNCT, r"\p{N}"), "Viking", clean_spaces=False),
    _Row("seed-coder", (SEED_CODER,), "Seed-Coder", clean_spaces=False),
    _Row("bailingmoe", (BAILINGMOE,), "Ling (BailingMoE)", clean_spaces=False),
    _Row("bailingmoe2", (BAILINGMOE,), "Ling 2", clean_spaces=False),
    _Row("llada-moe", (BAILINGMOE,), "LLaDA-MoE", clean_spaces=False),
    _Row("minicpm5", (r"\p{N}{1,3}", MINICPM5), "MiniCPM 5", ignore_merges=True),
    _Row("ufakzeka", (UFAKZEKA,), "Ufakzeka", clean_spaces=False),
    _Row("exaone-moe", (EXAONE_MOE,), "EXAONE MoE"),
    _Row("gpt-4o", (GPT4O,), "GPT-4o tokenizer (o200k)", clean_spaces=False),
    _Row("llama4", (GPT4O,), "Llama 4", clean_spaces=False),
    _Row("kanana2", (GPT4O,), "Kanana 2", clean_spaces=False),
    _Row("talkie", (GPT4O,), "Talkie", clean_spaces=False),
    _Row("minimax-m2", (GPT4O,), "MiniMax M2", clean_spaces=False),
    _Row(
        "granite-embed-multi-97m", (GRANITE_EMB_MULTI,), "Granite embedding 97m", ignore_merges=True, clean_spaces=False
    ),
    _Row("tiny_aya", (TINY_AYA_DIGITS, TINY_AYA), "Tiny Aya", clean_spaces=False),
    _Row("cohere2moe", (TINY_AYA_DIGITS, TINY_AYA), "Cohere 2 MoE", clean_spaces=False),
    _Row("superbpe", (r"\p{N}+", SUPERBPE_THOUSANDS), "SuperBPE", clean_spaces=False),
    _Row("kimi-k2", (KIMI_K2,), "Kimi K2", clean_spaces=False),
    _Row("gemma4", (NEWLINES,), "Gemma 4", byte_encode=False, escape_spaces=True, gemma4=True, add_bos=True),
    _Row(
        "granite-embed-multi-311m",
        (NEWLINES,),
        "Granite embedding 311m",
        byte_encode=False,
        escape_spaces=True,
        gemma4=True,
        add_bos=True,
    ),
    _Row("sarvam-moe", (NEWLINES,), "Sarvam MoE", clean_spaces=False, byte_encode=False, escape_spaces=True),
    _Row("whitespace", (r"\S+",), "Jina embeddings v2 zh", byte_encode=False, drops_whitespace=True),
    _Row("tekken", (TEKKEN,), "Mistral Tekken", ignore_merges=True, clean_spaces=False, add_bos=True),
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
# contractions (everywhere, see _runs) and the \p{Lu}-style classes, which its own regex engine lacks.
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


def build_tokenizer(
    tokens: Sequence[str], merges: Sequence[str], pre: PreTokenizerType, lowercase: bool = False
) -> Tokenizer:
    """A `tokenizers` BPE with the vocabulary (ids = positions) and ranked merges ("a b"): byte-level, or on raw
    UTF-8 with byte fallback for the types that ask for it (lower-cased first if `lowercase`, for "whitespace")."""
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
    # Gemma 4's whole newline pieces are approximated by taking any whole piece: its other pieces are lines,
    # which are vocabulary entries only where the merges make them anyway.
    ignore_merges = pre.ignore_merges or pre.gemma4
    try:
        model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges, byte_fallback=not pre.byte_encode)
    except Exception as exc:  # tokenizers raises a bare Exception for a merge of unknown tokens
        raise InvalidFileError(f"tokenizer.ggml.merges do not fit tokenizer.ggml.tokens: {quoted(exc, 120)}") from exc
    tokenizer = Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in pre.splits]
    if pre.byte_encode:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer
    # The whitespace model's \S+ split is a no-op once whitespace is gone.
    tokenizer.pre_tokenizer = (
        pre_tokenizers.WhitespaceSplit() if pre.drops_whitespace else pre_tokenizers.Sequence(splits)
    )
    if lowercase:
        # llama.cpp lower-cases code point by code point: İ becomes i, where Unicode's (and Lowercase's) i̇.
        tokenizer.normalizer = normalizers.Sequence([normalizers.Replace("\u0130", "i"), normalizers.Lowercase()])
    steps = [decoders.ByteFallback(), decoders.Fuse()]
    if pre.escape_spaces:
        tokenizer.normalizer = normalizers.Replace(" ", SPACE)
        steps.insert(0, decoders.Replace(SPACE, " "))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def is_byte_level(tokenizer_json: Mapping[str, Any]) -> bool:
    """Whether a tokenizer.json maps bytes to GPT-2's printable characters before its model."""
    return any(step.get("type") == "ByteLevel" for step in _steps(tokenizer_json.get("pre_tokenizer")))


_LLAMA_CPP_LOWERCASE = {
    "type": "Sequence",
    "normalizers": [{"type": "Replace", "pattern": {"String": "\u0130"}, "content": "i"}, {"type": "Lowercase"}],
}


def whitespace_lowercase(tokenizer_json: Mapping[str, Any]) -> bool | None:
    """For a BPE tokenizer.json that splits at whitespace only (llama.cpp's "whitespace" model): whether it
    lower-cases; None for any other tokenizer.json."""
    if tokenizer_json.get("pre_tokenizer") != {"type": "WhitespaceSplit"}:
        return None
    if not tokenizer_json["model"].get("byte_fallback"):
        raise UnsupportedError("a whitespace-split BPE tokenizer without byte fallback has no GGUF form")
    norm = tokenizer_json.get("normalizer")
    if norm == _LLAMA_CPP_LOWERCASE:
        norm = {"type": "Lowercase"}  # the form build_tokenizer writes
    if norm not in (None, {"type": "Lowercase"}):
        raise UnsupportedError(
            f"a whitespace-split BPE tokenizer with a {norm.get('type')} normalizer has no GGUF form"
        )
    return norm is not None


def is_raw_bpe(tokenizer_json: Mapping[str, Any]) -> bool:
    """Whether a BPE tokenizer.json splits raw text with regexes and no byte-level step (Gemma 4's form)."""
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    return bool(steps) and all(_is_regex_split(step) for step in steps)


def identify_raw_pre_tokenizer(tokenizer_json: Mapping[str, Any], clean_spaces: bool | None = None) -> PreTokenizerType:
    """The llama.cpp pre-tokenizer type, on raw UTF-8, of a tokenizer.json for which `is_raw_bpe` holds."""
    norm = tokenizer_json.get("normalizer")
    escape = norm == {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    if norm is not None and not escape:
        raise UnsupportedError(f"a raw-text BPE tokenizer with a {norm.get('type')} normalizer has no GGUF form")
    if not tokenizer_json["model"].get("byte_fallback"):
        raise UnsupportedError("a raw-text BPE tokenizer without byte fallback has no GGUF form")
    regexes = [step["pattern"]["Regex"] for step in _steps(tokenizer_json["pre_tokenizer"])]
    runs = _runs(regexes)
    rows = [
        row
        for row in PRE_TOKENIZER_TYPES
        if not row.byte_encode and not row.drops_whitespace and row.escape_spaces == escape and _matches(row, runs)
    ]
    if not rows:
        raise UnsupportedError(f"no llama.cpp pre-tokenizer type splits raw text with the regexes {regexes}")
    ignore_merges = bool(tokenizer_json["model"].get("ignore_merges", False))

    def fit(row: PreTokenizerType) -> tuple[bool, bool]:
        return (
            (row.ignore_merges or row.gemma4) != ignore_merges,
            clean_spaces is not None and row.clean_spaces != clean_spaces,
        )

    return min(rows, key=fit)


def _is_regex_split(step: Mapping[str, Any]) -> bool:
    return (
        step.get("type") == "Split"
        and "Regex" in step.get("pattern", {})
        and step.get("behavior") == "Isolated"
        and not step.get("invert")
    )


def identify_pre_tokenizer(tokenizer_json: Mapping[str, Any], clean_spaces: bool | None = None) -> PreTokenizerType:
    """The llama.cpp pre-tokenizer type whose regexes are the ones this tokenizer.json splits with.

    Raises UnsupportedError when the pipeline holds a step llama.cpp cannot do or its regexes match no type.
    """
    if tokenizer_json.get("normalizer") not in (None, {"type": "NFC"}):
        # Qwen's NFC is accepted (llama.cpp skips it; it changes only text that is not NFC already).
        kind = tokenizer_json["normalizer"].get("type")
        raise UnsupportedError(f"a byte-level BPE tokenizer with a {kind} normalizer has no GGUF form")
    regexes = _split_regexes(tokenizer_json.get("pre_tokenizer"))
    runs = _runs(regexes)
    rows = [row for row in PRE_TOKENIZER_TYPES if row.byte_encode and _matches(row, runs)]
    if not rows:
        raise UnsupportedError(f"no llama.cpp pre-tokenizer type splits with the regexes {regexes}")
    ignore_merges = bool(tokenizer_json["model"].get("ignore_merges", False))

    def fit(row: PreTokenizerType) -> tuple[bool, bool]:
        return (row.ignore_merges != ignore_merges, clean_spaces is not None and row.clean_spaces != clean_spaces)

    return min(rows, key=fit)  # min keeps the first of equally good rows


def _runs(regexes: Sequence[str]) -> tuple[frozenset[str], ...]:
    """For each tokenizer.json regex, what llama.cpp may run for it: the regex itself, or llama.cpp's rewrite
    of it (GPT-4o's case classes are rewritten for gpt-4o but run collapsed for tiny_aya)."""
    runs = []
    for regex in regexes:
        # Some tokenizer.json files hold CR and LF themselves where others write \r and \n.
        regex = regex.replace("\r", r"\r").replace("\n", r"\n").replace(_HF_CONTRACTIONS, _CONTRACTIONS)
        runs.append(frozenset({_as_run(regex), _as_run(_HF_SPELLINGS.get(regex, regex))}))
    return tuple(runs)


def _matches(row: PreTokenizerType, runs: tuple[frozenset[str], ...]) -> bool:
    return len(row.splits) == len(runs) and all(split in run for split, run in zip(row.splits, runs, strict=True))


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
