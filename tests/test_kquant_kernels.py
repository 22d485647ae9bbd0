"""K-quant and IQ4 encoders (mtk.kernels.kquants): fast == slow twin byte for byte, both decoders read the
bytes alike, and the error is llama.cpp's (its own quantizer run on the same weights, through
``llama_model_quantize`` on a GGUF and through ggml's ``ggml_quantize_chunk`` for importance weights)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from fixtures_models import build_tiny_model
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mtk.converters.gguf_types import FILE_TYPE_NAMES, TypeRules
from mtk.converters.hf_to_gguf import gguf_export
from mtk.errors import UnsupportedError
from mtk.formats.gguf_reader import open_gguf
from mtk.kernels import kquants, types
from mtk.kernels import kquants_search as ks
from mtk.kernels.dequant import dequantize
from mtk.kernels.quantize import quantize

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")

QT = GGMLQuantizationType
TYPES = [row.qtype for row in types.rows(writes=True) if row.importance is types.Importance.BUILT_IN]
# llama.cpp file types that give each tensor type when ``pure``: any of those whose default type it is.
FTYPES = {row.qtype: int(FILE_TYPE_NAMES[row.file_types[0]]) for row in map(types.get, TYPES)}


def mixed_rows(seed: int, cols: int = 512) -> np.ndarray:
    """Rows of the kinds of blocks where the searches branch: normal, heavy-tailed, all zero, constant
    (both signs), tiny (and below ggml's 1e-15 "all zero" threshold), one outlier, zero sub-blocks,
    all positive."""
    rng = np.random.default_rng(seed)
    rows = [
        rng.standard_normal(cols) * 0.02,
        rng.standard_t(2, cols) * 0.01,
        np.zeros(cols),
        np.full(cols, 0.25),
        np.full(cols, -3.0),
        rng.standard_normal(cols) * 1e-7,
        rng.standard_normal(cols) * 1e-17,
        np.where(np.arange(cols) % 97 == 5, 4.0, rng.standard_normal(cols) * 0.01),
        np.where((np.arange(cols) // 16) % 3 == 0, 0.0, rng.standard_normal(cols)),
        np.abs(rng.standard_normal(cols)) + 0.5,
    ]
    return np.stack(rows).astype(np.float32)


def importance_for(cols: int, seed: int = 7) -> np.ndarray:
    """Per-column importance spread over orders of magnitude, a few columns at 0 (unseen in calibration)."""
    rng = np.random.default_rng(seed)
    imp = np.exp(2 * rng.standard_normal(cols)).astype(np.float32)
    imp[::37] = 0
    return imp


def block_view(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return data.reshape(-1, GGML_QUANT_SIZES[qtype][1])


@pytest.mark.parametrize("use_importance", [False, True], ids=["plain", "importance"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_fast_equals_reference(qtype: GGMLQuantizationType, use_importance: bool, torch_encoders: None) -> None:
    x = mixed_rows(1)
    imp = torch.from_numpy(importance_for(x.shape[1])) if use_importance else None
    fast = quantize(torch.from_numpy(x), qtype, importance=imp).numpy()
    ref = quantize(torch.from_numpy(x), qtype, importance=imp, reference=True).numpy()
    assert (
        fast.shape == ref.shape == (x.shape[0], x.shape[1] // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1])
    )
    bad = np.flatnonzero((block_view(fast, qtype) != block_view(ref, qtype)).any(-1))
    assert bad.size == 0, f"{qtype.name}: blocks {bad.tolist()} differ"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("use_importance", [False, True], ids=["plain", "importance"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_cuda_equals_reference(qtype: GGMLQuantizationType, use_importance: bool) -> None:
    """On CUDA (eager) the torch encoders give the slow twin's bytes, as on the CPU: no result depends on a
    backend's reduction order (float sums are explicit folds, integer sums are exact, max/argmax are
    order-free, there is no matmul) and the square root is corrected to IEEE's (:func:`ks.sqrt`)."""
    x = mixed_rows(1)
    imp = torch.from_numpy(importance_for(x.shape[1])) if use_importance else None
    out = quantize(torch.from_numpy(x).cuda(), qtype, importance=imp)
    assert out.device.type == "cuda"
    ref = quantize(torch.from_numpy(x), qtype, importance=imp, reference=True)
    bad = np.flatnonzero((block_view(out.cpu().numpy(), qtype) != block_view(ref.numpy(), qtype)).any(-1))
    assert bad.size == 0, f"{qtype.name}: blocks {bad.tolist()} differ"


def test_sqrt_is_correctly_rounded() -> None:
    """The encoders' square root is IEEE's (numpy's, C's ``sqrtf``) on every float32 the weights can hold:
    torch's CPU ``sqrt`` (MKL's vsSqrt) is one ulp off for a sixth of them on some AVX-512 CPUs, which made
    the fast and slow twins differ there. Random bit patterns cover every exponent, denormals included."""
    rng = np.random.default_rng(0)
    v = rng.integers(0, 0x7F800000, 1 << 20, dtype=np.int64).astype(np.int32).view(np.float32)
    edge = np.array([0.0, -0.0, np.inf, 1e-45, 1.1754942e-38, 3.4028235e38, 1.0, 2.0, 0.25], np.float32)
    v = np.concatenate([v, edge])
    got = ks.sqrt(torch.from_numpy(v)).numpy()
    np.testing.assert_array_equal(got.view(np.int32), np.sqrt(v).view(np.int32))
    assert np.isnan(ks.sqrt(torch.tensor([-1.0, float("nan")])).numpy()).all()


