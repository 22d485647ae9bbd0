"""Tokenizers between GGUF metadata and Hugging Face tokenizer files, both ways.

GGUF keeps a tokenizer as `tokenizer.*` metadata, read by llama.cpp's `llama-vocab.cpp`; Hugging Face keeps it
as `tokenizer.json` (a `tokenizers` pipeline) plus `tokenizer_config.json` and `special_tokens_map.json`.
Metadata here is a plain dict: GGUF key -> str, int, float, bool or a list of them (`METADATA_TYPES` gives the
GGUF value type of each key, which llama.cpp checks).

| tokenizer.ggml.model | what it is                                        | module        |
|----------------------|---------------------------------------------------|---------------|
| "gpt2"               | byte-level BPE; pre-tokenizer regexes named by    | tokenizer_bpe |
|                      | tokenizer.ggml.pre; ranked merges                 |               |
| "llama"              | SentencePiece-style pieces with scores, ▁ for     | tokenizer_spm |
|                      | spaces, <0xNN> byte pieces                        |               |
| "gemma4"             | BPE with merges on raw UTF-8, ▁ for spaces,       | tokenizer_bpe |
|                      | <0xNN> byte pieces (pre-tokenizer "gemma4")       |               |
| "whitespace"         | as "gemma4" without ▁, cut at whitespace, maybe   | tokenizer_bpe |
|                      | lower-cased (pre-tokenizer "whitespace")          |               |
| "bert"               | WordPiece, word starts marked with ▁; BERT's      | tokenizer_wpm |
|                      | normalizer and punctuation split                  |               |

Token types (`gguf.TokenType`): CONTROL and UNKNOWN pieces become special added tokens, USER_DEFINED pieces
non-special added tokens; both are matched on the raw text, as llama.cpp matches them before tokenizing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, Keys, TokenType
from tokenizers import AddedToken, Tokenizer, processors

from mtk.converters import tokenizer_bpe, tokenizer_spm, tokenizer_wpm
from mtk.errors import InvalidFileError, UnsupportedError, quoted

K = Keys.Tokenizer
# llama.cpp's BertNormalizer options (newer than the installed gguf-py's Keys).
NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"

# GGUF value type of each key (and of an array's items): llama.cpp refuses, e.g., a token id stored as int32.
METADATA_TYPES: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {
    K.MODEL: (GGUFValueType.STRING, None),
    K.PRE: (GGUFValueType.STRING, None),
    K.LIST: (GGUFValueType.ARRAY, GGUFValueType.STRING),
    K.TOKEN_TYPE: (GGUFValueType.ARRAY, GGUFValueType.INT32),
    K.SCORES: (GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
    K.MERGES: (GGUFValueType.ARRAY, GGUFValueType.STRING),
    K.BOS_ID: (GGUFValueType.UINT32, None),
    K.EOS_ID: (GGUFValueType.UINT32, None),
    K.UNK_ID: (GGUFValueType.UINT32, None),
    K.PAD_ID: (GGUFValueType.UINT32, None),
    K.SEP_ID: (GGUFValueType.UINT32, None),
    K.MASK_ID: (GGUFValueType.UINT32, None),
    K.ADD_BOS: (GGUFValueType.BOOL, None),
    K.ADD_EOS: (GGUFValueType.BOOL, None),
    K.ADD_PREFIX: (GGUFValueType.BOOL, None),
    NORMALIZER_LOWERCASE: (GGUFValueType.BOOL, None),
    NORMALIZER_STRIP_ACCENTS: (GGUFValueType.BOOL, None),
    K.CHAT_TEMPLATE: (GGUFValueType.STRING, None),
    K.CHAT_TEMPLATES: (GGUFValueType.ARRAY, GGUFValueType.STRING),
    # and K.CHAT_TEMPLATE_N ("tokenizer.chat_template.<name>"): STRING
}

# Hugging Face special-token role -> GGUF id key.
SPECIAL_TOKEN_KEYS: dict[str, str] = {
    "bos_token": K.BOS_ID,
    "eos_token": K.EOS_ID,
    "unk_token": K.UNK_ID,
    "pad_token": K.PAD_ID,
}
# The same for a WordPiece vocabulary (BERT's roles), with llama.cpp's default ids (bert-base's).
WORDPIECE_TOKEN_KEYS: dict[str, str] = {
    "cls_token": K.BOS_ID,
    "sep_token": K.SEP_ID,
    "unk_token": K.UNK_ID,
    "pad_token": K.PAD_ID,
    "mask_token": K.MASK_ID,
}
_WPM_DEFAULT_IDS = {"cls_token": 101, "sep_token": 102, "unk_token": 100, "pad_token": 0, "mask_token": 103}
# Unused ids past a tokenizer's tokens that export pads with "[PADn]" (beyond doubling the vocabulary).
MAX_PADDING = 1 << 16
# llama.cpp's ids for an SPM vocabulary whose GGUF names none (its "gpt2" defaults, 11, are not carried over).
_SPM_DEFAULT_IDS = {"bos_token": 1, "eos_token": 2, "unk_token": 0}

# transformers 5's named classes (LlamaTokenizer, Qwen2Tokenizer, GPT2Tokenizer, ...) rebuild their
# normalizer and pre-tokenizer from vocab and merges; only the generic class uses tokenizer.json as written.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"

# Pieces llama.cpp matches in the text before tokenizing only when asked to parse special tokens.
_SPECIAL_TYPES = (TokenType.CONTROL, TokenType.UNKNOWN)


def write_hf_tokenizer(metadata: Mapping[str, Any], out_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for GGUF tokenizer metadata.

    The folder loads with `transformers.AutoTokenizer.from_pretrained(out_dir)` and gives llama.cpp's token ids.
    Raises UnsupportedError for a tokenizer model or pre-tokenizer type mtk cannot represent.
    """
    tokens = list(_required(metadata, K.LIST))
    _check_utf8(K.LIST, tokens)
    types = [int(t) for t in metadata.get(K.TOKEN_TYPE) or [TokenType.NORMAL] * len(tokens)]
    if len(types) != len(tokens):
        raise InvalidFileError(f"{K.TOKEN_TYPE} has {len(types)} entries for {len(tokens)} tokens")
    if metadata.get(K.MODEL) == "bert":
        tokenizer, specials = _build_wordpiece(metadata, tokens, types)
        config: dict[str, Any] = {"tokenizer_class": TOKENIZER_CLASS, **specials, "clean_up_tokenization_spaces": True}
    else:
        tokenizer, specials, config = _build_with_flags(metadata, tokens, types)
    context_length = metadata.get(f"{metadata.get('general.architecture')}.context_length")
    if context_length is not None:
        config["model_max_length"] = int(context_length)
    chat_template = _chat_template_from_gguf(metadata)
    if chat_template is not None:
        texts = [chat_template] if isinstance(chat_template, str) else [v for t in chat_template for v in t.values()]
        _check_utf8(K.CHAT_TEMPLATE, texts)
        config["chat_template"] = chat_template

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", specials)


