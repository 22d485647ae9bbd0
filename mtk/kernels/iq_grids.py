"""Lookup tables for the i-quants (IQ1_*, IQ2_*, IQ3_*, IQ4_*), built once per device from gguf-py's data.

The code books are format data, so they are read from the installed ``gguf`` package (``grid_hex``,
``grid_map``, ``grid_shape``, ``ksigns``, ``kvalues``) rather than copied here; each table is decoded on the
CPU the first time it is asked for and cached per device. Rows are 4 (or 2) floats wide, so the dequantizer
can move each row as one complex128 (complex64) element.

The dequantizers never multiply by a +-1 sign tensor. They gather from *signed* tables whose rows already
carry the signs: negating a float commutes with round-to-nearest, so ``scale * (-g) == -(scale * g)`` bit
for bit, and gguf-py's ``scale * grid * signs`` comes out exactly with one gather and one multiply.
"""

from __future__ import annotations

from functools import cache
from math import ceil, log2

import gguf.quants as gq
import torch

# The grid types, by GGML type name; IQ1_M shares IQ1_S's grid.
_GRID_CLASSES: dict[str, type] = {
    "IQ2_XXS": gq.IQ2_XXS,
    "IQ2_XS": gq.IQ2_XS,
    "IQ2_S": gq.IQ2_S,
    "IQ3_XXS": gq.IQ3_XXS,
    "IQ3_S": gq.IQ3_S,
    "IQ1_S": gq.IQ1_S,
}


def _decode_grid(name: str) -> torch.Tensor:
    """Decode a gguf-py grid to float32 ``grid_shape`` (rows, 8 or 4) on the CPU.

    ``grid_hex`` is hex text; each decoded byte packs ``8 // bits`` codes of ``bits = ceil(log2(len(map)))``
    bits, lowest bits first, and each code indexes ``grid_map``. Rows follow one another in byte order.
    """
    cls = _GRID_CLASSES[name]
    packed = torch.frombuffer(bytearray(bytes.fromhex(cls.grid_hex.decode())), dtype=torch.uint8)
    bits = ceil(log2(len(cls.grid_map)))
    per_byte = 8 // bits
    codes = torch.stack([(packed >> (i * 8 // per_byte)) & ((1 << bits) - 1) for i in range(per_byte)], dim=-1)
    values = torch.tensor(cls.grid_map, dtype=torch.float32)
    return values[codes.reshape(-1).long()].reshape(cls.grid_shape)


@cache
def ksigns(device: torch.device) -> torch.Tensor:
    """uint8 (128,): the sign byte (bit i set = element i negative) for each 7-bit sign index."""
    return torch.frombuffer(bytearray(gq.IQ2_XXS.ksigns), dtype=torch.uint8).to(device)


@cache
def signed_quads(name: str, device: torch.device) -> torch.Tensor:
    """float32 (rows * 8 // 4 * 16, 4) for the IQ2 and IQ3 grids: every 4-wide quarter of a grid row, signed.

    The grid is cut into quads (an 8-wide IQ2 row gives quad ``2 * row`` then ``2 * row + 1``; an IQ3 row is
    one quad). Row ``quad * 16 + nibble`` holds that quad with element ``i`` negated where bit ``i`` of
    ``nibble`` is set, so the low nibble of a sign byte signs the first quad of 8 values, the high nibble
    the second.
    """
    quads = _decode_grid(name).reshape(-1, 1, 4)
    nibble_bits = (torch.arange(16).reshape(16, 1) >> torch.arange(4)) & 1
    return torch.where(nibble_bits.bool(), -quads, quads).reshape(-1, 4).to(device)


@cache
def iq1_quads(device: torch.device) -> torch.Tensor:
    """float32 (2048 * 2 * 2, 4): IQ1 grid row ``r`` plus delta, cut into quads.

    Quad ``(2 * r + neg) * 2 + half`` is half ``half`` of row ``r`` plus 0.125 (``neg`` 0) or -0.125
    (``neg`` 1). gguf-py adds the delta to the grid in float32 before scaling; these sums are exact.
    """
    grid = _decode_grid("IQ1_S").unsqueeze(1)
    delta = torch.tensor([[gq.IQ1_S.delta], [-gq.IQ1_S.delta]], dtype=torch.float32)
    return (grid + delta).reshape(-1, 4).to(device)


@cache
def iq4_pairs(device: torch.device) -> torch.Tensor:
    """float32 (256, 2): the IQ4_NL / IQ4_XS code book values for two codes ``c0 | c1 << 4`` at once."""
    values = torch.tensor(gq.IQ4_NL.kvalues, dtype=torch.float32)
    codes = torch.arange(256)
    return torch.stack((values[codes & 0x0F], values[codes >> 4]), dim=-1).to(device)
