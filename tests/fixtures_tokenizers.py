"""Small real tokenizers, trained offline in the test session with `tokenizers`, saved as Hugging Face folders.

Three kinds, each modelled on a family that ships GGUFs:

| kind    | modelled on          | model                                  | specials, template                 |
|---------|----------------------|----------------------------------------|------------------------------------|
| "bpe"   | Qwen2, SmolLM, GPT-2 | byte-level BPE, Split(regex)+ByteLevel | <|endoftext|> <|im_start|>, ChatML |
| "spm"   | Llama 2              | SentencePiece-style BPE, byte fallback | <unk> <s> </s>, [INST]             |
| "gemma" | Gemma                | as "spm", without the prefix space     | <pad> <eos> <bos> <unk>, turns     |
| "bert"  | bert-base-uncased    | WordPiece, lower case, accents off     | [PAD] [UNK] [CLS] [SEP] [MASK]     |
| "bert-cased" | bert-base-cased | WordPiece, case and accents kept       | as "bert"                          |
| "o200k" | gpt-oss (o200k)      | byte-level BPE, GPT-4o's split regex   | <|startoftext|> <|return|>, harmony |
| "gemma4"| Gemma 4              | as "gemma", no piece across a newline  | as "gemma"                         |
| "qwen35"| Qwen3.5              | as "bpe", letters with their marks     | as "bpe"                           |

The SentencePiece-style kinds are built the way a SentencePiece BPE model is converted to `tokenizer.json`:
a score per piece, and merges listing every split of every piece into two pieces, ordered by the piece's score.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from mtk.compare import PROBE_TEXT  # one probe for the tests and for mtk's own --verify

TokenizerKind = Literal["bpe", "spm", "gemma", "gemma4", "o200k", "qwen35", "bert", "bert-cased"]
KINDS: tuple[TokenizerKind, ...] = ("bpe", "spm", "gemma", "o200k", "qwen35")
WORDPIECE_KINDS: tuple[TokenizerKind, ...] = ("bert", "bert-cased")

# More texts the tests compare on: edge cases of the pre-tokenizers and of the space prefix.
EXTRA_TEXTS = (
    "",
    " ",
    "a",
    "   leading spaces",
    "\n\nnewlines first",
    "ALL CAPS AND'S THEY'RE I'M YOU'VE",
    "1234567890 12 345 6789",
    "tabs\t\tand\u00a0no-break\u2003em space",
    "混合 mixed 文本 text 😀!",
)
# Where llama.cpp's splitting departs from the letter of its regexes: case inside words, digits that are not
# 0-9, digit runs glued to text, Han outside the common blocks, marks inside words, contractions' case, spacing
# marks (Mc), compatibility characters.
SPLIT_EDGE_TEXTS = (
    "helloWorld XMLHttpRequest iPhone ΑβΓ ǅungla",
    "١٢٣٤٥ ١٢ １２３４ 12345678 ab1234cd x12y 1,234,567",
    "東京タワー 北京市 〇々 𠀀𠀁 ⺀ 한글 ㄱㄴ",
    "nai\u0308ve cafe\u0301 it'S THEY'RE we'Ll",
    "हिन्दी नमस्ते বাংলা ﬁne Ⅻ İstanbul",
    "six newlines\n\n\n\n\n\nthen text",
)

_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_LLAMA2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# A simplified harmony template (gpt-oss's chat format).
_HARMONY_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
)
# o200k's split regex (GPT-4o, gpt-oss), as openai/gpt-oss-20b's tokenizer.json spells it.
_O200K_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's split regex, as its tokenizer.json spells it.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3.5's (llama.cpp's "qwen35"): a word's combining marks (\p{M}) stay with its letters.
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_TRAIN_TEXT = """\
The quick brown fox jumps over the lazy dog. It's a sunny day; we'll go outside, won't we?
She said: "I'd rather stay home and read." They're reading books about history, science and art.
In 1969, humans landed on the Moon. The distance is about 384,400 km; light takes 1.28 seconds.
Prices rose 3.5% in 2023, from $1,200.00 to $1,242.00. Call +1 (555) 012-3456 before 10:30 a.m.
Über den Wolken muss die Freiheit wohl grenzenlos sein. Größe, Straße, Mädchen, schön, Käse.
Le cœur a ses raisons que la raison ne connaît point. Où est la gare ? Voilà, c'est très bien.
¿Dónde está la biblioteca? La niña comió mañana. São Paulo é uma cidade enorme, não é?
Москва — столица России. Я люблю читать книги. Привет, как дела? Хорошо, спасибо!
Η γλώσσα είναι ελληνική. Καλημέρα κόσμε. Αθήνα, Θεσσαλονίκη, Πάτρα.
東京は日本の首都です。私は毎朝コーヒーを飲みます。今日は天気がいいですね。
北京是中国的首都。我喜欢学习中文。今天天气很好，我们去公园散步吧。
서울은 한국의 수도입니다. 안녕하세요, 만나서 반갑습니다. 감사합니다.
Emoji time 😀😃😄😁 🚀🌍🌟 👍👍🏽👎 ❤️💙💚 🎉🎊 ✓✗ ★☆ →←↑↓
def train(model, data, epochs=10):
    for epoch in range(epochs):
        loss = 0.0
        for x, y in data:
            loss += model.step(x, y)
        print(f"epoch {epoch}: loss={loss:.4f}")
    return model

