"""Calibration data: explicit files only (plain text, JSONL with a ``text`` field, Parquet), never a download.

The documents are joined with blank lines, tokenized once with the model's tokenizer, and cut into
consecutive windows of ``seq_len`` tokens; ``samples`` windows are taken evenly spaced over the text, so the
choice is deterministic and spans the whole file rather than its first pages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from mtk.errors import InvalidFileError, UsageError

TEXT_FIELD = "text"


def read_documents(path: Path | str) -> list[str]:
    """The calibration documents of a ``.txt`` (one document), ``.jsonl`` or ``.parquet`` file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: calibration file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_texts(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_texts(path, text)
    return [text]


def _jsonl_texts(path: Path, text: str) -> list[str]:
    docs = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidFileError(f"{path}:{no}: not JSON ({exc.msg})") from None
        except RecursionError:  # json recurses once per level of nesting
            raise InvalidFileError(f"{path}:{no}: not JSON (nested too deeply)") from None
        if not isinstance(record, dict) or not isinstance(record.get(TEXT_FIELD), str):
            raise InvalidFileError(f'{path}:{no}: each line must be an object with a string "{TEXT_FIELD}" field')
        docs.append(record[TEXT_FIELD])
    return docs


def _parquet_texts(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("reading Parquet calibration files needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path, columns=[TEXT_FIELD])
    except Exception as exc:  # pyarrow raises several unrelated types for bad files and missing columns
        raise InvalidFileError(f'{path}: cannot read a "{TEXT_FIELD}" column: {exc}') from None
    return [t for t in table.column(TEXT_FIELD).to_pylist() if isinstance(t, str)]


def tokenize_windows(docs: list[str], tokenizer: Any, samples: int, seq_len: int, *, source: str) -> torch.Tensor:
    """``samples`` windows of ``seq_len`` token ids, int64 ``(n, seq_len)`` with ``n <= samples``.

    Raises UsageError when the text is empty or shorter than one window. Fewer windows than asked for are
    returned when the text holds fewer (the caller reports how many it used).
    """
    if samples < 1 or seq_len < 2:
        raise UsageError(f"need samples >= 1 and seq_len >= 2, got {samples} and {seq_len}")
    text = "\n\n".join(d for d in docs if d.strip())
    if not text:
        raise UsageError(f"{source}: the calibration data is empty")
    # The whole text is tokenized at once on purpose; lift the model's length limit so the tokenizer does
    # not warn that this one sequence is longer than the model's context.
    saved = getattr(tokenizer, "model_max_length", None)
    tokenizer.model_max_length = sys.maxsize
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    finally:
        tokenizer.model_max_length = saved
    available = len(ids) // seq_len
    if available == 0:
        raise UsageError(f"{source}: the calibration text has {len(ids)} tokens, fewer than one {seq_len}-token sample")
    n = min(samples, available)
    # Evenly spaced window starts over the whole text (window k of `available`).
    starts = [(k * available // n) * seq_len for k in range(n)]
    return torch.tensor([ids[s : s + seq_len] for s in starts], dtype=torch.int64)


def load_calibration(path: Path | str, tokenizer: Any, samples: int, seq_len: int) -> torch.Tensor:
    """Token windows (int64 ``(n, seq_len)``, ``n <= samples``) from a calibration file; see the module notes."""
    return tokenize_windows(read_documents(path), tokenizer, samples, seq_len, source=str(path))
