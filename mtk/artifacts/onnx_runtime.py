"""Run an exported ONNX folder (``mtk export-onnx``) in onnxruntime: one step through the KV cache, greedy text.

The folder's ``mtk_onnx.json`` says which file to load, the input and output names and the cache layout.
Cache tensors are ``(batch, kv_heads, length, head_dim)`` in the manifest's ``cache.dtype`` (``cache.shapes``
gives each cached layer's ``[kv_heads, head_dim]`` where they differ; values are ``value_head_dim`` wide where it
gives one: DeepSeek's latent cache); every step feeds the previous step's
``present.{i}.key/value`` back as ``past_key_values.{i}.key/value``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtk.errors import EnvironmentProblem, InvalidFileError

MANIFEST = "mtk_onnx.json"
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


def read_manifest(folder: Path | str) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InvalidFileError(f"{folder} has no {MANIFEST}; is it an `mtk export-onnx` folder?")
    return json.loads(path.read_text(encoding="utf-8"))


def make_session(model_path: Path | str, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with the graph optimizations at their default (all)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a dependency of mtk's onnx extra
        raise EnvironmentProblem("onnxruntime is not installed: pip install 'mtk[onnx]'") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


class OnnxCausalLM:
    """A decoder exported with its KV cache (task ``text-generation-with-past``), run step by step."""

    def __init__(self, folder: Path | str, *, model_file: str | None = None, threads: int | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if self.manifest["task"] != "text-generation-with-past":
            raise InvalidFileError(f"{folder} holds a {self.manifest['task']!r} model, not a decoder with a KV cache")
        self.session = make_session(self.folder / (model_file or self.manifest["model"]), threads)
        cache = self.manifest["cache"]
        self.layers, self.kv_heads, self.head_dim = cache["layers"], cache["kv_heads"], cache["head_dim"]
        self.shapes = [tuple(s) for s in cache.get("shapes", [[self.kv_heads, self.head_dim]] * self.layers)]
        self.value_head_dim = cache.get("value_head_dim")
        self.cache_dtype = _NUMPY_DTYPES[cache["dtype"]]

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        return [
            np.zeros(
                (batch, heads, 0, dim if i == 0 or self.value_head_dim is None else self.value_head_dim),
                dtype=self.cache_dtype,
            )
            for heads, dim in self.shapes
            for i in range(2)
        ]

    def step(
        self, input_ids: np.ndarray, cache: list[np.ndarray], attention_mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits ``(batch, new_tokens, vocab)`` as float32 for ``input_ids`` after ``cache``, and the new cache.

        ``attention_mask`` covers past and new tokens (1 = attend); positions count the attended tokens,
        so left padding works.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, new = input_ids.shape
        past = cache[0].shape[2]
        if attention_mask is None:
            attention_mask = np.ones((batch, past + new), dtype=np.int64)
        attention_mask = np.asarray(attention_mask, dtype=np.int64)
        position_ids = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)[:, past:]
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feed.update(zip(self.manifest["inputs"][3:], cache, strict=True))
        logits, *present = self.session.run(None, feed)
        return logits.astype(np.float32), present

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
        """Greedy decoding of one sequence: the new token ids (stops after ``eos_token_id``)."""
        logits, cache = self.step(np.array([list(prompt_ids)]), self.empty_cache())
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token == eos_token_id or len(out) == max_new_tokens:
                break
            logits, cache = self.step(np.array([[token]]), cache)
        return out


def generate_text(folder: Path | str, prompt: str, max_new_tokens: int = 32) -> dict[str, Any]:
    """Greedy text from the exported folder, tokenized with the tokenizer files written beside the model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(prompt)["input_ids"]
    new = OnnxCausalLM(folder).generate(ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    return {"prompt": prompt, "prompt_ids": ids, "new_ids": new, "text": tokenizer.decode(new)}