def _build_with_flags(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int]
) -> tuple[Tokenizer, dict[str, str], dict[str, Any]]:
    """A BPE tokenizer whose bos/eos are added as add_bos_token/add_eos_token say; its specials and config."""
    tokenizer, default_ids, add_bos_default, clean_spaces = _build_tokenizer(metadata, tokens, types)
    _add_tokens(tokenizer, tokens, types)
    specials = {}
    for role, key in SPECIAL_TOKEN_KEYS.items():
        token_id = _special_id(metadata, key, default_ids.get(role), len(tokens))
        if token_id is not None:
            specials[role] = tokens[token_id]
    # llama.cpp adds bos for Gemma 4 even where the GGUF says not to.
    add_bos = bool(metadata.get(K.ADD_BOS, add_bos_default)) or (_bpe_pre(metadata) or _NO_PRE).gemma4
    add_eos = bool(metadata.get(K.ADD_EOS, False))
    for flag, role in ((add_bos, "bos_token"), (add_eos, "eos_token")):
        if flag and role not in specials:
            raise InvalidFileError(f"the GGUF asks to add a {role} but names none")
    tokenizer.post_processor = _post_processor(tokenizer, specials, add_bos, add_eos)
    config: dict[str, Any] = {"tokenizer_class": TOKENIZER_CLASS, **specials}
    config.update(add_bos_token=add_bos, add_eos_token=add_eos, clean_up_tokenization_spaces=clean_spaces)
    return tokenizer, specials, config