@pytest.mark.parametrize("use_importance", [False, True], ids=["plain", "importance"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_decoders_agree_and_error_is_small(qtype: GGMLQuantizationType, use_importance: bool) -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([mixed_rows(2, 1024), rng.standard_normal((22, 1024)).astype(np.float32)])
    imp = importance_for(1024) if use_importance else None
    data = quantize(torch.from_numpy(x), qtype, importance=None if imp is None else torch.from_numpy(imp))
    theirs = gguf.quants.dequantize(data.numpy(), qtype).reshape(x.shape)
    ours = dequantize(data, qtype, x.shape).numpy()
    assert np.array_equal(theirs, ours)
    # Relative RMSE on the normal rows: bounds a little above these types' known errors on Gaussian data
    # (Q4_K ~0.07, IQ4 ~0.08); a wrong layout or scale gives errors of order 1.
    bound = {QT.Q2_K: 0.35, QT.Q3_K: 0.2, QT.Q4_K: 0.1, QT.Q5_K: 0.05, QT.Q6_K: 0.025}.get(qtype, 0.1)
    normal = slice(10, None)
    rel = np.sqrt(((ours[normal] - x[normal]) ** 2).mean() / (x[normal] ** 2).mean())
    assert rel < bound, rel
    assert np.array_equal(ours[2], np.zeros(1024, np.float32))  # an all-zero row stays zero


def _ggml_quantize_chunk(x: np.ndarray, qtype: GGMLQuantizationType, imp: np.ndarray | None) -> np.ndarray:
    """llama.cpp's own encoder (ggml_quantize_chunk in the libggml-base that llama-cpp-python ships), which
    takes an importance matrix where llama_model_quantize's Python binding cannot."""
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    fn.argtypes += [ctypes.c_int64, ctypes.c_void_p]
    x = np.ascontiguousarray(x, np.float32)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    out = np.zeros((x.shape[0], x.shape[1] // block_size * type_size), np.uint8)
    imp_ptr = None if imp is None else np.ascontiguousarray(imp, np.float32).ctypes.data
    assert fn(int(qtype), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], imp_ptr) == out.size
    return out


def _weighted_rmse(data: np.ndarray, qtype: GGMLQuantizationType, x: np.ndarray, w: np.ndarray) -> float:
    return float(np.sqrt(((gguf.quants.dequantize(data, qtype).reshape(x.shape) - x) ** 2 * w).mean()))


def compare_importance_with_llama_cpp(
    x: np.ndarray, qtype: GGMLQuantizationType, imp: np.ndarray
) -> tuple[float, float, float, float]:
    """mtk's importance encoding of ``x`` against llama.cpp's: the fraction of byte-identical blocks and the
    importance-weighted RMSE of mtk's, llama.cpp's and mtk's plain (no importance) bytes, decoded by gguf-py."""
    ours = quantize(torch.from_numpy(x), qtype, importance=torch.from_numpy(imp)).numpy()
    theirs = _ggml_quantize_chunk(x, qtype, imp)
    plain = quantize(torch.from_numpy(x), qtype).numpy()
    identical = float((block_view(ours, qtype) == block_view(theirs, qtype)).all(-1).mean())
    errors = (_weighted_rmse(b, qtype, x, imp) for b in (ours, theirs, plain))
    return (identical, *errors)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_importance_matches_llama_cpp(qtype: GGMLQuantizationType, backend: str) -> None:
    """With importance, mtk's bytes are llama.cpp's (all of them from the C encoders, most from torch), its
    importance-weighted error no larger, and that error is well below what encoding without importance gives."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((48, 1024)) * 0.02).astype(np.float32)
    identical, err_ours, err_theirs, err_plain = compare_importance_with_llama_cpp(x, qtype, importance_for(1024))
    print(
        f"{qtype.name} importance: {identical:.1%} of blocks identical with llama.cpp; weighted RMSE ratio "
        f"{err_ours / err_theirs:.5f}; without importance {err_plain / err_ours:.3f}x larger"
    )
    assert identical == 1.0 if backend == "native" else identical > 0.8
    assert err_ours <= err_theirs * 1.005
    assert err_ours < 0.9 * err_plain


@pytest.fixture(scope="module")
def wide_f32_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama of width 256 in F32, so that every matrix row is whole 256-value super-blocks."""
    root = tmp_path_factory.mktemp("kquant")
    src = build_tiny_model("llama", root / "hf", hidden_size=256, intermediate_size=512, initializer_range=0.05)
    path = root / "wide-f32.gguf"
    gguf_export(src, path, rules=TypeRules(QT.F32))
    return path


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_matches_llama_model_quantize(
    qtype: GGMLQuantizationType, wide_f32_gguf: Path, tmp_path: Path, backend: str
) -> None:
    """llama.cpp quantizes the GGUF (pure, one type for every matrix); mtk encodes the same float32 weights.
    The C encoders give llama.cpp's bytes; the torch ones a per-tensor RMSE at most llama.cpp's (plus 1% for
    choices made within rounding) and mostly the same blocks (sums folded pairwise, see kquants_search)."""
    dst = tmp_path / f"{qtype.name}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = 2
    params.pure = True
    assert llama_cpp.llama_model_quantize(str(wide_f32_gguf).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    source, quantized = open_gguf(wide_f32_gguf), open_gguf(dst)
    total_ours = total_theirs = 0.0
    same = blocks = 0
    for info in quantized.tensors:
        if info.qtype != qtype:
            continue
        x = source.tensor_bytes(source.by_name[info.name]).view(torch.float32).reshape(info.shape)
        theirs = quantized.tensor_bytes(info).reshape(info.shape[0], -1)
        ours = quantize(x, qtype)
        err_ours = float(((dequantize(ours, qtype, info.shape) - x) ** 2).sum())
        err_theirs = float(((dequantize(theirs, qtype, info.shape) - x) ** 2).sum())
        assert err_ours <= err_theirs * 1.01**2, (info.name, err_ours, err_theirs)
        total_ours, total_theirs = total_ours + err_ours, total_theirs + err_theirs
        rows_same = (block_view(ours.numpy(), qtype) == block_view(theirs.numpy(), qtype)).all(-1)
        same, blocks = same + int(rows_same.sum()), blocks + rows_same.size
    assert blocks > 0, f"llama.cpp wrote no {qtype.name} tensor"
    ratio = (total_ours / total_theirs) ** 0.5
    print(f"{qtype.name}: {same / blocks:.1%} of {blocks} blocks identical with llama.cpp; RMSE ratio {ratio:.5f}")
    assert ratio <= 1.002
    assert same == blocks if backend == "native" else same / blocks > 0.8


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.IQ4_NL], ids=lambda t: t.name)
def test_chunking_and_shapes_do_not_change_bytes(
    qtype: GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch, torch_encoders: None
) -> None:
    x = mixed_rows(5, 2048)[:6]
    imp = torch.from_numpy(importance_for(2048))
    whole = quantize(torch.from_numpy(x), qtype, importance=imp)
    monkeypatch.setattr(kquants, "CHUNK_VALUES", 512)  # rows split into runs of blocks, importance sliced
    assert torch.equal(quantize(torch.from_numpy(x), qtype, importance=imp), whole)
    monkeypatch.setattr(kquants, "CHUNK_VALUES", 4096)  # runs of two rows
    assert torch.equal(quantize(torch.from_numpy(x), qtype, importance=imp), whole)
    three_d = quantize(torch.from_numpy(x).reshape(2, 3, 2048), qtype, importance=imp)
    assert torch.equal(three_d.reshape(whole.shape), whole)
    halves = torch.from_numpy(x).to(torch.bfloat16)
    assert torch.equal(quantize(halves, qtype), quantize(halves.float(), qtype))


def test_bad_inputs_raise() -> None:
    with pytest.raises(UnsupportedError, match="whole 256-value blocks"):
        quantize(torch.zeros(2, 288), QT.Q4_K)
    with pytest.raises(UnsupportedError, match="whole 32-value blocks"):
        quantize(torch.zeros(2, 48), QT.IQ4_NL)
    with pytest.raises(UnsupportedError, match="non-finite"):
        quantize(torch.tensor([[float("nan")] * 256]), QT.Q6_K)
    with pytest.raises(UnsupportedError, match=r"shape \(256,\)"):
        quantize(torch.zeros(2, 256), QT.Q4_K, importance=torch.ones(128))
    with pytest.raises(UnsupportedError, match="non-negative"):
        quantize(torch.zeros(2, 256), QT.Q4_K, importance=-torch.ones(256))
    # llama.cpp's Q8_0 and float types take no importance either: it is ignored.
    assert torch.equal(
        quantize(torch.ones(2, 256), QT.Q8_0, importance=torch.ones(256)), quantize(torch.ones(2, 256), QT.Q8_0)
    )


def test_compiled_search_equals_reference_and_eager(monkeypatch: pytest.MonkeyPatch, torch_encoders: None) -> None:
    """MTK_COMPILE=1 runs the hot search step through torch.compile (one static shape per sub-block size,
    chunks padded): same bytes as the slow twin and as eager, on a padded and an unpadded chunk."""
    x = torch.from_numpy(mixed_rows(6))
    ref = quantize(x, QT.Q4_K, reference=True)
    big = torch.randn(64, 1024, generator=torch.Generator().manual_seed(8)) * 0.02  # exactly one chunk
    eager = quantize(big, QT.Q4_K)
    monkeypatch.setenv("MTK_COMPILE", "1")
    assert torch.equal(quantize(x, QT.Q4_K), ref)
    assert torch.equal(quantize(big, QT.Q4_K), eager)
