"""GGUF tensor quantization in torch, byte-identical with gguf-py's numpy reference (``gguf.quants.quantize``).

Covers the plain float types and the legacy 32-value block types. Each type has two encoders that fill
the bytes of every block of a chunk at once, float32 ``(n_blocks, block_size)`` -> uint8
``(n_blocks, type_size)``:

- a reference (the slow twin) that follows gguf-py step by step and handles every input: NaN, inf,
  all-zero blocks, ties, scales too small to invert;
- a fast one for ordinary blocks (finite, no tie for the largest magnitude, an invertible scale), which
  needs fewer and cheaper passes. It flags the blocks it cannot promise exact and hands just those to the
  reference.

The arithmetic is gguf-py's in float32, rounded after every step: the scale is a true division
(``max / -8``, ``(max - min) / 15``), its inverse ``1 / d`` (0 where ``d == 0``) multiplies the values,
the offset is added after the product, codes are truncated toward zero and clipped. No multiply is fused
with an add: each is a separate torch op. Where numpy's result depends on the machine, the reference
takes what numpy does on x86-64 (with AVX-512, for reductions):

- numpy casts float to uint8/int8 through int32: NaN, +-inf and values beyond int32 give 0, others wrap.
- A NaN divided keeps its sign and payload and is quieted; ``inf - inf`` is x86's default NaN 0xFFC00000.
- ``min``/``max`` of a block with NaNs is the canonical NaN 0x7FC00000 (numpy keeps a NaN's own bits
  when it lies in the scalar tail of its reduction; mtk does not). Of zeros of both signs, the last one
  (numpy's scalar tail hands ties to the later value).
- float32 -> float16 is round to nearest even; a NaN keeps its sign and top 10 payload bits, and becomes
  0x7C01 if those are all zero (torch's own cast quiets NaNs instead, so NaNs are redone).

Large tensors are encoded ``CHUNK_VALUES`` values at a time, so the float32 temporaries stay bounded
whatever the tensor's size and dtype. Multi-byte fields are little-endian and written through dtype views,
which assumes a little-endian host (as torch and gguf-py both do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from gguf import GGMLQuantizationType

from mtk.errors import UnsupportedError
from mtk.kernels import types
from mtk.kernels.kquants import quantize_kquant
from mtk.kernels.legacy_importance import quantize_legacy_importance

QT = GGMLQuantizationType
# (float32 blocks (n, block_size), uint8 out (n, type_size)) -> None. Blocks may be the caller's tensor:
# an encoder must not write to them.
EncodeFn = Callable[[torch.Tensor, torch.Tensor], None]

# Values per chunk: 1 Mi values is 4 MiB of float32. The fast encoders hold about three chunk-sized float32
# temporaries, the references (which may get a whole chunk, e.g. of zeros) more: ~32 MiB at most (measured).
# Larger chunks were no faster; smaller ones pay torch's per-op dispatch cost more often.
CHUNK_VALUES = 1 << 20

_CANONICAL_NAN = 0x7FC00000  # numpy's reductions
_X86_DEFAULT_NAN = -0x00400000  # 0xFFC00000: x86's result for inf - inf, 0 * inf, ...
_QUIET_BIT = 0x00400000


def quantize(
    weights: torch.Tensor,
    qtype: GGMLQuantizationType,
    *,
    reference: bool = False,
    importance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encode a float tensor as the bytes of GGUF type ``qtype``.

    The row of ``qtype`` in :mod:`mtk.kernels.types` gives its encoders and what it does with ``importance``
    (float (cols,) per-column weights, llama.cpp's imatrix values). The K-quants and IQ4 types
    (``KQUANT_TYPES``: Q2_K ... Q6_K, IQ4_NL, IQ4_XS) are encoded as llama.cpp does by
    :mod:`mtk.kernels.kquants`, optionally with importance. F32/F16/BF16/Q8_0 ignore importance, as llama.cpp
    does; Q4_0/Q4_1/Q5_0/Q5_1 with importance are encoded as llama.cpp's ``_impl`` paths by
    :mod:`mtk.kernels.legacy_importance` (without it, as gguf-py, which is llama.cpp's ``_ref`` path).

    ``weights`` is a floating-point tensor on any device (float16 and bfloat16 widen to float32 exactly);
    its last dimension must be whole blocks. Returns uint8 ``(*weights.shape[:-1], row_bytes)`` on the
    same device, equal to ``gguf.quants.quantize(weights.float().numpy(), qtype)`` viewed as bytes. For
    F32 this may be a view of ``weights``' memory. ``weights`` is never modified. ``reference=True`` runs
    the slow twin on every block, for tests.

    Raises ``UnsupportedError`` for a type without an encoder or a row that is not whole blocks, and
    ``TypeError`` for a non-float tensor.
    """
    try:
        qtype = GGMLQuantizationType(qtype)
    except ValueError:
        raise UnsupportedError(f"unknown GGML tensor type {qtype!r}") from None
    entry = types.writable(qtype)
    if not weights.is_floating_point():
        raise TypeError(f"quantize expects a float tensor, got {weights.dtype}")
    if entry.importance is types.Importance.BUILT_IN:
        return quantize_kquant(weights, qtype, importance, reference=reference)
    if importance is not None and entry.importance is types.Importance.SEPARATE:
        return quantize_legacy_importance(weights, qtype, importance, reference=reference)
    # (Importance.IGNORED: dropped, as llama.cpp's encoders for these types take none)
    block_size, type_size = entry.block_size, entry.type_size
    shape = tuple(weights.shape)
    row = shape[-1] if shape else 1
    if row % block_size:
        raise UnsupportedError(f"{qtype.name} needs rows of whole {block_size}-value blocks, got {row} values")
    out_shape = (*shape[:-1], row // block_size * type_size)
    if qtype == QT.F32 and not reference:
        return weights.float().contiguous().reshape(-1).view(torch.uint8).reshape(out_shape)
    encode: EncodeFn = entry.encoder(reference=reference)
    n_rows = weights.numel() // row if row else 0
    out = torch.empty((n_rows, out_shape[-1]), dtype=torch.uint8, device=weights.device)
    if out.numel():
        rows = weights.reshape(n_rows, row)  # a view, unless leading dimensions cannot be merged
        for part, part_out in _chunks(rows, out, block_size):
            # Copies (and widens) one chunk of a non-contiguous or narrow tensor, never the whole of it.
            encode(part.float().reshape(-1, block_size), part_out.view(-1, type_size))
    return out.reshape(out_shape)


def _chunks(rows: torch.Tensor, out: torch.Tensor, block_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Matching pieces of ``rows`` (n, row) and ``out`` (n, row_bytes) of at most ``CHUNK_VALUES`` values
    (but one block at least): runs of whole rows, or runs of blocks within a row longer than that."""
    n_rows, row = rows.shape
    if row <= CHUNK_VALUES:
        step = max(1, CHUNK_VALUES // row)
        for start in range(0, n_rows, step):
            yield rows[start : start + step], out[start : start + step]
        return
    step = max(1, CHUNK_VALUES // block_size) * block_size
    type_size = out.shape[1] // (row // block_size)
    for r in range(n_rows):
        for start in range(0, row, step):
            stop = min(start + step, row)  # both whole blocks
            yield rows[r, start:stop], out[r, start // block_size * type_size : stop // block_size * type_size]


# --- shared pieces ----------------------------------------------------------------------------------------


def _div(a: torch.Tensor, divisor: float) -> torch.Tensor:
    """``a / divisor`` rounded once, as numpy divides. A Python-number divisor would let torch (on CUDA)
    multiply by its reciprocal instead, which can differ in the last bit; a tensor divisor cannot."""
    return a / torch.full_like(a, divisor)


def _with_nan(value: torch.Tensor, nan: torch.Tensor, bits: torch.Tensor | int) -> torch.Tensor:
    """``value`` with the float32 NaN of int32 ``bits`` (a tensor like ``value``, or one pattern) where
    ``nan`` is true."""
    if isinstance(bits, int):
        bits = torch.full(value.shape, bits, dtype=torch.int32, device=value.device)
    return torch.where(nan, bits.view(torch.float32), value)


def _redo(blocks: torch.Tensor, out: torch.Tensor, unsure: torch.Tensor, reference: EncodeFn) -> None:
    """Re-encode the blocks flagged in bool ``unsure`` (n, 1) with the reference."""
    rows = unsure.view(-1).nonzero().view(-1)
    if rows.numel():
        part = torch.empty((rows.numel(), out.shape[1]), dtype=torch.uint8, device=out.device)
        reference(blocks.index_select(0, rows), part)
        out.index_copy_(0, rows, part)


def _nibbles(codes: torch.Tensor, out: torch.Tensor) -> None:
    """Byte i of ``out`` (n, 16) = low nibble of code i | code 16+i << 4, for uint8 codes (n, 32) (a uint8
    shift drops bit 4).

    The mask and shift run on all the codes: on the half-row views they would be several times slower.
    """
    torch.bitwise_or((codes & 0x0F)[:, :16], (codes << 4)[:, 16:], out=out)


def _high_bits(codes: torch.Tensor, out: torch.Tensor) -> None:
    """uint32 ``out`` (n, 4 bytes) with bit i = bit 4 of uint8 code i (n, 32): numpy's little-endian
    ``packbits`` of ``codes >> 4``.

    Folds eight 0/1 bytes of an int64 word into its low byte: shifts by 7, 14 and 28 move byte k's bits
    to bits 1, 2-3 and 4-7 of bytes k - 1, k - 2 and k - 4.
    """
    word = (codes >> 4).view(torch.int64)  # (n, 4): byte j of word k is bit 4 of code 8k + j
    word |= word >> 7
    word |= word >> 14
    word |= word >> 28
    out.copy_(word.view(torch.uint8)[:, ::8])  # the low byte of each word


def _numpy_u8(q: torch.Tensor) -> torch.Tensor:
    """numpy's float32 -> uint8 cast on x86, as int32 0..255: through int32, where NaN, +-inf and values
    beyond int32 become INT_MIN, then the low byte. ``q`` is overwritten."""
    q.masked_fill_(~(q.abs() < 2.0**31), -(2.0**31))  # NaN fails the comparison too
    return q.to(torch.int32).bitwise_and_(0xFF)


# --- float16 -----------------------------------------------------------------------------------------------


def _f16_nan_bits(bits: torch.Tensor) -> torch.Tensor:
    """numpy's half for float32 NaNs given as int32 ``bits``: sign, 0x7C00, the top 10 payload bits, and
    0x7C01 rather than 0x7C00 (an infinity) when they are all zero. int32, same shape."""
    half = ((bits >> 16) & 0x8000) | 0x7C00 | ((bits & 0x007FFFFF) >> 13)
    return half + ((half & 0x03FF) == 0).int()


def _f16_reference(x: torch.Tensor) -> torch.Tensor:
    """IEEE float32 -> float16 bits, round to nearest even, NaNs as numpy: int32, same shape.

    Integer arithmetic on the bits, except that a result below the smallest normal half is rounded by
    one float addition of 2**-1 (to which it is small enough that the sum's last bits are the half's
    subnormal significand), as in Giesen's ``float_to_half_fast3_rtne``.
    """
    bits = x.view(torch.int32)
    sign = (bits >> 16) & 0x8000
    mag = bits & 0x7FFFFFFF
    # Normal halves: rebias the exponent, add 0xFFF plus the kept lowest bit, and drop 13 bits.
    normal = (mag + ((15 - 127) << 23) + 0xFFF + ((mag >> 13) & 1)) >> 13
    tiny = (mag.view(torch.float32) + 0.5).view(torch.int32) - 0x3F000000
    half = torch.where(mag < (113 << 23), tiny, normal)
    half = torch.where(mag >= (143 << 23), 0x7C00, half)  # 2**16 and beyond: infinity
    half = torch.where(mag > 0x7F800000, _f16_nan_bits(bits), half | sign)
    return half


def _cast_f16(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """torch's float16 cast of float32 ``x`` into the bytes of ``out`` (``x.numel() * 2``); returns that
    half view. It rounds as numpy does (on CPU checked for all 2**32 inputs) but quiets NaNs."""
    half = out.view(torch.float16).view(x.shape)
    half.copy_(x)
    return half


def _has_nan(x: torch.Tensor) -> bool:
    # amax propagates NaN, and is one fast pass; isnan().any() is two slower ones.
    return x.numel() > 0 and bool(x.amax().isnan())


def _write_f16(x: torch.Tensor, out: torch.Tensor) -> None:
    """numpy's ``x.astype(float16)`` of float32 ``x`` into the bytes of ``out``: torch's cast, NaNs redone."""
    half = _cast_f16(x, out)
    if _has_nan(x):
        nan = x.isnan()
        half.view(torch.int16)[nan] = _f16_nan_bits(x[nan].view(torch.int32)).to(torch.int16)


def _write_f16_ref(x: torch.Tensor, out: torch.Tensor) -> None:
    """As :func:`_write_f16`, by :func:`_f16_reference`."""
    out.view(torch.int16).view(x.shape).copy_(_f16_reference(x))


# --- plain floats ----------------------------------------------------------------------------------------


def _f32(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """4 bytes: the float32 itself (:func:`quantize` views F32 weights instead of calling this)."""
    out.view(torch.float32).copy_(blocks)


def _f16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """2 bytes: one IEEE half, as numpy's ``astype(float16)``."""
    _write_f16(blocks, out)


def _f16_ref(blocks: torch.Tensor, out: torch.Tensor) -> None:
    _write_f16_ref(blocks, out)


def _bf16_ref(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """2 bytes: the top half of the float32, rounded to nearest even on its bits (ggml's
    ``ggml_compute_fp32_to_bf16``); a NaN keeps its sign and top payload bits and is quieted (0x0040)."""
    bits = blocks.view(torch.int32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    bits = torch.where(nan, (bits & -0x10000) | _QUIET_BIT, bits)
    # Never overflows int32: only NaN patterns come near its ends, and their low 16 bits are now zero.
    out.view(torch.int16).copy_((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


def _bf16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """torch's bfloat16 cast rounds the same way (on CPU checked for all 2**32 inputs); it makes NaNs
    canonical, so those are redone."""
    out.view(torch.bfloat16).copy_(blocks)
    if _has_nan(blocks):
        _redo(blocks, out, blocks.isnan(), _bf16_ref)


# --- legacy 32-value blocks: references --------------------------------------------------------------------


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """gguf-py's ``where(d == 0, 0, 1 / d)``, a true division."""
    return torch.where(d == 0, 0.0, torch.ones_like(d) / d)


def _peak_ref(blocks: torch.Tensor) -> torch.Tensor:
    """numpy's ``take_along_axis(x, abs(x).argmax(-1))``: the value of largest magnitude with its sign,
    the first one on a tie, the first NaN if any (torch's argmax picks as numpy's). (n, 1)."""
    return blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))


def _min_max_ref(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """numpy's per-block ``min`` and ``max`` on x86-64 (see the module docstring), (n, 1) each."""
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    position = torch.arange(1, blocks.shape[1] + 1, device=blocks.device)
    last_zero = blocks.gather(-1, ((blocks == 0) * position).argmax(-1, keepdim=True))
    nan = low.isnan()  # either both are NaN or neither
    low = _with_nan(torch.where(low == 0, last_zero, low), nan, _CANONICAL_NAN)
    high = _with_nan(torch.where(high == 0, last_zero, high), nan, _CANONICAL_NAN)
    return low, high


def _symmetric_ref(blocks: torch.Tensor, out: torch.Tensor, levels: int) -> torch.Tensor:
    """Q4_0/Q5_0 reference: ``d = peak / -levels`` into ``out``'s first 2 bytes; returns codes
    ``trunc(x / d + levels + 0.5)`` clipped to ``2 * levels - 1``, uint8 (n, 32)."""
    peak = _peak_ref(blocks)
    d = _div(peak, -levels)
    d = _with_nan(d, peak.isnan(), peak.view(torch.int32) | _QUIET_BIT)
    _write_f16_ref(d, out[:, 0:2])
    q = blocks * _inverse(d)
    q += levels + 0.5
    return _numpy_u8(q.trunc_()).clamp_(max=2 * levels - 1).to(torch.uint8)


def _asymmetric_ref(blocks: torch.Tensor, out: torch.Tensor, levels: int) -> torch.Tensor:
    """Q4_1/Q5_1 reference: ``d = (max - min) / levels`` and ``m = min`` into ``out``'s first 4 bytes;
    returns codes ``trunc((x - m) / d + 0.5)`` clipped to ``levels``, uint8 (n, 32)."""
    low, high = _min_max_ref(blocks)
    d = _div(high - low, levels)
    # NaN inputs give numpy's NaN; a block of one infinity gives inf - inf, x86's default NaN.
    nan_bits = torch.where(high.isnan(), _CANONICAL_NAN, _X86_DEFAULT_NAN).int()
    d = _with_nan(d, d.isnan(), nan_bits)
    _write_f16_ref(d, out[:, 0:2])
    _write_f16_ref(low, out[:, 2:4])
    q = blocks - low
    q *= _inverse(d)
    q += 0.5
    return _numpy_u8(q.trunc_()).clamp_(max=levels).to(torch.uint8)


def _q4_0_ref(blocks: torch.Tensor, out: torch.Tensor) -> None:
    _nibbles(_symmetric_ref(blocks, out, 8), out[:, 2:18])


def _q5_0_ref(blocks: torch.Tensor, out: torch.Tensor) -> None:
    codes = _symmetric_ref(blocks, out, 16)
    _high_bits(codes, out[:, 2:6])
    _nibbles(codes, out[:, 6:22])


def _q4_1_ref(blocks: torch.Tensor, out: torch.Tensor) -> None:
    _nibbles(_asymmetric_ref(blocks, out, 15), out[:, 4:20])


def _q5_1_ref(blocks: torch.Tensor, out: torch.Tensor) -> None:
    codes = _asymmetric_ref(blocks, out, 31)
    _high_bits(codes, out[:, 4:8])
    _nibbles(codes, out[:, 8:24])


def _q8_0_ref(blocks: torch.Tensor, out: torch.Tensor) -> None:
    peak = blocks.abs().amax(-1, keepdim=True)
    d = _with_nan(_div(peak, 127), peak.isnan(), _CANONICAL_NAN)
    _write_f16_ref(d, out[:, 0:2])
    q = blocks * _inverse(d)
    # gguf-py's np_roundf, half away from zero: sign(q) * (floor(a) + floor(2 * (a - floor(a)))), a = |q|.
    a = q.abs()
    whole = a.floor()
    rounded = a.sub_(whole).mul_(2).floor_().add_(whole).mul_(q.sign_())
    out[:, 2:34].copy_(_numpy_u8(rounded))


# --- legacy 32-value blocks: fast encoders -----------------------------------------------------------------
# Each computes the reference's values for ordinary blocks and flags the rest, in a check whose product is
# finite and nonzero only if every factor is (a false alarm, from an overflow or underflow, costs only time).


def _unsure(*factors: torch.Tensor) -> torch.Tensor:
    """bool (n, 1): where the product of ``factors`` is 0, inf or NaN."""
    product = factors[0]
    for factor in factors[1:]:
        product = product * factor
    return ~(torch.isfinite(product) & (product != 0))


def _symmetric(blocks: torch.Tensor, out: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0/Q5_0: as :func:`_symmetric_ref` for blocks whose max and -min differ and whose scale inverts;
    returns the codes and the other blocks' flags."""
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    balance = high + low  # > 0: the peak is the max; < 0: the min; 0 (a tie) or not finite: unsure
    peak = torch.where(balance < 0, low, high)
    d = peak * (-1.0 / levels)  # exactly peak / -levels: levels is a power of two
    inv = d.reciprocal()  # d is 0 only in unsure blocks
    _cast_f16(d, out[:, 0:2])
    q = blocks * inv
    q += levels + 0.5  # now in [0.5, 2 * levels + 0.5]
    codes = q.to(torch.int8).view(torch.uint8).clamp_(max=2 * levels - 1)  # int8: a faster cast
    return codes, _unsure(balance, inv)


def _asymmetric(blocks: torch.Tensor, out: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_1/Q5_1: as :func:`_asymmetric_ref` for blocks with a finite nonzero min and max and an invertible
    scale (a zero min or max may need its sign picked)."""
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    d = _div(high - low, levels)
    inv = d.reciprocal()
    _cast_f16(d, out[:, 0:2])
    _cast_f16(low, out[:, 2:4])
    q = blocks - low
    q *= inv
    q += 0.5  # now in [0.5, levels + 0.5]
    return q.to(torch.int8).view(torch.uint8), _unsure(low, high, inv)  # int8: a faster cast


def _q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """18 bytes: f16 d | 16 bytes of 4-bit codes (byte i: value i low, value 16+i high).

    d = peak / -8 for the signed value of largest magnitude, q = trunc(x / d + 8.5) clipped to 15;
    x = d * (q - 8).
    """
    codes, unsure = _symmetric(blocks, out, 8)
    _nibbles(codes, out[:, 2:18])
    _redo(blocks, out, unsure, _q4_0_ref)


def _q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """22 bytes: f16 d | uint32 qh (bit i = bit 4 of value i) | 16 bytes of low nibbles (as Q4_0).

    d = peak / -16, q = trunc(x / d + 16.5) clipped to 31; x = d * (q - 16).
    """
    codes, unsure = _symmetric(blocks, out, 16)
    _high_bits(codes, out[:, 2:6])
    _nibbles(codes, out[:, 6:22])
    _redo(blocks, out, unsure, _q5_0_ref)


def _q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """20 bytes: f16 d | f16 m | 16 bytes of 4-bit codes (as Q4_0).

    d = (max - min) / 15, m = min, q = trunc((x - m) / d + 0.5) clipped to 15; x = d*q + m.
    """
    codes, unsure = _asymmetric(blocks, out, 15)
    _nibbles(codes, out[:, 4:20])
    _redo(blocks, out, unsure, _q4_1_ref)


def _q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """24 bytes: f16 d | f16 m | uint32 qh | 16 bytes of low nibbles (as Q5_0).

    d = (max - min) / 31, m = min, q = trunc((x - m) / d + 0.5) clipped to 31; x = d*q + m.
    """
    codes, unsure = _asymmetric(blocks, out, 31)
    _high_bits(codes, out[:, 4:8])
    _nibbles(codes, out[:, 8:24])
    _redo(blocks, out, unsure, _q5_1_ref)


# The largest float32 below 0.5: adding it with q's sign, then truncating, rounds half away from zero, as
# gguf-py's np_roundf does. Adding 0.5 instead would round 0.5 - 2**-25 up to 1 (a tie, to even).
_JUST_UNDER_HALF = 0.5 - 2.0**-25


def _q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """34 bytes: f16 d | 32 int8 q.

    d = max|x| / 127, q = x / d rounded half away from zero; x = d * q.
    """
    peak = torch.maximum(blocks.amax(-1, keepdim=True), -blocks.amin(-1, keepdim=True))
    d = _div(peak, 127)
    inv = d.reciprocal()
    _cast_f16(d, out[:, 0:2])
    q = blocks * inv
    # Exact while |q| < 2**22: the sum reaches the next integer only from k + 0.5 on (see _JUST_UNDER_HALF).
    q.add_(q.sign(), alpha=_JUST_UNDER_HALF)
    out[:, 2:34].view(torch.int8).copy_(q)
    _redo(blocks, out, _unsure(peak, inv), _q8_0_ref)


# The types encoded here, block by block (the others: kquants).
QUANTIZE_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    row.qtype for row in types.rows(writes=True) if row.importance is not types.Importance.BUILT_IN
)