def _build_wordpiece(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int]
) -> tuple[Tokenizer, dict[str, str]]:
    """A WordPiece tokenizer that, like llama.cpp, adds [CLS] and [SEP] whenever special tokens are added."""
    ids = {
        role: _special_id(metadata, key, _WPM_DEFAULT_IDS[role], len(tokens))
        for role, key in WORDPIECE_TOKEN_KEYS.items()
    }
    pieces = [tokenizer_wpm.hf_token(token, types[i]) for i, token in enumerate(tokens)]
    lowercase = bool(metadata.get(NORMALIZER_LOWERCASE, True))
    strip_accents = bool(metadata.get(NORMALIZER_STRIP_ACCENTS, lowercase))
    unk = ids["unk_token"]
    tokenizer = tokenizer_wpm.build_tokenizer(
        tokens, types, None if unk is None else pieces[unk], lowercase=lowercase, strip_accents=strip_accents
    )
    _add_tokens(tokenizer, pieces, types)
    if ids["cls_token"] is None or ids["sep_token"] is None:
        raise InvalidFileError("a WordPiece GGUF needs a [CLS] (bos) and a [SEP] token")
    cls, sep = ids["cls_token"], ids["sep_token"]
    tokenizer.post_processor = tokenizer_wpm.post_processor((pieces[cls], cls), (pieces[sep], sep))
    return tokenizer, {role: pieces[i] for role, i in ids.items() if i is not None}


def _build_tokenizer(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int]
) -> tuple[Tokenizer, Mapping[str, int], bool, bool]:
    """The tokenizer's model, normalizer, pre-tokenizer and decoder; llama.cpp's default special ids,
    its default for add_bos_token, and clean_up_tokenization_spaces."""
    model = metadata.get(K.MODEL)
    pre = _bpe_pre(metadata)
    if pre is not None:
        # llama.cpp's "whitespace" model lower-cases unless told not to; its "whitespace" type tells it not to.
        lowercase = model == "whitespace" and bool(metadata.get(NORMALIZER_LOWERCASE, False))
        tokenizer = tokenizer_bpe.build_tokenizer(tokens, _required(metadata, K.MERGES), pre, lowercase)
        return tokenizer, {}, pre.add_bos, pre.clean_spaces
    if model == "llama":
        unk = _special_id(metadata, K.UNK_ID, _SPM_DEFAULT_IDS["unk_token"], len(tokens))
        tokenizer = tokenizer_spm.build_tokenizer(
            tokens,
            scores=[float(s) for s in metadata.get(K.SCORES) or [0.0] * len(tokens)],
            types=types,
            unk_token=None if unk is None else tokens[unk],
            add_space_prefix=bool(metadata.get(K.ADD_PREFIX, True)),
        )
        return tokenizer, _SPM_DEFAULT_IDS, True, False
    raise UnsupportedError(
        f"GGUF tokenizer model {quoted(model)} is not supported; supported: gpt2, gemma4, whitespace, llama, bert"
    )


_NO_PRE = tokenizer_bpe.PRE_TOKENIZERS_BY_NAME["default"]


