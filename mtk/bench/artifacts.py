"""What an artifact on disk is, what it weighs, how many parameters it holds and how it tokenizes.

- ``hf``: a folder with ``config.json`` (quantized when it has ``quantization_config``); weights counted:
  ``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``;
- ``gguf``: a ``.gguf`` file, or any part of a split GGUF; weights counted: every part;
- ``onnx``: an ``mtk export-onnx`` folder (``mtk_onnx.json``); weights counted: ``model.onnx`` and its
  external data file.

Tokenizer and config files are not counted: they are the same few MB for every artifact of one model.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtk.bench.runners import Kind, quiet_fd2
from mtk.errors import EnvironmentProblem, InvalidFileError, UnsupportedError

HF_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class Artifact:
    """One benchmarked artifact: ``paths`` are what the runtime opens (a folder, or a GGUF's parts)."""

    path: Path
    kind: Kind
    paths: tuple[Path, ...]
    weights: tuple[Path, ...]
    quantization: str
    quantized: bool

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weights)


def detect(path: Path) -> Artifact:
    """Classify ``path``; InvalidFileError (exit code 4) when it is missing or none of the three kinds."""
    path = Path(path)
    if not path.exists():
        raise InvalidFileError(f"{path}: no such file or folder")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise InvalidFileError(f"{path}: not a GGUF file (bench takes .gguf files, HF folders, ONNX folders)")
        return _gguf(path)
    if (path / "mtk_onnx.json").is_file():
        return _onnx(path)
    if (path / "config.json").is_file():
        return _hf(path)
    raise InvalidFileError(f"{path}: neither an HF checkpoint (config.json) nor an mtk ONNX folder (mtk_onnx.json)")


def _hf(path: Path) -> Artifact:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    weights = tuple(sorted({p for pattern in HF_WEIGHTS for p in path.glob(pattern)}))
    if not weights:
        raise InvalidFileError(f"{path}: an HF folder without weights files ({', '.join(HF_WEIGHTS)})")
    q = config.get("quantization_config")
    if q:
        # GPTQ/AWQ keep bits and group size at the top; compressed-tensors in its config group's weight args.
        weights_args = next(iter(q.get("config_groups", {}).values()), {}).get("weights") or {}
        bits = q.get("bits") or q.get("w_bit") or weights_args.get("num_bits")
        group = q.get("group_size") or q.get("q_group_size") or weights_args.get("group_size")
        label = (
            f"{q.get('quant_method', 'quantized')}" + (f" {bits}-bit" if bits else "") + (f" g{group}" if group else "")
        )
    else:
        label = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return Artifact(path, "hf", (path,), weights, label, bool(q))


def _gguf(path: Path) -> Artifact:
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
    return Artifact(parts[0], "gguf", parts, parts, label, label not in ("F32", "F16", "BF16"))


def _onnx(path: Path) -> Artifact:
    manifest = json.loads((path / "mtk_onnx.json").read_text(encoding="utf-8"))
    if manifest.get("task") != "text-generation-with-past":
        raise UnsupportedError(f"{path}: a {manifest.get('task')!r} ONNX model; bench needs a decoder with a KV cache")
    weights = [path / manifest["model"]] + ([path / manifest["external_data"]] if manifest.get("external_data") else [])
    export = manifest.get("export", {})
    q = export.get("quantize")
    label = (f"{q}" + (f" g{export['block_size']}" if q == "int4" and export.get("block_size") else "")) if q else None
    return Artifact(path, "onnx", (path,), tuple(weights), label or str(export.get("dtype", "fp32")), bool(q))


def count_params(artifact: Artifact) -> int | None:
    """Parameters stored in an unquantized HF folder (safetensors headers) or a GGUF (its tensor shapes).

    Quantized folders pack several weights per stored element, so their count is not the model's: None.
    """
    if artifact.kind == "gguf":
        from mtk.formats.gguf_reader import open_gguf

        model = open_gguf(artifact.path)
        try:
            return sum(t.n_elements for t in model.tensors)
        finally:
            model.close()
    if artifact.kind != "hf" or artifact.quantized:
        return None
    total = 0
    for f in artifact.weights:
        if f.suffix != ".safetensors":
            return None
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


@dataclass(frozen=True)
class Tokenization:
    """Token ids of the text as the artifact's runtime adds special tokens; ``bos_id`` when BOS is added."""

    ids: list[int]
    bos_id: int | None


def tokenize(artifact: Artifact, text: str) -> Tokenization:
    """Tokenize ``text`` with the artifact's own tokenizer: llama.cpp's for a GGUF (with BOS when the
    vocabulary adds it, like llama-perplexity), the folder's tokenizer files through transformers otherwise."""
    if artifact.kind == "gguf":
        return _llama_cpp_tokenize(artifact.path, text)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(artifact.path))
    except (OSError, ValueError) as exc:
        raise InvalidFileError(f"{artifact.path}: its tokenizer files cannot be loaded ({exc})") from None
    with_special = tok(text)["input_ids"]
    plain = tok(text, add_special_tokens=False)["input_ids"]
    if with_special == plain:
        return Tokenization(with_special, None)
    if tok.bos_token_id is not None and with_special == [tok.bos_token_id, *plain]:
        return Tokenization(with_special, tok.bos_token_id)
    raise UnsupportedError(f"{artifact.path}: the tokenizer adds special tokens other than a leading BOS")


def _llama_cpp_tokenize(path: Path, text: str) -> Tokenization:
    try:
        import llama_cpp
    except ImportError as exc:
        raise EnvironmentProblem("llama-cpp-python is not installed: pip install 'mtk[llama]'") from exc
    with quiet_fd2():
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        add_bos = bool(llm._model.add_bos_token())  # noqa: SLF001 - llama-cpp-python exposes it only there
        return Tokenization(ids, int(llm.token_bos()) if add_bos else None)
    finally:
        llm.close()


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token id (or the shorter length), None when equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def describe(artifact: Artifact) -> dict[str, Any]:
    return {
        "path": str(artifact.path),
        "kind": artifact.kind,
        "quantization": artifact.quantization,
        "quantized": artifact.quantized,
        "files": [str(p) for p in artifact.weights],
        "size_bytes": artifact.size_bytes,
    }
