"""Importance-weighted Q4_0/Q4_1/Q5_0/Q5_1: fast == slow twin, bytes vs llama.cpp's own ``ggml_quantize_chunk``
with an importance matrix, gguf-py decodes them, and the plain path is unchanged (gguf-py's bytes)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from test_kquant_kernels import block_view, compare_importance_with_llama_cpp, importance_for, mixed_rows
from transformers import AutoModelForCausalLM

from mtk.artifacts.gguf import export_check
from mtk.converters.gguf_types import FILE_TYPE_NAMES, TypeRules
from mtk.converters.hf_to_gguf import gguf_export, plan_export
from mtk.converters.imatrix import Imatrix
from mtk.errors import UnsupportedError
from mtk.formats.gguf_reader import open_gguf
from mtk.kernels import legacy_importance, types
from mtk.kernels.quantize import quantize

QT = GGMLQuantizationType
TYPES = [row.qtype for row in types.rows() if row.importance is types.Importance.SEPARATE]


def rows(seed: int, n_rows: int, cols: int) -> np.ndarray:
    """Gaussian rows with a few outliers and an all-zero block, as float32 (n_rows, cols)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n_rows, cols)) * 0.02).astype(np.float32)
    x[rng.random(x.shape) < 0.01] *= 20
    x[0, 32:64] = 0
    x[1, :32] = np.abs(x[1, :32])  # an all-positive block: the asymmetric searches clamp min to 0
    return x


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_fast_equals_reference(qtype: GGMLQuantizationType, torch_encoders: None) -> None:
    """Bit for bit, on Gaussian rows and on the edge cases (all zero, constant, tiny, outliers, all positive)."""
    x = torch.from_numpy(np.concatenate([rows(1, 6, 512), mixed_rows(2)]))
    imp = torch.from_numpy(importance_for(512, seed=3))
    fast = quantize(x, qtype, importance=imp).numpy()
    ref = quantize(x, qtype, importance=imp, reference=True).numpy()
    bad = np.flatnonzero((block_view(fast, qtype) != block_view(ref, qtype)).any(-1))
    assert bad.size == 0, f"{bad.size} of {block_view(fast, qtype).shape[0]} blocks differ, first {bad[:5]}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_cuda_equals_reference(qtype: GGMLQuantizationType) -> None:
    """The same bytes on CUDA (eager): the row sums are explicit loops, the block sums folds, sqrt IEEE's."""
    x = torch.from_numpy(np.concatenate([rows(1, 6, 512), mixed_rows(2)]))
    imp = torch.from_numpy(importance_for(512, seed=3))
    out = quantize(x.cuda(), qtype, importance=imp)
    assert out.device.type == "cuda"
    ref = quantize(x, qtype, importance=imp, reference=True).numpy()
    bad = np.flatnonzero((block_view(out.cpu().numpy(), qtype) != block_view(ref, qtype)).any(-1))
    assert bad.size == 0, f"{bad.size} of {block_view(ref, qtype).shape[0]} blocks differ, first {bad[:5]}"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_importance_matches_llama_cpp(qtype: GGMLQuantizationType, backend: str) -> None:
    """Byte-identical with llama.cpp's ``quantize_row_qN_M_impl`` (all blocks from the C encoders, most from
    torch); importance-weighted RMSE (bytes decoded by gguf-py) at most 0.1% above llama.cpp's, and clearly
    below what the plain encoding gives."""
    x = rows(2, 64, 576)
    identical, err_ours, err_theirs, err_plain = compare_importance_with_llama_cpp(x, qtype, importance_for(576))
    print(
        f"{qtype.name} importance: {identical:.2%} of blocks identical with llama.cpp; weighted RMSE ratio "
        f"{err_ours / err_theirs:.5f}; plain encoding {err_plain / err_ours:.3f}x larger"
    )
    assert identical == 1.0 if backend == "native" else identical > 0.95
    assert err_ours <= err_theirs * 1.001
    assert err_ours < 0.98 * err_plain  # all three errors decode the bytes with gguf-py


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_plain_path_unchanged(qtype: GGMLQuantizationType) -> None:
    """Without importance the bytes are still gguf-py's (llama.cpp's ``_ref`` encoders)."""
    x = rows(5, 8, 256)
    ours = quantize(torch.from_numpy(x), qtype).numpy()
    np.testing.assert_array_equal(ours, gguf.quants.quantize(x, qtype).view(np.uint8).reshape(ours.shape))


def test_chunks_and_bad_importance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking (down to one row per step: sigma2 is per row) and leading dimensions do not change the
    bytes; bad importance and non-finite weights are refused."""
    x = torch.from_numpy(rows(6, 12, 256))
    imp = torch.from_numpy(importance_for(256))
    whole = quantize(x, QT.Q4_1, importance=imp)
    monkeypatch.setattr(legacy_importance, "CHUNK_VALUES", 100)
    assert torch.equal(quantize(x, QT.Q4_1, importance=imp), whole)
    assert torch.equal(quantize(x.reshape(3, 4, 256), QT.Q4_1, importance=imp), whole.reshape(3, 4, -1))
    with pytest.raises(UnsupportedError, match="shape"):
        quantize(x, QT.Q4_0, importance=imp[:128])
    with pytest.raises(UnsupportedError, match="non-negative"):
        quantize(x, QT.Q5_0, importance=-imp)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(UnsupportedError, match="non-finite"):
        quantize(bad, QT.Q5_1, importance=imp)


def test_export_passes_importance_to_legacy_fallbacks(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Q4_K_M on a width-64 llama falls back to Q5_0/Q4_1/...: with an imatrix those tensors are the importance
    encoder's bytes (not the plain ones), and the file runs in llama.cpp (``check=export_check(...)``)."""
    src = tiny_models["llama"]
    rules = TypeRules(FILE_TYPE_NAMES["q4_k_m"], imatrix=True)
    plan = {row["name"]: row for row in plan_export(src, rules=rules)["plan"]}
    rng = np.random.default_rng(9)
    im = Imatrix()
    for name, row in plan.items():
        if name.startswith("blk.") and len(row["shape"]) == 2:
            im.sums[name] = torch.from_numpy(np.exp(2 * rng.standard_normal((1, row["shape"][-1]))).astype(np.float32))
            im.counts[name] = torch.ones(1)
    result = gguf_export(src, tmp_path / "m.gguf", rules=rules, imatrix=im, check=export_check(src, True))
    # Every matrix but the Q8_0 ones (llama.cpp's Q8_0 ignores importance) uses its imatrix entry.
    takes = [name for name in im.sums if plan[name]["type"] != "Q8_0"]
    assert result["imatrix"]["tensors_used"] == len(takes) and not result["imatrix"]["missing"]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    g = open_gguf(tmp_path / "m.gguf")
    # Not row-permuted (as attn_q/attn_k are), so the bytes are the encoder's output for the HF matrix.
    checked = set()
    for layer in range(2):
        mlp = model.model.layers[layer].mlp
        for name, w in (
            (f"blk.{layer}.ffn_gate.weight", mlp.gate_proj.weight),
            (f"blk.{layer}.ffn_up.weight", mlp.up_proj.weight),
        ):
            info = g.by_name[name]
            expected = quantize(w.detach(), info.qtype, importance=im.importance(name)[0]).reshape(-1)
            assert torch.equal(g.tensor_bytes(info), expected), name
            assert not torch.equal(expected, quantize(w.detach(), info.qtype).reshape(-1)), name
            checked.add(info.qtype)
    assert checked & set(TYPES), checked
