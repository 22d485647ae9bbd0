"""mtk's C encoders (mtk.kernels.native): built on first use, bytes equal to llama.cpp's own encoder
(``ggml_quantize_chunk`` in the libggml-base that llama-cpp-python ships) block for block, with and without
importance, whatever the thread count; used by ``quantize`` on the CPU; the torch encoders when disabled."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from test_kquant_kernels import _ggml_quantize_chunk, block_view, importance_for, mixed_rows

from mtk.kernels import native, types
from mtk.kernels.quantize import quantize

QT = GGMLQuantizationType
NATIVE = [row for row in types.rows() if row.native]
# Without importance, the types whose C encoder is their importance encoder do not go through C.
CASES = [
    (row.qtype, use_importance)
    for row in NATIVE
    for use_importance in (False, True)
    if use_importance or row.importance is not types.Importance.SEPARATE
]


def _rows(cols: int) -> np.ndarray:
    """Branchy blocks (mixed_rows) and Gaussian rows at three scales."""
    rng = np.random.default_rng(11)
    gauss = [rng.standard_normal((12, cols)) * s for s in (0.02, 1.0, 30.0)]
    return np.concatenate([mixed_rows(5, cols), *gauss]).astype(np.float32)


def test_every_type_is_built() -> None:
    lib = native.library()
    assert lib is not None
    assert [name for name in native.SYMBOLS.values() if not hasattr(lib, name)] == []


def test_half_conversions_equal_numpy() -> None:
    lib = native.library()
    halves = np.arange(1 << 16, dtype=np.uint16)
    floats = np.empty(halves.size, np.float32)
    lib.mtk_f16_to_f32_array(halves.ctypes.data, floats.ctypes.data, halves.size)
    expected = halves.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(floats.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
    assert np.isnan(floats[nan]).all()
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32),
            (rng.standard_normal(1 << 18) * 10.0 ** rng.uniform(-9, 6, 1 << 18)).astype(np.float32),
            np.array([65504, 65519.99, 65520, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 6.1e-5], np.float32),
        ]
    )
    out = np.empty(x.size, np.uint16)
    lib.mtk_f32_to_f16_array(x.ctypes.data, out.ctypes.data, x.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on overflow to inf
        expected_h = x.astype(np.float16).view(np.uint16)
    finite = ~np.isnan(x)
    assert np.array_equal(out[finite], expected_h[finite])
    assert ((out[~finite] & 0x7C00) == 0x7C00).all() and ((out[~finite] & 0x3FF) != 0).all()


@pytest.mark.parametrize(
    ("qtype", "use_importance"), CASES, ids=[f"{t.name}-{'importance' if i else 'plain'}" for t, i in CASES]
)
def test_bytes_equal_llama_cpp(qtype: GGMLQuantizationType, use_importance: bool) -> None:
    cols = 1024
    x = _rows(cols)
    imp = importance_for(cols) if use_importance else None
    ours = native.encode(torch.from_numpy(x), qtype, None if imp is None else torch.from_numpy(imp)).numpy()
    theirs = _ggml_quantize_chunk(x, qtype, imp)
    assert ours.shape == theirs.shape
    bad = np.flatnonzero((block_view(ours, qtype) != block_view(theirs, qtype)).any(-1))
    assert bad.size == 0, f"{qtype.name}: {bad.size} of {block_view(ours, qtype).shape[0]} blocks differ: {bad[:8]}"


@pytest.mark.parametrize("qtype", [row.qtype for row in NATIVE], ids=lambda t: t.name)
def test_threads_and_task_size_do_not_change_bytes(
    qtype: GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy((rng.standard_normal((40, 512)) * 0.05).astype(np.float32))
    imp = torch.from_numpy(importance_for(512))
    one = native.encode(x, qtype, imp, threads=1)
    monkeypatch.setattr(native, "ROWS_PER_TASK_VALUES", 512 * 3)
    assert torch.equal(native.encode(x, qtype, imp, threads=3), one)
    assert torch.equal(
        native.encode(x.to(torch.bfloat16), qtype, imp, threads=2),
        native.encode(x.to(torch.bfloat16).float(), qtype, imp, threads=1),
    )


def test_quantize_uses_native_on_cpu_and_torch_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.from_numpy(_rows(512))
    calls: list[GGMLQuantizationType] = []
    real = native.encode

    def counting(rows: torch.Tensor, qtype: GGMLQuantizationType, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(qtype)
        return real(rows, qtype, *args, **kwargs)

    monkeypatch.setattr(native, "encode", counting)
    quantize(x, QT.Q4_K)
    quantize(x, QT.Q5_0, importance=torch.from_numpy(importance_for(512)))
    quantize(x, QT.Q5_0)  # without importance the torch encoder is exact and fast
    assert calls == [QT.Q4_K, QT.Q5_0]
    monkeypatch.setenv("MTK_NATIVE", "0")
    quantize(x, QT.Q4_K)
    assert calls == [QT.Q4_K, QT.Q5_0]


def test_no_compiler_falls_back_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTK_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    native.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="C encoders unavailable"):
            assert native.library() is None
        assert not native.handles(QT.Q4_K, torch.zeros(1, 256), False)
        out = quantize(torch.ones(2, 256), QT.Q4_K)  # the torch encoder
        assert out.shape == (2, 144)
        assert list(tmp_path.rglob("*.so")) == []
    finally:
        native.library.cache_clear()


@pytest.mark.parametrize("flag", ["-DMTK_PORTABLE", "-DMTK_SSE2_ONLY"])
def test_other_cpus_paths_give_the_same_bytes(flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code other CPUs run equals llama.cpp's bytes too: the plain-C loops (non-x86 CPUs,
    ``-DMTK_PORTABLE``) and the SSE2 paths of x86-64 CPUs without AVX (``-DMTK_SSE2_ONLY``). Every CPU with
    AVX2, AVX-512 ones included, runs the default build's paths, which the other tests check."""
    monkeypatch.setenv("MTK_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MTK_NATIVE_CFLAGS", flag)
    native.library.cache_clear()
    try:
        assert native.library() is not None
        x = _rows(512)
        for qtype, use_importance in CASES:
            imp = importance_for(512) if use_importance else None
            ours = native.encode(torch.from_numpy(x), qtype, None if imp is None else torch.from_numpy(imp)).numpy()
            assert np.array_equal(ours, _ggml_quantize_chunk(x, qtype, imp)), (qtype.name, use_importance)
    finally:
        native.library.cache_clear()
