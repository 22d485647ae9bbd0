"""bitsandbytes' weight types (Dettmers et al.: LLM.int8(), 2022; QLoRA, 2023) computed in torch: NF4 and FP4
(4-bit codebooks with one absmax per block of the flattened weight), their double quantization (the absmax itself
in 8 bits), and LLM.int8()'s row-wise int8.

The facts, as bitsandbytes 0.50 defines them (tests/test_quantize_bnb.py checks every tensor against its own
``quantize_4bit``, ``quantize_blockwise`` and ``int8_vectorwise_quant``):

- 4-bit: the weight is flattened row-major and cut into blocks of ``blocksize`` (64) values; each block is divided
  by its absmax (float32, multiplied by its reciprocal) and each value takes the nearest of the 16 levels of the
  codebook (a value exactly between two levels takes the lower one). Two codes per byte, the first in the high
  nibble, stored as a ``(numel / 2, 1)`` uint8 column.
- Double quantization: the float32 absmax vector, less its mean (``offset``), is itself quantized blockwise with
  blocks of 256 on the signed 8-bit dynamic map, leaving one float32 absmax per 256 blocks.
- int8: one absmax per row (``SCB``, float32); codes ``round(w * (127 / absmax))`` (half to even) in int8.

With an input width that is a multiple of the block size, the 4-bit blocks are groups of ``blocksize`` columns of
one row, so the absmax vector is an ``(out, in / blocksize)`` group scale read row-major.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtk.quantizers.linear import QuantizedLinear

# bitsandbytes' get_4bit_type("nf4"): the 16 quantiles of N(0, 1) normalised to [-1, 1], with an exact zero
# (QLoRA's appendix). Stored in the checkpoint as ``weight.quant_map``.
NF4 = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bits): code c has sign bit 8 and magnitude index c & 7, the
# levels below divided by their largest (12). Code 0 is +0 and code 8 is -0.
FP4_LEVELS = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)

BLOCKSIZE = 64  # bitsandbytes' and transformers' default 4-bit block
NESTED_BLOCKSIZE = 256  # double quantization's block over the absmax vector
QUANT_TYPES = ("nf4", "fp4")


def codebook(quant_type: str) -> torch.Tensor:
    """The 16 float32 levels of ``nf4`` or ``fp4``, indexed by code (the checkpoint's ``quant_map``)."""
    if quant_type == "nf4":
        return torch.tensor(NF4, dtype=torch.float32)
    if quant_type == "fp4":
        top = max(FP4_LEVELS)
        return torch.tensor([v / top for v in FP4_LEVELS] + [-v / top for v in FP4_LEVELS], dtype=torch.float32)
    raise ValueError(f"bitsandbytes 4-bit types are {' and '.join(QUANT_TYPES)}, not {quant_type!r}")


def dynamic_map() -> torch.Tensor:
    """The signed 8-bit dynamic-tree map (Dettmers 2015, "8-Bit Approximations for Parallelism in Deep Learning"),
    as bitsandbytes builds it for double quantization: 256 sorted float32 values.

    For each exponent e = 0..6 the fraction interval [0.1, 1] is cut into 2^e equal parts (float32 ``linspace``)
    whose midpoints, times 10^(e - 6), are taken with both signs; then 0 and 1.
    """
    values: list[float] = []
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2**e + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        magnitudes = (10 ** (e - 6)) * mids
        values += magnitudes.tolist() + (-magnitudes).tolist()
    values += [0.0, 1.0]
    return torch.tensor(sorted(values), dtype=torch.float32)


def nearest(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The index (int64) of the nearest of ``levels`` for each value of ``scaled``; a tie takes the lower level.

    Levels need not be sorted (FP4's are not): the comparison runs against the midpoints of the sorted levels.
    """
    order = torch.sort(levels, stable=True).indices
    ranked = levels[order]
    midpoints = (ranked[:-1] + ranked[1:]) / 2
    return order[torch.searchsorted(midpoints, scaled.contiguous(), side="left")]


def blockwise(flat: torch.Tensor, blocksize: int, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (int64, like ``flat``) and absmax (float32, one per block; the last block may be short) of a float32
    vector quantized on ``levels`` block by block."""
    n = flat.numel()
    pad = -n % blocksize
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, blocksize)  # zeros do not move an absmax
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1)
    return nearest(scaled.reshape(-1)[:n], levels), absmax


@dataclass(frozen=True)
class NestedAbsmax:
    """A 4-bit weight's absmax vector in 8 bits: ``codes`` uint8 ``(n_blocks,)`` on the dynamic map, ``absmax``
    float32 ``(ceil(n_blocks / 256),)``, ``offset`` the float32 mean subtracted first."""

    codes: torch.Tensor
    absmax: torch.Tensor
    offset: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        n = self.codes.numel()
        values = dynamic_map().to(self.absmax.device)[self.codes.long()]
        scaled = values * self.absmax.repeat_interleave(NESTED_BLOCKSIZE)[:n]
        return scaled + self.offset


def nest(absmax: torch.Tensor) -> NestedAbsmax:
    """Double quantization of a float32 absmax vector."""
    flat = absmax.reshape(-1)
    offset = flat.mean()
    codes, outer = blockwise(flat - offset, NESTED_BLOCKSIZE, dynamic_map().to(flat.device))
    return NestedAbsmax(codes.to(torch.uint8), outer, offset)


@dataclass
class CodebookLinear(QuantizedLinear):
    """A Linear on a table of levels: ``codes`` ``(out, in)`` int64 index ``codebook``; ``scale`` ``(out, n_groups)``
    float32 is each group's absmax (``zero`` is zeros, ``g_idx`` natural); the weight is ``absmax * codebook[codes]``.

    4-bit types use their 16 levels, blocks of ``blocksize`` columns and optionally ``nested`` (then the runtime's
    absmax is the nested one dequantized). LLM.int8() is the table ``k / 127`` for k = -127..127 (code k + 127)
    with one absmax per row: its int8 codes are ``codes - 127``.

    Not GPTQ's ``scale * (codes - zero)``: NF4's levels are not evenly spaced, and the absmax (SCB) must be kept
    exactly, which ``absmax / 127`` as a scale would not be.
    """

    codebook: torch.Tensor | None = None
    quant_type: str = "nf4"  # nf4, fp4 or int8
    blocksize: int = BLOCKSIZE
    nested: NestedAbsmax | None = None

    def runtime_absmax(self) -> torch.Tensor:
        """The absmax the runtime multiplies by: the nested one dequantized, or the stored one."""
        if self.nested is None:
            return self.scale
        return self.nested.dequantize().reshape(self.scale.shape)

    def dequantize(self) -> torch.Tensor:
        if self.codebook is None:  # a default only because the base class's last field has one
            raise ValueError("a CodebookLinear needs its codebook")
        g = self.g_idx.long()
        return self.runtime_absmax()[:, g] * self.codebook.to(self.scale.device)[self.codes]


INT8_LEVELS = 127


def int8_codebook() -> torch.Tensor:
    return torch.arange(-INT8_LEVELS, INT8_LEVELS + 1, dtype=torch.float32) / INT8_LEVELS


def _natural(cols: int, group: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(cols, device=device) // group).to(torch.int32)


def quantize_4bit(
    w: torch.Tensor, quant_type: str = "nf4", blocksize: int = BLOCKSIZE, double_quant: bool = False
) -> CodebookLinear:
    """NF4 or FP4 of a weight ``(out, in)`` whose input width is a multiple of ``blocksize``."""
    out, cols = w.shape
    if cols % blocksize:
        raise ValueError(f"input width {cols} is not a multiple of the 4-bit block size {blocksize}")
    levels = codebook(quant_type).to(w.device)
    codes, absmax = blockwise(w.float().reshape(-1), blocksize, levels)
    scale = absmax.reshape(out, cols // blocksize)
    nested = nest(absmax) if double_quant else None
    return CodebookLinear(
        codes.reshape(out, cols),
        scale,
        torch.zeros_like(scale),
        _natural(cols, blocksize, w.device),
        codebook=levels,
        quant_type=quant_type,
        blocksize=blocksize,
        nested=nested,
    )


def quantize_int8(w: torch.Tensor) -> CodebookLinear:
    """LLM.int8()'s weight: row absmax (SCB) and ``round(w * (127 / absmax))``; an all-zero row gets codes 0."""
    w = w.float()
    absmax = w.abs().amax(dim=1)
    codes = torch.round(w * (INT8_LEVELS / absmax)[:, None]).nan_to_num(0.0).to(torch.int64)
    scale = absmax[:, None]
    return CodebookLinear(
        codes + INT8_LEVELS,
        scale,
        torch.zeros_like(scale),
        _natural(w.shape[1], w.shape[1], w.device),
        codebook=int8_codebook().to(w.device),
        quant_type="int8",
        blocksize=-1,
    )