def _bpe_pre(metadata: Mapping[str, Any]) -> tokenizer_bpe.PreTokenizerType | None:
    """The pre-tokenizer type of a BPE vocabulary ("gemma4" fixes its own), None for other models."""
    model = metadata.get(K.MODEL)
    if model == "gemma4":
        return tokenizer_bpe.pre_tokenizer_type("gemma4")
    if model in ("gpt2", "whitespace"):
        pre = tokenizer_bpe.pre_tokenizer_type(metadata.get(K.PRE) or "default")
        if pre.drops_whitespace != (model == "whitespace"):
            # gpt2 + "whitespace" aborts llama.cpp at two spaces; "whitespace" + another type runs byte-level
            # regexes on text it has already cut at whitespace, which no tokenizer ships.
            raise UnsupportedError(f"GGUF tokenizer model {quoted(model)} with pre-tokenizer {quoted(pre.name)}")
        return pre
    return None


def gguf_tokenizer_metadata(hf_dir: Path) -> dict[str, Any]:
    """GGUF tokenizer metadata for the Hugging Face tokenizer in `hf_dir` (tokenizer.json is required).

    The vocabulary is padded with unused "[PADn]" tokens up to config.json's vocab_size when that is larger,
    as llama.cpp wants one token per embedding row. Raises UnsupportedError for a tokenizer GGUF cannot hold,
    InvalidFileError for malformed tokenizer files.
    """
    hf_dir = Path(hf_dir)
    try:
        return _gguf_tokenizer_metadata(hf_dir)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # tokenizer.json's schema is tokenizers' own and large; mtk reads parts of it, and an entry of the wrong
        # kind anywhere in them (a number for a token, a string for a list) is a malformed file, not a bug.
        why = f"{type(exc).__name__}: {exc}"
        raise InvalidFileError(f"{hf_dir}: malformed tokenizer files ({quoted(why, 100)})") from None


