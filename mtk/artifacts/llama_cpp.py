"""llama.cpp through llama-cpp-python: the one wrapper that verification, the tests and the bench load GGUFs with.

Every model is loaded with the same settings, so that a verified file and a benchmarked file run the same
way: a float32 KV cache (llama.cpp's default float16 cache alone moves logits by ~1e-3), no flash attention,
all logits kept, one batch of up to ``n_ctx`` tokens (micro-batches of 512), seed 0. numpy only: a bench
child that runs a GGUF never loads torch.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mtk.errors import EnvironmentProblem, InvalidFileError


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


@contextmanager
def quiet_fd2() -> Iterator[None]:
    """llama.cpp's C code writes some messages to fd 2 even with verbose=False; hide them while loading."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LlamaCpp:
    """A GGUF loaded in llama.cpp, for tokenization, logits and greedy decoding. A split model is opened from its
    first part (mtk.artifacts.gguf.first_part finds it; the reader it needs imports torch, this module does not).

    ``vocab_only`` loads the tokenizer alone; ``offload`` puts every layer on the GPU when the build can.
    A file llama.cpp refuses raises InvalidFileError (exit code 4).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        n_ctx: int = 512,
        threads: int | None = None,
        vocab_only: bool = False,
        offload: bool = False,
    ) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise EnvironmentProblem("llama-cpp-python is not installed: pip install 'mtk[llama]'") from exc
        path = Path(path)
        threads = threads or max(1, os.cpu_count() or 1)
        self.offloaded = offload and bool(llama_cpp.llama_supports_gpu_offload())
        with quiet_fd2():
            try:
                self.llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=n_ctx,
                    n_ubatch=min(n_ctx, 512),
                    n_gpu_layers=-1 if self.offloaded else 0,
                    logits_all=not vocab_only,
                    vocab_only=vocab_only,
                    verbose=False,
                    n_threads=threads,
                    n_threads_batch=threads,
                    seed=0,
                    type_k=0,
                    type_v=0,
                    flash_attn=False,
                )
            except ValueError as exc:  # llama-cpp-python's one error for a file llama.cpp cannot load
                raise InvalidFileError(f"llama.cpp cannot load {path}: {str(exc).strip() or 'ValueError'}") from exc
        self.version: str = llama_cpp.__version__

    @property
    def vocab(self) -> int:
        return int(self.llm.n_vocab())

    @property
    def bos_id(self) -> int | None:
        """The BOS id when the vocabulary adds one (as llama-perplexity does), else None."""
        add_bos = bool(self.llm._model.add_bos_token())  # noqa: SLF001 - llama-cpp-python exposes it only there
        return int(self.llm.token_bos()) if add_bos else None

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def logits(self, ids: Sequence[int], *, copy: bool = True) -> np.ndarray:
        """(len(ids), vocab) float32 next-token logits at every position of ``ids``, from a fresh context.

        ``copy=False`` returns a view of llama.cpp's buffer, overwritten by the next call: the bench reads each
        window once, and a copy of a (ctx, vocab) window would count in its peak RSS.
        """
        self.llm.reset()
        self.llm.eval(np.asarray(ids).tolist())
        scores = self.llm.scores[: len(ids)]
        return np.array(scores, dtype=np.float32) if copy else scores

    def decode_seconds(self, prompt: Sequence[int], steps: int) -> float:
        """Seconds for ``steps`` greedy decode steps through the KV cache after a prefill of ``prompt``."""
        llm = self.llm
        llm.reset()
        llm.eval(np.asarray(prompt).tolist())
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        start = time.perf_counter()
        for _ in range(steps):
            llm.eval([token])
            token = int(llm.scores[llm.n_tokens - 1].argmax())
        return time.perf_counter() - start

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