class Point:
    def __init__(self, x: float, y: float) -> None:
        self.x = x
        self.y = y

    def __repr__(self):
        return f"Point({self.x}, {self.y})"

if __name__ == "__main__":
    pts = [Point(i, i * 2) for i in range(10)]
    print(sorted(pts, key=lambda p: -p.x))
\tindented with a tab\t and another\ttab
int main(void) { int a[3] = {1, 2, 3}; return a[0] + a[1] * a[2]; }
SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;
<html><body><p class="note">Hello &amp; welcome!</p></body></html>
{"key": "value", "list": [1, 2, 3], "nested": {"a": true, "b": null}}
    Four spaces,        eight spaces,                sixteen spaces.


Blank lines above and below.


0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 10000 123456789 3.14159 2.71828 0x1F 0b1010 1e-5
I'm sure you've heard they'd said we're done. ISN'T IT? DON'T! WE'LL SEE.
Hello hello HELLO Hello, world! Hello world. hello-world hello_world helloWorld
"""


def _training_lines() -> list[str]:
    # Repeat the text so that the trainer sees enough pairs to reach ~1000 tokens.
    lines = _TRAIN_TEXT.splitlines(keepends=True)
    return lines * 3


def build_tokenizer(kind: TokenizerKind, out_dir: Path) -> None:
    """Train a small tokenizer of `kind` and save it as a Hugging Face tokenizer folder in `out_dir`."""
    builders = {
        "bpe": _build_bytelevel_bpe,
        "spm": _build_llama_spm,
        "gemma": _build_gemma_spm,
        # Gemma 4: Gemma 3's kind of tokenizer.json, but no piece joins a newline to other text (llama.cpp's
        # "gemma4" model never merges across one).
        "gemma4": lambda out: _build_gemma_spm(out, newline_pieces=False),
        "o200k": _build_o200k,
        "bert": lambda out: _build_wordpiece(out, lowercase=True),
        "bert-cased": lambda out: _build_wordpiece(out, lowercase=False),
        "qwen35": lambda out: _build_bytelevel_bpe(out, _QWEN35_SPLIT),
    }
    if kind not in builders:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid: {', '.join(builders)}")
    builders[kind](Path(out_dir))


def _build_bytelevel_bpe(out_dir: Path, split: str = _QWEN2_SPLIT) -> None:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_lines(), trainer)
    # A user-defined (not special) added token: llama.cpp's token type 4.
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        chat_template=_CHATML_TEMPLATE,
        model_max_length=2048,
    )
    fast.save_pretrained(out_dir)


def _build_o200k(out_dir: Path) -> None:
    """gpt-oss's tokenizer in small: o200k's split, its harmony specials, no BOS added, <|return|> ends."""
    specials = ["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|start|>", "<|end|>", "<|message|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_O200K_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_lines(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        chat_template=_HARMONY_TEMPLATE,
        model_max_length=131072,
    )
    fast.save_pretrained(out_dir)


def _train_spm_pieces(
    specials: list[str], alphabet_limit: int, newline_pieces: bool = True
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a BPE on ▁-escaped words; returns its vocabulary (specials first) and merges in rank order.
    ``newline_pieces`` False: no piece holds a newline beside other characters (Gemma 4's vocabulary)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "▁")
    # SentencePiece splits on whitespace and keeps ▁ at the start of a word.
    words = pre_tokenizers.Split("▁", behavior="merged_with_next")
    newlines = pre_tokenizers.Split("\n", behavior="isolated")
    tok.pre_tokenizer = words if newline_pieces else pre_tokenizers.Sequence([newlines, words])
    # The most frequent characters, ties by code point: the trainer's own cut is not deterministic. The rest
    # (rarer CJK, Hangul, emoji) are left to byte fallback.
    counts = Counter("".join(_training_lines()).replace(" ", "▁"))
    alphabet = sorted(counts, key=lambda c: (-counts[c], c))[:alphabet_limit]
    trainer = trainers.BpeTrainer(
        vocab_size=1000 + len(specials),
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        limit_alphabet=alphabet_limit,
        show_progress=False,
    )
    tok.train_from_iterator(_training_lines(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _sentencepiece_merges(
    vocab: dict[str, int], scores: dict[str, float], mergeable: set[str]
) -> list[tuple[str, str]]:
    """Every split of every piece into two pieces, ordered as transformers' `generate_merges` orders them:
    by the piece's score, then longer left part, then longer right part (descending); ties in vocabulary order."""
    found = []
    for piece in sorted(mergeable, key=vocab.__getitem__):
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece))]
        splits = [(left, right) for left, right in splits if left in mergeable and right in mergeable]
        found.extend(
            (left, right, scores[piece]) for left, right in sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        )
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _spm_tokenizer(
    specials: list[str], controls: set[str], unk: str, add_prefix: bool, newline_pieces: bool = True
) -> Tokenizer:
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    vocab, trained_merges = _train_spm_pieces(specials + byte_tokens, alphabet_limit=150, newline_pieces=newline_pieces)
    # Scores like a SentencePiece BPE model: a piece's score is minus the rank of the merge that made it;
    # single characters score below every merge; control, unknown and byte pieces score 0.
    scores: dict[str, float] = {}
    for rank, (left, right) in enumerate(trained_merges):
        scores.setdefault(left + right, -float(rank))
    n_merges = len(trained_merges)
    mergeable = set()
    for piece, idx in vocab.items():
        if piece in controls or piece == unk or piece in byte_tokens:
            scores[piece] = 0.0
            continue
        scores.setdefault(piece, -float(n_merges + idx))
        mergeable.add(piece)
    merges = _sentencepiece_merges(vocab, scores, mergeable)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    replace = normalizers.Replace(" ", "▁")
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace]) if add_prefix else replace
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def _build_llama_spm(out_dir: Path) -> None:
    specials = ["<unk>", "<s>", "</s>"]
    tok = _spm_tokenizer(specials, controls={"<s>", "</s>"}, unk="<unk>", add_prefix=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        chat_template=_LLAMA2_TEMPLATE,
        model_max_length=4096,
    )
    fast.save_pretrained(out_dir)