def _gguf_tokenizer_metadata(hf_dir: Path) -> dict[str, Any]:
    tokenizer_json = _read_json(hf_dir / "tokenizer.json")
    if tokenizer_json is None and (hf_dir / "tokenizer.model").is_file():
        raise UnsupportedError(
            f"{hf_dir} has a SentencePiece tokenizer.model but no tokenizer.json; mtk needs the latter"
        )
    if tokenizer_json is None:
        raise InvalidFileError(f"{hf_dir} has no tokenizer.json")
    config = _read_json(hf_dir / "tokenizer_config.json") or {}
    if not isinstance(tokenizer_json, dict) or not isinstance(config, dict):
        raise InvalidFileError(f"{hf_dir}: tokenizer.json and tokenizer_config.json must be JSON objects")
    model = tokenizer_json.get("model") or {}
    if tokenizer_wpm.is_wordpiece(tokenizer_json):
        return _wordpiece_metadata(hf_dir, tokenizer_json, config)
    if model.get("type") != "BPE":
        raise UnsupportedError(
            f"a {model.get('type')} tokenizer has no GGUF form in mtk; supported: byte-level BPE, "
            "SentencePiece-style BPE, raw-text BPE (Gemma 4), WordPiece"
        )
    model_config = _read_json(hf_dir / "config.json") or {}
    # A multimodal config keeps the text tower's vocab_size in text_config.
    vocab_size = model_config.get("vocab_size") or (model_config.get("text_config") or {}).get("vocab_size")
    tokens, added, gaps = _id_to_token(tokenizer_json, int(vocab_size or 0))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]

    if tokenizer_bpe.is_byte_level(tokenizer_json):
        types = [_token_type(i, tokens[i], added, gaps, None, False) for i in range(len(tokens))]
        clean_spaces = config.get("clean_up_tokenization_spaces")
        pre = tokenizer_bpe.identify_pre_tokenizer(tokenizer_json, clean_spaces)
        metadata: dict[str, Any] = {K.MODEL: "gpt2", K.PRE: pre.name, K.LIST: tokens, K.TOKEN_TYPE: types}
        metadata[K.MERGES] = [f"{left} {right}" for left, right in merges]
    elif (lowercase := tokenizer_bpe.whitespace_lowercase(tokenizer_json)) is not None:
        types = [_token_type(i, tokens[i], added, gaps, None, True) for i in range(len(tokens))]
        metadata = {K.MODEL: "whitespace", K.PRE: "whitespace", K.LIST: tokens, K.TOKEN_TYPE: types}
        metadata[NORMALIZER_LOWERCASE] = lowercase
        metadata[K.MERGES] = [f"{left} {right}" for left, right in merges]
    elif tokenizer_bpe.is_raw_bpe(tokenizer_json):
        types = [_token_type(i, tokens[i], added, gaps, None, True) for i in range(len(tokens))]
        pre = tokenizer_bpe.identify_raw_pre_tokenizer(tokenizer_json, config.get("clean_up_tokenization_spaces"))
        # The "gemma4" tokenizer model is the "gemma4" pre-tokenizer type of a BPE vocabulary; llama.cpp's own
        # converter writes Gemma 4 that way.
        metadata = {K.MODEL: "gemma4"} if pre.name == "gemma4" else {K.MODEL: "gpt2", K.PRE: pre.name}
        metadata.update({K.LIST: tokens, K.TOKEN_TYPE: types, K.MERGES: [f"{left} {right}" for left, right in merges]})
    elif tokenizer_spm.is_sentencepiece_style(tokenizer_json) and _is_gemma4(model_config):
        # Gemma 4 ships Gemma 3's tokenizer.json; llama.cpp (and its converter) read it as BPE on raw text.
        if tokenizer_spm.has_space_prefix(tokenizer_json):
            raise UnsupportedError("a Gemma 4 tokenizer that prefixes a space has no GGUF form")
        types = [_token_type(i, tokens[i], added, gaps, model.get("unk_token"), True) for i in range(len(tokens))]
        metadata = {K.MODEL: "gemma4", K.LIST: tokens, K.TOKEN_TYPE: types}
        metadata[K.MERGES] = [f"{left} {right}" for left, right in merges]
    elif tokenizer_spm.is_sentencepiece_style(tokenizer_json):
        unk = model.get("unk_token")
        byte_fallback = bool(model.get("byte_fallback"))
        types = [_token_type(i, tokens[i], added, gaps, unk, byte_fallback) for i in range(len(tokens))]
        metadata = {K.MODEL: "llama", K.LIST: tokens, K.TOKEN_TYPE: types}
        metadata[K.SCORES] = tokenizer_spm.scores_from_merges(tokens, merges, types)
        metadata[K.ADD_PREFIX] = tokenizer_spm.has_space_prefix(tokenizer_json)
    else:
        raise UnsupportedError("a BPE tokenizer that is neither byte-level nor SentencePiece-style has no GGUF form")

    metadata.update(_special_token_metadata(hf_dir, tokens, config, tokenizer_json.get("post_processor")))
    metadata.update(_chat_templates_from_hf(hf_dir, config))
    return metadata


