"""GGUF files (any part of a split model), run in llama.cpp, and their checks against transformers.

- ``verify_import``: the HF folder ``mtk gguf-import`` wrote, in transformers, against llama.cpp on the GGUF.
- ``verify_export``: llama.cpp on the GGUF ``mtk gguf-export`` wrote, against transformers holding exactly the
  GGUF's weights (conversion, checked) and against the source (quality, reported).

The converters take these as their ``check`` (``import_check``/``export_check`` build it): called on the
complete temporary output, before anything is published.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtk.artifacts import hf, llama_cpp
from mtk.artifacts.base import ArtifactKind, Description, Tokenization
from mtk.artifacts.llama_cpp import LlamaCpp
from mtk.compare import PROBE_TEXT, PROMPTS, Tolerance, logit_metrics, token_report
from mtk.errors import VerificationError

Check = Callable[[Path], dict[str, Any]]
FLOAT_TYPES = {"F32", "F16", "BF16"}

# Lossless float weights on both sides: only summation order and activation precision differ. SiLU models
# agree to ~3e-6; llama.cpp's CPU GELU uses an f16 lookup table, which moves Gemma's logits by up to ~2e-3.
EXACT_F32 = Tolerance(max_abs=5e-3, kl_mean=1e-5)
FLOAT16 = Tolerance(kl_mean=2e-3, top1=0.95)
# Quantized weights (or a lossy cast): llama.cpp also quantizes activations for its integer dot products.
QUANTIZED = Tolerance(kl_mean=0.05, top1=0.85)


def matches(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def describe(path: Path) -> Description:
    """Weights counted: every part; the label is ``general.file_type`` (else the most common matrix type)."""
    import gguf

    from mtk.formats.gguf_reader import open_gguf, split_paths

    parts = tuple(split_paths(path))
    model = open_gguf(path)
    try:
        file_type = model.files[0].metadata.get("general.file_type")
        by_type: dict[str, int] = {}
        for t in model.tensors:
            if len(t.shape) > 1:
                by_type[t.qtype.name] = by_type.get(t.qtype.name, 0) + t.nbytes
    finally:
        model.close()
    try:
        label = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        label = max(by_type, key=by_type.__getitem__) if by_type else "?"
    return Description(parts, parts, label, label not in FLOAT_TYPES)


def first_part(path: Path | str) -> Path:
    """What llama.cpp opens: the GGUF itself, or the first part of a split model given any part."""
    from mtk.formats.gguf_reader import split_paths

    return split_paths(Path(path))[0]


def tokenize(path: Path, text: str) -> Tokenization:
    """llama.cpp's tokenizer, with BOS when the vocabulary adds it (like llama-perplexity)."""
    with LlamaCpp(first_part(path), vocab_only=True) as llm:
        return Tokenization(llm.tokenize(text, add_bos=True), llm.bos_id)


def count_params(path: Path) -> int:
    from mtk.formats.gguf_reader import open_gguf

    model = open_gguf(path)
    try:
        return sum(t.n_elements for t in model.tensors)
    finally:
        model.close()


def matrix_types(path: Path | str) -> set[str]:
    """The GGUF type names of the file's matrices (vectors are always F32)."""
    from mtk.formats.gguf_reader import open_gguf

    g = open_gguf(path)
    types = {t.qtype.name for t in g.tensors if len(t.shape) > 1}
    g.close()
    return types


def f32_max_abs(path: Path | str) -> float | None:
    """The family's own bound on F32 logit differences (``Family.f32_max_abs``), None for the default."""
    from mtk.converters.family import family_for_gguf
    from mtk.errors import UnsupportedError
    from mtk.formats.gguf_reader import open_gguf

    g = open_gguf(path)
    arch = g.architecture
    g.close()
    try:
        return family_for_gguf(arch).f32_max_abs
    except UnsupportedError:
        return None


def tolerance_for(gguf_types: set[str], lossless_dtype: bool, max_abs: float | None = None) -> Tolerance:
    """``max_abs``: the F32 bound where the family needs a wider one than EXACT_F32's."""
    if not lossless_dtype or gguf_types - FLOAT_TYPES:
        return QUANTIZED
    if gguf_types != {"F32"}:
        return FLOAT16
    return dataclasses.replace(EXACT_F32, max_abs=max_abs) if max_abs is not None else EXACT_F32


def compare_tokenizers(gguf_path: Path | str, hf_dir: Path | str, text: str = PROBE_TEXT) -> dict[str, Any]:
    """Token ids of llama.cpp's tokenizer on the GGUF and of the HF tokenizer in ``hf_dir`` for ``text``."""
    from transformers import AutoTokenizer

    with LlamaCpp(first_part(gguf_path), vocab_only=True) as llm:
        ids_llama = llm.tokenize(text)
    ids_hf = AutoTokenizer.from_pretrained(str(hf_dir))(text, add_special_tokens=False)["input_ids"]
    return token_report(ids_llama, ids_hf)


