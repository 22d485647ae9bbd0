"""Where each GGUF block type keeps its per-value codes: write chosen codes into blocks whose scales are fixed.

Every block type mtk encodes stores a head (scales, mins, super-block scale) and one integer code per value;
the decoder maps a code to ``head-dependent scale * level(code) (+ offset)`` position by position. Given the
bytes of blocks whose head was fitted already, :func:`with_codes` replaces the codes and keeps the head, and
:func:`levels` lists, for every position, the value each code decodes to there (by decoding the blocks with
all codes set to one code at a time, so a level is exactly what the decoder gives). Together they turn any
block type into a grid to round onto, as GPTQ on GGUF's own grids needs (:mod:`mtk.quantizers.gguf_gptq`).

A code here is the unsigned value the decoder unpacks before it subtracts an offset: Q4_0's 0..15 (for
``q - 8``), Q8_0's byte 0..255 (an int8), Q3_K's 0..7 (for ``q - 4``), Q6_K's 0..63 (for ``q - 32``).
Layouts are those documented in :mod:`mtk.kernels.dequant`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from gguf import GGMLQuantizationType

from mtk.errors import UnsupportedError
from mtk.kernels import types

# int32 codes (n, block_size) -> uint8 code bytes (n, stop - start)
PackFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CodeBytes:
    """The code bytes of one block type: ``n_codes`` codes per value, packed into bytes ``start:stop``; each run
    of ``group`` values (a sub-block: one scale, one min) shares one set of levels."""

    n_codes: int
    group: int
    start: int
    stop: int
    pack: PackFn


def _u8(v: torch.Tensor) -> torch.Tensor:
    return (v & 0xFF).to(torch.uint8)


def _halves(c: torch.Tensor) -> torch.Tensor:
    """(n, 32) -> 16 bytes: byte j = code j | code 16 + j << 4 (Q4_0, Q4_1, IQ4_NL; low nibbles of Q5_0/1)."""
    return _u8((c[:, :16] & 0xF) | ((c[:, 16:32] & 0xF) << 4))


def _bit4(c: torch.Tensor) -> torch.Tensor:
    """(n, 32) -> the 4 little-endian bytes of a uint32 whose bit i is bit 4 of code i (Q5_0/Q5_1's qh)."""
    bits = ((c >> 4) & 1).reshape(c.shape[0], 4, 8)
    shifts = torch.arange(8, dtype=torch.int32, device=c.device)
    return _u8((bits << shifts).sum(-1))


def _runs(c: torch.Tensor, bit: int) -> torch.Tensor:
    """(n, 256) -> 32 bytes: bit k of byte l is bit ``bit`` of code 32k + l (Q5_K's qh, Q3_K's hmask)."""
    bits = ((c >> bit) & 1).reshape(c.shape[0], 8, 32)
    shifts = torch.arange(8, dtype=torch.int32, device=c.device).unsqueeze(-1)
    return _u8((bits << shifts).sum(-2))


def _k4_nibbles(c: torch.Tensor) -> torch.Tensor:
    """(n, 256) -> 128 bytes: per 64 values, byte l = code l | code 32 + l << 4 (Q4_K, Q5_K's low nibbles)."""
    p = (c & 0xF).reshape(c.shape[0], 4, 2, 32)
    return _u8(p[:, :, 0] | (p[:, :, 1] << 4)).reshape(c.shape[0], 128)


def _crumbs(c: torch.Tensor) -> torch.Tensor:
    """(n, 256) -> 64 bytes: per 128 values, byte l = sum_k (code 32k + l) << 2k (Q2_K; Q3_K's low bits)."""
    p = (c & 3).reshape(c.shape[0], 2, 4, 32)
    return _u8(p[:, :, 0] | (p[:, :, 1] << 2) | (p[:, :, 2] << 4) | (p[:, :, 3] << 6)).reshape(c.shape[0], 64)


def _q8_0(c: torch.Tensor) -> torch.Tensor:
    return _u8(c)


def _q5_legacy(c: torch.Tensor) -> torch.Tensor:
    return torch.cat((_bit4(c), _halves(c)), -1)


def _q2_k(c: torch.Tensor) -> torch.Tensor:
    return _crumbs(c)


def _q3_k(c: torch.Tensor) -> torch.Tensor:
    return torch.cat((_runs(c, 2), _crumbs(c)), -1)


def _q4_k(c: torch.Tensor) -> torch.Tensor:
    return _k4_nibbles(c)


def _q5_k(c: torch.Tensor) -> torch.Tensor:
    return torch.cat((_runs(c, 4), _k4_nibbles(c)), -1)


def _q6_k(c: torch.Tensor) -> torch.Tensor:
    """ql (128) | qh (64): per 128 values, ql byte l = low(l) | low(64 + l) << 4 for l < 64, qh byte l =
    top(l) | top(32 + l) << 2 | top(64 + l) << 4 | top(96 + l) << 6 (low: bits 0-3, top: bits 4-5)."""
    n = c.shape[0]
    low, top = (c & 0xF).reshape(n, 2, 2, 64), ((c >> 4) & 3).reshape(n, 2, 4, 32)
    ql = _u8(low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    qh = _u8(top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)).reshape(n, 64)
    return torch.cat((ql, qh), -1)


def _iq4_xs(c: torch.Tensor) -> torch.Tensor:
    return _halves(c.reshape(-1, 32)).reshape(c.shape[0], 128)


# By ggml type name; every type with an encoder and blocks of more than one value but MXFP4.
CODE_BYTES: dict[str, CodeBytes] = {
    "Q8_0": CodeBytes(256, 32, 2, 34, _q8_0),
    "Q4_0": CodeBytes(16, 32, 2, 18, _halves),
    "Q4_1": CodeBytes(16, 32, 4, 20, _halves),
    "Q5_0": CodeBytes(32, 32, 2, 22, _q5_legacy),
    "Q5_1": CodeBytes(32, 32, 4, 24, _q5_legacy),
    "Q2_K": CodeBytes(4, 16, 16, 80, _q2_k),
    "Q3_K": CodeBytes(8, 16, 0, 96, _q3_k),
    "Q4_K": CodeBytes(16, 32, 16, 144, _q4_k),
    "Q5_K": CodeBytes(32, 32, 16, 176, _q5_k),
    "Q6_K": CodeBytes(64, 16, 0, 192, _q6_k),
    "IQ4_NL": CodeBytes(16, 32, 2, 18, _halves),
    "IQ4_XS": CodeBytes(16, 32, 8, 136, _iq4_xs),
}


def code_bytes(qtype: GGMLQuantizationType) -> CodeBytes:
    """The code layout of ``qtype``; ``UnsupportedError`` for a type without one."""
    layout = CODE_BYTES.get(qtype.name)
    if layout is None:
        raise UnsupportedError(f"no code layout for {qtype.name}; known: {', '.join(CODE_BYTES)}")
    return layout


def with_codes(blocks: torch.Tensor, codes: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """uint8 blocks ``(n, type_size)`` with their codes replaced by integer ``codes`` ``(n, block_size)``
    (0 .. n_codes - 1); the heads are kept. A new tensor; ``blocks`` is not changed."""
    layout = code_bytes(qtype)
    out = blocks.clone()
    out[:, layout.start : layout.stop] = layout.pack(codes.to(torch.int32))
    return out


def levels(blocks: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """float32 ``(n, block_size // group, n_codes)``: what code k decodes to in each sub-block of uint8 ``blocks``
    ``(n, type_size)``, with their heads: exactly the decoder's value (which is ``code * scale (+ offset)`` per
    sub-block, so one position of each sub-block tells)."""
    layout = code_bytes(qtype)
    entry = types.get(qtype)
    decode = entry.decoder()
    n = blocks.shape[0]
    each = []
    for k in range(layout.n_codes):
        code = torch.full((n, entry.block_size), k, dtype=torch.int32, device=blocks.device)
        each.append(decode(with_codes(blocks, code, qtype)).reshape(n, entry.block_size)[:, :: layout.group])
    return torch.stack(each, -1)