def _wordpiece_metadata(hf_dir: Path, tokenizer_json: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    lowercase, strip_accents = tokenizer_wpm.normalizer_options(tokenizer_json)
    model_config = _read_json(hf_dir / "config.json") or {}
    pieces, added, gaps = _id_to_token(tokenizer_json, int(model_config.get("vocab_size") or 0))
    types = [_token_type(i, pieces[i], added, gaps, None, False) for i in range(len(pieces))]
    metadata: dict[str, Any] = {
        K.MODEL: "bert",
        K.LIST: [tokenizer_wpm.gguf_token(piece, types[i]) for i, piece in enumerate(pieces)],
        K.TOKEN_TYPE: types,
        NORMALIZER_LOWERCASE: lowercase,
        NORMALIZER_STRIP_ACCENTS: strip_accents,
    }
    special_map = _read_json(hf_dir / "special_tokens_map.json") or {}
    ids = {piece: i for i, piece in enumerate(pieces)}
    for role, key in WORDPIECE_TOKEN_KEYS.items():
        token = _token_text(config.get(role, special_map.get(role)))
        if token is None:
            continue
        if token not in ids:
            raise InvalidFileError(f"{role} {token!r} of {hf_dir} is not in its vocabulary")
        metadata[key] = ids[token]
    metadata.update(_chat_templates_from_hf(hf_dir, config))
    return metadata


def _is_gemma4(model_config: Mapping[str, Any]) -> bool:
    return str(model_config.get("model_type", "")).startswith("gemma4")


def _special_token_metadata(
    hf_dir: Path, tokens: list[str], config: Mapping[str, Any], post: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Special-token ids, and whether bos/eos are added (from tokenizer_config, else from the post-processor)."""
    special_map = _read_json(hf_dir / "special_tokens_map.json") or {}
    ids = {token: i for i, token in enumerate(tokens)}
    metadata: dict[str, Any] = {}
    for role, key in SPECIAL_TOKEN_KEYS.items():
        token = _token_text(config.get(role, special_map.get(role)))
        if token is None:
            continue
        if token not in ids:
            raise InvalidFileError(f"{role} {token!r} of {hf_dir} is not in its vocabulary")
        metadata[key] = ids[token]
    for role, key, flag in (("bos_token", K.ADD_BOS, "add_bos_token"), ("eos_token", K.ADD_EOS, "add_eos_token")):
        if flag in config:  # transformers ignores the flag when the token is not set; so does llama.cpp's check
            metadata[key] = bool(config[flag]) and SPECIAL_TOKEN_KEYS[role] in metadata
        else:
            metadata[key] = _template_adds(post, metadata.get(SPECIAL_TOKEN_KEYS[role]), first=role == "bos_token")
    return metadata


def _check_utf8(key: str, texts: Sequence[str]) -> None:
    """The GGUF reader keeps undecodable bytes as surrogate escapes (lossless for GGUF copies); HF's JSON files
    and `tokenizers` take only real text."""
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        i = next(i for i, t in enumerate(texts) if not _encodes(t))
        raise InvalidFileError(f"{key} entry {i} ({quoted(texts[i])}) is not valid UTF-8") from None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _required(metadata: Mapping[str, Any], key: str) -> Any:
    if key not in metadata:
        raise InvalidFileError(f"the GGUF tokenizer metadata has no {key}")
    return metadata[key]


def _special_id(metadata: Mapping[str, Any], key: str, default: int | None, n_tokens: int) -> int | None:
    # Like llama.cpp: an id outside the vocabulary is ignored and the default (if any) stays.
    for candidate in (metadata.get(key), default):
        if candidate is not None and 0 <= int(candidate) < n_tokens:
            return int(candidate)
    return None


def _add_tokens(tokenizer: Tokenizer, tokens: Sequence[str], types: Sequence[int]) -> None:
    """Register control/unknown pieces as special added tokens and user-defined ones as plain added tokens."""
    special = [
        AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t in _SPECIAL_TYPES
    ]
    user = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i, t in enumerate(types)
        if t == TokenType.USER_DEFINED
    ]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)


def _post_processor(
    tokenizer: Tokenizer, specials: Mapping[str, str], add_bos: bool, add_eos: bool
) -> processors.TemplateProcessing:
    # The same template transformers builds from add_bos_token / add_eos_token.
    bos, eos = specials.get("bos_token"), specials.get("eos_token")
    head = [f"{bos}:0"] if add_bos else []
    tail = [f"{eos}:0"] if add_eos else []
    single = [*head, "$A:0", *tail]
    pair = [*single, *(f"{bos}:1" for _ in head), "$B:1", *(f"{eos}:1" for _ in tail)]
    used = {t for t, flag in ((bos, add_bos), (eos, add_eos)) if flag}
    return processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, tokenizer.token_to_id(t)) for t in used]
    )


def _chat_template_from_gguf(metadata: Mapping[str, Any]) -> str | list[dict[str, str]] | None:
    default = metadata.get(K.CHAT_TEMPLATE)
    names = [n for n in metadata.get(K.CHAT_TEMPLATES) or [] if n != "default"]
    if not names:
        return default
    named = [{"name": n, "template": _required(metadata, K.CHAT_TEMPLATE_N.format(name=n))} for n in names]
    return ([{"name": "default", "template": default}] if default is not None else []) + named


def _chat_templates_from_hf(hf_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    templates: dict[str, str] = {}
    value = config.get("chat_template")
    if isinstance(value, str):
        templates["default"] = value
    elif isinstance(value, list):
        templates.update({t["name"]: t["template"] for t in value})
    if (hf_dir / "chat_template.jinja").is_file():
        templates["default"] = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    for path in sorted((hf_dir / "additional_chat_templates").glob("*.jinja")):
        templates[path.stem] = path.read_text(encoding="utf-8")
    metadata: dict[str, Any] = {}
    if "default" in templates:
        metadata[K.CHAT_TEMPLATE] = templates.pop("default")
    if templates:
        metadata[K.CHAT_TEMPLATES] = sorted(templates)
        metadata.update({K.CHAT_TEMPLATE_N.format(name=n): t for n, t in templates.items()})
    return metadata


def _id_to_token(tokenizer_json: Mapping[str, Any], vocab_size: int) -> tuple[list[str], dict[str, bool], set[int]]:
    """Tokens by id (the model's vocabulary and the added tokens), added token -> special, and the unused ids.

    Unused ids (gaps, and ids up to `vocab_size`) get "[PADn]" tokens, as llama.cpp's converter names them.
    """
    by_id: dict[int, str] = {int(i): token for token, i in tokenizer_json["model"]["vocab"].items()}
    added = {}
    for entry in tokenizer_json.get("added_tokens", []):
        if not isinstance(entry["content"], str):
            raise InvalidFileError(f"added token {quoted(entry['content'])} is not a string")
        by_id[int(entry["id"])] = entry["content"]
        added[entry["content"]] = bool(entry.get("special"))
    size = max(max(by_id, default=-1) + 1, vocab_size)
    # Real checkpoints pad a few hundred ids at most; an id or vocab_size far past the tokens is corrupt, and
    # would be padded token by token.
    if min(by_id, default=0) < 0 or size > 2 * len(by_id) + MAX_PADDING:
        raise InvalidFileError(f"token ids up to {size} for {len(by_id)} tokens (a corrupt id or vocab_size)")
    gaps = set(range(size)) - set(by_id)
    return [by_id.get(i, f"[PAD{i}]") for i in range(size)], added, gaps


def _token_type(
    i: int, token: str, added: Mapping[str, bool], gaps: set[int], unk: str | None, byte_fallback: bool
) -> int:
    if i in gaps:
        return TokenType.UNUSED
    if token == unk:
        return TokenType.UNKNOWN
    if token in added:
        return TokenType.CONTROL if added[token] else TokenType.USER_DEFINED
    if byte_fallback and tokenizer_spm.BYTE_PIECE.fullmatch(token):
        return TokenType.BYTE
    return TokenType.NORMAL


def _template_adds(post: Mapping[str, Any] | None, token_id: int | None, first: bool) -> bool:
    """Whether a TemplateProcessing post-processor puts the token with this id first (or last) in a single text."""
    if post is None or token_id is None:
        return False
    if post.get("type") == "Sequence":
        return any(_template_adds(p, token_id, first) for p in post["processors"])
    if post.get("type") != "TemplateProcessing" or not post.get("single"):
        return False
    piece = post["single"][0 if first else -1]
    if "SpecialToken" not in piece:
        return False
    entry = post.get("special_tokens", {}).get(piece["SpecialToken"]["id"], {})
    return entry.get("ids") == [token_id]


def _token_text(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("content")
    return value


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidFileError(f"{path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError:
        raise InvalidFileError(f"{path} is not valid JSON: not UTF-8") from None
    except RecursionError:  # json recurses once per level of nesting
        raise InvalidFileError(f"{path} is not valid JSON: nested too deeply") from None


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