def _build_gemma_spm(out_dir: Path, newline_pieces: bool = True) -> None:
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    controls = {"<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"}
    tok = _spm_tokenizer(specials, controls=controls, unk="<unk>", add_prefix=False, newline_pieces=newline_pieces)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        chat_template=_GEMMA_TEMPLATE,
        model_max_length=8192,
    )
    fast.save_pretrained(out_dir)


def _build_wordpiece(out_dir: Path, lowercase: bool) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    # strip_accents=None: accents go with lower case, as in bert-base-uncased's tokenizer.json.
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=1000, min_frequency=2, special_tokens=specials, limit_alphabet=200, show_progress=False
    )
    tok.train_from_iterator(_training_lines(), trainer)
    ids = {t: tok.token_to_id(t) for t in specials}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        clean_up_tokenization_spaces=True,
        model_max_length=512,
    )
    fast.save_pretrained(out_dir)


def train_unsplit_bytelevel() -> tuple[list[str], list[str]]:
    """Tokens (by id) and merges ("a b") of a byte-level BPE trained with no split at all.

    Its tokens cross every boundary a pre-tokenizer regex could draw (spaces, digits, punctuation, scripts), so
    token ids computed with it change wherever two pre-tokenizers split a text differently.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_lines() + [PROBE_TEXT, *EXTRA_TEXTS, *SPLIT_EDGE_TEXTS] * 2, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


RAW_SPECIALS = ("<pad>", "<eos>", "<bos>")


def train_unsplit_raw() -> tuple[list[str], list[str]]:
    """Tokens (by id) and merges of a BPE on raw UTF-8 with ▁ for spaces and <0xNN> byte pieces (Gemma 4's
    form), trained with no split at all: its tokens cross newlines, spaces, digits and scripts.

    The first tokens are RAW_SPECIALS, then the 256 byte pieces; rarer characters are left to byte fallback.
    """
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    texts = _training_lines() + [PROBE_TEXT, *EXTRA_TEXTS, *SPLIT_EDGE_TEXTS] * 2
    counts = Counter("".join(texts).replace(" ", "▁"))
    alphabet = sorted(counts, key=lambda c: (-counts[c], c))[:200]
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        min_frequency=2,
        special_tokens=[*RAW_SPECIALS, *byte_tokens],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    # A run of newlines no merge makes: llama.cpp takes it whole for Gemma 4 (see SPLIT_EDGE_TEXTS).
    assert "\n" * 6 not in tokens
    return [*tokens, "\n" * 6], merges
