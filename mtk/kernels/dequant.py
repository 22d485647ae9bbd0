"""GGUF tensor dequantization in torch, bit-exact with gguf-py's numpy reference (``gguf.quants.dequantize``).

Each supported GGML type has one block function, named by its row in :mod:`mtk.kernels.types`, that maps
every block of a tensor at once: ``(n_blocks, type_size)`` uint8 -> ``(n_blocks, block_size)`` float32. Bit
fields are unpacked with integer ops, four (or two) bytes per op on int32 (int16) words, into one uint8 code
per value; one float32 pass then converts and scales them. The float operations are gguf-py's, in its order
(f16 -> f32 first, then ``(d * sc) * q - (dmin * m)`` and so on) and never fused, so the results are
identical, NaN positions included.

Byte layouts are given per type. Multi-byte fields are little-endian, as GGUF is, and are read through
dtype views, which assumes a little-endian host (as torch and gguf-py both do).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import cache

import torch
from gguf import GGMLQuantizationType

from mtk.errors import InvalidFileError, UnsupportedError
from mtk.kernels import iq_grids, types

QT = GGMLQuantizationType
BlockFn = Callable[[torch.Tensor], torch.Tensor]


def dequantize(data: torch.Tensor, qtype: GGMLQuantizationType | int, shape: Sequence[int]) -> torch.Tensor:
    """Dequantize the raw GGUF bytes of one tensor (``qtype`` as the enum or its number) to float32.

    ``data`` is uint8 on any device, 1-D or ``(rows, bytes_per_row)``; ``shape`` is the logical row-major
    shape (GGUF's ``ne`` reversed, last dimension contiguous). Returns float32 ``shape`` on ``data``'s
    device; for F32 this may be a view of ``data``'s bytes, not a copy.

    Raises ``UnsupportedError`` for a type without a kernel and ``InvalidFileError`` when the byte count
    does not match ``shape``.
    """
    try:
        qtype = GGMLQuantizationType(qtype)
    except ValueError:
        raise UnsupportedError(f"unknown GGML tensor type {qtype!r}") from None
    entry = types.readable(qtype)
    kernel: BlockFn = entry.decoder()
    if data.dtype != torch.uint8:
        raise TypeError(f"dequantize expects uint8 bytes, got {data.dtype}")
    shape = tuple(int(s) for s in shape)
    block_size, type_size = entry.block_size, entry.type_size
    row = shape[-1] if shape else 1
    if row % block_size:
        raise InvalidFileError(f"{qtype.name} rows of {row} values are not whole blocks of {block_size}")
    n_blocks = math.prod(shape) // block_size
    if data.numel() != n_blocks * type_size:
        raise InvalidFileError(
            f"{qtype.name} tensor of shape {shape} needs {n_blocks * type_size} bytes, got {data.numel()}"
        )
    if n_blocks == 0:
        return torch.empty(shape, dtype=torch.float32, device=data.device)
    blocks = data.reshape(n_blocks, type_size)
    # The kernels read fields through int16/int32/f16 views, which need contiguous, 4-aligned bytes.
    if not blocks.is_contiguous() or blocks.storage_offset() % 4 or blocks.data_ptr() % 4:
        blocks = blocks.clone(memory_format=torch.contiguous_format)
    return kernel(blocks).reshape(shape)


# --- byte-field helpers ----------------------------------------------------------------------------------
# Every type size and field offset is even, so any field can be viewed as int16 words; int32 where 4-aligned.


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The f16 at byte ``start`` of every block, as float32 ``(n_blocks, 1)`` (gguf-py's first cast)."""
    return blocks.view(torch.float16)[:, start // 2 : start // 2 + 1].float()


def _words(blocks: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Bytes ``start:stop`` of every block as int32 words when 4-aligned, else as int16 words (a view)."""
    aligned = blocks.shape[1] % 4 == 0 and start % 4 == 0 and stop % 4 == 0
    dtype = torch.int32 if aligned else torch.int16
    width = dtype.itemsize
    return blocks.view(dtype)[:, start // width : stop // width]


def _u16(blocks: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The uint16 fields in bytes ``start:stop`` of every block, as int32 ``(n_blocks, (stop - start) // 2)``."""
    return blocks.view(torch.int16)[:, start // 2 : stop // 2].int() & 0xFFFF


def _unpack(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Split every byte into ``count`` fields of ``bits`` bits, lowest first: int words ``(..., k)`` ->
    uint8 ``(..., count, k * word_bytes)`` where ``[..., j, i]`` is field ``j`` of byte ``i``.

    Works on whole words: the shift may pull bits across byte lanes, and the per-lane mask removes them.
    """
    width = words.dtype.itemsize
    lane_mask = ((1 << bits) - 1) * int.from_bytes(b"\x01" * width, "little")
    if count == 2:
        # Nibbles: one pass per field into its half of the output is cheapest.
        out = torch.empty((*words.shape[:-1], 2, words.shape[-1]), dtype=words.dtype, device=words.device)
        torch.bitwise_and(words, lane_mask, out=out[..., 0, :])
        torch.bitwise_and(words >> bits, lane_mask, out=out[..., 1, :])
    else:
        # More fields: one broadcast shift; a pass per field would pay torch's per-row cost count times.
        shifts = torch.arange(0, count * bits, bits, dtype=words.dtype, device=words.device)
        out = (words.unsqueeze(-2) >> shifts.unsqueeze(-1)).bitwise_and_(lane_mask)
    return out.view(torch.uint8)


def _or_shifted(low: torch.Tensor, high: torch.Tensor, shift: int) -> torch.Tensor:
    """``low |= high << shift`` byte-wise, in place, four bytes per op (``high << shift`` stays in its byte)."""
    low.view(torch.int32).bitwise_or_(high.reshape(low.shape).view(torch.int32) << shift)
    return low


def _split(x: torch.Tensor, shifts: Iterable[int], mask: int, dim: int) -> torch.Tensor:
    """``(x >> s) & mask`` per shift, stacked on a new axis ``dim``; for the small per-block fields."""
    return torch.stack([(x >> s) & mask for s in shifts], dim=dim)


@cache
def _bit_table(device: torch.device) -> torch.Tensor:
    """int64 (256,): the 8 bytes of entry ``b`` are the bits of ``b``, lowest first."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return bits.to(torch.uint8).view(torch.int64).reshape(256).to(device)


def _bytes_to_bits(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, k)`` -> ``(n, 8 * k)`` of 0/1: value ``8 * i + j`` is bit ``j`` of byte ``i``."""
    table = _bit_table(x.device)
    return table.index_select(0, x.reshape(-1).int()).view(torch.uint8).reshape(x.shape[0], -1)


def _scaled(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """float32 ``q * scale [+ offset]`` flattened to ``(n_blocks, block_size)``.

    ``q`` is an integer ``(n_blocks, groups, k)`` (or a fresh gathered float32 one, scaled in place) and
    ``scale``/``offset`` are float32 ``(n_blocks, groups)`` or ``(n_blocks, 1)``. The add is kept apart from
    the multiply, as in gguf-py, so no fused multiply-add can change a bit; gguf-py's ``- m`` is passed as
    ``offset = -m``, since ``a - m == a + (-m)`` exactly in IEEE arithmetic.
    """
    out = q if q.dtype == torch.float32 else q.float()
    out.mul_(scale.unsqueeze(-1))
    if offset is not None:
        out.add_(offset.unsqueeze(-1))
    return out.flatten(1)


# --- plain floats --------------------------------------------------------------------------------------


def _f32_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """4 bytes: one float32."""
    return blocks.view(torch.float32)


def _f16_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """2 bytes: one IEEE half."""
    return blocks.view(torch.float16).float()


def _bf16_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """2 bytes: the top half of a float32. torch widens bfloat16 by a 16-bit shift, as gguf-py does, so NaN
    payloads survive too."""
    return blocks.view(torch.bfloat16).float()


# --- legacy 32-value blocks ----------------------------------------------------------------------------


def _q4_codes(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """16 bytes of 4-bit codes at ``start`` -> (n, 2, 16): value i is the low nibble of byte i, 16+i the high."""
    return _unpack(_words(blocks, start, start + 16), 4, 2)


def _q5_codes(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """uint32 qh at ``start`` then 16 nibble bytes -> 5-bit codes (n, 2, 16); qh bit i is bit 4 of value i."""
    high = _bytes_to_bits(blocks[:, start : start + 4])
    return _or_shifted(_q4_codes(blocks, start + 4), high, 4)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """18 bytes: f16 d | 16 bytes of 4-bit codes. x = d * (q - 8)."""
    return _scaled(_q4_codes(blocks, 2).view(torch.int8).sub_(8), _f16(blocks, 0))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """20 bytes: f16 d | f16 m | 16 bytes of 4-bit codes. x = d*q + m."""
    return _scaled(_q4_codes(blocks, 4), _f16(blocks, 0), _f16(blocks, 2))


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """22 bytes: f16 d | uint32 qh (bit 4 of each value) | 16 bytes of low nibbles. x = d * (q - 16)."""
    return _scaled(_q5_codes(blocks, 2).view(torch.int8).sub_(16), _f16(blocks, 0))


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    """24 bytes: f16 d | f16 m | uint32 qh | 16 bytes of low nibbles. x = d*q + m."""
    return _scaled(_q5_codes(blocks, 4), _f16(blocks, 0), _f16(blocks, 2))


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """34 bytes: f16 d | 32 int8 q. x = q * d."""
    return _scaled(blocks[:, 2:34].view(torch.int8).unsqueeze(1), _f16(blocks, 0))


# --- k-quants: 256-value super-blocks -------------------------------------------------------------------


def _q2_runs(words: torch.Tensor) -> torch.Tensor:
    """64 bytes of 2-bit codes -> (n, 16, 16): each 32-byte half gives 4 runs of 32 at shifts 0, 2, 4, 6."""
    return _unpack(words.reshape(words.shape[0], 2, -1), 2, 4).reshape(-1, 16, 16)


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """84 bytes: 16 scale bytes (low nibble sc, high nibble m; per 16 values) | 64 bytes of 2-bit codes |
    f16 d | f16 dmin. x = (d*sc)*q - (dmin*m)."""
    sc = blocks[:, 0:16]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    return _scaled(_q2_runs(_words(blocks, 16, 80)), d * (sc & 0x0F).float(), -(dmin * (sc >> 4).float()))


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """110 bytes: 32 bytes hmask | 64 bytes of 2-bit low codes (as Q2_K) | 12 bytes of 6-bit scales | f16 d.

    Value j of 256 takes its bit 2 from bit j // 32 of hmask byte j % 32; a clear bit subtracts 4.
    Scale k (per 16 values): low 4 bits from byte k % 8 (low nibble for k < 8, else high), 2 high bits from
    byte 8 + k % 4 at shift 2 * (k // 4); stored with +32. x = (d*(sc-32)) * q.
    """
    low = _split(blocks[:, 96:104], (0, 4), 0x0F, dim=-2).flatten(1)
    high = _split(blocks[:, 104:108], (0, 2, 4, 6), 3, dim=-2).flatten(1)
    sc = (low | (high << 4)).view(torch.int8) - 32
    hmask = _unpack(_words(blocks, 0, 32), 1, 8)
    # ql | (h << 2) == ql + 4h since ql < 4, so ql - 4 * (1 - h) is that minus 4.
    q = _or_shifted(_q2_runs(_words(blocks, 32, 96)), hmask, 2).view(torch.int8).sub_(4)
    return _scaled(q, _f16(blocks, 108) * sc.float())


def _k4_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K 12 scale bytes -> (sc, m), each (n, 8) uint8 of 6 bits.

    Bytes 0-3 hold sc 0-3 (low 6 bits), 4-7 hold m 0-3; bytes 8-11 hold the low 4 bits of sc 4-7 (low
    nibble) and m 4-7 (high nibble), whose top 2 bits are the spare top bits of bytes 0-3 and 4-7.
    """
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat((a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30)), dim=-1)
    m = torch.cat((b & 0x3F, (c >> 4) | ((b >> 2) & 0x30)), dim=-1)
    return sc, m


def _q4_runs(words: torch.Tensor) -> torch.Tensor:
    """128 bytes of 4-bit codes -> (n, 8, 32): each 32 bytes give 32 low nibbles, then 32 high."""
    return _unpack(words.reshape(words.shape[0], 4, -1), 4, 2).reshape(-1, 8, 32)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """144 bytes: f16 d | f16 dmin | 12 scale bytes | 128 bytes of 4-bit codes.

    x = (d*sc)*q - (dmin*m), one sc and m per 32 values.
    """
    sc, m = _k4_scales(blocks[:, 4:16])
    q = _q4_runs(_words(blocks, 16, 144))
    return _scaled(q, _f16(blocks, 0) * sc.float(), -(_f16(blocks, 2) * m.float()))


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """176 bytes: f16 d | f16 dmin | 12 scale bytes | 32 bytes qh | 128 bytes of low nibbles (as Q4_K).

    Value j of 256 takes bit 4 from bit j // 32 of qh byte j % 32. x = (d*sc)*q - (dmin*m).
    """
    sc, m = _k4_scales(blocks[:, 4:16])
    q = _or_shifted(_q4_runs(_words(blocks, 48, 176)), _unpack(_words(blocks, 16, 48), 1, 8), 4)
    return _scaled(q, _f16(blocks, 0) * sc.float(), -(_f16(blocks, 2) * m.float()))


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """210 bytes: 128 bytes ql | 64 bytes qh | 16 int8 scales (per 16 values) | f16 d.

    Per half of 128 values: 64 ql bytes give 64 low nibbles then 64 high nibbles; 32 qh bytes give four runs
    of 32 two-bit high parts at shifts 0, 2, 4, 6. x = (d*sc) * (q - 32).
    """
    n = blocks.shape[0]
    ql = _unpack(_words(blocks, 0, 128).reshape(n, 2, -1), 4, 2)
    qh = _unpack(_words(blocks, 128, 192).reshape(n, 2, -1), 2, 4)
    q = _or_shifted(ql, qh, 4).view(torch.int8).sub_(32).reshape(n, 16, 16)
    return _scaled(q, _f16(blocks, 208) * blocks[:, 192:208].view(torch.int8).float())


# --- i-quants with a 4-bit non-linear code book ---------------------------------------------------------


def _iq4_values(codes: torch.Tensor) -> torch.Tensor:
    """float32 code-book values for uint8 4-bit ``codes`` (..., k), k even, same shape.

    Looks values up two at a time: the int16 view of two neighbouring codes is ``c0 | c1 << 8``, and
    ``(p >> 4 | p) & 0xFF`` folds it to the pair index ``c0 | c1 << 4``.
    """
    pairs = codes.view(torch.int16)
    index = ((pairs >> 4) | pairs).int() & 0xFF
    return _gather_rows(iq_grids.iq4_pairs(codes.device), index).reshape(codes.shape)


def _iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    """18 bytes: f16 d | 16 bytes of 4-bit codes, nibbles as Q4_0. x = d * kvalues[code]."""
    return _scaled(_iq4_values(_q4_codes(blocks, 2)), _f16(blocks, 0))


def _iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    """136 bytes: f16 d | uint16 scales_h | 4 bytes scales_l | 128 bytes of 4-bit codes.

    Sub-block k of 32 values: 6-bit scale from nibble k of scales_l (low first) and bits 2k, 2k+1 of
    scales_h, stored with +32; its 16 code bytes give 16 low nibbles then 16 high.
    x = (d*(sc-32)) * kvalues[code].
    """
    n = blocks.shape[0]
    low = _split(blocks[:, 4:8], (0, 4), 0x0F, dim=-1).flatten(1).int()
    high = _split(_u16(blocks, 2, 4), range(0, 16, 2), 3, dim=-1).flatten(1)
    sc = (low | (high << 4)) - 32
    codes = _unpack(_words(blocks, 8, 136).reshape(n, 8, -1), 4, 2).reshape(n, 8, 32)
    return _scaled(_iq4_values(codes), _f16(blocks, 0) * sc.float())


# --- i-quants on lattice grids (tables in iq_grids) -----------------------------------------------------


def _gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a float32 ``(rows, 2 or 4)`` table for int32 ``index``, as float32 ``(*index.shape, width)``.

    Each 8- or 16-byte row moves as one complex64/complex128 element: a 1-D gather, several times faster
    on CPU than gathering 2-D rows. It only copies bits; the tables hold finite floats, so no row reads as
    a NaN that a load could alter.
    """
    width = table.shape[1]
    flat = table.view(torch.complex64 if width == 2 else torch.complex128).reshape(-1)
    return flat.index_select(0, index.reshape(-1)).view(torch.float32).reshape(*index.shape, width)


def _signed_grid(name: str, rows: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Signed grid values, float32 ``(*rows.shape, width)``, for int32 grid ``rows`` and uint8 ``signs``.

    IQ2 rows are 8 wide and take a sign byte (bit i negates element i): quads ``2 * row`` and
    ``2 * row + 1`` with its low and high nibble. IQ3 rows are 4 wide and take a sign nibble.
    """
    if name.startswith("IQ2"):
        base = rows * 32
        index = torch.stack((base + (signs & 0x0F), base + (signs >> 4) + 16), dim=-1)
    else:
        index = rows * 16 + signs
    grid = _gather_rows(iq_grids.signed_quads(name, rows.device), index)
    return grid.reshape(*rows.shape, -1)


def _grid_scale(d: torch.Tensor, nibble: torch.Tensor, factor: float) -> torch.Tensor:
    """gguf-py's ``d * (0.5 + s) * factor`` for the IQ2/IQ3 4-bit scales, in that order, in float32."""
    return d * (nibble.float() + 0.5) * factor


def _ksigns(index: torch.Tensor) -> torch.Tensor:
    """uint8 sign bytes for int32 7-bit ``ksigns`` indices, same shape."""
    return iq_grids.ksigns(index.device).index_select(0, index.reshape(-1)).reshape(index.shape)


def _ksign_fields(halves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint32 aux word of each 32 values, as its (n, 8, 2) uint16 halves -> (sign bytes (n, 8, 4),
    scales (n, 8)). Bits 7k..7k+6 index ``ksigns`` for the k-th run of 8 values; bits 28-31 are the scale.
    """
    word = halves[..., 0] | ((halves[..., 1] & 0x0FFF) << 16)
    return _ksigns(_split(word, (0, 7, 14, 21), 0x7F, dim=-1)), halves[..., 1] >> 12


def _iq2_xxs(blocks: torch.Tensor) -> torch.Tensor:
    """66 bytes: f16 d | 8 x (4 grid-row bytes | uint32 aux) per 32 values. x = d*(0.5+s)*0.25 * grid."""
    n = blocks.shape[0]
    signs, s = _ksign_fields(_u16(blocks, 2, 66).reshape(n, 8, 4)[..., 2:4])
    rows = blocks[:, 2:66].reshape(n, 8, 8)[..., 0:4].int()
    grid = _signed_grid("IQ2_XXS", rows, signs)
    return _scaled(grid.reshape(n, 8, 32), _grid_scale(_f16(blocks, 0), s, 0.25))


def _iq2_xs(blocks: torch.Tensor) -> torch.Tensor:
    """74 bytes: f16 d | 32 uint16 (9-bit grid row, 7-bit ksigns index) | 8 bytes of 4-bit scales.

    Scale k (nibble k, low first) covers 16 values, two grid rows. x = d*(0.5+s)*0.25 * grid.
    """
    n = blocks.shape[0]
    qs = _u16(blocks, 2, 66)
    grid = _signed_grid("IQ2_XS", qs & 0x1FF, _ksigns(qs >> 9))
    s = _split(blocks[:, 66:74], (0, 4), 0x0F, dim=-1).flatten(1)
    return _scaled(grid.reshape(n, 16, 16), _grid_scale(_f16(blocks, 0), s, 0.25))


def _iq2_s(blocks: torch.Tensor) -> torch.Tensor:
    """82 bytes: f16 d | 32 grid-row low bytes | 32 sign bytes | 8 bytes qh | 8 bytes of 4-bit scales.

    Grid row i takes bits 8-9 from qh byte i // 4 at shift 2 * (i % 4). Scales as IQ2_XS.
    """
    n = blocks.shape[0]
    high = _split(blocks[:, 66:74], (0, 2, 4, 6), 3, dim=-1).flatten(1)
    rows = blocks[:, 2:34].int() | (high.int() << 8)
    grid = _signed_grid("IQ2_S", rows, blocks[:, 34:66])
    s = _split(blocks[:, 74:82], (0, 4), 0x0F, dim=-1).flatten(1)
    return _scaled(grid.reshape(n, 16, 16), _grid_scale(_f16(blocks, 0), s, 0.25))


def _iq3_xxs(blocks: torch.Tensor) -> torch.Tensor:
    """98 bytes: f16 d | 64 grid-row bytes (4 values each) | 8 uint32 aux (as IQ2_XXS), one per 32 values.

    Each ksigns byte signs two grid rows, low nibble the first. x = d*(0.5+s)*0.5 * grid.
    """
    n = blocks.shape[0]
    signs, s = _ksign_fields(_u16(blocks, 66, 98).reshape(n, 8, 2))
    nibbles = _split(signs, (0, 4), 0x0F, dim=-1)
    grid = _signed_grid("IQ3_XXS", blocks[:, 2:66].reshape(n, 8, 4, 2).int(), nibbles)
    return _scaled(grid.reshape(n, 8, 32), _grid_scale(_f16(blocks, 0), s, 0.5))


def _iq3_s(blocks: torch.Tensor) -> torch.Tensor:
    """110 bytes: f16 d | 64 grid-row low bytes | 8 bytes qh | 32 sign bytes | 4 bytes of 4-bit scales.

    Grid row i (4 values) takes bit 8 from bit i % 8 of qh byte i // 8 and its signs from nibble i of the
    sign bytes (low first). Scale k covers 32 values. x = (d*(1+2s)) * grid.
    """
    n = blocks.shape[0]
    rows = blocks[:, 2:66].int() | (_bytes_to_bits(blocks[:, 66:74]).int() << 8)
    nibbles = _split(blocks[:, 74:106], (0, 4), 0x0F, dim=-1).flatten(1)
    grid = _signed_grid("IQ3_S", rows, nibbles)
    s = _split(blocks[:, 106:110], (0, 4), 0x0F, dim=-1).flatten(1)
    return _scaled(grid.reshape(n, 8, 32), _f16(blocks, 0) * (2 * s + 1).float())


def _iq1_grid(rows: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """IQ1 grid rows (int32) plus 0.125, or -0.125 where ``negative`` is 1: float32 ``(*rows.shape, 8)``."""
    base = rows * 4 + negative * 2
    grid = _gather_rows(iq_grids.iq1_quads(rows.device), torch.stack((base, base + 1), dim=-1))
    return grid.reshape(*rows.shape, 8)


def _iq1_s(blocks: torch.Tensor) -> torch.Tensor:
    """50 bytes: f16 d | 32 grid-row low bytes | 8 uint16 qh, one per 32 values (4 grid rows of 8).

    qh bits 3k..3k+2 are bits 8-10 of row k, bits 12-14 the scale s, bit 15 the delta's sign.
    x = (d*(2s+1)) * (grid +- 0.125).
    """
    n = blocks.shape[0]
    qh = _u16(blocks, 34, 50)
    rows = blocks[:, 2:34].reshape(n, 8, 4).int() | (_split(qh, (0, 3, 6, 9), 7, dim=-1) << 8)
    grid = _iq1_grid(rows, (qh >> 15).unsqueeze(-1))
    return _scaled(grid.reshape(n, 8, 32), _f16(blocks, 0) * (2 * ((qh >> 12) & 7) + 1).float())


def _iq1_m(blocks: torch.Tensor) -> torch.Tensor:
    """56 bytes: 32 grid-row low bytes | 16 bytes qh | 4 uint16 scales.

    qh nibble i (low first) of row i: bits 0-2 are row bits 8-10, bit 3 the delta's sign. Each uint16 holds
    four 3-bit scales (bits 0-11), one per 16 values, and its top nibble is a nibble of the f16 d
    (first uint16 lowest). x = (d*(2s+1)) * (grid +- 0.125).
    """
    n = blocks.shape[0]
    scales = _u16(blocks, 48, 56)
    top = scales >> 12
    d_bits = top[:, 0] | (top[:, 1] << 4) | (top[:, 2] << 8) | (top[:, 3] << 12)
    # As a signed int16 value, so the narrowing conversion is exact.
    d = (d_bits - (d_bits & 0x8000) * 2).to(torch.int16).view(torch.float16).float().unsqueeze(1)
    s = _split(scales, (0, 3, 6, 9), 7, dim=-1).flatten(1)
    nibbles = _split(blocks[:, 32:48], (0, 4), 0x0F, dim=-1).flatten(1).int()
    grid = _iq1_grid(blocks[:, 0:32].int() | ((nibbles & 7) << 8), nibbles >> 3)
    return _scaled(grid.reshape(n, 16, 16), d * (2 * s + 1).float())


SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(row.qtype for row in types.rows(reads=True))
