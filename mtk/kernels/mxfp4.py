"""MXFP4 (GGUF type 39): 32 values per 17-byte block, one E8M0 exponent byte | 16 bytes of E2M1 nibbles.

Value j of a block is nibble j & 0x0F of byte j (j < 16) or nibble >> 4 of byte j - 16; x = kvalue * d with
d = 2**(e - 128) (ggml's table holds twice the E2M1 values, hence 128 and not 127). The encoder picks
e = floor(log2(max|x|)) - 2 + 127 (wrapped to a byte, as ggml's float-to-uint8 cast wraps on x86), 0 for an
all-zero block or an infinite peak, and each value's nearest table entry, the first one on ties; NaN values
take index 0 and do not count towards max|x|, as in ggml. :func:`encode_into` and :func:`reference_into`
are the row's kernels in :mod:`mtk.kernels.types` (blocks written into ``out``, as mtk.kernels.quantize's).
"""

from __future__ import annotations

import math

import numpy as np
import torch

KVALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)


def _exponent(peak: torch.Tensor) -> torch.Tensor:
    """int64 (n,): the E8M0 byte for each block's max|x| (float32), via a float64 log2 rounded to float32."""
    log2 = torch.log2(peak.double()).float().floor()
    # An infinite peak gives 0: ggml's float-to-uint8 cast of infinity (cvttss2si's 0x80000000) on x86.
    e = torch.where((peak > 0) & peak.isfinite(), log2 - 2 + 127, torch.zeros_like(log2))
    return e.long() & 0xFF


def decode(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 17) -> float32 (n, 32)."""
    ones = torch.ones(blocks.shape[0], 1, dtype=torch.float64, device=blocks.device)
    d = torch.ldexp(ones, blocks[:, :1].long() - 128)
    qs = blocks[:, 1:].long()
    codes = torch.cat([qs & 0x0F, qs >> 4], dim=1)
    return (torch.tensor(KVALUES, dtype=torch.float64, device=blocks.device)[codes] * d).float()


def encode(blocks: torch.Tensor) -> torch.Tensor:
    """float32 (n, 32) -> uint8 (n, 17), byte-identical to ggml's quantize_row_mxfp4_ref."""
    peak = torch.nan_to_num(blocks.abs(), nan=0.0, posinf=math.inf).amax(-1)
    e = _exponent(peak)
    d = torch.ldexp(torch.ones_like(peak, dtype=torch.float64), e - 128).float()
    grid = torch.tensor(KVALUES, dtype=torch.float32, device=blocks.device) * d[:, None]  # (n, 16), exact products
    err = (grid[:, None, :] - blocks[:, :, None]).abs()
    index = torch.where(blocks.isnan(), 0, err.argmin(-1))
    out = torch.empty(blocks.shape[0], 17, dtype=torch.uint8, device=blocks.device)
    out[:, 0] = e.to(torch.uint8)
    out[:, 1:] = (index[:, :16] | (index[:, 16:] << 4)).to(torch.uint8)
    return out


def reference(block: np.ndarray) -> np.ndarray:
    """The slow twin of :func:`encode`: one float32 block (32,) -> uint8 (17,), a loop per value."""
    values = [np.float32(v) for v in block]
    peak = np.float32(0)
    for v in values:
        if peak < abs(v):
            peak = abs(v)
    finite = 0 < peak < np.float32(np.inf)
    e = (math.floor(np.float32(math.log2(peak))) - 2 + 127) & 0xFF if finite else 0
    d = np.float32(math.ldexp(1.0, e - 128))
    codes = []
    for v in values:
        best, best_err = 0, abs(np.float32(KVALUES[0]) * d - v)
        for i in range(1, 16):
            err = abs(np.float32(KVALUES[i]) * d - v)
            if err < best_err:
                best, best_err = i, err
        codes.append(best)
    return np.array([e] + [codes[j] | (codes[j + 16] << 4) for j in range(16)], np.uint8)


def encode_into(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """float32 (n, 32) -> uint8 ``out`` (n, 17), the calling convention of :mod:`mtk.kernels.quantize`."""
    out.copy_(encode(blocks))


def reference_into(blocks: torch.Tensor, out: torch.Tensor) -> None:
    """The slow twin of :func:`encode_into`, block by block through :func:`reference`."""
    values = blocks.cpu().numpy()
    packed = np.stack([reference(b) for b in values]) if len(values) else np.empty((0, 17), np.uint8)
    out.copy_(torch.from_numpy(packed).to(out.device))