def compare_on_prompts(
    tokenizer: LlamaCpp, reference: Callable[[list[int]], Any], candidate: Callable[[list[int]], Any],
    prompts: Sequence[str] = PROMPTS,
) -> dict[str, float]:  # fmt: skip
    """Logit metrics over ``prompts`` (tokenized by llama.cpp, with BOS) for two logits functions."""
    import numpy as np
    import torch

    ref, cand = [], []
    for prompt in prompts:
        ids = tokenizer.tokenize(prompt, add_bos=True)
        ref.append(torch.as_tensor(np.asarray(reference(ids)), dtype=torch.float32))
        cand.append(torch.as_tensor(np.asarray(candidate(ids)), dtype=torch.float32))
    return logit_metrics(torch.cat(ref), torch.cat(cand))


def _check(what: str, tok: dict[str, Any], metrics: dict[str, float], tol: Tolerance) -> dict[str, Any]:
    if not tok["identical"]:
        raise VerificationError(
            f"{what}: tokenizer ids differ from llama.cpp's at token {tok['first_difference']} of the probe text"
        )
    failures = tol.failures(metrics)
    if failures:
        raise VerificationError(f"{what} disagrees with llama.cpp: " + "; ".join(failures))
    return {"tokenizer": tok, "logits": metrics, "tolerance": tol.__dict__}


def verify_import(gguf_path: Path | str, hf_dir: Path | str, prompts: Sequence[str] = PROMPTS) -> dict[str, Any]:
    """The imported checkpoint in transformers against llama.cpp on the original GGUF.

    Raises VerificationError when tokenization differs or the logits are beyond the tolerance for the
    GGUF's tensor types.
    """
    import torch

    types = matrix_types(gguf_path)
    tok = compare_tokenizers(gguf_path, hf_dir)
    model = hf.load(hf_dir)
    stored = model.config.dtype
    lossless = stored == torch.float32 or types <= {"F16" if stored == torch.float16 else "BF16"}
    with LlamaCpp(first_part(gguf_path)) as llm:
        metrics = compare_on_prompts(llm, llm.logits, lambda ids: hf.logits(model, ids), prompts)
    return _check("imported model", tok, metrics, tolerance_for(types, lossless, f32_max_abs(gguf_path)))


def verify_export(gguf_path: Path | str, source: Path | str, prompts: Sequence[str] = PROMPTS) -> dict[str, Any]:
    """llama.cpp on the exported GGUF, checked two ways.

    - Conversion: against transformers running the weights the GGUF holds (exactly its dequantized
      values). This isolates layout, metadata and tokenizer errors from quantization error, and is what
      fails (VerificationError) beyond the tolerance for the file's tensor types. For float exports of an
      HF folder the GGUF's weights are the source's, and the source model is the reference.
    - Quality (quantized types, or a GGUF source): against the source (transformers on an HF folder,
      llama.cpp on a source GGUF), reported as ``quality`` for the caller to bound.
    """
    from mtk.converters.gguf_to_hf import load_in_memory

    types = matrix_types(gguf_path)
    tolerance = tolerance_for(types, lossless_dtype=True, max_abs=f32_max_abs(gguf_path))
    float_only = types <= FLOAT_TYPES
    from_hf = Path(source).is_dir()
    with LlamaCpp(first_part(gguf_path)) as llm:
        src: LlamaCpp | None = None
        try:
            if from_hf:
                tok = compare_tokenizers(gguf_path, source)
                src_model = hf.load(source)
                src_logits: Callable[[list[int]], Any] = lambda ids: hf.logits(src_model, ids)  # noqa: E731
            else:
                src = LlamaCpp(first_part(source))
                tok = token_report(src.tokenize(PROBE_TEXT), llm.tokenize(PROBE_TEXT))
                src_logits = src.logits
            if float_only and from_hf:
                metrics = compare_on_prompts(llm, src_logits, llm.logits, prompts)
                return _check("exported GGUF", tok, metrics, tolerance)
            held = load_in_memory(gguf_path)
            metrics = compare_on_prompts(llm, lambda ids: hf.logits(held, ids), llm.logits, prompts)
            report = _check("exported GGUF", tok, metrics, tolerance)
            report["quality"] = compare_on_prompts(llm, src_logits, llm.logits, prompts)
            return report
        finally:
            if src is not None:
                src.close()


def import_check(gguf_path: Path | str, verify: bool | None = None) -> Check | None:
    """What ``gguf_import`` calls on its output folder; ``verify=None``: on when llama-cpp-python is installed."""
    if not (llama_cpp.available() if verify is None else verify):
        return None
    return lambda hf_dir: verify_import(gguf_path, hf_dir)


def export_check(source: Path | str, verify: bool | None = None) -> Check | None:
    """What ``gguf_export`` calls on its first output part; ``verify=None``: on when llama-cpp-python is installed."""
    if not (llama_cpp.available() if verify is None else verify):
        return None
    return lambda gguf_path: verify_export(gguf_path, source)


KIND = ArtifactKind(
    name="gguf",
    container="gguf",
    runtime="llama.cpp",
    matches=matches,
    describe=describe,
    tokenize=tokenize,
    count_params=count_params,
)
